"""precompute-teacher with a T5 teacher (paper 4.7): the answer is the decoder's second token."""

import numpy as np
import pytest
import torch
from smash.precompute.cli import main
from smash.store.manifest import load_manifest
from smash.store.reader import StoreDataset
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

# one float16 step (2**-10 relative; 2**-24, its smallest step, near zero)
FP16_STEP = {"rtol": 2**-10, "atol": 2**-24}


def run(teacher, corpus, out, *extra, task="sentence-pair", n=30, shard=15, k=16):
    argv = ["--task", task, "--corpus", str(corpus), "--teacher", str(teacher), "--out", str(out),
            "--num-examples", str(n), "--shard-size", str(shard), "--k", str(k), "--dtype", "fp32",
            "--device", "cpu", "--token-budget", "1024", "--tokenize-workers", "0", *extra]  # fmt: skip
    return main(argv)


@pytest.fixture(scope="module")
def t5_pair_store(tiny, tiny_t5, tmp_path_factory):
    out = tmp_path_factory.mktemp("t5_pairs")
    assert run(tiny_t5["teacher"], tiny["corpus"], out) == 0
    return out


def test_stored_topk_equals_a_forward_at_the_second_decoder_position(tiny_t5, t5_pair_store):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["teacher"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_t5["teacher"])
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    examples = list(StoreDataset(t5_pair_store, shuffle=False))
    assert len(examples) == 30
    for ex in examples[::4]:
        ids = torch.as_tensor(ex["input_ids"])[None]
        # the prompt: x1? <extra_id_0>, x2</s>, no <s>; the answer slot is the sentinel
        assert ids[0, int(ex["mask_positions"][0])] == sentinel and ids[0, -1] == tok.eos_token_id
        assert (ids == sentinel).sum() == 1 and tok.bos_token_id is None
        start = torch.tensor([[tok.pad_token_id, sentinel]])  # <pad> <extra_id_0>
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=start).logits[0, 1]
        row = torch.log_softmax(logits.float(), -1)
        top = torch.topk(row, 16)
        stored_ids = torch.as_tensor(ex["topk_ids"][0]).long()
        assert torch.equal(stored_ids.sort().values, top.indices.sort().values)
        stored = torch.as_tensor(ex["topk_logprobs"][0].astype(np.float32))
        # the pass's batch against this one example: within one float16 step once stored
        torch.testing.assert_close(stored, row[stored_ids].half().float(), **FP16_STEP)
        rest = torch.ones_like(row, dtype=torch.bool).index_fill_(0, top.indices, False)
        tail = torch.logsumexp(row[rest], 0)
        torch.testing.assert_close(
            torch.as_tensor(ex["tail_logmass"][0]), tail, atol=1e-5, rtol=1e-5
        )


def test_the_manifest_records_the_family(tiny, tiny_t5, t5_pair_store, tmp_path):
    producer = load_manifest(t5_pair_store).producer
    assert producer["teacher"]["family"] == "t5"
    tok = AutoTokenizer.from_pretrained(tiny_t5["teacher"])
    assert producer["verbalizer_ids"] == [tok.convert_tokens_to_ids(f"▁{w}") for w in
                                          ("No", "Maybe", "Yes")]  # fmt: skip
    # a masked-LM store keeps the teacher record it always had (its resumes stay compatible)
    assert run(tiny["teacher"], tiny["corpus"], tmp_path, n=3, shard=3) == 0
    assert "family" not in load_manifest(tmp_path).producer["teacher"]


def test_sentiment_with_a_t5_teacher_labels_by_its_verbalizer(tiny, tiny_t5, tmp_path):
    assert run(tiny_t5["teacher"], tiny["corpus"], tmp_path, "--filter-rule", "none",
               task="sentiment", n=12, shard=12) == 0  # fmt: skip
    examples = list(StoreDataset(tmp_path, shuffle=False))
    assert len(examples) == 12
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["teacher"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_t5["teacher"])
    words = tok.convert_tokens_to_ids(
        [f"▁{w}" for w in ("terrible", "bad", "okay", "good", "great")]
    )
    start = torch.tensor([[tok.pad_token_id, tok.convert_tokens_to_ids("<extra_id_0>")]])
    for ex in examples:
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None],
                           decoder_input_ids=start).logits[0, 1]  # fmt: skip
        assert int(ex["label"]) == int(logits[words].argmax())


def test_a_masking_task_needs_a_masked_lm(tiny, tiny_t5, tmp_path, capsys):
    assert run(tiny_t5["teacher"], tiny["corpus"], tmp_path / "s", task="mlm") == 2
    err = capsys.readouterr().err
    assert "task 'mlm' masks raw text, which needs a masked LM" in err and "T5" in err
    assert not (tmp_path / "s").exists()


def test_sampled_targets_from_a_t5_teacher(tiny, tiny_t5, tmp_path):
    """--targets sampled draws from the same distribution: its stored entropy is the one at the
    second decoder position."""
    argv = ["--task", "sentence-pair", "--corpus", str(tiny["corpus"]), "--teacher",
            str(tiny_t5["teacher"]), "--out", str(tmp_path), "--num-examples", "6",
            "--shard-size", "6", "--targets", "sampled", "--samples", "8", "--dtype", "fp32",
            "--device", "cpu", "--tokenize-workers", "0"]  # fmt: skip
    assert main(argv) == 0
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["teacher"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_t5["teacher"])
    start = torch.tensor([[tok.pad_token_id, tok.convert_tokens_to_ids("<extra_id_0>")]])
    for ex in StoreDataset(tmp_path, shuffle=False):
        assert int(ex["sample_counts"][0].sum()) == 8
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None],
                           decoder_input_ids=start).logits[0, 1]  # fmt: skip
        logp = torch.log_softmax(logits.float(), -1)
        entropy = -(logp.exp() * logp).sum()
        stored = torch.as_tensor(ex["teacher_entropy"][0]).float()  # float16 (format 4)
        torch.testing.assert_close(stored, entropy.half().float(), rtol=2**-10, atol=1e-5)
