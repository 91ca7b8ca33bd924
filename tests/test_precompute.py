"""precompute-teacher: exact teacher outputs, task rules, resume, two processes, bad input."""

import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from smash.precompute.cli import main
from smash.precompute.corpus import Corpus
from smash.precompute.sentences import SentenceSplitter
from smash.precompute.shard_writer import BeginShard, EndShard, ShardWriterThread
from smash.precompute.shared.templates import parse_template
from smash.precompute.tasks import make_task
from smash.store.manifest import load_manifest
from smash.store.reader import StoreDataset
from transformers import AutoModelForMaskedLM, AutoTokenizer


def run(tiny, out, *extra, task="sentence-pair", n=90, shard=30, k=16):
    """The pass with ``--k k``, or without it (``k=None``) for sampled targets."""
    width = [] if k is None else ["--k", str(k)]
    argv = ["--task", task, "--corpus", str(tiny["corpus"]), "--teacher", str(tiny["teacher"]),
            "--out", str(out), "--num-examples", str(n), "--shard-size", str(shard), *width,
            "--dtype", "fp32", "--device", "cpu", "--token-budget", "1024", *extra]  # fmt: skip
    return main(argv)


def store_files(out):
    return {
        p.name: p.read_bytes()
        for p in sorted(Path(out).iterdir())
        if p.name.startswith("shard-") or p.name == "manifest.json"
    }


TEACHER_VALUES = ("topk_logprobs", "tail_logmass")  # compared within a tolerance
# one float16 step (2**-10 relative; 2**-24, its smallest step, near zero)
FP16_STEP = {"rtol": 2**-10, "atol": 2**-24}


def example_differences(a, b, teacher_tolerance: float = 0.0) -> list[str]:
    """Fields that differ between the examples of two stores, keyed by example.

    Teacher values are compared with ``teacher_tolerance`` (absolute, in log-probability);
    everything else (inputs, labels, meta, top-k ids) must be equal.
    """
    ea = {ex["__key__"]: ex for ex in StoreDataset(a, shuffle=False)}
    eb = {ex["__key__"]: ex for ex in StoreDataset(b, shuffle=False)}
    if ea.keys() != eb.keys():
        return [f"keys differ: {sorted(ea.keys() ^ eb.keys())[:5]}"]
    found = []
    for key, x in ea.items():
        for field, value in x.items():
            other = eb[key][field]
            if field in TEACHER_VALUES:
                gap = np.abs(np.asarray(value, np.float64) - np.asarray(other, np.float64))
                if gap.max(initial=0) > teacher_tolerance:
                    found.append(f"{key}.{field}: max gap {gap.max():.3g}")
            elif (
                isinstance(value, np.ndarray)
                and not np.array_equal(value, other)
                or (not isinstance(value, np.ndarray) and value != other)
            ):
                found.append(f"{key}.{field}")
    return found


def assert_same_store(a, b):
    """Byte-identical stores; on failure, name the files and the example fields that differ."""
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb)
    differ = {
        name: next(
            (i for i, (x, y) in enumerate(zip(fa[name], fb[name])) if x != y),
            min(len(fa[name]), len(fb[name])),
        )
        for name in fa
        if fa[name] != fb[name]
    }
    assert not differ, (
        f"files differ (first differing byte): {differ}; fields: {example_differences(a, b)[:10]}"
    )


@pytest.fixture(scope="module")
def pair_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    assert run(tiny, out) == 0
    return out


def test_stored_topk_equals_a_full_forward(tiny, pair_store):
    model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
    examples = list(StoreDataset(pair_store, shuffle=False))
    assert len(examples) == 90
    for ex in examples[::7]:
        ids = torch.as_tensor(ex["input_ids"])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        row = logp[int(ex["mask_positions"][0])]
        top = torch.topk(row, 16)
        assert torch.equal(
            torch.as_tensor(ex["topk_ids"][0]).sort().values, top.indices.sort().values
        )
        stored = torch.as_tensor(ex["topk_logprobs"][0].astype(np.float32))
        expect = row[torch.as_tensor(ex["topk_ids"][0])]
        # a padded, length-bucketed batch against this one example: fp32 round-off apart, so
        # within one float16 step once stored
        torch.testing.assert_close(stored, expect.half().float(), **FP16_STEP)
        tail = torch.logsumexp(
            row[torch.ones_like(row, dtype=torch.bool).index_fill_(0, top.indices, False)], 0
        )
        torch.testing.assert_close(
            torch.as_tensor(ex["tail_logmass"][0]), tail, atol=1e-5, rtol=1e-5
        )
        mass = torch.exp(expect).sum() + torch.exp(tail)
        torch.testing.assert_close(mass, torch.tensor(1.0), atol=1e-5, rtol=0)


