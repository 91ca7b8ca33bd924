"""``make-augment``: grow k-shot training sets by back-translation (the ``distill bt10``
baseline of SMASH's Table 2: "use back-translation to augment the training set 10 times").

    make-augment --data data/k-shot --out data/k-shot-bt10 --tasks SST-2 MNLI \\
        --seeds 13 21 42 87 100 --k 16 --copies 10 \\
        --forward Helsinki-NLP/opus-mt-en-de --backward Helsinki-NLP/opus-mt-de-en --device cuda

Every sentence of a training file goes through the forward model (``--copies`` sampled
translations) and each translation back through the backward model (one sampled translation);
a sentence pair has each of its sentences translated. The output is a complete LM-BFF-layout
k-shot folder: ``train`` holds the original rows unchanged, then ``--copies`` blocks of copies
(copy 1 of every row, copy 2, ...), each a row of the task's format with the original's label
and other columns; ``dev`` and ``test`` files are copied byte for byte. A sidecar
``train.augment.json`` beside each ``train`` file says which rows are copies (``rows``:
``[original row, copy]`` for each row after the ``originals``) and how they were made;
LM-BFF-layout readers (``load_kshot``) read the folder as it is.

Sampling is seeded per batch from ``--seed`` and the batch's sentences, so the files are a
pure function of (seed, inputs, models, batch size, generation flags).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from smash.store.flags import (
    SEED,
    Distinct,
    DistinctNames,
    FlagParser,
    integer,
    number,
    parse_flags,
)
from tqdm.auto import tqdm

from .data import DataError, kshot_dir, read_rows
from .tasks import Task, get_task

__all__ = [
    "AUGMENT_SIDECAR",
    "BackTranslator",
    "build_parser",
    "main",
    "make_augment",
    "read_augment_record",
]

AUGMENT_SIDECAR = "train.augment.json"
FORMAT = "smash-kshot-augment"


def read_augment_record(folder: str | Path) -> dict[str, Any]:
    """The sidecar of an augmented split folder; DataError naming it when absent or bad."""
    path = Path(folder) / AUGMENT_SIDECAR
    if not path.is_file():
        raise DataError(
            f"{folder}: not an augmented split (no {AUGMENT_SIDECAR}; make-augment writes one)"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} record")
    if not isinstance(record.get("originals"), int) or not isinstance(record.get("rows"), list):
        raise DataError(f"{path}: lacks 'originals' (a count) or 'rows' (a list)")
    return record


def _batch_seed(seed: int, stage: str, texts: Sequence[str]) -> int:
    h = hashlib.sha256(f"{seed}\0{stage}\0".encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    return int.from_bytes(h.digest()[:8], "little") >> 1


class BackTranslator:
    """Two ``AutoModelForSeq2SeqLM`` translation models (source -> pivot -> source), sampled."""

    def __init__(
        self,
        forward: str,
        backward: str,
        device: str = "cpu",
        batch_size: int = 32,
        max_new_tokens: int = 128,
        top_k: int = 50,
        temperature: float = 1.0,
        seed: int = 0,
    ):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if batch_size < 1 or max_new_tokens < 1 or top_k < 0 or not temperature > 0:
            raise ValueError(
                "--batch-size, --max-new-tokens and --temperature must be positive, --top-k "
                f"at least 0; got {batch_size}, {max_new_tokens}, {temperature}, {top_k}"
            )
        self.device = torch.device(device)
        self.models = [
            (
                AutoTokenizer.from_pretrained(name),
                AutoModelForSeq2SeqLM.from_pretrained(name).to(self.device).eval(),
            )
            for name in (forward, backward)
        ]
        self.names = (forward, backward)
        self.batch_size, self.seed = batch_size, seed
        self.generation = {
            "do_sample": True,
            "top_k": top_k,
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
        }

    def config(self) -> dict[str, Any]:
        return {
            "forward": self.names[0],
            "backward": self.names[1],
            "seed": self.seed,
            "batch_size": self.batch_size,
            "generation": self.generation,
        }

    @torch.inference_mode()
    def _translate(self, stage: int, texts: list[str], copies: int, bar) -> list[str]:
        """``copies`` sampled translations of each text, text-major."""
        tokenizer, model = self.models[stage]
        out: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            torch.manual_seed(_batch_seed(self.seed, f"{stage}/{copies}", batch))
            enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True)
            ids = model.generate(
                **enc.to(self.device), num_return_sequences=copies, **self.generation
            )
            out += tokenizer.batch_decode(ids, skip_special_tokens=True)
            bar.update(len(batch))
        return out

    def round_trip(self, texts: list[str], copies: int, desc: str = "back-translation"):
        """``copies`` back-translations of each text: a list (per text) of lists (per copy)."""
        with tqdm(total=len(texts) * (1 + copies), desc=desc, unit="sent") as bar:
            pivots = self._translate(0, texts, copies, bar)
            back = self._translate(1, pivots, 1, bar)
        return [back[i * copies : (i + 1) * copies] for i in range(len(texts))]


def _clean(text: str) -> str:
    """One field of a row: no tab or line break (the layout's separators)."""
    return " ".join(text.split())


def _augment_split(task: Task, src: Path, dst: Path, translator: BackTranslator, copies: int):
    """Write ``dst`` from ``src``: under a temporary name, renamed into place when complete,
    so a killed run leaves no half-written split folder."""
    train = src / f"train.{task.fmt}"
    rows = [row for _, row in read_rows(task, train)]
    texts = [row[c] for row in rows for c in task.text_columns]
    back = translator.round_trip(texts, copies, desc=f"{src.parent.name}/{src.name}")
    ncol = len(task.text_columns)
    final, dst = dst, dst.with_name(f".{dst.name}.tmp{os.getpid()}")  # published when complete
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for file in sorted(src.iterdir()):  # dev and test unchanged
        if file.is_file() and file.name != train.name and file.name != AUGMENT_SIDECAR:
            shutil.copyfile(file, dst / file.name)
    original = train.read_text(encoding="utf-8")
    if original and not original.endswith("\n"):
        original += "\n"
    added, record_rows = [], []
    for copy in range(copies):
        for i, row in enumerate(rows):
            new = list(row)
            for j, c in enumerate(task.text_columns):
                new[c] = _clean(back[i * ncol + j][copy])
            added.append(new)
            record_rows.append([i, copy + 1])
    buf = io.StringIO()
    if task.fmt == "tsv":
        buf.writelines("\t".join(row) + "\n" for row in added)
    else:
        csv.writer(buf, lineterminator="\n").writerows(added)
    (dst / train.name).write_text(original + buf.getvalue(), encoding="utf-8")
    record = {
        "format": FORMAT,
        "version": 1,
        "source": str(train),
        "source_sha256": _sha256(train),
        "originals": len(rows),
        "copies": copies,
        **translator.config(),
        "rows": record_rows,
    }
    (dst / AUGMENT_SIDECAR).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if final.exists():  # --overwrite
        shutil.rmtree(final)
    os.replace(dst, final)


def make_augment(
    data: str | Path,
    out: str | Path,
    tasks: Sequence[Task],
    seeds: Sequence[int],
    k: int,
    translator: BackTranslator,
    copies: int = 10,
    overwrite: bool = False,
) -> list[Path]:
    """Write the augmented splits of ``tasks`` x ``seeds`` under ``out``; the folders."""
    if copies < 1:
        raise ValueError(f"--copies must be positive, got {copies}")
    todo = []
    for task in tasks:
        for seed in seeds:
            src, dst = kshot_dir(data, task, k, seed), kshot_dir(out, task, k, seed)
            if not src.is_dir():
                raise DataError(f"{src}: no {k}-shot split of {task.name} for seed {seed}")
            if src.resolve() == dst.resolve():
                raise ValueError(f"--out {out} is --data: write the augmented splits elsewhere")
            list(read_rows(task, src / f"train.{task.fmt}"))  # every input checked first
            for stale in dst.parent.glob(f".{dst.name}.tmp*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
            if not overwrite and _made_alike(dst, src / f"train.{task.fmt}", copies, translator):
                continue  # a rerun (after a kill) keeps the splits already made alike
            if dst.exists() and any(dst.iterdir()) and not overwrite:
                raise ValueError(
                    f"{dst} exists, made from another file or with other settings; pass "
                    "--overwrite to replace it"
                )
            todo.append((task, src, dst))
    for task, src, dst in todo:
        _augment_split(task, src, dst, translator, copies)
    return [kshot_dir(out, t, k, s) for t in tasks for s in seeds]


def _made_alike(dst: Path, train: Path, copies: int, translator: BackTranslator) -> bool:
    """Whether ``dst`` is a finished augmentation of ``train`` with these settings."""
    try:
        record = json.loads((dst / AUGMENT_SIDECAR).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    made = {k: record.get(k) for k in ("source_sha256", "copies", *translator.config())}
    asked = {"source_sha256": _sha256(train), "copies": copies, **translator.config()}
    return json.loads(json.dumps(made)) == json.loads(json.dumps(asked))


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def build_parser() -> FlagParser:
    p = FlagParser(prog="make-augment", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="k-shot root holding TASK/K-SEED folders")
    p.add_argument("--out", required=True, help="root for the augmented TASK/K-SEED folders")
    p.add_argument("--tasks", nargs="+", action=DistinctNames, required=True)
    p.add_argument("--seeds", nargs="+", type=SEED, action=Distinct, default=[13, 21, 42, 87, 100])
    p.add_argument("--k", type=integer(1), default=16)
    p.add_argument("--copies", type=integer(1), default=10, help="back-translations per row (10)")
    p.add_argument("--forward", default="Helsinki-NLP/opus-mt-en-de", help="source -> pivot")
    p.add_argument("--backward", default="Helsinki-NLP/opus-mt-de-en", help="pivot -> source")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=integer(1), default=32, help="sentences per generate call")
    p.add_argument(
        "--max-new-tokens",
        type=integer(1),
        default=128,
        help="longest translation, in tokens (128; raise it for long premises, e.g. RTE's)",
    )
    p.add_argument(
        "--top-k", type=integer(0), default=50, help="sampling: top-k (0: the whole vocab)"
    )
    p.add_argument("--temperature", type=number(above=0), default=1.0)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_flags(build_parser(), argv)
    if args is None:
        return 2
    try:
        tasks = [get_task(name) for name in args.tasks]
        for task in tasks:
            for seed in args.seeds:
                src = kshot_dir(args.data, task, args.k, seed)
                if not src.is_dir():
                    raise DataError(f"{src}: no {args.k}-shot split of {task.name} for seed {seed}")
        translator = BackTranslator(
            args.forward,
            args.backward,
            args.device,
            args.batch_size,
            args.max_new_tokens,
            args.top_k,
            args.temperature,
            args.seed,
        )
        written = make_augment(
            args.data, args.out, tasks, args.seeds, args.k, translator, args.copies, args.overwrite
        )
    except (DataError, ValueError, OSError) as err:
        print(f"make-augment: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for folder in written:
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
