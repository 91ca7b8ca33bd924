"""Store: bit-exact round trips, manifest merging, and clear errors on damaged input."""

import json
import tarfile

import numpy as np
import pytest
from smash.store.codec import ChunkLayout, DecodedChunk, canonical_order, encode_chunk
from smash.store.errors import FingerprintMismatch, ManifestError, ShardError
from smash.store.fingerprint import tokenizer_fingerprint
from smash.store.manifest import FORMAT_VERSION, finalize_store, load_manifest
from smash.store.reader import StoreDataset
from smash.store.shards import read_shard
from smash.store.writer import StoreWriter

VOCAB = 50_265


def make_examples(n, k=8, vocab=VOCAB, seed=0, max_masks=2, with_meta=False):
    """Random examples with distinct top-k ids per row and float16 log-probs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 40))
        m = int(rng.integers(1, max_masks + 1))
        ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(m)])
        logits = rng.normal(size=(m, k)) * 3
        lp = (logits - np.log(np.exp(logits).sum(1, keepdims=True) * 1.3 + 1e-30)).astype(
            np.float16
        )
        out.append(
            {
                "input_ids": rng.integers(0, vocab, size=length),
                "mask_positions": np.sort(rng.choice(length, size=m, replace=False)),
                "topk_ids": ids,
                "topk_logprobs": lp,
                "tail_logmass": np.log(np.full(m, 0.3 / 1.3, dtype=np.float32))
                + rng.normal(size=m).astype(np.float32) * 1e-3,
                "label": int(rng.integers(-1, 3)),
                "meta": {"doc": i} if with_meta else None,
            }
        )
    return out


def canonical(ex, order="value"):
    perm = canonical_order(np.asarray(ex["topk_ids"]), ex["topk_logprobs"], order)
    return {
        **ex,
        "topk_ids": np.take_along_axis(np.asarray(ex["topk_ids"]), perm, 1),
        "topk_logprobs": np.take_along_axis(ex["topk_logprobs"], perm, 1),
    }


def assert_same(written, read):
    for key in ("input_ids", "mask_positions", "topk_ids", "tail_logmass"):
        a, b = np.asarray(written[key]), np.asarray(read[key])
        assert a.shape == b.shape, key
        assert np.array_equal(
            a.view(np.uint8) if a.dtype.kind == "f" else a,
            b.view(np.uint8) if b.dtype.kind == "f" else b,
        ), key
    assert read["topk_logprobs"].dtype == np.float16
    assert np.array_equal(
        written["topk_logprobs"].view(np.uint16), read["topk_logprobs"].view(np.uint16)
    )
    assert read["label"] == written["label"]
    assert read["meta"] == written["meta"]


@pytest.mark.parametrize(
    "layout",
    [ChunkLayout(), ChunkLayout(planes=False, delta=False), ChunkLayout(order="id", level=3)],
)
def test_chunk_round_trip_is_bit_exact(layout):
    examples = make_examples(50, k=16, with_meta=True)
    chunk = DecodedChunk(encode_chunk(examples, k=16, vocab_size=VOCAB, layout=layout))
    assert chunk.n == 50 and chunk.k == 16
    for written, read in zip(examples, chunk):
        assert_same(canonical(written, layout.order), read)


def test_special_float_values_survive():
    ex = make_examples(1, k=4, max_masks=1)[0]
    ex["topk_logprobs"] = np.array([[0.0, -0.0, -65504.0, -np.inf]], dtype=np.float16)
    ex["tail_logmass"] = np.array([-np.inf], dtype=np.float32)
    read = next(iter(DecodedChunk(encode_chunk([ex], k=4, vocab_size=VOCAB))))
    assert_same(canonical(ex), read)


def test_k_zero_stores_examples_without_teacher():
    ex = make_examples(3, k=0)
    read = list(DecodedChunk(encode_chunk(ex, k=0, vocab_size=VOCAB)))
    assert [r["topk_ids"].shape for r in read] == [(len(e["mask_positions"]), 0) for e in ex]
    assert [list(r["input_ids"]) for r in read] == [list(e["input_ids"]) for e in ex]


@pytest.mark.parametrize("topk", [[], np.zeros((0, 4), np.float16)])
def test_example_without_masks_may_give_empty_lists(topk):
    ex = make_examples(1, k=4)[0]
    bare = {
        "input_ids": [1, 2],
        "mask_positions": [],
        "topk_ids": np.asarray(topk, np.int64),
        "topk_logprobs": topk,
        "tail_logmass": [],
        "label": 1,
    }
    first, second = DecodedChunk(encode_chunk([bare, ex], k=4, vocab_size=VOCAB))
    assert list(first["input_ids"]) == [1, 2] and first["label"] == 1
    assert first["topk_ids"].shape == (0, 4) and first["tail_logmass"].dtype == np.float32
    assert_same(canonical(ex), second)


def test_masked_lm_labels_round_trip_and_default_to_minus_100_where_not_stored():
    examples = make_examples(6, k=4, max_masks=3)
    rng = np.random.default_rng(1)
    with_labels = [
        {**ex, "mlm_labels": rng.integers(0, VOCAB, len(ex["mask_positions"]))} for ex in examples
    ]
    blob = encode_chunk(with_labels, k=4, vocab_size=VOCAB)
    for written, read in zip(with_labels, DecodedChunk(blob)):
        assert read["mlm_labels"].tolist() == list(written["mlm_labels"])
        assert_same(canonical(written), read)
    plain = DecodedChunk(encode_chunk(examples, k=4, vocab_size=VOCAB))
    assert all(read["mlm_labels"].tolist() == [-100] * len(ex["mask_positions"])
               for ex, read in zip(examples, plain))  # fmt: skip
    assert len(encode_chunk(examples, k=4, vocab_size=VOCAB)) < len(blob)  # no column at all
    with pytest.raises(ValueError, match="example 1 has no 'mlm_labels'"):
        encode_chunk([with_labels[0], examples[1]], k=4, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="mlm_labels out of range"):
        rows = len(examples[0]["mask_positions"])
        encode_chunk([{**examples[0], "mlm_labels": [VOCAB] * rows}], k=4, vocab_size=VOCAB)


def test_encode_rejects_bad_input():
    ex = make_examples(1, k=4)[0]
    wide = ex["topk_logprobs"].astype(np.float32)  # the same values: taken, the same bytes
    same = encode_chunk([{**ex, "topk_logprobs": wide}], k=4, vocab_size=VOCAB)
    assert same == encode_chunk([ex], k=4, vocab_size=VOCAB)
    with pytest.raises(TypeError, match="must be float16 .* float32 values that it would round"):
        finer = wide + np.float32(1e-4)  # not float16 values: never rounded without a word
        encode_chunk([{**ex, "topk_logprobs": finer}], k=4, vocab_size=VOCAB)
    with pytest.raises(TypeError, match="must be float16"):
        encode_chunk([{**ex, "topk_logprobs": ex["topk_ids"]}], k=4, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="out of range"):
        encode_chunk([{**ex, "input_ids": np.array([VOCAB])}], k=4, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="topk_ids must have one row of k=5.*got shape"):
        encode_chunk([ex], k=5, vocab_size=VOCAB)


def write_store(root, examples, *, max_samples=40, part="0", first_shard=0, fp="sha256:abc", k=8):
    """Shards of ``max_samples`` examples, numbered from ``first_shard``; their records."""
    writer = StoreWriter(
        root,
        producer={"task": "test", "seed": 1},
        tokenizer={"fingerprint": fp, "name": "tok", "vocab_size": VOCAB},
        k=k,
        chunk_size=16,
        part=part,
    )
    return [
        writer.write_shard(first_shard + i, examples[start : start + max_samples])
        for i, start in enumerate(range(0, len(examples), max_samples))
    ]


def test_store_round_trip_through_reader(tmp_path):
    examples = make_examples(130, seed=1)
    shards = write_store(tmp_path, examples)
    assert [s.samples for s in shards] == [40, 40, 40, 10]
    manifest = finalize_store(tmp_path)
    assert manifest.num_samples == 130
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    read = list(StoreDataset(tmp_path, shuffle=False))
    assert [r["__key__"] for r in read][:2] == ["shard-000000.tar/0", "shard-000000.tar/1"]
    for written, got in zip(examples, read):
        assert_same(canonical(written), got)


def test_same_examples_give_byte_identical_shards(tmp_path):
    examples = make_examples(60, seed=2)
    write_store(tmp_path / "a", examples)
    write_store(tmp_path / "b", examples)
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_two_writers_merge_into_one_manifest(tmp_path):
    write_store(tmp_path, make_examples(50, seed=3), part="rank0", first_shard=0)
    write_store(tmp_path, make_examples(30, seed=4), part="rank1", first_shard=100)
    manifest = finalize_store(tmp_path)
    assert [s.name for s in manifest.shards] == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000100.tar",
    ]
    assert manifest.num_samples == 80


def test_finalize_refuses_disagreeing_parts(tmp_path):
    write_store(tmp_path, make_examples(5), part="rank0")
    write_store(tmp_path, make_examples(5), part="rank1", first_shard=10, fp="sha256:other")
    with pytest.raises(ManifestError, match="manifest.part-rank1.json.*tokenizer"):
        finalize_store(tmp_path)
    assert not (tmp_path / "manifest.json").exists()


@pytest.fixture
def small_store(tmp_path):
    write_store(tmp_path, make_examples(100, seed=6), max_samples=30)
    finalize_store(tmp_path)
    return tmp_path


def test_corrupted_byte_is_detected(small_store):
    path = small_store / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-000001.tar.*corrupted"):
        list(StoreDataset(small_store, shuffle=False))


def test_corruption_is_caught_by_zstd_without_checksum_pass(small_store):
    path = small_store / "shard-000001.tar"
    with tarfile.open(path) as tar:
        member = tar.getmembers()[0]
    data = bytearray(path.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x40  # inside the first zstd frame
    path.write_bytes(bytes(data))
    info = load_manifest(small_store).shards[1]
    with pytest.raises(ShardError, match="shard-000001.tar.*does not decode"):
        read_shard(str(path), info, verify=False)


def test_truncated_shard_is_detected(small_store):
    path = small_store / "shard-000002.tar"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ShardError, match="shard-000002.tar.*truncated"):
        list(StoreDataset(small_store, shuffle=False))
    info = load_manifest(small_store).shards[2]
    with pytest.raises(ShardError, match="shard-000002.tar"):
        read_shard(str(path), info, verify=False)


def test_missing_shard_is_detected(small_store):
    (small_store / "shard-000003.tar").unlink()
    with pytest.raises(ShardError, match="shard-000003.tar.*missing"):
        list(StoreDataset(small_store, shuffle=False))


def test_unknown_format_version_is_refused(small_store):
    path = small_store / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="manifest.json.*format_version.*99"):
        StoreDataset(small_store)


def test_missing_or_broken_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_tokenizer_fingerprint_is_checked(tmp_path, tiny_tokenizer):
    from transformers import AddedToken

    fp = tokenizer_fingerprint(tiny_tokenizer)
    write_store(tmp_path, make_examples(5, vocab=len(tiny_tokenizer)), fp=fp)
    finalize_store(tmp_path)
    assert StoreDataset(tmp_path, tokenizer=tiny_tokenizer).num_samples == 5
    other = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path)
    other.add_tokens([AddedToken("zebra-word")])
    assert tokenizer_fingerprint(other) != fp
    with pytest.raises(FingerprintMismatch, match="tokenizer mismatch.*tok"):
        StoreDataset(tmp_path, tokenizer=other)


def test_store_errors_survive_dataloader_workers(small_store):
    """A worker's ShardError reaches the main process as a ShardError naming the shard."""
    from torch.utils.data import DataLoader

    (small_store / "shard-000000.tar").unlink()
    loader = DataLoader(StoreDataset(small_store, shuffle=False), batch_size=None, num_workers=1)
    with pytest.raises(ShardError, match="shard-000000.tar.*missing"):
        list(loader)


