"""The demo's helpers: a rerun replaces its own output folder and nothing else; it asks the
corpus for no more than it gives; it lists only the run outputs that exist."""

import pytest
from smash.train.demo import MARKER, corpus_examples, prepare_out, run_outputs


def test_a_rerun_replaces_the_earlier_demo_output(tmp_path):
    out = tmp_path / "demo-out"
    assert prepare_out(out) is False
    (out / "run").mkdir()
    (out / "run" / "metrics.jsonl").write_text("{}\n")
    assert prepare_out(out) is True
    assert [p.name for p in out.iterdir()] == [MARKER]


def test_an_empty_folder_is_used(tmp_path):
    assert prepare_out(tmp_path) is False
    assert (tmp_path / MARKER).is_file()


@pytest.mark.parametrize(
    "names", [["thesis.tex"], ["run"], ["tiny", "corpus", "stores", "run", "train_config.json"]]
)
def test_a_folder_the_demo_did_not_write_is_refused_and_kept(tmp_path, names):
    for name in names:
        (tmp_path / name).write_text("mine\n")
    with pytest.raises(SystemExit, match="no demo wrote"):
        prepare_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("mine\n")
    with pytest.raises(SystemExit, match="a file, not a folder"):
        prepare_out(tmp_path / "out")
    assert (tmp_path / "out").read_text() == "mine\n"


def test_run_outputs_lists_what_exists(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints").mkdir()
    assert run_outputs(tmp_path) == "metrics.jsonl, checkpoints/"
    (tmp_path / "tensorboard").mkdir()
    assert run_outputs(tmp_path) == "metrics.jsonl, tensorboard/, checkpoints/"


@pytest.mark.parametrize("asked", [None, 10**6])
def test_the_demo_asks_the_corpus_for_no_more_than_it_gives(tiny, tmp_path, capsys, asked):
    from smash.store.manifest import load_manifest
    from smash.train.demo import _precompute

    _precompute("sentence-pair", tiny["corpus"], tiny["teacher"], tmp_path / "s", 8, asked, 0)
    assert "ran out" not in capsys.readouterr().out
    available = corpus_examples("sentence-pair", tiny["corpus"], 0)
    assert load_manifest(tmp_path / "s").num_samples == available > 0


def test_the_t5_teacher_learns_one_token_span_corruption(tiny, tiny_t5, tmp_path):
    import shutil

    from smash.train.demo import sharpen_t5_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_t5["teacher"], teacher)
    first, last = sharpen_t5_teacher(teacher, tiny["corpus"], steps=40, batch_size=8)
    assert last < 0.8 * first, (first, last)


def test_the_tiny_pair_task_reads_as_rte(tmp_path):
    from smash.precompute.kshot.data import load_kshot
    from smash.precompute.kshot.splits import make_kshot
    from smash.precompute.kshot.tasks import get_task
    from smash.precompute.tiny import write_tiny_pair_task

    root = write_tiny_pair_task(tmp_path / "original", per_label=10)
    again = write_tiny_pair_task(tmp_path / "again", per_label=10)
    for split in ("train", "dev"):
        text = (root / "RTE" / f"{split}.tsv").read_text()
        assert text == (again / "RTE" / f"{split}.tsv").read_text()  # deterministic
    make_kshot(root, tmp_path / "k-shot", [get_task("RTE")], seeds=[13], k=4)
    data = load_kshot(tmp_path / "k-shot", get_task("RTE"), 4, 13)
    assert [e.label for e in data.train].count(0) == 4 and len(data.tests["RTE"]) == 20
    assert all(len(e.texts) == 2 for e in data.train)


def test_the_demo_ends_with_few_shot_rows_before_and_after(tiny, tmp_path):
    from smash.train.demo import fewshot_before_after

    text = fewshot_before_after(tiny["student"], tiny["teacher"], tmp_path, seeds=(13,), steps=4)
    lines = text.splitlines()
    assert lines[0].split() == ["before", "after"]
    assert lines[1].split()[:2] == ["prompt-based", "fine-tuning"]
    assert lines[2].split()[0] == "zero-shot" and len(lines) == 3
    md = (tmp_path / "results.md").read_text()
    assert "| before | prompt |" in md and "| after | zero-shot |" in md
    before = [c.strip() for c in md.split("| before | prompt |")[1].split("\n")[0].split("|")]
    assert before[0] in lines[1]  # the printed cell is the report's
