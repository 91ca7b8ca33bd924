"""Soft prompts: N trainable vectors in front of a prompt's embedded tokens, the model frozen.

Prompt tuning (Lester et al., 2021) and PPT (Gu et al., 2022) train only these vectors; PPT
first pre-trains them on tasks built from unlabelled text (here: ``train-student`` with
``soft_prompt_length`` on a store's labels, the ``hard`` objective), then tunes them on the
downstream task (``evaluate-fewshot --mode ppt``). PPT's default length is 100.

Where they go: in front of the whole input, before ``<s>``, as PPT puts them before its T5
encoder's input and Lester et al. before the embedded text. For a masked LM the vectors take the
place of word embeddings, so the position and token-type embeddings and the embedding
LayerNorm apply to them as to any token (the prompt holds positions 0..N-1, the input's tokens
follow); the answer slot moves N positions right. A T5 reads them in front of its encoder's
input (appendix A.3's prompts) and its decoder is unchanged. Every other module sees the same
adapter interface (``SoftPromptAdapter``), so objectives, the held-out KL and the few-shot
learners work unchanged.

Exported beside the unchanged model's ``save_pretrained`` files: ``soft_prompt.safetensors``
(one float32 tensor, ``embeddings``, (N, H)) and ``soft_prompt.json`` (length, hidden size and
the backbone it was trained with: its name and, for a local folder, its fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from smash.precompute.provenance import local_model_fingerprint
from smash.precompute.shared.adapters import Answers, ModelAdapter, Prompts
from torch import nn

__all__ = [
    "INFO_FILE",
    "PPT_LENGTH",
    "PROMPT_FILE",
    "SoftPrompt",
    "SoftPromptAdapter",
    "backbone_record",
    "freeze",
    "has_soft_prompt",
    "load_soft_prompt",
    "save_soft_prompt",
]

PROMPT_FILE = "soft_prompt.safetensors"
INFO_FILE = "soft_prompt.json"
PPT_LENGTH = 100  # PPT's configs/prompt/*.json: enc.prompt_len


class SoftPrompt(nn.Module):
    """The trainable vectors, (N, H)."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        if embeddings.dim() != 2 or embeddings.shape[0] < 1:
            raise ValueError(
                f"a soft prompt is (length >= 1, hidden), got {tuple(embeddings.shape)}"
            )
        self.embeddings = nn.Parameter(embeddings.detach().clone().float())

    @property
    def length(self) -> int:
        return self.embeddings.shape[0]

    @classmethod
    def sampled(
        cls, model: nn.Module, length: int, generator: torch.Generator | None = None
    ) -> SoftPrompt:
        """``length`` vectors initialised as the input embeddings of tokens drawn uniformly
        from the model's vocabulary (Lester et al.'s "sampled vocabulary" initialisation),
        with ``generator`` (torch's global one when None)."""
        if length < 1:
            raise ValueError(f"soft prompt length must be >= 1, got {length}")
        table = model.get_input_embeddings().weight
        ids = torch.randint(0, table.shape[0], (length,), generator=generator)
        return cls(table.detach()[ids.to(table.device)].cpu())

    def prepend(self, embeds: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``embeds`` (B, L, H) and ``attention`` (B, L) with the prompt in front: (B, N + L, H)
        and (B, N + L)."""
        front = self.embeddings.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        ones = attention.new_ones(attention.shape[0], self.length)
        return torch.cat([front, embeds], dim=1), torch.cat([ones, attention], dim=1)


class SoftPromptAdapter(ModelAdapter):
    """``inner`` (the frozen model's adapter) reading ``prompt`` in front of every input."""

    def __init__(self, inner: ModelAdapter, prompt: SoftPrompt):
        self.inner, self.prompt = inner, prompt
        self.model, self.decoder = inner.model, inner.decoder
        self._embed = inner.model.get_input_embeddings()

    def answers(self, prompts: Prompts, *, hidden_states=False, attentions=False) -> Answers:
        if hidden_states or attentions:
            raise ValueError(
                "a soft prompt adds positions to the encoder's states and attentions, so they "
                "cannot be compared with a teacher's: objectives that read them (hidn, attn, "
                "cos) do not train a soft prompt"
            )
        embeds, attention = self.prompt.prepend(
            self._embed(prompts["input_ids"]), prompts["attention_mask"]
        )
        return self.inner.answers(
            {
                "inputs_embeds": embeds,
                "attention_mask": attention,
                "mask_batch": prompts["mask_batch"],
                "mask_positions": prompts["mask_positions"] + self.prompt.length,
            }
        )

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner.features(hidden)


def freeze(model: nn.Module) -> nn.Module:
    """``model`` with every weight excluded from training (``requires_grad`` False)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def backbone_record(path: str) -> dict[str, Any]:
    """What a soft prompt records of the model it was trained with: its name and, for a local
    folder, the fingerprint of its config and weights (``local_model_fingerprint``)."""
    return {"name": str(path), "fingerprint": local_model_fingerprint(path)}


def has_soft_prompt(folder: str | Path) -> bool:
    return (Path(folder) / PROMPT_FILE).is_file()


def save_soft_prompt(prompt: SoftPrompt, folder: str | Path, backbone: dict[str, Any]) -> Path:
    """Write ``prompt`` (float32) and its record into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensor = prompt.embeddings.detach().float().cpu().contiguous()
    save_file({"embeddings": tensor}, str(folder / PROMPT_FILE))
    info = {"length": prompt.length, "hidden_size": tensor.shape[1], "backbone": backbone}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return folder


def load_soft_prompt(folder: str | Path) -> tuple[SoftPrompt, dict[str, Any]]:
    """The soft prompt saved in ``folder`` and its record; ValueError naming the folder when it
    holds none or a damaged one."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not has_soft_prompt(folder) or not (folder / INFO_FILE).is_file():
        raise ValueError(
            f"{folder}: no soft prompt ({PROMPT_FILE} and {INFO_FILE}; train-student "
            f"--soft-prompt-length N exports one beside the model)"
        )
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        embeddings = load_file(str(folder / PROMPT_FILE))["embeddings"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{folder}: the soft prompt cannot be read: {err}") from None
    if list(embeddings.shape) != [info.get("length"), info.get("hidden_size")]:
        raise ValueError(
            f"{folder}: {PROMPT_FILE} is {tuple(embeddings.shape)}, {INFO_FILE} says "
            f"({info.get('length')}, {info.get('hidden_size')})"
        )
    return SoftPrompt(embeddings), info
