"""Regenerate ``original/``: small task files written for this project in each task's format.

Run ``python tests/data/kshot/make_fixtures.py``; the output is deterministic. The sentences are
generated from a few word lists, and the SST-2 fixture is deliberately easy (positive rows say
"great" or "good", negative rows "terrible" or "bad") so a tiny model can beat chance on it.
Column layouts follow the GLUE/LM-BFF files (MNLI and SNLI have more label columns in dev
than in train); SST-5, MR and CR are header-less ``label,sentence`` CSVs with quoted commas.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

ROOT = Path(__file__).parent / "original"
NOUNS = ["movie", "film", "story", "river", "boat", "bridge", "garden", "book", "piano", "ship"]
SUBJECTS = ["The", "This", "That", "Our", "One"]
WORDS = {0: ["terrible", "bad"], 1: ["great", "good"]}
SST5 = ["terrible", "bad", "okay", "good", "great"]


def sentence(rng: random.Random, adjective: str) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(NOUNS)} was {adjective}."


def pair(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NOUNS, 2)
    return f"The {a} is near the {b}.", f"A {b} was by the {a}."


def tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


def csv_file(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def balanced(labels: list[str], per_label: int, rng: random.Random) -> list[str]:
    out = [lab for lab in labels for _ in range(per_label)]
    rng.shuffle(out)
    return out


def main() -> None:
    rng = random.Random(2024)
    sizes = {"train": 10, "dev": 4, "dev_matched": 4, "dev_mismatched": 4, "test": 4}

    for split, n in (("train", 20), ("dev", 20)):
        rows = [[sentence(rng, rng.choice(WORDS[int(y)])), y] for y in balanced(["0", "1"], n, rng)]
        tsv(ROOT / "SST-2" / f"{split}.tsv", ["sentence", "label"], rows)

    for task, labels in (("sst-5", SST5), ("mr", None), ("cr", None)):
        for split in ("train", "test"):
            ys = balanced([str(i) for i in range(len(labels or "ab"))], sizes[split], rng)
            rows = []
            for y in ys:
                adjective = labels[int(y)] if labels else rng.choice(WORDS[int(y)])
                text = sentence(rng, adjective)
                if rng.random() < 0.3:
                    text = f'Honestly, "{text[:-1]}", it said.'
                rows.append([y, text])
            csv_file(ROOT / task / f"{split}.csv", rows)

    nli = ["contradiction", "entailment", "neutral"]
    for task, first, splits in (
        ("MNLI", 8, ("train", "dev_matched", "dev_mismatched")),
        ("SNLI", 7, ("train", "dev")),
    ):
        for split in splits:
            extra = 1 if split == "train" else 5
            header = (
                ["index", "promptID", "pairID", "genre"]
                if task == "MNLI"
                else ["index", "captionID", "pairID"]
            )
            assert len(header) + 4 == first  # sentence1 sits at column `first`
            header += [
                "sentence1_binary_parse",
                "sentence2_binary_parse",
                "sentence1_parse",
                "sentence2_parse",
                "sentence1",
                "sentence2",
            ]
            header += [f"label{i + 1}" for i in range(extra)] + ["gold_label"]
            rows = []
            for i, y in enumerate(balanced(nli, sizes[split], rng)):
                a, b = pair(rng)
                meta = (
                    [str(i), str(100 + i), f"{100 + i}n", "fiction"]
                    if task == "MNLI"
                    else [str(i), f"{i}.jpg#0", f"{i}.jpg#0r1n"]
                )
                rows.append(
                    meta
                    + [f"( {a} )", f"( {b} )", f"(ROOT {a})", f"(ROOT {b})", a, b]
                    + [y] * extra
                    + [y]
                )
            tsv(ROOT / task / f"{split}.tsv", header, rows)

    for task in ("QNLI", "RTE"):
        for split in ("train", "dev"):
            rows = [
                [str(i), *pair(rng), y]
                for i, y in enumerate(balanced(["entailment", "not_entailment"], sizes[split], rng))
            ]
            header = (
                ["index", "question", "sentence", "label"]
                if task == "QNLI"
                else ["index", "sentence1", "sentence2", "label"]
            )
            tsv(ROOT / task / f"{split}.tsv", header, rows)

    for split in ("train", "dev"):
        rows = [
            [y, str(1000 + i), str(2000 + i), *pair(rng)]
            for i, y in enumerate(balanced(["0", "1"], sizes[split], rng))
        ]
        tsv(
            ROOT / "MRPC" / f"{split}.tsv",
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            rows,
        )
        rows = [
            [str(i), str(2 * i), str(2 * i + 1), *pair(rng), y]
            for i, y in enumerate(balanced(["0", "1"], sizes[split], rng))
        ]
        tsv(
            ROOT / "QQP" / f"{split}.tsv",
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            rows,
        )
        rows = []
        for i in range(2 * sizes[split]):
            score = f"{rng.uniform(0.0, 5.0):.3f}"
            rows.append(
                [str(i), "main-news", "2012", "test", str(i), "none", "none", *pair(rng), score]
            )
        tsv(
            ROOT / "STS-B" / f"{split}.tsv",
            [
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
