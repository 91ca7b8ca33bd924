"""LM-BFF's demonstrations and searched prompts (mode ``prompt-demo`` and ``lmbff``)."""

import json
import shutil
from pathlib import Path

import lmbff_rules
import numpy as np
import pytest
import torch
from fewshot_support import cli_error
from smash.precompute.kshot.data import DataError, Example, load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.fewshot.auto_prompts import (
    check_label_words,
    read_auto_prompt,
    read_label_mapping,
    read_template,
)
from smash.train.fewshot.cli import main
from smash.train.fewshot.demonstrations import (
    DemoPromptLearner,
    SentenceEmbedder,
    demo_bin,
    demo_max_length,
    demo_samples,
    ensemble_predict,
    filter_by_similarity,
    sample_demos,
)
from smash.train.fewshot.learners import PromptLearner, collate, interpolation_predict

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
LMBFF = Path(__file__).parent / "data" / "lmbff"  # lines of LM-BFF's files (SOURCE.md)


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("STS-B", "MRPC")], seeds=[13], k=8)
    make_kshot(ORIGINAL, root, [get_task("SST-2")], seeds=[13, 21, 42], k=16)
    return root


@pytest.fixture(scope="module")
def student(tiny):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(tiny["student"])


def _ex(*texts, label=0, line=2):
    return Example(texts=tuple(texts), label=label, line=line)


def _learner(model, tok, task, support, **kw):
    kw.setdefault("seed", 13)
    length = kw.pop("max_length", 512)
    template = kw.pop("template", task.template)
    return DemoPromptLearner(model, tok, task, template, task.verbalizer, length, support, **kw)


# --- LM-BFF's searched prompts -------------------------------------------------------------


@pytest.mark.parametrize(
    "task, seed, template, words",
    [
        ("SST-2", 13, "*cls**sent_0*_And_that_is*mask*.*sep+*", ("embarrassing", "exquisite")),
        ("SST-2", 21, "*cls**sent_0*_A*mask*_film.*sep+*", ("pointless", "spectacular")),
        # the CSV tasks' mappings have integer keys
        ("SST-5", 13, "*cls**sent_0*_A*mask*_movie.*sep+*",
         ("disgusting", "simple", "hilarious", "fascinating", "magnificent")),
        ("MRPC", 87, "*cls**sent-_0*.*mask*._2:*+sentl_1**sep+*", ("Outside", '"')),
        ("STS-B", 13, "*cls**sent-_0*.*mask*se:*+sentl_1**sep+*", ("West", "Ah")),  # low, high
        ("MNLI", 13, "*cls**sent-_0*.*mask*_that's_because*+sentl_1**sep+*",
         ("Alternatively", "Similarly", "Additionally")),  # contradiction, entailment, neutral
    ],
)  # fmt: skip
def test_auto_prompt_is_the_top_line(task, seed, template, words):
    task = get_task(task)
    prompt = read_auto_prompt(LMBFF, task, 16, seed)
    folder = {"SST-5": "sst-5"}.get(task.name, task.name)
    assert prompt.template == template and prompt.words == words
    assert prompt.template_source == f"{LMBFF}/auto_template/{folder}/16-{seed}.sort.txt:1"
    assert prompt.words_source == f"{LMBFF}/auto_label_mapping/{folder}/16-{seed}.sort.txt:1"
    assert read_auto_prompt(LMBFF, task, 16, seed, words=False).words == ()


def test_auto_template_skips_blank_lines_as_lmbff(tmp_path):
    path = tmp_path / "16-13.sort.txt"
    path.write_text("\n  \n*cls**sent_0*_So*mask*.*sep+*\n*cls**sent_0**mask*.*sep+*\n")
    assert read_template(path, get_task("SST-2")) == ("*cls**sent_0*_So*mask*.*sep+*", f"{path}:3")


