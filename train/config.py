"""``train-student``'s configuration: one JSON file, validated before anything is loaded.

A config is a JSON object with the trainer's keys (``TrainConfig``'s fields) and a
``deepspeed`` section, which is a DeepSpeed config (inline, or the path of a DeepSpeed JSON
file, relative to the config). Unknown keys are errors, so a typo never falls back to a
default silently; that holds for the ``deepspeed`` section's top level too, which DeepSpeed
itself does not check (``DEEPSPEED_KEYS``). The shipped configs
(``smash/train/configs/*.json``) hold the paper's defaults (appendix A.1): batch 128,
lr 1e-4, 200k steps, max length 128 (sentence pairs) or 64 (sentiment); a run names its
stores and output folder on the command line. They use
``torch.optim.AdamW`` (``"torch_adam": true``): the same update as DeepSpeed's FusedAdam,
without its just-in-time CUDA build (which needs nvcc on the training machine).

Example::

    {"student": "distilroberta-base",
     "stores": [{"path": "stores/pairs", "weight": 2}, {"path": "stores/sentiment"}],
     "objective": "ce", "tail": "bucket", "max_steps": 200000, "output_dir": "runs/a",
     "deepspeed": {"train_batch_size": 128, "train_micro_batch_size_per_gpu": 32,
                   "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, ...}}
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smash.kernels.dispatch import IMPLS
from smash.kernels.soft_ce_inputs import TAIL_MODES
from smash.store.locations import DEFAULT_STALL_TIMEOUT
from smash.store.schema import TEACHER_FIELDS

from .objectives import TEACHER_INTERNALS, objective_class, objective_names
from .objectives.ce import DEFAULT_TAIL, LOSS_IMPLS

__all__ = [
    "DEEPSPEED_KEYS",
    "SHIPPED",
    "ConfigError",
    "StoreSpec",
    "TrainConfig",
    "load_config",
    "shipped_config_path",
]

TEACHER_OUTPUTS = TEACHER_INTERNALS | set(TEACHER_FIELDS)
_CONFIG_DIR = Path(__file__).with_name("configs")
SHIPPED = {
    "paper-sentence-pair": "paper_sentence_pair.json",
    "paper-sentiment": "paper_sentiment.json",
    # the paper's section 4.4 settings 3, 4, 5 (offline: masks fixed in the store) and 5
    "paper-ce-hidn": "paper_ce_hidn.json",
    "paper-ce-attn": "paper_ce_attn.json",
    "paper-distilbert-offline": "paper_distilbert_offline.json",
    "paper-distilbert-online": "paper_distilbert_online.json",
    # Vanilla PPT's prompt pre-training (Table 2): a 100-vector soft prompt, the student frozen,
    # the hard objective on a store's labels, at PPT's pre-training lr, batch and steps
    "paper-ppt": "paper_ppt.json",
}

# DeepSpeed's top-level config keys (deepspeed/runtime/config.py and the sub-configs it
# builds, DeepSpeed 0.15-0.19). DeepSpeed reads the keys it knows and ignores the rest, so a
# misspelt "gradient_acumulation_steps" would be dropped without a word: we refuse it.
DEEPSPEED_KEYS = frozenset(
    {
        # batch and steps
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "managed_gradient_accumulation",
        "steps_per_print",
        "dataloader_drop_last",
        # optimizer, schedule, gradients
        "optimizer",
        "scheduler",
        "gradient_clipping",
        "prescale_gradients",
        "gradient_predivide_factor",
        "gradient_allreduce_op",
        "sparse_gradients",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        # precision and communication
        "fp16",
        "bf16",
        "bfloat16",
        "amp",
        "torch_autocast",
        "data_types",
        "communication_data_type",
        "seq_parallel_communication_data_type",
        # parallelism and memory
        "zero_optimization",
        "disable_allgather",
        "activation_checkpointing",
        "pipeline",
        "tensor_parallel",
        "expert_parallel",
        "sequence_parallel_size",
        "use_data_before_expert_parallelism",
        "hybrid_engine",
        "aio",
        "checkpoint",
        "datastates_ckpt",
        "nebula",
        "compile",
        "disable_python_gc",
        # monitoring and debugging
        "tensorboard",
        "wandb",
        "csv_monitor",
        "comet",
        "comms_logger",
        "flops_profiler",
        "timers",
        "wall_clock_breakdown",
        "memory_breakdown",
        "dump_state",
        "log_level",
        # other features
        "elasticity",
        "autotuning",
        "data_efficiency",
        "curriculum_learning",
        "progressive_layer_drop",
        "eigenvalue",
        "quantize_training",
        "compression_training",
        "sparse_attention",
        "weight_quantization",
    }
)


class ConfigError(ValueError):
    """A configuration key is unknown, missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class StoreSpec:
    """One input store and its share of the micro-batches.

    ``verbalizer``: label words for the ``hard`` and ``rule`` objectives; by default the
    store's own (manifest ``producer.verbalizer``) for ``hard`` and the sentence-pair task's
    for ``rule`` (see their ``for_store``).
    """

    path: str
    weight: float = 1.0
    verbalizer: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; ``deepspeed`` is the resolved DeepSpeed config dict."""

    output_dir: str
    deepspeed: dict[str, Any]
    stores: tuple[StoreSpec, ...] = ()
    student: str = "distilroberta-base"
    objective: str | dict[str, float] = "ce"  # a name, or {name: weight} (smash.train.objectives)
    loss: str = "logits"  # ce's loss: LM head then soft-CE, or fused_linear (never the logits)
    kernel_impl: str = "auto"  # smash.kernels impl=: auto | triton | torch
    temperature: float = 1.0
    tail: str = DEFAULT_TAIL  # how a top-k teacher's tail mass enters the loss
    scale_t2: bool = False
    max_steps: int = 200_000  # optimizer steps
    max_length: int | None = None  # refuse stores whose examples may be longer
    seed: int = 42
    num_workers: int = 2  # DataLoader workers per rank
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    export_every: int = 0
    export_name: str = "student"
    log_every: int = 10
    eval_store: str | None = None  # held-out store for KL(teacher || student) at the masks
    eval_every: int = 0
    eval_examples: int = 512
    record_keys: bool = False  # write the key of every trained sample (data audits)
    teacher: str | None = None  # online-teacher mode: the only mode that loads a teacher
    teacher_k: int | None = None  # online mode: top-k of the live teacher (None: vocabulary)
    dynamic_masking: bool = False  # online mode, masked-text stores: new masks every step
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # seconds a store read may receive nothing
    soft_prompt_length: int = 0  # > 0: freeze the student, train that many prompt vectors (PPT)
    # sampled/hybrid stores: each epoch another subset of this many of a mask's N draws
    draws_per_epoch: int | None = None

    @property
    def objectives(self) -> dict[str, float]:
        """The objectives by name with their weights (one name means weight 1)."""
        return {self.objective: 1.0} if isinstance(self.objective, str) else dict(self.objective)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stores"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items() if v is not None}
            for s in out["stores"]
        ]
        return out


def shipped_config_path(name: str) -> Path:
    """Path of a shipped config by its name (``SHIPPED``: ``paper-sentence-pair``, ...)."""
    if name not in SHIPPED:
        raise ConfigError(f"no shipped config {name!r}; shipped: {sorted(SHIPPED)}")
    return _CONFIG_DIR / SHIPPED[name]


def load_config(source: str | Path | dict[str, Any], **overrides: Any) -> TrainConfig:
    """Read (a path, a shipped name or a dict), apply ``overrides`` (None = keep), validate."""
    path: Path | None = None
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = shipped_config_path(str(source)) if str(source) in SHIPPED else Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: no such config file (shipped configs: {sorted(SHIPPED)})"
            ) from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _validate(data, path)


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _did_you_mean(key: str, known: Iterable[str]) -> str | None:
    """The known key closest to a misspelt ``key``, if one is close."""
    close = difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def _check_keys(data: dict[str, Any], path: Path | None) -> None:
    """Refuse the first unknown top-level key: its closest known key, else all known keys."""
    known = _fields()
    where = f"{path}: " if path else ""
    for key in sorted(set(data) - set(known)):
        close = _did_you_mean(key, known)
        hint = f" (did you mean {close!r}?)" if close else f"; known keys: {sorted(known)}"
        raise ConfigError(f"{where}unknown key {key!r}{hint}")


def _validate(data: dict[str, Any], path: Path | None) -> TrainConfig:
    """``path``: the config file that ``data`` was read from (None: a dict)."""
    _check_keys(data, path)
    known = _fields()
    for name in ("output_dir", "deepspeed"):
        if data.get(name) is None:
            raise ConfigError(f"config key {name!r} is required")
    values = dict(data)
    values["stores"] = tuple(_store(s, i) for i, s in enumerate(data.get("stores", [])))
    _check_distinct_stores(values["stores"])
    values["deepspeed"] = _deepspeed_section(data["deepspeed"], path and path.parent)
    if "objective" in values:
        values["objective"] = _objective(values["objective"])
    for name, f in known.items():
        if name in ("stores", "deepspeed", "objective") or name not in values:
            continue
        values[name] = _typed(name, values[name], f.type)
    cfg = TrainConfig(**values)
    _check_ranges(cfg)
    return cfg


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _typed(name: str, value: Any, annotation: str) -> Any:
    """Check ``value`` against a field annotation such as ``'int | None'``."""
    options = [a.strip() for a in str(annotation).split("|")]
    if value is None and "None" in options:
        return None
    for option in options:
        expected = _TYPES.get(option)
        if expected is None:
            continue
        if isinstance(value, bool) and option != "bool":
            continue  # JSON true is not a number
        if isinstance(value, expected):
            return float(value) if option == "float" else value
    raise ConfigError(f"config key {name!r} must be {annotation}, got {value!r}")


def _objective(raw: Any) -> str | dict[str, float]:
    """A registered objective's name, or {name: weight > 0, ...} of registered ones."""
    names = objective_names()
    given = {raw: 1.0} if isinstance(raw, str) else raw
    if not isinstance(given, dict) or not given:
        raise ConfigError(
            f"config key 'objective' must be a name or a {{name: weight}} object, got {raw!r}"
        )
    for name, weight in given.items():
        if name not in names:
            raise ConfigError(f"objective must be one of {names}, got {name!r}")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not (math.isfinite(weight) and weight > 0)
        ):
            raise ConfigError(
                f"objective {name!r}: its weight must be a finite number > 0, got {weight!r}"
            )
    return raw if isinstance(raw, str) else {name: float(w) for name, w in given.items()}


