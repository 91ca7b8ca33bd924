"""The shared LM-BFF template engine: parsing, encoding, truncation, label words, errors."""

import pytest
from smash.precompute.shared.templates import parse_template, verbalizer_ids

SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"
PAIR = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_parse_parts():
    t = parse_template(PAIR)
    kinds = [(p.kind, p.text or p.index) for p in t.parts]
    assert kinds == [
        ("special", "cls"),
        ("sentence", 0),
        ("literal", "?"),
        ("special", "mask"),
        ("literal", ","),
        ("sentence", 1),
        ("special", "sep+"),
    ]
    first, second = t.parts[1], t.parts[5]
    assert first.drop_last and not first.space and first.case == ""
    assert second.space and second.case == "l" and not second.drop_last
    assert t.num_sentences == 2


def test_sentiment_ids_and_single_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    out = parse_template(SENTIMENT).encode(tok, ["The movie was fun"], max_length=64)
    expected = (
        [tok.cls_token_id]
        + enc(tok, "The movie was fun")
        + enc(tok, " It was")
        + [tok.mask_token_id]
        + enc(tok, ".")
        + [tok.sep_token_id]
    )
    assert out.input_ids == expected
    assert out.input_ids.count(tok.mask_token_id) == 1
    assert out.input_ids[out.mask_position] == tok.mask_token_id


def test_pair_modifiers(tiny_tokenizer):
    tok = tiny_tokenizer
    out = parse_template(PAIR).encode(tok, ["Is it good.", "The film is great."], 64)
    expected = (
        [tok.cls_token_id]
        + enc(tok, "Is it good")
        + enc(tok, "?")
        + [tok.mask_token_id]
        + enc(tok, ",")
        + enc(tok, " the film is great.")
        + [tok.sep_token_id]
    )
    assert out.input_ids == expected
    assert out.mask_position == 1 + len(enc(tok, "Is it good")) + len(enc(tok, "?"))


def test_all_modifier_combinations(tiny_tokenizer):
    tok = tiny_tokenizer
    out = parse_template("*cls**+sentl-_0**mask**sentu_1*").encode(tok, ["All good!", "bad"], 64)
    assert out.input_ids == (
        [tok.cls_token_id] + enc(tok, " all good") + [tok.mask_token_id] + enc(tok, "Bad")
    )


def test_truncation_keeps_template_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    long_a = " ".join(["the movie was good"] * 30)
    short_b = "It was bad."
    t = parse_template(PAIR)
    full = t.encode(tok, [long_a, short_b], 10_000).input_ids
    for max_length in (12, 20, 33, 64):
        out = t.encode(tok, [long_a, short_b], max_length)
        assert len(out.input_ids) == max_length
        ids = out.input_ids
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert ids.count(tok.mask_token_id) == 1 and ids[out.mask_position] == tok.mask_token_id
        # Template words survive; the sentence is cut from its end, not its start.
        assert ids[out.mask_position - 1 : out.mask_position] == enc(tok, "?")
        assert ids[1:4] == full[1:4]
    # Longest first: the short sentence is untouched while the long one is longer.
    out = t.encode(tok, [long_a, short_b], 40).input_ids
    assert out[-1 - len(enc(tok, " it was bad.")) : -1] == enc(tok, " it was bad.")


def test_truncation_longest_first_balances(tiny_tokenizer):
    tok = tiny_tokenizer
    a = enc(tok, " ".join(["good"] * 40))
    b = enc(tok, " ".join(["bad"] * 30))
    t = parse_template("*cls**sent_0**mask**sent_1*")
    out = t.encode(tok, [" ".join(["good"] * 40), " ".join(["bad"] * 30)], 2 + 41)
    # 72 sentence tokens into 41: the longer is cut to the shorter's length, then tokens come
    # off alternately, the first sentence first on ties.
    n_a = out.mask_position - 1
    n_b = len(out.input_ids) - out.mask_position - 1
    assert (len(a), len(b)) == (41, 31)  # the first word has no leading space: 2 pieces
    assert (n_a, n_b) == (20, 21)
    assert out.input_ids[1 : 1 + n_a] == a[:n_a] and out.input_ids[-n_b:] == b[:n_b]


