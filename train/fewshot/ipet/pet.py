"""One PET model: a masked LM fine-tuned through one pattern, with PET's auxiliary MLM loss.

PET's loss (``wrapper.mlm_train_step``) on each step is ``alpha * CE + (1 - alpha) * MLM``: the
cross-entropy of the label words' logits at the pattern's mask against the labels, and masked
language modelling on a batch of unlabelled examples put through the same pattern, 15% of their
non-special tokens chosen (80% ``<mask>``, 10% random, 10% kept; ``precompute/shared/masking``)
and the whole vocabulary's cross-entropy at those positions. ``alpha`` is PET's 0.9999 (the
paper's 1e-4 for the MLM term). AdamW (weight decay 0.01 except biases and LayerNorm weights,
epsilon 1e-8), a linear decay without warmup over ``steps``, clipping at 1.0, batches drawn from
fresh permutations each epoch: PET's defaults (``cli.py``) and its README's 250 steps, except
that the MLM term is always on, as the PET paper trains (PET's command line turns it on with
``--lm_training``, off by default).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from smash.precompute.kshot.data import Example
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.masking import Masking, example_rng
from smash.train.fewshot.ipet.patterns import Pattern
from smash.train.fewshot.learners import Features, PromptLearner, collate

__all__ = ["PetLearner", "PetSettings", "label_logits", "train_pet_model"]


@dataclass(frozen=True)
class PetSettings:
    """PET's training settings for its pattern models (``--pet_*`` and the shared flags)."""

    steps: int = 250
    learning_rate: float = 1e-5
    batch_size: int = 4
    unlabelled_batch_size: int = 4
    alpha: float = 0.9999
    max_length: int = 256
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    eval_batch_size: int = 32


class PetLearner(PromptLearner):
    """A ``PromptLearner`` through a PET pattern: PET's sentence preprocessing and no LM-BFF
    first-sentence cap (PET truncates the whole input at its max length only)."""

    def __init__(self, model, tokenizer, task: Task, pattern: Pattern, max_length: int):
        super().__init__(model, tokenizer, task, pattern.template, pattern.words, max_length)
        self.pattern, self.limits = pattern, None

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        return super().encode([self.pattern.apply(ex) for ex in examples])


def _batches(n: int, size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches of indices into ``n`` items, a fresh permutation each epoch."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, size):
            yield order[start : start + size]


def _mlm_loss(learner: PetLearner, features: list[Features], rng: np.random.Generator, device):
    """The masked-LM term on unlabelled prompts ``features``."""
    tok = learner.tokenizer
    special = np.fromiter(tok.all_special_ids, np.int64)
    masking, rows, positions, originals, masked = Masking(), [], [], [], []
    for b, f in enumerate(features):
        ids = np.asarray(f.input_ids, np.int64)
        out = masking.apply(ids, ~np.isin(ids, special), rng, mask_id=tok.mask_token_id,
                            vocab_size=len(tok))  # fmt: skip
        masked.append(Features(out.input_ids.tolist(), -1, 0))
        rows += [b] * len(out.mask_positions)
        positions += out.mask_positions.tolist()
        originals += out.original_ids.tolist()
    batch = collate(masked, tok.pad_token_id, regression=False).to(device)
    prompts = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
               "mask_batch": torch.tensor(rows, device=device),
               "mask_positions": torch.tensor(positions, device=device)}  # fmt: skip
    logits = learner.adapter.logits(learner.adapter.answers(prompts).hidden)
    return F.cross_entropy(logits.float(), torch.tensor(originals, device=device))


def train_pet_model(
    learner: PetLearner,
    labelled: Sequence[Example],
    unlabelled: Sequence[Example],
    settings: PetSettings,
    seed: int,
    device: torch.device,
) -> None:
    """Train ``learner``'s model for ``settings.steps`` steps on ``labelled`` (hard labels)
    with the MLM term on ``unlabelled``; ``seed`` draws the batches and the masks."""
    model = learner.model.to(device)
    no_decay = ("bias", "LayerNorm.weight")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not any(x in n for x in no_decay)],
         "weight_decay": settings.weight_decay},
        {"params": [p for n, p in named if any(x in n for x in no_decay)], "weight_decay": 0.0},
    ]  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, eps=settings.adam_epsilon)
    total = settings.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    generator = torch.Generator().manual_seed(seed)
    train = learner.encode(labelled)
    extra = learner.encode(unlabelled) if settings.alpha < 1 else []
    labelled_batches = _batches(len(train), settings.batch_size, generator)
    unlabelled_batches = _batches(len(extra), settings.unlabelled_batch_size, generator)
    pad = learner.tokenizer.pad_token_id
    model.train()
    for step in range(total):
        batch = collate([train[i] for i in next(labelled_batches)], pad, False).to(device)
        loss = learner.loss(learner.forward(batch), batch.labels)
        if extra:
            chunk = [extra[i] for i in next(unlabelled_batches)]
            mlm = _mlm_loss(learner, chunk, example_rng(seed, step), device)
            loss = settings.alpha * loss + (1 - settings.alpha) * mlm
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


@torch.no_grad()
def label_logits(
    learner: PetLearner, examples: Sequence[Example], batch_size: int, device: torch.device
) -> np.ndarray:
    """(N, C) float32 label-word logits at the mask, in the order of ``examples``."""
    learner.model.to(device).eval()
    features = learner.encode(examples)
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    out = np.empty((len(features), len(learner.verbalizer)), np.float32)
    pad = learner.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([features[i] for i in rows], pad, False).to(device)
        out[rows] = learner.forward(batch).float().cpu().numpy()
    return out