def _store(raw: Any, index: int) -> StoreSpec:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict) or "path" not in raw:
        raise ConfigError(f"stores[{index}] must be a path or an object with a 'path', got {raw!r}")
    allowed = {f.name for f in dataclasses.fields(StoreSpec)}
    for key in sorted(set(raw) - allowed):
        close = _did_you_mean(key, allowed)
        hint = f" (did you mean {close!r}?)" if close else f"; known: {sorted(allowed)}"
        raise ConfigError(f"stores[{index}]: unknown key {key!r}{hint}")
    weight = _typed(f"stores[{index}].weight", raw.get("weight", 1.0), "float")
    if not (math.isfinite(weight) and weight > 0):
        raise ConfigError(f"stores[{index}].weight must be a finite number > 0, got {weight}")
    words = raw.get("verbalizer")
    if words is not None and (
        not isinstance(words, list) or not all(isinstance(w, str) for w in words) or len(words) < 2
    ):
        raise ConfigError(f"stores[{index}].verbalizer must be a list of at least two words")
    return StoreSpec(
        path=str(raw["path"]), weight=weight, verbalizer=tuple(words) if words is not None else None
    )


def _check_distinct_stores(stores: tuple[StoreSpec, ...]) -> None:
    """A store listed twice would be mixed in at twice its weight without a word."""
    first: dict[Path, int] = {}
    for i, spec in enumerate(stores):
        j = first.setdefault(Path(spec.path).resolve(), i)
        if j != i:
            raise ConfigError(
                f"stores[{i}]: {spec.path!r} is the store of stores[{j}] ({stores[j].path!r}) "
                f"again; give each store once (its weight sets its share of the mix)"
            )


