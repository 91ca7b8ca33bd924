"""Every numeric flag of precompute-teacher, make-kshot, make-augment and smash-store is
checked before anything runs, and list flags refuse a repeated value: one line naming the
flag and what is allowed, exit status 2."""

import argparse

import pytest
from smash.precompute.cli import build_parser as precompute_parser
from smash.precompute.cli import main as precompute
from smash.precompute.kshot.augment import build_parser as augment_parser
from smash.precompute.kshot.augment import main as augment
from smash.precompute.kshot.splits import build_parser as kshot_parser
from smash.precompute.kshot.splits import main as make_kshot
from smash.store.cli import build_parser as store_parser
from smash.store.cli import main as smash_store

WHOLE = "expected a whole number >= {}"
SEED = "expected a whole number in [0, 4294967295]"
POSITIVE = "expected a finite number > 0"
BIG = str(2**32)

# command -> (main, its parser, the arguments it needs besides the flag under test)
COMMANDS = {
    "precompute-teacher": (precompute, precompute_parser,
                           ["--task", "sentence-pair", "--corpus", "c.txt", "--out", "{out}"]),
    "make-kshot": (make_kshot, kshot_parser, ["--original", "o", "--out", "{out}"]),
    "make-augment": (augment, augment_parser, ["--data", "d", "--out", "{out}", "--tasks", "SST-2"]),
    "smash-store verify": (smash_store, store_parser, ["verify", "{out}"]),
    "smash-store inspect": (smash_store, store_parser, ["inspect", "{out}"]),
}  # fmt: skip

# (command, flag, bad values, what the error says is allowed)
RANGES = [
    ("precompute-teacher", "--k", ["0", "-1", "1.5"], WHOLE.format(1)),
    ("precompute-teacher", "--samples", ["0", "-2"], WHOLE.format(1)),
    ("precompute-teacher", "--sample-seed", ["-1", BIG], SEED),
    ("precompute-teacher", "--seed", ["-1", BIG], SEED),
    ("precompute-teacher", "--proposal-temperature", ["0", "-1", "nan", "inf"], POSITIVE),
    ("precompute-teacher", "--num-examples", ["0", "-3"], WHOLE.format(1)),
    ("precompute-teacher", "--shard-size", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--token-budget", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--tokenize-workers", ["-1"], WHOLE.format(0)),
    ("precompute-teacher", "--min-words", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--max-words", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--max-length", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--threshold", ["-0.1", "1.5", "nan", "inf"],
     "expected a finite number >= 0 and <= 1"),
    ("precompute-teacher", "--segment-words", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--mask-probability", ["0", "-0.1", "1.5", "nan"],
     "expected a finite number > 0 and <= 1"),
    ("precompute-teacher", "--kshot-seeds", ["-1", BIG], SEED),
    ("precompute-teacher", "--kshot-k", ["0", "-1"], WHOLE.format(1)),
    ("precompute-teacher", "--local-rank", ["-1"], WHOLE.format(0)),
    ("make-kshot", "--seeds", ["-1", BIG], SEED),
    ("make-kshot", "--k", ["0", "-1"], WHOLE.format(1)),
    ("make-augment", "--seeds", ["-1", BIG], SEED),
    ("make-augment", "--k", ["0", "-1"], WHOLE.format(1)),
    ("make-augment", "--copies", ["0", "-1"], WHOLE.format(1)),
    ("make-augment", "--batch-size", ["0", "-1"], WHOLE.format(1)),
    ("make-augment", "--max-new-tokens", ["0", "-1"], WHOLE.format(1)),
    ("make-augment", "--top-k", ["-1"], WHOLE.format(0)),
    ("make-augment", "--temperature", ["0", "-1", "nan", "inf"], POSITIVE),
    ("make-augment", "--seed", ["-1", BIG], SEED),
    ("smash-store verify", "--stall-timeout", ["0", "-1", "nan", "inf"], POSITIVE),
    ("smash-store inspect", "--stall-timeout", ["0", "-1", "nan", "inf"], POSITIVE),
    ("smash-store inspect", "--max-shards", ["0", "-1"], WHOLE.format(1)),
]  # fmt: skip