def test_template_alone_too_long(tiny_tokenizer):
    with pytest.raises(ValueError, match="alone is .* tokens"):
        parse_template(SENTIMENT).encode(tiny_tokenizer, ["fine"], max_length=4)


def test_mask_count_errors():
    with pytest.raises(ValueError, match="exactly one \\*mask\\*, found 0"):
        parse_template("*cls**sent_0*_It_was.*sep+*")
    with pytest.raises(ValueError, match="found 2"):
        parse_template("*cls**mask**sent_0**mask*")


def test_unsupported_parts():
    with pytest.raises(ValueError, match="label_0"):
        parse_template("*cls**sent_0**mask**label_0*")
    with pytest.raises(ValueError, match="sent_x"):
        parse_template("*cls**sent_x**mask*")


def test_missing_sentence(tiny_tokenizer):
    with pytest.raises(ValueError, match="reads 2 sentence"):
        parse_template(PAIR).encode(tiny_tokenizer, ["only one"], 64)


def test_verbalizer_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = verbalizer_ids(tok, ["terrible", "bad", "okay", "good", "great"])
    assert ids == [
        tok.convert_tokens_to_ids("Ġ" + w) for w in ["terrible", "bad", "okay", "good", "great"]
    ]
    assert verbalizer_ids(tok, ["No", "Yes", "Maybe"]) == [
        enc(tok, " " + w)[0] for w in ["No", "Yes", "Maybe"]
    ]


def test_verbalizer_multi_token_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="'xylophonequark'.*splits into"):
        verbalizer_ids(tiny_tokenizer, ["great", "xylophonequark"])


def test_deterministic(tiny_tokenizer):
    t = parse_template(PAIR)
    a = t.encode(tiny_tokenizer, ["One.", "Two."], 64)
    assert a == parse_template(PAIR).encode(tiny_tokenizer, ["One.", "Two."], 64)


def test_encode_batch_equals_one_by_one(tiny_tokenizer, tiny):
    """The batched tokenizer path gives what per-text ``tokenizer.encode`` calls give."""
    tok = tiny_tokenizer
    docs = [d.replace("\n", " ") for d in tiny["corpus"].read_text().split("\n\n") if d][:40]
    pairs = [(d[: 30 + i * 7], d[-(25 + i * 5) :]) for i, d in enumerate(docs)] + [("", "x")]
    template = parse_template(PAIR)
    for max_length in (128, 24):
        batch = template.encode_batch(tok, pairs, max_length)
        assert batch == [template.encode(tok, p, max_length) for p in pairs]
        for (a, b), out in zip(pairs, batch):
            full = (
                [tok.cls_token_id]
                + enc(tok, a[:-1])
                + enc(tok, "?")
                + [tok.mask_token_id]
                + enc(tok, ",")
                + enc(tok, " " + b[:1].lower() + b[1:])
                + [tok.sep_token_id]
            )
            if len(full) <= max_length:
                assert out.input_ids == full
            assert len(out.input_ids) <= max_length
            assert out.input_ids[out.mask_position] == tok.mask_token_id


def test_sentence_limits_cap_a_sentence_before_the_template_is_assembled(tiny_tokenizer):
    """LM-BFF's first_sent_limit: sentence 0 keeps its first N tokens even where the whole
    prompt would fit; other sentences are untouched; max_length still applies after."""
    tok = tiny_tokenizer
    a, b = " ".join(["the movie was good"] * 10), "It was bad."
    t = parse_template(PAIR)
    full = t.encode(tok, [a, b], 10_000)
    capped = t.encode(tok, [a, b], 10_000, {0: 7})
    a_ids = enc(tok, a[:-1])  # sent-_0 drops the last character
    assert len(a_ids) > 7
    assert capped.input_ids == [full.input_ids[0], *a_ids[:7], *full.input_ids[1 + len(a_ids) :]]
    assert capped.input_ids[capped.mask_position] == tok.mask_token_id
    b_ids = enc(tok, " it was bad.")  # +sentl_1: a space, the first letter lower-cased
    assert full.input_ids[-1 - len(b_ids) : -1] == b_ids
    cut_b = t.encode(tok, [a, b], 10_000, {1: 2}).input_ids
    assert cut_b == full.input_ids[: -1 - len(b_ids)] + b_ids[:2] + [tok.sep_token_id]
    assert len(t.encode(tok, [a, b], 12, {0: 7}).input_ids) == 12
