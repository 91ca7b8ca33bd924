"""The vocabulary table's gradient by rows (``train/fewshot/table_rows.py``): the gradients,
clipping and trained weights are bitwise those of autograd's dense table, with the paper's
dropout on; it is used where that is exact and nowhere else."""

import contextlib
from pathlib import Path

import pytest
import torch
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot import protocol, row_adamw, table_rows
from smash.train.fewshot.demonstrations import DemoPromptLearner
from smash.train.fewshot.learners import FinetuneLearner, PromptLearner, collate
from smash.train.fewshot.protocol import Protocol, _clip_grad_norm_, train_point
from smash.train.fewshot.row_adamw import RowAdamW
from smash.train.fewshot.table_rows import TableRows, table_rows_for

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13], k=8)
    return root


@pytest.fixture
def tables(monkeypatch) -> list[TableRows]:
    """The tiny vocabulary (600 rows) counted as a table, as a real one is; every TableRows
    the protocol makes."""
    monkeypatch.setattr(row_adamw, "MIN_ROWS", 64)
    made, make = [], table_rows.table_rows_for

    def spy(learner, optimizer):
        table = make(learner, optimizer)
        if table is not None:
            made.append(table)
        return table

    monkeypatch.setattr(protocol, "table_rows_for", spy)
    return made


def _learner(kind: str, dropout_student: Path, tokenizer, split):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    task = get_task("SST-2")
    if kind == "finetune":
        model = AutoModelForSequenceClassification.from_pretrained(dropout_student, num_labels=2)
        return FinetuneLearner(model, tokenizer, task, 64)
    model = AutoModelForMaskedLM.from_pretrained(dropout_student)
    if kind == "prompt-demo":
        return DemoPromptLearner(model, tokenizer, task, task.template, task.verbalizer, 64,
                                 split.train, seed=13, samples=2)  # fmt: skip
    return PromptLearner(model, tokenizer, task, task.template, task.verbalizer, 64)


@pytest.mark.parametrize("kind", ["prompt", "prompt-demo", "finetune"])
@pytest.mark.parametrize("max_grad_norm", [1.0, 1e-4])  # 1e-4: every step clipped
def test_a_unit_trains_bitwise_as_with_the_dense_table(
    kind, max_grad_norm, dropout_student, tiny_tokenizer, kshot, tables, monkeypatch
):
    split = load_kshot(kshot, get_task("SST-2"), 8, 13)
    settings = Protocol(max_steps=6, eval_every=2, max_grad_norm=max_grad_norm)
    results = []
    for by_rows in (True, False):
        if not by_rows:
            monkeypatch.setattr(protocol, "table_rows_for", lambda learner, optimizer: None)
        make = lambda: _learner(kind, dropout_student, tiny_tokenizer, split)
        results.append(train_point(make, split, 13, 1e-2, 2, settings, CPU))
    (point, state), (dense_point, dense_state) = results
    assert (point.dev, point.step) == (dense_point.dev, dense_point.step)
    assert all(torch.equal(state[k], dense_state[k]) for k in dense_state)
    assert len(tables) == 1  # the first run trained by rows
    table = tables[0]
    assert table.adapter is None if kind == "finetune" else table.adapter is not None
    assert table.embedding.padding_idx == tiny_tokenizer.pad_token_id


