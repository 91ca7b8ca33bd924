"""A user-given sequence classifier that labels sentences, in place of the teacher's label words.

Vanilla PPT's sentiment data (SMASH paper, appendix A.1) is a corpus "filtered" by a RoBERTa-base
fine-tuned on Yelp-5: its five classes (1 to 5 stars, in that order) become the sentiment task's
labels terrible, bad, okay, good, great, and its confidence decides what is kept, by the task's
filter rule. ``precompute-teacher --task sentiment --labeller PATH`` loads the classifier
(``AutoModelForSequenceClassification``, with its own tokenizer) next to the teacher; the teacher
still gives every kept sentence its top-k at the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .provenance import local_model_fingerprint
from .shared.adapters import max_sequence_length
from .shared.model_paths import require_folder_or_hub_name

__all__ = ["SequenceLabeller"]


class SequenceLabeller:
    """``path``'s classifier, which must have ``classes`` outputs; ``load`` puts it on a device,
    ``log_probs`` labels sentences."""

    def __init__(self, path: str, classes: int, batch_size: int = 64):
        from transformers import AutoConfig

        require_folder_or_hub_name("--labeller", path)
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as err:
            raise ValueError(f"--labeller {path}: cannot be loaded: {err}") from None
        if config.num_labels != classes:
            raise ValueError(
                f"--labeller {path}: a classifier of {config.num_labels} classes; the task's "
                f"{classes} label words need {classes} (class i is label word i, e.g. Yelp-5's "
                f"1..5 stars as terrible..great)"
            )
        self.path, self.classes, self.batch_size = path, classes, batch_size
        self.max_length = max_sequence_length(config)
        self.model: Any = None

    def record(self) -> dict[str, Any]:
        """What the store records of the labeller (a local folder by content)."""
        return {"name": self.path, "fingerprint": local_model_fingerprint(self.path)}

    def load(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=dtype)
        self.model, self.device = model.to(device).eval(), device

    @torch.inference_mode()
    def log_probs(self, sentences: Sequence[str]) -> np.ndarray:
        """(N, classes) float32 log-probabilities, in the order of ``sentences``; batches of
        similar lengths."""
        if self.model is None:
            raise RuntimeError("SequenceLabeller.load() must be called before labelling")
        ids = self.tokenizer(list(sentences), truncation=True, max_length=self.max_length)
        ids = ids["input_ids"]
        out = np.empty((len(ids), self.classes), np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                batch[b, : len(ids[i])] = torch.tensor(ids[i])
                mask[b, : len(ids[i])] = 1
            logits = self.model(
                input_ids=batch.to(self.device), attention_mask=mask.to(self.device)
            ).logits
            out[rows] = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return out
