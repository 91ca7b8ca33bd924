"""Prompt-based fine-tuning with demonstrations, as LM-BFF does it (Gao et al., 2021, section 5;
``src/dataset.py`` and ``run.py`` of princeton-nlp/LM-BFF).

After the query's filled-in template come one demonstration per label, in label order, each
written with the same template minus ``*cls*`` and with the label's word where the mask was::

    <s> x It was <mask> . </s> d0 It was terrible . </s> d1 It was great . </s>

STS-B gets one demonstration, not two: LM-BFF declares one label for it (``processors.py``,
``"sts-b": 1``), so ``run.py`` builds a demonstration template of one block, ``*label_0*`` its
low word, and only the demonstration drawn from the low bin (score <= 2.5) is in the input;
the one drawn from the high bin is never read (``demo_label_words``).

Sampling (LM-BFF's ``select_context``): the candidates are the training examples, minus the
query itself when the query is a training example; a random permutation of them is walked and
the first example of each label is kept. Training draws afresh each time an example is used
(each epoch); evaluation draws ``samples`` demonstration sets per query once (LM-BFF's
``num_sample``, 16) and averages their label-word logits (their predicted scores for STS-B,
whose model output LM-BFF averages). STS-B's "labels" are two bins when sampling and
filtering: score <= 2.5 (the low word ``No``) and above (``Yes``). The draws are NumPy
generators seeded with the split's seed (and the epoch, for training), so every grid point sees
the same demonstrations.

Filtering (LM-BFF's ``--demo_filter``): candidates are ranked by the cosine similarity of
their sentence embedding to the query's (pair tasks embed ``x0 + ' ' + x1``), and only the top
``int(len(candidates) // labels * rate)`` of each label are kept, before sampling. Embeddings
are the mean over real tokens of the last hidden states of a model folder the user names
(LM-BFF uses Sentence-BERT ``roberta-large-nli-stsb-mean-tokens``, which is such a mean).

Length: the max length is doubled for SST-5, MR and CR (LM-BFF's ``--double_demo``); the first
sentence is capped at ``first_sent_limit`` and every other sentence at ``other_sent_limit``
(SST-5 20, MR and CR 50), as in LM-BFF. Beyond that, demonstration sentences are shortened
first (longest first) and the query's only when the demonstrations are empty; template words,
label words and the mask always stay. LM-BFF cuts the whole sequence's tail instead, which
``truncation="lmbff"`` reproduces (``learners.encode_prompts``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from smash.precompute.kshot.data import Example
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.templates import (
    Part,
    Template,
    is_sentinel_tokenizer,
    parse_template,
)
from smash.train.fewshot.learners import (
    Batch,
    Features,
    FeatureSets,
    PromptLearner,
    encode_prompts,
    interpolation_predict,
)

__all__ = [
    "DEMO_MODES",
    "DemoOptions",
    "DemoPromptLearner",
    "SentenceEmbedder",
    "demo_bin",
    "demo_label_words",
    "demo_max_length",
    "demo_samples",
    "demo_spec",
    "demo_template",
    "ensemble_predict",
    "filter_by_similarity",
    "sample_demos",
]

DEMO_MODES = ("prompt-demo", "lmbff")


@dataclass(frozen=True)
class DemoOptions:
    """How demonstrations are drawn: ``samples`` sets per evaluated query (default: LM-BFF's,
    ``demo_samples``); similarity filtering
    with the embeddings of ``filter_model`` keeping the top ``filter_rate`` of each label;
    ``prompts`` an LM-BFF checkout (mode ``lmbff``) whose top label words are used instead of
    the manual ones when ``auto_words``."""

    samples: int | None = None
    filter_model: str | None = None
    filter_rate: float = 0.5
    prompts: str | None = None
    auto_words: bool = False


def demo_bin(task: Task, label: float) -> int:
    """The demonstration "label" of an example: its class, or for regression 0 when the score
    is at most ``task.bin_at`` (LM-BFF's median, 2.5 for STS-B) and 1 above."""
    if task.is_regression:
        return 0 if float(label) <= task.bin_at else 1
    return int(label)


# LM-BFF's run_experiment.sh draws 4 sets, not 16, for the tasks with large test sets
_FEWER_SAMPLES = {"MNLI": 4, "SNLI": 4, "QQP": 4}


def demo_samples(task: Task, given: int | None = None) -> int:
    """Demonstration sets per evaluated query: ``given``, else LM-BFF's (16; 4 for MNLI, SNLI
    and QQP)."""
    return given if given is not None else _FEWER_SAMPLES.get(task.name, 16)


def demo_max_length(task: Task, max_length: int) -> int:
    """The max length with demonstrations: doubled for the tasks LM-BFF runs with
    ``--double_demo`` (SST-5, MR, CR)."""
    return 2 * max_length if task.double_demo else max_length


def demo_label_words(task: Task, verbalizer: Sequence[str]) -> list[str]:
    """The label words that get a demonstration, in label order: every label's, and for
    regression the low word only. LM-BFF's STS-B has one label (``num_labels_mapping``), so its
    demonstration template has one block (``label_0``, the low word ``'0'`` maps to), which
    reads the sentences of the low bin's demonstration."""
    return list(verbalizer[:1]) if task.is_regression else list(verbalizer)


def demo_spec(task: Task, template: str, verbalizer: Sequence[str]) -> str:
    """The demonstration template of ``template`` for ``task``, as LM-BFF's run.py spells it."""
    words = demo_label_words(task, verbalizer)
    return demo_template(parse_template(template), words, len(task.text_columns)).spec


def demo_template(template: Template, words: Sequence[str], sentences: int) -> Template:
    """The query's template followed by one block per label word: the template's parts without
    ``cls``, sentence ``i`` of block ``j`` numbered ``sentences * (j + 1) + i``, and the mask
    replaced by the label word (typed without a space; the space is added, as the label word
    at the mask is ``' ' + word``)."""
    parts = list(template.parts)
    for j, word in enumerate(words):
        for p in template.parts:
            if p.kind == "special" and p.text == "cls":
                continue
            if p.kind == "special" and p.text == "mask":
                parts.append(Part(kind="literal", text=" " + word))
            elif p.kind == "sentence":
                parts.append(replace(p, index=sentences * (j + 1) + p.index))
            else:
                parts.append(p)
    return Template(spec=_lmbff_spec(template.spec, len(words), sentences), parts=tuple(parts))


_SENT_PART = re.compile(r"^(\+?sent[lu]?-?)_(\d+)$")


def _lmbff_spec(spec: str, blocks: int, sentences: int) -> str:
    """The demonstration template as LM-BFF's run.py spells (and logs) it: the template, then
    per label the template without ``*cls*``, its sentences renumbered, ``*label_j*`` for the
    mask."""
    raw = spec.replace("*cls*", "").split("*")
    out = spec
    for j in range(blocks):
        block = []
        for piece in raw:
            if piece == "mask":
                piece = f"label_{j}"
            elif (m := _SENT_PART.match(piece)) is not None:
                piece = f"{m[1]}_{sentences * (j + 1) + int(m[2])}"
            block.append(piece)
        out += "*".join(block)
    return out


def filter_by_similarity(
    support: np.ndarray,
    query: np.ndarray,
    bins: Sequence[int],
    num_bins: int,
    rate: float,
    exclude: int | None = None,
) -> list[int]:
    """Indices of the support examples kept for one query, most similar first.

    ``support`` (N, H) and ``query`` (H,) are embeddings; ``bins[i]`` is support example i's
    label. Candidates (all but ``exclude``) are sorted by cosine similarity, descending (ties
    keep index order), and the first ``int(len(candidates) // num_bins * rate)`` of each label
    are kept (LM-BFF's ``demo_filter_rate``)."""
    candidates = [i for i in range(len(support)) if i != exclude]
    s = torch.as_tensor(support[candidates], dtype=torch.float32)
    q = torch.as_tensor(query, dtype=torch.float32)
    sims = torch.nn.functional.cosine_similarity(s, q[None, :], dim=-1, eps=1e-8).numpy()
    order = np.argsort(-sims, kind="stable")
    limit = int(len(candidates) // num_bins * rate)
    counts = [0] * num_bins
    kept = []
    for o in order:
        i = candidates[o]
        if counts[bins[i]] < limit:
            counts[bins[i]] += 1
            kept.append(i)
    return kept


def sample_demos(
    candidates: Sequence[int], bins: Sequence[int], num_bins: int, rng: np.random.Generator
) -> list[int]:
    """One demonstration per label, in label order: the first candidate of each label along a
    random permutation of ``candidates`` (LM-BFF's ``select_context``)."""
    chosen: list[int | None] = [None] * num_bins
    for o in rng.permutation(len(candidates)):
        i = candidates[o]
        if chosen[bins[i]] is None:
            chosen[bins[i]] = i
            if all(c is not None for c in chosen):
                break
    missing = [b for b, c in enumerate(chosen) if c is None]
    if missing:
        raise ValueError(f"no demonstration candidate of label {missing[0]} for a query")
    return chosen


def ensemble_predict(set_outputs: torch.Tensor, task: Task) -> torch.Tensor:
    """Predictions from (B, S, C) label-word logits of S demonstration sets per query: the
    class of the mean logits, or for regression the mean of the S predicted scores."""
    if task.is_regression:
        b, s, c = set_outputs.shape
        return interpolation_predict(set_outputs.reshape(b * s, c), task.bounds).view(b, s).mean(1)
    return set_outputs.float().mean(dim=1).argmax(dim=-1)


class SentenceEmbedder:
    """Mean-pooled last hidden states of a model folder (Sentence-BERT's ``mean-tokens``),
    memoised by text. A sentence-transformers folder that keeps its transformer in
    ``0_Transformer/`` is read from there; its ``sentence_bert_config.json`` sets the length."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32):
        from smash.precompute.shared.adapters import max_sequence_length
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file() and (folder / "0_Transformer").is_dir():
            folder = folder / "0_Transformer"
        config = AutoConfig.from_pretrained(folder)
        self.max_length = min(512, max_sequence_length(config))
        sbert = folder / "sentence_bert_config.json"
        if sbert.is_file():
            self.max_length = int(json.loads(sbert.read_text())["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
        self.model = (model.get_encoder() if config.is_encoder_decoder else model).eval()
        self.device, self.batch_size = torch.device(device), batch_size
        self.model.to(self.device)
        self.cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, H) float32 embeddings of ``texts``."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)  # fmt: skip
            hidden = self.model(**enc).last_hidden_state.float()  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            means = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            for text, vec in zip(chunk, means.cpu().numpy()):
                self.cache[text] = vec
        return np.stack([self.cache[t] for t in texts])


def embedding_text(example: Example) -> str:
    """The text LM-BFF embeds for filtering: the sentence, or both joined by a space."""
    return " ".join(example.texts)


class _TrainDemos:
    """The training set with demonstrations: ``for_epoch(e)`` encodes every training example
    with demonstrations drawn for epoch ``e`` (LM-BFF draws anew each time an example is used)."""

    def __init__(self, learner: DemoPromptLearner, candidates: list[list[int]]):
        self.learner, self.candidates = learner, candidates

    def __len__(self) -> int:
        return len(self.candidates)

    def for_epoch(self, epoch: int) -> list[Features]:
        learner = self.learner
        rng = np.random.default_rng([learner.seed, 0, epoch])
        demos = [sample_demos(c, learner.bins, learner.num_bins, rng) for c in self.candidates]
        return learner.encode_with(learner.support, demos)


class DemoPromptLearner:
    """Prompt-based fine-tuning with one demonstration per label after the query (LM-BFF's
    ``prompt-demo``). ``support`` is the split's training set: encoding it gives the training
    set (demonstrations re-drawn each epoch, never the query itself); any other examples get
    ``samples`` fixed demonstration sets each, whose outputs ``predict`` averages."""

    def __init__(
        self,
        model,
        tokenizer,
        task: Task,
        template: str,
        verbalizer: Sequence[str],
        max_length: int,
        support: Sequence[Example],
        seed: int,
        samples: int = 16,
        embedder: SentenceEmbedder | None = None,
        filter_rate: float = 0.5,
        rows_per_pass: int = 64,
        truncation: str = "sentences",
    ):
        if is_sentinel_tokenizer(tokenizer):
            raise ValueError(
                "demonstrations are not supported for T5 (the paper evaluates T5 with prompts "
                "only); use --mode prompt or zero-shot"
            )
        if samples < 1 or not 0 < filter_rate <= 1:
            raise ValueError(f"need samples >= 1 and 0 < filter rate <= 1, got {samples}, "
                             f"{filter_rate}")  # fmt: skip
        self.prompt = PromptLearner(
            model, tokenizer, task, template, verbalizer, max_length, truncation
        )
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.max_length, self.seed, self.samples = max_length, seed, samples
        self.embedder, self.filter_rate, self.rows_per_pass = embedder, filter_rate, rows_per_pass
        n = len(task.text_columns)
        self.num_bins = len(verbalizer)  # one demonstration drawn from each bin
        words = demo_label_words(task, verbalizer)  # ... of which these are in the input
        self.template = demo_template(self.prompt.template, words, n)
        total = n * (1 + len(words))
        self.limits = {i: task.other_sent_limit for i in range(1, total) if task.other_sent_limit}
        if task.first_sent_limit:
            self.limits[0] = task.first_sent_limit
        self.demo_sentences = range(n, total)
        self.support = list(support)
        self.bins = [demo_bin(task, ex.label) for ex in self.support]
        for b in range(self.num_bins):
            if self.bins.count(b) < 2:
                raise ValueError(
                    f"{task.name}: demonstrations need at least 2 training examples of each "
                    f"label (one besides the query), label {b} has {self.bins.count(b)}"
                )
        self.support_emb = None
        if embedder is not None:
            limit = int((len(self.support) - 1) // self.num_bins * filter_rate)
            if limit < 1:
                raise ValueError(
                    f"{task.name} seed {seed}: a filter rate of {filter_rate} keeps "
                    f"int({len(self.support) - 1} // {self.num_bins} x {filter_rate}) = {limit} "
                    "demonstration candidates per label: raise --demo-filter-rate or K"
                )
            self.support_emb = embedder.embed([embedding_text(ex) for ex in self.support])

    def _candidates(self, query_emb: np.ndarray | None, exclude: int | None) -> list[int]:
        if query_emb is None:
            return [i for i in range(len(self.support)) if i != exclude]
        return filter_by_similarity(self.support_emb, query_emb, self.bins, self.num_bins,
                                    self.filter_rate, exclude)  # fmt: skip

    def encode(self, examples: Sequence[Example]) -> _TrainDemos | list[FeatureSets]:
        embs: list = [None] * len(examples)
        if self.embedder is not None:
            embs = list(self.embedder.embed([embedding_text(ex) for ex in examples]))
        if list(examples) == self.support:  # the training set: the query is never its own demo
            return _TrainDemos(self, [self._candidates(e, i) for i, e in enumerate(embs)])
        candidates = [self._candidates(e, None) for e in embs]
        rng = np.random.default_rng([self.seed, 1])
        # sample-major, as LM-BFF draws them: every query's first set, then every second set...
        demos = [[sample_demos(c, self.bins, self.num_bins, rng) for c in candidates]
                 for _ in range(self.samples)]  # fmt: skip
        rows = self.encode_with(
            [ex for _ in range(self.samples) for ex in examples], [d for s in demos for d in s]
        )
        n = len(examples)
        return [FeatureSets(tuple(rows[s * n + q] for s in range(self.samples)), ex.label)
                for q, ex in enumerate(examples)]  # fmt: skip

    def encode_with(self, queries: Sequence[Example], demos: Sequence[list[int]]) -> list[Features]:
        """Each query followed by its demonstrations (support indices in label order; as in
        LM-BFF, the template reads those it has a block for: all, or STS-B's low one)."""
        sentences = [
            [*q.texts, *(t for d in ds for t in self.support[d].texts)]
            for q, ds in zip(queries, demos)
        ]
        enc = encode_prompts(self.template, self.tokenizer, sentences, self.max_length,
                             self.limits, self.prompt.truncation, self.demo_sentences)  # fmt: skip
        return [Features(e.input_ids, e.mask_position, q.label) for e, q in zip(enc, queries)]

    def forward(self, batch: Batch) -> torch.Tensor:
        """Label-word logits at the mask: (B, C) for training rows, (B, S, C) for a batch of
        demonstration sets (run ``rows_per_pass`` rows at a time, each trimmed of padding)."""
        if not batch.num_sets:
            return self.prompt.forward(batch)
        outs = []
        for start in range(0, batch.input_ids.shape[0], self.rows_per_pass):
            rows = slice(start, start + self.rows_per_pass)
            width = int(batch.attention_mask[rows].sum(dim=1).max())
            part = Batch(batch.input_ids[rows, :width], batch.attention_mask[rows, :width],
                         batch.mask_positions[rows], batch.labels[rows])  # fmt: skip
            outs.append(self.prompt.forward(part))
        out = torch.cat(outs)
        return out.view(-1, batch.num_sets, out.shape[-1])

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.prompt.loss(outputs, labels)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.dim() == 3:
            return ensemble_predict(outputs, self.task)
        return self.prompt.predict(outputs)
