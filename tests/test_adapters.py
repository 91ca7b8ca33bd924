"""Model adapters: for every supported family, the answer-row logits are the model's own.

The adapter runs the LM head on the answer rows only, the model's forward on every position:
two matrix products of different shapes, which may sum in another order. They agree to fp32
round-off (``FP32``), not bit for bit; a gather from one forward is compared exactly.
"""

import pytest
import torch
from smash.precompute.shared.adapters import (
    EncoderDecoderAdapter,
    MaskedLMAdapter,
    adapter_for,
    max_sequence_length,
)
from smash.precompute.shared.attention_probabilities import PROBABILITIES

FP32 = {"rtol": 1e-5, "atol": 1e-5}


def tiny_masked_lm(family: str, attention_dropout: float = 0.0):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
    )

    size = {"vocab_size": 97, "hidden_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 40,
            "attention_probs_dropout_prob": attention_dropout}  # fmt: skip
    torch.manual_seed(0)
    if family == "bert":
        return BertForMaskedLM(BertConfig(**size)).eval()
    if family == "xlm-roberta":
        return XLMRobertaForMaskedLM(XLMRobertaConfig(**size, pad_token_id=1)).eval()
    return RobertaForMaskedLM(RobertaConfig(**size, pad_token_id=1)).eval()


def batch():
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 97, (3, 11), generator=gen)
    attention = torch.ones_like(input_ids)
    attention[1, 8:] = 0  # padding
    return {"input_ids": input_ids, "attention_mask": attention,
            "mask_batch": torch.tensor([0, 0, 1, 2]), "mask_positions": torch.tensor([2, 9, 4, 10])}  # fmt: skip


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "bert"])
def test_answer_logits_are_the_models_own(family):
    model = tiny_masked_lm(family)
    adapter = adapter_for(model)
    prompts = batch()
    rows, positions = prompts["mask_batch"], prompts["mask_positions"]
    with torch.no_grad():
        full = model(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"])
        full = full.logits[rows, positions]
        answers = adapter.answers(prompts)
        logits = adapter.logits(answers.hidden)
        fused = adapter.features(answers.hidden) @ adapter.decoder.weight.T + adapter.decoder.bias
    torch.testing.assert_close(logits, full, **FP32)
    torch.testing.assert_close(fused, full, **FP32)
    assert answers.hidden.shape == (4, 24) and answers.hidden_states is None


def test_hidden_states_and_attentions_on_request():
    model = tiny_masked_lm("roberta")
    prompts = batch()
    with pytest.raises(ValueError, match="attention probabilities need the 'smash_probabilities'"):
        MaskedLMAdapter(model).answers(prompts, attentions=True)
    model.set_attn_implementation("eager")  # gives the weights after dropout: refused too
    with pytest.raises(ValueError, match="it runs 'eager'"):
        MaskedLMAdapter(model).answers(prompts, attentions=True)
    model.set_attn_implementation(PROBABILITIES)
    answers = MaskedLMAdapter(model).answers(prompts, hidden_states=True, attentions=True)
    assert len(answers.hidden_states) == 3 and answers.hidden_states[0].shape == (3, 11, 24)
    assert len(answers.attentions) == 2 and answers.attentions[0].shape == (3, 4, 11, 11)
    torch.testing.assert_close(answers.attentions[1].sum(-1), torch.ones(3, 4, 11))
    rows, positions = prompts["mask_batch"], prompts["mask_positions"]
    assert torch.equal(answers.hidden_states[-1][rows, positions], answers.hidden)


def test_an_unsupported_family_is_refused():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    model = DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    )
    with pytest.raises(ValueError, match="DistilBertForMaskedLM: no masked-LM head"):
        adapter_for(model)


