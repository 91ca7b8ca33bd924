"""Few-shot learning curves: the test metric against distillation steps (the paper's Figure 2)
or against K (Figure 4), mean ± std over seeds as a line with a shaded band, one line per
series and mode, one panel per task.

A *steps* series is one distillation run's exports, ``RUN/exports/<name>_step<N>`` as
``train-student --export-every`` writes them; the final export, which has no step in its name,
counts at the step its ``smash_training.json`` records. Baselines (the student before
distillation, a larger model) are dashed horizontal lines without a band, as the paper draws
DistilRoBERTa-base and RoBERTa-base. A *K* series is one model evaluated on the K-shot splits
of several K, each K trained for the paper's steps (:data:`PAPER_MAX_STEPS`) unless told
otherwise.

Output: ``curve.json`` (every point's per-seed results, then the lines' numbers), ``curve.md``
(per task, one row per line and one column per step or K) and ``curve.png``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smash.train.fewshot.metrics import aggregate
from smash.train.fewshot.protocol import Protocol
from smash.train.fewshot.report import (
    Entry,
    column_label,
    entry_to_json,
    json_safe,
)
from smash.train.fewshot.units import Run

__all__ = [
    "AXES",
    "Point",
    "curve_lines",
    "export_step",
    "k_points",
    "require_matplotlib",
    "series_name",
    "step_points",
    "write_curve",
]

AXES = {"steps": "distillation steps", "k": "K (training examples per label)"}
_STEP = re.compile(r"(?:^|_)step(\d+)$")
_INFO = "smash_training.json"


@dataclass(frozen=True)
class Point:
    """A run placed on a curve: ``x`` is its distillation step or its K; None for a baseline."""

    series: str
    x: int | None
    run: Run


def require_matplotlib() -> None:
    """Refuse, before any training, a curve that could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            "--curve draws curve.png with matplotlib, which is not installed: "
            "pip install 'smash-distill[plots]'"
        ) from None


def export_step(folder: str | Path) -> int:
    """The distillation step of an export folder: ``<name>_step<N>``, else the ``step`` its
    smash_training.json records (the final export); the two must agree when both exist."""
    folder = Path(folder)
    match = _STEP.search(folder.name)
    recorded = _recorded_step(folder)
    if match and recorded is not None and int(match[1]) != recorded:
        raise ValueError(
            f"{folder}: the folder name says step {match[1]} but its {_INFO} says {recorded}"
        )
    if match:
        return int(match[1])
    if recorded is not None:
        return recorded
    raise ValueError(
        f"{folder}: no distillation step in the folder name (expected NAME_step<N>, as "
        f"train-student --export-every writes) nor in a {_INFO}; pass a model without one "
        "with --baseline"
    )


def _recorded_step(folder: Path) -> int | None:
    path = folder / _INFO
    if not path.is_file():
        return None
    try:
        step = json.loads(path.read_text(encoding="utf-8")).get("step")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a JSON object ({err})") from None
    return step if isinstance(step, int) else None


def _same_export(a: Path, b: Path) -> bool:
    """Whether two folders hold the same training record (run, step, config)."""
    a_info, b_info = a / _INFO, b / _INFO
    return a_info.is_file() and b_info.is_file() and a_info.read_bytes() == b_info.read_bytes()


def _folders(pattern: str) -> list[Path]:
    """The folders a ``--model`` value names: a glob (sorted matches) or one path."""
    if not glob.has_magic(pattern):
        if not Path(pattern).expanduser().is_dir():
            raise FileNotFoundError(f"--model {pattern}: no such folder")
        return [Path(pattern).expanduser()]
    found = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())))
    folders = [p for p in found if p.is_dir()]
    if not folders:
        raise FileNotFoundError(f"--model {pattern}: the pattern matches no folder")
    return folders


