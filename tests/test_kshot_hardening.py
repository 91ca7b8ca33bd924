"""What adversarial use of the k-shot pass (``precompute-teacher --task kshot``) and of the
k-shot files found: each is refused with one line naming what is wrong, before anything is
written, and leaves no folder behind."""

from pathlib import Path

import pytest
from smash.precompute.cli import main as precompute
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.precompute.output_lock import LOCK_NAME, output_lock

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


def kshot_pass(tiny, data, out, *extra):
    argv = ["--task", "kshot", "--kshot-data", str(data), "--teacher", str(tiny["teacher"]),
            "--kshot-tasks", "SST-2", "--kshot-seeds", "13", "--kshot-k", "8", "--k", "16",
            "--dtype", "fp32", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
    return precompute(argv)


def refused(capsys) -> str:
    """The one error line of a refused run."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("precompute-teacher: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13], k=8)
    return root


def test_a_task_folder_that_another_run_writes_is_refused(tiny, kshot, tmp_path, capsys):
    folder = tmp_path / "out" / "SST-2"
    folder.mkdir(parents=True)
    with output_lock(folder):
        assert kshot_pass(tiny, kshot, tmp_path / "out") == 2
        assert f"{folder} is in use by another precompute-teacher run (pid " in refused(capsys)
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]