def test_sentence_pair_labels_follow_the_rule(tiny, pair_store):
    splitter = SentenceSplitter()
    docs = [dict(splitter.split_positions(d)) for d in Corpus(tiny["corpus"])]
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    template = parse_template(make_task("sentence-pair", splitter).template)
    examples = list(StoreDataset(pair_store, shuffle=False))
    assert Counter(ex["label"] for ex in examples) == {0: 30, 1: 30, 2: 30}
    assert load_manifest(pair_store).producer["label_source"] == "task"
    for ex in examples:
        meta = ex["meta"]
        if ex["label"] == 2:
            assert meta["j"] == meta["i"] + 1
            pair = (docs[meta["doc"]][meta["i"]], docs[meta["doc"]][meta["j"]])
        elif ex["label"] == 1:
            assert abs(meta["i"] - meta["j"]) > 1
            pair = (docs[meta["doc"]][meta["i"]], docs[meta["doc"]][meta["j"]])
        else:
            assert meta["doc"] != meta["other"]
            continue
        encoded = template.encode(tok, pair, 128)
        assert list(ex["input_ids"]) == encoded.input_ids
        assert int(ex["mask_positions"][0]) == encoded.mask_position


def test_adjacent_means_adjacent_in_the_text(tmp_path):
    """A sentence the splitter drops (too short) still separates its neighbours."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "First doc has one long sentence here. And another long one follows it. Third "
        "sentence is right here.\n\n"
        "The river ran past the old mill today. Really? The boat drifted under the stone "
        "bridge slowly. Then the fish swam away from the bank.\n"
    )
    task = make_task("sentence-pair", SentenceSplitter(), pairs_per_doc=50)
    pairs = [ex for ex in task.examples(Corpus(corpus), 1) if ex.meta["doc"] == 1]
    adjacent = {ex.sentences for ex in pairs if ex.label == 2}
    assert adjacent == {
        (
            "The boat drifted under the stone bridge slowly.",
            "Then the fish swam away from the bank.",
        )
    }
    assert all(ex.meta["j"] == ex.meta["i"] + 1 for ex in pairs if ex.label == 2)
    assert all(abs(ex.meta["i"] - ex.meta["j"]) > 1 for ex in pairs if ex.label == 1)


@pytest.mark.parametrize("name", ["sentence-pair", "sentiment", "mlm"])
def test_meta_leads_back_to_every_sentence_of_the_corpus(tmp_path, name):
    """meta: x1 is sentence ``i`` of document ``doc``, x2 sentence ``j`` of document ``other``
    (or ``doc``), positions among all of a document's sentences, the dropped ones included."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(
            f"Short {d}. The river number {d} ran past the mill. Yes. The boat {d} drifted "
            f"under the bridge. The fish {d} swam away from it. Then the night {d} fell."
            for d in range(6)
        )
    )
    splitter = SentenceSplitter()
    documents = [splitter.sentences(d) for d in Corpus(corpus)]
    options = {"sentiment": {"shuffle_buffer": 4}, "mlm": {"segment_words": 8}}.get(name, {})
    task = make_task(name, splitter, **options)
    examples = list(task.examples(Corpus(corpus), 0))
    assert len(examples) >= 12
    for ex in examples:
        meta = ex.meta
        first = documents[meta["doc"]][meta["i"]]
        if name == "mlm":  # a segment starts with sentence i
            assert ex.sentences[0].startswith(first)
            continue
        assert ex.sentences[0] == first
        if name == "sentence-pair":
            assert ex.sentences[1] == documents[meta.get("other", meta["doc"])][meta["j"]]


