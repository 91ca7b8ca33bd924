"""The ``mlm`` task: raw text with BERT's masking, for DistilBERT-style further pre-training
(the paper's section 4.4, setting 5) from offline teacher outputs.

An example is a segment of a document: its consecutive sentences, packed up to
``segment_words`` words (a longer sentence is a segment of its own), tokenized with the
tokenizer's special tokens and truncated to ``max_length`` tokens (512, as in the paper's
setting 5). The teacher pass masks 15% of each segment's tokens (80% ``<mask>``, 10% a random
token, 10% unchanged; ``shared/masking.py``) with a generator seeded by the pass's seed and the
example's index, and stores the teacher's top-k at every masked position together with the
token that was there (``mlm_labels``). Training on such a store with ``ce`` + ``mlm`` is setting
5a (``smash/train/configs/paper_distilbert_offline.json``).

Unlike DistilBERT, the masks are fixed when the store is written: every epoch sees the same
masks. ``train-student --dynamic-masking`` with the teacher loaded masks anew every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .corpus import Corpus, CorpusError
from .sentences import SentenceSplitter
from .shared.masking import Masking
from .tasks import TaskExample, register_task

__all__ = ["MaskedLMTask"]


@register_task("mlm")
class MaskedLMTask:
    template = None  # raw text: no prompt, the masking makes the answer positions
    max_length = 512
    verbalizer = ()
    group_size = 1

    def __init__(
        self,
        splitter: SentenceSplitter,
        *,
        segment_words: int = 300,
        mask_probability: float = 0.15,
        max_length: int | None = None,
    ):
        if segment_words < 1:
            raise ValueError(f"segment_words must be >= 1, got {segment_words}")
        self.splitter, self.segment_words = splitter, segment_words
        self.masking = Masking(probability=mask_probability)
        self.max_length = max_length or self.max_length

    def examples(self, corpus: Corpus, seed: int) -> Iterator[TaskExample]:
        """Segments in corpus order (the reader shuffles); ``seed`` is used by the masking."""
        made = 0
        for doc_index, document in enumerate(corpus):
            for first, segment in self._segments(self.splitter.sentences(document)):
                made += 1
                yield TaskExample((segment,), -1, {"doc": doc_index, "i": first})
        if not made:
            raise CorpusError(
                f"{corpus.path}: the mlm task made no example: the corpus has no text"
            )

    def _segments(self, sentences: list[str]) -> Iterator[tuple[int, str]]:
        """(index of the first sentence, text) of each segment of one document."""
        words, start, parts = 0, 0, []
        for i, sentence in enumerate(sentences):
            if not sentence:
                continue
            count = len(sentence.split())
            if parts and words + count > self.segment_words:
                yield start, " ".join(parts)
                words, parts = 0, []
            if not parts:
                start = i
            parts.append(sentence)
            words += count
        if parts:
            yield start, " ".join(parts)

    def keep(self, verbalizer_logprobs: np.ndarray) -> np.ndarray | None:
        return None

    def config(self) -> dict[str, Any]:
        return {"segment_words": self.segment_words, "masking": self.masking.to_json()}
