"""The ``distill`` baseline: the teacher over k-shot splits into a keyed store, the soft-label
loss against it, and ``evaluate-fewshot --mode distill`` end to end, on tiny local models."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fewshot_support import cli_error
from smash.precompute.cli import main as precompute
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.store.cli import main as smash_store
from smash.store.cli import verify_store
from smash.store.manifest import finalize_store, load_manifest
from smash.store.reader import StoreDataset
from smash.store.writer import StoreWriter
from smash.train.fewshot.cli import main
from smash.train.fewshot.distill import DistillLearner, DistillSettings, prepare_distill
from smash.train.fewshot.learners import PromptLearner, collate
from smash.train.fewshot.protocol import Protocol, _train

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
TASKS = ("SST-2", "STS-B", "MNLI")


def kshot_pass(tiny, data, out, *extra):
    argv = ["--task", "kshot", "--kshot-data", str(data), "--teacher", str(tiny["teacher"]),
            "--kshot-k", "8", "--k", "16", "--max-length", "64", "--dtype", "fp32",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
    return precompute(argv)


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in TASKS], seeds=[13, 21], k=8)
    return root


@pytest.fixture(scope="module")
def stores(tiny, kshot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores")
    assert kshot_pass(tiny, kshot, out, "--kshot-tasks", *TASKS, "--kshot-seeds", "13", "21") == 0
    return out


def student(tiny):
    from transformers import AutoModelForMaskedLM

    # no dropout: the loss is compared with a reference forward of the same weights
    return AutoModelForMaskedLM.from_pretrained(
        tiny["student"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def test_store_equals_a_teacher_forward_at_the_mask(tiny, tiny_tokenizer, kshot, stores):
    from transformers import AutoModelForMaskedLM

    teacher = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
    for name in TASKS:
        task = get_task(name)
        manifest = load_manifest(stores / task.dirname)
        assert manifest.producer["task"] == "kshot" and manifest.producer["max_length"] == 64
        files = manifest.producer["task_options"]["files"]
        assert sorted(files) == [f"{task.dirname}/8-{s}/train.tsv" for s in (13, 21)]
        examples = list(StoreDataset(stores / task.dirname, shuffle=False))
        keys = [(e["meta"]["seed"], e["meta"]["split"], e["meta"]["row"]) for e in examples]
        splits = {s: load_kshot(kshot, task, 8, s).train for s in (13, 21)}
        assert sorted(keys) == [(s, "train", r) for s in (13, 21) for r in range(len(splits[s]))]
        template = PromptLearner(
            teacher, tiny_tokenizer, task, task.template, task.verbalizer, 64
        ).template
        for ex in examples:
            meta = ex["meta"]
            assert (meta["task"], meta["k"]) == (task.name, 8)
            source = splits[meta["seed"]][meta["row"]]
            prompt = template.encode(tiny_tokenizer, source.texts, 64)
            assert ex["input_ids"].tolist() == prompt.input_ids
            assert ex["mask_positions"].tolist() == [prompt.mask_position]
            with torch.no_grad():
                logits = teacher(input_ids=torch.tensor([prompt.input_ids])).logits
            logp = torch.log_softmax(logits[0, prompt.mask_position].float(), -1)
            top = torch.topk(logp, 16)
            # the same ids (the store keeps them in its own order: by fp16 value, then id)
            ids = torch.from_numpy(ex["topk_ids"][0])
            assert sorted(ids.tolist()) == sorted(top.indices.tolist())
            stored = torch.from_numpy(ex["topk_logprobs"][0].astype(np.float32))
            torch.testing.assert_close(stored, logp[ids].half().float(), atol=0, rtol=1e-3)
            rest = logp.clone()
            rest[top.indices] = -torch.inf
            assert ex["tail_logmass"][0] == pytest.approx(torch.logsumexp(rest, 0).item(), 1e-4)
            assert ex["label"] == (-1 if task.is_regression else source.label)


def test_verify_checks_the_keys(tiny, stores, tmp_path, capsys):
    assert smash_store(["verify", str(stores / "SST-2")]) == 0
    vocab, k = 50, 4
    producer = {"example_keys": ["task", "k", "seed", "split", "row"]}
    rng = np.random.default_rng(0)

    def example(row):
        logp = np.log(np.full(k, 0.2, np.float32)).astype(np.float16)
        return {"input_ids": rng.integers(0, vocab, 6), "mask_positions": np.array([2]),
                "topk_ids": rng.permutation(vocab)[None, :k], "topk_logprobs": logp[None],
                "tail_logmass": np.array([np.log(0.2)], np.float32), "label": 0,
                "meta": {"task": "SST-2", "k": 8, "seed": 13, "split": "train", "row": row}}  # fmt: skip

    writer = StoreWriter(tmp_path, producer=producer, tokenizer={"fingerprint": "x",
                         "vocab_size": vocab}, k=k)  # fmt: skip
    writer.write_shard(0, [example(0), example(1)])
    writer.write_shard(1, [example(2), example(1)])
    finalize_store(tmp_path)
    [(shard, problem)] = verify_store(str(tmp_path))
    assert shard == "shard-000001.tar"
    assert problem.startswith('example 1 repeats the key {"task": "SST-2", "k": 8, "seed": 13')
    assert problem.endswith("of shard-000000.tar/1")
    assert smash_store(["verify", str(tmp_path)]) == 1


def _learners(tiny, tiny_tokenizer, kshot, stores, weight, temperature=1.0):
    task = get_task("SST-2")
    data = load_kshot(kshot, task, 8, 13)
    settings = DistillSettings(stores, weight=weight, temperature=temperature)
    split, soft = prepare_distill(
        settings, "distill", task, 8, 13, data, kshot, tiny_tokenizer, task.template, 64, {}
    )
    prompt = PromptLearner(student(tiny), tiny_tokenizer, task, task.template, task.verbalizer, 64)
    return DistillLearner(prompt, soft, split.train, settings), split


@pytest.mark.parametrize("weight", [0.7, 2.0])
def test_distill_loss_equals_a_hand_written_reference(tiny, tiny_tokenizer, kshot, stores, weight):
    """CE over the label words + weight * soft CE over the whole vocabulary against the stored
    top-k with the tail as one bucket (train-student's default), loss and gradients."""
    learner, split = _learners(tiny, tiny_tokenizer, kshot, stores, weight)
    features = learner.encode(split.train)
    assert [f.teacher_row for f in features] == list(range(len(split.train)))
    batch = collate(features[3:8], tiny_tokenizer.pad_token_id, regression=False)
    model = learner.model.train()
    loss = learner.loss(learner.forward(batch), batch.labels)
    grads = torch.autograd.grad(2 * loss, list(model.parameters()), allow_unused=True)

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits[torch.arange(5), batch.mask_positions].double()  # (B, V)
    words = logits[:, learner.prompt.verbalizer]
    ce = F.cross_entropy(words, batch.labels)
    soft = learner.soft
    ids, p = soft.ids[3:8], soft.logprobs[3:8].double().exp()
    r = soft.tail_logmass[3:8].double().exp()
    z = p.sum(1) + r
    log_s = torch.log_softmax(logits, -1)
    outside = torch.ones_like(log_s, dtype=torch.bool).scatter(1, ids, False)
    log_tail = torch.logsumexp(log_s.masked_fill(~outside, -torch.inf), -1)
    soft_ce = -((p / z[:, None]) * log_s.gather(1, ids)).sum(1) - (r / z) * log_tail
    expected = ce + weight * soft_ce.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    ref = torch.autograd.grad(2 * expected, list(model.parameters()), allow_unused=True)
    for got, want in zip(grads, ref):
        if want is None:
            assert got is None or not got.any()
            continue
        torch.testing.assert_close(got, want.float(), atol=2e-6, rtol=1e-4)


def test_distill_with_weight_zero_is_prompt_finetuning(tiny, tiny_tokenizer, kshot, stores):
    """Weight 0: the same trained weights, bit for bit, as prompt-based fine-tuning; weight 1
    trains other weights (the soft term is really in the loss)."""
    protocol = Protocol(max_steps=6, eval_every=3)
    cpu = torch.device("cpu")

    def trained(learner, split):
        torch.manual_seed(13)
        train, dev = learner.encode(split.train), learner.encode(split.dev)
        return _train(learner, train, dev, 1e-3, 4, 13, protocol, cpu)

    zero, split = _learners(tiny, tiny_tokenizer, kshot, stores, 0.0)
    score0, state0, step0 = trained(zero, split)
    task = get_task("SST-2")
    prompt = PromptLearner(student(tiny), tiny_tokenizer, task, task.template, task.verbalizer, 64)
    score1, state1, step1 = trained(prompt, split)
    assert (score0, step0) == (score1, step1)
    assert all(torch.equal(state0[n], state1[n]) for n in state0)
    one, _ = _learners(tiny, tiny_tokenizer, kshot, stores, 1.0)
    _, state2, _ = trained(one, split)
    assert not all(torch.equal(state0[n], state2[n]) for n in state0)


def _fewshot(tiny, kshot, out, *extra):
    return ["--model", str(tiny["student"]), "--data", str(kshot), "--out", str(out), "--k", "8",
            "--lrs", "1e-3", "--batch-sizes", "4", "--max-steps", "4", "--eval-every", "2",
            "--max-length", "64", "--device", "cpu", *extra]  # fmt: skip


def test_evaluate_fewshot_distill_end_to_end(tiny, kshot, stores, tmp_path):
    out = tmp_path / "out"
    argv = _fewshot(tiny, kshot, out, "--tasks", "SST-2", "STS-B", "--seeds", "13", "21",
                    "--mode", "prompt", "distill", "--distill-store", str(stores),
                    "--distill-weight", "0.5")  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["distill_store"] == str(stores)
    assert result["config"]["distill_weight"] == 0.5
    entries = {(e["mode"], e["task"]): e for e in result["entries"]}
    assert set(entries) == {(m, t) for m in ("prompt", "distill") for t in ("SST-2", "STS-B")}
    distill = entries[("distill", "STS-B")]
    assert [s["seed"] for s in distill["seeds"]] == [13, 21]
    assert all(s["step"] in (2, 4) for s in distill["seeds"])
    assert np.isfinite(distill["summary"]["STS-B"]["mean"])
    assert "| student | distill |" in (out / "results.md").read_text()


def test_bad_stores_are_refused(tiny, tiny_tokenizer, kshot, stores, tmp_path, capsys):
    def refused(*extra, tasks=("SST-2",), seeds=("13",)):
        argv = _fewshot(tiny, kshot, tmp_path / "out", "--tasks", *tasks, "--seeds", *seeds,
                        "--mode", "distill", *extra)  # fmt: skip
        return cli_error(capsys, argv)

    assert "--mode distill needs --distill-store" in refused()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no k-shot store for SST-2 (expected {empty}/SST-2/manifest.json" in refused(
        "--distill-store", str(empty)
    )
    # a store of seed 13 only, asked for seed 21
    only13 = tmp_path / "only13"
    assert kshot_pass(tiny, kshot, only13, "--kshot-tasks", "SST-2", "--kshot-seeds", "13") == 0
    err = refused("--distill-store", str(only13), seeds=("21",))
    assert f"{only13 / 'SST-2'}: no soft labels for {kshot}/SST-2/8-21/train.tsv" in err
    assert "(the store covers SST-2/8-13/train.tsv)" in err
    # another task's store given directly
    assert f"{stores / 'MNLI'}: a k-shot store of MNLI, not of SST-2" in refused(
        "--distill-store", str(stores / "MNLI")
    )
    # another max length
    short = tmp_path / "short"
    assert kshot_pass(tiny, kshot, short, "--kshot-tasks", "SST-2", "--kshot-seeds", "13",
                      "--max-length", "48") == 0  # fmt: skip
    assert "made with max_length 48, the student's prompt has 64" in refused(
        "--distill-store", str(short)
    )
    # another copy of the training file
    edited = tmp_path / "edited"
    shutil.copytree(kshot, edited)
    train = edited / "SST-2" / "8-13" / "train.tsv"
    train.write_text(train.read_text().replace("\t0\n", "\t1\n", 1))
    argv = _fewshot(tiny, edited, tmp_path / "out", "--tasks", "SST-2", "--seeds", "13",
                    "--mode", "distill", "--distill-store", str(stores))  # fmt: skip
    assert "made from another SST-2/8-13/train.tsv" in cli_error(capsys, argv)


def test_a_student_with_another_tokenizer_is_refused(tiny, kshot, stores, tmp_path, capsys):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny["student"], other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["zzqqx"])
    tokenizer.save_pretrained(other)
    argv = _fewshot(tiny, kshot, tmp_path / "out", "--tasks", "SST-2", "--seeds", "13",
                    "--mode", "distill", "--distill-store", str(stores))  # fmt: skip
    argv[1] = str(other)
    err = cli_error(capsys, argv)
    assert str(stores / "SST-2") in err and "the student's prompts would differ" in err