@pytest.mark.parametrize(
    "kind, text, message",
    [
        ("template", "*cls**sent_0*_So*mask**mask*.*sep+*\n", ":1: template"),
        ("template", "*cls**sent_0**mask*,*+sentl_1**sep+*\n", ":1: template '*cls**sent_0**m"),
        ("template", "", ": no template (the file is empty)"),
        (
            "template",
            "*cls*_It_was*mask*.*sep+*\n",
            ":1: template '*cls*_It_was*mask*.*sep+*' reads no sentence (no *sent_i* part)",
        ),
        ("mapping", "['bad', 'good']\n", ":1: expected a dict of label to word"),
        ("mapping", "{'0': 'bad', '1': 'good'\n", ":1: expected a dict of label to word"),
        ("mapping", "{'0': 'bad', '2': 'good'}\n", ":1: labels ['0', '2'] are not SST-2's"),
        ("mapping", "{'0': 'bad', 1: 'good', '1': 'fine'}\n", ":1: labels"),
        ("mapping", "{'0': 'very bad', '1': 'good'}\n", ":1: label word 'very bad' is not"),
        ("mapping", "{'0': 3, '1': 'good'}\n", ":1: label word 3 is not"),
    ],
)
def test_malformed_auto_files_name_file_and_line(tmp_path, kind, text, message):
    path = tmp_path / "16-13.sort.txt"
    path.write_text(text)
    read = read_template if kind == "template" else read_label_mapping
    with pytest.raises(DataError) as err:
        read(path, get_task("SST-2"))
    assert str(err.value).startswith(str(path)) and message in str(err.value), err.value


def test_missing_auto_file_is_named(tmp_path):
    shutil.copytree(LMBFF / "auto_template", tmp_path / "auto_template")
    with pytest.raises(DataError, match=r"auto_label_mapping/SST-2/16-13.sort.txt: file not"):
        read_auto_prompt(tmp_path, get_task("SST-2"), 16, 13)
    with pytest.raises(DataError, match=r"auto_template/SST-2/16-42.sort.txt: file not found"):
        read_auto_prompt(LMBFF, get_task("SST-2"), 16, 42)


def test_auto_label_word_must_be_one_token(tiny_tokenizer):
    prompt = read_auto_prompt(LMBFF, get_task("SST-2"), 16, 13)
    with pytest.raises(DataError) as err:  # the tiny BPE splits LM-BFF's rare words
        check_label_words(tiny_tokenizer, prompt.words, prompt.words_source)
    assert str(err.value).startswith(f"{prompt.words_source}: label word 'embarrassing' is not")


# --- the input with demonstrations ----------------------------------------------------------


@pytest.mark.parametrize("task, seed", [("SST-2", 13), ("SST-2", 21), ("SST-5", 13),
                                        ("MRPC", 87), ("STS-B", 13), ("MNLI", 13)])  # fmt: skip
def test_demo_template_is_lmbffs(task, seed):
    from smash.precompute.shared.templates import parse_template
    from smash.train.fewshot.demonstrations import demo_label_words, demo_spec, demo_template

    task = get_task(task)
    num_labels = len(task.labels) or 1  # LM-BFF's num_labels_mapping: STS-B has 1
    for spec in (read_auto_prompt(LMBFF, task, 16, seed).template, task.template):
        verbalizer = ["w"] * (len(task.labels) or 2)
        words = demo_label_words(task, verbalizer)
        demo = demo_template(parse_template(spec), words, len(task.text_columns))
        assert demo.spec == lmbff_rules.demo_template(spec, num_labels)
        assert demo_spec(task, spec, verbalizer) == demo.spec
        # and its parts are that string's, each label_j the literal ' w'
        as_text = demo.spec
        for j in range(len(words)):
            as_text = as_text.replace(f"*label_{j}*", "*_w*")
        assert demo.parts == parse_template(as_text).parts
        assert demo.num_sentences == len(task.text_columns) * (1 + len(words))


