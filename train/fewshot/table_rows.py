"""The vocabulary table's gradient by rows: a CPU training step without its dense passes.

A few-shot batch reads a few hundred of a masked LM's 50,265 vocabulary rows, yet autograd
gives the table (tied to the LM head) a dense gradient at every step: the embedding's backward
fills a zero table and adds the batch's rows into it, the label words' head does the same,
and the two tables are added. Gradient clipping then multiplies the whole table, and
``RowAdamW`` reads all of it to find the rows that are not zero. At DistilRoBERTa's width
scaled down 4x those passes were about a quarter of a CPU step (``benchmarks/RESULTS.md``).

:class:`TableRows` gathers, at each training forward, the rows the step reads (the batch's
tokens and the head's label words) into a small leaf tensor, and lets the embedding and the
head read that instead of the table: the embedding through a forward hook that returns the
same lookup from the gathered rows, the head through the adapter's ``rows_of``. After the
backward pass the gathered rows' gradient is copied into a table-sized buffer that is zero
elsewhere and kept from step to step (only the rows written are zeroed again), and becomes the
table's ``.grad``. Every value is the one autograd would have given: each row's gradient is
summed from the same terms in the same order (the embedding's backward adds a row's
occurrences one by one from zero, on the gathered table as on the whole one, and the
embedding's and the head's parts of a row are added once, in either order alike), so the
gradient norm, clipping and the AdamW update are bitwise those of the dense step
(``tests/test_table_rows.py``). Clipping multiplies the gathered rows only (the other rows
are zero), and ``RowAdamW`` is told which rows can be nonzero.

It applies to what is safe to gather: on a CPU, with ``RowAdamW``, the masked LMs' prompt
learners (the table read by the embedding and, tied, by the label words' head) and standard
fine-tuning (the embedding alone); a learner that reads the whole table (distillation's
vocabulary logits, a soft prompt's frozen model), an encoder-decoder model, whose shared table
is read twice per step, and any other learner train with the dense gradient.
"""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F
from smash.precompute.shared.adapters import MaskedLMAdapter
from smash.train.fewshot import row_adamw
from smash.train.fewshot.demonstrations import DemoPromptLearner
from smash.train.fewshot.learners import FinetuneLearner, PromptLearner
from torch import nn

__all__ = ["TableRows", "table_rows_for"]


