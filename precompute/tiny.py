"""Tiny local stand-ins for the real models: a generated corpus, a byte-level BPE tokenizer and
RoBERTa-style masked LMs, all built offline and saved with ``save_pretrained``.

The demo (``make demo``) and the tests load them back through the same ``from_pretrained``
path that real checkpoints (``roberta-large``, ``distilroberta-base``) take, so no model hub is
needed. The corpus is generated from a small grammar written for this project: documents are
about one topic each, so sentences of one document share words and adjacent sentences share
more, which gives the sentence-pair task a learnable signal.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "REQUIRED_WORDS",
    "build_tiny_masked_lm",
    "build_tiny_setup",
    "save_random_model",
    "train_tiny_tokenizer",
    "write_tiny_corpus",
    "write_tiny_pair_task",
]

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

# Words that verbalizers and templates need as single leading-space tokens (paper Table 6 and
# the intermediate tasks): the tokenizer is trained so each of these is one token.
REQUIRED_WORDS = [
    "terrible",
    "bad",
    "okay",
    "good",
    "great",
    "Yes",
    "No",
    "Maybe",
    "It",
    "was",
    "This",
    "is",
    "A",
    "All",
    "in",
    "all",
    "the",
    "movie",
    "film",
]

_TOPICS = {
    "river": ["water", "boat", "bridge", "fish", "bank", "current", "valley", "flood"],
    "kitchen": ["bread", "oven", "salt", "knife", "soup", "table", "recipe", "butter"],
    "orchestra": ["violin", "concert", "score", "drum", "stage", "choir", "piano", "tempo"],
    "harbor": ["ship", "crane", "cargo", "dock", "sailor", "anchor", "tide", "lighthouse"],
    "garden": ["rose", "soil", "seed", "fence", "tulip", "rain", "shovel", "bee"],
    "library": ["book", "shelf", "reader", "page", "archive", "author", "desk", "lamp"],
    "mountain": ["peak", "snow", "trail", "rope", "summit", "glacier", "camp", "ridge"],
    "market": ["price", "coin", "stall", "apple", "trader", "basket", "crowd", "cheese"],
}
_SUBJECTS = ["The old", "A quiet", "Every", "That small", "One bright", "The last", "Our"]
_VERBS = ["watched", "carried", "found", "remembered", "painted", "followed", "moved", "praised"]
_LINKS = ["near the", "beside the", "after the", "under the", "with the", "before the"]
_OPINIONS = ["great", "good", "okay", "bad", "terrible"]


def _sentence(rng: random.Random, words: list[str]) -> str:
    a, b, c = rng.sample(words, 3)
    form = rng.randrange(4)
    if form == 0:
        return f"{rng.choice(_SUBJECTS)} {a} {rng.choice(_VERBS)} the {b} {rng.choice(_LINKS)} {c}."
    if form == 1:
        return f"Nobody expected the {a} to be so {rng.choice(_OPINIONS)} {rng.choice(_LINKS)} {b}."
    if form == 2:
        opinion, verb = rng.choice(_OPINIONS), rng.choice(_VERBS)
        return f"It was a {opinion} day for the {a}, and the {b} {verb} it."
    return f"Why did the {a} {rng.choice(['stay', 'leave', 'wait'])} {rng.choice(_LINKS)} {b}?"


def write_tiny_corpus(path: str | Path, n_docs: int = 120, seed: int = 0) -> Path:
    """Write ``n_docs`` generated documents of 3-9 sentences, separated by blank lines."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    docs = []
    for _ in range(n_docs):
        words = _TOPICS[rng.choice(topics)]
        docs.append(" ".join(_sentence(rng, words) for _ in range(rng.randint(3, 9))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def write_tiny_pair_task(root: str | Path, per_label: int = 24, seed: int = 0) -> Path:
    """Write a tiny sentence-pair task in GLUE's RTE layout (``root/RTE/train.tsv`` and
    ``dev.tsv``: ``index, sentence1, sentence2, label``) from the corpus's own grammar, for
    few-shot evaluation of the tiny models (``make-kshot`` then ``evaluate-fewshot``);
    returns ``root``.

    ``entailment`` pairs two sentences about one topic, ``not_entailment`` two of different
    topics: what the corpus's documents and so the sentence-pair intermediate task teach.
    """
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    folder = Path(root) / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        labels = [label for label in ("entailment", "not_entailment") for _ in range(per_label)]
        rng.shuffle(labels)
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i, label in enumerate(labels):
            first, other = rng.sample(topics, 2)
            second = first if label == "entailment" else other
            pair = _sentence(rng, _TOPICS[first]), _sentence(rng, _TOPICS[second])
            rows.append(f"{i}\t{pair[0]}\t{pair[1]}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return Path(root)


def train_tiny_tokenizer(
    corpus_files: list[str | Path], out_dir: str | Path, vocab_size: int = 600
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE with RoBERTa's special tokens; save it as a RobertaTokenizerFast."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    # Repeating the required words makes the BPE learn each one (with its leading space) whole.
    boost = [" " + " ".join(REQUIRED_WORDS)] * 200
    texts = [Path(f).read_text(encoding="utf-8") for f in corpus_files] + boost
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok = RobertaTokenizerFast(
        vocab=bpe.get_vocab(),
        merges=_merges_of(bpe),
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False),
    )
    for word in REQUIRED_WORDS:
        ids = tok.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer split required word {word!r} into {ids}")
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    return RobertaTokenizerFast.from_pretrained(out_dir)


def _merges_of(bpe) -> list[tuple[str, str]]:
    import json

    merges = json.loads(bpe._tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def build_tiny_masked_lm(
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_positions: int = 130,
):
    """A randomly initialised RoBERTa masked LM sized for CPU tests, saved and loaded back."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_positions + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return save_random_model(RobertaForMaskedLM, config, tokenizer, out_dir, seed)


def save_random_model(
    model_class: Any, config: Any, tokenizer: Any, out_dir: str | Path, seed: int
):
    """A ``model_class`` with ``config`` and weights drawn after ``torch.manual_seed(seed)``,
    saved with ``tokenizer`` into ``out_dir`` and loaded back through ``from_pretrained``."""
    import torch

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    model_class(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model_class.from_pretrained(out_dir)


def build_tiny_setup(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Corpus, tokenizer, a 'teacher', a smaller 'student' and a 'student-wide' (the teacher's
    hidden size and heads, one layer) under ``root``: their paths."""
    root = Path(root)
    corpus = write_tiny_corpus(root / "corpus" / "tiny_corpus.txt", seed=seed)
    tok = train_tiny_tokenizer([corpus], root / "tokenizer")
    build_tiny_masked_lm(tok, root / "teacher", hidden=64, layers=2, heads=4, seed=seed)
    build_tiny_masked_lm(tok, root / "student", hidden=32, layers=1, heads=2, seed=seed + 1)
    # the teacher's width and heads with half its layers: for hidn, attn and cos
    build_tiny_masked_lm(tok, root / "student-wide", hidden=64, layers=1, heads=4, seed=seed + 2)
    return {
        "corpus": corpus,
        "tokenizer": root / "tokenizer",
        "teacher": root / "teacher",
        "student": root / "student",
        "student_wide": root / "student-wide",
    }
