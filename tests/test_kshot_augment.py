"""``make-augment`` (back-translation, with tiny local T5s as the two translation models) and
the ``distill-bt10`` baseline that trains on its output, end to end."""

import json
import shutil
from pathlib import Path

import pytest
from fewshot_support import cli_error
from smash.precompute.cli import main as precompute
from smash.precompute.kshot.augment import (
    AUGMENT_SIDECAR,
    BackTranslator,
    main,
    make_augment,
    read_augment_record,
)
from smash.precompute.kshot.data import DataError, load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.cli import main as fewshot

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
TASKS = ("SST-2", "MNLI", "mr")  # one sentence (TSV), a pair (TSV), CSV without header


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in TASKS], seeds=[13], k=4)
    return root


@pytest.fixture(scope="module")
def translator(tiny_t5):
    return BackTranslator(
        str(tiny_t5["teacher"]), str(tiny_t5["student"]), batch_size=5, max_new_tokens=8, seed=3
    )


@pytest.fixture(scope="module")
def augmented(kshot, translator, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bt")
    make_augment(kshot, out, [get_task(t) for t in TASKS], [13], 4, translator, copies=2)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("name", TASKS)
def test_layout_marking_and_originals(kshot, augmented, name):
    task = get_task(name)
    original = load_kshot(kshot, task, 4, 13)
    data = load_kshot(augmented, task, 4, 13)  # an LM-BFF-layout reader takes it as it is
    n = len(original.train)
    assert len(data.train) == 3 * n
    assert data.train[:n] == original.train and data.dev == original.dev
    assert data.tests == original.tests
    folder = augmented / task.dirname / "4-13"
    record = read_augment_record(folder)
    assert (record["originals"], record["copies"]) == (n, 2)
    assert record["rows"] == [[i, c] for c in (1, 2) for i in range(n)]
    for (row, _), copy in zip(record["rows"], data.train[n:]):
        assert copy.label == original.train[row].label  # the gold label of the original
        assert len(copy.texts) == len(task.text_columns)
        assert copy.texts != original.train[row].texts  # a tiny random T5 never echoes
    for stem in [task.dev, *task.tests.values()]:  # dev and test copied byte for byte
        src = kshot / task.dirname / "4-13" / f"{stem}.{task.fmt}"
        assert (folder / src.name).read_bytes() == src.read_bytes()
    lines = (folder / f"train.{task.fmt}").read_text().splitlines()
    raw = (kshot / task.dirname / "4-13" / f"train.{task.fmt}").read_text().splitlines()
    assert lines[: len(raw)] == raw  # the original rows, byte for byte


def test_same_seed_same_files(kshot, augmented, translator, tiny_t5, tmp_path):
    again = tmp_path / "again"
    make_augment(kshot, again, [get_task(t) for t in TASKS], [13], 4, translator, copies=2)
    assert files(again) == files(augmented)
    # another seed: other draws
    other = BackTranslator(
        str(tiny_t5["teacher"]), str(tiny_t5["student"]), batch_size=5, max_new_tokens=8, seed=4
    )
    make_augment(kshot, tmp_path / "seed4", [get_task("SST-2")], [13], 4, other, copies=2)
    name = "SST-2/4-13/train.tsv"
    assert (tmp_path / "seed4" / name).read_bytes() != (augmented / name).read_bytes()


def test_errors(kshot, augmented, translator, tiny_t5, tmp_path, capsys):
    with pytest.raises(ValueError, match="exists, made from another file or with other settings"):
        make_augment(kshot, augmented, [get_task("SST-2")], [13], 4, translator, copies=1)
    with pytest.raises(DataError, match="no 4-shot split of SST-2 for seed 21"):
        make_augment(kshot, tmp_path / "x", [get_task("SST-2")], [21], 4, translator, copies=2)
    with pytest.raises(DataError, match=f"{kshot / 'SST-2' / '4-13'}: not an augmented split"):
        read_augment_record(kshot / "SST-2" / "4-13")
    argv = ["--data", str(kshot), "--out", str(tmp_path / "y"), "--tasks", "SST-2", "--seeds",
            "13", "--k", "4", "--forward", str(tmp_path / "nomodel"), "--backward",
            str(tiny_t5["student"]), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("make-augment: error: ") and "nomodel" in err
    assert main([*argv[:8], "--k", "8", *argv[10:]]) == 2
    assert "no 8-shot split of SST-2 for seed 13" in capsys.readouterr().err


def test_make_augment_command(kshot, tiny_t5, tmp_path, capsys):
    out = tmp_path / "bt"
    argv = ["--data", str(kshot), "--out", str(out), "--tasks", "SST-2", "--seeds", "13",
            "--k", "4", "--copies", "1", "--forward", str(tiny_t5["teacher"]), "--backward",
            str(tiny_t5["student"]), "--device", "cpu", "--max-new-tokens", "6"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(out / "SST-2" / "4-13")]
    record = json.loads((out / "SST-2" / "4-13" / AUGMENT_SIDECAR).read_text())
    assert record["forward"] == str(tiny_t5["teacher"]) and record["copies"] == 1
    assert record["generation"]["do_sample"] and record["generation"]["max_new_tokens"] == 6
    written = files(out)
    (out / "SST-2" / ".4-13.tmp999").mkdir()  # as a killed run leaves it
    assert main(argv) == 0 and files(out) == written  # a rerun keeps what was made alike
    assert sorted(p.name for p in (out / "SST-2").iterdir()) == ["4-13"]  # and cleans up
    capsys.readouterr()
    assert main([*argv, "--copies", "2"]) == 2
    assert "exists, made from another file or with other settings" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # replaced, the same files, no temporary left
    assert files(out) == written and sorted(p.name for p in (out / "SST-2").iterdir()) == ["4-13"]


def test_distill_bt10_end_to_end(tiny, kshot, augmented, tmp_path, capsys):
    stores = {}
    for name, data in (("plain", kshot), ("bt", augmented)):
        stores[name] = tmp_path / name
        argv = ["--task", "kshot", "--kshot-data", str(data), "--kshot-tasks", "SST-2", "MNLI",
                "--kshot-seeds", "13", "--kshot-k", "4", "--teacher", str(tiny["teacher"]),
                "--k", "8", "--max-length", "64", "--dtype", "fp32", "--device", "cpu",
                "--out", str(stores[name])]  # fmt: skip
        assert precompute(argv) == 0
    out = tmp_path / "out"
    argv = ["--model", str(tiny["student"]), "--data", str(kshot), "--out", str(out), "--k", "4",
            "--tasks", "SST-2", "MNLI", "--seeds", "13", "--lrs", "1e-3", "--batch-sizes", "4",
            "--max-steps", "3", "--eval-every", "3", "--max-length", "64", "--device", "cpu",
            "--mode", "distill", "distill-bt10", "--distill-store", str(stores["plain"]),
            "--augmented-data", str(augmented), "--augmented-store", str(stores["bt"])]  # fmt: skip
    assert fewshot(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert {(e["mode"], e["task"]) for e in result["entries"]} == {
        (m, t) for m in ("distill", "distill-bt10") for t in ("SST-2", "MNLI")
    }
    assert "| student | distill-bt10 |" in (out / "results.md").read_text()
    # the plain store does not cover the augmented rows, and plain data is not augmented (a
    # --resume: the finished units stay, the other stores make new ones, refused before training)
    argv.insert(0, "--resume")
    bad = [*argv[:-3], str(kshot), "--augmented-store", str(stores["plain"])]
    assert "not an augmented split" in cli_error(capsys, bad)
    bad = [*argv[:-2], "--augmented-store", str(stores["plain"])]
    assert "made from another SST-2/4-13/train.tsv" in cli_error(capsys, bad)
    edited = tmp_path / "edited"
    shutil.copytree(augmented, edited)
    (edited / "SST-2" / "4-13" / "dev.tsv").write_text("sentence\tlabel\nA new row.\t1\n")
    bad = [*argv[:-3], str(edited), "--augmented-store", str(stores["bt"])]
    assert "not an augmentation of SST-2 4-13 in --data" in cli_error(capsys, bad)