def test_same_arguments_give_byte_identical_stores(tiny, pair_store, tmp_path):
    assert run(tiny, tmp_path) == 0
    assert_same_store(tmp_path, pair_store)


def kill_after_one_shard(tiny, out, monkeypatch, *extra, k=16) -> None:
    """Run the pass into ``out`` (with ``extra`` arguments) and kill it while it writes its
    second shard."""
    original = ShardWriterThread._write_shard
    calls = []

    def dying(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args)

    monkeypatch.setattr(ShardWriterThread, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        run(tiny, out, *extra, k=k)
    monkeypatch.setattr(ShardWriterThread, "_write_shard", original)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.tar"]


def test_killed_run_resumes_to_the_same_store(tiny, pair_store, tmp_path, monkeypatch):
    kill_after_one_shard(tiny, tmp_path, monkeypatch)
    assert run(tiny, tmp_path) == 0
    assert_same_store(tmp_path, pair_store)


def test_two_processes_write_one_store(tiny, pair_store, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "smash.precompute.cli",
                    "--task",
                    "sentence-pair",
                    "--corpus",
                    str(tiny["corpus"]),
                    "--teacher",
                    str(tiny["teacher"]),
                    "--out",
                    str(tmp_path),
                    "--num-examples",
                    "90",
                    "--shard-size",
                    "30",
                    "--k",
                    "16",
                    "--dtype",
                    "fp32",
                    "--device",
                    "cpu",
                    "--token-budget",
                    "1024",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    assert sorted(p.name for p in tmp_path.glob("manifest.part-*")) == [
        "manifest.part-rank0.json",
        "manifest.part-rank1.json",
    ]
    keys = [ex["__key__"] for ex in StoreDataset(tmp_path)]
    assert len(keys) == len(set(keys)) == 90
    # The same examples; teacher values equal up to float rounding, which two processes
    # sharing the cores may do differently (one fp16 step near log-probabilities of -16).
    assert example_differences(tmp_path, pair_store, teacher_tolerance=2**-6) == []


def test_sentiment_filter_keeps_exactly_what_the_rule_selects(tiny, tmp_path):
    splitter = SentenceSplitter()
    task = make_task("sentiment", splitter, filter_rule="none")
    candidates = [ex for ex, _ in zip(task.examples(Corpus(tiny["corpus"]), 0), range(60))]
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
    template = parse_template(task.template)
    verb = tok.convert_tokens_to_ids(["Ġterrible", "Ġbad", "Ġokay", "Ġgood", "Ġgreat"])
    probs = []
    for ex in candidates:
        enc = template.encode(tok, ex.sentences, 64)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0, enc.mask_position]
        probs.append(torch.softmax(logits.float()[verb], -1).max().item())
    threshold = float(np.median(probs))
    assert (
        run(
            tiny,
            tmp_path,
            "--filter-rule",
            "max-prob",
            "--threshold",
            str(threshold),
            task="sentiment",
            n=60,
            shard=25,
        )
        == 0
    )
    kept = {(ex["meta"]["doc"], ex["meta"]["i"]) for ex in StoreDataset(tmp_path)}
    expected = {(c.meta["doc"], c.meta["i"]) for c, p in zip(candidates, probs) if p >= threshold}
    assert kept == expected and 0 < len(kept) < 60
    manifest = load_manifest(tmp_path)
    assert manifest.producer["task_options"]["filter_rule"] == "max-prob"
    assert manifest.producer["task_options"]["threshold"] == threshold
    assert manifest.producer["label_source"] == "teacher"  # labels: the teacher's argmax


def test_changed_configuration_is_refused_and_nothing_is_lost(tiny, tmp_path, capsys):
    assert run(tiny, tmp_path, n=30, shard=30) == 0
    before = store_files(tmp_path)
    assert run(tiny, tmp_path, n=30, shard=30, k=8) == 2
    assert "another configuration (see manifest.json: k: 16 -> 8)" in capsys.readouterr().err
    assert store_files(tmp_path) == before
    assert run(tiny, tmp_path, "--overwrite", n=30, shard=30, k=8) == 0
    assert load_manifest(tmp_path).k == 8


@pytest.mark.parametrize(
    "case,expected",
    [
        ("empty", "corpus is empty"),
        ("one-sentence-docs", "no document has 3 or more sentences"),
        ("latin1", "corpus.txt:2: not valid UTF-8 at byte 4 of the line"),
        ("no-mask-template", "must contain exactly one *mask*"),
        ("big-k", "--k 5000 is larger than the vocabulary"),
        ("no-mask-tokenizer", "has neither a mask token nor <extra_id_0>"),
        ("multi-token-verbalizer", "not a single token"),
        ("missing-plugin", "--plugin no_such_module: cannot import it"),
        ("too-long", "makes examples of up to 200 tokens, but"),
        ("broken-manifest", "manifest.json: not valid JSON"),
        ("jsonl-without-field", "line 1 has no string field 'text'"),
        ("missing-teacher", "no_such/teacher/folder: no such folder"),
        (
            "filter-rule-for-pairs",
            (
                "task 'sentence-pair' takes no 'filter_rule' option "
                "(--filter-rule); tasks that do: ["
            ),
        ),
    ],
)
def test_bad_input_gets_a_clear_message(tiny, tmp_path, capsys, case, expected):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(Path(tiny["corpus"]).read_text())
    teacher, extra, k = tiny["teacher"], [], 16
    if case == "empty":
        corpus.write_text("\n\n   \n")
    elif case == "one-sentence-docs":
        corpus.write_text(
            "A single sentence about the river here.\n\nAnother lonely document sits right here.\n"
        )
    elif case == "latin1":
        corpus.write_bytes(b"The first line is fine.\nCaf\xe9 au lait is ok.\n")
    elif case == "no-mask-template":
        extra = ["--template", "*cls**sent_0*_It_was.*sep+*"]
    elif case == "big-k":
        k = 5000
    elif case == "no-mask-tokenizer":
        teacher = tmp_path / "teacher"
        tok = AutoTokenizer.from_pretrained(tiny["teacher"])
        AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).save_pretrained(teacher)
        tok.mask_token = None
        tok.save_pretrained(teacher)
    elif case == "multi-token-verbalizer":
        extra = ["--plugin", "odd_task_plugin"]
    elif case == "missing-plugin":
        extra = ["--plugin", "no_such_module"]
    elif case == "too-long":
        extra = ["--max-length", "200"]
    elif case == "jsonl-without-field":
        corpus = tmp_path / "corpus.jsonl"
        corpus.write_text('{"body": "A document without the text field."}\n')
    elif case == "missing-teacher":
        teacher = tmp_path / "no_such/teacher/folder"
    elif case == "filter-rule-for-pairs":
        extra = ["--filter-rule", "polar"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    if case == "broken-manifest":
        (out / "manifest.json").write_text("{half")
    task = "odd-words" if case == "multi-token-verbalizer" else "sentence-pair"
    argv = ["--task", task, "--corpus", str(corpus), "--teacher", str(teacher), "--out", str(out),
            "--num-examples", "30", "--k", str(k), "--dtype", "fp32", "--device", "cpu",
            *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert (out / "keep.txt").read_text() == "user file"
    assert not list(out.glob("shard-*"))


def test_bad_corpus_is_reported_before_the_teacher_loads(tiny, tmp_path, capsys, monkeypatch):
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the corpus was checked")

    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", no_load)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"body": "no text field"}\n')
    out = tmp_path / "out"
    argv = [
        "--task",
        "sentence-pair",
        "--corpus",
        str(corpus),
        "--teacher",
        str(tiny["teacher"]),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    assert "no string field 'text'" in capsys.readouterr().err
    assert not out.exists()


def test_another_spelling_of_the_teacher_folder_resumes(tiny, pair_store, tmp_path, monkeypatch):
    kill_after_one_shard(tiny, tmp_path, monkeypatch)
    teacher = Path(tiny["teacher"])
    monkeypatch.chdir(teacher.parent)
    respelled = dict(tiny, teacher=f"./{teacher.name}/")
    assert run(respelled, tmp_path) == 0
    assert_same_store(tmp_path, pair_store)


def test_a_hub_corpus_gives_the_same_examples(tiny, pair_store, tmp_path, capsys):
    """The same documents through ``hf:`` (a local dataset folder) make the same examples."""
    import json

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "train.jsonl").write_text(
        "".join(json.dumps({"text": doc}) + "\n" for doc in Corpus(tiny["corpus"]))
    )
    out = tmp_path / "store"
    assert run(dict(tiny, corpus=f"hf:{tmp_path / 'dataset'}"), out) == 0
    assert "names no @REVISION" not in capsys.readouterr().err  # a folder is hashed instead
    assert example_differences(out, pair_store, teacher_tolerance=2**-6) == []


def test_a_changed_tokenizer_is_another_configuration(tiny, tmp_path, capsys):
    """The teacher's weights are unchanged but its tokenizer gained a token: the rerun is
    refused as another configuration, and --overwrite replaces the store."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny["teacher"], teacher)
    changed = dict(tiny, teacher=teacher)
    out = tmp_path / "out"
    assert run(changed, out, n=30, shard=30) == 0
    tok = AutoTokenizer.from_pretrained(teacher)
    tok.add_tokens(["zzzqq"])
    tok.save_pretrained(teacher)
    assert run(changed, out, n=30, shard=30) == 2
    assert "another configuration (see manifest.json: tokenizer:" in capsys.readouterr().err
    assert run(changed, out, "--overwrite", n=30, shard=30) == 0
    assert load_manifest(out).vocab_size == len(tok)


def test_a_writer_dying_with_a_full_queue_is_stopped_without_hanging(monkeypatch):
    """The writer fails while the main thread stops it, its queue full: no blocking put."""
    import threading
    import time

    def slow_failure(self, *args):
        time.sleep(1.0)
        raise OSError("disk full")

    monkeypatch.setattr(ShardWriterThread, "_write_shard", slow_failure)
    writer = ShardWriterThread(store=None, task=None, summary=None)
    writer.start()
    writer.queue.put(BeginShard(0, [], []))
    writer.queue.put(EndShard())
    while writer.queue.qsize():  # the writer is inside the failing write
        time.sleep(0.01)
    for _ in range(writer.queue.maxsize):
        writer.queue.put_nowait(EndShard())
    stopper = threading.Thread(target=writer.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive()
    assert isinstance(writer.error, OSError)


def test_head_of_an_unsupported_architecture_is_refused():
    from smash.precompute.shared.adapters import adapter_for
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    model = DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    )
    with pytest.raises(ValueError, match="DistilBertForMaskedLM: no masked-LM head"):
        adapter_for(model)


def test_a_corpus_that_runs_out_is_reported(tiny, tmp_path, capsys):
    assert run(tiny, tmp_path, n=30_000, shard=10_000) == 0
    out = capsys.readouterr().out
    assert "note: the corpus ran out after" in out and "of the 30,000 examples" in out
    assert 0 < load_manifest(tmp_path).num_samples < 30_000


def test_resume_with_another_number_of_ranks(tiny, pair_store, tmp_path, monkeypatch):
    """Shards finished by rank 1 of 2 are kept by a later single-process run."""
    import torch.distributed as dist

    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, **k: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(tiny, tmp_path) == 0
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000001.tar"]
    first = (tmp_path / "shard-000001.tar").stat().st_mtime_ns
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run(tiny, tmp_path) == 0
    assert (tmp_path / "shard-000001.tar").stat().st_mtime_ns == first  # not recomputed
    assert_same_store(tmp_path, pair_store)


def test_masked_text_masks_do_not_depend_on_ranks_or_reruns(tiny, tmp_path, monkeypatch):
    """A mlm store written half by rank 1 of 2, then finished by one process, is byte-identical
    to one process's store: each example's masks come from (seed, its index) alone."""
    import torch.distributed as dist

    options = ("--max-length", "64", "--segment-words", "30", "--tokenize-workers", "0")
    mlm = {"n": 40, "shard": 20, "k": 8}
    assert run(tiny, tmp_path / "whole", *options, task="mlm", **mlm) == 0
    for name in ("init_process_group", "barrier", "destroy_process_group"):
        monkeypatch.setattr(dist, name, lambda *a, **k: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(tiny, tmp_path / "split", *options, task="mlm", **mlm) == 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run(tiny, tmp_path / "split", *options, task="mlm", **mlm) == 0
    assert store_files(tmp_path / "split") == store_files(tmp_path / "whole")
