"""What a store records of how it was made, and whether an output folder may take a run.

The manifest's ``producer`` section names everything that decides a store's bytes: task,
template, teacher (a hub revision, or a local folder's content hash), k, seed, sizes, the
corpus fingerprint and the sentence splitter. A rerun into the same folder resumes only when
it is equal; anything else is refused unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from smash.store.manifest import FORMAT_VERSION, TOPK_TARGETS, load_manifest
from transformers import PreTrainedTokenizerBase

from .shared.templates import verbalizer_ids
from .tasks import IntermediateTask
from .teacher_pass import PassConfig

__all__ = [
    "ConfigMismatch",
    "check_output",
    "clear_output",
    "local_model_fingerprint",
    "producer_config",
    "recorded_teacher_name",
]


class ConfigMismatch(RuntimeError):
    """The output folder holds a store made with another configuration."""


def local_model_fingerprint(path: str | Path) -> str | None:
    """sha256 over a local model folder's config and weight files; None for a hub name.

    A hub model is pinned by its revision (commit hash); a folder has none, so its content
    is hashed: a resumed run must not mix outputs of two different teachers.
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json" or file.suffix in (".safetensors", ".bin"):
            h.update(file.name.encode() + b"\0")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    return "sha256:" + h.hexdigest()


def recorded_teacher_name(out: Path, name: str, fingerprint: str | None) -> str:
    """The name to record for the teacher ``name``.

    A local folder (``fingerprint`` not None) already recorded in ``out`` under another
    spelling (``./t``, ``/abs/t``) keeps that spelling, so that rerunning the command with it
    resumes the store instead of being refused as another configuration.
    """
    if fingerprint is None:
        return name
    for path in sorted(out.glob("manifest*.json")):
        teacher = load_manifest(path, unique_names=False).producer.get("teacher") or {}
        if teacher.get("fingerprint") == fingerprint and teacher.get("name"):
            return teacher["name"]
    return os.path.normpath(name)


def producer_config(
    task: IntermediateTask,
    tokenizer: PreTrainedTokenizerBase,
    teacher: dict,
    cfg: PassConfig,
    corpus_fp: str,
    splitter: dict,
) -> dict:
    """What the manifest records of how the store was made (compared exactly on resume).
    ``teacher``: name, revision, dtype and, for a local folder, its fingerprint."""
    verbalizer = list(task.verbalizer)
    return {
        "task": task.name,
        "task_options": task.config(),
        "template": task.template,
        "max_length": task.max_length,
        "verbalizer": verbalizer,
        "verbalizer_ids": verbalizer_ids(tokenizer, verbalizer) if verbalizer else [],
        # "teacher": labels are the teacher's argmax over the verbalizer (the task's label
        # hook, e.g. sentiment); "task": the task's own labels (e.g. sentence-pair's rule);
        # "labeller": a classifier's (sentiment's --labeller), as the task says
        "label_source": getattr(task, "label_source", None)
        or ("teacher" if verbalizer and hasattr(task, "label") else "task"),
        "teacher": teacher,
        "k": cfg.k,
        "seed": cfg.seed,
        "num_examples": cfg.num_examples,
        "shard_size": cfg.shard_size,
        "token_budget": cfg.token_budget,
        "corpus_fingerprint": corpus_fp,
        "sentences": splitter,
    }


def check_output(
    out: Path, producer: dict, tokenizer: dict, overwrite: bool, targets: dict | None = None
) -> bool:
    """Whether ``out`` holds another configuration's store that ``overwrite`` must clear;
    without ``overwrite`` that is refused. ``tokenizer``: the manifest's tokenizer record
    (``tokenizer_record``); ``targets``: its targets section (default: top-k). Only reads, so
    every rank can call it."""
    ours = {
        **producer,
        "tokenizer": tokenizer,
        "format_version": FORMAT_VERSION,
        "targets": targets or TOPK_TARGETS,
    }
    for path in sorted(out.glob("manifest*.json")):
        existing = load_manifest(path, unique_names=False)  # a part, or the final manifest
        theirs = {
            **existing.producer,
            "tokenizer": existing.tokenizer,
            "format_version": existing.format_version,
            "targets": existing.targets,
        }
        differing = sorted(
            key for key in set(ours) | set(theirs) if ours.get(key) != theirs.get(key)
        )
        if not differing:
            continue
        if not overwrite:
            changes = "; ".join(
                f"{key}: {_short(theirs.get(key))} -> {_short(ours.get(key))}" for key in differing
            )
            older = (
                " (an earlier version of smash started it: finish it with that version)"
                if "format_version" in differing
                else ""
            )
            raise ConfigMismatch(
                f"{out} holds a store made with another configuration (see {path.name}: "
                f"{changes}){older}; pass --overwrite to replace it or choose another --out"
            )
        return True
    return False


def _short(value: object, width: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def clear_output(out: Path, everything: bool) -> None:
    """Remove the half-written shards and manifests (``.NAME.tmp<PID>``) of a killed run and,
    with ``everything``, the old store. Files that are not the store's are left alone. One
    rank calls it, before any rank writes."""
    for tmp in [*out.glob(".shard-*.tmp*"), *out.glob(".manifest*.json.tmp*")]:
        tmp.unlink(missing_ok=True)
    if everything:
        for stale in [*out.glob("shard-*.tar"), *out.glob("manifest*.json")]:
            stale.unlink()
