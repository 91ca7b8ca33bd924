"""Realistic synthetic teacher outputs for store benchmarks.

Token ids follow a Zipf law over a frequency-ordered vocabulary (id 0 most frequent, as BPE
vocabularies roughly are). At each mask the teacher's logits are a Zipf prior
(-s * log(rank)), plus a handful of strongly boosted context tokens (which makes the
distribution peaked) and Gaussian noise; the log-softmax is taken in float32 and the top-k
kept in float16 with the exact float32 log tail mass, as the teacher pass does.
Lengths follow short sentence pairs: 20-128 tokens, most around 40-60.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["synthetic_examples"]


@functools.lru_cache(maxsize=4)
def _zipf_cdf(vocab: int, a: float) -> np.ndarray:
    p = 1.0 / (np.arange(1, vocab + 1, dtype=np.float64) + 10.0) ** a
    return np.cumsum(p / p.sum())


def _zipf_ids(rng: np.random.Generator, vocab: int, size, a: float = 1.1) -> np.ndarray:
    ids = np.searchsorted(_zipf_cdf(vocab, a), rng.random(size), side="right")
    return np.minimum(ids, vocab - 1)


def synthetic_examples(
    n: int, *, vocab: int = 50_265, k: int = 64, seed: int = 0, batch: int = 256
) -> list[dict]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    prior = -1.0 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32) + 10.0)
    lengths = np.clip(np.rint(rng.lognormal(np.log(48), 0.35, size=n)), 20, 128).astype(int)
    out: list[dict] = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        logits = prior + 1.5 * torch.randn(m, vocab, generator=gen)
        boosted = torch.from_numpy(_zipf_ids(rng, vocab, (m, 12), a=0.8))
        boost = torch.from_numpy(rng.gamma(2.0, 3.0, size=(m, 12))).float()
        logits.scatter_add_(1, boosted, boost)
        logp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logp, k, dim=-1)
        rest = logp.scatter(1, top.indices, float("-inf"))
        tail_logmass = torch.logsumexp(rest, dim=-1)
        for j in range(m):
            length = int(lengths[start + j])
            ids = _zipf_ids(rng, vocab, length)
            mask = int(rng.integers(1, length - 1))
            out.append(
                {
                    "input_ids": ids,
                    "mask_positions": np.array([mask]),
                    "topk_ids": top.indices[j : j + 1].numpy(),
                    "topk_logprobs": top.values[j : j + 1].numpy().astype(np.float16),
                    "tail_logmass": tail_logmass[j : j + 1].numpy().astype(np.float32),
                    "label": int(rng.integers(0, 3)),
                    "meta": None,
                }
            )
    return out
