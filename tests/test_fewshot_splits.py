"""The k-shot split maker reproduces LM-BFF's sampling rule (tools/generate_k_shot_data.py)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from smash.precompute.kshot.splits import main, make_kshot, select_kshot
from smash.precompute.kshot.tasks import get_task

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


def test_rule_pinned():
    # Rows 0..9 alternate between labels 0 and 1. Pinned from NumPy's legacy MT19937 stream: a
    # change here means splits no longer match the published LM-BFF ones.
    rows, groups = list(range(10)), [i % 2 for i in range(10)]
    assert select_kshot(rows, groups, 13, 2) == ([3, 5, 6, 4], [1, 7, 8, 0])
    assert select_kshot(rows, groups, 42, 2) == ([8, 0, 1, 5], [2, 4, 7, 9])


def _lmbff_reference(lines, label_of, seed, k):
    """LM-BFF's steps with its global-state calls: seed, shuffle the list, group, slice."""
    lines = list(lines)
    np.random.seed(seed)
    np.random.shuffle(lines)
    groups = {}
    for line in lines:
        groups.setdefault(label_of(line), []).append(line)
    return (
        [x for g in groups.values() for x in g[:k]],
        [x for g in groups.values() for x in g[k : 2 * k]],
    )


def test_sst2_lines_land_where_lmbff_puts_them(tmp_path):
    make_kshot(ORIGINAL, tmp_path, [get_task("SST-2")], seeds=[13, 87], k=4)
    with open(ORIGINAL / "SST-2" / "train.tsv") as f:
        header, *lines = f.readlines()
    for seed in (13, 87):
        train, dev = _lmbff_reference(lines, lambda s: s.strip().split("\t")[-1], seed, 4)
        folder = tmp_path / "SST-2" / f"4-{seed}"
        assert (folder / "train.tsv").read_text() == header + "".join(train)
        assert (folder / "dev.tsv").read_text() == header + "".join(dev)
        # The original dev set becomes the test set, verbatim.
        assert (folder / "test.tsv").read_text() == (ORIGINAL / "SST-2" / "dev.tsv").read_text()


