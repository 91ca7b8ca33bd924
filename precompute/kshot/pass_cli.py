"""``precompute-teacher --task kshot``: the teacher over k-shot splits, one store per task.

    precompute-teacher --task kshot --kshot-data data/k-shot --kshot-tasks SST-2 MNLI \\
        --kshot-seeds 13 21 42 87 100 --kshot-k 16 --teacher roberta-large --out stores/kshot

writes ``stores/kshot/SST-2/`` and ``stores/kshot/MNLI/``, each a complete store (``smash-store
verify`` checks it) whose examples are keyed by (task, K, seed, split, row) (``teacher.py``).
Every split is read and checked before the teacher loads. One process: the splits are small.
A rerun with the same arguments keeps finished stores; another configuration in a task's
folder is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import torch
from smash.store.errors import StoreError
from smash.store.fingerprint import tokenizer_record
from transformers import PreTrainedTokenizerBase

from ..provenance import (
    ConfigMismatch,
    check_output,
    clear_output,
    local_model_fingerprint,
    producer_config,
    recorded_teacher_name,
)
from ..shared.adapters import family_of, load_teacher, max_sequence_length
from ..shared.folder_lock import hold_folder
from ..shared.model_paths import require_folder_or_hub_name
from ..shared.precisions import PRECISIONS
from ..shared.templates import answer_token_id
from ..teacher_pass import PassConfig, finalize, run_teacher_pass
from .data import DataError
from .splits import SEEDS
from .tasks import get_task, per_task
from .teacher import KEY_FIELDS, KShotTeacherTask

__all__ = ["main_kshot"]

# flags of the corpus tasks that a k-shot pass has no use for (refused, not ignored)
_CORPUS_ONLY = ("corpus", "template", "filter_rule", "threshold", "labeller",
                "segment_words", "mask_probability")  # fmt: skip


def main_kshot(args: argparse.Namespace) -> int:
    """Run the pass for ``args`` (``precompute-teacher``'s parsed flags); the exit status."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--task kshot runs in one process (k-shot splits are small)")
        for name in _CORPUS_ONLY:
            if getattr(args, name) is not None:
                flag = "--" + name.replace("_", "-")
                hint = " (use --kshot-template TASK=SPEC)" if name == "template" else ""
                raise ValueError(f"{flag} is for the corpus tasks, not --task kshot{hint}")
        if args.targets != "topk":
            raise ValueError("--task kshot stores top-k targets (--targets topk)")
        if args.kshot_data is None or not args.kshot_tasks:
            raise ValueError("--task kshot needs --kshot-data and --kshot-tasks")
        from ..cli import _remove_if_empty, _target_widths

        width, _ = _target_widths(args)
        templates = per_task(args.kshot_template, "--kshot-template")
        tasks = [
            KShotTeacherTask(
                task,
                args.kshot_data,
                args.kshot_k or [16],
                args.kshot_seeds or list(SEEDS),
                args.kshot_splits or ["train"],
                templates.get(task.name),
                args.max_length,
            )
            for task in (get_task(name) for name in args.kshot_tasks)
        ]
        from transformers import AutoConfig, AutoTokenizer

        require_folder_or_hub_name("--teacher", args.teacher)
        family = family_of(AutoConfig.from_pretrained(args.teacher, revision=args.revision))
        tokenizer = AutoTokenizer.from_pretrained(args.teacher, revision=args.revision)
        answer_token_id(tokenizer)
        if width > len(tokenizer):
            raise ValueError(
                f"--k {width} is larger than the vocabulary of {args.teacher!r} "
                f"({len(tokenizer)} tokens)"
            )
        for task in tasks:
            task.check_room(tokenizer)
        made: list[Path] = []  # the folders this run created
        with ExitStack() as locks:
            try:
                _take_folders(args.out, tasks, locks, made)
                _run_stores(args, tasks, family, tokenizer, width)
            except BaseException:
                locks.close()  # removes the lock files: the folders may be empty again
                for folder in sorted(made, key=lambda f: len(f.parts), reverse=True):
                    _remove_if_empty(folder)  # innermost first; one that holds anything stays
                raise
        return 0
    except (ConfigMismatch, StoreError, DataError, ValueError, OSError) as err:
        print(f"precompute-teacher: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _take_folders(
    root: Path, tasks: list[KShotTeacherTask], locks: ExitStack, made: list[Path]
) -> None:
    """Create and lock every task's ``ROOT/<task folder>`` (``hold_folder``) before the teacher
    loads, adding the folders created to ``made``."""
    for task in tasks:
        out = root / task.task.dirname
        made += [f for f in (out, *out.parents) if not f.exists()]
        out.mkdir(parents=True, exist_ok=True)
        locks.enter_context(hold_folder(out, "precompute-teacher --task kshot"))


def _run_stores(
    args: argparse.Namespace,
    tasks: list[KShotTeacherTask],
    family: str,
    tokenizer: PreTrainedTokenizerBase,
    width: int,
) -> None:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_teacher(args.teacher, family, args.revision, PRECISIONS[args.dtype], device)
    limit = max_sequence_length(model.config)
    for task in tasks:
        if task.max_length > limit:
            raise ValueError(
                f"{task.task.name}: max length {task.max_length} exceeds the {limit} "
                f"positions of {args.teacher!r}; pass --max-length"
            )
    fingerprint = local_model_fingerprint(args.teacher)
    for task in tasks:
        _one_store(args, task, model, tokenizer, family, fingerprint, width, device)


def _one_store(args, task: KShotTeacherTask, model, tokenizer, family, fingerprint, width, device):
    """The teacher pass over one task's splits into ``OUT/<task folder>``."""
    from ..cli import _print_summary

    out = args.out / task.task.dirname
    name = recorded_teacher_name(out, args.teacher, fingerprint)
    tokenizer.name_or_path = name
    teacher = {
        "name": name,
        "dtype": args.dtype,
        "revision": args.revision or getattr(model.config, "_commit_hash", None),
        "fingerprint": fingerprint,
    }
    if family != "masked-lm":
        teacher["family"] = family
    cfg = PassConfig(
        out=out,
        k=width,
        num_examples=len(task),
        shard_size=args.shard_size,
        token_budget=args.token_budget,
        seed=args.seed,
        tokenize_workers=0,  # a few hundred prompts: not worth a process
    )
    producer = producer_config(task, tokenizer, teacher, cfg, task.fingerprint(), {})
    producer["example_keys"] = list(KEY_FIELDS)
    replace = check_output(out, producer, tokenizer_record(tokenizer), args.overwrite)
    clear_output(out, everything=replace)
    summary = run_teacher_pass(task, task.examples(), model, tokenizer, cfg, producer, device)
    finalize(out, summary)
    _print_summary(summary, out, 0)
