"""Prompt tuning modes: ``ppt`` (Vanilla PPT, Table 2) and ``prompt-tuning``.

Both train only a soft prompt (``smash.train.soft_prompt``) in front of the task's template,
the model frozen, under the LM-BFF protocol (seeds, splits, dev selection, test): ``ppt`` starts
from a prompt pre-trained by ``train-student --config paper-ppt`` (one per intermediate task:
the sentence-pair prompt for sentence-pair tasks, the sentiment prompt for single-sentence
tasks, as the paper pre-trains one of each), ``prompt-tuning`` from a prompt of ``length``
vectors sampled from the model's vocabulary embeddings, drawn from the seed (the same for
every grid point of a seed).

Learning rates: prompt tuning moves 100 vectors through a frozen network, whose gradients are
far smaller than a fine-tuned model's; PPT tunes them at 5e-3, 1e-2 or 5e-2 (its scripts'
``LR`` defaults for prompt tuning), where fine-tuning's 1e-5..5e-5 would leave the prompt
where it started. So these modes search ``PPT_LEARNING_RATES`` (``--prompt-tuning-lrs``)
instead of the protocol's, with everything else of the protocol unchanged (batch sizes,
steps, linear decay, dev checks), so that the rows differ from prompt-based fine-tuning only
in what is trained and at which rates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smash.precompute.kshot.tasks import Task
from smash.precompute.provenance import local_model_fingerprint
from smash.precompute.shared.adapters import auto_model_class, family_of, max_sequence_length
from smash.train.fewshot.learners import PromptLearner
from smash.train.soft_prompt import (
    INFO_FILE,
    PPT_LENGTH,
    PROMPT_FILE,
    SoftPrompt,
    SoftPromptAdapter,
    freeze,
    load_soft_prompt,
)
from torch import nn

__all__ = [
    "PPT_LEARNING_RATES",
    "PROMPT_GROUPS",
    "SOFT_PROMPT_MODES",
    "PromptTuned",
    "SoftPromptLearner",
    "SoftPromptOptions",
    "parse_prompt_folders",
    "soft_prompt_factory",
]

SOFT_PROMPT_MODES = ("ppt", "prompt-tuning")
PPT_LEARNING_RATES = (5e-3, 1e-2, 5e-2)
# which pre-trained prompt a task takes: by its number of sentences
PROMPT_GROUPS = {1: "sentiment", 2: "sentence-pair"}


class PromptTuned(nn.Module):
    """A frozen ``backbone`` and its trainable ``prompt``: what the protocol trains, moves,
    checkpoints and restores as one model."""

    def __init__(self, backbone: nn.Module, prompt: SoftPrompt):
        super().__init__()
        self.backbone, self.prompt = freeze(backbone), prompt


class SoftPromptLearner(PromptLearner):
    """A ``PromptLearner`` whose model reads ``prompt`` in front of every input and trains
    nothing else."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        task: Task,
        template: str,
        verbalizer: Sequence[str],
        max_length: int,
        prompt: SoftPrompt,
        truncation: str = "sentences",
    ):
        super().__init__(model, tokenizer, task, template, verbalizer, max_length, truncation)
        limit = max_sequence_length(model.config)
        if max_length + prompt.length > limit:
            raise ValueError(
                f"{task.name}: max length {max_length} and a soft prompt of {prompt.length} "
                f"vectors exceed the {limit} positions of the model; pass --max-length "
                f"{limit - prompt.length} or less"
            )
        self.model = PromptTuned(model, prompt)
        self.adapter = SoftPromptAdapter(self.adapter, prompt)


@dataclass(frozen=True)
class SoftPromptOptions:
    """``--ppt-prompt`` folders by group (``PROMPT_GROUPS``; ``""``: every task), the
    ``prompt-tuning`` prompt's ``length``."""

    folders: Mapping[str, str] = field(default_factory=dict)
    length: int = PPT_LENGTH

    def folder_for(self, task: Task) -> Path:
        group = PROMPT_GROUPS[len(task.text_columns)]
        folder = self.folders.get(group, self.folders.get(""))
        if folder is None:
            raise ValueError(
                f"--mode ppt: no pre-trained prompt for {task.name}, a {group} task; give "
                f"--ppt-prompt {group}=DIR (a train-student --soft-prompt-length export)"
            )
        return Path(folder)

    def key(self, mode: str, task: Task) -> dict:
        """What a unit's result depends on: the pre-trained prompt's files (by content), or
        the sampled prompt's length."""
        if mode == "prompt-tuning":
            return {"length": self.length}
        folder = self.folder_for(task)
        h = hashlib.sha256()
        for name in (PROMPT_FILE, INFO_FILE):
            path = folder / name
            h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
        return {"prompt": "sha256:" + h.hexdigest()}


def parse_prompt_folders(items: Sequence[str]) -> dict[str, str]:
    """``--ppt-prompt [GROUP=]DIR`` values as {group: folder}; a group given twice, or an
    unknown one, is refused."""
    out: dict[str, str] = {}
    for item in items:
        group, sep, folder = item.partition("=")
        group, folder = (group, folder) if sep else ("", item)
        if group and group not in PROMPT_GROUPS.values():
            raise ValueError(
                f"--ppt-prompt {item!r}: the group is one of "
                f"{', '.join(PROMPT_GROUPS.values())} (or give DIR alone for every task)"
            )
        if group in out:
            raise ValueError(f"--ppt-prompt: {group or 'DIR for every task'} is given twice")
        out[group] = folder
    return out


def soft_prompt_factory(
    mode: str,
    path: str,
    tokenizer,
    task: Task,
    max_length: int,
    template: str,
    verbalizer: Sequence[str],
    options: SoftPromptOptions,
    truncation: str = "sentences",
) -> Callable[[], SoftPromptLearner]:
    """A soft-prompt mode's learner for one (run, task). ``ppt`` checks that the model is the
    one the prompt was trained with (its name, and a local folder's fingerprint), or the
    prompt's own export."""
    from transformers import AutoConfig

    model_class = auto_model_class(family_of(AutoConfig.from_pretrained(path)))
    pretrained = None
    if mode == "ppt":
        folder = options.folder_for(task)
        pretrained, info = load_soft_prompt(folder)
        _check_backbone(path, folder, info)

    def make() -> SoftPromptLearner:
        model = model_class.from_pretrained(path)
        if pretrained is None:  # torch's generator, seeded per seed by the protocol
            prompt = SoftPrompt.sampled(model, options.length)
        else:
            prompt = SoftPrompt(pretrained.embeddings)
        return SoftPromptLearner(model, tokenizer, task, template, verbalizer, max_length, prompt,
                                 truncation)  # fmt: skip

    make()  # fail early on a length, template or label word that does not fit
    return make


def _check_backbone(path: str, folder: Path, info: dict) -> None:
    """Refuse a model other than the one the prompt was trained on."""
    recorded = info.get("backbone") or {}
    ours = local_model_fingerprint(path)
    same = (
        ours == recorded.get("fingerprint")
        if ours is not None and recorded.get("fingerprint")
        else str(path) == recorded.get("name")
    )
    if not same and Path(path).resolve() != folder.resolve():
        raise ValueError(
            f"{folder}: a soft prompt trained with {recorded.get('name')!r}, not with --model "
            f"{path} (another model's embeddings: {json.dumps(recorded)}); evaluate it with "
            f"that model or with {folder} itself"
        )