def test_single_sentence_input_equals_hand_assembled(student, tiny_tokenizer):
    tok, task = tiny_tokenizer, get_task("SST-2")
    support = [_ex("a dull film.", label=0), _ex("so good!", label=1), _ex("bad.", label=0),
               _ex("great fun.", label=1)]  # fmt: skip
    learner = _learner(student, tok, task, support)
    [f] = learner.encode_with([_ex("it rocks.", label=1)], [[2, 1]])

    def enc(text):
        return tok.encode(text, add_special_tokens=False)

    # <s> x It was <mask> . </s> d0 It was terrible . </s> d1 It was great . </s>
    expected = [tok.cls_token_id, *enc("it rocks."), *enc(" It was"), tok.mask_token_id,
                *enc("."), tok.sep_token_id]  # fmt: skip
    mask = len(enc("it rocks.")) + len(enc(" It was")) + 1
    for text, word in (("bad.", " terrible"), ("so good!", " great")):
        expected += [*enc(text), *enc(" It was"), *enc(word), *enc("."), tok.sep_token_id]
    assert f.input_ids == expected and f.mask_position == mask and f.label == 1
    assert expected.count(tok.mask_token_id) == 1


def test_pair_input_equals_hand_assembled(student, tiny_tokenizer):
    tok, task = tiny_tokenizer, get_task("MRPC")  # *cls**sent_0**mask*,*+sentl_1**sep+*
    support = [_ex("He left.", "She Stayed.", label=0), _ex("It is red.", "The Car is red.", label=1),
               _ex("A b.", "C d.", label=0), _ex("E f.", "G h.", label=1)]  # fmt: skip
    learner = _learner(student, tok, task, support)
    [f] = learner.encode_with([_ex("Yes it is.", "Indeed It is.", label=0)], [[0, 1]])

    def enc(text):
        return tok.encode(text, add_special_tokens=False)

    def block(a, b, answer):
        return [*enc(a), *answer, *enc(","), *enc(" " + b[0].lower() + b[1:]), tok.sep_token_id]

    expected = [tok.cls_token_id, *block("Yes it is.", "Indeed It is.", [tok.mask_token_id])]
    expected += block("He left.", "She Stayed.", enc(" No"))
    expected += block("It is red.", "The Car is red.", enc(" Yes"))
    assert f.input_ids == expected and f.mask_position == 1 + len(enc("Yes it is."))


STSB_SUPPORT = [
    _ex("A man is playing a guitar.", "A man plays the guitar.", label=4.2),
    _ex("A cat sleeps on the sofa.", "The stock market fell sharply.", label=0.4),
    _ex("Two women are talking.", "Two women chat.", label=3.6),
    _ex("A dog runs.", "It is raining in Paris.", label=2.5),  # <= 2.5: the low bin
]


@pytest.mark.parametrize("seed", [None, 13, 21, 42, 87, 100])
def test_stsb_input_has_lmbffs_one_demonstration(student, tiny_tokenizer, seed):
    """LM-BFF's STS-B has one label, so one demonstration block: the low bin's demonstration
    with the low word ("No"); the high bin's is drawn but not in the input. The manual template
    (seed None) and LM-BFF's five searched ones, id for id."""
    tok, task = tiny_tokenizer, get_task("STS-B")
    template = task.template if seed is None else read_auto_prompt(LMBFF, task, 16, seed).template
    learner = _learner(student, tok, task, STSB_SUPPORT, template=template, max_length=128)
    assert "*label_0*" in learner.template.spec and "label_1" not in learner.template.spec
    query = _ex("Two dogs run in a park.", "Dogs are running outside.", label=3.8)
    [f] = learner.encode_with([query], [[3, 0]])  # drawn: 3 from the low bin, 0 from the high
    words = [tok.encode(" " + w, add_special_tokens=False)[0] for w in task.verbalizer]
    sentences = [*query.texts, *STSB_SUPPORT[3].texts, *STSB_SUPPORT[0].texts]
    lmbff = lmbff_rules.input_ids(tok, lmbff_rules.demo_template(template, 1), sentences, words,
                                  128)  # fmt: skip
    assert f.input_ids + [tok.pad_token_id] * (128 - len(f.input_ids)) == lmbff
    assert f.input_ids[f.mask_position] == tok.mask_token_id
    assert f.input_ids.count(words[0]) == 1 and words[1] not in f.input_ids  # " No" only


