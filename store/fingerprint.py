"""Tokenizer fingerprints: what token ids mean, so a store is only read with the ids it holds.

Two schemes, one per store format version, and a store is always checked with its own:

1. (format version 1) the vocabulary, the BPE merges and the special tokens;
2. (format version 2 on) those, plus the ids the tokenizer gives a fixed set of probe texts,
   with and without special tokens and as a pair. That catches every setting that changes
   the ids (``add_prefix_space``, lower-casing and other normalizers, the pre-tokenizer, the
   post-processor that adds ``<s>``/``</s>``), and nothing that does not (names, paths,
   padding side, offsets), whatever the ``tokenizers`` version writes into its JSON.

Names, paths and padding side never enter the hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["FINGERPRINT_SCHEME", "check_tokenizer", "tokenizer_fingerprint", "tokenizer_record"]

FINGERPRINT_SCHEME = 2  # what this version writes

# Probe texts: leading words with and without a space, case, accents and other Unicode
# normalization candidates, digits, punctuation, runs of whitespace, CJK, an emoji, and the
# mask token written inside text.
_PROBES = (
    "Hello",
    " Hello world",
    "HELLO, World! It was great.",
    "Café naïve façade Ångström ﬁne Ⅻ",
    "  two  spaces\tand a tab\nand a newline",
    "1234567 3.14159 -42 1e-5 $100 50%",
    "don't can't it's o'clock (a) [b] {c} <d> \"e\"",
    "東京 日本語 한국어 🙂",
    "a <mask> in the middle",
)


def _scheme_1_payload(tokenizer: Any) -> dict[str, Any]:
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
    return {"vocab": vocab, "merges": merges, "special": special, "special_ids": special_ids}


def _probe_ids(tokenizer: Any) -> dict[str, Any]:
    texts = list(_PROBES)
    return {
        "plain": tokenizer(texts, add_special_tokens=False)["input_ids"],
        "special": tokenizer(texts, add_special_tokens=True)["input_ids"],
        "pair": tokenizer(texts[:3], texts[3:6], add_special_tokens=True)["input_ids"],
    }


def tokenizer_fingerprint(tokenizer: Any, scheme: int = FINGERPRINT_SCHEME) -> str:
    """Hash of what decides an HF tokenizer's ids, by ``scheme`` (see the module doc).

    Two tokenizers with the same fingerprint map every text to the same ids, which is what a
    store's token and top-k ids rely on.
    """
    if scheme not in (1, 2):
        raise ValueError(f"unknown tokenizer fingerprint scheme {scheme!r}; known: 1, 2")
    payload = _scheme_1_payload(tokenizer)
    if scheme == 2:
        payload["probes"] = _probe_ids(tokenizer)
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def scheme_of(format_version: int) -> int:
    """The fingerprint scheme of a store of ``format_version``."""
    return 1 if format_version == 1 else 2


def check_tokenizer(manifest: Any, tokenizer: Any, source: str) -> None:
    """Raise ``FingerprintMismatch`` unless ``tokenizer`` (or a fingerprint string) matches the
    store's; a tokenizer is fingerprinted with the scheme of the store's format version."""
    from .errors import FingerprintMismatch

    if isinstance(tokenizer, str):
        theirs, their_name = tokenizer, "(given by fingerprint)"
    else:
        theirs = tokenizer_fingerprint(tokenizer, scheme_of(manifest.format_version))
        their_name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    ours = manifest.tokenizer.get("fingerprint")
    if ours != theirs:
        raise FingerprintMismatch(
            source,
            str(ours),
            str(manifest.tokenizer.get("name", "?")),
            theirs,
            str(their_name),
        )


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """What a manifest records of the tokenizer: fingerprint, name and vocabulary size."""
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
    }
