"""PET's pattern-verbalizer pairs (PVPs) for the tasks of the SMASH paper's Tables 3 and 5.

Each pattern is written in LM-BFF's template language (``precompute/shared/templates.py``), part
for part as PET's ``pvp.py`` builds it: PET tokenizes every part on its own with a space in
front (``add_prefix_space=True`` for RoBERTa's GPT-2 tokenizer), so here every part starts with
one (``_`` before text, ``*+sent_i*`` for a sentence; the mask token absorbs its space), and a
pattern of two segments (``text_a`` parts, then ``text_b`` parts) is RoBERTa's pair encoding,
``<s> a </s></s> b </s>`` (``*sep**sep*`` between them). Where PET removes a sentence's
final punctuation (``remove_final_punc``), the pattern lists its index in ``strip``; label words
are in the task's label order and get a leading space, as PET's ``get_verbalization_ids`` gives
RoBERTa's.

PET has patterns for MNLI (``MnliPVP``: two forms, two verbalizers), RTE (``RtePVP``, its first
four patterns) and Yelp (``YelpPolarityPVP``, ``YelpFullPVP``). The SMASH paper "made minor
modifications on the provided prompts" for the tasks PET lacks; ours (``OURS``):

- SNLI: MNLI's PVPs unchanged (the same labels and sentence roles).
- SST-2, MR, CR: Yelp polarity's (bad / good), pattern 3's "the restaurant" made "the movie" (SST-2,
  MR) and "the product" (CR, product reviews).
- SST-5: Yelp full's (terrible / bad / okay / good / great), with "the movie".
- QNLI: RTE's four patterns with the question in the hypothesis's place, not swapped: RTE's
  pattern asks the hypothesis (``"b" ? <mask>, "a"``), QNLI's question is its first sentence
  (``"question" ? <mask>, "sentence"``); Yes / No.
- MRPC, QQP: the same four forms over (first, second) sentence with No / Yes for labels 0 / 1.

STS-B is not a classification task: iPET does not apply to regression (the paper's Table 5).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from smash.precompute.kshot.data import Example
from smash.precompute.kshot.tasks import Task

__all__ = ["OURS", "PATTERNS", "Pattern", "patterns_for"]


@dataclass(frozen=True)
class Pattern:
    """A PVP: the template, the label words in label order, and the sentences whose final
    punctuation PET removes before filling them in."""

    template: str
    words: tuple[str, ...]
    strip: tuple[int, ...] = ()

    def apply(self, example: Example) -> Example:
        """``example`` with the sentences of ``strip`` cut of their final punctuation."""
        if not self.strip:
            return example
        texts = tuple(
            t.rstrip(string.punctuation) if i in self.strip else t
            for i, t in enumerate(example.texts)
        )
        return Example(texts=texts, label=example.label, line=example.line)


def _yelp(words: tuple[str, ...], topic: str) -> tuple[Pattern, ...]:
    return (
        Pattern("*cls*_It_was*mask*_.*+sent_0**sep+*", words),
        Pattern("*cls**+sent_0*_._All_in_all,_it_was*mask*_.*sep+*", words),
        Pattern("*cls*_Just*mask*_!*sep**sep**+sent_0**sep+*", words),
        Pattern(f"*cls**+sent_0**sep**sep*_In_summary,_the_{topic}_is*mask*_.*sep+*", words),
    )


def _mnli() -> tuple[Pattern, ...]:
    quoted = '*cls*_"*+sent_0*_"_?*sep**sep**mask*_,_"*+sent_1*_"*sep+*'
    plain = "*cls**+sent_0*_?*sep**sep**mask*_,*+sent_1**sep+*"
    a, b = ("Wrong", "Right", "Maybe"), ("No", "Yes", "Maybe")  # contradiction, entailment, neutral
    return tuple(Pattern(t, w, (0,)) for w in (a, b) for t in (quoted, plain))


def _question(words: tuple[str, ...], asked: int) -> tuple[Pattern, ...]:
    """RTE's four forms: sentence ``asked`` (final punctuation removed) as the question, the
    other after the mask."""
    q, other = f"sent_{asked}", f"sent_{1 - asked}"
    return tuple(
        Pattern(t, words, (asked,))
        for t in (
            f'*cls*_"*+{q}*_"_?*sep**sep**mask*_,_"*+{other}*_"*sep+*',
            f"*cls**+{q}*_?*sep**sep**mask*_,*+{other}**sep+*",
            f'*cls*_"*+{q}*_"_?*sep**sep**mask*_._"*+{other}*_"*sep+*',
            f"*cls**+{q}*_?*sep**sep**mask*_.*+{other}**sep+*",
        )
    )


_POLARITY, _FIVE = ("bad", "good"), ("terrible", "bad", "okay", "good", "great")
PATTERNS: dict[str, tuple[Pattern, ...]] = {
    "MNLI": _mnli(),
    "SNLI": _mnli(),
    "RTE": _question(("Yes", "No"), asked=1),  # entailment, not_entailment
    "QNLI": _question(("Yes", "No"), asked=0),
    "MRPC": _question(("No", "Yes"), asked=0),
    "QQP": _question(("No", "Yes"), asked=0),
    "SST-2": _yelp(_POLARITY, "movie"),
    "MR": _yelp(_POLARITY, "movie"),
    "CR": _yelp(_POLARITY, "product"),
    "SST-5": _yelp(_FIVE, "movie"),
}
# tasks whose PVPs are ours (PET has none for them); see the module doc
OURS = ("SNLI", "QNLI", "MRPC", "QQP", "SST-2", "MR", "CR", "SST-5")


def patterns_for(task: Task, ids: Sequence[int]) -> list[Pattern]:
    """The PVPs ``ids`` of ``task``; ValueError for regression (STS-B) or an unknown id."""
    if task.is_regression:
        raise ValueError(
            f"{task.name}: iPET does not apply to regression tasks (the SMASH paper reports no "
            "iPET result on STS-B for this reason, Table 5)"
        )
    if task.name not in PATTERNS:
        raise ValueError(f"{task.name}: no PET patterns (tasks: {', '.join(PATTERNS)})")
    found = PATTERNS[task.name]
    wrong = [i for i in ids if not 0 <= i < len(found)]
    if wrong:
        raise ValueError(
            f"{task.name} has PET patterns 0..{len(found) - 1}, not {', '.join(map(str, wrong))}"
        )
    return [found[i] for i in ids]
