"""The real models' dimensions, from their published ``config.json`` files (random weights are
built from them, so no benchmark downloads anything).

``model_config(name, scale)`` divides widths and depths by ``scale`` for CPU runs, keeping the
proportions and heads about 64 wide; the vocabulary is never scaled (the LM head over
50,265 tokens is what the kernels and the mask-only head are about).
"""

from __future__ import annotations

import math

__all__ = ["BASE_TEACHER", "MODELS", "STUDENT", "TEACHER", "model_config"]

_ROBERTA_VOCAB = {
    "vocab_size": 50_265,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
}

MODELS: dict[str, dict] = {
    "roberta-large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        **_ROBERTA_VOCAB,
    },
    "roberta-base": {  # the teacher of the paper's settings 2-5 (section 4.4)
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        **_ROBERTA_VOCAB,
    },
    "distilroberta-base": {
        "hidden_size": 768,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        **_ROBERTA_VOCAB,
    },
}
TEACHER, STUDENT = "roberta-large", "distilroberta-base"  # the paper's pair
BASE_TEACHER = "roberta-base"  # settings 3-5: DistilRoBERTa's width and heads, twice its depth


def model_config(name: str, scale: int = 1, **overrides):
    """A ``RobertaConfig`` of model ``name``, widths and depths divided by ``scale``."""
    from transformers import RobertaConfig

    dims = dict(MODELS[name])
    if scale != 1:
        hidden = dims["hidden_size"] // scale
        heads = max(hidden // 64, 1)
        while hidden % heads:  # the heads must split the width evenly
            heads -= 1
        dims.update(
            hidden_size=hidden,
            num_hidden_layers=math.ceil(dims["num_hidden_layers"] / scale),
            num_attention_heads=heads,
            intermediate_size=dims["intermediate_size"] // scale,
        )
    return RobertaConfig(**{**dims, **overrides})
