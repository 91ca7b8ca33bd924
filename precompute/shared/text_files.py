"""Reading UTF-8 text files line by line, where a byte that is not UTF-8 names its line.

Python's own decoder reports ``'utf-8' codec can't decode byte 0xe9 in position 412`` with
no file and a position in a block of the file, not a line. ``utf8_lines`` decodes with
``surrogateescape`` (an undecodable byte becomes a lone surrogate, nothing is lost) and checks
each line as it is yielded, so the error says ``FILE:LINE`` and the byte within the line.
Corpora, k-shot splits, the original task files and LM-BFF's prompt files are read with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

__all__ = ["utf8_lines"]


def utf8_lines(
    path: str | Path, error: type[Exception], newline: str | None = None
) -> Iterator[tuple[int, str]]:
    """``(line number from 1, line)`` of a UTF-8 file, each line with its ending as ``open``
    gives it with ``newline``; raises ``error`` naming ``FILE:LINE`` at a byte that is not
    UTF-8."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline=newline) as f:
        for number, line in enumerate(f, start=1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as err:
                raw = line.encode("utf-8", "surrogateescape")
                at = len(line[: err.start].encode("utf-8", "surrogateescape"))
                raise error(
                    f"{path}:{number}: not valid UTF-8 at byte {at + 1} of the line "
                    f"({raw[max(at - 10, 0) : at + 10]!r}); re-encode the file as UTF-8 "
                    f"(e.g. iconv -f latin1 -t utf-8)"
                ) from None
            yield number, line
