"""Command-line flag checks shared by smash's commands, as argparse ``type=`` and ``action=``.

A numeric flag is parsed with its range (``integer(1)``, ``number(above=0)``, ...), so a value
outside it (0 or below where that is meaningless, ``nan``, ``inf``) stops the command before
anything runs, with argparse's one error line naming the flag and the range::

    precompute-teacher: error: argument --shard-size: expected a whole number >= 1, got '0'

A list flag whose repeated value would change the result (a seed given twice makes two
examples with one key) takes ``action=Distinct`` (or ``DistinctNames``, case-insensitive).
Parsers are ``FlagParser``s and parse with ``parse_flags``, so a refused flag is one line
(without argparse's usage) and the command returns 2, as it does for its other refusals.
The store's commands and precompute's share this module; it lives here because precompute
depends on the store, not the other way round.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = [
    "PROBABILITY",
    "SEED",
    "Distinct",
    "DistinctNames",
    "FlagError",
    "FlagParser",
    "integer",
    "number",
    "parse_flags",
    "shard",
]


class FlagError(ValueError):
    """A refused flag: argparse's message, which names the flag."""


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser that raises FlagError where argparse would print its usage and exit
    (sub-parsers are FlagParsers too)."""

    def error(self, message: str) -> NoReturn:
        raise FlagError(message)


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Any:
    """``parser.parse_args(argv)``, or None after printing ``PROG: error: MESSAGE``, one line,
    for a refused flag (the command then returns 2)."""
    try:
        return parser.parse_args(argv)
    except FlagError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return None


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number in ``[minimum, maximum]``."""
    wanted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected a whole number {wanted}, got {text!r}")
        return value

    return parse


def number(
    *, above: float | None = None, minimum: float | None = None, maximum: float | None = None
) -> Callable[[str], float]:
    """A finite number ``> above`` (or ``>= minimum``) and ``<= maximum``."""
    bounds = [
        f"> {above:g}" if above is not None else "",
        f">= {minimum:g}" if minimum is not None else "",
        f"<= {maximum:g}" if maximum is not None else "",
    ]
    wanted = " and ".join(b for b in bounds if b)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (
            math.isfinite(value)
            and (above is None or value > above)
            and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum)
        ):
            raise argparse.ArgumentTypeError(f"expected a finite number {wanted}, got {text!r}")
        return value

    return parse


def shard(text: str) -> tuple[int, int]:
    """``I/N``: the I-th of N parts of a job, 1 <= I <= N."""
    i, sep, n = text.partition("/")
    if sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n):
        return int(i), int(n)
    raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N (e.g. 2/8), got {text!r}")


# NumPy's legacy seeding (np.random.RandomState, which LM-BFF's k-shot splits use) takes these.
SEED = integer(0, 2**32 - 1)
PROBABILITY = number(minimum=0, maximum=1)


class Distinct(argparse.Action):
    """Store a list flag's values (``nargs="+"``), refusing a value given twice."""

    @staticmethod
    def key(value: Any) -> Any:
        return value

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Sequence[Any],
        option_string: str | None = None,
    ) -> None:
        seen: dict[Any, Any] = {}
        for value in values:
            key = self.key(value)
            if key in seen:
                first = seen[key]
                again = f"{value}" if value == first else f"{value} (first given as {first})"
                raise argparse.ArgumentError(
                    self, f"{again} is given more than once; give each value once"
                )
            seen[key] = value
        setattr(namespace, self.dest, list(values))


class DistinctNames(Distinct):
    """``Distinct`` for names that are looked up case-insensitively (task names)."""

    @staticmethod
    def key(value: Any) -> Any:
        return str(value).lower()
