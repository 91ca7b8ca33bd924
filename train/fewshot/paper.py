"""The SMASH paper's published few-shot numbers (Table 2, Tables 3 and 5 for iPET, Table 4 for T5),
for reports that put our rows beside them (``evaluate-fewshot --compare-paper``).

A published row belongs to one of the paper's models and one of our modes: ``--compare-paper
before=distilroberta-base after=smash`` says which of our models stands for which, and each
(model, mode) then finds its row, e.g. (distilroberta-base, distill) is Table 2's "distill" and
(smash, zero-shot) its "SMASH zero-shot". The cells are copied from the paper as printed:
``mean (std)`` × 100, zero-shot rows without std (one run, no seeds); † rows are LM-BFF's.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PAPER_COLUMNS", "PAPER_K", "PAPER_MODELS", "paper_row", "parse_compare"]

# Examples per label of every published row (LM-BFF's K = 16 splits, seeds 13, 21, 42, 87, 100)
PAPER_K = 16

# Table 2's columns in its order (its two halves side by side); Table 4 uses three of them.
PAPER_COLUMNS = ("MNLI-m", "MRPC", "QQP", "SNLI", "QNLI", "RTE",
                 "MNLI-mm", "STS-B", "SST-2", "SST-5", "MR", "CR")  # fmt: skip

# (paper model, our mode) -> (row name, its cells in PAPER_COLUMNS order as the paper's two
# halves print them; "-": none).
_TABLE2 = {
    ("distilroberta-base", "prompt"): ("prompt-based fine-tune",
        "46.8 (1.5) 70.0 (6.5) 53.0 (1.5) 50.1 (5.0) 54.1 (2.2) 54.5 (3.9)",
        "48.2 (3.3) 42.3 (15.4) 85.7 (1.4) 42.7 (1.5) 80.4 (1.4) 85.8 (1.8)"),
    ("distilroberta-base", "zero-shot"): ("zero-shot",
        "44.8 73.0 50.1 37.5 50.6 51.3", "45.7 -5.7 81.8 28.4 78.0 84.0"),
    ("distilroberta-base", "finetune"): ("fine-tune",
        "38.5 (1.5) 65.4 (15.1) 53.1 (5.5) 39.8 (2.0) 54.6 (2.5) 50.5 (1.4)",
        "39.3 (1.5) 56.7 (10.1) 75.5 (4.0) 35.5 (0.9) 67.9 (3.8) 74.5 (4.2)"),
    ("distilroberta-base", "distill"): ("distill",
        "46.6 (1.5) 67.1 (9.9) 53.3 (1.9) 49.9 (3.7) 53.7 (2.1) 54.9 (2.5)",
        "48.7 (1.8) 42.2 (15.6) 86.3 (1.0) 41.2 (1.1) 80.4 (1.6) 86.7 (1.6)"),
    ("distilroberta-base", "distill-bt10"): ("distill bt10",
        "44.2 (3.4) 72.3 (2.8) 53.0 (2.5) 48.4 (2.9) 52.8 (2.8) 54.9 (1.8)",
        "46.6 (3.2) 33.6 (13.3) 82.9 (2.2) 40.2 (1.5) 78.9 (1.6) 84.1 (1.9)"),
    ("distilroberta-base", "lmbff"): ("LM-BFF",
        "50.3 (2.0) 64.3 (4.4) 52.5 (5.5) 51.0 (6.7) 54.8 (2.4) 52.8 (3.1)",
        "52.9 (1.9) 42.0 (15.3) 86.1 (0.7) 38.4 (2.6) 79.8 (2.4) 84.7 (2.7)"),
    ("distilroberta-base", "ppt"): ("Vanilla PPT",
        "39.6 (0.7) 75.3 (2.9) 59.8 (2.6) 44.4 (2.7) 62.1 (3.6) 51.5 (2.0)",
        "39.8 (1.4) 55.7 (3.0) 83.6 (0.9) 36.8 (1.8) 80.2 (0.6) 86.5 (0.6)"),
    # Tables 3 and 5 (iPET: RoBERTa-large PET models, DistilRoBERTa-base final classifier;
    # Table 3's MNLI is MNLI-m, Table 5's MNLI-mm; no STS-B: iPET does not do regression)
    ("distilroberta-base", "ipet"): ("iPET (Tables 3, 5)",
        "66.5 (3.0) 71.0 (10.7) 59.9 (4.5) 69.8 (3.8) 77.2 (2.8) 52.6 (2.9)",
        "68.5 (3.0) - 90.9 (0.3) 46.6 (0.8) 86.3 (0.6) 87.9 (0.7)"),
    ("distilroberta-base", "ipet-pt"): ("iPET + PT (Tables 3, 5)",
        "67.2 (2.7) 69.3 (10.8) 63.7 (4.4) 70.7 (3.7) 77.9 (3.3) 46.4 (3.1)",
        "69.0 (2.9) - 90.6 (0.3) 47.8 (1.1) 86.7 (0.4) 88.5 (0.7)"),
    ("smash", "ipet-pt"): ("iPET + SMASH init (Tables 3, 5)",
        "69.5 (2.9) 69.9 (10.8) 63.5 (4.3) 72.1 (3.9) 79.0 (2.6) 46.9 (2.2)",
        "70.6 (2.9) - 91.2 (0.2) 48.1 (1.0) 87.3 (0.3) 89.2 (0.6)"),
    ("smash", "prompt"): ("SMASH",
        "56.8 (1.1) 74.7 (5.5) 64.4 (2.4) 59.7 (4.7) 66.9 (3.8) 59.4 (3.2)",
        "58.8 (0.9) 64.3 (7.4) 88.3 (0.4) 42.4 (2.6) 81.9 (2.2) 88.0 (0.8)"),
    ("smash", "zero-shot"): ("SMASH zero-shot",
        "46.7 76.0 52.8 47.3 50.9 53.8", "47.9 19.5 75.7 31.1 74.0 77.6"),
    ("roberta-base", "prompt"): ("RoBERTa-base PT",
        "58.4 (1.7) 72.1 (10.9) 63.9 (4.0) 61.6 (4.2) 61.3 (5.0) 59.6 (6.6)",
        "60.6 (1.4) 69.1 (3.0) 89.0 (1.2) 44.5 (1.6) 84.3 (1.3) 89.2 (1.4)"),
    ("roberta-base", "zero-shot"): ("RoBERTa-base zero-shot",
        "48.1 53.0 51.6 48.6 50.8 53.1", "49.2 14.5 77.8 32.8 72.3 79.7"),
    ("roberta-large", "prompt"): ("RoBERTa-large PT†",
        "68.3 (2.3) 74.5 (5.3) 65.5 (5.3) 77.2 (3.7) 64.5 (4.2) 69.1 (3.6)",
        "70.5 (1.9) 71.0 (7.0) 92.7 (0.9) 47.4 (2.5) 87.0 (1.2) 90.3 (1.0)"),
    # Table 4 (T5, prompt-based fine-tuning) prints MNLI, QQP, MRPC; here in Table 2's order
    # (MNLI-m, MRPC, QQP)
    ("t5-small", "prompt"): ("T5-small (Table 4)",
        "42.5 (2.0) 65.2 (5.8) 54.0 (3.5) - - -", "- - - - - -"),
    ("smash-t5", "prompt"): ("SMASH T5-small (Table 4)",
        "48.3 (2.0) 69.4 (6.3) 60.0 (3.4) - - -", "- - - - - -"),
    ("t5-base", "prompt"): ("T5-base (Table 4)",
        "52.9 (2.1) 71.3 (4.3) 63.8 (0.6) - - -", "- - - - - -"),
}  # fmt: skip

PAPER_MODELS = tuple(dict.fromkeys(model for model, _ in _TABLE2))


def _cells(text: str) -> dict[str, tuple[float, float]]:
    """``"46.8 (1.5) 44.8 -"`` -> {column: (mean, std)}; std NaN where none is printed."""
    tokens = text.split()
    cells, i = {}, 0
    for column in PAPER_COLUMNS:
        mean = tokens[i]
        has_std = i + 1 < len(tokens) and tokens[i + 1].startswith("(")
        std = float(tokens[i + 1].strip("()")) if has_std else float("nan")
        i += 2 if has_std else 1
        if mean != "-":
            cells[column] = (float(mean), std)
    if i != len(tokens):
        raise AssertionError(f"paper row {text!r} has more cells than columns")
    return cells


def paper_row(model: str, mode: str) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """The published row of ``model`` (one of :data:`PAPER_MODELS`) in ``mode``: its name and
    cells; None when the paper has no such row."""
    found = _TABLE2.get((model, mode))
    return None if found is None else (found[0], _cells(" ".join(found[1:])))


def parse_compare(items: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--compare-paper NAME=MODEL ...`` as {our model name: paper model}; a bare ``MODEL``
    item (or none at all) matches our model of that very name. One of ours named twice is
    refused (the last would win without a word); two of ours may stand for one paper model."""
    out = {}
    for item in items or [n for n in names if n in PAPER_MODELS]:
        name, _, model = item.rpartition("=") if "=" in item else (item, "=", item)
        if model not in PAPER_MODELS:
            raise ValueError(
                f"--compare-paper {item!r}: the paper has no model {model!r}; "
                f"one of {', '.join(PAPER_MODELS)}"
            )
        if name not in names:
            raise ValueError(
                f"--compare-paper {item!r}: no evaluated model is named {name!r} "
                f"(models: {', '.join(names)}; name them with --name)"
            )
        if name in out:
            raise ValueError(
                f"--compare-paper {item!r}: {name!r} is already compared with the paper's "
                f"{out[name]!r}; name each of our models once"
            )
        out[name] = model
    if not out:
        raise ValueError(
            "--compare-paper: say which paper model each of ours stands for, e.g. "
            f"--compare-paper {names[0]}=distilroberta-base ({', '.join(PAPER_MODELS)})"
        )
    return out
