"""AdamW by rows: the vocabulary rows that have never had a gradient are skipped, and the update
is the same as ``torch.optim.AdamW``'s (bitwise on a CPU, alone; to round-off, batched), with
the paper's dropout on; ``--adamw`` chooses it on the command line."""

import copy
import json
from pathlib import Path

import pytest
import torch
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot import batched, row_adamw
from smash.train.fewshot.batched import train_together
from smash.train.fewshot.cli import main
from smash.train.fewshot.cpu_allocator import keep_freed_memory
from smash.train.fewshot.learners import PromptLearner
from smash.train.fewshot.protocol import Protocol, train_point
from smash.train.fewshot.row_adamw import RowAdamW, make_adamw

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


def _tensors(seed: int) -> list[torch.Tensor]:
    """A vocabulary table and bias (updated by rows) and a small layer (updated whole)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(row_adamw.MIN_ROWS + 10, 6), (row_adamw.MIN_ROWS + 10,), (6, 6)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def _gradients(step: int, params: list[torch.Tensor]) -> None:
    """Each step a few rows of the tables: row 7 only at step 1, rows 3 and 9 every step,
    a -0.0 row, and an exact zero inside a touched row; the small layer whole."""
    g = torch.Generator().manual_seed(100 + step)
    table, bias, layer = params
    rows = torch.tensor([3, 9, *([7] if step == 1 else []), 20 + step])
    table.grad = torch.zeros_like(table)
    table.grad[rows] = torch.randn(len(rows), table.shape[1], generator=g)
    table.grad[9, 2] = 0.0
    table.grad[50] = -0.0
    bias.grad = torch.zeros_like(bias)
    bias.grad[rows] = torch.randn(len(rows), generator=g)
    layer.grad = torch.randn(layer.shape, generator=g)


def _train(make, steps: int = 6) -> list[torch.Tensor]:
    params = _tensors(0)
    optimizer = make(params)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    for step in range(steps):
        _gradients(step, params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return params


def test_row_adamw_is_torch_adamw_bitwise():
    mine = _train(lambda params: make_adamw("rows", params, lr=1e-2))
    theirs = _train(lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0))
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)
    start = _tensors(0)
    moved = (mine[0] != start[0]).any(dim=1).nonzero().squeeze(1).tolist()
    assert moved == [3, 7, 9, 20, 21, 22, 23, 24, 25]  # row 7 moves on after its one gradient


def test_row_adamw_tracks_rows_of_tables_only():
    table, bias, layer = params = _tensors(0)
    optimizer = RowAdamW(params, lr=1e-2)
    _gradients(1, params)
    optimizer.step()
    assert optimizer.state[layer]["seen"] is None
    # row 50's -0.0 counts as a gradient (updating it leaves it bitwise as it is)
    assert optimizer.state[table]["seen"].nonzero().squeeze(1).tolist() == [3, 7, 9, 21, 50]
    assert optimizer.state[bias]["seen"].nonzero().squeeze(1).tolist() == [3, 7, 9, 21]


def test_a_nan_gradient_reaches_its_row():
    """A NaN is not zero: its row is updated, as dense AdamW updates it."""
    tables = []
    for make in (RowAdamW, lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0)):
        table = _tensors(0)[0]
        optimizer = make([table], lr=1e-2)
        table.grad = torch.zeros_like(table)
        table.grad[5, 1] = float("nan")
        optimizer.step()
        tables.append(table.detach())
    assert tables[0][5, 1].isnan()
    torch.testing.assert_close(tables[0], tables[1], rtol=0, atol=0, equal_nan=True)


def test_an_unknown_adamw_is_refused():
    with pytest.raises(ValueError, match="adamw must be one of"):
        make_adamw("sparse", [torch.zeros(2, requires_grad=True)], lr=1e-3)
    with pytest.raises(ValueError, match="adamw must be one of"):
        Protocol(adamw="sparse")


def test_a_saved_row_adamw_loads_and_steps_on_alike():
    """``load_state_dict`` casts the rows' record to the weights' dtype: it is made bool again."""
    mine = _tensors(0)
    optimizer = RowAdamW(mine, lr=1e-2)
    _gradients(0, mine)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())  # as a checkpoint file holds it
    theirs = [t.detach().clone().requires_grad_() for t in mine]
    loaded = RowAdamW(theirs, lr=1e-2)
    loaded.load_state_dict(saved)
    for params, opt in ((mine, optimizer), (theirs, loaded)):
        _gradients(1, params)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))


@pytest.mark.parametrize("scale", [1e-3, 10.0, float("inf"), float("nan")])
def test_clipping_is_torchs(scale):
    """Within the norm (the multiplication by 1 skipped), above it, and an infinite or NaN
    norm: the gradients are those of ``torch.nn.utils.clip_grad_norm_``."""
    from smash.train.fewshot.protocol import _clip_grad_norm_

    clipped = []
    for clip in (_clip_grad_norm_, torch.nn.utils.clip_grad_norm_):
        params = _tensors(0)
        _gradients(0, params)
        params[2].grad[0, 0] = params[2].grad[0, 0] * scale
        clip(params, 1.0)
        clipped.append([p.grad for p in params])
    for a, b in zip(*clipped):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13, 21], k=8)
    return root


@pytest.fixture
def small_tables(monkeypatch) -> list[int]:
    """The tiny vocabulary (600 rows) updated by rows, as a real one is; the number of rows of
    every tensor so tracked."""
    monkeypatch.setattr(row_adamw, "MIN_ROWS", 64)
    tracked, seen_rows = [], row_adamw.seen_rows

    def spy(param, dim):
        seen = seen_rows(param, dim)
        if seen is not None:
            tracked.append(len(seen))
        return seen

    monkeypatch.setattr(row_adamw, "seen_rows", spy)
    monkeypatch.setattr(batched, "seen_rows", spy)
    return tracked


def _make(dropout_student: Path, tokenizer, task):
    from transformers import AutoModelForMaskedLM

    def make():
        model = AutoModelForMaskedLM.from_pretrained(dropout_student)
        return PromptLearner(model, tokenizer, task, task.template, task.verbalizer, 64)

    return make


def test_a_unit_trains_the_same_by_rows_and_dense(
    dropout_student, tiny_tokenizer, kshot, small_tables
):
    """One grid point with dropout on: the same dev metric, step and checkpoint, bitwise."""
    task = get_task("SST-2")
    split = load_kshot(kshot, task, 8, 13)
    cpu = torch.device("cpu")
    results = {}
    for kind in row_adamw.ADAMW_KINDS:
        protocol = Protocol(max_steps=6, eval_every=2, adamw=kind)
        results[kind] = train_point(_make(dropout_student, tiny_tokenizer, task), split, 13, 1e-2, 2,
                                    protocol, cpu)  # fmt: skip
    (rows, rows_state), (dense, dense_state) = results["rows"], results["dense"]
    assert (rows.dev, rows.step) == (dense.dev, dense.step)
    assert rows_state.keys() == dense_state.keys()
    assert all(torch.equal(rows_state[k], dense_state[k]) for k in rows_state)
    # the vocabulary table and its bias were updated by rows (with other tensors of >= 64 rows)
    assert small_tables.count(len(tiny_tokenizer)) == 2


def test_units_trained_together_are_the_same_by_rows_and_dense(
    dropout_student, tiny_tokenizer, kshot, small_tables
):
    """Two seeds x two learning rates stacked: the same by rows as dense, bitwise (each unit's
    own dropout stream, drawn alike in both runs)."""
    task = get_task("SST-2")
    seeds, lrs = [13, 13, 21, 21], [1e-3, 1e-2, 1e-3, 1e-2]
    splits = [load_kshot(kshot, task, 8, seed) for seed in seeds]
    cpu = torch.device("cpu")
    runs = {}
    for kind in row_adamw.ADAMW_KINDS:
        torch.manual_seed(0)
        learners = []
        for seed in seeds:
            torch.manual_seed(seed)
            learners.append(_make(dropout_student, tiny_tokenizer, task)())
        protocol = Protocol(max_steps=4, eval_every=2, adamw=kind)
        runs[kind] = train_together(learners, splits, seeds, lrs, 2, protocol, cpu)
    for (result, state, losses), (d_result, d_state, d_losses) in zip(runs["rows"], runs["dense"]):
        assert (result.dev, result.step, losses) == (d_result.dev, d_result.step, d_losses)
        assert all(torch.equal(state[name], d_state[name]) for name in state)
    assert small_tables.count(len(tiny_tokenizer)) == 2  # the stacked table and bias, by rows


def _argv(dropout_student: Path, kshot: Path, out: Path) -> list[str]:
    return ["--model", str(dropout_student), "--tasks", "SST-2", "--data", str(kshot), "--mode", "prompt",
            "--k", "8", "--seeds", "13", "--lrs", "1e-3", "1e-2", "--batch-sizes", "2",
            "--max-steps", "4", "--eval-every", "2", "--max-length", "64", "--device", "cpu",
            "--out", str(out)]  # fmt: skip


def test_adamw_flag_gives_the_same_results(dropout_student, kshot, tmp_path, small_tables):
    entries = {}
    for kind in row_adamw.ADAMW_KINDS:
        out = tmp_path / kind
        assert main([*_argv(dropout_student, kshot, out), "--adamw", kind]) == 0
        entries[kind] = json.loads((out / "results.json").read_text())["entries"]
    assert entries["rows"] == entries["dense"]


def test_a_resume_may_change_adamw(dropout_student, kshot, tmp_path, small_tables):
    """Both kinds make the same update, so the ledger's settings leave it out."""
    out = tmp_path / "out"
    assert main([*_argv(dropout_student, kshot, out), "--adamw", "dense"]) == 0
    assert main([*_argv(dropout_student, kshot, out), "--resume"]) == 0


def test_an_unknown_adamw_flag_is_refused(dropout_student, kshot, tmp_path, capsys):
    assert main([*_argv(dropout_student, kshot, tmp_path / "out"), "--adamw", "sparse"]) == 2
    assert "--adamw" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_freed_memory_is_kept_under_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("keep_freed_memory acts under glibc only")
    assert keep_freed_memory() is True
