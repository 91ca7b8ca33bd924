"""``precompute-teacher``: corpus -> intermediate-task examples -> teacher targets -> a store.

    precompute-teacher --task sentence-pair --corpus wiki/ --teacher roberta-large \\
        --out stores/pairs --num-examples 2560000 --k 64 --dtype fp16
    precompute-teacher ... --targets sampled --samples 12   # 12 draws per mask, ids + counts
    precompute-teacher ... --targets hybrid --k 8 --samples 12   # top-8 exact, 12 tail draws
    precompute-teacher --task kshot --kshot-data data/k-shot --kshot-tasks SST-2 MNLI \
        --kshot-seeds 13 21 --kshot-k 16 --teacher roberta-large --out stores/kshot

One process per GPU with ``torchrun --nproc_per_node N`` or the ``deepspeed`` launcher: ranks
take disjoint shards and rank 0 writes the merged ``manifest.json``. Rerunning the same
command after a crash skips the finished shards.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import torch
from smash.store.errors import StoreError
from smash.store.fingerprint import tokenizer_record
from smash.store.flags import (
    PROBABILITY,
    SEED,
    Distinct,
    DistinctNames,
    FlagParser,
    integer,
    number,
    parse_flags,
)

from .corpus import Corpus, CorpusError, HFCorpus, open_corpus
from .kshot.pass_cli import main_kshot
from .kshot.teacher import KSHOT_TASK
from .provenance import (
    ConfigMismatch,
    check_output,
    clear_output,
    local_model_fingerprint,
    producer_config,
    recorded_teacher_name,
)
from .sentences import SentenceSplitter
from .shared.adapters import family_of, load_teacher, max_sequence_length
from .shared.folder_lock import hold_folder
from .shared.model_paths import require_folder_or_hub_name
from .shared.precisions import PRECISIONS
from .shared.templates import answer_token_id, parse_template, require_room
from .tasks import make_task, task_names
from .teacher_pass import (
    NoExamples,
    PassConfig,
    PassSummary,
    finalize,
    nothing_kept,
    run_teacher_pass,
    start_preparer,
)

__all__ = ["build_parser", "main"]


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="precompute-teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--task",
        required=True,
        help=f"intermediate task ({', '.join(task_names())}), or kshot: the downstream "
        "tasks' k-shot splits (soft labels for evaluate-fewshot --mode distill)",
    )
    p.add_argument(
        "--corpus",
        help="(intermediate tasks) text file/folder (blank-line separated documents), .jsonl, .parquet, "
        "or hf:NAME[:CONFIG][@REVISION] (e.g. hf:wikimedia/wikipedia:20231101.en)",
    )
    p.add_argument("--text-field", default="text", help="JSONL field / parquet column")
    p.add_argument(
        "--one-doc-per-file", action="store_true", help="treat each text file as one document"
    )
    p.add_argument(
        "--teacher",
        default="roberta-large",
        help="path or name of an AutoModelForMaskedLM, or of a T5 (AutoModelForSeq2SeqLM: "
        "the answer is the decoder's second token after '<pad> <extra_id_0>')",
    )
    p.add_argument("--revision", default=None, help="model revision (hub models)")
    p.add_argument("--out", required=True, type=Path, help="store directory")
    p.add_argument(
        "--targets",
        choices=("topk", "sampled", "hybrid"),
        default="topk",
        help="what a mask keeps of the teacher: its top-k with the tail mass; --samples "
        "draws from its full distribution (distinct ids and counts: unbiased targets); or "
        "hybrid: the top-k exact and --samples draws from outside it (unbiased, lower variance)",
    )
    p.add_argument(
        "--k",
        type=integer(1),
        default=None,
        help=f"top-k entries kept per mask ({DEFAULT_K['topk']}; hybrid: {DEFAULT_K['hybrid']})",
    )
    p.add_argument(
        "--samples",
        type=integer(1),
        default=None,
        help="--targets sampled or hybrid: draws per mask (12), seeded by --sample-seed, "
        "example and mask",
    )
    p.add_argument(
        "--sample-seed",
        type=SEED,
        default=None,
        help="--targets sampled or hybrid: the draws' seed (default: --seed); another one "
        "draws other tokens for the same examples",
    )
    p.add_argument(
        "--proposal-temperature",
        type=number(above=0),
        default=None,
        help="--targets sampled: draw from the teacher at this temperature (1.0; above 1 "
        "reaches further into the tail) and store each id's importance ratio",
    )
    p.add_argument(
        "--num-examples",
        type=integer(1),
        default=100_000,
        help="candidate examples (before a teacher filter), rounded down to a "
        "whole number of the task's groups (sentence-pair: 3, one per label)",
    )
    p.add_argument("--shard-size", type=integer(1), default=10_000, help="candidates per shard")
    p.add_argument(
        "--token-budget",
        type=integer(1),
        default=16_384,
        help="padded tokens per teacher batch (length-bucketed)",
    )
    p.add_argument(
        "--tokenize-workers",
        type=integer(0),
        default=None,
        help="processes tokenizing shards ahead of the teacher (default: the CPUs "
        "per rank minus one, at most 8; 0: in a thread)",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default="fp16")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--min-words", type=integer(1), default=4, help="shortest sentence kept")
    p.add_argument("--max-words", type=integer(1), default=60, help="longest sentence kept")
    p.add_argument("--template", default=None, help="override the task's LM-BFF template")
    p.add_argument(
        "--max-length", type=integer(1), default=None, help="override the task's max length"
    )
    p.add_argument("--filter-rule", default=None, help="sentiment: max-prob | polar | none")
    p.add_argument("--threshold", type=PROBABILITY, default=None, help="sentiment filter threshold")
    p.add_argument(
        "--labeller",
        metavar="PATH",
        help="sentiment: label and filter with this 5-class AutoModelForSequenceClassification "
        "(e.g. a RoBERTa-base fine-tuned on Yelp-5: 1..5 stars -> terrible..great) instead of "
        "the teacher's label words (Vanilla PPT's data)",
    )
    p.add_argument(
        "--segment-words", type=integer(1), default=None, help="mlm: words per text segment (300)"
    )
    p.add_argument(
        "--mask-probability",
        type=number(above=0, maximum=1),
        default=None,
        help="mlm: share of each segment's tokens masked (0.15; 80/10/10 as BERT)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="import this module first (it registers user-defined tasks)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a store of another configuration in --out"
    )
    # A rerun always compares finished shards' sha256 now; the flag that asked for it is
    # still accepted, so that scripts written for earlier versions keep working.
    p.add_argument("--verify-existing", action="store_true", help=argparse.SUPPRESS)
    kshot = p.add_argument_group("--task kshot: one store per task, OUT/<task folder>/")
    kshot.add_argument("--kshot-data", type=Path, help="k-shot root holding TASK/K-SEED folders")
    kshot.add_argument(
        "--kshot-tasks", nargs="+", action=DistinctNames, help="downstream tasks (SST-2 MNLI ...)"
    )
    kshot.add_argument(
        "--kshot-seeds",
        nargs="+",
        type=SEED,
        action=Distinct,
        help="the splits' seeds (13 21 42 87 100)",
    )
    kshot.add_argument(
        "--kshot-k",
        type=integer(1),
        nargs="+",
        action=Distinct,
        help="examples per label (16); several K (16 32 64 128 256) for a learning curve",
    )
    kshot.add_argument(
        "--kshot-splits",
        nargs="+",
        action=Distinct,
        choices=("train", "dev"),
        help="which files get soft labels (train, what distill trains on)",
    )
    kshot.add_argument(
        "--kshot-template",
        action="append",
        default=[],
        metavar="TASK=SPEC",
        help="a task's template, as evaluate-fewshot --template (default: the paper's Table 6)",
    )
    p.add_argument(
        "--local_rank", "--local-rank", type=integer(0), default=None, help=argparse.SUPPRESS
    )  # passed by the deepspeed launcher; env is used
    return p


def _task_options(args: argparse.Namespace) -> dict:
    options = {
        "template": args.template,
        "max_length": args.max_length,
        "filter_rule": args.filter_rule,
        "threshold": args.threshold,
        "labeller": args.labeller,
        "segment_words": args.segment_words,
        "mask_probability": args.mask_probability,
    }
    return {k: v for k, v in options.items() if v is not None}


def _print_summary(summary: PassSummary, out: Path, rank: int) -> None:
    rate = summary.examples / max(summary.wall_s, 1e-9)
    print(
        f"[rank {rank}] {summary.examples:,} examples through the teacher, {summary.kept:,} "
        f"kept, {summary.shards} shards written ({summary.skipped_shards} already done), "
        f"{summary.bytes / 1e6:,.2f} MB, padding efficiency "
        f"{summary.padding_efficiency:.3f}, {summary.wall_s:,.1f} s ({rate:,.1f} ex/s, "
        f"{summary.real_tokens / max(summary.wall_s, 1e-9):,.0f} tokens/s)"
    )
    if summary.redone_shards:
        print(
            f"[rank {rank}] written again ({len(summary.redone_shards)}, recorded as finished "
            f"but missing or damaged): {', '.join(summary.redone_shards)}"
        )
    if summary.candidates < summary.requested:
        print(
            f"[rank {rank}] note: the corpus ran out after {summary.candidates:,} of the "
            f"{summary.requested:,} examples asked of this rank; use a larger corpus for more"
        )
    if summary.store_shards:
        print(
            f"store {out}: {summary.store_examples:,} examples in {summary.store_shards} "
            f"shards, {summary.store_bytes / 1e6:,.2f} MB -> {out / 'manifest.json'}"
        )


def _read_first_document(corpus: Corpus | HFCorpus) -> None:
    """Read one document: a missing field, an unreadable file or a missing package raises."""
    documents = iter(corpus)  # a generator for every corpus kind
    next(documents)
    documents.close()


def _import_plugins(modules: list[str]) -> None:
    """Import user modules that register tasks; the working folder is searched first."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"--plugin {module}: cannot import it ({err}); give a module name "
                f"importable from the working folder or PYTHONPATH"
            ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_flags(build_parser(), argv)
    if args is None:
        return 2
    if args.verify_existing:
        print(
            "precompute-teacher: note: --verify-existing is no longer needed: a rerun always "
            "compares the sha256 of every finished shard with its record",
            file=sys.stderr,
        )
    if args.task == KSHOT_TASK:
        return main_kshot(args)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    preparer, created, lock = None, False, ExitStack()
    try:
        _import_plugins(args.plugin)
        if args.corpus is None:
            raise ValueError(f"--task {args.task} reads a --corpus")
        kshot = ("kshot_data", "kshot_tasks", "kshot_seeds", "kshot_k", "kshot_splits")
        given = [f"--{n.replace('_', '-')}" for n in kshot if getattr(args, n) is not None]
        if given or args.kshot_template:
            flags = ", ".join(given + ["--kshot-template"] * bool(args.kshot_template))
            raise ValueError(f"{flags}: for --task kshot, not --task {args.task}")
        width, samples = _target_widths(args)
        if args.min_words > args.max_words:
            raise ValueError(
                f"--min-words {args.min_words} is more than --max-words {args.max_words}"
            )
        splitter = SentenceSplitter(args.min_words, args.max_words)
        task = make_task(args.task, splitter, **_task_options(args))
        if task.template is not None:
            parse_template(task.template)  # a bad template fails before anything is made
        group = getattr(task, "group_size", 1)
        if args.num_examples < group:
            raise ValueError(
                f"--num-examples {args.num_examples} makes no example: task {args.task} takes "
                f"examples in groups of {group} (one per label); ask for at least {group}"
            )
        if rank == 0 and args.num_examples % group:
            print(
                f"precompute-teacher: note: --task {args.task} takes examples in groups of "
                f"{group}; making {args.num_examples - args.num_examples % group:,}",
                file=sys.stderr,
            )
        # The folder is taken now, before the corpus and the teacher load: a second run into
        # it is refused at once (rank 0 holds the lock; see shared/folder_lock.py).
        created = not args.out.exists()
        args.out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            lock.enter_context(hold_folder(args.out, "precompute-teacher"))
        corpus = open_corpus(
            args.corpus, text_field=args.text_field, one_doc_per_file=args.one_doc_per_file
        )
        corpus_fp = corpus.fingerprint()
        _read_first_document(corpus)  # a bad corpus fails now, not after the teacher loads
        if isinstance(corpus, HFCorpus) and not corpus.local and "@" not in corpus.spec:
            print(
                f"precompute-teacher: note: {args.corpus} names no @REVISION; the store "
                f"records the dataset by name only",
                file=sys.stderr,
            )
        device = torch.device(
            args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        )
        if device.type == "cuda":  # CUDA events, streams and pinned copies use this device
            torch.cuda.set_device(device)
        from transformers import AutoConfig, AutoTokenizer

        require_folder_or_hub_name("--teacher", args.teacher)
        family = family_of(AutoConfig.from_pretrained(args.teacher, revision=args.revision))
        tokenizer = AutoTokenizer.from_pretrained(args.teacher, revision=args.revision)
        answer_token_id(tokenizer)  # raises when prompts would have no answer slot
        if task.template is not None:
            require_room(task.template, tokenizer, task.max_length)
        if family == "t5" and task.template is None:
            raise ValueError(
                f"task {task.name!r} masks raw text, which needs a masked LM; {args.teacher!r} "
                f"is a T5 (encoder-decoder) model: use a template task"
            )
        if width + (samples or 0) > len(tokenizer):
            option = {"topk": "--k", "sampled": "--samples", "hybrid": "--k + --samples"}
            raise ValueError(
                f"{option[args.targets]} {width + (samples or 0)} is larger than the "
                f"vocabulary of {args.teacher!r} ({len(tokenizer)} tokens)"
            )
        cfg = PassConfig(
            out=args.out,
            k=width,
            samples=samples,
            targets=args.targets,
            sample_seed=args.sample_seed,
            proposal_temperature=args.proposal_temperature or 1.0,
            num_examples=args.num_examples,
            shard_size=args.shard_size,
            token_budget=args.token_budget,
            seed=args.seed,
            rank=rank,
            world_size=world,
            tokenize_workers=args.tokenize_workers
            if args.tokenize_workers is not None
            else min(8, max(1, (os.cpu_count() or 2) // world - 1)),
        )
        preparer = start_preparer(task, tokenizer, cfg)  # starts while the model loads
        model = load_teacher(args.teacher, family, args.revision, PRECISIONS[args.dtype], device)
        if getattr(task, "labeller", None) is not None:
            task.labeller.load(device, PRECISIONS[args.dtype])
        if task.max_length > max_sequence_length(model.config):
            raise ValueError(
                f"task {task.name!r} makes examples of up to {task.max_length} "
                f"tokens, but {args.teacher!r} takes at most "
                f"{max_sequence_length(model.config)}; pass --max-length"
            )
        fingerprint = local_model_fingerprint(args.teacher)
        name = recorded_teacher_name(args.out, args.teacher, fingerprint)
        tokenizer.name_or_path = name  # the manifest's tokenizer record names it alike
        teacher = {
            "name": name,
            "dtype": args.dtype,
            "revision": args.revision or getattr(model.config, "_commit_hash", None),
            "fingerprint": fingerprint,
        }
        if family != "masked-lm":  # masked-LM stores keep the record they always had
            teacher["family"] = family
        producer = producer_config(task, tokenizer, teacher, cfg, corpus_fp, splitter.config())
        distributed = world > 1
        if distributed and not torch.distributed.is_initialized():
            # A rank whose shards were all finished by an earlier run waits at the final
            # barrier for the whole pass of the others: far longer than the default timeout.
            torch.distributed.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(days=1)
            )
        # Every rank checks (and refuses alike); then rank 0 alone clears, between barriers.
        replace = check_output(
            args.out, producer, tokenizer_record(tokenizer), args.overwrite, cfg.targets_record()
        )
        if distributed:
            torch.distributed.barrier()
        if rank == 0:
            clear_output(args.out, everything=replace)
        if distributed:
            torch.distributed.barrier()
        summary = run_teacher_pass(
            task,
            task.examples(corpus, args.seed),
            model,
            tokenizer,
            cfg,
            producer,
            device,
            preparer,
        )
        if distributed:
            torch.distributed.barrier()
        if rank == 0:
            finalize(args.out, summary)
            if summary.store_examples == 0:  # every example was filtered out
                clear_output(args.out, everything=True)
                raise NoExamples(nothing_kept(task, summary, world))
        _print_summary(summary, args.out, rank)
        if distributed:
            torch.distributed.destroy_process_group()
        return 0
    except (CorpusError, ConfigMismatch, StoreError, ValueError, OSError) as err:
        if preparer is not None:
            preparer.close(wait=False)
        lock.close()  # removes the lock file: the folder may be empty again
        if created:
            _remove_if_empty(args.out)
        # Under torchrun / the deepspeed launcher, this rank's exit ends the other ranks too.
        print(f"precompute-teacher: error: {err}", file=sys.stderr)
        return 2
    finally:
        lock.close()


DEFAULT_K = {"topk": 64, "hybrid": 8}
DEFAULT_SAMPLES = 12


def _target_widths(args: argparse.Namespace) -> tuple[int, int | None]:
    """(entries per mask, a hybrid store's tail draws): --k for top-k targets, --samples for
    sampled ones, both for hybrid ones; a flag the kind does not take is refused."""
    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    if args.targets == "topk":
        if (args.samples, args.sample_seed, args.proposal_temperature) != (None, None, None):
            raise ValueError(
                "--samples, --sample-seed and --proposal-temperature are for --targets sampled "
                "or hybrid; top-k targets take --k"
            )
        return DEFAULT_K["topk"] if args.k is None else args.k, None
    if args.targets == "hybrid":
        if args.proposal_temperature is not None:
            raise ValueError(
                "--proposal-temperature is for --targets sampled; hybrid targets draw their "
                "tail from the teacher itself"
            )
        return DEFAULT_K["hybrid"] if args.k is None else args.k, samples
    if args.k is not None:
        raise ValueError("--k is for --targets topk or hybrid; sampled targets take --samples")
    return samples, None


def _remove_if_empty(out: Path) -> None:
    """Leave no empty output folder behind a run that wrote nothing (another rank may have
    removed it already, or may still write into it)."""
    try:
        out.rmdir()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
