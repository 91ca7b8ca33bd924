"""LM-BFF's few-shot protocol for one task and one seed: grid search, best-dev checkpoint, test.

For each (learning rate, batch size) of the grid the model starts afresh from its folder
(seeded, so a new head is the same for every grid point), trains up to ``max_steps`` with
AdamW and a linear decay (HF Trainer defaults: no warmup, no weight decay, clipping at 1.0), and
is evaluated on dev every ``eval_every`` steps. The best dev checkpoint is kept as an in-memory
copy of the weights, never a file, and is evaluated on the test set(s), as LM-BFF does. Each
grid point is so a self-contained :class:`PointResult` (a long evaluation records it and
never trains it again); across the grid the point with the best dev metric (earliest on ties)
gives the seed's result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from smash.precompute.kshot.data import KShotData
from smash.train.fewshot.learners import Features, FinetuneLearner, PromptLearner, collate
from smash.train.fewshot.metrics import compute_metric, select_best
from smash.train.fewshot.soft_prompts import PPT_LEARNING_RATES, SOFT_PROMPT_MODES

__all__ = [
    "PAPER_MAX_STEPS",
    "PointResult",
    "Protocol",
    "SeedResult",
    "choose",
    "evaluate",
    "paper_max_steps",
    "predict",
    "run_point",
    "test_metrics",
    "zero_shot",
]

Learner = PromptLearner | FinetuneLearner

# Training steps per K of the paper's Figure 4 (appendix A, "Experiments in Section 4.6").
PAPER_MAX_STEPS = {16: 1000, 32: 1000, 64: 2000, 128: 2000, 256: 4000}


def paper_max_steps(k: int) -> int:
    """The paper's step budget for K; other K get appendix A.1's 1000."""
    return PAPER_MAX_STEPS.get(k, 1000)


@dataclass(frozen=True)
class Protocol:
    """The knobs of the protocol; the defaults are the paper's (appendix A.1)."""

    learning_rates: tuple[float, ...] = (1e-5, 2e-5, 5e-5)
    batch_sizes: tuple[int, ...] = (2, 4)
    max_steps: int = 1000
    eval_every: int = 100
    eval_batch_size: int = 32
    max_grad_norm: float = 1.0
    # the soft-prompt modes' rates (PPT's prompt tuning: soft_prompts.PPT_LEARNING_RATES)
    soft_prompt_learning_rates: tuple[float, ...] = PPT_LEARNING_RATES

    @property
    def grid(self) -> list[tuple[float, int]]:
        return [(lr, bs) for lr in self.learning_rates for bs in self.batch_sizes]

    def for_mode(self, mode: str) -> Protocol:
        """The protocol a mode trains with: the soft-prompt modes search their own rates."""
        if mode in SOFT_PROMPT_MODES:
            return dataclasses.replace(self, learning_rates=self.soft_prompt_learning_rates)
        return self


@dataclass
class SeedResult:
    """Outcome of one seed: the chosen configuration, its dev metric and test metric(s)."""

    seed: int
    dev: float
    tests: dict[str, float]
    lr: float | None = None
    batch_size: int | None = None
    step: int | None = None
    grid_dev: list[float] = field(default_factory=list)


@torch.no_grad()
def predict(
    learner: Learner, features: Sequence[Features], batch_size: int, device: torch.device
) -> list[float]:
    """Predictions for ``features`` in their order, in length-sorted batches (little padding)."""
    learner.model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    preds: list[float] = [0.0] * len(features)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate(
            [features[i] for i in idx], learner.tokenizer.pad_token_id, learner.task.is_regression
        ).to(device)
        for i, p in zip(idx, learner.predict(learner.forward(batch)).tolist()):
            preds[i] = p
    return preds


def evaluate(
    learner: Learner, features: Sequence[Features], batch_size: int, device: torch.device
) -> float:
    preds = predict(learner, features, batch_size, device)
    return compute_metric(learner.task.metric, preds, [f.label for f in features])


