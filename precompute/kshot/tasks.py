"""The few-shot tasks: file layout, columns, label sets, metric, template and label words.

One registry entry per task, taken from LM-BFF (``src/processors.py``, ``run_experiment.sh``) and
the SMASH paper's Table 6. GLUE-style tasks are TSV files with a header; SST-5, MR and CR are
header-less CSV files ``label,sentence``. Column indices are 0-based and may be negative (from
the end), as in LM-BFF, because MNLI and SNLI files have a different number of annotator-label
columns in train and dev.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TASKS", "Task", "get_task", "per_task"]


@dataclass(frozen=True)
class Task:
    """Everything the loaders, the split maker and the learners need to know about a task.

    ``labels`` are the label strings as written in the files, in verbalizer order; an empty
    tuple means regression (STS-B), where ``bounds`` is the score range, ``verbalizer`` holds the
    low and high label words, and ``bin_at`` is the threshold used to balance sampling.
    ``tests`` maps a results column (e.g. ``MNLI-mm``) to the k-shot test file stem.
    """

    name: str
    dirname: str
    fmt: str  # "tsv" (with header) or "csv" (no header)
    text_columns: tuple[int, ...]
    label_column: int
    labels: tuple[str, ...]
    verbalizer: tuple[str, ...]
    template: str
    metric: str  # "acc", "f1" or "pearson": picks the best dev checkpoint and grid point
    extra_metrics: tuple[str, ...] = ()  # also reported on the test sets (STS-B: Spearman)
    first_sent_limit: int | None = None  # LM-BFF's cap on the first sentence's tokens
    other_sent_limit: int | None = None  # LM-BFF's cap on every other sentence (demonstrations)
    double_demo: bool = False  # LM-BFF doubles the max length when demonstrations are added
    max_length: int = 128
    dev: str = "dev"
    tests: dict[str, str] = field(default_factory=dict)
    original_splits: tuple[str, ...] = ("train", "dev")
    bounds: tuple[float, float] = (0.0, 0.0)
    bin_at: float = 0.0

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_outputs(self) -> int:
        """Classes for classification, 1 for regression (a head's output size)."""
        return len(self.labels) or 1

    @property
    def min_columns(self) -> int:
        """Fewest columns a row may have so every text and label index exists."""
        cols = self.text_columns + (self.label_column,)
        return max(c + 1 if c >= 0 else -c for c in cols)


_SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"
_NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
_PARAPHRASE = "*cls**sent_0**mask*,*+sentl_1**sep+*"
_CSV = {
    "fmt": "csv",
    "text_columns": (1,),
    "label_column": 0,
    "template": _SENTIMENT,
    "metric": "acc",
    "original_splits": ("train", "test"),
    "first_sent_limit": 110,  # LM-BFF's run_experiment.sh for mr, sst-5 and cr
    "double_demo": True,
}
_NLI3 = ("contradiction", "entailment", "neutral")


def _task(name: str, **kw) -> Task:
    kw.setdefault("dirname", name)
    kw.setdefault("tests", {name: "test"})
    return Task(name=name, **kw)


# fmt: off
# One row per task, as in LM-BFF's tables: kept one task per line or two.
TASKS: dict[str, Task] = {t.name: t for t in [
    _task("SST-2", fmt="tsv", text_columns=(0,), label_column=-1, labels=("0", "1"),
          verbalizer=("terrible", "great"), template=_SENTIMENT, metric="acc"),
    _task("SST-5", dirname="sst-5", labels=("0", "1", "2", "3", "4"),
          verbalizer=("terrible", "bad", "okay", "good", "great"), other_sent_limit=20, **_CSV),
    _task("MR", dirname="mr", labels=("0", "1"), verbalizer=("terrible", "great"),
          other_sent_limit=50, **_CSV),
    _task("CR", dirname="cr", labels=("0", "1"), verbalizer=("terrible", "great"),
          other_sent_limit=50, **_CSV),
    _task("MNLI", fmt="tsv", text_columns=(8, 9), label_column=-1, labels=_NLI3,
          verbalizer=("No", "Yes", "Maybe"), template=_NLI, metric="acc", max_length=256,
          dev="dev_matched", tests={"MNLI-m": "test_matched", "MNLI-mm": "test_mismatched"},
          original_splits=("train", "dev_matched", "dev_mismatched")),
    _task("SNLI", fmt="tsv", text_columns=(7, 8), label_column=-1, labels=_NLI3,
          verbalizer=("No", "Yes", "Maybe"), template=_NLI, metric="acc", max_length=256),
    _task("QNLI", fmt="tsv", text_columns=(1, 2), label_column=-1,
          labels=("entailment", "not_entailment"), verbalizer=("Yes", "No"), template=_NLI,
          metric="acc"),
    _task("RTE", fmt="tsv", text_columns=(1, 2), label_column=-1,
          labels=("entailment", "not_entailment"), verbalizer=("Yes", "No"), template=_NLI,
          metric="acc", max_length=256, first_sent_limit=240),
    _task("MRPC", fmt="tsv", text_columns=(3, 4), label_column=0, labels=("0", "1"),
          verbalizer=("No", "Yes"), template=_PARAPHRASE, metric="f1"),
    _task("QQP", fmt="tsv", text_columns=(3, 4), label_column=5, labels=("0", "1"),
          verbalizer=("No", "Yes"), template=_PARAPHRASE, metric="f1"),
    _task("STS-B", fmt="tsv", text_columns=(7, 8), label_column=-1, labels=(),
          verbalizer=("No", "Yes"), template=_PARAPHRASE, metric="pearson",
          extra_metrics=("spearman",), bounds=(0.0, 5.0),
          bin_at=2.5),
]}
# fmt: on


def get_task(name: str) -> Task:
    """Look a task up by name, case-insensitively (``sst-2``, ``STS-B``, ``mnli``)."""
    by_lower = {k.lower(): t for k, t in TASKS.items()}
    task = by_lower.get(name.lower())
    if task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return task


def per_task(items: list[str], flag: str) -> dict[str, str]:
    """``TASK=VALUE`` flag values (``--template SST-2=...``) as {task name: value}; a task
    given twice is refused (one of its values would be dropped)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"{flag} {item!r}: expected TASK=VALUE")
        task = get_task(name).name
        if task in out:
            raise ValueError(f"{flag}: task {task} is given more than once; give it once")
        out[task] = value
    return out