def test_writer_refuses_a_part_of_another_configuration(tmp_path):
    write_store(tmp_path, make_examples(5), k=8)
    with pytest.raises(ManifestError, match="manifest.part-0.json.*'producer' differs"):
        StoreWriter(
            tmp_path,
            producer={"task": "other"},
            tokenizer={"fingerprint": "sha256:abc", "name": "tok", "vocab_size": VOCAB},
            k=8,
        )


def test_write_shard_under_an_index_and_abort_on_error(tmp_path):
    writer = StoreWriter(
        tmp_path, producer={}, k=8, tokenizer={"fingerprint": "x", "vocab_size": VOCAB}
    )
    info = writer.write_shard(7, make_examples(4))
    assert info.name == "shard-000007.tar" and info.samples == 4

    def broken():
        yield from make_examples(2)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        writer.write_shard(8, broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.part-0.json",
        "shard-000007.tar",
    ]
    assert [s.name for s in finalize_store(tmp_path).shards] == ["shard-000007.tar"]


def shard_writer(root, part="rank0"):
    return StoreWriter(
        root, producer={}, tokenizer={"fingerprint": "x", "vocab_size": VOCAB}, k=8, part=part
    )


def stored_docs(root):
    return sorted(ex["meta"]["doc"] for ex in StoreDataset(root))