def step_points(series: str, patterns: Sequence[str], k: int, protocol: Protocol) -> list[Point]:
    """One point per export that ``patterns`` (globs or folders) name, sorted by step.

    Two folders at one step are refused, except the final export beside the periodic export
    of its step (``max_steps`` a multiple of ``export_every``): the same training record says
    they are one student, and the ``_step<N>`` folder is kept.
    """
    by_step: dict[int, Path] = {}
    for pattern in patterns:
        for folder in _folders(pattern):
            step = export_step(folder)
            seen = by_step.setdefault(step, folder)
            if seen == folder:
                continue
            if not _same_export(seen, folder):
                raise ValueError(f"series {series}: {seen} and {folder} are both step {step}")
            if _STEP.search(folder.name) and not _STEP.search(seen.name):
                by_step[step] = folder
    return [
        Point(series, step, Run(f"{series}@{step}", str(by_step[step]), k, protocol))
        for step in sorted(by_step)
    ]


def series_name(patterns: Sequence[str]) -> str:
    """Default name of a steps series: the run folder above ``exports/``, else the first
    folder's name without its ``_step<N>``."""
    first = _folders(patterns[0])[0]
    if first.parent.name == "exports" and first.parent.parent.name:
        return first.parent.parent.name
    return _STEP.sub("", first.name) or first.name


def k_points(
    name: str, path: str, ks: Sequence[int], steps: dict[int, int], protocol: Protocol
) -> list[Point]:
    """One point per K (ascending) for one model; K trains for ``steps[K]`` steps."""
    return [
        Point(name, k, Run(f"{name} K={k}", path, k, dataclasses.replace(protocol, max_steps=s)))
        for k, s in sorted((k, steps[k]) for k in ks)
    ]


def curve_lines(results: Sequence[tuple[Point, list[Entry]]]) -> tuple[list[dict], list[dict]]:
    """``(lines, baselines)`` of finished points: a line per (series, mode, results column)
    with its ``x``, ``mean`` and ``std`` lists sorted by x; a baseline per (model, mode,
    column) with its ``mean`` and ``std``."""
    lines: dict[tuple, dict] = {}
    baselines = []
    for point, entries in results:
        for e in entries:
            for col in e.columns:
                mean, std = aggregate(e.column_values(col))
                head = {"series": point.series, "mode": e.mode, "column": col, "metric": e.metric}
                if point.x is None:
                    baselines.append({**head, "mean": mean, "std": std})
                    continue
                line = lines.setdefault(
                    (point.series, e.mode, col), {**head, "x": [], "mean": [], "std": []}
                )
                for field, value in (("x", point.x), ("mean", mean), ("std", std)):
                    line[field].append(value)
    for line in lines.values():
        order = sorted(range(len(line["x"])), key=line["x"].__getitem__)
        for field in ("x", "mean", "std"):
            line[field] = [line[field][i] for i in order]
    return list(lines.values()), baselines


def write_curve(
    out_dir: str | Path,
    axis: str,
    results: Sequence[tuple[Point, list[Entry]]],
    config: dict,
) -> list[Path]:
    """Write curve.json, curve.md and curve.png for the points finished so far (``results``:
    each with its entries, in plot order); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines, baselines = curve_lines(results)
    payload = {
        "axis": axis,
        "config": config,
        "points": [
            {
                "series": p.series,
                "x": p.x,
                "path": p.run.path,
                "k": p.run.k,
                "max_steps": p.run.protocol.max_steps,
                "entries": [entry_to_json(e) for e in entries],
            }
            for p, entries in results
        ],
        "lines": json_safe(lines),
        "baselines": json_safe(baselines),
    }
    paths = [out / "curve.json", out / "curve.md", out / "curve.png"]
    _write_atomic(paths[0], json.dumps(payload, indent=2) + "\n")
    _write_atomic(paths[1], _markdown(axis, lines, baselines, config))
    _plot(paths[2], axis, lines, baselines)
    return paths


def _write_atomic(path: Path, text: str) -> None:
    """Write beside, then rename: a kill mid-write leaves the previous file whole (the files
    are rewritten after every point)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _cell(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.1f} ({std:.1f})"


