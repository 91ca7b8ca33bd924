"""evaluate-fewshot's flags are checked while parsing, before anything runs: every numeric flag
against its range, every list flag against repeats."""

import pytest
from smash.train.fewshot.cli import main

INTEGER = "a whole number >= 1"
SEED = "a whole number in [0, 4294967295]"
POSITIVE = "a finite number > 0"


def _refused(capsys, tmp_path, flags) -> str:
    """Run evaluate-fewshot on folders that do not exist: only the flags can be refused (exit
    2, one error line), and nothing is written. Returns that line."""
    out = tmp_path / "out"
    assert main(["--model", "m", "--data", "d", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    return err.rstrip("\n")


# every numeric flag: its bad values and what the error says is allowed
RANGES = [
    ("--k", ["0", "-1", "x"], INTEGER),
    ("--seeds", ["-1", "4294967296", "1.5"], SEED),
    ("--lrs", ["0", "-1", "nan", "inf", "x"], POSITIVE),
    ("--batch-sizes", ["0", "-2"], INTEGER),
    ("--max-steps", ["0", "-1"], INTEGER),
    ("--eval-every", ["0", "-2"], INTEGER),
    ("--eval-batch-size", ["0", "-4"], INTEGER),
    ("--eval-token-budget", ["0", "-1", "1e9", "inf"], INTEGER),
    ("--batch-units", ["0", "-1"], INTEGER),
    ("--gpus-per-unit", ["-0.5", "1.5", "nan"], "a finite number >= 0 and <= 1"),
    ("--cpus-per-unit", ["0", "-1", "inf"], POSITIVE),
    ("--max-length", ["0", "-1"], INTEGER),
    ("--demo-samples", ["0", "-1"], INTEGER),
    ("--demo-filter-rate", ["0", "-0.5", "1.5", "nan", "inf"], "a finite number > 0 and <= 1"),
    ("--distill-weight", ["-1", "nan", "inf"], "a finite number >= 0"),
    ("--distill-temperature", ["0", "-1", "nan", "inf"], POSITIVE),
    ("--prompt-length", ["0", "-1"], INTEGER),
    ("--prompt-tuning-lrs", ["0", "-1", "nan", "inf"], POSITIVE),
]


@pytest.mark.parametrize("flag, values, allowed", RANGES)
def test_numeric_flags_out_of_range_are_refused_before_anything_runs(
    capsys, tmp_path, flag, values, allowed
):
    for value in values:
        line = _refused(capsys, tmp_path, [flag, value])
        assert line == (
            f"evaluate-fewshot: error: argument {flag}: expected {allowed}, got {value!r}"
        )


def test_every_numeric_flag_is_range_checked_and_tested():
    from smash.train.fewshot.cli import _parser
    from test_cli_flags import _numeric_flags

    assert _numeric_flags(_parser()) == {flag for flag, _, _ in RANGES}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_is_refused_off_cuda(capsys, tmp_path, precision):
    line = _refused(capsys, tmp_path, ["--precision", precision, "--device", "cpu"])
    assert line == (
        f"evaluate-fewshot: error: --precision {precision} needs a CUDA --device (autocast runs "
        "on CUDA only), got --device cpu"
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gpus-per-unit", "0.5"], "--gpus-per-unit applies to --ray"),
        (["--cpus-per-unit", "2"], "--cpus-per-unit applies to --ray"),
        (["--ray", "--shard", "1/2"], ("--shard splits the evaluation for a job array; --ray "
                                       "runs all of it on a cluster: give one of them")),
        (["--ray-address", "auto", "--device", "cuda", "--gpus-per-unit", "0"],
         "--device cuda needs --gpus-per-unit above 0 under --ray"),
    ],
)  # fmt: skip
def test_flags_that_do_not_go_together_are_refused(capsys, tmp_path, flags, message):
    assert _refused(capsys, tmp_path, flags) == f"evaluate-fewshot: error: {message}"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seeds", "13", "13", "21"], "--seeds 13 is given twice"),
        (["--lrs", "1e-3", "0.001"], "--lrs 0.001 is given twice"),
        (["--batch-sizes", "2", "4", "2"], "--batch-sizes 2 is given twice"),
        (["--tasks", "SST-2", "sst-2"], "--tasks sst-2 is given twice"),
        (["--mode", "prompt", "zero-shot", "prompt"], "--mode prompt is given twice"),
        (["--model", "m", "--name", "a", "b"], "--model m is given twice"),
        (["--curve", "k", "--k", "8", "8"], "--k 8 is given twice"),
        (["--k-steps", "16=10", "--k-steps", "16=20"], "--k-steps K=16 is given twice"),
        (["--template", "SST-2=*cls**sent_0**mask*.*sep+*", "--template",
          "sst-2=*cls**mask**sent_0*.*sep+*"], "--template task sst-2 is given twice"),
        (["--verbalizer", "SST-2=bad,good", "--verbalizer", "SST-2=good,bad"],
         "--verbalizer task SST-2 is given twice"),
        (["--curve", "steps", "--baseline", "b", "--baseline", "b"], "--baseline b is given twice"),
    ],
)  # fmt: skip
def test_a_repeated_value_of_a_list_flag_is_refused(capsys, tmp_path, flags, message):
    """A repeat would count a seed twice in the mean, train a grid point twice, or let the
    last of two values win without a word."""
    line = _refused(capsys, tmp_path, flags)
    assert line == f"evaluate-fewshot: error: {message}: give each once"