def test_rewriting_a_missing_shard_replaces_its_entry(tmp_path):
    examples = make_examples(10, seed=7, with_meta=True)
    writer = shard_writer(tmp_path)
    writer.write_shard(0, examples[:5])
    writer.write_shard(1, examples[5:])
    for rerun in range(2):  # each resumed run finds shard 1 missing and writes it again
        (tmp_path / "shard-000001.tar").unlink()
        shard_writer(tmp_path).write_shard(1, examples[5:] if rerun else examples[7:])
        part = json.loads((tmp_path / "manifest.part-rank0.json").read_text())
        assert [s["name"] for s in part["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
        assert part["num_samples"] == (10 if rerun else 8)
        assert finalize_store(tmp_path).num_samples == part["num_samples"]
    assert stored_docs(tmp_path) == list(range(10))


def test_a_shard_rewritten_by_another_part_keeps_the_newest_write(tmp_path):
    examples = make_examples(10, seed=8, with_meta=True)
    shard_writer(tmp_path, "rank0").write_shard(1, examples[:4])
    shard_writer(tmp_path, "rank1").write_shard(1, examples[:4])  # the same bytes again
    assert [s.samples for s in finalize_store(tmp_path).shards] == [4]
    shard_writer(tmp_path, "rank1").write_shard(1, examples[4:])  # newer, other contents
    assert [s.samples for s in finalize_store(tmp_path).shards] == [6]
    assert stored_docs(tmp_path) == list(range(4, 10))
    (tmp_path / "shard-000001.tar").write_bytes(b"neither")
    with pytest.raises(
        ManifestError,
        match="shard-000001.tar: listed with different contents "
        "in manifest.part-rank0.json, manifest.part-rank1"
        ".json, and the file .* matches none of them",
    ):
        finalize_store(tmp_path)
    (tmp_path / "shard-000001.tar").unlink()
    with pytest.raises(ManifestError, match="different contents .* the file is missing"):
        finalize_store(tmp_path)


def test_finalize_merges_a_shard_listed_twice_in_one_part(tmp_path):
    """Parts written before a rewrite replaced its entry may list a name twice."""
    shard_writer(tmp_path).write_shard(0, make_examples(3))
    path = tmp_path / "manifest.part-rank0.json"
    part = json.loads(path.read_text())
    part["shards"] *= 2
    path.write_text(json.dumps(part))
    assert [s.name for s in finalize_store(tmp_path).shards] == ["shard-000000.tar"]