def _deepspeed_section(raw: Any, base: Path | None) -> dict[str, Any]:
    if isinstance(raw, str):
        path = Path(raw) if base is None or Path(raw).is_absolute() else base / raw
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"deepspeed config {path}: cannot be read: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError("'deepspeed' must be a DeepSpeed config object or the path of one")
    for key in sorted(set(raw) - DEEPSPEED_KEYS):
        close = _did_you_mean(key, DEEPSPEED_KEYS)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ConfigError(
            f"unknown deepspeed config key {key!r}{hint}: DeepSpeed would ignore it silently"
        )
    stage = raw.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(
            f"deepspeed zero_optimization.stage must be 0, 1 or 2, got {stage!r}: "
            "stage 3 partitions the weights, which the mask-only LM head and "
            "the export read whole"
        )
    if raw.get("fp16", {}).get("enabled") and raw.get("bf16", {}).get("enabled"):
        raise ConfigError("deepspeed: fp16 and bf16 cannot both be enabled")
    optimizer = raw.get("optimizer", {})
    if str(optimizer.get("type", "")).lower() not in ("adamw", "adam"):
        raise ConfigError(f"deepspeed optimizer must be AdamW (with 'params'), got {optimizer!r}")
    if "train_micro_batch_size_per_gpu" not in raw:
        raise ConfigError("deepspeed config needs 'train_micro_batch_size_per_gpu'")
    return raw