def test_kshot_pass_refuses_bad_input(tiny, kshot, tmp_path, capsys):
    def refused(*argv):
        assert precompute(list(argv)) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    base = ["--task", "kshot", "--teacher", str(tiny["teacher"]), "--out", str(tmp_path / "o")]
    assert "needs --kshot-data and --kshot-tasks" in refused(*base)
    err = refused(*base, "--kshot-data", str(kshot), "--kshot-tasks", "RTE", "--kshot-k", "8")
    assert f"{kshot / 'RTE' / '8-13'}: no 8-shot split of RTE for seed 13" in err
    err = refused(*base, "--kshot-data", str(kshot), "--kshot-tasks", "SST-2", "--corpus", "x")
    assert "--corpus is for the corpus tasks, not --task kshot" in err
    err = refused(*base[2:], "--task", "sentiment", "--corpus", str(tiny["corpus"]),
                  "--kshot-data", str(kshot), "--kshot-k", "8")  # fmt: skip
    assert "--kshot-data, --kshot-k: for --task kshot, not --task sentiment" in err
    assert not (tmp_path / "o").exists()


def test_t5_student_distills_at_the_decoders_second_position(tiny_t5, kshot, tmp_path):
    """A T5 teacher's store and a T5 student: the soft term reads the student's whole
    vocabulary at the decoder's second position (after '<pad> <extra_id_0>')."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "t5"
    argv = ["--task", "kshot", "--kshot-data", str(kshot), "--kshot-tasks", "SST-2",
            "--kshot-seeds", "13", "--kshot-k", "8", "--teacher", str(tiny_t5["teacher"]),
            "--k", "16", "--max-length", "64", "--dtype", "fp32", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert precompute(argv) == 0
    assert load_manifest(out / "SST-2").producer["teacher"]["family"] == "t5"
    task = get_task("SST-2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5["student"])
    settings = DistillSettings(out, weight=0.5)
    split, soft = prepare_distill(
        settings, "distill", task, 8, 13, load_kshot(kshot, task, 8, 13), kshot, tokenizer,
        task.template, 64, {},
    )  # fmt: skip
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["student"]).train()
    prompt = PromptLearner(model, tokenizer, task, task.template, task.verbalizer, 64)
    learner = DistillLearner(prompt, soft, split.train, settings)
    batch = collate(learner.encode(split.train)[:4], tokenizer.pad_token_id, regression=False)
    loss = learner.loss(learner.forward(batch), batch.labels)

    start = [model.config.decoder_start_token_id, tokenizer.convert_tokens_to_ids("<extra_id_0>")]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        decoder_input_ids=torch.tensor([start] * 4),
    ).logits[:, 1]  # (B, V)
    ce = F.cross_entropy(logits[:, prompt.verbalizer], batch.labels)
    log_s = torch.log_softmax(logits.double(), -1)
    p, r = soft.logprobs[:4].double().exp(), soft.tail_logmass[:4].double().exp()
    z = p.sum(1) + r
    outside = torch.ones_like(log_s, dtype=torch.bool).scatter(1, soft.ids[:4], False)
    log_tail = torch.logsumexp(log_s.masked_fill(~outside, -torch.inf), -1)
    soft_ce = -((p / z[:, None]) * log_s.gather(1, soft.ids[:4])).sum(1) - (r / z) * log_tail
    assert loss.item() == pytest.approx((ce + 0.5 * soft_ce.mean()).item(), rel=1e-5)


def test_kshot_pass_reruns_and_refuses_another_configuration(tiny, kshot, tmp_path, capsys):
    out = tmp_path / "st"
    args = ("--kshot-tasks", "SST-2", "--kshot-seeds", "13")
    assert kshot_pass(tiny, kshot, out, *args) == 0
    before = {p.name: p.read_bytes() for p in (out / "SST-2").iterdir()}
    assert kshot_pass(tiny, kshot, out, *args) == 0  # the finished store is kept as it is
    assert {p.name: p.read_bytes() for p in (out / "SST-2").iterdir()} == before
    assert "1 already done" in capsys.readouterr().out
    assert kshot_pass(tiny, kshot, out, "--kshot-tasks", "SST-2", "--kshot-seeds", "13", "21") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out / 'SST-2'} holds a store made with another configuration" in err
    assert "--overwrite" in err
    assert kshot_pass(tiny, kshot, out, *args[:2], "--kshot-seeds", "13", "21", "--overwrite") == 0
    files = load_manifest(out / "SST-2").producer["task_options"]["files"]
    assert sorted(files) == ["SST-2/8-13/train.tsv", "SST-2/8-21/train.tsv"]


def test_one_store_serves_several_k(tiny, tiny_tokenizer, tmp_path):
    """--kshot-k 4 8: one store holds both K's soft labels (a learning curve over K)."""
    task = get_task("SST-2")
    data = tmp_path / "data"
    make_kshot(ORIGINAL, data, [task], seeds=[13], k=[4, 8])
    out = tmp_path / "store"
    assert kshot_pass(tiny, data, out, "--kshot-tasks", "SST-2", "--kshot-seeds", "13",
                      "--kshot-k", "4", "8") == 0  # fmt: skip
    files = load_manifest(out / task.dirname).producer["task_options"]["files"]
    assert sorted(files) == ["SST-2/4-13/train.tsv", "SST-2/8-13/train.tsv"]
    settings, stores = DistillSettings(store=out), {}
    for k in (4, 8):
        split = load_kshot(data, task, k, 13)
        _, labels = prepare_distill(settings, "distill", task, k, 13, split, data, tiny_tokenizer,
                                    task.template, 64, stores)  # fmt: skip
        assert labels.ids.shape[0] == len(split.train) == 2 * k