def refused(command, extra, tmp_path, capsys) -> str:
    """Run ``command`` with ``extra`` flags: exit 2, one line on stderr, nothing written."""
    main, _, needed = COMMANDS[command]
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in needed] + extra
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and not captured.out, captured
    assert lines[0].startswith(f"{command.split()[0]}: error: "), lines
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    "command, flag, value, allowed",
    [(c, f, v, a) for c, f, values, a in RANGES for v in values],
)
def test_a_numeric_flag_out_of_its_range_is_refused(command, flag, value, allowed, tmp_path,
                                                    capsys):  # fmt: skip
    line = refused(command, [f"{flag}={value}"], tmp_path, capsys)
    assert f"{flag}: {allowed}, got {value!r}" in line, line


def _numeric_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The flags of ``parser`` whose values are numbers, with the sub-commands'."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _numeric_flags(sub)
        elif action.type in (int, float):
            found.add(f"{action.option_strings[-1]} (unchecked)")
        elif action.type is not None and action.type.__qualname__.startswith(("integer.", "number.")):  # fmt: skip
            found.add(action.option_strings[-1])
    return found


@pytest.mark.parametrize("command", ["precompute-teacher", "make-kshot", "make-augment",
                                     "smash-store verify"])  # fmt: skip
def test_every_numeric_flag_is_range_checked_and_tested(command):
    _, parser, _ = COMMANDS[command]
    tested = {flag for c, flag, _, _ in RANGES if c.split()[0] == command.split()[0]}
    assert _numeric_flags(parser()) == tested


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("precompute-teacher", ["--kshot-seeds", "13", "21", "13"],
         "argument --kshot-seeds: 13 is given more than once"),
        ("precompute-teacher", ["--kshot-tasks", "SST-2", "MNLI", "sst-2"],
         "argument --kshot-tasks: sst-2 (first given as SST-2) is given more than once"),
        ("precompute-teacher", ["--kshot-k", "16", "16"],
         "argument --kshot-k: 16 is given more than once"),
        ("precompute-teacher", ["--kshot-splits", "train", "train"],
         "argument --kshot-splits: train is given more than once"),
        ("make-kshot", ["--tasks", "SST-2", "SST-2"], "argument --tasks: SST-2 is given more"),
        ("make-kshot", ["--seeds", "13", "13"], "argument --seeds: 13 is given more than once"),
        ("make-kshot", ["--k", "8", "16", "8"], "argument --k: 8 is given more than once"),
        ("make-augment", ["--tasks", "SST-2", "SST-2"], "argument --tasks: SST-2 is given more"),
        ("make-augment", ["--seeds", "21", "21"], "argument --seeds: 21 is given more than once"),
    ],
)  # fmt: skip
def test_a_repeated_value_of_a_list_flag_is_refused(command, extra, message, tmp_path, capsys):
    assert message in refused(command, extra, tmp_path, capsys)


def test_a_task_given_twice_a_template_is_refused(tmp_path, capsys):
    argv = ["--task", "kshot", "--kshot-data", str(tmp_path), "--kshot-tasks", "SST-2", "--out",
            str(tmp_path / "out"), "--kshot-template", "SST-2=*cls**sent_0**mask*.*sep+*",
            "--kshot-template", "sst-2=*cls**sent_0*_It_was*mask*.*sep+*"]  # fmt: skip
    assert precompute(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "precompute-teacher: error: --kshot-template: task SST-2 is given more than once; "
        "give it once\n"
    )
    assert not (tmp_path / "out").exists()


def test_min_words_above_max_words_is_refused(tmp_path, capsys):
    line = refused("precompute-teacher", ["--min-words", "9", "--max-words", "5"], tmp_path,
                   capsys)  # fmt: skip
    assert line.endswith("--min-words 9 is more than --max-words 5")
