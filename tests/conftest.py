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
