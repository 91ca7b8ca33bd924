"""The soft cross-entropy reference against dense, independently written definitions."""

import math

import pytest
import torch
from smash.kernels.soft_ce_inputs import TAIL_MODES, check_inputs
from smash.kernels.soft_ce_reference import soft_ce_rows_reference, soft_cross_entropy_reference
from soft_ce_cases import (
    dense_ce,
    make_logits,
    make_teacher,
)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_reference_all_modes_equal_dense_ce_when_topk_holds_all_mass(temperature):
    gen = torch.Generator().manual_seed(1)
    n, vocab, k = 4, 50, 7
    ids, lp, tail = make_teacher(n, vocab, k, gen, full_mass_rows=range(n))
    logits = make_logits(n, vocab, torch.float64, gen)
    target = torch.zeros(n, vocab, dtype=torch.float64)
    target.scatter_(1, ids, torch.softmax(lp.double() / temperature, -1))
    expected = dense_ce(logits, target, temperature)
    for tail_mode in TAIL_MODES:
        got = soft_cross_entropy_reference(
            logits,
            ids,
            lp,
            tail_logmass=tail,
            tail=tail_mode,
            temperature=temperature,
            reduction="none",
        )
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_reference_tail_modes_match_their_dense_definitions_at_t1():
    gen = torch.Generator().manual_seed(2)
    n, vocab, k = 5, 40, 6
    ids, lp, _ = make_teacher(n, vocab, k, gen)
    logits = make_logits(n, vocab, torch.float64, gen)
    p = lp.double().exp()
    r = 1 - p.sum(-1, keepdim=True)  # the fp16 rounding makes this differ from exp(tail)
    in_top = torch.zeros(n, vocab, dtype=torch.bool).scatter_(1, ids, True)
    logs = torch.log_softmax(logits, -1)
    kw = {"tail_logmass": torch.log(r[:, 0]).float(), "reduction": "none"}

    renorm = torch.zeros(n, vocab, dtype=torch.float64).scatter_(1, ids, p / p.sum(-1, True))
    uniform = torch.where(in_top, 0.0, r / (vocab - k)).scatter_(1, ids, p)
    log_student_tail = torch.logsumexp(logs.masked_fill(in_top, -math.inf), -1)
    bucket = -(p * logs.gather(1, ids)).sum(-1) - r[:, 0] * log_student_tail

    def got(mode):
        return soft_cross_entropy_reference(logits, ids, lp, tail=mode, **kw)

    torch.testing.assert_close(got("renorm"), dense_ce(logits, renorm), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got("uniform"), dense_ce(logits, uniform), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got("bucket"), bucket, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("tail", TAIL_MODES)
def test_reference_gradcheck_float64(tail):
    gen = torch.Generator().manual_seed(3)
    n, vocab, k = 3, 11, 4
    ids, lp, tail_mass = make_teacher(n, vocab, k, gen, full_mass_rows=[1])
    x = make_logits(n, vocab, torch.float64, gen).requires_grad_()
    weights = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def f(logits):
        return soft_cross_entropy_reference(
            logits,
            ids,
            lp,
            tail_logmass=tail_mass,
            tail=tail,
            temperature=2.0,
            scale_t2=True,
            weights=weights,
        )

    assert torch.autograd.gradcheck(f, (x,))


def test_rows_of_reference_are_per_row_losses():
    gen = torch.Generator().manual_seed(35)
    ids, lp, tail = make_teacher(3, 30, 4, gen)
    logits = make_logits(3, 30, torch.float64, gen)
    inputs = check_inputs(
        logits.shape[:-1],
        30,
        logits.device,
        ids,
        lp,
        tail_logmass=tail,
        tail="bucket",
        temperature=1.0,
        scale_t2=False,
        weights=None,
        reduction="none",
        check_ids=True,
    )
    rows = soft_ce_rows_reference(logits, inputs)
    for r in range(3):
        one = soft_ce_rows_reference(logits[r : r + 1], inputs.rows(r, r + 1))
        torch.testing.assert_close(one[0], rows[r], rtol=1e-6, atol=1e-6)  # fp32 round-off
