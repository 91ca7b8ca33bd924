"""Learning curves: a series of tiny exports against distillation steps, a model against K."""

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from fewshot_support import cli_error
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.export import export_student
from smash.train.fewshot import runner
from smash.train.fewshot.cli import main
from smash.train.fewshot.curves import export_step, series_name, step_points
from smash.train.fewshot.metrics import aggregate
from smash.train.fewshot.protocol import PAPER_MAX_STEPS, Protocol
from train_support import sentiment_store_of, tiny_config, write_config

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
# Tiny and fast: one grid point, 4 steps, dev every 2 steps, two seeds.
TINY = ["--tasks", "SST-2", "--mode", "prompt", "--seeds", "13", "21", "--lrs", "3e-3",
        "--batch-sizes", "4", "--eval-every", "2", "--max-length", "64", "--device", "cpu"]  # fmt: skip
STEPS = (500, 1500, 10000)  # sorted as text they would come 10000, 1500, 500


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13, 21], k=[2, 4, 8])
    return root


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory) -> Path:
    """``RUN/exports/student_step<N>`` as train-student --export-every names them, plus the
    final export ``RUN/student`` (step in its smash_training.json only); each export is the
    tiny student with its own perturbation, so every point evaluates other weights."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    run = tmp_path_factory.mktemp("runs") / "ce"
    tokenizer = AutoTokenizer.from_pretrained(tiny["student"])
    for step, folder in [(s, f"exports/student_step{s}") for s in STEPS] + [(20000, "student")]:
        model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
        noise = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.3 * torch.randn(param.shape, generator=noise))
        export_student(model, tokenizer, run / folder, {"step": step})
    return run


def _curve(argv, out):
    assert main([*argv, "--out", str(out)]) == 0
    return json.loads((out / "curve.json").read_text())


def _assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200


def _assert_lines_match_points(curve):
    """Every line's numbers are the mean and std over seeds of its points' test metrics."""
    for line in curve["lines"]:
        for x, mean, std in zip(line["x"], line["mean"], line["std"]):
            (point,) = [p for p in curve["points"] if p["series"] == line["series"] and p["x"] == x]
            (entry,) = [e for e in point["entries"] if e["mode"] == line["mode"]]
            values = [100.0 * s["tests"][line["column"]] for s in entry["seeds"]]
            assert (
                (mean, std) == aggregate(values) == tuple(entry["summary"][line["column"]].values())
            )


def test_export_step(tmp_path):
    named = tmp_path / "student_step300"
    named.mkdir()
    assert export_step(named) == 300
    final = tmp_path / "student"
    final.mkdir()
    (final / "smash_training.json").write_text('{"step": 4000, "objective": "ce"}')
    assert export_step(final) == 4000
    (named / "smash_training.json").write_text('{"step": 200}')
    with pytest.raises(ValueError, match="name says step 300 but its smash_training.json says 200"):
        export_step(named)
    bare = tmp_path / "distilroberta-base"
    bare.mkdir()
    with pytest.raises(ValueError, match="no distillation step in the folder name.*--baseline"):
        export_step(bare)


def test_step_points_order_names_and_duplicates(tmp_path):
    exports = tmp_path / "rl_ce" / "exports"
    for step in (20, 3, 100):
        (exports / f"student_step{step}").mkdir(parents=True)
    protocol = Protocol()
    points = step_points("rl", [str(exports / "student_step*")], 16, protocol)
    assert [p.x for p in points] == [3, 20, 100]
    assert [Path(p.run.path).name for p in points] == [f"student_step{s}" for s in (3, 20, 100)]
    assert series_name([str(exports / "*")]) == "rl_ce"
    assert series_name([str(exports / "student_step3")]) == "rl_ce"
    (tmp_path / "x" / "mine_step7").mkdir(parents=True)
    assert series_name([str(tmp_path / "x" / "mine_step7")]) == "mine"
    (tmp_path / "other" / "student_step20").mkdir(parents=True)
    with pytest.raises(ValueError, match="series rl: .*student_step20 and .*student_step20 are"):
        step_points("rl", [str(exports / "*"), str(tmp_path / "other" / "*")], 16, protocol)


def test_curve_from_exports(tiny, kshot, run_dir, tmp_path, capsys):
    """Exports (a glob, plus the final export) and a baseline give one line sorted by step,
    whose numbers are those of evaluating each export on its own."""
    out = tmp_path / "curve"
    curve = _curve(["--curve", "steps", "--model", str(run_dir / "exports" / "student_step*"),
                    str(run_dir / "student"), "--baseline", str(tiny["student"]),
                    "--baseline-name", "before", "--data", str(kshot), "--k", "8",
                    "--max-steps", "4", *TINY], out)  # fmt: skip
    assert capsys.readouterr().out.split() == [str(out / f) for f in ("curve.json", "curve.md",
                                                                      "curve.png")]  # fmt: skip
    assert [(p["series"], p["x"]) for p in curve["points"]] == [("ce", s) for s in STEPS] + [
        ("ce", 20000),
        ("before", None),
    ]
    ((line,), (base,)) = curve["lines"], curve["baselines"]
    assert (line["series"], line["mode"], line["column"], line["metric"]) == (
        "ce", "prompt", "SST-2", "acc")  # fmt: skip
    assert line["x"] == [*STEPS, 20000]
    assert len(set(line["mean"])) > 1, "every export has its own weights"
    _assert_lines_match_points(curve)
    assert all(p["k"] == 8 and p["max_steps"] == 4 for p in curve["points"])

    # The curve's point equals a plain evaluation of that export with the same settings.
    single = tmp_path / "single"
    assert main(["--model", str(run_dir / "exports" / "student_step1500"), "--data", str(kshot),
                 "--k", "8", "--max-steps", "4", *TINY, "--out", str(single)]) == 0  # fmt: skip
    (entry,) = json.loads((single / "results.json").read_text())["entries"]
    (point,) = [p for p in curve["points"] if p["x"] == 1500]
    assert point["entries"][0]["seeds"] == entry["seeds"]
    assert line["mean"][1] == entry["summary"]["SST-2"]["mean"]
    assert line["std"][1] == entry["summary"]["SST-2"]["std"]
    (base_point,) = [p for p in curve["points"] if p["x"] is None]
    assert base["mean"] == base_point["entries"][0]["summary"]["SST-2"]["mean"]

    md = (out / "curve.md").read_text()
    assert "| series | mode | step 500 | step 1500 | step 10000 | step 20000 |" in md
    assert f"| ce | prompt | {line['mean'][0]:.1f} ({line['std'][0]:.1f}) |" in md
    assert f"| before | prompt | {base['mean']:.1f} ({base['std']:.1f}) |" in md
    _assert_png(out / "curve.png")


def test_curve_from_train_student_exports(tiny, kshot, tmp_path_factory, tmp_path):
    """The exports of a real train-student run: exports/student_step{2,4,6}, and the final
    student at step 6 too, which is the step-6 export again and is drawn once."""
    from smash.train.cli import main as train_student

    store = sentiment_store_of(tiny, tmp_path_factory)
    run = tmp_path / "distil"
    config = tiny_config(run, tiny["student"], [(store, 1.0)], max_steps=6, export_every=2)
    assert train_student(["--config", write_config(tmp_path / "c.json", config)]) == 0
    curve = _curve(["--curve", "steps", "--model", str(run / "exports" / "*"), str(run / "student"),
                    "--data", str(kshot), "--k", "8", *TINY, "--mode", "zero-shot"],
                   tmp_path / "out")  # fmt: skip
    assert [(p["series"], p["x"], Path(p["path"]).name) for p in curve["points"]] == [
        ("distil", s, f"student_step{s}") for s in (2, 4, 6)
    ]
    (line,) = curve["lines"]
    assert (line["mode"], line["x"]) == ("zero-shot", [2, 4, 6])
    _assert_lines_match_points(curve)
    _assert_png(tmp_path / "out" / "curve.png")


def test_curve_over_k(tiny, kshot, tmp_path):
    """Two models over K = 8, 2, 4 (plotted ascending); --k-steps overrides one K's steps."""
    out = tmp_path / "curve"
    curve = _curve(["--curve", "k", "--k", "8", "2", "4", "--k-steps", "8=6", "--max-steps",
                    "4", "--model", str(tiny["student"]), "--model", str(tiny["teacher"]),
                    "--name", "small", "large", "--data", str(kshot), *TINY], out)  # fmt: skip
    assert [(p["series"], p["x"], p["max_steps"]) for p in curve["points"]] == [
        (name, k, steps) for name in ("small", "large") for k, steps in ((2, 4), (4, 4), (8, 6))
    ]
    assert [(li["series"], li["x"]) for li in curve["lines"]] == [
        ("small", [2, 4, 8]),
        ("large", [2, 4, 8]),
    ]
    for point in curve["points"]:
        assert all(s["step"] <= point["max_steps"] for s in point["entries"][0]["seeds"])
    assert curve["config"]["max_steps_per_k"] == {"8": 6, "2": 4, "4": 4}
    _assert_lines_match_points(curve)
    assert "| series | mode | K=2 | K=4 | K=8 |" in (out / "curve.md").read_text()
    _assert_png(out / "curve.png")


