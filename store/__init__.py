"""The teacher-logit store: WebDataset tar shards of zstd-compressed columnar chunks, a
manifest, a resumable streaming reader, and inspect/verify tools."""

from .codec import ChunkLayout, DecodedChunk, decode_chunk, encode_chunk
from .collate import collate_examples
from .errors import FingerprintMismatch, ManifestError, ShardError, StoreError
from .fingerprint import check_tokenizer, tokenizer_fingerprint, tokenizer_record
from .manifest import FORMAT_VERSION, Manifest, ShardInfo, finalize_store, load_manifest
from .reader import StoreDataset
from .shards import read_shard
from .writer import ShardFile, StoreWriter, shard_name

__all__ = [
    "ChunkLayout", "DecodedChunk", "decode_chunk", "encode_chunk", "collate_examples",
    "FingerprintMismatch", "ManifestError", "ShardError", "StoreError", "check_tokenizer",
    "tokenizer_fingerprint", "tokenizer_record", "FORMAT_VERSION", "Manifest", "ShardInfo",
    "finalize_store", "load_manifest", "StoreDataset", "read_shard", "ShardFile",
    "StoreWriter", "shard_name",
]
