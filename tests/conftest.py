"""Shared test set-up: CPU-only Triton, offline HF, and tiny locally built models."""

import os

# Must be set before any module that defines Triton kernels is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# MKL (torch's CPU BLAS) may round differently from run to run with memory alignment and
# thread count; its strict reproducibility mode makes the CPU teacher values of two runs
# (in this process or in the subprocesses that inherit this environment) bitwise equal.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

# DeepSpeed's logger writes to the sys.stdout of the moment it is first imported. Imported first
# inside a test that captures with capsys, it would keep that test's stream, closed afterwards,
# and every later DeepSpeed log line would print a "Logging error" traceback into another
# test's output: import it now, while sys.stdout is the session's.
import deepspeed  # noqa: F401
import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """Paths of a generated corpus, a BPE tokenizer, a tiny teacher and a smaller student."""
    from smash.precompute.tiny import build_tiny_setup

    return build_tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["tokenizer"])


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, tiny) -> dict:
    """Paths of a unigram T5 tokenizer trained on the tiny corpus, a tiny T5 'teacher' and a
    smaller T5 'student' (each folder holds its tokenizer)."""
    from smash.precompute.tiny_t5 import build_tiny_t5, train_tiny_t5_tokenizer

    root = tmp_path_factory.mktemp("tiny_t5")
    tok = train_tiny_t5_tokenizer([tiny["corpus"]], root / "tokenizer")
    build_tiny_t5(tok, root / "teacher", d_model=64, layers=2, heads=4, seed=0)
    build_tiny_t5(tok, root / "student", d_model=32, layers=1, heads=2, seed=1)
    return {
        "tokenizer": root / "tokenizer",
        "teacher": root / "teacher",
        "student": root / "student",
    }


@pytest.fixture(scope="session")
def dropout_student(tiny, tmp_path_factory):
    """The tiny student with the paper's dropout (0.1): tiny models default to none, which
    hides what dropout changes (RNG states to restore, streams to keep apart)."""
    from train_support import student_with_dropout

    return student_with_dropout(tiny, tmp_path_factory.mktemp("dropout") / "student")
