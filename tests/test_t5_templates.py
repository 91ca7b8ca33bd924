"""T5 prompts (paper appendix A.3): the tiny unigram tokenizer, and LM-BFF templates read with
``<s>`` removed, ``<mask>`` as ``<extra_id_0>`` and ``</s>`` closing the input."""

import pytest
from smash.precompute.shared.templates import (
    answer_token_id,
    is_sentinel_tokenizer,
    parse_template,
    verbalizer_ids,
)
from smash.precompute.tiny import REQUIRED_WORDS

SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"
PAIR = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"


@pytest.fixture(scope="module")
def t5_tok(tiny_t5):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_t5["tokenizer"])


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_tiny_t5_tokenizer_has_t5s_layout(t5_tok):
    tok = t5_tok
    assert type(tok).__name__.startswith("T5Tokenizer")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.mask_token_id is None and tok.cls_token_id is None
    sentinels = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert len(set(sentinels)) == 100 and tok.unk_token_id not in sentinels
    assert tok.encode("good")[-1] == tok.eos_token_id  # T5 closes every input with </s>
    for word in REQUIRED_WORDS:
        assert len(enc(tok, " " + word)) == 1, word
    ids = verbalizer_ids(tok, ["No", "Maybe", "Yes", "terrible", "bad", "okay", "good", "great"])
    assert tok.convert_ids_to_tokens(ids[:3]) == ["▁No", "▁Maybe", "▁Yes"]


def test_the_answer_slot_is_the_sentinel(t5_tok, tiny_tokenizer):
    assert is_sentinel_tokenizer(t5_tok) and not is_sentinel_tokenizer(tiny_tokenizer)
    assert answer_token_id(t5_tok) == t5_tok.convert_tokens_to_ids("<extra_id_0>")
    assert answer_token_id(tiny_tokenizer) == tiny_tokenizer.mask_token_id


def test_sentiment_template_for_t5(t5_tok):
    tok = t5_tok
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    out = parse_template(SENTIMENT).encode(tok, ["The movie was fun"], max_length=64)
    expected = (  # x It was <extra_id_0>.</s>: no <s>
        enc(tok, "The movie was fun") + enc(tok, " It was") + [sentinel] + enc(tok, ".") + [1]
    )
    assert out.input_ids == expected
    assert out.input_ids[out.mask_position] == sentinel and out.input_ids.count(sentinel) == 1


def test_pair_template_for_t5(t5_tok):
    tok = t5_tok
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    out = parse_template(PAIR).encode(tok, ["Is it good.", "The film is great."], 64)
    expected = (  # x1? <extra_id_0>, x2</s>
        enc(tok, "Is it good")
        + enc(tok, "?")
        + [sentinel]
        + enc(tok, ",")
        + enc(tok, " the film is great.")
        + [tok.eos_token_id]
    )
    assert out.input_ids == expected
    assert out.input_ids[out.mask_position] == sentinel
    short = parse_template(PAIR).encode(tok, ["Is it good.", "The film is great."], 8)
    assert len(short.input_ids) == 8 and short.input_ids[short.mask_position] == sentinel


def test_a_tokenizer_without_an_answer_slot_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "fun": 1}, unk_token="<unk>"))
    plain = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    plain.name_or_path = "plain"
    with pytest.raises(ValueError, match="'plain' has neither a mask token nor <extra_id_0>"):
        answer_token_id(plain)
    with pytest.raises(ValueError, match=r"uses \*cls\* but the tokenizer has no cls_token_id"):
        parse_template(SENTIMENT).encode(plain, ["fun"], 16)
