"""What adversarial use of precompute-teacher found: a resumed run that trusted damaged
shards, stale temporary files, and runs that made no example at all."""

import os
import re

import pytest
from smash.precompute.tasks import TaskExample, register_task
from smash.store.cli import main as store_main
from smash.store.cli import verify_store
from smash.store.manifest import finalize_store
from smash.store.writer import StoreWriter
from test_precompute import assert_same_store, run


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The store of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert run(tiny, out) == 0
    return out


def test_a_truncated_finished_shard_is_written_again(tiny, reference, tmp_path, capsys):
    assert run(tiny, tmp_path) == 0
    os.truncate(tmp_path / "shard-000001.tar", 0)
    capsys.readouterr()
    assert run(tiny, tmp_path) == 0
    out = capsys.readouterr().out
    assert "shard-000001.tar was finished, but its file has 0 bytes" in out
    assert "written again (1, recorded as finished but missing or damaged): shard-000001.tar" in out
    assert verify_store(str(tmp_path)) == []
    assert_same_store(tmp_path, reference)


def test_a_missing_finished_shard_is_written_again(tiny, reference, tmp_path, capsys):
    assert run(tiny, tmp_path) == 0
    (tmp_path / "shard-000002.tar").unlink()
    assert run(tiny, tmp_path) == 0
    assert "shard-000002.tar was finished, but its file is missing" in capsys.readouterr().out
    assert_same_store(tmp_path, reference)


def test_a_rerun_compares_the_checksums(tiny, reference, tmp_path, capsys):
    assert run(tiny, tmp_path) == 0
    path = tmp_path / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0x10  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    assert [name for name, _ in verify_store(str(tmp_path))] == ["shard-000000.tar"]
    capsys.readouterr()
    assert run(tiny, tmp_path, "--verify-existing") == 0  # the flag of old scripts: a note
    out, err = capsys.readouterr()
    assert "shard-000000.tar was finished, but its checksum differs" in out
    assert "--verify-existing is no longer needed" in err
    assert_same_store(tmp_path, reference)


def test_stale_temporary_files_of_a_killed_run_are_removed(tiny, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [".shard-000001.tar.tmp99999", ".manifest.part-rank0.json.tmp99999",
             ".manifest.json.tmp4242"]  # fmt: skip
    for name in stale:
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "notes.tmp1").write_text("the user's")
    assert run(tiny, tmp_path) == 0
    assert not [name for name in stale if (tmp_path / name).exists()]
    assert (tmp_path / "notes.tmp1").read_text() == "the user's"


def test_a_shard_is_fsynced_before_it_is_published(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def spy_replace(src, dst):
        calls.append(("replace", str(src)))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    writer = StoreWriter(tmp_path, producer={}, tokenizer={"fingerprint": "x", "vocab_size": 9},
                         k=0)  # fmt: skip
    writer.write_shard(0, [{"input_ids": [1, 2], "mask_positions": [], "topk_ids": [],
                            "topk_logprobs": [], "tail_logmass": [], "label": 1}])  # fmt: skip
    tmp = str(tmp_path / ".shard-000000.tar.tmp") + str(os.getpid())
    assert calls.index(("fsync", tmp)) < calls.index(("replace", tmp))


# ------------------------------------------------------------------- no example at all


def test_too_few_examples_for_one_group_is_refused_up_front(tiny, tmp_path, capsys):
    assert run(tiny, tmp_path / "out", n=2) == 2
    err = capsys.readouterr().err
    assert (
        "--num-examples 2 makes no example: task sentence-pair takes examples in groups of 3" in err
    )
    assert not (tmp_path / "out").exists()


def test_a_corpus_that_gives_no_pair_says_why_and_leaves_no_folder(tiny, tmp_path, capsys):
    corpus = tmp_path / "one-document.txt"
    corpus.write_text(
        "The old river watched the boat near the bridge. The boat carried fish beside the "
        "bank. A quiet valley followed the current after the flood. Every bridge moved.\n"
    )
    assert run({**tiny, "corpus": corpus}, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "the sentence-pair task made no example from 1 document(s)" in err
    assert not (tmp_path / "out").exists()


@register_task("nothing-at-all")
class _NothingTask:
    template = "*cls**sent_0*_It_was*mask*.*sep+*"
    max_length = 32
    verbalizer = ()

    def __init__(self, splitter, **options):
        pass

    def examples(self, corpus, seed):
        return iter(list[TaskExample]())

    def keep(self, verbalizer_logprobs):
        return None

    def config(self):
        return {}


def test_a_task_that_makes_no_example_is_an_error(tiny, tmp_path, capsys):
    assert run(tiny, tmp_path / "out", task="nothing-at-all") == 2
    assert "task 'nothing-at-all' made no example from this corpus" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existing", [True, False])
def test_a_folder_that_existed_is_kept(tiny, tmp_path, existing):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    assert run(tiny, out, task="nothing-at-all") == 2
    assert out.exists() == existing


# ------------------------------------------------------------------- prompts with no sentence


def test_a_template_that_reads_no_sentence_is_refused(tiny, tmp_path, capsys):
    template = "*cls*_It_was*mask*.*sep+*"
    assert run(tiny, tmp_path / "out", "--template", template, task="sentiment") == 2
    assert f"template {template!r} reads no sentence (no *sent_i* part)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_max_length_that_the_template_alone_fills_is_refused(tiny, tiny_tokenizer, tmp_path,
                                                               capsys):  # fmt: skip
    # sentence-pair: *cls**sent-_0*?*mask*,*+sentl_1**sep+*
    own = 3 + sum(len(tiny_tokenizer.encode(t, add_special_tokens=False)) for t in ("?", ","))
    assert run(tiny, tmp_path / "out", "--max-length", str(own)) == 2
    err = capsys.readouterr().err
    assert f"error: max length {own} leaves no sentence token in a prompt: template " in err
    assert f"alone is {own} tokens; the minimum max length is {own + 1}" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- a filter that keeps nothing


@pytest.mark.parametrize("existing", [True, False])
def test_a_filter_that_keeps_nothing_says_why_and_leaves_no_store(tiny, tmp_path, capsys,
                                                                  existing):  # fmt: skip
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
    # max-prob, the largest of five renormalised probabilities, never reaches 1 here
    extra = ("--filter-rule", "max-prob", "--threshold", "1")
    assert run(tiny, out, *extra, task="sentiment", n=60, shard=25) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "precompute-teacher: error: task 'sentiment' kept no example: its filter (max-prob >= 1) "
        "rejected all 60 candidates sent through the teacher (max-prob: min "
    ), err
    quantiles = re.search(r"min ([\d.]+), median ([\d.]+), 90% ([\d.]+), max ([\d.]+)\)", err)
    low, median, high, top = map(float, quantiles.groups())
    assert 0.2 <= low <= median <= high <= top < 1
    assert err.endswith("; nothing was kept (lower --threshold)")
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()


def test_verify_refuses_a_store_of_no_example(tmp_path, capsys):
    writer = StoreWriter(tmp_path, producer={}, tokenizer={"fingerprint": "x", "vocab_size": 9},
                         k=2)  # fmt: skip
    writer.write_shard(0, [])
    finalize_store(tmp_path)
    assert verify_store(str(tmp_path)) == []  # its one shard is sound
    assert store_main(["verify", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert err == f"BAD  {tmp_path}: the store holds no example (1 shard, 0 samples)\n"
    assert out == "1/1 shards ok; the store holds no example\n"
