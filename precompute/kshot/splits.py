"""``make-kshot``: build LM-BFF's k-shot splits from the original task files.

The rule is LM-BFF's (``tools/generate_k_shot_data.py``), so splits rebuilt here match the
published ones line for line:

* for each seed and task, seed NumPy's legacy generator with the seed and shuffle the original
  training rows (the header of a TSV stays on top);
* group the shuffled rows by label, groups in order of first appearance; ``train`` takes the
  first K rows of each group, ``dev`` the next K (STS-B is grouped by score < 2.5 or not);
* the original development set(s) become the test set(s) for GLUE tasks (``dev`` ->
  ``test``, ``dev_mismatched`` -> ``test_mismatched``) and MNLI's dev split is named
  ``dev_matched``; SST-5, MR and CR keep their original test set.

Input: ``ORIGINAL/TASK/{train,dev}.tsv`` (MNLI: ``dev_matched``, ``dev_mismatched``) or
``ORIGINAL/{sst-5,mr,cr}/{train,test}.csv``. Output: ``OUT/TASK/K-SEED/...``.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from smash.precompute.kshot.data import DataError, parse_label, read_rows, require_file
from smash.precompute.kshot.tasks import TASKS, Task, get_task
from smash.precompute.shared.text_files import utf8_lines
from smash.store.flags import SEED, Distinct, DistinctNames, FlagParser, integer, parse_flags

__all__ = ["SEEDS", "build_parser", "main", "make_kshot", "select_kshot"]

SEEDS = (13, 21, 42, 87, 100)


def select_kshot(rows: Sequence, groups: Sequence, seed: int, k: int) -> tuple[list, list]:
    """LM-BFF's sampling rule on ``rows`` with group keys ``groups`` (one per row).

    Returns ``(train, dev)``: after shuffling with ``np.random.RandomState(seed)`` (the same
    stream as LM-BFF's ``np.random.seed(seed); np.random.shuffle``), the first ``k`` rows of
    each group and the next ``k``, groups in order of first appearance.
    """
    order = list(range(len(rows)))
    np.random.RandomState(seed).shuffle(order)
    by_group: dict = {}
    for i in order:
        by_group.setdefault(groups[i], []).append(rows[i])
    train = [r for members in by_group.values() for r in members[:k]]
    dev = [r for members in by_group.values() for r in members[k : 2 * k]]
    return train, dev


def make_kshot(
    original: str | Path,
    out: str | Path,
    tasks: Sequence[Task],
    seeds: Sequence[int] = SEEDS,
    k: int | Sequence[int] = 16,
) -> list[Path]:
    """Write the k-shot splits of ``tasks`` for ``seeds`` and each K in ``k`` (one or several,
    e.g. 16 32 64 128 256 for a learning curve over K); returns the folders written."""
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or min(ks) < 1:
        raise ValueError(f"K must be a positive number of examples per label, got {ks}")
    written = []
    for task in tasks:
        src = Path(original) / task.dirname
        splits = {
            name: _read_original(task, src / f"{name}.{task.fmt}") for name in task.original_splits
        }
        header, rows, groups = splits["train"]
        for size in ks:
            for seed in seeds:
                train, dev = select_kshot(rows, groups, seed, size)
                folder = Path(out) / task.dirname / f"{size}-{seed}"
                folder.mkdir(parents=True, exist_ok=True)
                _write(task, folder / f"train.{task.fmt}", header, train)
                _write(task, folder / f"{task.dev}.{task.fmt}", header, dev)
                for name, (test_header, test_rows, _) in splits.items():
                    if name != "train":
                        stem = name.replace("dev", "test")
                        _write(task, folder / f"{stem}.{task.fmt}", test_header, test_rows)
                written.append(folder)
    return written


def _read_original(task: Task, path: Path) -> tuple[str, list, list]:
    """Header line, rows and sampling groups of one original file, each row validated.

    TSV rows are kept as their original text lines so they are written back byte for byte;
    CSV rows are kept as parsed columns and re-quoted on writing, as LM-BFF does via pandas
    (which also skips blank lines and writes missing-value strings such as ``NA`` as empty).
    """
    header = ""
    rows, groups = [], []
    lines = None
    require_file(task, path, hint="download the original task files into it")
    if task.fmt == "tsv":
        lines = [text for _, text in utf8_lines(path, DataError)]
        header = lines[0] if lines else ""
    for line, row in read_rows(task, path):
        label = parse_label(task, row, path, line)
        groups.append(int(label >= task.bin_at) if task.is_regression else label)
        rows.append(_as_pandas_writes(row) if lines is None else _terminated(lines[line - 1]))
    return header, rows, groups


# pandas.read_csv's default missing-value strings: LM-BFF reads CSVs with pandas and writes the
# splits back with DataFrame.to_csv, so a sentence that is one of these comes out empty.
PANDAS_NA = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})  # fmt: skip


def _as_pandas_writes(row: list[str]) -> list[str]:
    return ["" if field in PANDAS_NA else field for field in row]


def _terminated(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"


def _write(task: Task, path: Path, header: str, rows: list) -> None:
    if task.fmt == "tsv":
        path.write_text(_terminated(header) + "".join(rows), encoding="utf-8")
        return
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def build_parser() -> FlagParser:
    p = FlagParser(prog="make-kshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--original", required=True, help="folder of the original task folders")
    p.add_argument("--out", required=True, help="k-shot root to write TASK/K-SEED into")
    p.add_argument(
        "--tasks", nargs="+", action=DistinctNames, default=list(TASKS), help="task names"
    )
    p.add_argument("--seeds", nargs="+", type=SEED, action=Distinct, default=list(SEEDS))
    p.add_argument(
        "--k",
        nargs="+",
        type=integer(1),
        action=Distinct,
        default=[16],
        help="examples per label in train and dev; several values make one split set per K",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``make-kshot --original data/original --out data/k-shot [--tasks ...]``.

    Returns the exit status: 2, with one line on stderr, for an unknown task, a missing or
    malformed original file (``FILE:LINE: what is wrong``) or an unwritable output folder.
    """
    args = parse_flags(build_parser(), argv)
    if args is None:
        return 2
    try:
        tasks = [get_task(name) for name in args.tasks]
        written = make_kshot(args.original, args.out, tasks, args.seeds, args.k)
    except (DataError, ValueError, OSError) as err:  # DataError: FILE:LINE: what is wrong
        print(f"make-kshot: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for folder in written:
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