def _check_ranges(cfg: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    loss_hint = " ('kernel' is now called 'logits')" if cfg.loss == "kernel" else ""
    need(cfg.loss in LOSS_IMPLS, f"loss must be one of {LOSS_IMPLS}, got {cfg.loss!r}{loss_hint}")
    need(cfg.kernel_impl in IMPLS, f"kernel_impl must be one of {IMPLS}, got {cfg.kernel_impl!r}")
    need(cfg.tail in TAIL_MODES, f"tail must be one of {TAIL_MODES}, got {cfg.tail!r}")
    need(
        math.isfinite(cfg.temperature) and cfg.temperature > 0,
        f"temperature must be a finite number > 0, got {cfg.temperature}",
    )
    need(
        math.isfinite(cfg.stall_timeout) and cfg.stall_timeout > 0,
        f"stall_timeout must be a finite number of seconds > 0, got {cfg.stall_timeout}",
    )
    need(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32), got {cfg.seed}")
    need(cfg.max_steps >= 1, f"max_steps must be >= 1, got {cfg.max_steps}")
    for name in ("checkpoint_every", "export_every", "eval_every", "num_workers"):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0")
    for name in ("keep_checkpoints", "log_every", "eval_examples"):
        need(getattr(cfg, name) >= 1, f"{name} must be >= 1")
    need(cfg.max_length is None or cfg.max_length >= 3, "max_length must be >= 3")
    need(cfg.teacher_k is None or cfg.teacher_k >= 1, "teacher_k must be >= 1")
    need(
        cfg.draws_per_epoch is None or cfg.draws_per_epoch >= 1,
        f"draws_per_epoch must be >= 1 (or null: every draw), got {cfg.draws_per_epoch}",
    )
    need(
        cfg.draws_per_epoch is None or cfg.teacher is None,
        "draws_per_epoch subsets a store's draws; an online teacher (teacher) has none",
    )
    need(cfg.eval_every == 0 or cfg.eval_store is not None, "eval_every needs an eval_store")
    needs = {name: objective_class(name).needs for name in cfg.objectives}
    teacher_free = [n for n, wants in needs.items() if not wants & (TEACHER_OUTPUTS)]
    need(
        cfg.teacher is None or len(teacher_free) < len(needs),
        f"objective {' + '.join(map(repr, teacher_free))} uses no teacher outputs: drop the "
        f"online teacher",
    )
    internals = sorted(n for n, wants in needs.items() if wants & TEACHER_INTERNALS)
    need(
        cfg.teacher is not None or not internals,
        f"objective {' + '.join(map(repr, internals))} distils the teacher's internals: give "
        f"the teacher (online-teacher mode, 'teacher' / --teacher)",
    )
    need(cfg.teacher_k is None or cfg.teacher is not None, "teacher_k needs a teacher")
    need(cfg.soft_prompt_length >= 0, "soft_prompt_length must be >= 0 (0: train the student)")
    reads_states = sorted(n for n in cfg.objectives if objective_class(n).student_needs)
    need(
        not (cfg.soft_prompt_length and reads_states),
        f"objective {' + '.join(map(repr, reads_states))} compares the student's hidden states "
        f"or attentions, which a soft prompt lengthens: soft_prompt_length takes objectives "
        f"that read the answers (ce, hard, rule, mlm)",
    )
    need(
        not cfg.dynamic_masking or cfg.teacher is not None,
        "dynamic_masking needs the online teacher ('teacher' / --teacher): the stored teacher "
        "outputs belong to the stored masks",
    )
    need(
        "/" not in cfg.export_name and cfg.export_name not in ("", ".", ".."),
        f"export_name must be a plain folder name, got {cfg.export_name!r}",
    )
