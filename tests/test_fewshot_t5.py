"""Few-shot evaluation of a T5 (paper Table 4, appendix A.3): label words scored at the
decoder's second position, the templates read without <s> and with <extra_id_0>."""

import json
from pathlib import Path

import pytest
import torch
from smash.precompute.kshot.data import Example
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.cli import main
from smash.train.fewshot.encoder_head import T5EncoderClassifier
from smash.train.fewshot.learners import PromptLearner, collate
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "STS-B")], seeds=[13], k=8)
    return root


def test_t5_label_words_at_the_second_decoder_position(tiny_t5):
    tok = AutoTokenizer.from_pretrained(tiny_t5["student"])
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["student"]).eval()
    task = get_task("STS-B")
    learner = PromptLearner(model, tok, task, task.template, task.verbalizer, 64)
    feats = learner.encode(
        [Example(("A boat.", "The river."), 3.0, 1), Example(("Hi.", "Ho."), 1.0, 2)]
    )
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    assert all(f.input_ids[f.mask_position] == sentinel for f in feats)
    batch = collate(feats, tok.pad_token_id, regression=True)
    with torch.no_grad():
        out = learner.forward(batch)
        start = torch.tensor([[tok.pad_token_id, sentinel]]).expand(2, 2)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     decoder_input_ids=start).logits[:, 1]  # fmt: skip
    no, yes = tok.convert_tokens_to_ids(["▁No", "▁Yes"])
    torch.testing.assert_close(out, full[:, [no, yes]], rtol=1e-5, atol=1e-5)


def test_evaluate_fewshot_on_a_tiny_t5(tiny_t5, kshot, tmp_path):
    out = tmp_path / "out"
    main(["--model", str(tiny_t5["student"]), "--tasks", "SST-2", "STS-B", "--data", str(kshot),
          "--mode", "prompt", "zero-shot", "finetune", "--out", str(out), "--k", "8", "--seeds",
          "13", "--lrs", "1e-3", "--batch-sizes", "4", "--max-steps", "4", "--eval-every", "2",
          "--max-length", "64", "--device", "cpu"])  # fmt: skip
    entries = json.loads((out / "results.json").read_text())["entries"]
    assert sorted((e["mode"], e["task"]) for e in entries) == [
        (mode, task) for mode in ("finetune", "prompt", "zero-shot") for task in ("SST-2", "STS-B")
    ]


def test_the_t5_encoder_head_reads_real_tokens_only(tiny_t5):
    """Mean-pooled over the real tokens: padding a row does not change its outputs."""
    torch.manual_seed(0)
    model = T5EncoderClassifier(str(tiny_t5["student"]), 3).eval()
    assert not hasattr(model.encoder, "decoder")
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
        hidden = model.encoder(input_ids=ids[:1]).last_hidden_state
    assert both.shape == (2, 3)
    torch.testing.assert_close(both[1:], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[:1], model.head(hidden.mean(dim=1)), rtol=1e-5, atol=1e-6)


def test_t5_finetune_inputs_have_no_bos(tiny_t5):
    from smash.train.fewshot.learners import FinetuneLearner

    tok = AutoTokenizer.from_pretrained(tiny_t5["student"])
    learner = FinetuneLearner(None, tok, get_task("MRPC"), 64)
    (feats,) = learner.encode([Example(("A boat.", "The river."), 1, 0)])
    eos = tok.eos_token_id
    expected = tok.encode("A boat.", add_special_tokens=False) + [eos]
    assert feats.input_ids == expected + tok.encode("The river.", add_special_tokens=False) + [eos]