class TableRows:
    """The input table of ``embedding`` read by rows for ``optimizer`` (see the module doc);
    ``adapter``'s head reads its ``head_ids`` rows through it when its weight is that table.
    Use as a context manager around training; call :meth:`gather` after each backward pass and
    :meth:`clip_` in place of ``clip_grads_with_norm_``."""

    def __init__(
        self,
        embedding: nn.Embedding,
        optimizer: row_adamw.RowAdamW,
        adapter: MaskedLMAdapter | None = None,
        head_ids: torch.Tensor | None = None,
    ):
        self.embedding, self.weight, self.optimizer = embedding, embedding.weight, optimizer
        tied = adapter is not None and adapter.decoder.weight is self.weight
        self.adapter = adapter if tied else None
        self.head_ids = (
            head_ids.to(self.weight.device) if tied else torch.empty(0, dtype=torch.long)
        )
        self.buffer = torch.zeros_like(self.weight)
        self.rows: torch.Tensor | None = None  # the rows gathered for the step
        self.gathered: torch.Tensor | None = None  # (len(rows), H): the leaf the step reads
        self._pending = False  # a training forward has gathered rows that no gather() took yet
        self._written: torch.Tensor | None = None  # the buffer's rows that may not be zero
        self._hook = None

    def __enter__(self) -> Self:
        self._hook = self.embedding.register_forward_hook(self._lookup)
        if self.adapter is not None:
            self.adapter.rows_of = self._head_rows
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        if self.adapter is not None:
            self.adapter.rows_of = None
        self.rows = self.gathered = None
        self._pending = False

    def _lookup(self, module: nn.Embedding, args: tuple, output: torch.Tensor):
        """The forward hook: a training forward reads the gathered rows; any other (no
        gradient, eval mode) keeps the module's own output."""
        if not (torch.is_grad_enabled() and module.training):
            return None
        if self._pending:
            raise RuntimeError(
                f"{type(module).__name__}: the vocabulary table was read twice in one training "
                f"step; TableRows gathers it once per step"
            )
        ids = args[0]
        rows, where = torch.unique(torch.cat([ids.flatten(), self.head_ids]), return_inverse=True)
        self.rows, self._pending = rows, True
        self.gathered = self.weight.detach()[rows].requires_grad_()
        pad = (rows == module.padding_idx).nonzero() if module.padding_idx is not None else ()
        pad = int(pad[0, 0]) if len(pad) else None
        return F.embedding(where[: ids.numel()].view_as(ids), self.gathered, padding_idx=pad)

    def _head_rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not (self._pending and torch.is_grad_enabled()):
            return self.weight[token_ids]
        at = torch.searchsorted(self.rows, token_ids).clamp_(max=len(self.rows) - 1)
        if not bool((self.rows[at] == token_ids).all()):
            raise RuntimeError(
                f"the head read vocabulary rows {token_ids.tolist()}, not all of which were "
                f"gathered (its rows are gathered with the batch's tokens: {self.head_ids.tolist()})"
            )
        return self.gathered[at]

    def gather(self) -> None:
        """After the backward pass: the gathered rows' gradient into the table's ``.grad``."""
        if self.weight.grad is not None:
            raise RuntimeError(
                "the vocabulary table has a gradient from outside its gathered rows: a learner "
                "that reads the whole table cannot train with TableRows"
            )
        if not self._pending:  # no training forward read the table
            return
        self._pending = False
        if self.gathered.grad is None:  # the loss did not reach the table: no .grad, as autograd
            return
        if self._written is not None:
            self.buffer.index_fill_(0, self._written, 0.0)
        self.buffer.index_copy_(0, self.rows, self.gathered.grad)
        self._written = self.rows
        self.weight.grad = self.buffer
        self.optimizer.expect_rows(self.weight, self.rows)

    def clip_(self, params: list[torch.Tensor], max_norm: float, total: torch.Tensor) -> None:
        """``clip_grads_with_norm_(params, max_norm, total)``, with the table's rows of zeros
        left out (zero times the coefficient is zero); a NaN or infinite norm scales the whole
        table, as torch does."""
        if self.weight.grad is not self.buffer or not math.isfinite(float(total)):
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
            self._written = torch.arange(len(self.buffer))  # all of it, zeroed at the next step
            self.optimizer.expect_rows(self.weight, None)
            return
        others = [p for p in params if p is not self.weight]
        torch.nn.utils.clip_grads_with_norm_([*others, self.gathered], max_norm, total)
        self.buffer.index_copy_(0, self.rows, self.gathered.grad)


def table_rows_for(learner, optimizer: torch.optim.Optimizer) -> TableRows | None:
    """A :class:`TableRows` for training ``learner`` with ``optimizer``, or None where the
    dense gradient is kept (see the module doc)."""
    # before torch 2.6 clipping cannot be split into the norm and the scaling (protocol's
    # _clip_grad_norm_), which a NaN or infinite norm needs to reach the whole table
    if not isinstance(optimizer, row_adamw.RowAdamW) or not hasattr(
        torch.nn.utils, "get_total_norm"
    ):
        return None
    if type(learner) is DemoPromptLearner:
        learner = learner.prompt
    if type(learner) is PromptLearner:
        if not isinstance(learner.adapter, MaskedLMAdapter):
            return None
        adapter, head_ids = learner.adapter, learner.verbalizer
    elif type(learner) is FinetuneLearner:
        adapter, head_ids = None, None
    else:
        return None
    model = learner.model
    config = getattr(model, "config", None)
    if not hasattr(model, "get_input_embeddings") or getattr(config, "is_encoder_decoder", True):
        return None
    embedding = model.get_input_embeddings()
    plain = (
        type(embedding) is nn.Embedding
        and embedding.max_norm is None
        and not embedding.scale_grad_by_freq
        and not embedding.sparse
    )
    weight = embedding.weight if plain else None
    if weight is None or not weight.requires_grad or weight.device.type != "cpu":
        return None
    if weight.shape[0] < row_adamw.MIN_ROWS:  # a table RowAdamW updates by rows
        return None
    return TableRows(embedding, optimizer, adapter, head_ids)
