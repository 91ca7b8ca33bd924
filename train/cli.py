"""``train-student``: distil a student from teacher stores with DeepSpeed.

    train-student --store stores/pairs --out runs/pairs                    # paper defaults
    train-student --config paper-sentiment --store stores/sent --out runs/sent --precision bf16
    train-student --config my.json --store stores/pairs@2 --store stores/sent@1 --out runs/mix
    train-student --config my.json --out runs/mix --resume                 # continue exactly
    train-student --config my.json --out runs/mix --resume --export-only   # export now
    deepspeed --num_gpus 8 --module smash.train.cli --store ... --out ...  # many GPUs
    torchrun --nproc_per_node 8 -m smash.train.cli --store ... --out ...

Flags override the config's keys; ``--config`` is a JSON file or a shipped name
(``paper-sentence-pair``, the default, or ``paper-sentiment``). ``--teacher`` switches to the
online-teacher mode, the only mode that loads a teacher.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smash.kernels.dispatch import IMPLS
from smash.kernels.soft_ce_inputs import TAIL_MODES
from smash.precompute.shared.precisions import PRECISIONS

from .config import ConfigError, load_config
from .objectives import objective_names
from .objectives.ce import LOSS_IMPLS

__all__ = ["build_parser", "main", "parse_store"]


def _error(message: str) -> int:
    """Print ``train-student: error: MESSAGE`` (one line) to stderr; returns exit status 2."""
    print(f"train-student: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _weighted(text: str) -> tuple[str, float | None]:
    """``NAME`` or ``NAME@WEIGHT`` -> (name, weight or None)."""
    name, sep, weight = text.rpartition("@")
    if sep:
        try:
            return name, float(weight)
        except ValueError:
            pass
    return text, None


def parse_store(text: str) -> dict:
    """``PATH`` or ``PATH@WEIGHT`` -> a store entry of the config."""
    path, weight = _weighted(text)
    return {"path": path} if weight is None else {"path": path, "weight": weight}


def objective_value(given: list[tuple[str, float | None]] | None) -> str | dict | None:
    """Repeated ``--objective NAME[@WEIGHT]`` -> the config's ``objective``: one name
    without a weight stays a name, anything else a {name: weight} object (weight 1 if none)."""
    if not given:
        return None
    names = [name for name, _ in given]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            again = ", ".join(f"{n}@{w}" if w is not None else n for n, w in given if n == name)
            raise ConfigError(
                f"--objective {name} is given more than once ({again}); give each objective once"
            )
    if len(given) == 1 and given[0][1] is None:
        return given[0][0]
    return {name: 1.0 if weight is None else weight for name, weight in given}


def build_parser() -> argparse.ArgumentParser:
    """The ``train-student`` argument parser (flags override config keys)."""
    p = argparse.ArgumentParser(
        prog="train-student",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default="paper-sentence-pair",
        help="config JSON, or a shipped name (default: %(default)s)",
    )
    p.add_argument(
        "--store",
        action="append",
        type=parse_store,
        metavar="PATH[@WEIGHT]",
        help="a teacher store to train on (repeat to mix; replaces the config's)",
    )
    p.add_argument("--eval-store", help="held-out store for KL(teacher || student)")
    p.add_argument("--eval-every", type=int)
    p.add_argument(
        "--student", help="AutoModelForMaskedLM path or name, or a T5 (AutoModelForSeq2SeqLM)"
    )
    p.add_argument("--out", dest="output_dir", help="output folder")
    p.add_argument(
        "--objective",
        action="append",
        type=_weighted,
        metavar="NAME[@WEIGHT]",
        help=f"an objective ({', '.join(objective_names())}); repeat to add weighted ones, "
        f"e.g. --objective ce --objective hard@0.5 (replaces the config's)",
    )
    p.add_argument(
        "--loss",
        choices=LOSS_IMPLS,
        help="ce: the LM head's logits then the soft-CE kernel, or the fused-linear kernel",
    )
    p.add_argument("--kernel-impl", choices=IMPLS)
    p.add_argument("--tail", choices=TAIL_MODES)
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--export-every", type=int)
    p.add_argument("--export-name")
    p.add_argument("--log-every", type=int)
    p.add_argument(
        "--record-keys",
        action="store_true",
        default=None,
        help="write the key of every trained sample to keys/rank<r>.jsonl",
    )
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        help="overrides the DeepSpeed config's fp16/bf16 sections",
    )
    p.add_argument("--teacher", help="online-teacher mode: compute targets with this live teacher")
    p.add_argument("--teacher-k", type=int, help="online mode: teacher top-k (default: vocab)")
    p.add_argument(
        "--draws-per-epoch",
        type=int,
        help="sampled and hybrid stores: each epoch another subset of this many of a mask's "
        "N draws (default: all N, every epoch)",
    )
    p.add_argument(
        "--dynamic-masking",
        action="store_true",
        default=None,
        help="online mode, masked-text (--task mlm) stores: mask anew every step",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        metavar="SECONDS",
        help="stop with an error when a store read receives nothing for this long (default 60)",
    )
    p.add_argument(
        "--soft-prompt-length",
        type=int,
        metavar="N",
        help="freeze the student and train only N soft-prompt vectors in front of every input "
        "(PPT's prompt pre-training: 100, with --objective hard); exported beside the model",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--stop-at-step",
        type=int,
        help="checkpoint and stop at this step, keeping the max-steps schedule "
        "(for time-limited job slots; continue with --resume)",
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="with --resume: export the newest checkpoint's student and exit",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from smash.store.errors import StoreError

    from .trainer import Trainer

    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load bars would bury the run's own progress bar
    if args.export_only and not args.resume:
        return _error("--export-only exports a checkpoint: add --resume")
    if args.stop_at_step is not None and args.stop_at_step < 1:
        return _error(f"--stop-at-step must be >= 1, got {args.stop_at_step}")
    overrides = {
        name: getattr(args, name)
        for name in (
            "output_dir",
            "student",
            "loss",
            "kernel_impl",
            "tail",
            "temperature",
            "max_steps",
            "seed",
            "num_workers",
            "checkpoint_every",
            "export_every",
            "export_name",
            "log_every",
            "record_keys",
            "teacher",
            "teacher_k",
            "dynamic_masking",
            "eval_every",
            "stall_timeout",
            "soft_prompt_length",
            "draws_per_epoch",
        )
    }
    overrides["stores"] = args.store
    overrides["eval_store"] = args.eval_store
    trainer = None
    try:
        overrides["objective"] = objective_value(args.objective)
        config = load_config(args.config, **overrides)
        trainer = Trainer(config, precision=args.precision, resume=args.resume)
        trainer.setup()
        if args.export_only:
            print(f"exported {trainer.export()}")
        else:
            step = trainer.train(stop_at_step=args.stop_at_step)
            if trainer.rank == 0:
                done = "finished" if step == config.max_steps else "stopped"
                print(f"{done} at step {step}; outputs in {config.output_dir}")
    except StoreError as err:
        # from a DataLoader worker the text carries the worker's traceback: its last line says it
        return _error(str(err).strip().splitlines()[-1])
    except (ConfigError, ValueError, OSError) as err:
        # OSError: a missing file or folder, or a model path from_pretrained cannot load
        return _error(str(err))
    finally:
        if trainer is not None and hasattr(trainer, "logger"):
            trainer.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
