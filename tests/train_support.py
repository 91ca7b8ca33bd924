"""Shared pieces of the trainer tests: stores from the real teacher pass, tiny configs.

Stores are written by ``precompute-teacher`` on the tiny teacher, with k = vocabulary where
a test needs the exact teacher distribution, once per session for all ``test_train*``
modules (each wraps the builders below in its own fixture).
"""

import json
import os
import shutil
import socket
from pathlib import Path

import torch

VOCAB = 600  # the tiny tokenizer's size (smash.precompute.tiny)
PAIR_EXAMPLES = 240


def precompute(task, corpus, teacher, out, *, k, n, seed=0, shard_size=40, extra=()):
    from smash.precompute.cli import main

    width = [] if k is None else ["--k", str(k)]  # None: sampled targets (extra --samples)
    argv = ["--task", task, "--corpus", str(corpus), "--teacher", str(teacher), "--out", str(out),
            *width, "--num-examples", str(n), "--seed", str(seed), "--dtype", "fp32",
            "--device", "cpu", "--shard-size", str(shard_size), *extra]  # fmt: skip
    assert main(argv) == 0
    return Path(out)


def tiny_config(out, student, stores, **overrides):
    """A train-student config dict for CPU tests: micro-batch 4, accumulation 2, ZeRO-1."""
    config = {
        "student": str(student),
        "output_dir": str(out),
        "stores": [{"path": str(p), "weight": w} for p, w in stores],
        "max_steps": 8,
        "seed": 3,
        "num_workers": 0,
        "checkpoint_every": 0,
        "log_every": 1,
        "deepspeed": {
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 2,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 1},
            "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {
                    "total_num_steps": "auto",
                    "warmup_num_steps": 2,
                    "warmup_max_lr": "auto",
                    "warmup_type": "linear",
                },
            },
        },
    }
    deepspeed = overrides.pop("deepspeed", {})
    config.update(overrides)
    config["deepspeed"].update(deepspeed)
    return config


def assert_offline_equals_online(out, student, store, teacher, model_class, **overrides):
    """train-student from ``store`` and with ``teacher`` loaded (whole vocabulary): the same
    loss at each of 3 steps and the same exported weights."""
    from smash.train.cli import main as train_student
    from smash.train.metrics import read_metrics

    runs = {}
    for mode, live in (("offline", None), ("online", str(teacher))):
        config = tiny_config(out / mode, student, [(store, 1.0)], max_steps=3, teacher=live,
                             **overrides)  # fmt: skip
        assert train_student(["--config", write_config(out / f"{mode}.json", config)]) == 0
        runs[mode] = (
            [r["loss"] for r in read_metrics(out / mode) if "loss" in r],
            model_class.from_pretrained(out / mode / "student").state_dict(),
        )
    assert len(runs["offline"][0]) == 3
    torch.testing.assert_close(runs["online"][0], runs["offline"][0], rtol=1e-5, atol=1e-6)
    for name, value in runs["offline"][1].items():
        torch.testing.assert_close(runs["online"][1][name], value, rtol=1e-4, atol=1e-6)


def write_config(path, config):
    Path(path).write_text(json.dumps(config))
    return str(path)


def student_with_dropout(tiny, out, p=0.1):
    """The tiny student with dropout on, so that resuming must restore the RNG states."""
    shutil.copytree(tiny["student"], out)
    config = json.loads((Path(out) / "config.json").read_text())
    config.update(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
    (Path(out) / "config.json").write_text(json.dumps(config))
    return Path(out)


def clean_env(**extra):
    """The environment for a launched subprocess, without this process's rank variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
            "LOCAL_WORLD_SIZE",
            "GROUP_RANK",
            "ROLE_RANK",
        )
    }
    env.update(extra)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def module_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.module.model.state_dict().items()}


_STORES: dict = {}  # one store of each kind per session, shared by the test modules
_KINDS = {  # kind -> (task, precompute-teacher options)
    "pairs": ("sentence-pair", {"k": VOCAB, "n": PAIR_EXAMPLES}),  # the whole vocabulary
    "sentiment": ("sentiment", {"k": 32, "n": 120, "extra": ["--filter-rule", "none"]}),
    "mlm": ("mlm", {"k": 32, "n": 48, "extra": ["--max-length", "64", "--segment-words", "30"]}),
}


def _store_of(kind, tiny, tmp_path_factory):
    if kind not in _STORES:
        task, options = _KINDS[kind]
        out = tmp_path_factory.mktemp(kind) / "store"
        _STORES[kind] = precompute(task, tiny["corpus"], tiny["teacher"], out, **options)
    return _STORES[kind]


def pair_store_of(tiny, tmp_path_factory):
    """Sentence pairs from the tiny (random) teacher with the whole vocabulary (k = V)."""
    return _store_of("pairs", tiny, tmp_path_factory)


def sentiment_store_of(tiny, tmp_path_factory):
    """Sentiment examples (no filter) with k = 32."""
    return _store_of("sentiment", tiny, tmp_path_factory)


def mlm_store_of(tiny, tmp_path_factory):
    """Masked text (segments of up to 30 words, 64 tokens) with k = 32."""
    return _store_of("mlm", tiny, tmp_path_factory)


def first_batch(store, n, pad_id):
    from smash.store.collate import collate_examples
    from smash.store.reader import StoreDataset

    stream = iter(StoreDataset(store, shuffle=False))
    return collate_examples([next(stream) for _ in range(n)], pad_id)


def loss_and_grads(module, batch):
    """One forward and backward of a ``DistillStudent`` on ``batch``: (loss, gradients)."""
    from smash.store.schema import STEP_KEYS

    module.zero_grad(set_to_none=True)
    loss = module(**{k: batch[k] for k in STEP_KEYS if k in batch})
    loss.backward()
    return loss.detach(), grads_of(module)


def grads_of(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def set_seed(seed=0):
    torch.manual_seed(seed)
