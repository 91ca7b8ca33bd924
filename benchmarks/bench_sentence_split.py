"""Sentence splitters compared on speed and on a set of hard cases (the choice behind
``precompute/sentences.py``).

    python benchmarks/bench_sentence_split.py [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import blingfire
from smash.precompute.tiny import write_tiny_corpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_result

HARD = [  # (text, expected sentences)
    (
        "Dr. Smith went to Washington D.C. on Jan. 5. He paid $3.50 for coffee!",
        ["Dr. Smith went to Washington D.C. on Jan. 5.", "He paid $3.50 for coffee!"],
    ),
    (
        'Was it good? "Yes," he said. The U.S. economy grew 2.5% in Q3.',
        ["Was it good?", '"Yes," he said.', "The U.S. economy grew 2.5% in Q3."],
    ),
    (
        "See e.g. the appendix. It lists i.e. everything.",
        ["See e.g. the appendix.", "It lists i.e. everything."],
    ),
    (
        "Prices rose 3.4 per cent. Mr. Jones disagreed.",
        ["Prices rose 3.4 per cent.", "Mr. Jones disagreed."],
    ),
]


def splitters() -> dict:
    out = {
        "blingfire": lambda t: [
            s.strip() for s in blingfire.text_to_sentences(t).split("\n") if s.strip()
        ]
    }
    try:
        import pysbd

        seg = pysbd.Segmenter(language="en", clean=False)
        out["pysbd"] = lambda t: [s.strip() for s in seg.segment(t) if s.strip()]
    except ImportError:
        pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    p.add_argument("--docs", type=int, default=2000)
    args = p.parse_args()
    corpus = write_tiny_corpus(Path(tempfile.mkdtemp()) / "c.txt", n_docs=args.docs)
    docs = [d for d in corpus.read_text().split("\n\n") if d.strip()]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    rows = []
    for name, split in splitters().items():
        t0 = time.perf_counter()
        n = sum(len(split(d)) for d in docs)
        seconds = time.perf_counter() - t0
        correct = sum(split(text) == expected for text, expected in HARD)
        rows.append(
            {
                "splitter": name,
                "MB_s": mb / seconds,
                "sentences": n,
                "hard_cases_correct": f"{correct}/{len(HARD)}",
            }
        )
    print(f"{len(docs):,} documents, {mb:.2f} MB\n")
    print(f"{'splitter':<12}{'MB/s':>10}{'sentences':>12}{'hard cases':>12}")
    for r in rows:
        print(
            f"{r['splitter']:<12}{r['MB_s']:>10.2f}{r['sentences']:>12,}"
            f"{r['hard_cases_correct']:>12}"
        )
    write_result(
        "sentence_split", {"documents": len(docs), "MB": mb, "rows": rows}, args.out, "cpu"
    )


if __name__ == "__main__":
    main()
