"""A tiny local T5: a SentencePiece-style unigram tokenizer and a ``T5ForConditionalGeneration``,
built offline from the tiny corpus and saved with ``save_pretrained``.

The stand-ins for ``t5-large`` / ``t5-small`` in tests (paper section 4.7). The tokenizer has
T5's layout: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, unigram pieces with a ``▁`` word-start
marker, then the 100 sentinels ``<extra_id_N>`` that ``T5TokenizerFast(extra_ids=100)`` adds;
it is loaded back through ``AutoTokenizer.from_pretrained``. The verbalizer and template words
(``tiny.REQUIRED_WORDS``) are made single pieces by adding ``▁word`` to the trained vocabulary
at the best score, so the Viterbi segmentation always keeps them whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .tiny import REQUIRED_WORDS, save_random_model, write_tiny_corpus

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["build_tiny_t5", "build_tiny_t5_setup", "train_tiny_t5_tokenizer"]

T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5


def train_tiny_t5_tokenizer(
    corpus_files: list[str | Path], out_dir: str | Path, vocab_size: int = 500
) -> PreTrainedTokenizerBase:
    """Train a unigram tokenizer on the corpus lines; save it as a T5 tokenizer, load it back."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import AutoTokenizer, T5TokenizerFast

    lines = [
        line
        for f in corpus_files
        for line in Path(f).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=T5_SPECIAL_TOKENS,
        unk_token="<unk>",
        show_progress=False,
    )
    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trained.train_from_iterator(lines, trainer=trainer)
    vocab = [(piece, score) for piece, score in _unigram_vocab(trained)]
    best = max(score for piece, score in vocab if piece not in T5_SPECIAL_TOKENS)
    have = {piece for piece, _ in vocab}
    vocab += [("▁" + w, best) for w in REQUIRED_WORDS if "▁" + w not in have]
    tok = Tokenizer(models.Unigram(vocab, unk_id=T5_SPECIAL_TOKENS.index("<unk>")))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(  # T5 ends every input with </s>
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    T5TokenizerFast(tokenizer_file=str(out_dir / "tokenizer.json"), extra_ids=100).save_pretrained(
        out_dir
    )
    loaded = AutoTokenizer.from_pretrained(out_dir)
    for word in REQUIRED_WORDS:
        ids = loaded.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny T5 tokenizer split required word {word!r} into {ids}")
    return loaded


def _unigram_vocab(tokenizer) -> list[tuple[str, float]]:
    import json

    return [tuple(entry) for entry in json.loads(tokenizer.to_str())["model"]["vocab"]]


def build_tiny_t5(
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
):
    """A randomly initialised T5 (tied embeddings, so the head rescales by ``d_model ** -0.5``)
    sized for CPU tests, saved with its tokenizer and loaded back."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // heads,
        d_ff=4 * d_model,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return save_random_model(T5ForConditionalGeneration, config, tokenizer, out_dir, seed)


def build_tiny_t5_setup(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """The T5 counterpart of ``tiny.build_tiny_setup``: corpus, unigram tokenizer, a 'teacher'
    and a smaller 'student' under ``root``: their paths."""
    root = Path(root)
    corpus = write_tiny_corpus(root / "corpus" / "tiny_corpus.txt", seed=seed)
    tok = train_tiny_t5_tokenizer([corpus], root / "tokenizer")
    build_tiny_t5(tok, root / "teacher", d_model=64, layers=2, heads=4, seed=seed)
    build_tiny_t5(tok, root / "student", d_model=32, layers=1, heads=2, seed=seed + 1)
    return {
        "corpus": corpus,
        "tokenizer": root / "tokenizer",
        "teacher": root / "teacher",
        "student": root / "student",
    }
