"""argparse ``type=`` functions for ``evaluate-fewshot``'s numeric flags.

A value outside its flag's range stops the command while the flags are parsed, before any file
is read or any unit trains, with one line naming the flag, the allowed range and the value
(``argument --lrs: must be a finite number > 0, got 'nan'``): a negative batch size would
otherwise loop forever, a zero evaluation interval divide by zero, and a negative evaluation
batch size score wrongly without a word.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["FRACTION", "NON_NEGATIVE", "POSITIVE", "POSITIVE_INT", "SEED", "integer", "real"]


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (no upper bound when ``high`` is None)."""
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    return parse


def real(low: float, *, open_low: bool, high: float = math.inf) -> Callable[[str], float]:
    """A finite number above ``low`` (or at least ``low`` when not ``open_low``), at most
    ``high``."""
    if high == math.inf:
        allowed = f"a finite number {'>' if open_low else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if open_low else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value > low if open_low else value >= low
        if not (math.isfinite(value) and above and value <= high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    return parse


POSITIVE_INT = integer(1)
# NumPy seeds the k-shot splits and the demonstration draws: 0 to 2**32 - 1
SEED = integer(0, 2**32 - 1)
POSITIVE = real(0, open_low=True)
NON_NEGATIVE = real(0, open_low=False)
FRACTION = real(0, open_low=True, high=1)