def test_truncation_keeps_the_query_and_mask_and_cuts_demonstrations_first(student, tiny_tokenizer):
    tok, task = tiny_tokenizer, get_task("SST-2")
    long = " ".join(["the movie was good"] * 20)
    support = [_ex(long, label=0), _ex(long + " and fun", label=1)] * 2
    query = _ex("short and sweet.", label=1)
    full = _learner(student, tok, task, support).encode_with([query], [[0, 1]])[0]
    for length in (60, 30, 18):
        [f] = _learner(student, tok, task, support, max_length=length).encode_with(
            [query], [[0, 1]]
        )
        assert len(f.input_ids) == length < len(full.input_ids)
        assert f.input_ids[f.mask_position] == tok.mask_token_id
        if length > 20:  # room beside the template words: the query stays whole
            assert f.input_ids[: f.mask_position + 3] == full.input_ids[: full.mask_position + 3]
        else:  # the demonstrations' sentences are empty: then the query gives way
            it_was = len(tok.encode(" It was", add_special_tokens=False))
            assert f.mask_position == 1 + 2 + it_was and len(f.input_ids) == 16 + 2
        for word in (" terrible", " great"):  # the demonstrations keep their label words
            assert tok.encode(word, add_special_tokens=False)[0] in f.input_ids
    with pytest.raises(ValueError, match="alone is 16 tokens"):  # <s>, 3 x (It was W . </s>)
        _learner(student, tok, task, support, max_length=8).encode_with([query], [[0, 1]])


QNLI_SUPPORT = [
    _ex("What color is the sky?", "The sky is blue on a clear day.", label=0),
    _ex(" ".join(["Who wrote the book over many years in a town?"] * 6), "Nobody knows.",
        label=1),  # the label word comes after this long question
    _ex("Is it cold?", "It is cold.", label=0),
    _ex("Who came?", "A man.", label=1),
]  # fmt: skip


def test_lmbff_truncation_cuts_the_tail_as_lmbff_does(student, tiny_tokenizer):
    """A QNLI input with demonstrations beyond the max length (128), as LM-BFF cuts it: the
    tail of the whole input, here the last demonstration's label word with it."""
    tok, task = tiny_tokenizer, get_task("QNLI")
    query = _ex("Where is the station?", "The station is next to the old market.", label=0)
    sentences = [*query.texts, *QNLI_SUPPORT[0].texts, *QNLI_SUPPORT[1].texts]
    yes, no = (tok.encode(" " + w, add_special_tokens=False)[0] for w in task.verbalizer)

    def encode(length, **kw):
        learner = _learner(student, tok, task, QNLI_SUPPORT, max_length=length, **kw)
        return learner.encode_with([query], [[0, 1]])[0]

    whole = encode(10_000)
    assert len(whole.input_ids) > 128 and no in whole.input_ids  # every label word
    f = encode(128, truncation="lmbff")
    lmbff = lmbff_rules.input_ids(tok, lmbff_rules.demo_template(task.template, 2), sentences,
                                  [yes, no], 128)  # fmt: skip
    assert f.input_ids == lmbff == whole.input_ids[:128]
    assert f.input_ids[f.mask_position] == tok.mask_token_id
    assert yes in f.input_ids and no not in f.input_ids  # the last label word is cut off
    ours = encode(128)  # the default keeps every label word, shortening sentences instead
    assert len(ours.input_ids) == 128 and yes in ours.input_ids and no in ours.input_ids


