"""LM-BFF's template language: parse a prompt template once, encode sentences into it.

A template is a string of parts separated by ``*`` (Gao et al., 2021, ``src/dataset.py``)::

    *cls**sent_0*_It_was*mask*.*sep+*              <s>x0 It was <mask>.</s>
    *cls**sent-_0*?*mask*,*+sentl_1**sep+*         <s>x0?<mask>, x1</s>  (x0 minus its last
                                                   character, x1 with a lower-cased first letter)

Parts: ``cls``, ``mask``, ``sep`` and ``sep+`` are the tokenizer's special tokens (``sep+``
also starts a new segment in LM-BFF; RoBERTa has no segments, so here it is a plain ``sep``).
A T5 tokenizer (no mask token, but the sentinel ``<extra_id_0>``) reads the same templates as
the paper's appendix A.3 does: ``<s>`` removed and ``<mask>`` replaced by ``<extra_id_0>``, so
``cls`` is nothing, ``mask`` is ``<extra_id_0>`` and ``sep``/``sep+`` are ``</s>``::

    *cls**sent-_0*?*mask*,*+sentl_1**sep+*         x0?<extra_id_0>, x1</s>   (T5)

``sent_i`` is sentence ``i``, with modifiers as in LM-BFF: a leading ``+`` puts a space before
it, ``l`` (``u``) lower-cases (upper-cases) its first character, a trailing ``-`` deletes its
last character, e.g. ``+sentl-_1``. Any other part is literal text in which ``_`` is a space;
empty parts (between ``**``) contribute nothing. LM-BFF's demonstration parts (``label_i``,
``labelx_i``) are not parsed and are rejected: the few-shot harness builds a demonstration
template from parts (``smash.train.fewshot.demonstrations``).

Each part is tokenized on its own (``add_special_tokens=False``) and the pieces are concatenated,
as LM-BFF does, so ``It_was`` after a sentence becomes `` It was`` with its leading space.
To a SentencePiece tokenizer (T5) each part starts a word, so a literal ``?`` becomes ``▁ ?``
where the whole string ``x0?`` would give ``?`` (the paper does not say which it did).
Truncation differs from LM-BFF on purpose: LM-BFF cuts the whole sequence's tail, which can drop
the mask; here only sentence tokens are removed (longest sentence first, from its end), so the
template words, special tokens and the mask always survive. A max length that those alone fill
is refused (``require_room``), as is a template that reads no sentence: either would make
prompts with no input in them.

Both the few-shot evaluation (``smash.train.fewshot``) and the intermediate tasks
(``smash.precompute``) use this module, so a template means the same tokens everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "SENTINEL",
    "EncodedPrompt",
    "Part",
    "Template",
    "answer_token_id",
    "is_sentinel_tokenizer",
    "parse_template",
    "require_room",
    "verbalizer_ids",
]

SENTINEL = "<extra_id_0>"  # T5's first span-corruption sentinel: its answer slot

_SPECIAL = ("cls", "mask", "sep", "sep+")
_SENT = re.compile(r"^(?P<space>\+?)sent(?P<case>[lu]?)(?P<drop>-?)_(?P<index>\d+)$")
# Parts that look like LM-BFF variables but are not supported here: rejected, not taken as text.
_UNSUPPORTED = re.compile(r"^(labelx?_\d+|\+?sent[^_]*_.*)$")


@dataclass(frozen=True)
class Part:
    """One template part. ``kind`` is ``"special"`` (``text`` is cls/mask/sep/sep+),
    ``"sentence"`` (``index`` and the modifiers apply) or ``"literal"`` (``text`` with spaces)."""

    kind: str
    text: str = ""
    index: int = -1
    space: bool = False
    case: str = ""
    drop_last: bool = False

    def sentence_text(self, sentence: str) -> str:
        """Apply this sentence part's modifiers to the raw sentence (LM-BFF semantics)."""
        if self.case == "l":
            sentence = sentence[:1].lower() + sentence[1:]
        elif self.case == "u":
            sentence = sentence[:1].upper() + sentence[1:]
        if self.drop_last:
            sentence = sentence[:-1]
        return " " + sentence if self.space else sentence


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one filled-in template (no padding) and the index of its ``<mask>``."""

    input_ids: list[int]
    mask_position: int


@dataclass(frozen=True)
class Template:
    """A parsed template: the original ``spec`` and its non-empty ``parts`` in order."""

    spec: str
    parts: tuple[Part, ...]

    @property
    def num_sentences(self) -> int:
        """How many input sentences the template reads (highest ``sent`` index + 1)."""
        return 1 + max((p.index for p in self.parts if p.kind == "sentence"), default=-1)

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sentences: Sequence[str],
        max_length: int,
        sentence_limits: Mapping[int, int] | None = None,
        truncate_first: Collection[int] = (),
    ) -> EncodedPrompt:
        """Fill the template with ``sentences`` and tokenize it into at most ``max_length`` ids.

        ``sentence_limits`` caps the tokens of sentence parts by sentence index first, as
        LM-BFF's ``first_sent_limit`` does (``{0: 110}``: the first sentence keeps its first 110
        tokens). Then only sentence tokens are truncated: while too long, one token is removed
        from the end of the currently longest sentence part (the first such part on ties).
        Sentences whose index is in ``truncate_first`` (demonstrations) are shortened that way
        first, and the others only once those are empty. Raises ValueError when a sentence is
        missing or the template's own tokens leave no room for a sentence token.
        """
        return self.encode_batch(
            tokenizer, [sentences], max_length, sentence_limits, truncate_first
        )[0]

    def encode_batch(
        self,
        tokenizer: PreTrainedTokenizerBase,
        batch: Sequence[Sequence[str]],
        max_length: int,
        sentence_limits: Mapping[int, int] | None = None,
        truncate_first: Collection[int] = (),
    ) -> list[EncodedPrompt]:
        """``encode`` for many examples at once: each sentence part of all examples goes to the
        tokenizer in one batch call (fast tokenizers encode it in Rust, in parallel)."""
        limits = sentence_limits or {}
        for sentences in batch:
            if len(sentences) < self.num_sentences:
                raise ValueError(
                    f"template {self.spec!r} reads {self.num_sentences} "
                    f"sentence(s), got {len(sentences)}"
                )
        own = self._own_ids(tokenizer)
        fixed = sum(len(ids) for ids in own if ids is not None)
        if fixed >= max_length:
            raise ValueError(_no_room(self.spec, fixed, max_length))
        # per part: ids per example, or the template's own
        columns: list[list[list[int]] | list[int]] = [
            _encode_many(tokenizer, [part.sentence_text(s[part.index]) for s in batch])
            if ids is None
            else ids
            for part, ids in zip(self.parts, own)
        ]
        is_sentence = [p.kind == "sentence" for p in self.parts]
        is_first = [s and p.index in truncate_first for s, p in zip(is_sentence, self.parts)]
        mask_part = next(
            i for i, p in enumerate(self.parts) if p.kind == "special" and p.text == "mask"
        )
        out = []
        for row in range(len(batch)):
            pieces = [
                list(col[row][: limits.get(part.index)]) if sent else col
                for col, sent, part in zip(columns, is_sentence, self.parts)
            ]
            if any(is_first):  # demonstrations give way first; the query keeps its tokens
                kept = sum(
                    len(ids) for ids, s, f in zip(pieces, is_sentence, is_first) if s and not f
                )
                _truncate_longest_first(pieces, is_first, max(max_length - fixed - kept, 0))
            _truncate_longest_first(pieces, is_sentence, max_length - fixed)
            mask_position = sum(len(ids) for ids in pieces[:mask_part])
            out.append(
                EncodedPrompt(
                    input_ids=[t for ids in pieces for t in ids], mask_position=mask_position
                )
            )
        return out

    def own_length(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """Tokens of the template's own parts (special tokens and literal text): a prompt's
        length without its sentences. A max length must exceed it, or no sentence token fits."""
        return sum(len(ids) for ids in self._own_ids(tokenizer) if ids is not None)

    def _own_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int] | None]:
        """Each part's ids; None for a sentence part."""
        return [
            None
            if part.kind == "sentence"
            else _special_ids(tokenizer, part.text, self.spec)
            if part.kind == "special"
            else _encode(tokenizer, part.text)
            for part in self.parts
        ]


