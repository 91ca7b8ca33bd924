"""Learning: on the fixture corpus the held-out KL(teacher || student) at the masks falls by
at least half within a hundred CPU steps.

The tiny teacher is first trained briefly as a masked LM (as the demo does): a randomly
initialised teacher predicts a nearly uniform distribution, against which every student is
already close. The held-out store comes from documents the train store never saw, with the
whole vocabulary (k = V) so that the KL is exact; the train store keeps k = 64 with the tail.
"""

import shutil

from smash.train.config import load_config
from smash.train.demo import sharpen_teacher, split_corpus
from smash.train.metrics import read_metrics
from smash.train.trainer import Trainer
from train_support import VOCAB, precompute, tiny_config

STEPS = 100


def test_heldout_kl_falls_by_half(tiny, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny["teacher"], teacher)
    train_corpus, heldout_corpus = split_corpus(tiny["corpus"], tmp_path / "corpus")
    first, last = sharpen_teacher(teacher, train_corpus, steps=200)
    assert last < first
    train = precompute(
        "sentence-pair", train_corpus, teacher, tmp_path / "train", k=64, n=600, shard_size=200
    )
    heldout = precompute(
        "sentence-pair",
        heldout_corpus,
        teacher,
        tmp_path / "heldout",
        k=VOCAB,
        n=64,
        seed=1,
        shard_size=64,
    )
    config = tiny_config(
        tmp_path / "run",
        tiny["student"],
        [(train, 1.0)],
        max_steps=STEPS,
        log_every=10,
        eval_store=str(heldout),
        eval_every=STEPS // 2,
        deepspeed={
            "train_micro_batch_size_per_gpu": 16,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 0},
        },
    )
    config["deepspeed"]["optimizer"]["params"]["lr"] = 2e-3
    trainer = Trainer(load_config(config))
    trainer.setup()
    trainer.train()
    trainer.cleanup()
    kl = [(r["step"], r["eval_kl"]) for r in read_metrics(tmp_path / "run") if "eval_kl" in r]
    assert [step for step, _ in kl] == [0, STEPS // 2, STEPS]
    assert kl[0][1] > 0.5, "the sharpened teacher should be far from the untrained student"
    assert kl[-1][1] <= 0.5 * kl[0][1], kl
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses[-1] < losses[0]
