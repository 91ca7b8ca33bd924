"""Write the evaluation's results: ``results.json`` (everything, per seed), ``results.md`` (a
table shaped like the paper's Table 2) and ``results.png`` (per-task bars with std whiskers,
when matplotlib is installed).

A cell is the mean (std) over seeds of the test metric x 100. With several models, each mode
gets a delta row per later model against the first (e.g. after SMASH minus before). Given
which published model each of ours stands for (``paper``), the columns take Table 2's order
and a second table puts each of our rows beside the paper's row and their difference; the
plot marks the paper's means.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from smash.train.fewshot.metrics import aggregate
from smash.train.fewshot.paper import PAPER_COLUMNS, PAPER_K, paper_row
from smash.train.fewshot.protocol import SeedResult
from smash.train.fewshot.soft_prompts import SOFT_PROMPT_MODES

__all__ = [
    "METRIC_NAMES",
    "Entry",
    "column_label",
    "delta_rows",
    "entry_to_json",
    "json_safe",
    "paper_rows",
    "table_rows",
    "write_report",
]

# How a column header names each metric, as the paper's tables do.
METRIC_NAMES = {"acc": "acc", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman"}


def column_label(column: str, metric: str) -> str:
    """A results column's header, ``SST-2 (acc)``; the column of a task's extra metric,
    ``STS-B:spearman``, reads ``STS-B (Spearman)``."""
    name, _, own = column.partition(":")
    return f"{name} ({METRIC_NAMES[own or metric]})"


@dataclass
class Entry:
    """All seeds of one (model, mode, task); one task can fill several columns (MNLI-m/mm)."""

    model: str
    path: str
    mode: str
    task: str
    metric: str
    seeds: list[SeedResult]

    def column_values(self, column: str) -> list[float]:
        return [100.0 * s.tests[column] for s in self.seeds]

    @property
    def columns(self) -> list[str]:
        return list(self.seeds[0].tests) if self.seeds else []


def table_rows(entries: list[Entry]) -> tuple[dict[str, str], list[tuple[str, str, dict]]]:
    """Columns ``{column: "column (metric)"}`` in task order and rows
    ``(model, mode, {column: (mean, std)})``."""
    columns: dict[str, str] = {}
    rows: dict[tuple[str, str], dict] = {}
    for e in entries:
        for col in e.columns:
            columns.setdefault(col, column_label(col, e.metric))
            rows.setdefault((e.model, e.mode), {})[col] = aggregate(e.column_values(col))
    return columns, [(m, mode, cells) for (m, mode), cells in rows.items()]


def delta_rows(rows: list[tuple[str, str, dict]]) -> list[tuple[str, str, dict]]:
    """For each mode, later models minus the first model, column by column (means only)."""
    out = []
    for mode in dict.fromkeys(r[1] for r in rows):
        of_mode = [r for r in rows if r[1] == mode]
        base_model, _, base = of_mode[0]
        for model, _, cells in of_mode[1:]:
            diff = {c: (cells[c][0] - base[c][0], math.nan) for c in cells if c in base}
            out.append((f"Δ {model} − {base_model}", mode, diff))
    return out


def write_report(
    out_dir: str | Path, entries: list[Entry], config: dict, paper: dict[str, str] | None = None
) -> list[Path]:
    """Write results.json, results.md and (with matplotlib) results.png; returns their paths.

    ``paper`` maps our model names to the paper's models (:data:`PAPER_MODELS`) for the
    comparison with the published rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns, rows = table_rows(entries)
    if paper:
        columns = dict(sorted(columns.items(), key=lambda c: _paper_order(c[0])))
    deltas = delta_rows(rows)
    compared = paper_rows(rows, paper or {})
    payload = {
        "config": config,
        "entries": [entry_to_json(e) for e in entries],
        "table": [
            {"model": m, "mode": mode, **{c: json_safe(v) for c, v in cells.items()}}
            for m, mode, cells in rows + deltas
        ],
        "paper": [
            {"model": m, "mode": mode, "k": config["k"], "paper_row": name, "paper_k": PAPER_K,
             "paper": json_safe(published), "delta": json_safe(diff)}
            for m, mode, name, published, diff in compared
        ],
    }  # fmt: skip
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    md = _markdown(columns, rows, deltas, config)
    md += _paper_markdown(columns, rows, compared, config["k"])
    paths[1].write_text(md, encoding="utf-8")
    png = _plot(out / "results.png", columns, rows, compared)
    return paths + ([png] if png else [])


def _paper_order(column: str) -> tuple[int, str]:
    name = column.partition(":")[0]
    index = PAPER_COLUMNS.index(name) if name in PAPER_COLUMNS else len(PAPER_COLUMNS)
    return index, column


