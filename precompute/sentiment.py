"""The sentiment task: ``<s>x It was <mask>.</s>`` over single sentences, teacher-filtered.

Every sentence of the corpus (within the splitter's length limits) is a candidate. The
teacher pass reads the teacher's log-probabilities of the verbalizer words (terrible, bad,
okay, good, great, each one leading-space token as in LM-BFF) at the mask, in the same forward
that yields the stored top-k, and ``keep`` decides from them. Rules (``--filter-rule``):

- ``max-prob``: keep when the largest verbalizer probability, renormalised over the
  verbalizer, is at least ``threshold`` (the teacher is confident about one word);
- ``polar``: keep when the renormalised mass of {terrible, bad} or of {good, great} is at
  least ``threshold`` (the teacher is confident about the polarity);
- ``none``: keep every sentence.

A kept example's label is the teacher's argmax over the verbalizer (0 = terrible ... 4 = great).

``labeller`` (``--labeller PATH``, Vanilla PPT's data): a five-class
``AutoModelForSequenceClassification`` (a RoBERTa-base fine-tuned on Yelp-5) labels and filters
in the teacher's place: the rules read its log-probabilities of the sentence alone, class ``i``
standing for label word ``i``, and the label is its argmax (the store's ``label_source`` is
"labeller"); the teacher's top-k at the mask is stored as always.
Its ``meta`` locates the sentence: ``doc`` (the document's index in the corpus) and ``i`` (its
position among all of the document's sentences, ``SentenceSplitter.sentences``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .corpus import Corpus, CorpusError
from .labeller import SequenceLabeller
from .sentences import SentenceSplitter
from .tasks import META_POSITIONS, TaskExample, register_task

__all__ = ["FILTER_RULES", "SentimentTask"]

FILTER_RULES = ("max-prob", "polar", "none")


@register_task("sentiment")
class SentimentTask:
    template = "*cls**sent_0*_It_was*mask*.*sep+*"
    max_length = 64
    verbalizer = ("terrible", "bad", "okay", "good", "great")
    group_size = 1

    def __init__(
        self,
        splitter: SentenceSplitter,
        *,
        filter_rule: str = "max-prob",
        threshold: float = 0.5,
        shuffle_buffer: int = 10_000,
        template: str | None = None,
        max_length: int | None = None,
        labeller: str | None = None,
    ):
        if filter_rule not in FILTER_RULES:
            raise ValueError(f"unknown filter rule {filter_rule!r}; choose from {FILTER_RULES}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability, got {threshold}")
        self.splitter, self.filter_rule, self.threshold = splitter, filter_rule, threshold
        self.shuffle_buffer = shuffle_buffer
        self.template = template or self.template
        self.max_length = max_length or self.max_length
        self.labeller = SequenceLabeller(labeller, len(self.verbalizer)) if labeller else None

    @property
    def label_source(self) -> str:
        """Who labels the examples: the teacher's label words, or the labeller."""
        return "teacher" if self.labeller is None else "labeller"

    def classify(self, examples: Sequence[TaskExample]) -> np.ndarray | None:
        """(R, 5) the labeller's log-probabilities of the examples' sentences, which the filter
        and the label read in place of the teacher's; None without a labeller."""
        if self.labeller is None:
            return None
        return self.labeller.log_probs([ex.sentences[0] for ex in examples])

    def examples(self, corpus: Corpus, seed: int) -> Iterator[TaskExample]:
        """Sentences in a seeded, buffer-shuffled order (neighbours are not all one document)."""
        rng = random.Random(seed)
        buffer: list[TaskExample] = []
        made = 0
        for doc_index, document in enumerate(corpus):
            for i, sentence in self.splitter.split_positions(document):
                buffer.append(TaskExample((sentence,), -1, {"doc": doc_index, "i": i}))
                if len(buffer) >= self.shuffle_buffer:
                    made += 1
                    yield buffer.pop(rng.randrange(len(buffer)))
        if not buffer and not made:
            raise CorpusError(
                f"{corpus.path}: the sentiment task made no example: none of its "
                f"{doc_index + 1} document(s) has a sentence of {self.splitter.min_words}-"
                f"{self.splitter.max_words} words; relax --min-words/--max-words"
            )
        rng.shuffle(buffer)
        yield from buffer

    def statistic(self, verbalizer_logprobs: np.ndarray) -> np.ndarray | None:
        """(R, 5) teacher log-probabilities of the verbalizer -> (R,) what the filter compares
        with ``threshold`` (the largest renormalised probability, or the larger polar mass);
        None for the rule ``none``."""
        if self.filter_rule == "none":
            return None
        lp = verbalizer_logprobs.astype(np.float64)
        p = np.exp(lp - lp.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if self.filter_rule == "max-prob":
            return p.max(axis=1)
        return np.maximum(p[:, :2].sum(1), p[:, 3:].sum(1))

    def keep(self, verbalizer_logprobs: np.ndarray) -> np.ndarray | None:
        """(R, 5) teacher log-probabilities of the verbalizer -> (R,) bool, or None (keep all)."""
        values = self.statistic(verbalizer_logprobs)
        return None if values is None else values >= self.threshold

    @property
    def statistic_name(self) -> str:
        return self.filter_rule

    def label(self, verbalizer_logprobs: np.ndarray) -> np.ndarray:
        return verbalizer_logprobs.argmax(axis=1)

    def config(self) -> dict[str, Any]:
        config = {
            "filter_rule": self.filter_rule,
            "threshold": self.threshold,
            "shuffle_buffer": self.shuffle_buffer,
            "meta_positions": META_POSITIONS,
        }
        if self.labeller is not None:  # stores made without one keep their record
            config["labeller"] = self.labeller.record()
        return config
