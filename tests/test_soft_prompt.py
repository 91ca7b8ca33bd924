"""Soft prompts (PPT's prompt pre-training): ``train-student`` trains only the prompt vectors in
front of every input, the student frozen; the export puts the prompt beside the unchanged
model, and reloading both reproduces the trained module's outputs exactly; resume works."""

import json

import pytest
import torch
from smash.precompute.shared.adapters import adapter_for
from smash.precompute.shared.templates import answer_token_id
from smash.train.cli import main as train_student
from smash.train.config import ConfigError, load_config
from smash.train.soft_prompt import SoftPrompt, SoftPromptAdapter, freeze, load_soft_prompt
from smash.train.trainer import Trainer
from train_support import first_batch, sentiment_store_of, tiny_config, write_config
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

LENGTH = 4


@pytest.fixture(scope="module")
def sentiment(tiny, tmp_path_factory):
    return sentiment_store_of(tiny, tmp_path_factory)


def ppt_config(out, tiny, store, **overrides):
    overrides = {"objective": "hard", "soft_prompt_length": LENGTH, **overrides}
    return tiny_config(out, tiny["student"], [(store, 1.0)], **overrides)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_the_prompt_trains_and_its_export_reproduces_the_module(tiny, sentiment, tmp_path):
    original = weights(AutoModelForMaskedLM.from_pretrained(tiny["student"]))
    trainer = Trainer(load_config(ppt_config(tmp_path / "run", tiny, sentiment, max_steps=4)))
    trainer.setup()
    start = trainer.module.soft_prompt.embeddings.detach().clone()
    trainable = [n for n, p in trainer.module.named_parameters() if p.requires_grad]
    assert trainable == ["soft_prompt.embeddings"]
    trainer.train()
    trainer.cleanup()
    assert not torch.equal(trainer.module.soft_prompt.embeddings, start)  # it learned
    for name, value in weights(trainer.module.model).items():  # the backbone did not move
        assert torch.equal(value, original[name]), name

    export = tmp_path / "run" / "student"
    reloaded = AutoModelForMaskedLM.from_pretrained(export).eval()
    for name, value in weights(reloaded).items():  # the exported model is the student, bit for bit
        assert torch.equal(value, original[name]), name
    prompt, info = load_soft_prompt(export)
    assert info["length"] == LENGTH and info["backbone"]["name"] == str(tiny["student"])
    assert info["backbone"]["fingerprint"].startswith("sha256:")
    assert torch.equal(prompt.embeddings, trainer.module.soft_prompt.embeddings)

    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = first_batch(sentiment, 6, tokenizer.pad_token_id)
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    trainer.module.eval()
    with torch.no_grad():
        trained = trainer.module.adapter.answers(batch).hidden
        ours = SoftPromptAdapter(adapter_for(reloaded), prompt).answers(batch).hidden
    assert torch.equal(ours, trained)


def test_a_killed_prompt_run_resumes_exactly(tiny, sentiment, tmp_path):
    def run(out, stop=None, resume=False):
        config = ppt_config(out, tiny, sentiment, max_steps=4, checkpoint_every=2)
        trainer = Trainer(load_config(config), resume=resume)
        trainer.setup()
        trainer.train(stop_at_step=stop)
        trainer.cleanup()
        return trainer.module.soft_prompt.embeddings.detach().clone()

    straight = run(tmp_path / "straight")
    run(tmp_path / "killed", stop=2)
    assert torch.equal(run(tmp_path / "killed", resume=True), straight)


def test_the_cli_exports_a_prompt_and_refuses_what_cannot_train_one(
    tiny, sentiment, tmp_path, capsys
):
    config = write_config(tmp_path / "c.json", tiny_config(tmp_path / "run", tiny["student"],
                          [(sentiment, 1.0)], objective="hard", max_steps=3))  # fmt: skip
    assert train_student(["--config", config, "--soft-prompt-length", "3"]) == 0
    assert (
        json.loads((tmp_path / "run" / "student" / "soft_prompt.json").read_text())["length"] == 3
    )
    capsys.readouterr()
    for flags, says in [
        (["--soft-prompt-length", "-1"], "soft_prompt_length must be >= 0"),
        (["--soft-prompt-length", "3", "--objective", "hidn", "--teacher", str(tiny["teacher"])],
         "soft prompt lengthens"),
        (["--soft-prompt-length", "200"], "after its 200 soft-prompt vectors"),
    ]:  # fmt: skip
        assert train_student(["--config", config, "--out", str(tmp_path / "x"), *flags]) == 2
        assert says in capsys.readouterr().err
    with pytest.raises(ConfigError, match="soft_prompt_length"):
        load_config(ppt_config(tmp_path / "y", tiny, sentiment, soft_prompt_length="4"))


@pytest.mark.parametrize("family", ["masked-lm", "t5"])
def test_a_prompt_of_token_embeddings_equals_those_tokens_in_front(family, tiny, tiny_t5):
    """The soft prompt stands where word embeddings stand: a prompt made of some tokens'
    embeddings gives the logits of those tokens put in front of the input."""
    if family == "t5":
        path, model_class = tiny_t5["student"], AutoModelForSeq2SeqLM
    else:
        path, model_class = tiny["student"], AutoModelForMaskedLM
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = freeze(model_class.from_pretrained(path).eval())
    slot = answer_token_id(tokenizer)
    front = tokenizer("the river bank", add_special_tokens=False)["input_ids"]
    body = tokenizer("It was great and good", add_special_tokens=False)["input_ids"] + [slot]
    prompt = SoftPrompt(model.get_input_embeddings().weight[torch.tensor(front)])
    plain = adapter_for(model, slot)

    def prompts(ids, position):
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids)).long(),
                "mask_batch": torch.tensor([0]), "mask_positions": torch.tensor([position])}  # fmt: skip

    with torch.no_grad():
        ours = SoftPromptAdapter(plain, prompt).answers(prompts(body, len(body) - 1)).hidden
        theirs = plain.answers(prompts(front + body, len(front + body) - 1)).hidden
    torch.testing.assert_close(plain.logits(ours), plain.logits(theirs), rtol=1e-5, atol=1e-5)
