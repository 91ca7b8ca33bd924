"""iPET's rules (PET's ``modeling.py``), as pure functions of the models' outputs.

Each PET model of a generation leaves its label-word logits on every unlabelled example and its
accuracy on the labelled set *before* training (its pattern's zero-shot accuracy), PET's weight
for the model in a weighted mean (``wmean``).

- **Growth.** Generation ``g`` (from 0) makes for each model of generation ``g + 1``
  ``int(n * d ** (g + 1) - n)`` new examples (``n`` labelled examples, ``d`` the scale factor,
  PET's 5), split by label as the labelled set is: ``int(count * new / n)`` per label
  (``new_per_label``).
- **Selection.** For each model, a random ``round(len(others) * fraction)`` (PET's 0.25) of the
  *other* models of the generation label the unlabelled set: their weighted mean logits,
  softmax, argmax. For each label, among the examples labelled so (repeated until there are
  enough, PET's upsampling), ``per_label`` are drawn without replacement with probability
  proportional to their largest class probability (``next_training_set``).
- **Soft labels.** The last generation's weighted mean logits over all its models (PET's
  ``merge_logits``) give the final distribution; the final classifier learns it at PET's
  temperature (``softmax(mean / T)``, the kernel's tempered target of ``softmax(mean)``).

Deviations (also in the few-shot README): each generation draws with its own generators seeded
by (seed, generation), the models in (pattern, repetition) order, where PET shares one pair of
generators across a generation's models in file-system order; a label that no unlabelled
example is labelled as draws its examples from all of them, in proportion to their probability
of that label, and labels them so (PET's upsampling loop would never end; this keeps the label
balance, as PET's ``n_most_likely`` rule does for a first generation without labelled data);
weights that are all zero (every model at 0 accuracy) count equally (PET's weighted mean would
divide by zero).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

__all__ = [
    "annotators",
    "draw_generators",
    "mean_logits",
    "new_per_label",
    "next_training_set",
    "softmax",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def mean_logits(logits: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """PET's ``wmean``: the models' logits averaged with their weights (equal weights when all
    are zero), (N, C) float64."""
    w = np.asarray(weights, np.float64)
    if not w.any():
        w = np.ones_like(w)
    return np.average(np.stack([np.asarray(x, np.float64) for x in logits]), axis=0, weights=w)


def new_per_label(
    labels: Sequence[int], num_labels: int, generation: int, scale: float
) -> list[int]:
    """How many new examples of each label a model of generation ``generation + 1`` gets."""
    n = len(labels)
    new = int(n * scale ** (generation + 1) - n)
    return [int(sum(1 for y in labels if y == c) * (new / n)) for c in range(num_labels)]


def annotators(others: int, fraction: float) -> int:
    """How many of the ``others`` models label a model's next training set."""
    return round(others * fraction)


def draw_generators(seed: int, generation: int) -> tuple[random.Random, np.random.RandomState]:
    """The generators that draw generation ``generation``'s next training sets."""
    state = np.random.SeedSequence([seed, generation]).generate_state(2)
    return random.Random(int(state[0])), np.random.RandomState(int(state[1]))


def next_training_set(
    logits: Sequence[np.ndarray],
    weights: Sequence[float],
    per_label: Sequence[int],
    fraction: float,
    rng: random.Random,
    rng_np: np.random.RandomState,
) -> tuple[list[int], list[int]]:
    """One model's new examples from the other models' outputs (``logits``, ``weights``):
    (indices into the unlabelled set, their labels), label by label."""
    chosen = rng.sample(range(len(logits)), k=annotators(len(logits), fraction))
    if not chosen:
        raise ValueError(
            f"{len(logits)} other models at fraction {fraction:g} leave none to label the next "
            "generation's examples: train more patterns or repetitions"
        )
    probs = softmax(mean_logits([logits[i] for i in chosen], [weights[i] for i in chosen]))
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    indices: list[int] = []
    labels: list[int] = []
    for label, wanted in enumerate(per_label):
        if not wanted:
            continue
        members, score = np.flatnonzero(predicted == label), confidence
        if not members.size:  # no example is labelled so: all, by their probability of it
            members, score = np.arange(len(probs)), probs[:, label]
        pool = np.tile(members, -(-wanted // members.size))  # PET repeats them until enough
        drawn = rng_np.choice(pool.size, size=wanted, replace=False,
                              p=score[pool] / score[pool].sum())  # fmt: skip
        indices += pool[drawn].tolist()
        labels += [label] * wanted
    return indices, labels
