"""The sentiment task labelled and filtered by a user-given sequence classifier (Vanilla PPT's
data: a Yelp-5 classifier's five classes as terrible..great), built locally like every tiny
model; ``hard`` then trains on those labels."""

import numpy as np
import pytest
import torch
from smash.precompute.cli import main
from smash.precompute.corpus import Corpus
from smash.precompute.sentences import SentenceSplitter
from smash.precompute.tasks import make_task
from smash.precompute.tiny import save_random_model
from smash.store.manifest import load_manifest
from smash.store.reader import StoreDataset
from smash.train.config import StoreSpec
from smash.train.objectives.base import StoreContext
from smash.train.objectives.hard import HardLabels
from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

N = 40


def classifier(tiny, out, classes=5):
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, num_labels=classes,
                           max_position_embeddings=132, pad_token_id=tokenizer.pad_token_id,
                           type_vocab_size=1)  # fmt: skip
    save_random_model(RobertaForSequenceClassification, config, tokenizer, out, seed=5)
    return out


def run(tiny, out, *extra):
    return main(["--task", "sentiment", "--corpus", str(tiny["corpus"]), "--teacher",
                 str(tiny["teacher"]), "--out", str(out), "--num-examples", str(N),
                 "--shard-size", "15", "--k", "8", "--dtype", "fp32", "--device", "cpu", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def labeller(tiny, tmp_path_factory):
    return classifier(tiny, tmp_path_factory.mktemp("yelp5") / "classifier")


def test_the_classifier_labels_and_filters_in_the_teachers_place(tiny, labeller, tmp_path):
    candidates = [ex for ex, _ in zip(make_task("sentiment", SentenceSplitter()).examples(
        Corpus(tiny["corpus"]), 0), range(N))]  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(labeller)
    model = RobertaForSequenceClassification.from_pretrained(labeller).eval()
    with torch.no_grad():  # by hand, one sentence at a time
        probs = [torch.softmax(model(**tokenizer(ex.sentences[0], return_tensors="pt")).logits[0],
                               -1) for ex in candidates]  # fmt: skip
    threshold = float(np.median([p.max().item() for p in probs]))
    assert run(tiny, tmp_path, "--labeller", str(labeller), "--threshold", str(threshold)) == 0
    stored = {(ex["meta"]["doc"], ex["meta"]["i"]): ex["label"] for ex in StoreDataset(tmp_path)}
    expected = {(c.meta["doc"], c.meta["i"]): int(p.argmax())
                for c, p in zip(candidates, probs) if p.max().item() >= threshold}  # fmt: skip
    assert stored == expected and 0 < len(stored) < N
    producer = load_manifest(tmp_path).producer
    assert producer["label_source"] == "labeller"
    assert producer["task_options"]["labeller"]["name"] == str(labeller)
    assert producer["task_options"]["labeller"]["fingerprint"].startswith("sha256:")
    # hard trains on exactly these labels, also under other words for the five classes
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])

    def state(words):
        spec = StoreSpec(str(tmp_path), verbalizer=words)
        context = StoreContext(str(tmp_path), load_manifest(tmp_path), spec, tokenizer)
        return HardLabels().for_store(context)

    assert state(None).stored_labels
    assert state(("great", "good", "okay", "bad", "terrible")).stored_labels
    with pytest.raises(ValueError, match="a classifier's 5 classes; give the store as many"):
        state(("bad", "good"))


def test_bad_labellers_are_refused_before_the_teacher_loads(tiny, tmp_path, capsys):
    three = classifier(tiny, tmp_path / "three", classes=3)
    for extra, says in [
        (["--labeller", str(three)], "a classifier of 3 classes; the task's 5 label words"),
        (["--labeller", str(tmp_path / "missing" / "x")], "--labeller"),
    ]:
        assert run(tiny, tmp_path / "out", *extra) == 2
        assert says in capsys.readouterr().err
    argv = ["--task", "sentence-pair", "--corpus", str(tiny["corpus"]), "--teacher",
            str(tiny["teacher"]), "--out", str(tmp_path / "o"), "--labeller", str(three)]  # fmt: skip
    assert main(argv) == 2
    assert "takes no 'labeller' option" in capsys.readouterr().err
