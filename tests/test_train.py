"""train-student: config validation, objectives, offline = online, errors, export."""

import json
import re
import shutil

import pytest
import torch
from smash.precompute.shared.adapters import adapter_for
from smash.precompute.shared.model_paths import require_folder_or_hub_name
from smash.store.errors import FingerprintMismatch
from smash.store.manifest import Manifest, load_manifest
from smash.train.cli import main as train_student
from smash.train.cli import parse_store
from smash.train.config import ConfigError, StoreSpec, load_config
from smash.train.engine import resolve_deepspeed
from smash.train.export import check_export_path
from smash.train.objectives import StoreContext
from smash.train.objectives.ce import PredictionDistillation
from smash.train.objectives.hard import HardLabels, HardStore, hard_labels
from smash.train.objectives.rule import RuleLabels, rule_labels
from smash.train.student import DistillStudent, OnlineTeacher
from train_support import (
    VOCAB,
    assert_offline_equals_online,
    first_batch,
    loss_and_grads,
    pair_store_of,
    sentiment_store_of,
    tiny_config,
    write_config,
)
from transformers import AutoModelForMaskedLM


@pytest.fixture(scope="module")
def pair_store(tiny, tmp_path_factory):
    return pair_store_of(tiny, tmp_path_factory)


@pytest.fixture(scope="module")
def sentiment_store(tiny, tmp_path_factory):
    return sentiment_store_of(tiny, tmp_path_factory)


# ----------------------------------------------------------------- configuration


def test_shipped_configs_hold_the_paper_defaults():
    for name, length in (("paper-sentence-pair", 128), ("paper-sentiment", 64)):
        cfg = load_config(name, stores=["s"])
        ds = resolve_deepspeed(cfg.deepspeed, max_steps=cfg.max_steps, precision="bf16")
        assert (cfg.max_steps, cfg.max_length, cfg.objective) == (200_000, length, "ce")
        assert ds["train_batch_size"] == 128
        assert ds["optimizer"]["params"]["lr"] == 1e-4
        assert ds["scheduler"]["params"]["total_num_steps"] == 200_000
        assert ds["scheduler"]["params"]["warmup_max_lr"] == 1e-4
        assert ds["scheduler"]["params"]["warmup_num_steps"] == 10_000
        assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
        short = resolve_deepspeed(cfg.deepspeed, max_steps=5_000)
        assert short["scheduler"]["params"]["warmup_num_steps"] == 250


def test_a_warmup_as_long_as_the_run_is_warned_about():
    cfg = load_config("paper-sentiment", stores=["s"])
    cfg.deepspeed["scheduler"]["params"]["warmup_num_steps"] = 10_000
    with pytest.warns(
        UserWarning,
        match=r"warmup_num_steps \(10000\) is not below "
        r"total_num_steps \(5000\)",
    ):
        resolve_deepspeed(cfg.deepspeed, max_steps=5_000)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"objectiv": "ce"}, r"^unknown key 'objectiv' \(did you mean 'objective'\?\)$"),
        ({"colour": "red"}, r"^unknown key 'colour'; known keys: \['checkpoint_every', "),
        ({"objective": "kl"}, "objective must be one of"),
        ({"max_steps": "10"}, "must be int"),
        ({"tail": "drop"}, "tail must be one of"),
        (
            {"stores": [{"path": "a", "wieght": 2}]},
            r"stores\[0\]: unknown key 'wieght' \(did you mean 'weight'\?\)",
        ),
        ({"stores": [{"path": "a", "weight": 0}]}, "weight must be a finite number > 0"),
        ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "stage must be 0, 1 or 2"),
        (
            {"deepspeed": {"gradient_acumulation_steps": 4}},
            r"key 'gradient_acumulation_steps' \(did you mean 'gradient_accumulation_steps'\?\)",
        ),
        ({"deepspeed": {"my_own_setting": 1}}, "unknown deepspeed config key 'my_own_setting':"),
        ({"teacher": "t", "objective": "rule"}, "uses no teacher outputs"),
    ],
)
def test_config_errors_name_the_problem(tmp_path, change, message):
    config = tiny_config(tmp_path / "run", "student", [("store", 1.0)])
    ds = change.pop("deepspeed", None)
    config.update(change)
    if ds:
        config["deepspeed"].update(ds)
    with pytest.raises(ConfigError, match=message):
        load_config(config)


