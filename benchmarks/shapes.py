"""The real models' dimensions, from their published ``config.json`` files (random weights are
built from them, so no benchmark downloads anything).

``model_config(name, scale)`` divides widths and depths by ``scale`` for CPU runs, keeping the
proportions and heads about 64 wide; the vocabulary is never scaled (the LM head over
50,265 tokens is what the kernels and the mask-only head are about). T5 (paper 4.7: T5-large
into T5-small) has its own configs, ``T5_MODELS``; ``lm_head_shape(name)`` gives any model's
(vocabulary, hidden) head shape, which is all the kernel benchmarks need.
"""

from __future__ import annotations

import math

__all__ = [
    "BASE_TEACHER",
    "MODELS",
    "STUDENT",
    "T5_MODELS",
    "T5_STUDENT",
    "T5_TEACHER",
    "TEACHER",
    "lm_head_shape",
    "model_config",
]

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
# T5's published configs: 32,128 embeddings (32,100 tokens, padded), tied and rescaled by
# d_model ** -0.5 before the head, relative positions, ReLU feed-forward
T5_MODELS: dict[str, dict] = {
    "t5-large": {"d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_heads": 16, "num_layers": 24,
                 "vocab_size": 32_128},
    "t5-small": {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_heads": 8, "num_layers": 6,
                 "vocab_size": 32_128},
}  # fmt: skip
TEACHER, STUDENT = "roberta-large", "distilroberta-base"  # the paper's pair
T5_TEACHER, T5_STUDENT = "t5-large", "t5-small"  # its section 4.7 pair
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


def lm_head_shape(name: str) -> tuple[int, int]:
    """(vocabulary, hidden) of model ``name``'s LM head, RoBERTa-style or T5."""
    if name in T5_MODELS:
        return T5_MODELS[name]["vocab_size"], T5_MODELS[name]["d_model"]
    return MODELS[name]["vocab_size"], MODELS[name]["hidden_size"]