def _step(learner, batch, table: TableRows | None, max_grad_norm: float, scale: float = 1.0):
    """One backward pass and clipping; the loss times ``scale`` (inf, nan: such a norm)."""
    params = [p for p in learner.model.parameters() if p.requires_grad]
    learner.model.train()
    torch.manual_seed(0)  # the same dropout in both runs
    loss = learner.loss(learner.forward(batch), batch.labels) * scale
    loss.backward()
    if table is not None:
        table.gather()
    _clip_grad_norm_(params, max_grad_norm, table)
    return {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scale", [1.0, float("inf"), float("nan")])
@pytest.mark.parametrize("max_grad_norm", [1e3, 1e-4])
def test_gradients_clipping_and_updates_are_autograds(
    scale, max_grad_norm, dropout_student, tiny_tokenizer, kshot, monkeypatch
):
    """Two steps on different batches (the first one's rows zeroed again at the second): each
    table's gradient after clipping and the weights after AdamW equal to those of autograd's
    dense table, also after an infinite or NaN norm (which reaches every row)."""
    monkeypatch.setattr(row_adamw, "MIN_ROWS", 64)
    split = load_kshot(kshot, get_task("SST-2"), 8, 13)
    runs = []
    for by_rows in (True, False):
        learner = _learner("prompt", dropout_student, tiny_tokenizer, split)
        optimizer = RowAdamW([p for p in learner.model.parameters() if p.requires_grad], 1e-3)
        table = table_rows_for(learner, optimizer) if by_rows else None
        assert (table is not None) == by_rows
        features = learner.encode(split.train)
        seen = []
        with table or contextlib.nullcontext():
            for step, rows in enumerate((features[:2], features[5:9])):
                batch = collate(rows, tiny_tokenizer.pad_token_id, False)
                seen.append(_step(learner, batch, table, max_grad_norm, scale if step == 0 else 1))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seen.append(dict(learner.model.named_parameters()))
        runs.append(seen)
    for mine, dense in zip(*runs):
        assert mine.keys() == dense.keys()
        for name in dense:
            torch.testing.assert_close(mine[name].detach(), dense[name].detach(), rtol=0, atol=0,
                                       equal_nan=True)  # fmt: skip


def test_the_padding_row_and_repeated_ids_as_autograd():
    """A lookup whose padding positions count in the loss (autograd gives the padding row no
    gradient) and ids repeated in a batch; a head row that was not gathered is refused."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, 1, 1, 7, 5], [9, 5, 1, 3, 3]])
    grads = []
    for by_rows in (True, False):
        embedding = torch.nn.Embedding(12, 4, padding_idx=1)
        with torch.no_grad():
            embedding.weight.copy_(torch.randn(12, 4, generator=torch.Generator().manual_seed(1)))
        optimizer = RowAdamW([embedding.weight], 1e-3)
        table = TableRows(embedding, optimizer) if by_rows else None
        scale = torch.randn(2, 5, 4, generator=g)
        with table or contextlib.nullcontext():
            (embedding(ids) * scale).sum().backward()
            if table is not None:
                table.gather()
                embedding(ids)
                assert torch.equal(table._head_rows(torch.tensor([7, 3])), embedding.weight[[7, 3]])
                with pytest.raises(RuntimeError, match=r"rows \[7, 11\], not all of which"):
                    table._head_rows(torch.tensor([7, 11]))
        grads.append(embedding.weight.grad.clone())
        g = torch.Generator().manual_seed(0)
    assert torch.equal(*grads) and not grads[0][1].any() and grads[0][5].any()


def test_it_is_used_only_where_exact(dropout_student, tiny_tokenizer, kshot, tiny_t5, monkeypatch):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    split = load_kshot(kshot, get_task("SST-2"), 8, 13)
    learner = _learner("prompt", dropout_student, tiny_tokenizer, split)
    params = list(learner.model.parameters())
    assert table_rows_for(learner, RowAdamW(params, 1e-3)) is None  # 600 rows: not a table
    monkeypatch.setattr(row_adamw, "MIN_ROWS", 64)
    assert isinstance(table_rows_for(learner, RowAdamW(params, 1e-3)), TableRows)
    assert table_rows_for(learner, torch.optim.AdamW(params, 1e-3)) is None  # --adamw dense
    # a T5's shared table is read twice a step (encoder and decoder): dense
    t5 = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["student"])
    tok = AutoTokenizer.from_pretrained(tiny_t5["student"])
    task = get_task("SST-2")
    t5_learner = PromptLearner(t5, tok, task, task.template, task.verbalizer, 64)
    assert table_rows_for(t5_learner, RowAdamW(list(t5.parameters()), 1e-3)) is None

    class WholeTable(PromptLearner):  # e.g. distillation's vocabulary logits
        pass

    whole = WholeTable(learner.model, tiny_tokenizer, task, task.template, task.verbalizer, 64)
    assert table_rows_for(whole, RowAdamW(params, 1e-3)) is None


def test_a_learner_reading_the_whole_table_is_refused(
    dropout_student, tiny_tokenizer, kshot, monkeypatch
):
    monkeypatch.setattr(row_adamw, "MIN_ROWS", 64)
    split = load_kshot(kshot, get_task("SST-2"), 8, 13)
    learner = _learner("prompt", dropout_student, tiny_tokenizer, split)
    table = table_rows_for(learner, RowAdamW(list(learner.model.parameters()), 1e-3))
    batch = collate(learner.encode(split.train[:2]), tiny_tokenizer.pad_token_id, False)
    with table:
        learner.model.train()
        features = learner.head_features(batch)
        vocab = learner.adapter.decoder(features)  # every row of the tied table
        (learner.word_logits(features).sum() + vocab.sum()).backward()
        with pytest.raises(RuntimeError, match="outside its gathered rows"):
            table.gather()
    learner.model.zero_grad(set_to_none=True)
    with table:
        learner.forward(batch)
        with pytest.raises(RuntimeError, match="read twice in one training step"):
            learner.forward(batch)


def test_evaluation_reads_the_table_itself(dropout_student, tiny_tokenizer, kshot, monkeypatch):
    """No gradient or eval mode: the hook leaves the module's output alone, and after the
    context the adapter indexes its weight again."""
    monkeypatch.setattr(row_adamw, "MIN_ROWS", 64)
    split = load_kshot(kshot, get_task("SST-2"), 8, 13)
    learner = _learner("prompt", dropout_student, tiny_tokenizer, split)
    batch = collate(learner.encode(split.dev[:4]), tiny_tokenizer.pad_token_id, False)
    learner.model.eval()
    with torch.inference_mode():
        expected = learner.forward(batch)
    table = table_rows_for(learner, RowAdamW(list(learner.model.parameters()), 1e-3))
    with table, torch.inference_mode():
        assert torch.equal(learner.forward(batch), expected)
        assert table.gathered is None
    assert learner.adapter.rows_of is None
