"""The sentence-pair task (paper 3.2): is x2 adjacent to x1, from the same document, or not?

Labels: 0 = the sentences come from different documents, 1 = same document but not adjacent,
2 = adjacent (x2 directly follows x1). Template ``<s>x1? <mask>, x2</s>``, max length 128.

The sampler makes one pass over the documents, so it scales to millions of pairs without
holding the corpus: from each document with at least three kept sentences, two of them
adjacent, it draws (per round) one adjacent pair, one non-adjacent pair, and one pair of one of
its sentences with a sentence of an earlier document, drawn from a bounded reservoir. Counts
per label are equal by construction: every round yields one pair of each label.

Adjacency is decided in the text, before the splitter drops short or long sentences: two kept
sentences with a dropped one between them are not adjacent. ``meta`` locates both sentences:
x1 is sentence ``i`` of document ``doc``, x2 sentence ``j`` of document ``other`` (label 0) or
of ``doc``, positions among all of a document's sentences (``SentenceSplitter.sentences``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from .corpus import Corpus, CorpusError
from .sentences import SentenceSplitter
from .tasks import META_POSITIONS, TaskExample, register_task

__all__ = ["SentencePairTask"]


@register_task("sentence-pair")
class SentencePairTask:
    template = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
    max_length = 128
    verbalizer = ("No", "Maybe", "Yes")  # labels 0, 1, 2 (paper 4.4, settings 6 and 7)

    def __init__(
        self,
        splitter: SentenceSplitter,
        *,
        pairs_per_doc: int = 1,
        reservoir: int = 10_000,
        template: str | None = None,
        max_length: int | None = None,
    ):
        if pairs_per_doc < 1 or reservoir < 1:
            raise ValueError("pairs_per_doc and reservoir must be at least 1")
        self.splitter, self.pairs_per_doc, self.reservoir = splitter, pairs_per_doc, reservoir
        self.template = template or self.template
        self.max_length = max_length or self.max_length

    group_size = 3  # one pair of each label per round: take multiples of 3 to stay balanced

    def examples(self, corpus: Corpus, seed: int) -> Iterator[TaskExample]:
        rng = random.Random(seed)
        pool: list[tuple[int, int, str]] = []  # reservoir of (document, position, sentence)
        pooled = usable = made = 0
        for doc_index, document in enumerate(corpus):
            kept = self.splitter.split_positions(document)
            adjacent = [a for a in range(len(kept) - 1) if kept[a + 1][0] == kept[a][0] + 1]
            if len(kept) >= 3 and adjacent:
                usable += 1
                if pool:  # label 0 needs a sentence from an earlier document
                    for _ in range(self.pairs_per_doc):
                        yield from self._triple(rng, doc_index, kept, adjacent, pool)
                        made += 3
            for i, s in kept:  # reservoir sampling: a uniform sample of all past sentences
                pooled += 1
                if len(pool) < self.reservoir:
                    pool.append((doc_index, i, s))
                elif (j := rng.randrange(pooled)) < self.reservoir:
                    pool[j] = (doc_index, i, s)
        if usable == 0:
            raise CorpusError(
                f"{corpus.path}: no document has 3 or more sentences of "
                f"{self.splitter.min_words}-{self.splitter.max_words} words, two of them "
                f"adjacent ({doc_index + 1} "
                f"documents read), so same-document pairs (labels 1 and 2) are impossible; use "
                f"a corpus of multi-sentence documents or relax --min-words/--max-words"
            )
        if made == 0:
            raise CorpusError(
                f"{corpus.path}: the sentence-pair task made no example from {doc_index + 1} "
                f"document(s): only one has 3 or more sentences of "
                f"{self.splitter.min_words}-{self.splitter.max_words} words, two of them "
                f"adjacent, and no document before it has a sentence to pair it with for label "
                f"0 (different documents); use a corpus of several such documents"
            )

    @staticmethod
    def _triple(
        rng: random.Random,
        doc: int,
        kept: list[tuple[int, str]],
        adjacent: list[int],
        pool: list[tuple[int, int, str]],
    ) -> Iterator[TaskExample]:
        """One adjacent (2), one same-document non-adjacent (1), one cross-document (0) pair.

        ``kept``: (position in the document, sentence); ``adjacent``: indices ``a`` into it
        whose sentence ``a + 1`` directly follows in the text.
        """
        a = rng.choice(adjacent)
        (i, first), (j, second) = kept[a], kept[a + 1]
        yield TaskExample((first, second), 2, {"doc": doc, "i": i, "j": j})
        # Three kept sentences at distinct positions always include a non-adjacent pair.
        (i, first), (j, second) = rng.sample(kept, 2)
        while abs(i - j) == 1:
            (i, first), (j, second) = rng.sample(kept, 2)
        yield TaskExample((first, second), 1, {"doc": doc, "i": i, "j": j})
        other_doc, k, other = pool[rng.randrange(len(pool))]
        i, sentence = kept[rng.randrange(len(kept))]
        if rng.random() < 0.5:
            yield TaskExample(
                (sentence, other), 0, {"doc": doc, "i": i, "other": other_doc, "j": k}
            )
        else:
            yield TaskExample(
                (other, sentence), 0, {"doc": other_doc, "i": k, "other": doc, "j": i}
            )

    def keep(self, verbalizer_logprobs: np.ndarray) -> None:
        return None

    def config(self) -> dict[str, Any]:
        return {
            "pairs_per_doc": self.pairs_per_doc,
            "reservoir": self.reservoir,
            "meta_positions": META_POSITIONS,
        }
