"""Prompt-based fine-tuning, zero-shot and fine-tuning on tiny local models, and the report."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fewshot_support import cli_error
from smash.precompute.kshot.data import Example, load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot import protocol as protocol_module
from smash.train.fewshot.cli import main
from smash.train.fewshot.learners import (
    FinetuneLearner,
    PromptLearner,
    collate,
    interpolation_loss,
    interpolation_predict,
)
from smash.train.fewshot.metrics import aggregate, select_best
from smash.train.fewshot.protocol import (
    Protocol,
    SeedResult,
    choose,
    run_point,
    zero_shot,
)
from smash.train.fewshot.report import Entry, delta_rows, table_rows

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(
        ORIGINAL, root, [get_task(t) for t in ("SST-2", "STS-B", "MRPC")], seeds=[13, 21], k=8
    )
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13, 21, 42], k=16)
    return root


def test_interpolation_loss_and_prediction():
    logits = torch.tensor([[0.3, -1.2], [2.0, 2.0], [-0.5, 1.5]])
    scores = torch.tensor([1.0, 2.5, 5.0])
    p = F.softmax(logits, dim=-1)
    gold = torch.tensor([[0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])
    # KL(gold || pred) with 0 log 0 = 0, averaged over the batch.
    terms = torch.where(gold > 0, gold * (gold.clamp_min(1e-30).log() - p.log()), 0.0)
    assert interpolation_loss(logits, scores, (0.0, 5.0)) == pytest.approx(
        terms.sum(-1).mean().item(), abs=1e-6
    )
    # The loss is zero exactly when the prediction equals the target distribution.
    assert interpolation_loss(torch.log(gold[:2]), scores[:2], (0.0, 5.0)).item() == pytest.approx(
        0.0, abs=1e-6
    )
    assert interpolation_predict(logits, (0.0, 5.0)).tolist() == pytest.approx(
        (5.0 * p[:, 1]).tolist()
    )
    assert interpolation_predict(torch.log(gold), (0.0, 5.0)).tolist() == pytest.approx(
        [1.0, 2.5, 5.0], abs=1e-5
    )


def test_stsb_prompt_learner_uses_no_yes(tiny, tiny_tokenizer):
    from transformers import AutoModelForMaskedLM

    task = get_task("STS-B")
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    learner = PromptLearner(model, tiny_tokenizer, task, task.template, task.verbalizer, 64)
    feats = learner.encode([Example(("A boat.", "The river."), 3.0, 1)])
    assert feats[0].input_ids[feats[0].mask_position] == tiny_tokenizer.mask_token_id
    batch = collate(feats, tiny_tokenizer.pad_token_id, regression=True)
    out = learner.forward(batch)
    full = model(input_ids=batch.input_ids).logits[0, feats[0].mask_position]
    no, yes = (tiny_tokenizer.convert_tokens_to_ids("Ġ" + w) for w in ("No", "Yes"))
    assert out[0].tolist() == pytest.approx([full[no].item(), full[yes].item()], abs=1e-5)
    assert learner.predict(out).item() == pytest.approx(
        5.0 * torch.softmax(out[0], -1)[1].item(), abs=1e-5
    )


def test_bad_label_word(tiny, tiny_tokenizer):
    from transformers import AutoModelForMaskedLM

    task = get_task("SST-2")
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    with pytest.raises(ValueError, match="'magnificent'.*splits into"):
        PromptLearner(model, tiny_tokenizer, task, task.template, ["terrible", "magnificent"], 64)


def test_select_best_and_aggregate():
    assert select_best([0.5, 0.7, 0.7, 0.6]) == 1  # earliest of the tied best
    assert select_best([math.nan, 0.1, math.nan]) == 1
    assert select_best([math.nan, math.nan]) == 0
    mean, std = aggregate([80.0, 82.0, 84.0, 86.0, 88.0])
    assert (mean, std) == (84.0, pytest.approx(math.sqrt(8.0)))  # population std, as LM-BFF


def test_grid_keeps_best_dev_checkpoint(tiny, tiny_tokenizer, kshot):
    """The winner is the grid point with the best dev metric; its test metric is that of the
    weights at its best dev step, which evaluating those weights again reproduces."""
    from transformers import AutoModelForMaskedLM

    task = get_task("SST-2")
    data = load_kshot(kshot, task, 8, 13)
    learners = []

    def make():
        model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
        learners.append(
            PromptLearner(model, tiny_tokenizer, task, task.template, task.verbalizer, 64)
        )
        return learners[-1]

    protocol = Protocol(learning_rates=(1e-6, 3e-3), batch_sizes=(4,), max_steps=40, eval_every=10)
    cpu = torch.device("cpu")
    points = [run_point(make, data, 13, lr, bs, protocol, cpu) for lr, bs in protocol.grid]
    res = choose(13, points)
    assert len(res.grid_dev) == 2
    assert res.dev == max(res.grid_dev) and res.lr == protocol.grid[select_best(res.grid_dev)][0]
    assert res.step in (10, 20, 30, 40)
    winner = learners[select_best(res.grid_dev)]  # holds its best dev checkpoint's weights
    again = protocol_module.test_metrics(
        winner, "SST-2", winner.encode(data.tests["SST-2"]), 32, cpu
    )
    assert again == res.tests
    z = zero_shot(make(), data, 13, 32, torch.device("cpu"))
    assert set(z.tests) == {"SST-2"} and z.lr is None


def test_prompt_finetuning_beats_chance(tiny, kshot, tmp_path):
    out = tmp_path / "out"
    main(["--model", str(tiny["student"]), "--tasks", "SST-2", "--data", str(kshot), "--mode",
        "prompt", "--out", str(out), "--k", "16", "--seeds", "13", "21", "42", "--lrs", "3e-3",
        "--batch-sizes", "4", "--max-steps", "100", "--eval-every", "20", "--max-length", "64",
        "--device", "cpu"])  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    summary = result["entries"][0]["summary"]["SST-2"]
    assert summary["mean"] >= 70.0, summary  # 40 balanced test rows: chance is 50


def test_cli_two_models_three_modes(tiny, kshot, tmp_path):
    out = tmp_path / "out"
    main(["--model", str(tiny["student"]), "--model", str(tiny["teacher"]), "--name", "before",
        "after", "--tasks", "sts-b", "MRPC", "--data", str(kshot), "--mode", "prompt", "zero-shot",
        "finetune", "--out", str(out), "--k", "8", "--seeds", "13", "21", "--lrs", "1e-3",
        "--batch-sizes", "2", "4", "--max-steps", "4", "--eval-every", "2", "--max-length", "64",
        "--template", "MRPC=*cls**sent_0*?*mask*,*+sentl_1**sep+*", "--device", "cpu"])  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    assert len(result["entries"]) == 2 * 3 * 2
    entry = next(e for e in result["entries"] if e["mode"] == "prompt" and e["task"] == "STS-B")
    assert [s["seed"] for s in entry["seeds"]] == [13, 21]
    assert all(s["batch_size"] in (2, 4) and s["step"] in (2, 4) for s in entry["seeds"])
    assert result["config"]["template"] == ["MRPC=*cls**sent_0*?*mask*,*+sentl_1**sep+*"]
    md = (out / "results.md").read_text()
    assert "| model | mode | STS-B (Pearson) | STS-B (Spearman) | MRPC (F1) |" in md
    assert set(entry["summary"]) == {"STS-B", "STS-B:spearman"}
    for row in (
        "| before | prompt |",
        "| after | zero-shot |",
        "| before | finetune |",
        "| Δ after − before | prompt |",
    ):
        assert row in md
    pytest.importorskip("matplotlib")
    assert (out / "results.png").stat().st_size > 0


def test_max_length_beyond_model(tiny, kshot, tmp_path, capsys):
    err = cli_error(capsys, ["--model", str(tiny["student"]), "--tasks", "SST-2", "--data",
        str(kshot), "--mode", "zero-shot", "--out", str(tmp_path), "--k", "8", "--seeds", "13",
        "--max-length", "256"])  # fmt: skip
    assert "max length 256 exceeds the 130 positions" in err


def test_cli_unknown_task(tiny, kshot, tmp_path, capsys):
    err = cli_error(capsys, ["--model", str(tiny["student"]), "--tasks", "SST-3", "--data",
        str(kshot), "--out", str(tmp_path)])  # fmt: skip
    assert "unknown task 'SST-3'" in err


def test_cli_missing_model_folder(kshot, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = cli_error(capsys, ["--model", "demo-out/run/nostudent", "--tasks", "SST-2", "--data",
        str(kshot), "--out", str(tmp_path), "--k", "8", "--seeds", "13"])  # fmt: skip
    assert err == "evaluate-fewshot: error: --model demo-out/run/nostudent: no such folder"


def test_cli_missing_data_file(tiny, kshot, tmp_path, capsys):
    err = cli_error(capsys, ["--model", str(tiny["student"]), "--tasks", "RTE", "--data",
        str(kshot), "--out", str(tmp_path), "--k", "8", "--seeds", "13"])  # fmt: skip
    assert f"{kshot / 'RTE' / '8-13'}: no 8-shot split of RTE for seed 13" in err


def test_cli_bad_row_names_file_and_line(tiny, kshot, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "SST-2").mkdir(parents=True)
    split = data / "SST-2" / "8-13"
    split.mkdir()
    for f in (kshot / "SST-2" / "8-13").iterdir():
        (split / f.name).write_text(f.read_text())
    lines = (split / "dev.tsv").read_text().splitlines(keepends=True)
    lines[3] = "a sentence\t7\n"
    (split / "dev.tsv").write_text("".join(lines))
    err = cli_error(capsys, ["--model", str(tiny["student"]), "--tasks", "SST-2", "--data",
        str(data), "--out", str(tmp_path), "--k", "8", "--seeds", "13"])  # fmt: skip
    assert f"{split / 'dev.tsv'}:4: label '7'" in err


def test_table_and_delta_rows():
    def entry(model, values):
        return Entry(
            model,
            "p",
            "prompt",
            "SST-2",
            "acc",
            [SeedResult(seed=s, dev=0.0, tests={"SST-2": v}) for s, v in zip((13, 21), values)],
        )

    columns, rows = table_rows([entry("a", [0.5, 0.7]), entry("b", [0.8, 0.9])])
    assert columns == {"SST-2": "SST-2 (acc)"}
    assert rows[0][2]["SST-2"] == pytest.approx((60.0, 10.0))
    ((name, mode, cells),) = delta_rows(rows)
    assert (name, mode) == ("Δ b − a", "prompt") and cells["SST-2"][0] == pytest.approx(25.0)


def test_finetune_encodes_pairs_as_lmbff_does(tiny_tokenizer):
    """LM-BFF's non-prompt path: <s> a </s> b </s>, each sentence encoded on its own, cut from
    the end (not HF's pair encoding <s> a </s></s> b </s>)."""
    tok = tiny_tokenizer
    pair = Example(texts=("The cat sat.", "A dog ran."), label=1, line=2)
    learner = FinetuneLearner(None, tok, get_task("MRPC"), max_length=64)
    [features] = learner.encode([pair])
    a, b = (tok.encode(t, add_special_tokens=False) for t in pair.texts)
    assert features.input_ids == [tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id]
    assert features.input_ids != tok(*pair.texts)["input_ids"]  # HF's pair layout differs
    short = FinetuneLearner(None, tok, get_task("MRPC"), max_length=len(a) + 3)
    assert short.encode([pair])[0].input_ids == features.input_ids[: len(a) + 3]
    single = Example(texts=("Fine.",), label=0, line=2)
    [one] = FinetuneLearner(None, tok, get_task("SST-2"), max_length=64).encode([single])
    assert one.input_ids == tok("Fine.")["input_ids"]  # <s> x </s>


@pytest.mark.parametrize("name, limit", [("MR", 110), ("SST-5", 110), ("CR", 110), ("RTE", 240)])
def test_prompts_cap_the_first_sentence_as_lmbff_does(tiny, tiny_tokenizer, name, limit):
    """LM-BFF's run_experiment.sh: --first_sent_limit 110 (MR, SST-5, CR), 240 (RTE)."""
    from transformers import AutoModelForMaskedLM

    task = get_task(name)
    assert task.first_sent_limit == limit
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    learner = PromptLearner(model, tiny_tokenizer, task, task.template, task.verbalizer, 10_000)
    long = " ".join(["the movie was good"] * 100)
    texts = (long,) if len(task.text_columns) == 1 else (long, "It was bad.")
    [capped] = learner.encode([Example(texts=texts, label=0, line=2)])
    whole = learner.template.encode(tiny_tokenizer, texts, 10_000).input_ids
    first = long[:-1] if name == "RTE" else long  # the NLI template's sent-_0 drops a character
    tokens = len(tiny_tokenizer.encode(first, add_special_tokens=False))
    assert tokens > limit and len(whole) - len(capped.input_ids) == tokens - limit
