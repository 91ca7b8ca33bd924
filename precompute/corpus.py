"""Raw corpora: stream documents from text, JSONL or parquet files, and fingerprint them.

Accepted inputs (a file, or a folder whose files are read in sorted order):
  - ``.txt`` (or any other suffix): documents separated by blank lines; with
    ``one_doc_per_file=True`` each file is one document;
  - ``.jsonl`` / ``.json``: one JSON object per line with a ``text`` field (name configurable);
  - ``.parquet``: a ``text`` column, read one row group at a time;
  - ``hf:NAME[:CONFIG][@REVISION]``: a Hugging Face dataset, streamed (``wikipedia`` extra).
Documents are streamed, never all held in memory. Bytes that are not UTF-8 raise a
``CorpusError`` naming the file, the line and the byte in it (``FILE:LINE``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .shared.text_files import utf8_lines

__all__ = ["Corpus", "CorpusError", "HFCorpus", "open_corpus"]


class CorpusError(ValueError):
    """The corpus is missing, empty or unreadable; the message names the file."""


@dataclass(frozen=True)
class Corpus:
    """A corpus on disk; iterate it for documents (strings)."""

    path: Path
    text_field: str = "text"
    one_doc_per_file: bool = False

    def __post_init__(self) -> None:
        if not self.path.exists():
            raise CorpusError(f"{self.path}: no such file or folder")

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        files = sorted(
            p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise CorpusError(f"{self.path}: the folder holds no files")
        return files

    def __iter__(self) -> Iterator[str]:
        found = False
        for path in self.files():
            for doc in self._documents(path):
                doc = doc.strip()
                if doc:
                    found = True
                    yield doc
        if not found:
            raise CorpusError(f"{self.path}: the corpus is empty (no non-blank document)")

    def _documents(self, path: Path) -> Iterator[str]:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from self._parquet(path)
        elif suffix in (".jsonl", ".json"):
            for lineno, line in utf8_lines(path, CorpusError, newline="\n"):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CorpusError(f"{path}: line {lineno} is not valid JSON: {err}") from None
                text = record.get(self.text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise CorpusError(
                        f"{path}: line {lineno} has no string field {self.text_field!r}"
                    )
                yield text
        elif self.one_doc_per_file:
            yield "".join(line for _, line in utf8_lines(path, CorpusError, newline="\n"))
        else:
            lines: list[str] = []
            for _, line in utf8_lines(path, CorpusError, newline="\n"):
                if line.strip():
                    lines.append(line.strip())
                elif lines:
                    yield " ".join(lines)
                    lines = []
            if lines:
                yield " ".join(lines)

    def _parquet(self, path: Path) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise CorpusError(f"{path}: not a readable parquet file: {err}") from None
        if self.text_field not in pf.schema_arrow.names:
            raise CorpusError(
                f"{path}: no column {self.text_field!r} (columns: {pf.schema_arrow.names})"
            )
        for group in range(pf.num_row_groups):
            for text in pf.read_row_group(group, columns=[self.text_field]).column(0).to_pylist():
                if text is not None:
                    yield text

    def fingerprint(self) -> str:
        """sha256 over file names (relative) and contents, plus the reading options."""
        h = hashlib.sha256(json.dumps([self.text_field, self.one_doc_per_file]).encode())
        root = self.path if self.path.is_dir() else self.path.parent
        for path in self.files():
            h.update(str(path.relative_to(root)).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class HFCorpus:
    """A Hugging Face ``datasets`` corpus, streamed: ``hf:NAME[:CONFIG][@REVISION]``, e.g.
    ``hf:wikimedia/wikipedia:20231101.en``. Needs the ``wikipedia`` extra and a reachable hub."""

    spec: str
    text_field: str = "text"
    split: str = "train"

    @property
    def path(self) -> str:
        return self.spec

    @property
    def local(self) -> bool:
        """Whether NAME is a local dataset folder rather than a hub dataset."""
        return Path(self._parts()[0]).is_dir()

    def _parts(self) -> tuple[str, str | None, str | None]:
        body, _, revision = self.spec[len("hf:") :].partition("@")
        name, _, config = body.partition(":")
        if not name:
            raise CorpusError(f"{self.spec}: expected hf:NAME[:CONFIG][@REVISION]")
        return name, config or None, revision or None

    def __iter__(self) -> Iterator[str]:
        try:
            import datasets
        except ImportError:
            raise CorpusError(
                f"{self.spec}: reading a Hugging Face dataset needs the "
                f"'datasets' package: pip install 'smash-distill[wikipedia]'"
            ) from None
        name, config, revision = self._parts()
        stream = datasets.load_dataset(
            name, config, split=self.split, revision=revision, streaming=True
        )
        found = False
        for record in stream:
            text = record.get(self.text_field)
            if isinstance(text, str) and text.strip():
                found = True
                yield text
        if not found:
            raise CorpusError(f"{self.spec}: the corpus is empty (no {self.text_field!r} text)")

    def fingerprint(self) -> str:
        """The dataset's name, config, revision and split; for a local dataset folder also its
        files' content (a hub dataset is pinned by its revision, not re-hashed)."""
        recorded: list = [*self._parts(), self.split, self.text_field]
        if self.local:
            recorded.append(Corpus(Path(recorded[0])).fingerprint())
        return "sha256:" + hashlib.sha256(json.dumps(recorded).encode()).hexdigest()


def open_corpus(
    spec: str | Path, text_field: str = "text", one_doc_per_file: bool = False
) -> Corpus | HFCorpus:
    """A local corpus path, or ``hf:NAME[:CONFIG][@REVISION]`` for a Hugging Face dataset."""
    if str(spec).startswith("hf:"):
        return HFCorpus(str(spec), text_field=text_field)
    return Corpus(Path(spec), text_field=text_field, one_doc_per_file=one_doc_per_file)
