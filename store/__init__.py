"""The teacher-logit store: WebDataset tar shards of zstd-compressed columnar chunks, a
manifest, a resumable streaming reader, and inspect/verify tools."""

from .codec import ChunkLayout, DecodedChunk, encode_chunk
from .collate import collate_examples
from .errors import FingerprintMismatch, ManifestError, ShardError, StoreError
from .fingerprint import check_tokenizer, tokenizer_fingerprint, tokenizer_record
from .locations import DEFAULT_STALL_TIMEOUT, StalledRead, read_location
from .manifest import FORMAT_VERSION, Manifest, ShardInfo, finalize_store, load_manifest
from .reader import StoreDataset
from .schema import FIELDS, STEP_KEYS, TEACHER_FIELDS, Field, StoredExample
from .shards import read_shard
from .writer import ShardFile, StoreWriter, shard_name

__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "FIELDS",
    "FORMAT_VERSION",
    "STEP_KEYS",
    "TEACHER_FIELDS",
    "ChunkLayout",
    "DecodedChunk",
    "Field",
    "FingerprintMismatch",
    "Manifest",
    "ManifestError",
    "ShardError",
    "ShardFile",
    "ShardInfo",
    "StalledRead",
    "StoreDataset",
    "StoreError",
    "StoreWriter",
    "StoredExample",
    "check_tokenizer",
    "collate_examples",
    "encode_chunk",
    "finalize_store",
    "load_manifest",
    "read_location",
    "read_shard",
    "shard_name",
    "tokenizer_fingerprint",
    "tokenizer_record",
]