def paper_rows(rows, paper: dict[str, str]) -> list[tuple[str, str, str, dict, dict]]:
    """``(model, mode, paper row name, published cells, ours − published)`` for each of our
    rows that has a published counterpart (deltas of means, in the columns both have)."""
    out = []
    for model, mode, cells in rows:
        found = paper_row(paper[model], mode) if model in paper else None
        if found is None:
            continue
        name, published = found
        diff = {c: cells[c][0] - published[c][0] for c in cells if c in published}
        out.append((model, mode, name, published, diff))
    return out


def entry_to_json(entry: Entry) -> dict:
    """``entry`` as JSON: its fields, every seed's result and a mean/std summary per column."""
    return {
        **{k: v for k, v in asdict(entry).items() if k != "seeds"},
        "seeds": [json_safe(asdict(s)) for s in entry.seeds],
        "summary": {
            c: dict(zip(("mean", "std"), json_safe(aggregate(entry.column_values(c)))))
            for c in entry.columns
        },
    }


def json_safe(value):
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def _join(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _cell(mean: float, std: float, delta: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    if delta:
        return f"{mean:+.1f}"
    return f"{mean:.1f} ({std:.1f})"


def _soft_prompt_rates(config: dict) -> str:
    """The rates the soft-prompt modes search instead (``Protocol.for_mode``), when they ran."""
    modes = [m for m in config.get("mode", ()) if m in SOFT_PROMPT_MODES]
    if not modes:
        return ""
    rates = _join(config["soft_prompt_learning_rates"])
    return f" ({' and '.join(modes)}: lr {{{rates}}}, PPT's prompt-tuning rates)"


def _markdown(columns, rows, deltas, config) -> str:
    lines = [
        "# Few-shot results",
        "",
        (
            f"K = {config['k']} per label, seeds {config['seeds']}; prompt and fine-tune modes "
            f"pick the best dev checkpoint over lr {{{_join(config['learning_rates'])}}} × batch "
            f"{{{_join(config['batch_sizes'])}}}, up to {config['max_steps']} steps, dev every "
            f"{config['eval_every']}{_soft_prompt_rates(config)}. Cells: test metric × 100, "
            "mean (std) over seeds."
        ),
        "",
        "| model | mode | " + " | ".join(columns.values()) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for (model, mode, cells), is_delta in [(r, False) for r in rows] + [(r, True) for r in deltas]:
        vals = [_cell(*cells[c], is_delta) if c in cells else "" for c in columns]
        lines.append(f"| {model} | {mode} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _paper_markdown(columns, rows, compared, k: int) -> str:
    """The "Against the paper" table; at another K than the paper's, a line above it says so
    (the rows stay: a smaller K is how a comparison is tried on a small machine)."""
    if not compared:
        return ""
    other_k = (
        f" The paper's rows are K = {PAPER_K} per label; ours are K = {k}, so ours − paper "
        "also measures the change of K."
        if k != PAPER_K
        else ""
    )
    shared = [c for c in columns if any(c in published for *_, published, _ in compared)]
    lines = [
        "",
        "## Against the paper",
        "",
        (
            "Each of our rows, the paper's published row for the same model and method "
            "(Table 2; Tables 3 and 5 for iPET; Table 4 for T5), and ours − paper. † rows are "
            "LM-BFF's, as the paper "
            f"marks them.{other_k}"
        ),
        "",
        "| row | " + " | ".join(columns[c] for c in shared) + " |",
        "|---|" + "---:|" * len(shared),
    ]
    ours = {(m, mode): cells for m, mode, cells in rows}
    for model, mode, name, published, diff in compared:
        cells = ours[(model, mode)]
        lines += [
            f"| {model} · {mode} | " + " | ".join(_cell(*cells[c], False) for c in shared) + " |",
            f"| paper: {name} | " + " | ".join(_published(published.get(c)) for c in shared)
            + " |",
            "| Δ ours − paper | " + " | ".join(
                _cell(diff[c], math.nan, True) if c in diff else "" for c in shared) + " |",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _published(cell: tuple[float, float] | None) -> str:
    if cell is None:
        return ""
    mean, std = cell
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ({std:.1f})"


def _plot(path: Path, columns: dict[str, str], rows, compared=()) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(rows), 1)
    published = {(m, mode): cells for m, mode, _, cells, _ in compared}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns)), 4.0))
    marked = False
    for i, (model, mode, cells) in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(columns))]
        means = [cells.get(c, (math.nan, 0.0))[0] for c in columns]
        stds = [cells.get(c, (0.0, 0.0))[1] for c in columns]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{model} · {mode}")
        theirs = published.get((model, mode), {})
        if theirs:
            ys = [theirs.get(c, (math.nan, 0.0))[0] for c in columns]
            label = None if marked else "the paper's mean"
            ax.scatter(xs, ys, marker="D", s=18, color="black", zorder=3, label=label)
            marked = True
    ax.set_xticks(range(len(columns)), list(columns.values()), rotation=30, ha="right")
    ax.set_ylabel("test metric × 100 (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