def _columns(lines: list[dict], baselines: list[dict]) -> dict[str, str]:
    """Results columns in task order, each with its metric (``SST-2 (acc)``)."""
    out: dict[str, str] = {}
    for item in lines + baselines:
        out.setdefault(item["column"], column_label(item["column"], item["metric"]))
    return out


def _markdown(axis: str, lines: list[dict], baselines: list[dict], config: dict) -> str:
    seeds = ", ".join(str(s) for s in config["seeds"])
    steps = config["max_steps_per_k"]
    intro = f"Test metric × 100, mean (std) over seeds {seeds}, against {AXES[axis]}; "
    if axis == "steps":
        k = config["k"][0]
        intro += f"K = {k} per label, up to {steps[str(k)]} training steps per grid point."
    else:
        per_k = ", ".join(f"K={k}: {n}" for k, n in sorted(steps.items(), key=lambda i: int(i[0])))
        intro += f"training steps per grid point {per_k}."
    out = ["# Few-shot learning curve", "", intro]
    for column, title in _columns(lines, baselines).items():
        of_column = [line for line in lines if line["column"] == column]
        xs = sorted({x for line in of_column for x in line["x"]})
        head = [f"step {x}" if axis == "steps" else f"K={x}" for x in xs]
        out += ["", f"## {title}", "", "| series | mode | " + " | ".join(head) + " |"]
        out.append("|---|---|" + "---:|" * len(xs))
        for line in of_column:
            cells = dict(zip(line["x"], zip(line["mean"], line["std"])))
            row = [_cell(*cells[x]) if x in cells else "" for x in xs]
            out.append(f"| {line['series']} | {line['mode']} | " + " | ".join(row) + " |")
        base = [b for b in baselines if b["column"] == column]
        if base:
            out += ["", "| baseline | mode | test metric |", "|---|---|---:|"]
            out += [f"| {b['series']} | {b['mode']} | {_cell(b['mean'], b['std'])} |" for b in base]
    return "\n".join(out) + "\n"


def _plot(path: Path, axis: str, lines: list[dict], baselines: list[dict]) -> None:
    """One panel per results column, one legend for all beside them."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(lines, baselines)
    ncols = min(3, max(len(columns), 1))
    nrows = max(math.ceil(len(columns) / ncols), 1)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols + 2.0, 3.6 * nrows), squeeze=False, layout="constrained"
    )
    names = list(dict.fromkeys((item["series"], item["mode"]) for item in lines + baselines))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    several_modes = len({mode for _, mode in names}) > 1
    for ax, (column, title) in zip(axes.flat, columns.items()):
        of_column = [li for li in lines if li["column"] == column]
        base = [b for b in baselines if b["column"] == column]
        _panel(ax, axis, title, of_column, base, colors, several_modes)
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    handles: dict = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)


def _panel(ax, axis, title, lines, baselines, colors, several_modes) -> None:
    """One task: each line is its mean with a shaded ±std band (the paper's figures), each
    baseline a dashed line at its mean."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    def label(item: dict) -> str:
        return item["series"] + (f" · {item['mode']}" if several_modes else "")

    for line in lines:
        color = colors[(line["series"], line["mode"])]
        mean, std = line["mean"], line["std"]
        low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        ax.plot(line["x"], mean, marker="o", markersize=3, color=color, label=label(line))
        ax.fill_between(line["x"], low, high, color=color, alpha=0.2, linewidth=0)
    for b in baselines:
        color = colors[(b["series"], b["mode"])]
        ax.axhline(b["mean"], color=color, linestyle="--", linewidth=1, label=label(b))
    if axis == "k":
        xs = sorted({x for line in lines for x in line["x"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_title(title)
    ax.set_xlabel(AXES[axis])
    ax.set_ylabel("test metric × 100 (mean ± std)")
    ax.grid(alpha=0.3)
