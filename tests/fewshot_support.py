"""Shared pieces of the few-shot tests."""

from smash.train.fewshot.cli import main


def cli_error(capsys, argv):
    """Run evaluate-fewshot expecting bad input: exit 2, one error line (the last on stderr,
    after the progress bar if one started), no traceback; returns that line."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert last.startswith("evaluate-fewshot: error: ") and err.count("error:") == 1, err
    assert "Traceback" not in out + err
    return last