BAD_NUMBERS = [
    ("--temperature", "0", "temperature must be a finite number > 0"),
    ("--temperature", "-1", "temperature must be a finite number > 0"),
    ("--temperature", "nan", "temperature must be a finite number > 0"),
    ("--temperature", "inf", "temperature must be a finite number > 0"),
    ("--max-steps", "0", "max_steps must be >= 1"),
    ("--max-steps", "-3", "max_steps must be >= 1"),
    ("--seed", "-1", r"seed must be in \[0, 2\*\*32\)"),
    ("--num-workers", "-1", "num_workers must be >= 0"),
    ("--checkpoint-every", "-1", "checkpoint_every must be >= 0"),
    ("--export-every", "-1", "export_every must be >= 0"),
    ("--eval-every", "-1", "eval_every must be >= 0"),
    ("--log-every", "0", "log_every must be >= 1"),
    ("--teacher-k", "0", "teacher_k must be >= 1"),
    ("--stall-timeout", "0", "stall_timeout must be a finite number of seconds > 0"),
    ("--stall-timeout", "-5", "stall_timeout must be a finite number of seconds > 0"),
    ("--stall-timeout", "nan", "stall_timeout must be a finite number of seconds > 0"),
    ("--stall-timeout", "inf", "stall_timeout must be a finite number of seconds > 0"),
    ("--stop-at-step", "0", "--stop-at-step must be >= 1"),
    ("--stop-at-step", "-2", "--stop-at-step must be >= 1"),
    ("--store", "s@0", r"stores\[0\].weight must be a finite number > 0"),
    ("--store", "s@-1", r"stores\[0\].weight must be a finite number > 0"),
    ("--store", "s@nan", r"stores\[0\].weight must be a finite number > 0"),
    ("--store", "s@inf", r"stores\[0\].weight must be a finite number > 0"),
    ("--objective", "ce@nan", "its weight must be a finite number > 0"),
    ("--objective", "ce@inf", "its weight must be a finite number > 0"),
    ("--objective", "ce@0", "its weight must be a finite number > 0"),
    ("--draws-per-epoch", "0", "draws_per_epoch must be >= 1"),
    ("--draws-per-epoch", "-1", "draws_per_epoch must be >= 1"),
    ("--soft-prompt-length", "-1", "soft_prompt_length must be >= 0"),
]