def test_lmbff_truncation_of_a_prompt_without_demonstrations(tiny_tokenizer, student):
    tok, task = tiny_tokenizer, get_task("QNLI")
    example = _ex("Where is it?", " ".join(["It is next to the old market."] * 8), label=1)
    words = [tok.encode(" " + w, add_special_tokens=False)[0] for w in task.verbalizer]
    learner = PromptLearner(student, tok, task, task.template, task.verbalizer, 32, "lmbff")
    [f] = learner.encode([example])
    assert f.input_ids == lmbff_rules.input_ids(tok, task.template, list(example.texts), words, 32)
    assert f.input_ids[-1] != tok.sep_token_id  # LM-BFF's cut takes the closing </s> too
    [ours] = PromptLearner(student, tok, task, task.template, task.verbalizer, 32).encode([example])
    assert len(ours.input_ids) == 32 and ours.input_ids[-1] == tok.sep_token_id
    # a cut before the mask: LM-BFF's code fails on it too (no mask to find)
    late = _ex(" ".join(["Where is it?"] * 20), "Here.", label=1)
    with pytest.raises(ValueError, match="LM-BFF's truncation .--truncation lmbff. cuts an input "
                       "of .* tokens at max_length=32, before its mask"):  # fmt: skip
        learner.encode([late])


def test_first_and_other_sentence_limits_as_lmbff(student, tiny_tokenizer):
    """SST-5: --first_sent_limit 110 --other_sent_limit 20 --double_demo (run_experiment.sh)."""
    tok, task = tiny_tokenizer, get_task("SST-5")
    assert (task.first_sent_limit, task.other_sent_limit, task.double_demo) == (110, 20, True)
    assert demo_max_length(task, 128) == 256 and demo_max_length(get_task("SST-2"), 128) == 128
    assert get_task("MR").other_sent_limit == get_task("CR").other_sent_limit == 50
    assert demo_samples(task) == 16 and demo_samples(get_task("MNLI")) == 4
    assert demo_samples(get_task("QQP"), 7) == 7
    long = " ".join(["the movie was good"] * 50)
    support = [_ex(long, label=b) for b in range(5)] * 2
    learner = _learner(student, tok, task, support, max_length=10_000)
    [f] = learner.encode_with([_ex(long, label=0)], [[0, 1, 2, 3, 4]])
    n = len(tok.encode(long, add_special_tokens=False))
    fixed = 1 + 5 + 5 * 5  # <s>, " It was <mask> . </s>", and per demo " It was W . </s>"
    assert n > 110 and len(f.input_ids) == fixed + 110 + 5 * 20


# --- sampling and filtering -----------------------------------------------------------------


def test_sampling_takes_the_first_of_each_label_along_a_permutation():
    bins = [0, 1, 0, 1, 0, 2, 2]
    candidates = [0, 1, 2, 3, 4, 5, 6]
    perm = np.random.default_rng(7).permutation(len(candidates))
    firsts = {}
    for o in perm:
        firsts.setdefault(bins[candidates[o]], candidates[o])
    got = sample_demos(candidates, bins, 3, np.random.default_rng(7))
    assert got == [firsts[0], firsts[1], firsts[2]]
    with pytest.raises(ValueError, match="no demonstration candidate of label 2"):
        sample_demos([0, 1, 2], bins, 3, np.random.default_rng(0))


def test_training_demonstrations_exclude_the_query_and_are_seeded(student, tiny_tokenizer, kshot):
    task = get_task("SST-2")
    data = load_kshot(kshot, task, 16, 13)
    learner = _learner(student, tiny_tokenizer, task, data.train)
    train = learner.encode(data.train)
    assert len(train) == len(data.train)
    for i, cands in enumerate(train.candidates):
        assert i not in cands and sorted(cands + [i]) == list(range(len(data.train)))
    again = _learner(student, tiny_tokenizer, task, data.train).encode(data.train)
    assert train.for_epoch(0) == again.for_epoch(0)  # same seed, same draws: every grid point
    assert train.for_epoch(0) != train.for_epoch(1)  # drawn afresh each epoch
    other = _learner(student, tiny_tokenizer, task, data.train, seed=21).encode(data.train)
    assert train.for_epoch(0) != other.for_epoch(0)
    # each query's demonstrations: one per label, never the query (read back from the ids)
    rng = np.random.default_rng([13, 0, 0])
    demos = [sample_demos(c, learner.bins, 2, rng) for c in train.candidates]
    assert learner.encode_with(data.train, demos) == train.for_epoch(0)
    for i, (lo, hi) in enumerate(demos):
        assert i not in (lo, hi) and (learner.bins[lo], learner.bins[hi]) == (0, 1)


