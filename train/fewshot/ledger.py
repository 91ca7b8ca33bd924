"""``OUT/points.jsonl``: every finished unit of a few-shot evaluation, one JSON line each, so
that a killed evaluation continues where it stopped and a finished one re-renders its report
without training anything.

A unit is one grid point of one seed (``mode``, ``task``, ``seed``, ``lr``, ``batch_size`` of one
model at one K and step budget) or one zero-shot seed (``lr`` and ``batch_size`` null). The
first line holds the settings that every unit shares (data folder, lengths, templates, label
words, evaluation interval...); a ``--resume`` with other settings is refused, while other
models, tasks, seeds or grid values only add units. The file is written from the first
finished unit on, so an evaluation that stopped on bad input leaves nothing to resume. Each line is written whole and flushed to
disk before the next unit starts; a line cut short by a kill is dropped when the file is read
again, and nothing else is ever rewritten.

Two kinds of line follow the settings:

- ``{"unit": KEY, "result": {lr, batch_size, dev, step, tests}, "seconds": S}``: a finished
  unit. A grid point's ``tests`` are its best-dev checkpoint's test metrics when it was tested
  at once (``--test-every-point``, a zero-shot unit, or a ledger of an earlier version, which
  tested every point), else ``{}``: only the grid point a seed chooses is tested, once every
  point of the seed is recorded.
- ``{"tested": KEY, "tests": {...}, "seconds": S}``: the test metrics of the unit ``KEY``
  recorded above it (the seed's chosen point). Read back, they are that unit's ``tests``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

from smash.train.fewshot.protocol import PointResult

__all__ = ["LEDGER_NAME", "Ledger", "UnitKey"]

LEDGER_NAME = "points.jsonl"


@dataclass(frozen=True)
class UnitKey:
    """What one unit is; equal keys under equal settings give the same result."""

    model: str
    path: str
    k: int
    max_steps: int
    mode: str
    task: str
    seed: int
    lr: float | None = None
    batch_size: int | None = None
    inputs: str = ""  # what the result depends on by content, as JSON (runner._UnitInputs)

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Ledger:
    """The finished units of ``path``, and of the ledgers ``others`` (read only: other runs'
    files in the same folder, such as the shards' of ``--shard``); ``resume=False`` refuses
    files that already hold units (a forgotten ``--resume`` must not throw days of work
    away)."""

    def __init__(
        self, path: str | Path, settings: dict, resume: bool, others: Sequence[Path] = ()
    ) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # tuples as the file holds them
        self._done: dict[str, PointResult] = {}
        files = [(Path(p), *_lines(Path(p))) for p in (*others, self.path) if Path(p).is_file()]
        files = [f for f in files if len(f[1]) >= 2]  # the settings and a unit at least
        if files and not resume:
            path, numbered, _ = files[0]
            units = sum(b'"tested":' not in line for _, line in numbered[1:])
            raise ValueError(
                f"{path} holds {units} finished units of an earlier "
                "evaluation: pass --resume to continue it, or another --out"
            )
        tested: list[tuple[Path, int, str, dict]] = []
        for path, numbered, _ in files:
            self._read(path, numbered, tested)
        for path, number, key, tests in tested:  # a unit's test may be another file's
            if key not in self._done:
                raise ValueError(
                    f"{path}:{number}: not a line this program writes: tested names a unit "
                    "that no line records (fix it, or pass another --out)"
                )
            self._done[key] = replace(self._done[key], tests=tests)
        self._started = bool(files) and files[-1][0] == self.path
        if self._started and files[-1][2]:  # a line cut by a kill: dropped as it goes on
            with self.path.open("r+b") as f:
                f.truncate(self.path.stat().st_size - len(files[-1][2]))

    def __len__(self) -> int:
        return len(self._done)

    def get(self, key: UnitKey) -> PointResult | None:
        return self._done.get(key.as_json())

    def record(self, key: UnitKey, result: PointResult, seconds: float) -> None:
        self.record_all([(key, result, seconds)])

    def record_all(self, units: list[tuple[UnitKey, PointResult, float]]) -> None:
        """Units trained together, in one write: a kill keeps all of them or none (but for
        a line cut short, which is dropped)."""
        for key, result, _ in units:
            self._done[key.as_json()] = result
        self._append(*({"unit": asdict(k), "result": asdict(r), "seconds": s} for k, r, s in units))

    def record_tests(self, key: UnitKey, tests: dict[str, float], seconds: float) -> None:
        """The test metrics of a recorded unit, tested after it was recorded."""
        self._done[key.as_json()] = replace(self._done[key.as_json()], tests=tests)
        self._append({"tested": asdict(key), "tests": tests, "seconds": seconds})

    def _append(self, *lines: dict) -> None:
        if not self._started:  # the file is written from its first unit on
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": self.settings}, sort_keys=True) + "\n")
            self._started = True
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def _read(self, path: Path, numbered: list, tested: list) -> None:
        """Take the units of a file (its test lines into ``tested``). Any line that is not
        one this program writes is refused as ``FILE:LINE`` and what is wrong with it."""
        for i, (number, line) in enumerate(numbered):
            try:
                item = json.loads(line)
                if i == 0:
                    self._check_settings(path, _member(item, "settings"))
                elif isinstance(item, dict) and "tested" in item:
                    key = _typed(UnitKey, _member(item, "tested"), "tested").as_json()
                    tests = item.get("tests")
                    if not _conforms(tests, dict[str, float]) or not tests:
                        raise _Malformed(f"tests is {_show(tests)}, expected an object of numbers")
                    tested.append((path, number, key, tests))
                else:
                    key = _typed(UnitKey, _member(item, "unit"), "unit")
                    self._done[key.as_json()] = _typed(
                        PointResult, _member(item, "result"), "result"
                    )
            except (_Malformed, json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{path}:{number}: not a line this program writes: {err} "
                    "(fix it, or pass another --out)"
                ) from None

    def _check_settings(self, path: Path, found: dict) -> None:
        differ = sorted(k for k in {*found, *self.settings} if found.get(k) != self.settings.get(k))
        if differ:
            raise ValueError(
                f"{path} was made with other settings ({', '.join(differ)} differ); "
                "pass the same settings to continue it, or another --out"
            )


def _lines(path: Path) -> tuple[list[tuple[int, bytes]], bytes]:
    """A ledger file's non-blank whole lines, numbered, and a last line cut short by a kill
    (b"" when there is none). Blank lines are skipped."""
    lines = path.read_bytes().split(b"\n")
    cut = lines.pop()
    return [(n, line) for n, line in enumerate(lines, 1) if line.strip()], cut


class _Malformed(ValueError):
    """A ledger line that parses as JSON but is not what this program writes."""


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _member(item: object, name: str) -> dict:
    """``item[name]``, which must be an object."""
    if not isinstance(item, dict) or name not in item:
        raise _Malformed(f"the line is {_show(item)}, expected an object with {json.dumps(name)}")
    if not isinstance(item[name], dict):
        raise _Malformed(f"{name} is {_show(item[name])}, expected an object")
    return item[name]


def _conforms(value: object, hint: object) -> bool:
    """Whether a JSON value has the annotated type (a number for float, an int for int)."""
    if get_origin(hint) in (Union, UnionType):
        return any(_conforms(value, h) for h in get_args(hint))
    if get_origin(hint) is dict:
        key, item = get_args(hint)
        return isinstance(value, dict) and all(
            _conforms(k, key) and _conforms(v, item) for k, v in value.items()
        )
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


_NAMES = {float: "a number", int: "an integer", str: "a string", type(None): "null"}
_PLURALS = {float: "numbers", int: "integers", str: "strings"}


def _describe(hint: object) -> str:
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(_describe(h) for h in get_args(hint))
    if get_origin(hint) is dict:
        return f"an object of {_PLURALS[get_args(hint)[1]]}"
    return _NAMES.get(hint, str(hint))


def _typed(cls: type, value: dict, name: str):
    """``cls(**value)``, each field checked against ``cls``'s annotations: an unknown field, a
    missing one without a default or a value of another type is named."""
    hints = get_type_hints(cls)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise _Malformed(f"{name} has a field {unknown[0]!r} this program does not write")
    for f in fields(cls):
        if f.name not in value:
            if f.default is MISSING:
                raise _Malformed(f"{name} has no field {f.name!r}")
        elif not _conforms(value[f.name], hints[f.name]):
            raise _Malformed(
                f"{name}.{f.name} is {_show(value[f.name])}, expected {_describe(hints[f.name])}"
            )
    return cls(**value)
