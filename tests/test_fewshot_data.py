"""Few-shot data: every task's loader on fixture files, metrics, and bad-data messages."""

import math
import shutil
from pathlib import Path

import pytest
from smash.precompute.kshot.data import DataError, load_kshot, read_examples
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import TASKS, get_task
from smash.train.fewshot.metrics import (
    accuracy,
    compute_metric,
    f1_binary,
    pearson,
    spearman,
)

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
K = 4


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, list(TASKS.values()), seeds=[13], k=K)
    return root


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_loads(kshot, name):
    task = TASKS[name]
    data = load_kshot(kshot, task, K, 13)
    groups = 2 if task.is_regression else len(task.labels)
    assert len(data.train) == len(data.dev) == K * groups
    assert list(data.tests) == list(task.tests)
    for examples in [data.train, data.dev, *data.tests.values()]:
        for ex in examples:
            assert len(ex.texts) == len(task.text_columns)
            assert all(isinstance(t, str) and t for t in ex.texts)
            if task.is_regression:
                assert 0.0 <= ex.label <= 5.0
            else:
                assert ex.label in range(len(task.labels))
    if not task.is_regression:
        assert sorted({ex.label for ex in data.train}) == list(range(len(task.labels)))


def test_columns_are_the_right_ones(kshot):
    mnli = load_kshot(kshot, get_task("mnli"), K, 13)
    ex = mnli.tests["MNLI-mm"][0]
    line = (kshot / "MNLI" / f"{K}-13" / "test_mismatched.tsv").read_text().splitlines()[1]
    cols = line.split("\t")
    assert ex.texts == (cols[8], cols[9]) and ex.label == TASKS["MNLI"].labels.index(cols[-1])
    assert ex.line == 2
    mr = read_examples(get_task("MR"), ORIGINAL / "mr" / "train.csv")
    assert mr[0].texts == ('Honestly, "One river was great", it said.',) and mr[0].label == 1
    stsb = read_examples(get_task("STS-B"), ORIGINAL / "STS-B" / "train.tsv")
    assert stsb[0].label == pytest.approx(1.863)


def test_metrics():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 2/3
    assert f1_binary([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert f1_binary([0, 0], [0, 0]) == 0.0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([0.1, 0.9, 0.4, 0.3], [1.0, 4.0, 2.5, 0.5]) == pytest.approx(
        0.8981729390
    )  # np.corrcoef
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    # Spearman: Pearson of the ranks, ties sharing their mean rank (scipy.stats.spearmanr)
    assert spearman([0.1, 0.9, 0.4, 0.3], [1.0, 4.0, 2.5, 0.5]) == pytest.approx(0.8)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(
        pearson([1, 2.5, 2.5, 4], [1, 3, 2, 4])
    )
    assert spearman([0.5, 1.0, 7.0], [1, 2, 3]) == pytest.approx(1.0)  # any monotone map
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))
    assert compute_metric("f1", [1, 0], [1, 1]) == pytest.approx(2 / 3)


def _copy(kshot, task_dir, tmp_path):
    dst = tmp_path / "k"
    shutil.copytree(kshot / task_dir, dst / task_dir)
    return dst


def _edit_line(path, lineno, fn):
    lines = path.read_text().split("\n")
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines))


def test_missing_file(kshot, tmp_path):
    root = _copy(kshot, "RTE", tmp_path)
    (root / "RTE" / f"{K}-13" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"RTE/4-13/dev\.tsv: file not found"):
        load_kshot(root, get_task("RTE"), K, 13)
    with pytest.raises(DataError, match=r"RTE/16-42: no 16-shot split of RTE for seed 42 "
                       r"\(make-kshot --k 16 builds it"):  # fmt: skip
        load_kshot(root, get_task("RTE"), 16, 42)


def test_wrong_column_count_tsv(kshot, tmp_path):
    root = _copy(kshot, "QQP", tmp_path)
    path = root / "QQP" / f"{K}-13" / "train.tsv"
    _edit_line(path, 4, lambda s: s.replace("\t", " ", 1))
    with pytest.raises(DataError, match=r"train\.tsv:4: expected 6 tab-separated columns.*found 5"):
        load_kshot(root, get_task("QQP"), K, 13)


def test_wrong_column_count_csv(kshot, tmp_path):
    root = _copy(kshot, "sst-5", tmp_path)
    path = root / "sst-5" / f"{K}-13" / "dev.csv"
    _edit_line(path, 3, lambda s: s + ",extra")
    with pytest.raises(DataError, match=r"dev\.csv:3: expected 2 comma-separated columns"):
        load_kshot(root, get_task("SST-5"), K, 13)


def test_label_outside_set(kshot, tmp_path):
    root = _copy(kshot, "SNLI", tmp_path)
    path = root / "SNLI" / f"{K}-13" / "test.tsv"
    _edit_line(path, 5, lambda s: s.rsplit("\t", 1)[0] + "\t-")
    with pytest.raises(DataError, match=r"test\.tsv:5: label '-' is not one of SNLI's labels"):
        load_kshot(root, get_task("SNLI"), K, 13)
    root = _copy(kshot, "cr", tmp_path)
    _edit_line(root / "cr" / f"{K}-13" / "train.csv", 2, lambda s: "7" + s[1:])
    with pytest.raises(DataError, match=r"train\.csv:2: label '7' is not one of CR's labels"):
        load_kshot(root, get_task("CR"), K, 13)


def test_bad_stsb_score(kshot, tmp_path):
    root = _copy(kshot, "STS-B", tmp_path)
    _edit_line(root / "STS-B" / f"{K}-13" / "dev.tsv", 3, lambda s: s.rsplit("\t", 1)[0] + "\t7.5")
    with pytest.raises(
        DataError, match=r"dev\.tsv:3: STS-B score '7.5' is not a number in \[0, 5\]"
    ):
        load_kshot(root, get_task("STS-B"), K, 13)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'CoLA'"):
        get_task("CoLA")
