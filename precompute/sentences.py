"""Sentence splitting with BlingFire, filtered by length in words.

BlingFire was chosen over pysbd by measurement (``benchmarks/bench_sentence_split.py``, figures
in ``benchmarks/RESULTS.md``): about 40x faster (4 MB/s against 0.1 MB/s on one core, which is
1.4 hours against 2 days for a 20 GB Wikipedia dump), with the same sentence counts on our
corpus; on four hand-written hard cases pysbd got 4/4 and BlingFire 3/4 (it left
"...3.4 per cent. Mr. Jones..." unsplit), a miss that costs one longer sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

__all__ = ["SentenceSplitter"]


@dataclass(frozen=True)
class SentenceSplitter:
    """Split a document into sentences and keep those of ``min_words``..``max_words`` words."""

    min_words: int = 4
    max_words: int = 60

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(
                f"need 1 <= min_words ({self.min_words}) <= max_words ({self.max_words})"
            )

    def split(self, document: str) -> list[str]:
        return [sentence for _, sentence in self.split_positions(document)]

    def split_positions(self, document: str) -> list[tuple[int, str]]:
        """The kept sentences, each with its position among all the document's sentences
        (so that two kept sentences are adjacent in the text only if their positions are)."""
        return [
            (position, s)
            for position, s in enumerate(self.sentences(document))
            if self.min_words <= len(s.split()) <= self.max_words
        ]

    def sentences(self, document: str) -> list[str]:
        """All of the document's sentences, in order, none dropped (blank ones included)."""
        import blingfire  # here, so that modules importing the task registry do not need it

        return [s.strip() for s in blingfire.text_to_sentences(document).split("\n")]

    def config(self) -> dict:
        return {
            "splitter": f"blingfire {version('blingfire')}",
            "min_words": self.min_words,
            "max_words": self.max_words,
        }
