"""How the four code folders install and import.

The folders live at the repository root and install under one name, ``smash.*`` (pyproject's
``package-dir``). They are implicit namespace portions (no ``__init__.py`` at their top), so
that with the root on ``sys.path`` (``python -m pytest``, ``python -m smash...``) a folder can
never shadow an installed distribution of the same name: transformers 5 imports Hugging
Face's ``kernels``, and ``store``, ``train``, ``precompute`` are generic names too.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("precompute", "store", "kernels", "train")


def _setuptools() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_code_folder_is_listed_in_pyproject():
    """A wheel installs only the packages listed (an editable install would import a forgotten
    one anyway): every folder holding a module, or package data, is listed."""
    setup = _setuptools()
    found = set()
    for name, folder in setup["package-dir"].items():
        for module in (ROOT / folder).rglob("*.py"):
            inner = module.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *inner)))
    data_only = set(setup["package-data"])
    assert found | data_only == set(setup["packages"])


def test_the_code_folders_map_to_smash_names():
    assert _setuptools()["package-dir"] == {f"smash.{folder}": folder for folder in FOLDERS}


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_code_folder_is_not_a_regular_package(folder):
    assert not (ROOT / folder / "__init__.py").exists(), (
        f"{folder}/__init__.py makes {folder}/ importable as a top-level package `{folder}` from "
        "the repository root, shadowing any installed distribution of that name"
    )


def test_an_installed_distribution_of_a_folders_name_wins_from_the_root(tmp_path):
    """The root first on sys.path (as ``python -m`` puts it) and a regular package of each
    folder's name right after it: the installed one is imported, and ``smash.*`` still maps to
    our folders."""
    site = tmp_path / "site"
    for folder in FOLDERS:
        (site / folder).mkdir(parents=True)
        (site / folder / "__init__.py").write_text(f"WHO = 'installed {folder}'\n")
    probe = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(site)!r}]\n"
        f"for name in {FOLDERS!r}:\n"
        "    print(importlib.import_module(name).WHO)\n"
        "import smash.kernels.soft_ce, smash.store.reader\n"
        "print(smash.kernels.soft_ce.__file__); print(smash.store.reader.__file__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[:4] == [f"installed {folder}" for folder in FOLDERS]
    assert out[4:] == [str(ROOT / "kernels" / "soft_ce.py"), str(ROOT / "store" / "reader.py")]


def _lock_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock", ROOT / ".ci" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_pins_every_dependency_once_without_local_labels():
    """What `make test` installs: one exact, label-free pin per distribution (a CUDA machine
    installs the same lock), the project's own requirements among them, torch in its range."""
    import tomllib
    from packaging.requirements import Requirement

    lock = _lock_module()
    lines = [line for line in lock.LOCK.read_text().splitlines() if not line.startswith("#")]
    names = [lock.canonical(line.split("==")[0]) for line in lines]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.]*", line) for line in lines)
    assert len(names) == len(set(names)) and "+" not in "".join(lines)
    pins = lock.read_lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = [Requirement(r) for r in [*project["dependencies"],
                                         *project["optional-dependencies"]["dev"]]]  # fmt: skip
    for req in required:
        if req.marker is None or req.marker.evaluate():
            assert lock.canonical(req.name) in pins, req.name
            assert req.specifier.contains(pins[lock.canonical(req.name)]), (req, pins[req.name])
    assert {"pip", "setuptools", "wheel"} <= set(pins)
    assert lock.public("2.13.0+cpu") == "2.13.0" and lock.canonical("Foo_Bar.baz") == "foo-bar-baz"
