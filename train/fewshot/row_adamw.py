"""AdamW that updates only the rows of a vocabulary table that have ever had a gradient.

A few-shot batch touches a few hundred of a masked LM's 50,265 vocabulary rows (its tokens and
the label words), yet ``torch.optim.AdamW`` reads and writes every row of the table, of its two
moments and of its gradient at every step: at DistilRoBERTa's width scaled down 4x that was
83 of a CPU training step's 121 ms (``benchmarks/RESULTS.md``, few-shot evaluation). Without
weight decay (the protocol's, HF Trainer's default), a row whose gradient has been zero at every
step so far has both moments zero, and AdamW leaves it where it is; so updating only the rows
that have had a gradient is the same update. :class:`RowAdamW` applies
``torch.optim.AdamW``'s single-tensor arithmetic, operation for operation, to those rows (and
to every other tensor whole): on a CPU its parameters stay bitwise equal to those of the
locked torch's AdamW (``tests/test_row_adamw.py``; a torch that takes the bias correction's
square root another way, e.g. ``math.sqrt``, rounds differently now and then). The batched
trainer (``batched.py``) updates its stacked tables the same way through :func:`update_rows_`.

What it saves is the optimizer's passes. The trainer's ``table_rows.py`` also spares the
table's gradient most of its dense passes, and tells the optimizer its rows (``expect_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = [
    "ADAMW_KINDS", "BETAS", "EPS", "MIN_ROWS", "RowAdamW", "make_adamw", "seen_rows", "update_rows_",
]  # fmt: skip

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, as the protocol uses them
# tensors with at least this many rows (along their row dimension) are updated by rows: the
# vocabulary tables and their biases (30,522 rows in BERT, 32,128 in T5, 50,265 in RoBERTa);
# position tables (514 rows) and layers (up to 4,096 rows in the large models) are updated whole
MIN_ROWS = 20_000
# --adamw: "rows" (RowAdamW, the default) or "dense" (torch.optim.AdamW, as LM-BFF's HF Trainer)
ADAMW_KINDS = ("rows", "dense")

Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def update_rows_(
    param: torch.Tensor,
    grad: torch.Tensor,
    moments: tuple[torch.Tensor, torch.Tensor],
    seen: torch.Tensor | None,
    dim: int,
    update: Update,
    nonzero_rows: torch.Tensor | None = None,
) -> None:
    """``update(param, grad, exp_avg, exp_avg_sq)`` in place, on the whole tensors when ``seen``
    is None, else on the rows along ``dim`` that have had a nonzero gradient at this or any
    earlier step (``seen``, a bool vector over those rows, is updated). ``nonzero_rows``, when
    the caller knows them, are indices of rows outside which ``grad`` is zero: they spare the
    pass that finds the rows (rows of zeros among them are harmless, see below)."""
    exp_avg, exp_avg_sq = moments
    if seen is None:
        update(param, grad, exp_avg, exp_avg_sq)
        return
    if nonzero_rows is not None:
        seen[nonzero_rows] = True
    else:
        # A row has had a gradient where one of its bytes is not zero: one pass over the
        # bytes, where ``ne(0).any`` is eight times slower. That counts a row of -0.0 too,
        # which AdamW with zero moments leaves bitwise as it is (p - 0 * (0 / eps) = p), as
        # it does a row of +0.
        nonzero = grad.contiguous().view(torch.uint8).unflatten(-1, (-1, grad.element_size()))
        others = tuple(d for d in range(nonzero.dim()) if d != dim)
        seen |= nonzero.amax(dim=others) != 0
    if bool(seen.all()):  # every row has had a gradient: the whole tensor, without gathers
        update(param, grad, exp_avg, exp_avg_sq)
        return
    rows = seen.nonzero().squeeze(1)
    parts = [t.index_select(dim, rows) for t in (param, grad, exp_avg, exp_avg_sq)]
    update(*parts)
    for whole, part in zip((param, exp_avg, exp_avg_sq), (parts[0], parts[2], parts[3])):
        whole.index_copy_(dim, rows, part)


def seen_rows(param: torch.Tensor, dim: int) -> torch.Tensor | None:
    """A fresh ``seen`` vector for ``param`` if it is updated by rows along ``dim``, else None:
    tables on a CPU only (on a GPU, finding the rows would sync the device at every step)."""
    if param.device.type != "cpu" or param.dim() <= dim or param.shape[dim] < MIN_ROWS:
        return None
    return torch.zeros(param.shape[dim], dtype=torch.bool, device=param.device)


class RowAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW(params, lr, weight_decay=0.0)`` with default betas and eps, which
    updates a vocabulary table's rows only once they have had a gradient (the same result)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        super().__init__(params, {"lr": lr})
        self._nonzero_rows: dict[torch.Tensor, torch.Tensor] = {}

    def expect_rows(self, param: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Say that at the next step ``param``'s gradient is zero outside ``rows`` (indices
        along its first dimension; None: unknown, found from the gradient)."""
        if rows is None:
            self._nonzero_rows.pop(param, None)
        else:
            self._nonzero_rows[param] = rows

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("RowAdamW takes no closure")
        beta1, beta2 = BETAS
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(param),
                                 exp_avg_sq=torch.zeros_like(param), seen=seen_rows(param, 0))  # fmt: skip
                state["step"] += 1
                # torch's single-tensor AdamW: the step a float, these in Python floats
                step = float(state["step"])
                step_size = group["lr"] / (1 - beta1**step)
                root = (1 - beta2**step) ** 0.5

                def adamw(p, g, m, v, step_size=step_size, root=root) -> None:
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    p.addcdiv_(m, (v.sqrt() / root).add_(EPS), value=-step_size)

                if state["seen"] is not None and state["seen"].dtype != torch.bool:
                    state["seen"] = state["seen"].bool()  # load_state_dict casts it to floats
                moments = (state["exp_avg"], state["exp_avg_sq"])
                update_rows_(param, param.grad, moments, state["seen"], 0, adamw,
                             self._nonzero_rows.pop(param, None))  # fmt: skip


def make_adamw(kind: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The protocol's optimizer: ``kind`` one of ``ADAMW_KINDS``. By rows on a CPU; on a GPU
    ``rows`` is ``torch.optim.AdamW`` too (its multi-tensor path is cheap there, and finding
    the rows would sync the device at every step)."""
    if kind == "rows" and all(p.device.type == "cpu" for p in params):
        return RowAdamW(params, lr=lr)
    if kind not in ADAMW_KINDS:
        raise ValueError(f"adamw must be one of {ADAMW_KINDS}, got {kind!r}")
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
