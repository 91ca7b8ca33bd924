"""The report beside the paper's published rows: ``evaluate-fewshot --compare-paper``."""

import json
import math
from pathlib import Path

import pytest
from fewshot_support import cli_error
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.cli import main
from smash.train.fewshot.paper import PAPER_COLUMNS, PAPER_MODELS, paper_row, parse_compare

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


def test_published_rows_as_printed():
    """Spot checks against the paper's Table 2 and Table 4, and every row's shape."""
    name, cells = paper_row("distilroberta-base", "distill-bt10")
    assert name == "distill bt10" and cells["STS-B"] == (33.6, 13.3) and cells["CR"] == (84.1, 1.9)
    name, cells = paper_row("smash", "zero-shot")
    assert name == "SMASH zero-shot" and cells["MNLI-m"][0] == 46.7 and math.isnan(cells["RTE"][1])
    assert paper_row("distilroberta-base", "zero-shot")[1]["STS-B"][0] == -5.7
    assert paper_row("roberta-large", "prompt")[1]["SNLI"] == (77.2, 3.7)
    _, t5 = paper_row("smash-t5", "prompt")
    assert t5 == {"MNLI-m": (48.3, 2.0), "MRPC": (69.4, 6.3), "QQP": (60.0, 3.4)}
    assert paper_row("smash", "finetune") is None
    for model in PAPER_MODELS:
        for mode in ("prompt", "zero-shot", "finetune", "distill", "distill-bt10", "lmbff"):
            found = paper_row(model, mode)
            if found is not None and not model.startswith(("t5", "smash-t5")):
                assert list(found[1]) == list(PAPER_COLUMNS)


def test_parse_compare():
    assert parse_compare(["a=smash", "b=distilroberta-base"], ["a", "b"]) == {
        "a": "smash", "b": "distilroberta-base"}  # fmt: skip
    assert parse_compare([], ["smash", "x"]) == {"smash": "smash"}
    assert parse_compare(["smash"], ["smash"]) == {"smash": "smash"}
    with pytest.raises(ValueError, match="the paper has no model 'bert'; one of distilroberta"):
        parse_compare(["a=bert"], ["a"])
    with pytest.raises(ValueError, match="no evaluated model is named 'c' .models: a, b"):
        parse_compare(["c=smash"], ["a", "b"])
    with pytest.raises(ValueError, match="say which paper model each of ours stands for"):
        parse_compare([], ["a"])
    # one of our models named twice: the last would win without a word
    with pytest.raises(ValueError, match="'a=distilroberta-base': 'a' is already compared with "
                       "the paper's 'smash'; name each of our models once"):  # fmt: skip
        parse_compare(["a=smash", "b=smash", "a=distilroberta-base"], ["a", "b"])
    with pytest.raises(ValueError, match="'smash=smash': 'smash' is already compared"):
        parse_compare(["smash", "smash=smash"], ["smash"])


def test_report_beside_the_paper(tiny, tmp_path, capsys):
    kshot = tmp_path / "kshot"
    make_kshot(ORIGINAL, kshot, [get_task(t) for t in ("SST-2", "MRPC")], seeds=[13], k=8)
    out = tmp_path / "out"
    argv = ["--model", str(tiny["student"]), "--name", "before", "--tasks", "SST-2", "MRPC",
            "--data", str(kshot), "--mode", "zero-shot", "finetune", "--k", "8", "--seeds", "13",
            "--lrs", "1e-3", "--batch-sizes", "4", "--max-steps", "2", "--eval-every", "2",
            "--max-length", "64", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--compare-paper", "before=distilroberta-base"]) == 0
    md = (out / "results.md").read_text()
    assert "| model | mode | MRPC (F1) | SST-2 (acc) |" in md  # Table 2's column order
    assert "## Against the paper" in md
    assert "| paper: zero-shot | 73.0 | 81.8 |" in md
    assert "| paper: fine-tune | 65.4 (15.1) | 75.5 (4.0) |" in md
    result = json.loads((out / "results.json").read_text())
    ours = {(r["model"], r["mode"]): r for r in result["table"]}
    for row in result["paper"]:
        for column, delta in row["delta"].items():
            mean = ours[(row["model"], row["mode"])][column][0]
            assert delta == pytest.approx(mean - row["paper"][column][0], abs=1e-12)
    assert [r["paper_row"] for r in result["paper"]] == ["zero-shot", "fine-tune"]
    # the published rows are K=16; ours are K=8: said above the table and in results.json
    assert "The paper's rows are K = 16 per label; ours are K = 8" in md
    assert [(r["k"], r["paper_k"]) for r in result["paper"]] == [(8, 16), (8, 16)]
    err = cli_error(capsys, [*argv, "--resume", "--compare-paper", "after=smash"])
    assert "no evaluated model is named 'after' (models: before; name them with --name)" in err