def test_training_draws_demonstrations_each_epoch(tiny, tiny_tokenizer, kshot):
    """The protocol's training loop asks the training set for each epoch's features."""
    from smash.train.fewshot.protocol import Protocol, _train
    from transformers import AutoModelForMaskedLM

    task = get_task("SST-2")
    data = load_kshot(kshot, task, 16, 13)
    model = AutoModelForMaskedLM.from_pretrained(tiny["student"])
    learner = _learner(model, tiny_tokenizer, task, data.train, samples=2, max_length=64)
    train = learner.encode(data.train)
    epochs = []

    class Recorded:  # the real training set, recording which epochs are drawn
        def __len__(self):
            return len(train)

        def for_epoch(self, epoch):
            epochs.append(epoch)
            return train.for_epoch(epoch)

    protocol = Protocol(learning_rates=(1e-3,), batch_sizes=(4,), max_steps=20, eval_every=10)
    dev = learner.encode(data.dev[:4])
    _train(learner, Recorded(), dev, 1e-3, 4, 13, protocol, torch.device("cpu"))
    assert epochs == [0, 1, 2]  # 32 examples, 8 steps an epoch, 20 steps


def test_stsb_demonstrations_bin_scores_at_the_median():
    task = get_task("STS-B")
    assert [demo_bin(task, s) for s in (0.0, 2.5, 2.52, 5.0)] == [0, 0, 1, 1]
    assert [demo_bin(get_task("MNLI"), c) for c in (0, 1, 2)] == [0, 1, 2]


def test_similarity_filter_keeps_the_most_similar_of_each_label():
    q = np.array([1.0, 0.0])
    angles = [0.1, 0.5, 0.2, 1.4, 0.3, 1.0, 0.05, 1.2]
    support = np.stack([np.array([np.cos(a), np.sin(a)]) * (i + 1) for i, a in enumerate(angles)])
    bins = [0, 0, 0, 0, 1, 1, 1, 1]
    # 8 candidates, 2 labels, rate 0.5: int(8 // 2 * 0.5) = 2 per label, most similar first
    assert filter_by_similarity(support, q, bins, 2, 0.5) == [6, 0, 2, 4]
    # a training query is no candidate: int(7 // 2 * 0.5) = 1 per label
    assert filter_by_similarity(support, q, bins, 2, 0.5, exclude=0) == [6, 2]
    assert filter_by_similarity(support, q, bins, 2, 1.0, exclude=6) == [0, 2, 4, 1, 5, 7]


