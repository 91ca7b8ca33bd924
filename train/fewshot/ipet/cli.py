"""``run-ipet``: iPET's generations of PET models over k-shot splits, and the soft labels of their
unlabelled data as a keyed store for ``evaluate-fewshot --mode ipet / ipet-pt``.

    run-ipet --original data/original --data data/k-shot --tasks SST-2 MNLI --out runs/ipet
    run-ipet ... --out runs/ipet --resume          # after a kill: finished models are kept

Defaults are PET's (RoBERTa-large, patterns 0-3, 3 repetitions, 3 generations, growth 5,
annotators 0.25, 250 steps at lr 1e-5, batch 4 + 4 unlabelled for the MLM term at alpha 0.9999,
max length 256, temperature 2, up to 10,000 unlabelled examples per label).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from smash.precompute.kshot.data import DataError
from smash.precompute.kshot.splits import SEEDS
from smash.precompute.kshot.tasks import get_task
from smash.precompute.kshot.unlabelled import PET_PER_LABEL
from smash.precompute.shared.folder_lock import hold_folder
from smash.precompute.shared.model_paths import require_folder_or_hub_name
from smash.store.errors import StoreError
from smash.store.flags import (
    SEED,
    Distinct,
    DistinctNames,
    FlagError,
    FlagParser,
    integer,
    number,
)
from smash.train.fewshot.ipet.patterns import PATTERNS
from smash.train.fewshot.ipet.pet import PetSettings
from smash.train.fewshot.ipet.run import IpetSettings, run_ipet

__all__ = ["main"]


def _parser() -> FlagParser:
    p = FlagParser(prog="run-ipet", description=__doc__.split("\n\n")[0])
    p.add_argument("--original", required=True, help="the original task files (LM-BFF layout)")
    p.add_argument("--data", required=True, help="k-shot root holding TASK/K-SEED folders")
    p.add_argument("--tasks", nargs="+", action=DistinctNames, required=True,
                   help=f"classification tasks ({', '.join(PATTERNS)}); not STS-B")  # fmt: skip
    p.add_argument("--k", nargs="+", type=integer(1), action=Distinct, default=[16])
    p.add_argument("--seeds", nargs="+", type=SEED, action=Distinct, default=list(SEEDS))
    p.add_argument("--model", default="roberta-large", help="the PET models' masked LM")
    p.add_argument("--out", required=True, help="run folder (the store goes to OUT/store/)")
    p.add_argument("--resume", action="store_true", help="continue a killed run of OUT")
    p.add_argument("--patterns", nargs="+", type=integer(0, 3), action=Distinct,
                   default=[0, 1, 2, 3], help="PET pattern ids")  # fmt: skip
    p.add_argument("--repetitions", type=integer(1), default=3, help="models per pattern (3)")
    p.add_argument("--generations", type=integer(1), default=3, help="iPET generations (3)")
    p.add_argument("--scale-factor", type=number(above=1), default=5.0,
                   help="growth of the training set per generation (PET's d, 5)")  # fmt: skip
    p.add_argument("--fraction", type=number(above=0, maximum=1), default=0.25,
                   help="share of the other models that label a model's examples (0.25)")  # fmt: skip
    p.add_argument("--temperature", type=number(above=0), default=2.0,
                   help="the final classifier's distillation temperature (2)")  # fmt: skip
    p.add_argument("--per-label", type=integer(1), default=PET_PER_LABEL,
                   help="unlabelled examples per label at most (10000)")  # fmt: skip
    p.add_argument("--steps", type=integer(1), default=250, help="steps per PET model (250)")
    p.add_argument("--lr", type=number(above=0), default=1e-5)
    p.add_argument("--batch-size", type=integer(1), default=4)
    p.add_argument("--unlabelled-batch-size", type=integer(1), default=4,
                   help="unlabelled examples per step for the MLM term (4)")  # fmt: skip
    p.add_argument("--alpha", type=number(above=0, maximum=1), default=0.9999,
                   help="the task loss's weight; 1 - alpha the MLM term's (0.9999)")  # fmt: skip
    p.add_argument("--max-length", type=integer(1), default=256, help="PET models' inputs (256)")
    p.add_argument("--student-max-length", type=integer(1),
                   help="the stored student prompts' max length (default: the task's, as "
                   "evaluate-fewshot; give its --max-length)")  # fmt: skip
    p.add_argument("--eval-batch-size", type=integer(1), default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; 2 with one error line on bad input."""
    p = _parser()
    try:
        args = p.parse_args(argv)
    except FlagError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tasks = [get_task(t) for t in args.tasks]
        require_folder_or_hub_name("--model", args.model)
        pet = PetSettings(
            steps=args.steps,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            unlabelled_batch_size=args.unlabelled_batch_size,
            alpha=args.alpha,
            max_length=args.max_length,
            eval_batch_size=args.eval_batch_size,
        )
        settings = IpetSettings(
            model=args.model,
            patterns=tuple(args.patterns),
            repetitions=args.repetitions,
            generations=args.generations,
            scale_factor=args.scale_factor,
            fraction=args.fraction,
            temperature=args.temperature,
            per_label=args.per_label,
            student_max_length=args.student_max_length,
            pet=pet,
        )
        with hold_folder(args.out, "run-ipet"):
            stores = run_ipet(args.out, args.original, args.data, tasks, args.k, args.seeds,
                              settings, torch.device(args.device), args.resume)  # fmt: skip
    except (DataError, StoreError, ValueError, OSError) as err:
        print(f"run-ipet: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for store in stores:
        print(store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