def tiny_t5(tied: bool = True, dropout: float = 0.0):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=97, d_model=24, d_kv=6, d_ff=48, num_layers=2, num_heads=4,
                      dropout_rate=dropout, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_t5_answer_logits_are_the_second_decoder_positions(tied):
    """The decoder fed <pad> <extra_id_0>: logits at its second position, and the fused-linear
    product (features @ lm_head.weight.T, no bias), both to fp32 round-off."""
    model, sentinel = tiny_t5(tied), 96
    adapter = adapter_for(model, sentinel_id=sentinel)
    assert isinstance(adapter, EncoderDecoderAdapter) and adapter.decoder.bias is None
    prompts = {**batch(), "mask_batch": torch.tensor([2, 0, 1]),
               "mask_positions": torch.tensor([3, 5, 4])}  # fmt: skip
    with torch.no_grad():
        start = torch.tensor([[0, sentinel]]).expand(3, 2)
        full = model(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                     decoder_input_ids=start).logits[:, 1][prompts["mask_batch"]]  # fmt: skip
        answers = adapter.answers(prompts)
        logits = adapter.logits(answers.hidden)
        fused = adapter.features(answers.hidden) @ adapter.decoder.weight.T
        label_words = adapter.logits_at(adapter.features(answers.hidden), torch.tensor([7, 50]))
    torch.testing.assert_close(logits, full, **FP32)
    torch.testing.assert_close(fused, full, **FP32)
    torch.testing.assert_close(label_words, full[:, [7, 50]], **FP32)
    # the rescale matters: without it the logits are off by d_model ** 0.5 (tied) or not at all
    unscaled = adapter.decoder(answers.hidden)
    if tied:
        torch.testing.assert_close(unscaled * 24**-0.5, full, **FP32)
    else:
        torch.testing.assert_close(unscaled, full, **FP32)
    assert answers.hidden.shape == (3, 24)


def test_t5_answers_need_one_slot_per_prompt_and_the_sentinel():
    model = tiny_t5()
    with pytest.raises(ValueError, match="needs the tokenizer's <extra_id_0> id"):
        adapter_for(model)
    prompts = batch()  # 4 answer slots in 3 prompts
    with pytest.raises(ValueError, match="one answer per prompt; got 4 answer slots in 3"):
        adapter_for(model, sentinel_id=96).answers(prompts)


def test_t5_encoder_states_on_request():
    model = tiny_t5()
    model.set_attn_implementation(PROBABILITIES)
    prompts = {**batch(), "mask_batch": torch.arange(3), "mask_positions": torch.tensor([1, 2, 3])}
    answers = adapter_for(model, sentinel_id=96).answers(prompts, hidden_states=True,
                                                         attentions=True)  # fmt: skip
    assert len(answers.hidden_states) == 3 and answers.hidden_states[0].shape == (3, 11, 24)
    assert len(answers.attentions) == 2 and answers.attentions[0].shape == (3, 4, 11, 11)


def test_max_sequence_length_of_t5_and_roberta():
    assert max_sequence_length(tiny_t5().config) == 512
    assert max_sequence_length(tiny_masked_lm("roberta").config) == 40 - 2


@pytest.mark.parametrize("family", ["roberta", "bert", "t5"])
def test_the_probabilities_path_is_the_eager_one_returning_probabilities(family):
    """Eval mode: the eager path's outputs and weights, bit for bit. Train mode with attention
    dropout: the same outputs for the same RNG state, while the weights returned are the
    probabilities (rows summing to 1), not the eager path's weights after dropout."""
    model = tiny_t5(dropout=0.5) if family == "t5" else tiny_masked_lm(family, 0.5)
    ids, mask = batch()["input_ids"], batch()["attention_mask"]
    extra = {"decoder_input_ids": ids[:, :2]} if family == "t5" else {}

    def run(path, train):
        model.set_attn_implementation(path)
        model.train(train)
        torch.manual_seed(3)
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True, **extra)
        return out.logits, out.encoder_attentions if family == "t5" else out.attentions

    for train in (False, True):
        (ours, probs), (eager, weights) = run(PROBABILITIES, train), run("eager", train)
        assert torch.equal(ours, eager)
        rows = probs[-1].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
        assert all(torch.equal(p, w) for p, w in zip(probs, weights)) != train