def test_sentence_embeddings_are_masked_means(tiny):
    from transformers import AutoModel, AutoTokenizer

    embedder = SentenceEmbedder(tiny["student"])
    texts = ["a short one", "a much longer sentence than the other one is"]
    got = embedder.embed(texts)
    model = AutoModel.from_pretrained(tiny["student"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["student"])
    for text, vec in zip(texts, got):
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(vec, hidden.mean(0).numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(embedder.embed(texts[::-1]), got[::-1])  # memoised by text


def test_filtered_learner_samples_among_the_most_similar(student, tiny, tiny_tokenizer, kshot):
    task = get_task("SST-2")
    data = load_kshot(kshot, task, 16, 13)
    embedder = SentenceEmbedder(tiny["student"])
    learner = _learner(student, tiny_tokenizer, task, data.train, embedder=embedder)
    emb = embedder.embed([" ".join(ex.texts) for ex in data.train])
    train = learner.encode(data.train)
    assert train.candidates[3] == filter_by_similarity(emb, emb[3], learner.bins, 2, 0.5, 3)
    assert all(len(c) == 2 * int(31 // 2 * 0.5) for c in train.candidates)


# --- evaluation: the ensemble of demonstration sets -----------------------------------------


@pytest.mark.parametrize("name", ["SST-2", "STS-B"])
def test_eval_averages_the_demonstration_sets(student, tiny_tokenizer, kshot, name):
    task = get_task(name)
    k = 16 if name == "SST-2" else 8
    data = load_kshot(kshot, task, k, 13)
    learner = _learner(student, tiny_tokenizer, task, data.train, samples=3, rows_per_pass=4)
    student.eval()
    feats = learner.encode(data.dev[:5])
    assert all(len(f.sets) == 3 and f.label == ex.label for f, ex in zip(feats, data.dev))
    assert learner.encode(data.dev[:5]) == feats  # seeded
    assert len({tuple(s.input_ids) for f in feats for s in f.sets}) > 5  # the sets differ
    batch = collate(feats, tiny_tokenizer.pad_token_id, task.is_regression)
    with torch.no_grad():
        out = learner.forward(batch)  # (B, 3, C)
        preds = learner.predict(out)
        # each set alone, through the plain prompt learner
        single = torch.stack([
            torch.cat([learner.prompt.forward(
                collate([s], tiny_tokenizer.pad_token_id, task.is_regression)) for s in f.sets])
            for f in feats
        ])  # fmt: skip
    assert out.shape == (len(feats), 3, 2) and len(feats) >= 4
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-5)
    if task.is_regression:  # LM-BFF averages the predicted scores
        manual = torch.stack([interpolation_predict(s, task.bounds).mean() for s in single])
        torch.testing.assert_close(preds, manual)
    else:  # ... and the label-word logits of classes
        assert preds.tolist() == single.mean(1).argmax(-1).tolist()
    assert torch.equal(ensemble_predict(out, task), preds)


def test_t5_is_refused(tiny_t5, kshot):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5["student"])
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5["student"])
    task = get_task("SST-2")
    with pytest.raises(ValueError, match="demonstrations are not supported for T5"):
        _learner(model, tok, task, load_kshot(kshot, task, 16, 13).train)


# --- evaluate-fewshot --mode prompt-demo lmbff ----------------------------------------------


def _argv(tiny, kshot, out, *extra, model=None):
    return ["--model", str(model or tiny["student"]), "--tasks", "SST-2", "--data", str(kshot), "--k", "16",
            "--seeds", "13", "21", "--lrs", "1e-3", "--batch-sizes", "4", "--max-steps", "6",
            "--eval-every", "3", "--max-length", "64", "--device", "cpu", "--out", str(out),
            *extra]  # fmt: skip


def test_cli_lmbff_and_prompt_demo_end_to_end(tiny, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(tiny, kshot, out, "--mode", "prompt-demo", "lmbff", "--lmbff-prompts",
                 str(LMBFF), "--demo-samples", "2", "--demo-filter-model", str(tiny["student"]))  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert [e["mode"] for e in result["entries"]] == ["prompt-demo", "lmbff"]
    for entry in result["entries"]:
        assert [s["seed"] for s in entry["seeds"]] == [13, 21]
        assert all(s["step"] in (3, 6) and 0 <= s["tests"]["SST-2"] <= 1 for s in entry["seeds"])
    assert result["config"]["lmbff_prompts"] == str(LMBFF)
    assert result["config"]["demo_samples"] == 2
    used = result["config"]["lmbff_prompts_read"]
    assert used["SST-2 16-21"]["template"] == "*cls**sent_0*_A*mask*_film.*sep+*"
    assert used["SST-2 16-13"]["template_source"].endswith("SST-2/16-13.sort.txt:1")
    assert used["SST-2 16-13"]["words"] == []  # the task's own label words
    md = (out / "results.md").read_text()
    assert "| student | prompt-demo |" in md and "| student | lmbff |" in md
    assert "note:" not in capsys.readouterr().err  # filtered: no note


def test_cli_lmbff_with_searched_label_words(tiny, tiny_tokenizer, kshot, tmp_path):
    from smash.train.fewshot.demonstrations import DemoOptions
    from smash.train.fewshot.runner import _demo_factory

    prompts = tmp_path / "lmbff"
    shutil.copytree(LMBFF, prompts)
    for seed in (13, 21):  # words the tiny vocabulary has as single tokens, labels swapped
        mapping = prompts / "auto_label_mapping" / "SST-2" / f"16-{seed}.sort.txt"
        mapping.write_text('{"0": "great", "1": "terrible"}\n{"0": "bad", "1": "good"}\n')
    out = tmp_path / "out"
    argv = _argv(tiny, kshot, out, "--mode", "lmbff", "--lmbff-prompts", str(prompts),
                 "--lmbff-words", "auto", "--demo-samples", "2")  # fmt: skip
    assert main(argv) == 0
    used = json.loads((out / "results.json").read_text())["config"]["lmbff_prompts_read"]
    assert used["SST-2 16-13"]["words"] == ["great", "terrible"]
    # the learners of mode lmbff read the seed's searched template and words: the units of
    # each seed are keyed by them
    lines = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()[1:]]
    units = [line for line in lines if "unit" in line]  # not the test passes' lines
    for unit in units:
        seed = unit["unit"]["seed"]
        inputs = json.loads(unit["unit"]["inputs"])
        assert inputs["template"] == read_auto_prompt(prompts, get_task("SST-2"), 16, seed).template
        assert inputs["words"] == ["great", "terrible"]
    assert {u["unit"]["seed"] for u in units} == {13, 21}
    task = get_task("SST-2")
    auto = read_auto_prompt(prompts, task, 16, 21)
    make = _demo_factory(str(tiny["student"]), tiny_tokenizer, task, 64, auto.template,
                         auto.words, load_kshot(kshot, task, 16, 21).train, 21,
                         DemoOptions(auto_words=True), None)  # fmt: skip
    learner = make()
    great, terrible = (tiny_tokenizer.encode(" " + w, add_special_tokens=False)[0]
                       for w in ("great", "terrible"))  # fmt: skip
    assert learner.prompt.verbalizer.tolist() == [great, terrible]
    assert learner.template.spec.startswith("*cls**sent_0*_A*mask*_film.*sep+**sent_1*_A*label_0")
    assert learner.seed == 21 and learner.samples == 16


def test_cli_template_that_reads_no_sentence_is_refused(tiny, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    template = "*cls*_It_was*mask*.*sep+*"
    err = cli_error(capsys, _argv(tiny, kshot, out, "--template", f"SST-2={template}"))
    assert f"template {template!r} reads no sentence (no *sent_i* part)" in err
    assert not (out / "points.jsonl").exists()


def test_cli_lmbff_errors(tiny, tiny_t5, kshot, tmp_path, capsys):
    out = tmp_path / "out"
    # seed 42 has no searched prompt among the fixtures: named before any training
    err = cli_error(capsys, _argv(tiny, kshot, out, "--mode", "lmbff", "--lmbff-prompts",
                                  str(LMBFF), "--seeds", "42"))  # fmt: skip
    assert "auto_template/SST-2/16-42.sort.txt: file not found" in err
    assert not (out / "results.json").exists()
    err = cli_error(capsys, _argv(tiny, kshot, out, "--mode", "lmbff", "--lmbff-prompts",
                                  str(LMBFF), "--lmbff-words", "auto"))  # fmt: skip
    assert "auto_label_mapping/SST-2/16-13.sort.txt:1: label word 'embarrassing'" in err
    err = cli_error(capsys, _argv(tiny, kshot, out, "--mode", "prompt-demo",
                                  model=tiny_t5["student"]))  # fmt: skip
    assert "demonstrations (--mode prompt-demo / lmbff) are not supported for T5" in err
    err = cli_error(capsys, _argv(tiny, kshot, out, "--mode", "lmbff", "--lmbff-prompts",
                                  str(tmp_path / "nowhere")))  # fmt: skip
    assert "--lmbff-prompts" in err and "no such folder" in err
    for extra, message in [
        (["--mode", "lmbff"], "--mode lmbff needs --lmbff-prompts"),
        (["--mode", "prompt", "--demo-samples", "4"], "--demo-samples applies to --mode"),
        (["--mode", "prompt-demo", "--lmbff-prompts", str(LMBFF)], "applies to --mode lmbff"),
        (["--mode", "prompt-demo", "--demo-filter-rate", "0.3"], "--demo-filter-rate takes"),
    ]:
        assert main(_argv(tiny, kshot, out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
