"""The distillation recipe: setup, train, save_checkpoint, export, cleanup.

Read top to bottom, this is the whole of ``train-student``; every step it takes is a small
library piece (config, data, student, engine, checkpoint, export, metrics, evaluate).

    trainer = Trainer(load_config("paper-sentence-pair", stores=[...], output_dir="runs/a"))
    trainer.setup()            # checks every store against the student, builds the engine
    trainer.train()            # max_steps optimizer steps, checkpoints, logs, final export
    trainer.cleanup()

Output folder::

    config.json           the validated config this run uses
    metrics.jsonl         loss, lr, grad norm, samples/s, tokens/s, held-out KL (rank 0)
    tensorboard/          the same scalars, when TensorBoard is installed
    checkpoints/          DeepSpeed checkpoints with every rank's stream and RNG state
    <export_name>/        the exported student (HF folder), at the end; with soft_prompt_length,
                          the unchanged student and its soft prompt (soft_prompt.safetensors)
    exports/<export_name>_step<N>/   periodic exports (export_every)
    keys/rank<r>.jsonl    the sample keys of each step (record_keys)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from smash.precompute.shared.adapters import (
    auto_model_class,
    family_of,
    max_sequence_length,
    store_family,
)
from smash.precompute.shared.masking import Masking, example_rng
from smash.precompute.shared.model_paths import require_folder_or_hub_name
from smash.precompute.shared.precisions import PRECISIONS
from smash.precompute.shared.templates import answer_token_id
from smash.store.errors import FingerprintMismatch
from smash.store.fingerprint import check_tokenizer, tokenizer_fingerprint
from smash.store.manifest import load_manifest
from smash.store.schema import STEP_KEYS
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import TEACHER_OUTPUTS, TrainConfig
from .data import loader_workers, make_loader
from .dynamic_masking import remask
from .engine import build_engine, device_of, resolve_deepspeed
from .evaluate import heldout_kl
from .export import check_export_path, export_student
from .metrics import MetricsLogger
from .objectives import StoreContext, make_objectives
from .soft_prompt import SoftPrompt, backbone_record, freeze, save_soft_prompt
from .student import DistillStudent, OnlineTeacher, attention_path
from .targets import check_estimators

__all__ = ["Trainer"]


class Trainer:
    """One distillation run. ``precision`` (fp32 | fp16 | bf16) overrides the DeepSpeed config;
    ``resume`` continues from the newest checkpoint in ``output_dir``."""

    def __init__(self, config: TrainConfig, *, precision: str | None = None, resume: bool = False):
        self.cfg, self.precision, self.resume = config, precision, resume
        self.out = Path(config.output_dir)
        self.step = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Check inputs first (cheap, clear errors), then load, then build the engine."""
        from transformers import AutoConfig, AutoTokenizer

        cfg = self.cfg
        if not cfg.stores:
            raise ValueError("no stores to train on: give at least one (--store PATH)")
        warning = check_export_path(self.out / cfg.export_name)
        if warning:
            print(warning)
        self._check_output_dir()
        require_folder_or_hub_name("student", cfg.student)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.student)
            self.family = family_of(AutoConfig.from_pretrained(cfg.student))
        except OSError as err:  # a missing folder or unknown name: say which model it was
            raise OSError(f"student {cfg.student!r} cannot be loaded: {err}") from err
        # a T5 decoder starts from <pad> <extra_id_0>; masked LMs need no such token
        self.sentinel_id = answer_token_id(self.tokenizer) if self.family == "t5" else None
        self.manifests = [
            load_manifest(s.path, stall_timeout=cfg.stall_timeout) for s in cfg.stores
        ]
        for spec, manifest in zip(cfg.stores, self.manifests):
            self._check_family(manifest, spec.path)
            check_tokenizer(manifest, self.tokenizer, spec.path)
        if cfg.eval_store is not None:
            eval_manifest = load_manifest(cfg.eval_store, stall_timeout=cfg.stall_timeout)
            self._check_family(eval_manifest, cfg.eval_store)
            check_tokenizer(eval_manifest, self.tokenizer, cfg.eval_store)
        objectives = make_objectives(cfg)
        if cfg.teacher is None and any("topk_ids" in o.needs for o, _ in objectives):
            check_estimators([s.path for s in cfg.stores], self.manifests, cfg.tail)
        store_states = [
            [
                objective.for_store(StoreContext(spec.path, manifest, spec, self.tokenizer))
                for objective, _ in objectives
            ]
            for spec, manifest in zip(cfg.stores, self.manifests)
        ]
        self.needs = frozenset().union(*(objective.needs for objective, _ in objectives))
        self.maskings = self._store_maskings() if cfg.dynamic_masking else None

        torch.manual_seed(cfg.seed)
        student_needs = frozenset().union(*(o.student_needs for o, _ in objectives))
        model = auto_model_class(self.family).from_pretrained(
            cfg.student, dtype=torch.float32, **attention_path("attentions" in student_needs)
        )
        soft_prompt = None
        if cfg.soft_prompt_length:  # PPT: the student frozen, only the prompt vectors train
            soft_prompt = SoftPrompt.sampled(
                freeze(model), cfg.soft_prompt_length, torch.Generator().manual_seed(cfg.seed)
            )
        self._check_lengths(model)
        self.module = DistillStudent(
            model, objectives, store_states, sentinel_id=self.sentinel_id, soft_prompt=soft_prompt
        )
        self.ds_config = resolve_deepspeed(
            cfg.deepspeed, max_steps=cfg.max_steps, precision=self.precision
        )
        self.engine = build_engine(self.module, self.ds_config)
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        # DeepSpeed reports the gradient norm from its ZeRO and mixed-precision optimizers only
        self._own_grad_norm = not (
            self.engine.zero_optimization()
            or self.engine.fp16_enabled()
            or self.engine.bfloat16_enabled()
        )
        self._grad_norm: float | None = None
        self.device = device_of()
        torch.manual_seed(cfg.seed + self.rank)  # dropout differs across ranks, not runs
        self.teacher = self._online_teacher() if cfg.teacher else None
        for objective, _ in objectives if self.teacher is not None else ():
            objective.check_teacher(model.config, self.teacher.adapter.model.config)

        self.loader = make_loader(
            [s.path for s in cfg.stores],
            [s.weight for s in cfg.stores],
            batch_size=self.engine.train_micro_batch_size_per_gpu(),
            pad_id=self.tokenizer.pad_token_id,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            stall_timeout=cfg.stall_timeout,
            draws_per_epoch=cfg.draws_per_epoch,
        )
        if self.resume:
            directory = self.out / "checkpoints"
            tag = ckpt.resume_tag(directory)
            saved = ckpt.load_rank_state(directory, tag)
            workers = loader_workers(saved["loader"])
            if workers != cfg.num_workers:
                raise ValueError(
                    f"--resume: checkpoint {directory / tag} was written with {workers} "
                    f"DataLoader workers per rank and this run has {cfg.num_workers}; every "
                    f"worker's stream position is saved on its own, so resume with "
                    f"--num-workers {workers}"
                )
            self.step = ckpt.load_engine_state(self.engine, directory, tag)
            self.loader.load_state_dict(saved["loader"])
            ckpt.set_rng_state(saved["rng"])
        self.logger = MetricsLogger(self.out, enabled=self.rank == 0)
        self._keys = self.out / "keys" / f"rank{self.rank}.jsonl" if cfg.record_keys else None
        if self._keys is not None:
            self._keys.parent.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.out / "config.json").write_text(
                json.dumps({**cfg.to_json(), "deepspeed": self.ds_config}, indent=1) + "\n"
            )

    def _check_output_dir(self) -> None:
        directory = self.out / "checkpoints"
        if self.resume and ckpt.resume_tag(directory) is None:
            raise FileNotFoundError(f"--resume: {directory} holds no complete checkpoint")
        if not self.resume and ckpt.checkpoint_tags(directory):
            raise FileExistsError(
                f"{self.out} already holds checkpoints: pass --resume to "
                "continue that run, or choose another output folder"
            )
        if self.resume and (self.out / "config.json").exists():
            saved = json.loads((self.out / "config.json").read_text())
            changed = sorted(
                k for k, v in self.cfg.to_json().items() if k != "deepspeed" and saved.get(k) != v
            )
            if changed:
                print(f"resume: config keys changed since the checkpoint: {changed}")

    def _check_family(self, manifest, path: str) -> None:
        """Refuse a store whose teacher is of another family than the student (its answers
        sit at another slot: the mask, or T5's second decoder token)."""
        theirs = store_family(manifest.producer)
        if theirs != self.family:
            teacher = (manifest.producer.get("teacher") or {}).get("name", "?")
            raise ValueError(
                f"{path}: a store of a {theirs} teacher ({teacher}), but the student "
                f"{self.cfg.student} is a {self.family} model; train a {theirs} student on it"
            )

    def _check_lengths(self, model: torch.nn.Module) -> None:
        """Refuse stores whose examples may not fit the config's or the student's length."""
        limit = max_sequence_length(model.config) - self.cfg.soft_prompt_length
        after = f" after its {self.cfg.soft_prompt_length} soft-prompt vectors"
        for spec, manifest in zip(self.cfg.stores, self.manifests):
            length = manifest.producer.get("max_length")
            if length is None:
                continue
            if self.cfg.max_length is not None and length > self.cfg.max_length:
                raise ValueError(
                    f"{spec.path}: examples up to {length} tokens, more than this "
                    f"config's max_length={self.cfg.max_length}"
                )
            if length > limit:
                raise ValueError(
                    f"{spec.path}: examples up to {length} tokens, but the student "
                    f"{self.cfg.student} takes at most {limit}"
                    f"{after if self.cfg.soft_prompt_length else ''}"
                )

    def _store_maskings(self) -> list[Masking]:
        """Each store's masking rule, for dynamic masking (masked-text stores only)."""
        maskings = []
        for spec, manifest in zip(self.cfg.stores, self.manifests):
            rule = manifest.producer.get("task_options", {}).get("masking")
            if rule is None:
                raise ValueError(
                    f"{spec.path}: dynamic_masking needs masked-text stores (precompute-teacher "
                    f"--task mlm); this store's task is {manifest.producer.get('task')!r}"
                )
            maskings.append(Masking(**rule))
        return maskings

    def _online_teacher(self) -> OnlineTeacher:
        """The online-teacher mode: the one case where the teacher is loaded."""
        from transformers import AutoConfig, AutoTokenizer

        require_folder_or_hub_name("teacher", self.cfg.teacher)
        family = family_of(AutoConfig.from_pretrained(self.cfg.teacher))
        if family != self.family:
            raise ValueError(
                f"teacher {self.cfg.teacher} is a {family} model and the student "
                f"{self.cfg.student} a {self.family} one: their answers sit at different slots"
            )
        wanted = sorted(self.needs & TEACHER_OUTPUTS)
        if self.rank == 0:
            masks = "; masks drawn anew every step" if self.maskings else ""
            print(
                f"online-teacher mode: loading the teacher {self.cfg.teacher} for "
                f"{', '.join(wanted)}{masks}"
            )
        theirs = AutoTokenizer.from_pretrained(self.cfg.teacher)
        ours_fp, theirs_fp = tokenizer_fingerprint(self.tokenizer), tokenizer_fingerprint(theirs)
        if ours_fp != theirs_fp:
            raise FingerprintMismatch(
                f"teacher {self.cfg.teacher}",
                theirs_fp,
                self.cfg.teacher,
                ours_fp,
                self.cfg.student,
            )
        dtype = PRECISIONS[self._precision_name()]
        return OnlineTeacher(
            self.cfg.teacher,
            self.device,
            k=self.cfg.teacher_k,
            dtype=dtype,
            attentions="teacher_attentions" in self.needs,
            sentinel_id=self.sentinel_id,
        )

    def _precision_name(self) -> str:
        for name in ("fp16", "bf16"):
            if self.ds_config.get(name, {}).get("enabled"):
                return name
        return "fp32"

    # ------------------------------------------------------------------ train
    def train(self, stop_at_step: int | None = None) -> int:
        """Run optimizer steps until ``max_steps`` (or ``stop_at_step``); returns the step.

        The learning-rate schedule always spans ``max_steps``, so a run stopped early and
        resumed follows the same schedule as one that never stopped.
        """
        cfg, engine = self.cfg, self.engine
        last = cfg.max_steps if stop_at_step is None else min(stop_at_step, cfg.max_steps)
        if self.step == 0 and cfg.eval_store is not None:
            self.evaluate()
        engine.train()  # from_pretrained leaves the model in eval mode; training wants dropout
        batches = iter(self.loader)
        accumulation = engine.gradient_accumulation_steps()
        loss_sum = torch.zeros((), device=self.device)  # on the device: no sync per step
        counts = [0, 0, 0]  # micro-batches, samples, tokens
        started = time.perf_counter()
        saved_at = None
        with tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train-student",
            unit="step",
            disable=self.rank != 0,
            dynamic_ncols=True,
        ) as bar:
            while self.step < last:
                for micro in range(accumulation):
                    batch = next(batches)
                    loss_sum += self._micro_step(batch, micro)
                    counts[0] += 1
                    counts[1] += len(batch["keys"])
                    counts[2] += int(batch["attention_mask"].sum())
                self.step += 1
                bar.update(1)
                logged = self.step % cfg.log_every == 0 or self.step == last
                if logged:
                    record = self._log(loss_sum, counts, time.perf_counter() - started)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.1f}"
                    )
                    loss_sum.zero_()
                    counts = [0, 0, 0]
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.evaluate()
                if cfg.export_every and self.step % cfg.export_every == 0:
                    self.export(f"exports/{cfg.export_name}_step{self.step}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    saved_at = self.save_checkpoint()
                if logged:  # the next window times training only, not evaluation or saving
                    started = time.perf_counter()
        if saved_at != self.step:
            self.save_checkpoint()
        if self.step == cfg.max_steps:
            if cfg.eval_store is not None and not (
                cfg.eval_every and self.step % cfg.eval_every == 0
            ):
                self.evaluate()
            self.export()
        return self.step

    def _micro_step(self, batch: dict[str, Any], micro: int) -> torch.Tensor:
        if self.maskings is not None:
            batch = remask(
                batch,
                self.maskings[batch["store"]],
                example_rng(self.cfg.seed, self.rank, self.step, micro),
                mask_id=self.tokenizer.mask_token_id,
                vocab_size=len(self.tokenizer),
                special_ids=self.tokenizer.all_special_ids,
            )
        inputs = {k: batch[k].to(self.device, non_blocking=True) for k in STEP_KEYS if k in batch}
        if self.teacher is not None:
            inputs = self.teacher.fill(inputs, self.needs)
        loss = self.engine(**inputs, store=batch["store"])
        self.engine.backward(loss)
        if self._own_grad_norm and self.engine.is_gradient_accumulation_boundary():
            norms = [
                p.grad.detach().float().norm()
                for p in self.module.parameters()
                if p.grad is not None
            ]  # (torch.nn.utils.get_total_norm needs torch 2.6)
            self._grad_norm = float(torch.stack(norms).norm()) if norms else 0.0
        self.engine.step()
        if self._keys is not None:
            with open(self._keys, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step + 1, "keys": batch["keys"]}) + "\n")
        return loss.detach().float()

    def _log(self, loss_sum: torch.Tensor, counts: list[int], seconds: float) -> dict[str, Any]:
        """All-reduce the window's sums and log them (every rank takes part)."""
        totals = torch.cat(
            [
                loss_sum.double().view(1),
                torch.tensor(counts, dtype=torch.float64, device=self.device),
            ]
        )
        torch.distributed.all_reduce(totals)
        loss_sum, micro, samples, tokens = totals.tolist()
        norm = self._grad_norm if self._own_grad_norm else self.engine.get_global_grad_norm()
        record = {
            "loss": loss_sum / max(micro, 1.0),
            "lr": float(self.engine.get_lr()[0]),
            "grad_norm": None if norm is None else float(norm),
            "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds,
            "samples": int(samples),
        }
        self.logger.log(self.step, **record)
        return record

    def evaluate(self) -> dict[str, Any]:
        """Held-out KL(teacher || student) at the mask positions of ``eval_store``."""
        result = heldout_kl(
            self.module.model,
            self.cfg.eval_store,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            max_examples=self.cfg.eval_examples,
            stall_timeout=self.cfg.stall_timeout,
            adapter=self.module.adapter,
        )
        self.logger.log(self.step, eval_kl=result["kl"], eval_rows=result["rows"])
        return result

    # ------------------------------------------------------- checkpoint, export
    def save_checkpoint(self) -> int:
        """A DeepSpeed checkpoint of this step with every rank's stream and RNG state."""
        ckpt.save_checkpoint(
            self.engine,
            self.out / "checkpoints",
            self.step,
            self.loader.state_dict(),
            keep=self.cfg.keep_checkpoints,
        )
        return self.step

    def export(self, name: str | None = None) -> Path:
        """``save_pretrained`` the student and its tokenizer under ``output_dir`` (rank 0)."""
        out = self.out / (name or self.cfg.export_name)
        if self.rank == 0:
            info = {
                "step": self.step,
                "objective": self.cfg.objective,
                "stores": [s.path for s in self.cfg.stores],
                "teacher": [m.producer.get("teacher") for m in self.manifests],
                "config": self.cfg.to_json(),
            }
            export_student(self.module.model, self.tokenizer, out, info)
            if self.module.soft_prompt is not None:  # beside the unchanged model
                save_soft_prompt(self.module.soft_prompt, out, backbone_record(self.cfg.student))
        torch.distributed.barrier()
        return out

    def cleanup(self) -> None:
        self.logger.close()