def test_curve_over_paper_k_uses_paper_steps(tiny, tmp_path):
    """K = 16 ... 256 train for the paper's {1000, 1000, 2000, 2000, 4000} steps by default
    (zero-shot here, so nothing trains) on an SST-2 with 2 x 256 rows per label."""
    original = tmp_path / "original" / "SST-2"
    original.mkdir(parents=True)
    rows = [f"a {'fine' if i % 2 else 'dull'} film , number {i}\t{i % 2}\n" for i in range(1030)]
    (original / "train.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    shutil.copy(ORIGINAL / "SST-2" / "dev.tsv", original / "dev.tsv")
    data = tmp_path / "kshot"
    make_kshot(original.parent, data, [get_task("SST-2")], seeds=[13], k=list(PAPER_MAX_STEPS))
    curve = _curve(["--curve", "k", "--k", *map(str, PAPER_MAX_STEPS), "--model",
                    str(tiny["student"]), "--data", str(data), "--mode", "zero-shot", "--tasks",
                    "SST-2", "--seeds", "13", "--max-length", "64"], tmp_path / "out")  # fmt: skip
    assert {p["x"]: p["max_steps"] for p in curve["points"]} == {
        16: 1000, 32: 1000, 64: 2000, 128: 2000, 256: 4000}  # fmt: skip
    _assert_png(tmp_path / "out" / "curve.png")


def test_resume_evaluates_only_new_exports(tiny, kshot, run_dir, tmp_path, capsys, monkeypatch):
    """--resume keeps the finished points (no model is loaded for them) and adds an export
    written since; points.jsonl made with other settings is refused, and so is a rerun into
    the same folder without --resume."""
    exports = tmp_path / "ce" / "exports"
    for step in STEPS[:2]:
        shutil.copytree(
            run_dir / "exports" / f"student_step{step}", exports / f"student_step{step}"
        )
    argv = ["--curve", "steps", "--model", str(exports / "*"), "--data", str(kshot), "--k", "8",
            "--max-steps", "4", *TINY]  # fmt: skip
    first = _curve(argv, tmp_path / "out")
    shutil.copytree(run_dir / "exports" / "student_step10000", exports / "student_step10000")
    loaded = []
    factory = runner._factory
    monkeypatch.setattr(runner, "_factory", lambda mode, path, *a: loaded.append(path) or
                        factory(mode, path, *a))  # fmt: skip
    second = _curve([*argv, "--resume"], tmp_path / "out")
    assert loaded == [str(exports / "student_step10000")]
    assert [p["x"] for p in second["points"]] == list(STEPS)
    assert second["points"][:2] == first["points"]
    assert second["lines"][0]["mean"][:2] == first["lines"][0]["mean"]
    capsys.readouterr()
    out = str(tmp_path / "out")
    err = cli_error(capsys, [*argv, "--resume", "--eval-every", "4", "--out", out])
    assert "points.jsonl was made with other settings (eval_every differ)" in err
    err = cli_error(capsys, [*argv, "--out", out])
    assert "points.jsonl holds 6 finished units of an earlier evaluation: pass --resume" in err


def test_curve_errors(tiny, kshot, run_dir, tmp_path, capsys):
    common = ["--data", str(kshot), "--max-steps", "4", *TINY, "--out", str(tmp_path)]
    err = cli_error(capsys, ["--curve", "steps", "--model", str(run_dir / "exports" / "nope_*"),
                              "--k", "8", *common])  # fmt: skip
    assert err.endswith(f"--model {run_dir / 'exports' / 'nope_*'}: the pattern matches no folder")
    err = cli_error(capsys, ["--curve", "steps", "--model", str(run_dir / "exports" / "*"),
                              str(tiny["student"]), "--k", "8", *common])  # fmt: skip
    assert f"{tiny['student']}: no distillation step in the folder name" in err
    err = cli_error(capsys, ["--curve", "steps", "--model", str(run_dir / "exports" / "*"),
                              "--model", str(run_dir / "exports" / "*step*"), "--k", "8", *common])  # fmt: skip
    assert "two lines are named 'ce'; give each a name with --name" in err
    err = cli_error(capsys, ["--curve", "k", "--k", "4", "3", "--model", str(tiny["student"]),
                              *common])  # fmt: skip
    assert (
        f"{kshot / 'SST-2' / '3-13'}: no 3-shot split of SST-2 for seed 13 (make-kshot --k 3" in err
    )
    err = cli_error(capsys, ["--curve", "k", "--k", "4", "8", "--k-steps", "16=10", "--model",
                              str(tiny["student"]), *common])  # fmt: skip
    assert "--k-steps '16=10': K=16 is not among --k" in err


def test_curve_needs_matplotlib(tiny, kshot, tmp_path, monkeypatch, capsys):
    """Refused before any training, saying how to install it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    err = cli_error(capsys, ["--curve", "k", "--k", "4", "8", "--model", str(tiny["student"]),
                              "--data", str(kshot), *TINY, "--out", str(tmp_path)])  # fmt: skip
    assert "matplotlib, which is not installed: pip install 'smash-distill[plots]'" in err
    assert not (tmp_path / "curve.json").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--k", "8", "16"], "--k takes several values only with --curve k"),
        (["--baseline", "x"], "--baseline draws a reference line on a --curve steps plot"),
        (["--curve", "k", "--k", "8", "8"], "--k 8 is given twice: give each once"),
    ],
)
def test_curve_flag_errors(flags, message, capsys):
    assert main(["--model", "m", "--data", "d", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
