"""Errors the store raises. Each names the file (shard or manifest) and what is wrong."""

from __future__ import annotations

__all__ = ["FingerprintMismatch", "ManifestError", "ShardError", "StoreError"]


class StoreError(Exception):
    """Base class for every problem with a store on disk or behind a URL."""


class ManifestError(StoreError):
    """The manifest is missing, unreadable, of an unknown version, or inconsistent."""

    def __init__(self, path: str, problem: str | None = None):
        if problem is None:  # one argument: a whole message (see ShardError)
            self.path, self.problem = "", str(path)
            super().__init__(str(path))
            return
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class ShardError(StoreError):
    """A shard is missing, truncated, corrupted or does not decode.

    Also constructible from one whole message, which is how torch's DataLoader re-creates
    an exception raised in a worker process, so the error keeps its type there.
    """

    def __init__(self, shard: str, problem: str | None = None):
        if problem is None:
            self.shard, self.problem = "", str(shard)
            super().__init__(str(shard))
            return
        self.shard, self.problem = str(shard), problem
        super().__init__(f"shard {shard}: {problem}")


class FingerprintMismatch(StoreError):
    """The store was written with a different tokenizer than the one it is used with."""

    def __init__(self, store: str, store_fp: str, store_tok: str, other_fp: str, other_tok: str):
        super().__init__(
            f"{store}: tokenizer mismatch: the store was written with tokenizer {store_tok!r} "
            f"(fingerprint {store_fp}), but the student uses {other_tok!r} (fingerprint "
            f"{other_fp}). Token ids would mean different words; re-run the teacher pass with "
            f"the student's tokenizer or pick a student that shares the teacher's vocabulary."
        )
