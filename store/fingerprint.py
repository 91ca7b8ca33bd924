"""Content fingerprints: of a tokenizer (what token ids mean) and of files (shard checksums)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["check_tokenizer", "tokenizer_fingerprint", "tokenizer_record"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the vocabulary, the BPE merges and the special tokens of an HF tokenizer.

    Two tokenizers with the same fingerprint map every text to the same ids, which is what a
    store's token and top-k ids rely on. Names, paths and padding side do not enter the hash.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    merges: list = []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())}
    special_ids = {
        tok: tokenizer.convert_tokens_to_ids(tok)
        for tok in sorted({str(t) for t in tokenizer.all_special_tokens})
    }
    payload = json.dumps(
        {"vocab": vocab, "merges": merges, "special": special, "special_ids": special_ids},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_tokenizer(manifest: Any, tokenizer: Any, source: str) -> None:
    """Raise ``FingerprintMismatch`` unless ``tokenizer`` (or a fingerprint string) matches."""
    from .errors import FingerprintMismatch

    if isinstance(tokenizer, str):
        theirs, their_name = tokenizer, "(given by fingerprint)"
    else:
        theirs = tokenizer_fingerprint(tokenizer)
        their_name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    ours = manifest.tokenizer.get("fingerprint")
    if ours != theirs:
        raise FingerprintMismatch(
            source, str(ours), str(manifest.tokenizer.get("name", "?")), theirs, str(their_name)
        )


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """What a manifest records of the tokenizer: fingerprint, name and vocabulary size."""
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
    }