def test_csv_task_and_stsb_binning(tmp_path):
    make_kshot(ORIGINAL, tmp_path, [get_task("MR"), get_task("STS-B")], seeds=[21], k=3)
    with open(ORIGINAL / "mr" / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    train, dev = _lmbff_reference(rows, lambda r: r[0], 21, 3)
    with open(tmp_path / "mr" / "3-21" / "train.csv", newline="") as f:
        assert list(csv.reader(f)) == train
    with open(tmp_path / "mr" / "3-21" / "dev.csv", newline="") as f:
        assert list(csv.reader(f)) == dev
    assert (tmp_path / "mr" / "3-21" / "test.csv").read_text() == (
        ORIGINAL / "mr" / "test.csv"
    ).read_text()

    with open(ORIGINAL / "STS-B" / "train.tsv") as f:
        header, *lines = f.readlines()
    train, dev = _lmbff_reference(
        lines, lambda s: 0 if float(s.split("\t")[-1]) < 2.5 else 1, 21, 3
    )
    assert (tmp_path / "STS-B" / "3-21" / "train.tsv").read_text() == header + "".join(train)
    assert (tmp_path / "STS-B" / "3-21" / "dev.tsv").read_text() == header + "".join(dev)


def test_mnli_file_names_and_cli(tmp_path, capsys):
    assert (
        main(
            [
                "--original",
                str(ORIGINAL),
                "--out",
                str(tmp_path),
                "--tasks",
                "MNLI",
                "--seeds",
                "100",
                "--k",
                "2",
            ]
        )
        == 0
    )
    folder = tmp_path / "MNLI" / "2-100"
    assert sorted(p.name for p in folder.iterdir()) == [
        "dev_matched.tsv",
        "test_matched.tsv",
        "test_mismatched.tsv",
        "train.tsv",
    ]
    assert (folder / "test_mismatched.tsv").read_text() == (
        ORIGINAL / "MNLI" / "dev_mismatched.tsv"
    ).read_text()
    assert str(folder) in capsys.readouterr().out


def test_cli_several_k(tmp_path, capsys):
    """One split set per K (a learning curve over K), each the same as a single-K run's."""
    argv = ["--original", str(ORIGINAL), "--out", str(tmp_path / "all"), "--tasks", "SST-2",
            "--seeds", "13", "21", "--k", "2", "8"]  # fmt: skip
    assert main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    make_kshot(ORIGINAL, tmp_path / "one", [get_task("SST-2")], seeds=[21], k=8)
    for size, seed in ((2, 13), (2, 21), (8, 13), (8, 21)):
        rows = (tmp_path / "all" / "SST-2" / f"{size}-{seed}" / "train.tsv").read_text()
        assert len(rows.splitlines()) == 1 + 2 * size
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        split = Path("SST-2") / "8-21" / name
        assert (tmp_path / "all" / split).read_text() == (tmp_path / "one" / split).read_text()


def test_cli_k_must_be_positive(tmp_path, capsys):
    err = _cli_error(capsys, ["--original", str(ORIGINAL), "--out", str(tmp_path), "--tasks",
                              "SST-2", "--k", "4", "0"])  # fmt: skip
    assert "argument --k: expected a whole number >= 1, got '0'" in err


def _cli_error(capsys, argv):
    """Run make-kshot expecting bad input: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("make-kshot: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    return err


def test_cli_unknown_task(tmp_path, capsys):
    err = _cli_error(
        capsys, ["--original", str(ORIGINAL), "--out", str(tmp_path), "--tasks", "SST-3"]
    )
    assert "unknown task 'SST-3'" in err


@pytest.mark.parametrize("task, missing", [("SST-2", "SST-2/train.tsv"), ("MR", "mr/train.csv")])
def test_cli_missing_original_file(tmp_path, capsys, task, missing):
    err = _cli_error(
        capsys, ["--original", str(tmp_path / "none"), "--out", str(tmp_path), "--tasks", task]
    )
    assert f"{tmp_path / 'none' / missing}: file not found" in err


def test_cli_bad_row_names_file_and_line(tmp_path, capsys):
    (tmp_path / "orig" / "SST-2").mkdir(parents=True)
    lines = (ORIGINAL / "SST-2" / "train.tsv").read_text().splitlines(keepends=True)
    lines[5] = "only one column\n"
    (tmp_path / "orig" / "SST-2" / "train.tsv").write_text("".join(lines))
    err = _cli_error(
        capsys, ["--original", str(tmp_path / "orig"), "--out", str(tmp_path), "--tasks", "SST-2"]
    )
    assert f"{tmp_path / 'orig' / 'SST-2' / 'train.tsv'}:6: expected 2 tab-separated" in err


def test_snli_rows_longer_than_the_header_are_read_as_lmbff_reads_them(tmp_path):
    """The public SNLI train.tsv has rows with more fields than its header; LM-BFF reads the
    fixed text columns 7 and 8 and the last field, so its splits and ours keep such rows."""
    from smash.precompute.kshot.data import load_kshot

    (tmp_path / "orig" / "SNLI").mkdir(parents=True)
    header, *lines = (ORIGINAL / "SNLI" / "train.tsv").read_text().splitlines(keepends=True)
    # every entailment row gets extra annotator labels before its gold label: 15 fields, not 11
    extra = "\tneutral\tentailment\tentailment\tneutral\tentailment\n"
    lines = [line.replace("\tentailment\n", extra) for line in lines]
    assert any(len(line.split("\t")) == 15 for line in lines)
    (tmp_path / "orig" / "SNLI" / "train.tsv").write_text(header + "".join(lines))
    (tmp_path / "orig" / "SNLI" / "dev.tsv").write_text((ORIGINAL / "SNLI" / "dev.tsv").read_text())
    make_kshot(tmp_path / "orig", tmp_path / "out", [get_task("SNLI")], seeds=[13], k=2)
    train, dev = _lmbff_reference(lines, lambda s: s.strip().split("\t")[-1], 13, 2)
    assert any(len(line.split("\t")) == 15 for line in train)  # a long row was drawn
    folder = tmp_path / "out" / "SNLI" / "2-13"
    assert (folder / "train.tsv").read_text() == header + "".join(train)
    assert (folder / "dev.tsv").read_text() == header + "".join(dev)
    split = load_kshot(tmp_path / "out", get_task("SNLI"), 2, 13)
    for example, line in zip(split.train, train, strict=True):
        fields = line.rstrip("\n").split("\t")
        assert example.texts == (fields[7], fields[8])
        assert get_task("SNLI").labels[example.label] == fields[-1]


def test_csv_blank_lines_and_missing_values_come_out_as_lmbff_writes_them(tmp_path):
    """LM-BFF reads CSVs with pandas (blank lines skipped, "NA", "null", "nan"... missing) and
    writes the splits with DataFrame.to_csv (missing: an empty field): the same bytes here."""
    pd = pytest.importorskip("pandas")
    src = tmp_path / "orig" / "mr"
    src.mkdir(parents=True)
    rows = (ORIGINAL / "mr" / "train.csv").read_text().splitlines(keepends=True)
    for i, odd in zip((1, 4, 7, 10, 13), ("0,NA\n", "1,null\n", "\n", "0,nan\n", "1,None\n")):
        rows.insert(i, odd)
    (src / "train.csv").write_text("".join(rows))
    (src / "test.csv").write_text("1,N/A\n\n0,fine\n")
    make_kshot(tmp_path / "orig", tmp_path / "out", [get_task("MR")], seeds=[42], k=4)

    lines = pd.read_csv(src / "train.csv", header=None).values.tolist()
    train, dev = _lmbff_reference(lines, lambda r: r[0], 42, 4)
    folder = tmp_path / "out" / "mr" / "4-42"
    for name, expected in (("train", train), ("dev", dev)):
        reference = tmp_path / f"reference-{name}.csv"
        pd.DataFrame(expected).to_csv(reference, header=False, index=False)
        assert (folder / f"{name}.csv").read_text() == reference.read_text()
    reference = tmp_path / "reference-test.csv"
    pd.read_csv(src / "test.csv", header=None).to_csv(reference, header=False, index=False)
    assert (folder / "test.csv").read_text() == reference.read_text()
    assert any(line.endswith(",\n") for line in (folder / "train.csv").read_text().splitlines(True)
               + (folder / "dev.csv").read_text().splitlines(True))  # fmt: skip
