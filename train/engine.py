"""DeepSpeed set-up: the process group, the resolved DeepSpeed config, and the engine.

One process with no launcher gets a one-rank process group of its own, so the same code runs
alone, under ``torchrun`` or under the ``deepspeed`` launcher (which set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT). On a CPU (``DS_ACCELERATOR=cpu``) two DeepSpeed
defaults that compile C++ extensions at start-up are switched off: the fused CPU Adam
(``torch_adam`` is used instead, the same AdamW update) and the shared-memory collectives
(gloo is used).
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import socket
import warnings
from typing import TYPE_CHECKING, Any

import torch
from smash.precompute.shared.precisions import PRECISIONS

if TYPE_CHECKING:
    from deepspeed.runtime.engine import DeepSpeedEngine

__all__ = ["build_engine", "device_of", "ensure_process_env", "resolve_deepspeed"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_env() -> None:
    """Give a process started without a launcher the environment of rank 0 of 1."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
    )


def _on_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def device_of() -> torch.device:
    """This rank's device as DeepSpeed's accelerator names it."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().device_name(int(os.environ.get("LOCAL_RANK", "0"))))


WARMUP_FRACTION = 0.05  # "auto" warmup: the paper's 10k warmup steps of 200k


def resolve_deepspeed(
    section: dict[str, Any], *, max_steps: int, precision: str | None = None
) -> dict[str, Any]:
    """The DeepSpeed config to run with: ``"auto"`` scheduler fields filled, precision set.

    ``scheduler.params.total_num_steps: "auto"`` becomes ``max_steps``, ``warmup_num_steps:
    "auto"`` 5% of it (the paper's 10k of 200k), ``warmup_max_lr: "auto"`` the optimizer's lr.
    A warmup as long as the schedule gets a warning here (DeepSpeed's own is logged quietly):
    the lr would never reach its peak. ``precision`` (fp32 | fp16 | bf16), when given, overrides the fp16/bf16
    sections.
    """
    ds = copy.deepcopy(section)
    params = ds.get("scheduler", {}).get("params", {})
    if params.get("total_num_steps") == "auto":
        params["total_num_steps"] = max_steps
    if params.get("warmup_num_steps") == "auto":
        params["warmup_num_steps"] = max(1, round(WARMUP_FRACTION * params["total_num_steps"]))
    if params.get("warmup_max_lr") == "auto":
        params["warmup_max_lr"] = ds["optimizer"]["params"]["lr"]
    warmup, total = params.get("warmup_num_steps"), params.get("total_num_steps")
    if isinstance(warmup, int) and isinstance(total, int) and warmup >= total:
        warnings.warn(
            f"deepspeed scheduler: warmup_num_steps ({warmup}) is not below "
            f"total_num_steps ({total}), so the lr never reaches its peak; lower it "
            f'or set it to "auto" ({WARMUP_FRACTION:.0%} of the steps)',
            stacklevel=2,
        )
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        ds.setdefault("fp16", {})["enabled"] = precision == "fp16"
        ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
    ds.setdefault("steps_per_print", 10**9)  # the trainer logs; keep DeepSpeed's own quiet
    return ds


def build_engine(module: torch.nn.Module, ds_config: dict[str, Any]) -> DeepSpeedEngine:
    """``deepspeed.initialize`` on ``module`` with ``ds_config``; returns the engine."""
    import deepspeed
    import deepspeed.ops

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    ds_config = copy.deepcopy(ds_config)
    if _on_cpu():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        ds_config["optimizer"].setdefault("params", {}).setdefault("torch_adam", True)
        if ds_config.get("fp16", {}).get("enabled"):
            raise ValueError("fp16 training needs a GPU; on CPU use fp32 or bf16")
    if not torch.distributed.is_initialized():
        ensure_process_env()
        deepspeed.init_distributed(dist_backend="gloo" if _on_cpu() else None, verbose=False)
        # once per process: DeepSpeed keeps its own handle on the group, so the group lives
        # until exit (later runs in the same process, e.g. tests, reuse it)
        atexit.register(torch.distributed.destroy_process_group)
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=ds_config,
    )
    return engine