def require_room(spec: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """Raise ValueError when the prompts of template ``spec`` would keep no sentence token at
    ``max_length`` (the template's own tokens fill it): checked before a run, since
    ``encode_batch`` refuses it only once it tokenizes."""
    own = parse_template(spec).own_length(tokenizer)
    if own >= max_length:
        raise ValueError(_no_room(spec, own, max_length))


def _no_room(spec: str, own: int, max_length: int) -> str:
    return (
        f"max length {max_length} leaves no sentence token in a prompt: template {spec!r} "
        f"alone is {own} tokens; the minimum max length is {own + 1}"
    )


def parse_template(spec: str) -> Template:
    """Parse an LM-BFF template string; exactly one ``*mask*`` and a sentence are required.

    >>> parse_template("*cls**sent_0*_It_was*mask*.*sep+*").num_sentences
    1
    """
    parts: list[Part] = []
    for raw in spec.split("*"):
        if raw == "":
            continue
        if raw in _SPECIAL:
            parts.append(Part(kind="special", text=raw))
        elif (m := _SENT.match(raw)) is not None:
            parts.append(
                Part(
                    kind="sentence",
                    index=int(m["index"]),
                    space=m["space"] == "+",
                    case=m["case"],
                    drop_last=m["drop"] == "-",
                )
            )
        elif _UNSUPPORTED.match(raw):
            raise ValueError(
                f"template {spec!r}: part *{raw}* is not supported (sentence parts "
                "are [+]sent[l|u][-]_i; demonstrations label_i are not supported)"
            )
        else:
            parts.append(Part(kind="literal", text=raw.replace("_", " ")))
    masks = sum(p.kind == "special" and p.text == "mask" for p in parts)
    if masks != 1:
        raise ValueError(f"template {spec!r} must contain exactly one *mask*, found {masks}")
    if not any(p.kind == "sentence" for p in parts):
        raise ValueError(
            f"template {spec!r} reads no sentence (no *sent_i* part): every prompt would be "
            f"the same tokens"
        )
    return Template(spec=spec, parts=tuple(parts))


def verbalizer_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[int]:
    """Token id of each label word, tokenized with a leading space (as LM-BFF does for RoBERTa).

    Each ``" " + word`` must be exactly one token; otherwise ValueError names the word and the
    pieces it splits into, since a multi-token word has no single logit at the mask.
    """
    ids = []
    for word in words:
        pieces = _encode(tokenizer, " " + word)
        if len(pieces) != 1:
            names = tokenizer.convert_ids_to_tokens(pieces)
            raise ValueError(
                f"label word {word!r} is not a single token with a leading space: "
                f"it splits into {names}; choose another word"
            )
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {list(words)} map to repeated token ids {ids}")
    return ids


def _encode(tokenizer, text: str) -> list[int]:
    if text == "":
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # slow tokenizers: one call per text
        return [_encode(tokenizer, t) for t in texts]
    return [
        e.ids if t else []
        for e, t in zip(backend.encode_batch(texts, add_special_tokens=False), texts)
    ]


def is_sentinel_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` marks answers with T5's sentinel: it has no mask token but has
    ``<extra_id_0>`` as a token of its own."""
    if tokenizer.mask_token_id is not None:
        return False
    token_id = tokenizer.convert_tokens_to_ids(SENTINEL)
    return token_id is not None and token_id != tokenizer.unk_token_id


def answer_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token of a prompt's answer slot: ``<mask>``, or ``<extra_id_0>`` for T5."""
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    if is_sentinel_tokenizer(tokenizer):
        return tokenizer.convert_tokens_to_ids(SENTINEL)
    raise ValueError(
        f"tokenizer {tokenizer.name_or_path!r} has neither a mask token nor {SENTINEL}: "
        f"a prompt has no answer slot"
    )


def _special_ids(tokenizer, name: str, spec: str) -> list[int]:
    if is_sentinel_tokenizer(tokenizer):  # T5 (appendix A.3): no <s>, <extra_id_0>, </s>
        return {
            "cls": [],
            "mask": [answer_token_id(tokenizer)],
            "sep": [tokenizer.eos_token_id],
            "sep+": [tokenizer.eos_token_id],
        }[name]
    attr = {
        "cls": "cls_token_id",
        "mask": "mask_token_id",
        "sep": "sep_token_id",
        "sep+": "sep_token_id",
    }[name]
    token_id = getattr(tokenizer, attr, None)
    if token_id is None:
        raise ValueError(f"template {spec!r} uses *{name}* but the tokenizer has no {attr}")
    return [token_id]


def _truncate_longest_first(pieces: list[list[int]], is_sentence: list[bool], budget: int) -> None:
    """Shorten sentence pieces in place until their total length fits ``budget`` (>= 0)."""
    lengths = [len(ids) if s else -1 for ids, s in zip(pieces, is_sentence)]
    excess = sum(n for n in lengths if n > 0) - budget
    while excess > 0:
        longest = max(range(len(lengths)), key=lambda i: (lengths[i], -i))
        # Cut the longest down to the second longest (or by the whole excess) in one step.
        others = [n for i, n in enumerate(lengths) if i != longest]
        floor = max(max(others, default=0), 0)
        cut = min(excess, max(lengths[longest] - floor, 1))
        lengths[longest] -= cut
        excess -= cut
    for i, n in enumerate(lengths):
        if n >= 0:
            del pieces[i][n:]