@pytest.mark.parametrize("flag, value, message", BAD_NUMBERS, ids=lambda x: str(x)[:24])
def test_every_numeric_flag_is_checked_before_anything_runs(tmp_path, capsys, flag, value, message):
    """At 0, below 0, nan and inf where meaningless: one line naming it, nothing written."""
    config = write_config(tmp_path / "c.json", tiny_config(tmp_path / "run", "s", [("x", 1.0)]))
    assert train_student(["--config", config, flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train-student: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_every_numeric_flag_is_in_the_checks_above():
    """A numeric flag that is not tested above may be out of range unchecked, or may not
    reach the config at all (``--draws-per-epoch`` once did not)."""
    from smash.train.cli import build_parser

    numeric = {a.option_strings[0] for a in build_parser()._actions
               if a.type in (int, float) or getattr(a.type, "__name__", "") in ("parse_store",
                                                                               "_weighted")}  # fmt: skip
    assert numeric - {"--local_rank"} == {flag for flag, _, _ in BAD_NUMBERS}


def test_an_unknown_key_in_a_config_file_names_the_file(tmp_path, capsys):
    config = tiny_config(tmp_path / "run", "student", [("store", 1.0)])
    config["max_step"] = 10
    path = write_config(tmp_path / "c.json", config)
    assert train_student(["--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"train-student: error: {path}: unknown key 'max_step' (did you mean 'max_steps'?)\n"
    )


def test_store_flag_and_overrides(tmp_path):
    assert parse_store("a/b@2.5") == {"path": "a/b", "weight": 2.5}
    assert parse_store("http://u@h/s") == {"path": "http://u@h/s"}
    path = write_config(tmp_path / "c.json", tiny_config(tmp_path / "r", "s", [("x", 1.0)]))
    cfg = load_config(path, stores=[parse_store("y@3")], max_steps=5, tail=None)
    assert [(s.path, s.weight) for s in cfg.stores] == [("y", 3.0)] and cfg.max_steps == 5


def test_export_names_lm_bff_would_take_for_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="mistakes for a checkpoint"):
        check_export_path("runs/student-1000")
    assert "step 3" in check_export_path("/runs/exp-3/student")
    assert check_export_path("/runs/exp_3/student_step1000") is None


# --------------------------------------------------------------------- objectives


def test_hard_label_is_the_argmax_over_label_words_in_the_top_k():
    ids = torch.tensor([[5, 9, 2], [7, 3, 1], [4, 6, 8]])
    logprobs = torch.tensor([[-0.1, -2.0, -3.0], [-0.5, -1.0, -4.0], [-0.2, -0.3, -5.0]])
    words = torch.tensor([2, 9, 1])  # row 0: 9 beats 2; row 1: only 1 present; row 2: none
    assert hard_labels(ids, logprobs.half(), words).tolist() == [1, 2, -1]


def make_student(model, objective="ce", *, verbalizer=None, stored_labels=False, **ce):
    """A student with one objective, prepared for one store."""
    if objective == "ce":
        return DistillStudent(model, [(PredictionDistillation(**ce), 1.0)], [[None]])
    words = torch.tensor(verbalizer)
    state = HardStore(words, stored_labels) if objective == "hard" else words
    chosen = HardLabels() if objective == "hard" else RuleLabels()
    return DistillStudent(model, [(chosen, 1.0)], [[state]])


def store_of(tokenizer, producer, verbalizer=None):
    manifest = Manifest(producer, {"fingerprint": "x", "vocab_size": len(tokenizer)}, 8, {})
    return StoreContext("s", manifest, StoreSpec("s", verbalizer=verbalizer), tokenizer)


def test_label_words_come_from_the_store_and_the_task(tiny_tokenizer):
    """``hard``: the manifest's verbalizer; ``rule``: the sentence-pair task's; config wins
    (``ce`` only asks whether the store's rows carry importance weights)."""
    from smash.precompute.sentence_pair import SentencePairTask
    from smash.precompute.shared.templates import verbalizer_ids

    def ids(*words):
        return verbalizer_ids(tiny_tokenizer, words)

    sentiment = {"task": "sentiment", "verbalizer": ["terrible", "okay", "great"]}
    pairs = {"task": "sentence-pair", "verbalizer": ["No", "Maybe", "Yes"]}
    hard, rule = HardLabels(), RuleLabels()
    assert (
        PredictionDistillation().for_store(store_of(tiny_tokenizer, pairs)) is False
    )  # unweighted
    got = hard.for_store(store_of(tiny_tokenizer, sentiment)).verbalizer.tolist()
    assert got == ids("terrible", "okay", "great")
    assert rule.for_store(store_of(tiny_tokenizer, pairs)).tolist() == ids(
        *SentencePairTask.verbalizer
    )
    got = hard.for_store(store_of(tiny_tokenizer, sentiment, ("bad", "good"))).verbalizer
    assert got.tolist() == ids("bad", "good")
    got = rule.for_store(store_of(tiny_tokenizer, pairs, ("bad", "okay", "good")))
    assert got.tolist() == ids("bad", "okay", "good")
    with pytest.raises(ValueError, match="records no verbalizer"):
        hard.for_store(store_of(tiny_tokenizer, {"task": "my-task", "verbalizer": []}))
    with pytest.raises(ValueError, match="a my-task store has none"):
        rule.for_store(store_of(tiny_tokenizer, {"task": "my-task"}))


def test_hard_reads_the_teacher_labels_a_store_holds(tiny, tiny_tokenizer, pair_store):
    """With ``stored_labels`` the batch's labels are the targets, even for rows whose top-k
    holds no label word (which ``hard_labels`` would leave out)."""
    words = ["terrible", "bad", "okay", "good", "great"]

    def stored(producer, verbalizer=None):
        context = store_of(tiny_tokenizer, {"verbalizer": words, **producer}, verbalizer)
        return HardLabels().for_store(context).stored_labels

    assert stored({"label_source": "teacher"})
    assert not stored({"label_source": "task"})
    assert not stored({"label_source": "teacher"}, ("bad", "good"))
    batch = first_batch(pair_store, 6, tiny_tokenizer.pad_token_id)
    words = load_manifest(pair_store).producer["verbalizer_ids"]
    batch["topk_ids"] = batch["topk_ids"][:, :4]  # keep only entries that are no label word
    batch["topk_ids"][torch.isin(batch["topk_ids"], torch.tensor(words))] = 0
    batch["topk_logprobs"] = batch["topk_logprobs"][:, :4]
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    student = make_student(model, "hard", verbalizer=words, stored_labels=True)
    loss, _ = loss_and_grads(student, batch)
    adapter = adapter_for(model)
    logits = adapter.logits(adapter.answers(batch).hidden)[:, words]  # the full head's
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"][batch["mask_batch"]])
    assert bool((batch["labels"] >= 0).all())
    torch.testing.assert_close(loss, expected.detach())
    unlabelled = make_student(model, "hard", verbalizer=words)
    assert float(loss_and_grads(unlabelled, batch)[0]) == 0.0  # every row left out without them


def test_rule_labels_follow_each_mask_to_its_example():
    assert rule_labels(torch.tensor([2, -1, 0]), torch.tensor([0, 0, 1, 2]), 3).tolist() == [
        2,
        2,
        -1,
        0,
    ]
    with pytest.raises(ValueError, match="no label word"):
        rule_labels(torch.tensor([3]), torch.tensor([0]), 3)


# ---------------------------------------------------------------- offline = online


@pytest.mark.parametrize(
    "objective, loss", [("ce", "logits"), ("ce", "fused_linear"), ("hard", "logits")]
)
def test_offline_store_equals_online_teacher(tiny, tiny_tokenizer, pair_store, objective, loss):
    """A store with k = V gives the live teacher's losses and gradients on the same batches."""
    batch = first_batch(pair_store, 12, tiny_tokenizer.pad_token_id)
    assert load_manifest(pair_store).k == VOCAB
    words = load_manifest(pair_store).producer["verbalizer_ids"]
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    if objective == "ce":
        student = make_student(model, loss=loss, tail="bucket", temperature=2.0)
    else:
        student = make_student(model, objective, verbalizer=words)
    teacher = OnlineTeacher(str(tiny["teacher"]), torch.device("cpu"))
    offline_loss, offline_grads = loss_and_grads(student, batch)
    online_loss, online_grads = loss_and_grads(student, teacher.fill(batch))
    torch.testing.assert_close(online_loss, offline_loss, rtol=1e-5, atol=1e-6)
    assert offline_grads.keys() == online_grads.keys() and offline_grads
    for name in offline_grads:
        torch.testing.assert_close(online_grads[name], offline_grads[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss", ["logits", "fused_linear"])
def test_step_skips_the_id_check_and_recomputes_the_gradient(
    tiny, tiny_tokenizer, pair_store, monkeypatch, loss
):
    """The training step calls the kernels with check_ids=False (ids from a verified store) and
    soft_cross_entropy with grad_in_forward=False (DeepSpeed's upstream gradient is not 1)."""
    import smash.train.objectives.ce as student_module

    seen = {}

    def spy_on(name):
        real = getattr(student_module, name)

        def spy(*args, **kwargs):
            seen[name] = kwargs
            return real(*args, **kwargs)

        return spy

    for name in ("soft_cross_entropy", "fused_linear_soft_cross_entropy"):
        monkeypatch.setattr(student_module, name, spy_on(name))
    batch = first_batch(pair_store, 4, tiny_tokenizer.pad_token_id)
    loss_and_grads(
        make_student(AutoModelForMaskedLM.from_pretrained(tiny["student"]), loss=loss), batch
    )
    name = "soft_cross_entropy" if loss == "logits" else "fused_linear_soft_cross_entropy"
    assert list(seen) == [name] and seen[name]["check_ids"] is False
    if loss == "logits":
        assert seen[name]["grad_in_forward"] is False


def test_fused_linear_loss_equals_kernel_loss(tiny, tiny_tokenizer, pair_store):
    batch = first_batch(pair_store, 8, tiny_tokenizer.pad_token_id)
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    results = [
        loss_and_grads(make_student(model, loss=loss, tail="bucket"), batch)
        for loss in ("logits", "fused_linear")
    ]
    torch.testing.assert_close(results[0][0], results[1][0])
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-7)


def test_offline_and_online_runs_train_the_same(tiny, pair_store, tmp_path):
    """The same through the whole trainer: losses per step and final weights."""
    assert_offline_equals_online(
        tmp_path, tiny["student"], pair_store, tiny["teacher"], AutoModelForMaskedLM
    )


def test_heldout_kl_does_not_depend_on_the_number_of_ranks(
    tiny, tiny_tokenizer, pair_store, monkeypatch
):
    """Two ranks evaluate the same first examples as one process: their sums add up to it."""
    from smash.train.evaluate import heldout_kl

    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    args = {
        "pad_id": tiny_tokenizer.pad_token_id,
        "device": torch.device("cpu"),
        "max_examples": 37,
        "batch_size": 8,
    }
    alone = heldout_kl(model, str(pair_store), **args)
    parts = []
    for rank in range(2):  # each rank's share, without the all-reduce
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: None)
        parts.append(heldout_kl(model, str(pair_store), **args))
    monkeypatch.undo()
    rows = sum(p["rows"] for p in parts)
    assert rows == alone["rows"] and alone["rows"] >= 37
    mean = sum(p["kl"] * p["rows"] for p in parts) / rows
    assert mean == pytest.approx(alone["kl"], rel=1e-5)


# ------------------------------------------------------------------------- errors


def test_tokenizer_mismatch_is_refused_naming_both(tiny, pair_store, tmp_path, capsys):
    from smash.precompute.tiny import build_tiny_masked_lm, train_tiny_tokenizer

    other_tok = train_tiny_tokenizer([tiny["corpus"]], tmp_path / "tok", vocab_size=500)
    build_tiny_masked_lm(other_tok, tmp_path / "other", hidden=16, layers=1, heads=2)
    config = tiny_config(tmp_path / "run", tmp_path / "other", [(pair_store, 1.0)])
    assert train_student(["--config", write_config(tmp_path / "c.json", config)]) == 2
    message = capsys.readouterr().err
    assert "tokenizer mismatch" in message and str(pair_store) in message
    assert str(tmp_path / "other") in message and str(tiny["teacher"]) in message
    from smash.train.trainer import Trainer

    with pytest.raises(FingerprintMismatch):
        Trainer(load_config(config)).setup()


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_shard_is_named(tiny, pair_store, tmp_path, capsys, workers):
    store = tmp_path / "store"
    shutil.copytree(pair_store, store)
    shards = sorted(store.glob("shard-*.tar"))
    for shard in shards:  # every shard damaged: whichever is read first is reported
        shard.write_bytes(shard.read_bytes()[:1000])
    config = tiny_config(tmp_path / "run", tiny["student"], [(store, 1.0)], num_workers=workers)
    assert train_student(["--config", write_config(tmp_path / "c.json", config)]) == 2
    message = capsys.readouterr().err
    assert "truncated" in message and any(s.name in message for s in shards), message


def test_rule_objective_refuses_a_sentiment_store(tiny, sentiment_store, tmp_path, capsys):
    config = tiny_config(
        tmp_path / "run", tiny["student"], [(sentiment_store, 1.0)], objective="rule"
    )
    assert train_student(["--config", write_config(tmp_path / "c.json", config)]) == 2
    assert "sentiment store has none" in capsys.readouterr().err


def test_bad_student_path_is_one_line_on_stderr(pair_store, tmp_path, capsys):
    """A missing student folder: exit 2 and one line naming it, no traceback."""
    config = tiny_config(tmp_path / "run", tmp_path / "no-such-student", [(pair_store, 1.0)])
    path = write_config(tmp_path / "c.json", config)
    assert train_student(["--config", path, "--student", str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert err == f"train-student: error: student {tmp_path / 'missing'}: no such folder\n"
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "name", ["./student", "/no/such/student", "~/no-such-student-zz", "demo-out/run/nostudent"]
)
def test_a_name_that_can_only_be_a_path_must_be_a_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^--model {re.escape(name)}: no such folder$"):
        require_folder_or_hub_name("--model", name)
    (tmp_path / "demo-out/run/nostudent").mkdir(parents=True)
    require_folder_or_hub_name("--model", "demo-out/run/nostudent")


@pytest.mark.parametrize(
    "name", ["roberta-large", "distilroberta-base", "FacebookAI/roberta-large", "demo-out/student"]
)
def test_hub_names_are_left_to_from_pretrained(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    require_folder_or_hub_name("--model", name)


def test_output_folder_with_checkpoints_needs_resume(tiny, pair_store, tmp_path, capsys):
    config = tiny_config(tmp_path / "run", tiny["student"], [(pair_store, 1.0)], max_steps=1)
    path = write_config(tmp_path / "c.json", config)
    assert train_student(["--config", path]) == 0
    assert train_student(["--config", path]) == 2
    assert "pass --resume" in capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["deepspeed"]["scheduler"]["params"]["total_num_steps"] == 1
    # export on request, from the newest checkpoint
    assert (
        train_student(
            ["--config", path, "--resume", "--export-only", "--export-name", "student_now"]
        )
        == 0
    )
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "student_now")
    final = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "student")
    for name, value in final.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name


def test_mixed_batches_follow_the_weights_and_resume(pair_store, sentiment_store):
    from smash.store.reader import StoreDataset
    from smash.train.data import MixedBatches

    def mixed():
        return MixedBatches(
            [StoreDataset(pair_store, epochs=None), StoreDataset(sentiment_store, epochs=None)],
            [3.0, 1.0],
            batch_size=2,
            pad_id=1,
            seed=5,
        )

    stream = iter(mixed())
    picks = [next(stream)["store"] for _ in range(200)]
    assert 0.65 < picks.count(0) / len(picks) < 0.85  # weight 3:1
    first = mixed()
    it = iter(first)
    head = [next(it)["keys"] for _ in range(7)]
    state = first.state_dict()
    tail = [next(it)["keys"] for _ in range(5)]
    second = mixed()
    second.load_state_dict(state)
    assert [b["keys"] for b, _ in zip(second, range(5))] == tail
    assert head != tail


@pytest.mark.parametrize("objective", ["ce", "rule"])
def test_bf16_zero2_fused_linear_runs_and_exports_fp32(tiny, pair_store, tmp_path, objective):
    config = tiny_config(
        tmp_path / "run",
        tiny["student"],
        [(pair_store, 1.0)],
        max_steps=2,
        loss="fused_linear",
        objective=objective,
        deepspeed={"zero_optimization": {"stage": 2}},
    )
    path = write_config(tmp_path / "c.json", config)
    assert train_student(["--config", path, "--precision", "bf16"]) == 0
    from smash.train.metrics import read_metrics

    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(records) == 2 and all(r["grad_norm"] is not None for r in records)
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "student")
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    info = json.loads((tmp_path / "run" / "student" / "smash_training.json").read_text())
    assert info["step"] == 2 and info["objective"] == objective
