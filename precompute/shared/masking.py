"""BERT's masking of raw text for masked-LM training (15% of the tokens, 80/10/10), one rule for
the ``mlm`` intermediate task (masks fixed when the store is written) and the trainer's dynamic
masking (new masks every step, online teacher).

Of the tokens that are not special tokens, each is chosen with probability ``probability``
(independently, as Hugging Face's ``DataCollatorForLanguageModeling`` and DistilBERT do); a
chosen token becomes ``<mask>`` with probability ``replace_mask``, a token drawn uniformly
from the vocabulary with probability ``replace_random``, and stays as it is otherwise. Unlike
those collators, a text of which no token was chosen gets one chosen uniformly, so that every
example has an answer position (a step over rows that hold no mask row has no loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MaskedText", "Masking", "example_rng"]


@dataclass(frozen=True)
class MaskedText:
    """One masked text: its ids after masking, the chosen positions (ascending) and the tokens
    they held before."""

    input_ids: np.ndarray  # (L,) int64
    mask_positions: np.ndarray  # (M,) int64, M >= 1
    original_ids: np.ndarray  # (M,) int64


@dataclass(frozen=True)
class Masking:
    """The masking rule (see the module doc); ``to_json`` goes into a store's manifest."""

    probability: float = 0.15
    replace_mask: float = 0.8
    replace_random: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"mask probability must be in (0, 1], got {self.probability}")
        if min(self.replace_mask, self.replace_random) < 0 or (
            self.replace_mask + self.replace_random > 1.0
        ):
            raise ValueError(
                f"replace_mask ({self.replace_mask}) and replace_random ({self.replace_random}) "
                f"must be >= 0 and sum to at most 1"
            )

    def to_json(self) -> dict[str, float]:
        return {
            "probability": self.probability,
            "replace_mask": self.replace_mask,
            "replace_random": self.replace_random,
        }

    def apply(
        self,
        input_ids: np.ndarray,
        maskable: np.ndarray,
        rng: np.random.Generator,
        *,
        mask_id: int,
        vocab_size: int,
    ) -> MaskedText:
        """Mask one text. ``maskable`` (L,) bool marks the tokens that may be chosen (not the
        special tokens, not padding); at least one must be."""
        ids = np.asarray(input_ids, dtype=np.int64)
        candidates = np.flatnonzero(maskable)
        if candidates.size == 0:
            raise ValueError("a text to mask has no token that is not a special token")
        chosen = rng.random(candidates.size) < self.probability
        if not chosen.any():
            chosen[rng.integers(candidates.size)] = True
        positions = candidates[chosen]
        how = rng.random(positions.size)
        random_ids = rng.integers(0, vocab_size, positions.size)
        masked = ids.copy()
        masked[positions] = np.where(
            how < self.replace_mask,
            mask_id,
            np.where(how < self.replace_mask + self.replace_random, random_ids, ids[positions]),
        )
        return MaskedText(masked, positions.astype(np.int64), ids[positions])


def example_rng(seed: int, *index: int) -> np.random.Generator:
    """The generator of one example (or one step's batch): a pure function of the run's seed and
    the example's place, so masks do not depend on ranks, batching or interruptions."""
    return np.random.default_rng([seed, *index])
