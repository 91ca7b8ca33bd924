"""Few-shot evaluation of a T5 (paper Table 4, appendix A.3): label words scored at the
decoder's second position, the templates read without <s> and with <extra_id_0>."""

import json
from pathlib import Path

import pytest
import torch
from fewshot_support import cli_error
from smash.train.fewshot.cli import main
from smash.train.fewshot.data import Example
from smash.train.fewshot.learners import PromptLearner, collate
from smash.train.fewshot.splits import make_kshot
from smash.train.fewshot.tasks import get_task
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


def test_evaluate_fewshot_on_a_tiny_t5(tiny_t5, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    main(["--model", str(tiny_t5["student"]), "--tasks", "SST-2", "STS-B", "--data", str(kshot),
          "--mode", "prompt", "zero-shot", "--out", str(out), "--k", "8", "--seeds", "13",
          "--lrs", "1e-3", "--batch-sizes", "4", "--max-steps", "4", "--eval-every", "2",
          "--max-length", "64", "--device", "cpu"])  # fmt: skip
    entries = json.loads((out / "results.json").read_text())["entries"]
    assert sorted((e["mode"], e["task"]) for e in entries) == [
        ("prompt", "SST-2"), ("prompt", "STS-B"), ("zero-shot", "SST-2"), ("zero-shot", "STS-B")
    ]  # fmt: skip
    err = cli_error(capsys, ["--model", str(tiny_t5["student"]), "--tasks", "SST-2", "--data",
        str(kshot), "--mode", "finetune", "--out", str(tmp_path / "f"), "--k", "8", "--seeds",
        "13", "--device", "cpu"])  # fmt: skip
    assert "standard fine-tuning of a T5 model (a head on its encoder) is not supported" in err
