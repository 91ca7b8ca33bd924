"""Write constraints.txt: the exact versions that `make test` and `make demo` install.

    python .ci/lock.py            # resolve anew (`make lock`) and rewrite constraints.txt
    python .ci/lock.py --compare  # name where this environment differs from constraints.txt

The lock is pip's own resolution of `.[dev]` (plus pip, setuptools and wheel, which build the
editable install without isolation), made without installing anything. It must also serve a
CUDA machine, so:

- torch is pinned without its local label (``torch==2.13.0``, never ``2.13.0+cpu``): pip takes the
  CPU build where a CPU index or wheel is offered, and PyPI's CUDA build elsewhere;
- PyPI's CUDA build pins some of our own dependencies exactly (triton), while the CPU build pins
  none: the CUDA wheel's pins are read from PyPI and the resolution is redone under them, so that
  both builds install against the same lock. Its nvidia-* libraries are left to torch's own pins.

A constraints file cannot carry hashes that pip enforces (pip applies hashes only to
requirements), and a hashed requirements file would refuse the CUDA build's nvidia-* libraries:
the lock pins versions; the index's own hashes still check every download.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PROJECT = "smash-distill"
BUILD_TOOLS = ("pip", "setuptools", "wheel")
PYPI = "https://pypi.org/simple"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: a lock any build of the release satisfies."""
    return version.split("+", 1)[0]


def _report(args: list[str], env: dict[str, str] | None = None) -> list[dict]:
    """What ``pip install ARGS`` would install, from its JSON report; nothing is installed.
    (``--target`` lets pip resolve for another platform than this one.)"""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), "--target", str(Path(tmp) / "target"), *args]
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return json.loads(report.read_text())["install"]


def resolve(constraints: dict[str, str]) -> dict[str, str]:
    """pip's resolution of the project, its dev extra and the build tools: name -> version."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
        pins.write("".join(f"{name}=={version}\n" for name, version in constraints.items()))
        pins.flush()
        items = _report(["-c", pins.name, *BUILD_TOOLS, ".[dev]"])
    found = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    found.pop(PROJECT)
    return found


def cuda_torch_pins(version: str) -> dict[str, str]:
    """The exact pins (``name==version``) of PyPI's Linux x86_64 torch wheel, nvidia-* aside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI alone: no local wheels, no CPU index
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    args = ["--no-deps", "--only-binary=:all:", "--index-url", PYPI]
    args += ["--platform", "manylinux_2_28_x86_64", "--python-version", tag, f"torch=={version}"]
    (item,) = _report(args, env=env)
    pins = {}
    for requirement in item["metadata"].get("requires_dist", []):
        spec = requirement.split(";", 1)[0].replace(" ", "")
        if "extra==" in requirement or "==" not in spec:
            continue
        name, pinned = spec.split("==", 1)
        if not canonical(name).startswith(("nvidia-", "cuda-")):
            pins[canonical(name)] = pinned
    return pins


def write_lock(versions: dict[str, str]) -> None:
    header = (
        "# The exact versions `make test` and `make demo` install (pip install -c constraints.txt).\n"
        "# Written by `make lock` (.ci/lock.py), which says why it holds no hashes; do not edit.\n"
        f"# Resolved with CPython {platform.python_version()} on {sys.platform} "
        f"{platform.machine()}; torch without a local label, triton as PyPI's CUDA torch pins it.\n"
    )
    lines = [f"{name}=={public(version)}\n" for name, version in sorted(versions.items())]
    LOCK.write_text(header + "".join(lines))


def read_lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def compare() -> int:
    """Print each locked distribution whose installed version differs; 0 when none does."""
    locked = read_lock()
    rows = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in locked and public(dist.version) != locked[name]:
            rows.append(f"{name}: locked {locked[name]}, installed {dist.version}")
    print("\n".join(sorted(rows)) if rows else "every locked distribution is at its locked version")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="compare, do not resolve")
    if parser.parse_args(argv).compare:
        return compare()
    versions = resolve({})
    pins = cuda_torch_pins(public(versions["torch"]))
    if any(versions.get(name, pinned) != pinned for name, pinned in pins.items()):
        versions = resolve({name: v for name, v in pins.items() if name in versions})
    write_lock(versions)
    print(f"wrote {LOCK.name}: {len(versions)} distributions (torch {public(versions['torch'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
