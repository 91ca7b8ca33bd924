"""The codec's public round trip: a shard's chunks decoded with ``read_shard`` and a chunk's
``example(i)``, encoded again with ``encode_chunk`` and the manifest's layout, give the stored
chunks back byte for byte (a masked-LM store's optional column included, and its absence).

Fresh stores are compared compressed, as written (the same zstandard in one process); the
checked-in stores of earlier versions are compared decompressed, so that the test does not
depend on the compressor's version. An older chunk re-encodes to the current format: a
format-1 chunk's header gains the vocabulary size, a format-3 sampled chunk's float32 teacher
entropy becomes float16 (given rounded, as a format-4 writer would); every other column keeps
its bytes.
"""

import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from smash.store.codec import ChunkLayout, DecodedChunk, encode_chunk
from smash.store.manifest import load_manifest
from smash.store.shards import read_shard
from train_support import mlm_store_of, precompute, sentiment_store_of

STORES = Path(__file__).parent / "data" / "stores"
OLD_STORES = sorted(p.parent for p in STORES.glob("v*/*/manifest.json"))


def stored_chunks(store: Path):
    """(manifest, [(stored member bytes, decoded chunk)]) over every shard, in member order."""
    manifest = load_manifest(store)
    out = []
    for info in manifest.shards:
        url = str(store / info.name)
        chunks = read_shard(url, info, k=manifest.k, vocab_size=manifest.vocab_size,
                            targets=manifest.targets)  # fmt: skip
        with tarfile.open(url) as tar:
            blobs = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
        assert len(blobs) == len(chunks)
        out.extend(zip(blobs, chunks))
    return manifest, out


def reencode(manifest, chunk: DecodedChunk, examples=None) -> bytes:
    return encode_chunk(
        examples or [chunk.example(i) for i in range(chunk.n)],
        k=chunk.k,
        vocab_size=manifest.vocab_size,
        layout=ChunkLayout(**manifest.layout),
        targets=chunk.targets,
        samples=chunk.samples,
    )


def payload(blob: bytes) -> tuple[dict, bytes]:
    """A chunk's JSON header and its column bytes, decompressed."""
    raw = zstandard.ZstdDecompressor().decompress(blob)
    (head,) = struct.unpack_from("<I", raw)
    return json.loads(raw[4 : 4 + head]), raw[4 + head :]


def column_names(blob: bytes) -> list[str]:
    return [column["name"] for column in payload(blob)[0]["columns"]]


def columns(blob: bytes) -> dict[str, bytes]:
    """Each column's bytes, by name, as the header lays them out."""
    head, body = payload(blob)
    out, pos = {}, 0
    for column in head["columns"]:
        size = column["shape"][0] if column["dtype"] == "json" else (
            np.dtype(column["dtype"]).itemsize * int(np.prod(column["shape"]))
        )  # fmt: skip
        out[column["name"]], pos = body[pos : pos + size], pos + size
    assert pos == len(body)
    return out


@pytest.fixture(scope="module")
def sampled_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled") / "store"
    extra = ["--targets", "sampled", "--samples", "12", "--proposal-temperature", "2"]
    return precompute("sentiment", tiny["corpus"], tiny["teacher"], out, k=None, n=30,
                      shard_size=12, extra=[*extra, "--filter-rule", "none"])  # fmt: skip


@pytest.fixture(scope="module")
def hybrid_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid") / "store"
    extra = ["--targets", "hybrid", "--samples", "6", "--filter-rule", "none"]
    return precompute("sentiment", tiny["corpus"], tiny["teacher"], out, k=4, n=30,
                      shard_size=12, extra=extra)  # fmt: skip


@pytest.mark.parametrize("kind", ["topk", "mlm", "sampled", "hybrid"])
def test_a_fresh_store_encodes_back_to_its_stored_bytes(kind, tiny, tmp_path_factory, request):
    store = {
        "topk": lambda: sentiment_store_of(tiny, tmp_path_factory),
        "mlm": lambda: mlm_store_of(tiny, tmp_path_factory),
        "sampled": lambda: request.getfixturevalue("sampled_store"),
        "hybrid": lambda: request.getfixturevalue("hybrid_store"),
    }[kind]()
    manifest, chunks = stored_chunks(store)
    assert chunks and {c.targets for _, c in chunks} == {manifest.targets["mode"]}
    has_labels = {"mlm_labels" in column_names(blob) for blob, _ in chunks}
    assert has_labels == {kind == "mlm"}
    for blob, chunk in chunks:
        assert reencode(manifest, chunk) == blob


@pytest.mark.parametrize("store", OLD_STORES, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_a_checked_in_store_encodes_back_to_its_stored_columns(store):
    manifest, chunks = stored_chunks(store)
    assert chunks
    for blob, chunk in chunks:
        examples = [chunk.example(i) for i in range(chunk.n)]
        float32_entropy = chunk.targets == "sampled" and manifest.format_version == 3
        if float32_entropy:
            examples = [{**ex, "teacher_entropy": ex["teacher_entropy"].astype(np.float16)}
                        for ex in examples]  # fmt: skip
        again = reencode(manifest, chunk, examples)
        old, new = columns(blob), columns(again)
        if float32_entropy:
            del old["teacher_entropy"], new["teacher_entropy"]
            entropy = chunk["teacher_entropy"].astype(np.float16).astype(np.float32)
            assert np.array_equal(DecodedChunk(again)["teacher_entropy"], entropy)
        assert new == old
        head, again_head = payload(blob)[0], payload(again)[0]
        if manifest.format_version == 1:  # the current header names the vocabulary it was for
            assert "vocab_size" not in head
            head["vocab_size"] = manifest.vocab_size
        for h in (head, again_head):
            h["columns"] = [
                c for c in h["columns"] if not (float32_entropy and c["name"] == "teacher_entropy")
            ]
        assert again_head == head


def test_an_optional_column_at_its_default_is_not_given():
    """All rows at the default (-100) is what a chunk without the column decodes to: not
    given. An example that gives none beside one that does is still refused, naming it."""

    def example(labels):
        return {"input_ids": [5, 6, 7], "mask_positions": [1], "topk_ids": [[3]],
                "topk_logprobs": np.array([[-0.5]], np.float16),
                "tail_logmass": np.array([-1.0], np.float32), "mlm_labels": labels}  # fmt: skip

    none = encode_chunk([example([-100]), example(None)], k=1, vocab_size=10)
    assert "mlm_labels" not in column_names(none)
    assert DecodedChunk(none)["mlm_labels"].tolist() == [-100, -100]
    given = encode_chunk([example([6]), example([7])], k=1, vocab_size=10)
    assert DecodedChunk(given)["mlm_labels"].tolist() == [6, 7]
    with pytest.raises(ValueError, match="example 1 has no 'mlm_labels'"):
        encode_chunk([example([6]), example([-100])], k=1, vocab_size=10)