def test_metrics(
    learner: Learner,
    column: str,
    features: Sequence[Features],
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """One results column's test metrics from one prediction pass: the task's metric under
    ``column``, each of its extra metrics under ``column:name`` (``STS-B:spearman``)."""
    preds = predict(learner, features, batch_size, device)
    labels = [f.label for f in features]
    task = learner.task
    out = {column: compute_metric(task.metric, preds, labels)}
    out.update({f"{column}:{m}": compute_metric(m, preds, labels) for m in task.extra_metrics})
    return out


def zero_shot(
    learner: Learner,
    data: KShotData,
    seed: int,
    batch_size: int,
    device: torch.device,
    cache: dict | None = None,
) -> SeedResult:
    """The untrained model through the same template and label words.

    GLUE test sets are the same file for every seed, so test metrics are memoised in ``cache``
    (keyed by the examples themselves) when one is given; dev is evaluated per seed.
    """
    learner.model.to(device)
    cache = {} if cache is None else cache
    tests = {}
    for col, examples in data.tests.items():
        key = (col, tuple(examples))
        if key not in cache:
            cache[key] = test_metrics(learner, col, learner.encode(examples), batch_size, device)
        tests.update(cache[key])
    dev = evaluate(learner, learner.encode(data.dev), batch_size, device)
    return SeedResult(seed=seed, dev=dev, tests=tests)


@dataclass(frozen=True)
class PointResult:
    """One grid point of one seed: its best dev metric, at which step, and that checkpoint's
    test metrics."""

    lr: float | None  # None for a zero-shot unit (no training)
    batch_size: int | None
    dev: float
    step: int
    tests: dict[str, float]


def run_point(
    make_learner: Callable[[], object],
    data: KShotData,
    seed: int,
    lr: float,
    batch_size: int,
    protocol: Protocol,
    device: torch.device,
) -> PointResult:
    """Train one grid point from the model's folder and test its best-dev checkpoint."""
    torch.manual_seed(seed)
    learner = make_learner()
    learner.model.to(device)
    train, dev = learner.encode(data.train), learner.encode(data.dev)
    score, state, step = _train(learner, train, dev, lr, batch_size, seed, protocol, device)
    learner.model.load_state_dict(state)
    tests: dict[str, float] = {}
    for col, examples in data.tests.items():
        features = learner.encode(examples)
        tests.update(test_metrics(learner, col, features, protocol.eval_batch_size, device))
    return PointResult(lr=lr, batch_size=batch_size, dev=score, step=step, tests=tests)


def choose(seed: int, points: Sequence[PointResult]) -> SeedResult:
    """The seed's result: the grid point with the best dev metric, the earliest on ties."""
    best = points[select_best([p.dev for p in points])]
    return SeedResult(
        seed=seed,
        dev=best.dev,
        tests=dict(best.tests),
        lr=best.lr,
        batch_size=best.batch_size,
        step=best.step,
        grid_dev=[p.dev for p in points],
    )


def _train(
    learner,
    train: list[Features],
    dev: list[Features],
    lr: float,
    batch_size: int,
    seed: int,
    protocol: Protocol,
    device: torch.device,
) -> tuple[float, dict, int]:
    """Train one configuration; returns (best dev metric, its weights on CPU, its step)."""
    model = learner.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = protocol.max_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
    order = torch.Generator().manual_seed(seed)
    pad, regression = learner.tokenizer.pad_token_id, learner.task.is_regression
    best_score, best_state, best_step = -math.inf, None, 0
    step = epoch = 0
    # demonstrations (DemoPromptLearner) are drawn afresh each epoch, as LM-BFF draws them
    for_epoch = getattr(train, "for_epoch", lambda epoch: train)
    while step < total:
        features = for_epoch(epoch)
        epoch += 1
        perm = torch.randperm(len(features), generator=order).tolist()
        for start in range(0, len(perm), batch_size):
            model.train()
            batch = collate(
                [features[i] for i in perm[start : start + batch_size]], pad, regression
            ).to(device)
            loss = learner.loss(learner.forward(batch), batch.labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, protocol.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % protocol.eval_every == 0 or step == total:
                score = evaluate(learner, dev, protocol.eval_batch_size, device)
                if best_state is None or select_best([best_score, score]) == 1:
                    best_score, best_step = score, step
                    best_state = {
                        k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                    }
            if step == total:
                break
    return best_score, best_state, best_step
