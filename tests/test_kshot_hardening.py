"""What adversarial use of the k-shot pass (``precompute-teacher --task kshot``) and of the
k-shot files found: each is refused with one line naming what is wrong, before anything is
written, and leaves no folder behind."""

import shutil
from pathlib import Path

import pytest
from smash.precompute.cli import main as precompute
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.precompute.shared.folder_lock import LOCK_NAME, hold_folder
from smash.store.reader import StoreDataset

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


def kshot_pass(tiny, data, out, *extra):
    argv = ["--task", "kshot", "--kshot-data", str(data), "--teacher", str(tiny["teacher"]),
            "--kshot-tasks", "SST-2", "--kshot-seeds", "13", "--kshot-k", "8", "--k", "16",
            "--dtype", "fp32", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
    return precompute(argv)


def refused(capsys) -> str:
    """The one error line of a refused run (the last on stderr, after any progress bar)."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("precompute-teacher: error: ") and err.count("error:") == 1, err
    return last


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13], k=8)
    return root


def test_a_task_folder_that_another_run_writes_is_refused(tiny, kshot, tmp_path, capsys):
    folder = tmp_path / "out" / "SST-2"
    folder.mkdir(parents=True)
    with hold_folder(folder, "precompute-teacher --task kshot"):
        assert kshot_pass(tiny, kshot, tmp_path / "out") == 2
        assert (
            f"{folder} is in use by another run (precompute-teacher --task kshot, pid "
            in refused(capsys)
        )
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]


# ------------------------------------------------------------------- bytes that are not UTF-8


def with_latin1_word(path: Path, line: int) -> int:
    """Put 'café' in Latin-1 (0xe9 for 'é') into the first sentence of line ``line`` (1-based)
    of a UTF-8 file; the 1-based byte of the line where 0xe9 is."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b" ", " café ".encode("latin-1"), 1)
    path.write_bytes(b"".join(lines))
    return lines[line - 1].index(b"\xe9") + 1


NOT_UTF8 = "not valid UTF-8 at byte {} of the line (b'"


@pytest.mark.parametrize("task, name, line", [("SST-2", "train.tsv", 4), ("SST-5", "train.csv", 3)])
def test_a_kshot_split_that_is_not_utf8_is_named_with_its_line(
    tiny, tmp_path, capsys, task, name, line
):
    data = tmp_path / "data"
    make_kshot(ORIGINAL, data, [get_task(task)], seeds=[13], k=8)
    path = data / get_task(task).dirname / "8-13" / name
    column = with_latin1_word(path, line)
    out = tmp_path / "out"
    assert kshot_pass(tiny, data, out, "--kshot-tasks", task) == 2
    assert f"{path}:{line}: {NOT_UTF8.format(column)}" in refused(capsys)
    assert not out.exists()


def test_an_original_task_file_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys):
    from smash.precompute.kshot.splits import main as make_kshot_cli

    original = tmp_path / "original"
    shutil.copytree(ORIGINAL / "SST-2", original / "SST-2")
    with_latin1_word(original / "SST-2" / "train.tsv", 5)
    argv = ["--original", str(original), "--out", str(tmp_path / "out"), "--tasks", "SST-2"]
    assert make_kshot_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"make-kshot: error: {original / 'SST-2' / 'train.tsv'}:5: not valid")
    assert err.count("\n") == 1


def test_an_lmbff_template_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    from smash.precompute.kshot.data import DataError
    from smash.train.fewshot.auto_prompts import read_template

    path = tmp_path / "16-13.sort.txt"
    path.write_bytes(b"\n*cls**sent_0*_Tr\xe8s*mask*.*sep+*\n")
    with pytest.raises(DataError, match=rf"^{path}:2: not valid UTF-8 at byte 17 of the line"):
        read_template(path, get_task("SST-2"))


# ------------------------------------------------------------------- prompts with no sentence

NO_SENTENCE = "*cls*_It_was*mask*.*sep+*"


def own_tokens(tokenizer, *texts: str) -> int:
    """Tokens of a template's literal parts plus its <s>, <mask> and </s>."""
    return 3 + sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)


def test_a_max_length_that_the_template_alone_fills_is_refused(tiny, tiny_tokenizer, kshot,
                                                               tmp_path, capsys):  # fmt: skip
    own = own_tokens(tiny_tokenizer, " It was", ".")  # SST-2: *cls**sent_0*_It_was*mask*.*sep+*
    out = tmp_path / "out"
    assert kshot_pass(tiny, kshot, out, "--max-length", str(own)) == 2
    line = refused(capsys)
    assert f"SST-2: {kshot / 'SST-2' / '8-13' / 'train.tsv'}:2 (row 0): max length {own}" in line
    assert f"alone is {own} tokens; the minimum max length is {own + 1}" in line
    assert not out.exists()
    assert kshot_pass(tiny, kshot, out, "--max-length", str(own + 1)) == 0
    examples = list(StoreDataset(out / "SST-2", shuffle=False))
    assert examples and all(len(ex["input_ids"]) == own + 1 for ex in examples)


def test_a_template_that_reads_no_sentence_is_refused(tiny, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    assert kshot_pass(tiny, kshot, out, "--kshot-template", f"SST-2={NO_SENTENCE}") == 2
    assert f"template {NO_SENTENCE!r} reads no sentence (no *sent_i* part)" in refused(capsys)
    assert not out.exists()


def test_a_pass_refused_after_the_teacher_loaded_leaves_no_folder(tiny, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    assert kshot_pass(tiny, kshot, out, "--max-length", "64", "--token-budget", "8") == 2
    assert "token budget 8 is smaller than the longest example" in refused(capsys)
    assert not out.exists()
