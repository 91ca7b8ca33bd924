"""iPET on tiny models: the unlabelled data, PET's rules for each generation's training sets, the
soft labels as a keyed store, resume after a kill, and the three final classifiers of Tables 3
and 5 (``ipet``, ``ipet-pt``, ``ipet-pt`` from a SMASH student) beside the paper."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_support import cli_error
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.precompute.kshot.unlabelled import unlabelled_examples
from smash.precompute.shared.templates import verbalizer_ids
from smash.store.cli import verify_store
from smash.store.reader import StoreDataset
from smash.train.fewshot.cli import main as evaluate
from smash.train.fewshot.ipet import rules, run
from smash.train.fewshot.ipet.cli import main as run_ipet
from smash.train.fewshot.ipet.patterns import PATTERNS, patterns_for
from smash.train.fewshot.paper import paper_row
from transformers import AutoTokenizer

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"
K, SEED, GENERATIONS = 8, 13, 3
MODELS = [(p, i) for p in (0, 1) for i in (0, 1)]


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "MNLI", "STS-B")], [SEED], K)
    make_kshot(ORIGINAL, root, [get_task("MNLI")], [SEED], 3)  # the fixture's MNLI is small
    return root


def ipet_argv(tiny, kshot, out, *extra):
    return ["--original", str(ORIGINAL), "--data", str(kshot), "--tasks", "SST-2", "--k", str(K),
            "--seeds", str(SEED), "--model", str(tiny["teacher"]), "--patterns", "0", "1",
            "--repetitions", "2", "--steps", "3", "--batch-size", "2",
            "--unlabelled-batch-size", "2", "--max-length", "64", "--student-max-length", "64",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny, kshot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ipet") / "run"
    assert run_ipet(ipet_argv(tiny, kshot, out)) == 0
    return out


def test_unlabelled_data_leaves_out_the_kshot_examples_and_is_a_pure_function(kshot):
    for name, k in (("SST-2", K), ("MNLI", 3)):
        task = get_task(name)
        split = load_kshot(kshot, task, k, SEED)
        labelled = {ex.texts for ex in split.train + split.dev}
        unlabelled = unlabelled_examples(ORIGINAL, task, k, SEED)
        assert unlabelled and not labelled & {ex.texts for ex in unlabelled}
        assert all(ex.label == -1 for ex in unlabelled)
        assert len({ex.line for ex in unlabelled}) == len(unlabelled)
        assert unlabelled == unlabelled_examples(ORIGINAL, task, k, SEED)
        assert unlabelled != unlabelled_examples(ORIGINAL, task, k, 21)
        # the cap is per gold label: with 1, one example of each label, in the seed's order
        capped = unlabelled_examples(ORIGINAL, task, k, SEED, per_label=1)
        assert len(capped) == len(task.labels)
        assert [ex for ex in unlabelled if ex in capped] == capped
    with pytest.raises(ValueError, match="regression"):
        unlabelled_examples(ORIGINAL, get_task("STS-B"), K, SEED)


def test_each_generation_grows_by_pets_rules():
    assert rules.new_per_label([0] * 8 + [1] * 8, 2, 0, 5.0) == [32, 32]  # 16*5 - 16
    assert rules.new_per_label([0] * 8 + [1] * 8, 2, 1, 5.0) == [192, 192]  # 16*25 - 16
    assert rules.new_per_label([0] * 4 + [1] * 12, 2, 0, 5.0) == [16, 48]  # as the labels are
    assert rules.annotators(11, 0.25) == 3 and rules.annotators(3, 0.25) == 1
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(30, 3)) for _ in range(3)]
    draw = rules.next_training_set(logits, [0.5, 0.7, 0.9], [20, 5, 7], 0.25,
                                   random.Random(1), np.random.RandomState(1))  # fmt: skip
    again = rules.next_training_set(logits, [0.5, 0.7, 0.9], [20, 5, 7], 0.25,
                                    random.Random(1), np.random.RandomState(1))  # fmt: skip
    assert draw == again
    indices, labels = draw
    assert [labels.count(c) for c in range(3)] == [20, 5, 7]  # balance as asked, upsampled
    chosen = random.Random(1).sample(range(3), k=1)[0]  # the one annotator the draw took
    predicted = rules.softmax(logits[chosen]).argmax(1)
    assert all(predicted[i] == y for i, y in zip(indices, labels))
    # a label that no example is labelled as still gets its share (PET's loop would not end)
    one_sided = [np.tile([2.0, 0.0], (10, 1))] * 4
    indices, labels = rules.next_training_set(one_sided, [1] * 4, [6, 6], 0.25,
                                              random.Random(0), np.random.RandomState(0))  # fmt: skip
    assert [labels.count(c) for c in (0, 1)] == [6, 6] and all(0 <= i < 10 for i in indices)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on cores other work is using."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_generations_have_pets_sizes_and_the_store_holds_the_ensembles_average(
    finished, kshot, tiny, capsys
):
    split = finished / "SST-2" / f"{K}-{SEED}"
    n = len(unlabelled_examples(ORIGINAL, get_task("SST-2"), K, SEED))
    for generation in range(GENERATIONS - 1):  # 16 labelled: 32, then 192 new per label
        per_label = 16 * (5 ** (generation + 1) - 1) // 2
        for p, i in MODELS:
            record = json.loads((split / f"g{generation}" / "next" / f"p{p}-i{i}.json").read_text())
            assert record["per_label"] == [per_label, per_label]
            assert [record["labels"].count(c) for c in (0, 1)] == [per_label, per_label]
            assert all(0 <= j < n for j in record["indices"])
    assert not (split / f"g{GENERATIONS - 1}" / "next").exists()
    last = [np.load(split / f"g{GENERATIONS - 1}" / f"p{p}-i{i}.npz") for p, i in MODELS]
    weights = np.array([float(f["accuracy"]) for f in last])
    mean = np.average(np.stack([f["logits"] for f in last]).astype(np.float64), axis=0,
                      weights=weights if weights.any() else None)  # fmt: skip
    by_hand = np.exp(mean) / np.exp(mean).sum(1, keepdims=True)
    store = finished / "store" / "SST-2"
    examples = sorted(StoreDataset(store, shuffle=False), key=lambda e: e["meta"]["row"])
    assert [e["meta"]["row"] for e in examples] == list(range(n))
    words = verbalizer_ids(AutoTokenizer.from_pretrained(tiny["teacher"]), ("terrible", "great"))
    by_id = [dict(zip(e["topk_ids"][0].tolist(), e["topk_logprobs"][0].tolist())) for e in examples]
    stored = np.exp([[row[w] for w in words] for row in by_id])  # in label order
    np.testing.assert_allclose(stored, by_hand, rtol=2**-10, atol=2**-11)  # float16 storage
    meta = examples[0]["meta"]
    assert (meta["task"], meta["k"], meta["seed"], meta["split"]) == (
        "SST-2",
        K,
        SEED,
        "unlabelled",
    )
    assert verify_store(store) == []
    manifest = json.loads((store / "manifest.json").read_text())["producer"]
    assert manifest["task"] == "ipet" and manifest["task_options"]["temperature"] == 2.0


def test_a_kill_in_generation_two_resumes_without_retraining_generation_one(
    tiny, kshot, finished, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    trained = []
    real = run.Generations._train

    def counting(self, generation, p, i, extra, path):
        if generation == 1 and len([g for g in trained if g == 1]) == 2:
            raise KeyboardInterrupt  # killed in the middle of generation 2
        trained.append(generation)
        real(self, generation, p, i, extra, path)

    monkeypatch.setattr(run.Generations, "_train", counting)
    with pytest.raises(KeyboardInterrupt):
        run_ipet(ipet_argv(tiny, kshot, out))
    assert trained == [0, 0, 0, 0, 1, 1]
    first = {f: f.stat().st_mtime_ns for f in (out / "SST-2" / f"{K}-{SEED}" / "g0").glob("*.npz")}
    trained.clear()
    assert run_ipet(ipet_argv(tiny, kshot, out, "--resume")) == 0
    # generations counted from 0: the first (0) is not trained again, nor the two finished
    # models of the second (1); its two others and the third (2) are
    assert trained == [1, 1, 2, 2, 2, 2]
    assert {f: f.stat().st_mtime_ns for f in first} == first
    ours = {
        e["__key__"]: e["topk_logprobs"].tobytes() for e in StoreDataset(out / "store" / "SST-2")
    }
    theirs = {e["__key__"]: e["topk_logprobs"].tobytes()
              for e in StoreDataset(finished / "store" / "SST-2")}  # fmt: skip
    assert ours == theirs  # the same soft labels as the run that was never killed
    trained.clear()
    assert run_ipet(ipet_argv(tiny, kshot, out, "--resume")) == 0 and trained == []


def test_run_ipet_refuses_bad_input(tiny, kshot, finished, tmp_path, capsys):
    def refused(argv):
        assert run_ipet(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("run-ipet: error: ")
        return err[-1]

    base = ipet_argv(tiny, kshot, tmp_path / "x")
    assert "iPET does not apply to regression" in refused([*base, "--tasks", "STS-B"])
    assert "--patterns: expected a whole number in [0, 3]" in refused([*base, "--patterns", "4"])
    assert "--seeds: 13 is given more than once" in refused([*base, "--seeds", "13", "13"])
    assert "--fraction: expected a finite number > 0" in refused([*base, "--fraction", "0"])
    assert "--scale-factor: expected a finite number > 1" in refused([*base, "--scale-factor", "1"])
    assert "round(1 x 0.25) = 0" in refused([*base, "--patterns", "0", "--repetitions", "2"])
    assert "label word 'Wrong'" in refused([*base, "--tasks", "MNLI"])  # the tiny BPE splits it
    again = ipet_argv(tiny, kshot, finished)
    assert "holds an iPET run: pass --resume" in refused(again)
    assert "made with other settings (pet differ)" in refused([*again, "--resume", "--steps", "4"])
    assert patterns_for(get_task("MNLI"), [2, 3])[0].words == ("No", "Yes", "Maybe")
    assert set(PATTERNS) == {"MNLI", "SNLI", "RTE", "QNLI", "MRPC", "QQP", "SST-2", "MR", "CR",
                             "SST-5"}  # fmt: skip


def fewshot_argv(tiny, kshot, store, out, *extra):
    return ["--data", str(kshot), "--tasks", "SST-2", "--k", str(K), "--seeds", str(SEED),
            "--lrs", "1e-3", "--batch-sizes", "4", "--max-steps", "4", "--eval-every", "2",
            "--max-length", "64", "--device", "cpu", "--ipet-store", str(store), "--out",
            str(out), *extra]  # fmt: skip


def test_the_three_final_classifiers_beside_tables_3_and_5(tiny, kshot, finished, tmp_path):
    out = tmp_path / "out"
    # distilroberta-base's rows with ipet and ipet-pt; "+ SMASH init" is ipet-pt from a
    # (here: stand-in) SMASH student
    argv = [*fewshot_argv(tiny, kshot, finished / "store", out), "--model", str(tiny["student"]),
            str(tiny["student_wide"]), "--name", "base", "smash", "--mode", "ipet", "ipet-pt",
            "--compare-paper", "base=distilroberta-base", "smash=smash"]  # fmt: skip
    assert evaluate(argv) == 0
    result = json.loads((out / "results.json").read_text())
    rows = {(e["model"], e["mode"]) for e in result["entries"]}
    assert rows == {(m, mode) for m in ("base", "smash") for mode in ("ipet", "ipet-pt")}
    md = (out / "results.md").read_text()
    # Tables 3 and 5 in Table 2's columns: Table 3's MNLI is MNLI-m, Table 5's MNLI-mm; no STS-B
    name, cells = paper_row("smash", "ipet-pt")
    assert name == "iPET + SMASH init (Tables 3, 5)" and "STS-B" not in cells
    assert cells["MNLI-m"] == (69.5, 2.9) and cells["MNLI-mm"] == (70.6, 2.9)
    assert paper_row("distilroberta-base", "ipet")[1]["RTE"] == (52.6, 2.9)
    assert paper_row("distilroberta-base", "ipet-pt")[1]["CR"] == (88.5, 0.7)
    for row in ("| paper: iPET (Tables 3, 5) | 90.9 (0.3) |",
                "| paper: iPET + PT (Tables 3, 5) | 90.6 (0.3) |",
                "| paper: iPET + SMASH init (Tables 3, 5) | 91.2 (0.2) |"):  # fmt: skip
        assert row in md, md


def test_final_classifiers_refuse_what_does_not_fit(tiny, kshot, finished, tmp_path, capsys):
    base = [*fewshot_argv(tiny, kshot, finished / "store", tmp_path / "o"), "--model",
            str(tiny["student"])]  # fmt: skip
    assert "--ipet-store applies to --mode ipet" in cli_error(capsys, [*base, "--mode", "prompt"])
    no_store = [a for a in base if a not in ("--ipet-store", str(finished / "store"))]
    assert "needs --ipet-store" in cli_error(capsys, [*no_store, "--mode", "ipet"])
    stsb = [*base, "--mode", "ipet-pt", "--tasks", "STS-B"]
    assert "iPET does not apply to regression" in cli_error(capsys, stsb)
    longer = [*base, "--mode", "ipet-pt", "--max-length", "48"]
    assert "made with max_length 64, the student's prompt has 48" in cli_error(capsys, longer)
    empty = [*base, "--mode", "ipet", "--ipet-store", str(tmp_path)]  # the last one counts
    assert "no k-shot store for SST-2" in cli_error(capsys, empty)


# PET's pattern parts for RTE and Yelp, as its pvp.py lists them (text_a parts, text_b parts);
# "A"/"B" stand for the example's first and second sentence, "M" for the mask
PET_PARTS = {
    ("RTE", 0): (['"', "B", '" ?'], ["M", ', "', "A", '"']),
    ("RTE", 1): (["B", "?"], ["M", ",", "A"]),
    ("RTE", 2): (['"', "B", '" ?'], ["M", '. "', "A", '"']),
    ("RTE", 3): (["B", "?"], ["M", ".", "A"]),
    ("MNLI", 0): (['"', "A", '" ?'], ["M", ', "', "B", '"']),
    ("MNLI", 1): (["A", "?"], ["M", ",", "B"]),
    ("SST-2", 0): (["It was", "M", ".", "A"], []),
    ("SST-2", 1): (["A", ". All in all, it was", "M", "."], []),
    ("SST-2", 2): (["Just", "M", "!"], ["A"]),
    ("SST-2", 3): (["A"], ["In summary, the movie is", "M", "."]),
}


@pytest.mark.parametrize("task_name, pattern", sorted(PET_PARTS))
def test_a_pattern_encodes_as_pets_encode_does(tiny_tokenizer, task_name, pattern):
    """PET tokenizes each part on its own with a space in front (add_prefix_space, RoBERTa's
    GPT-2 tokenizer), then joins the two segments as a pair: the same ids here."""
    from smash.precompute.kshot.data import Example
    from smash.precompute.shared.templates import parse_template
    from smash.train.fewshot.learners import encode_prompts

    tok = tiny_tokenizer
    task = get_task(task_name)
    chosen = patterns_for(task, [pattern])[0]
    texts = ("the cat sat on the mat.", "a dog ran in the park!")[: len(task.text_columns)]
    example = chosen.apply(Example(texts=texts, label=0, line=1))
    fill = {"A": example.texts[0], "B": example.texts[-1], "M": tok.mask_token}

    def part(text: str) -> list[int]:
        return tok.encode(" " + fill.get(text, text), add_special_tokens=False)

    a, b = ([i for x in seg for i in part(x)] for seg in PET_PARTS[(task_name, pattern)])
    cls, sep = tok.cls_token_id, tok.sep_token_id  # RoBERTa's <s> a </s> and <s> a </s></s> b </s>
    pet = [cls, *a, sep] + ([sep, *b, sep] if b else [])
    [ours] = encode_prompts(parse_template(chosen.template), tok, [example.texts], 256, None)
    assert ours.input_ids == pet


def test_a_resume_rewrites_a_damaged_store_shard_of_the_recorded_size(tiny, kshot, finished,
                                                                        tmp_path):  # fmt: skip
    """A finished shard is kept only when its bytes are the recorded ones: tar pads small
    shards to one size, so a flipped byte (or another run's shard) keeps the size."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shard = out / "store" / "SST-2" / "shard-000000.tar"
    good = shard.read_bytes()
    damaged = bytearray(good)
    damaged[600] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    assert verify_store(str(out / "store" / "SST-2"))  # named as damaged
    assert run_ipet(ipet_argv(tiny, kshot, out, "--resume")) == 0
    assert shard.read_bytes() == good and verify_store(str(out / "store" / "SST-2")) == []


WHOLE = "expected a whole number >= 1"
# every numeric flag of run-ipet with its bad values and what the error says is allowed
IPET_RANGES = [
    ("--k", ["0", "-1"], WHOLE),
    ("--seeds", ["-1", "4294967296"], "expected a whole number in [0, 4294967295]"),
    ("--patterns", ["-1", "4"], "expected a whole number in [0, 3]"),
    ("--repetitions", ["0", "-1"], WHOLE),
    ("--generations", ["0", "-1"], WHOLE),
    ("--scale-factor", ["1", "0", "-1", "nan", "inf"], "expected a finite number > 1"),
    ("--fraction", ["0", "-0.5", "1.5", "nan"], "expected a finite number > 0 and <= 1"),
    ("--temperature", ["0", "-1", "nan", "inf"], "expected a finite number > 0"),
    ("--per-label", ["0", "-1"], WHOLE),
    ("--steps", ["0", "-1"], WHOLE),
    ("--lr", ["0", "-1", "nan", "inf"], "expected a finite number > 0"),
    ("--batch-size", ["0", "-1"], WHOLE),
    ("--unlabelled-batch-size", ["0", "-1"], WHOLE),
    # at 0 the task's loss would vanish and the models learn the MLM term alone
    ("--alpha", ["0", "-0.5", "1.5", "nan"], "expected a finite number > 0 and <= 1"),
    ("--max-length", ["0", "-1"], WHOLE),
    ("--student-max-length", ["0", "-1"], WHOLE),
    ("--eval-batch-size", ["0", "-1"], WHOLE),
]


@pytest.mark.parametrize("flag, value, allowed",
                         [(f, v, a) for f, values, a in IPET_RANGES for v in values])  # fmt: skip
def test_a_run_ipet_number_out_of_range_is_refused_before_anything_runs(
    flag, value, allowed, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["--original", "o", "--data", "d", "--tasks", "SST-2", "--out", str(out)]
    assert run_ipet([*argv, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag}: {allowed}, got {value!r}" in err, err
    assert not out.exists()


def test_every_run_ipet_numeric_flag_is_range_checked_and_tested():
    from smash.train.fewshot.ipet.cli import _parser
    from test_cli_flags import _numeric_flags

    assert _numeric_flags(_parser()) == {flag for flag, _, _ in IPET_RANGES}


def test_pets_mlm_term_is_the_cross_entropy_at_the_masked_tokens(tiny, tiny_tokenizer, kshot):
    """PET's auxiliary loss: unlabelled prompts masked as in pre-training (special tokens
    never), the cross-entropy of the whole vocabulary at the masks against the original tokens;
    and it moves the model (alpha < 1 trains other weights than alpha = 1)."""
    from smash.precompute.shared.masking import Masking, example_rng
    from smash.train.fewshot.ipet.pet import PetLearner, PetSettings, _mlm_loss, train_pet_model
    from transformers import AutoModelForMaskedLM

    task = get_task("SST-2")
    split = load_kshot(kshot, task, K, SEED)
    pattern = patterns_for(task, [0])[0]

    def learner():
        model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
        return PetLearner(model, tiny_tokenizer, task, pattern, 64)

    pet = learner()
    features = pet.encode(split.dev[:3])
    loss = _mlm_loss(pet, features, example_rng(SEED, 0), torch.device("cpu"))
    rng, special = example_rng(SEED, 0), np.fromiter(tiny_tokenizer.all_special_ids, np.int64)
    expected = []
    for f in features:
        ids = np.asarray(f.input_ids, np.int64)
        masked = Masking().apply(ids, ~np.isin(ids, special), rng,
                                 mask_id=tiny_tokenizer.mask_token_id,
                                 vocab_size=len(tiny_tokenizer))  # fmt: skip
        assert not np.isin(ids[masked.mask_positions], special).any()
        with torch.no_grad():
            logits = pet.model(input_ids=torch.from_numpy(masked.input_ids)[None]).logits[0]
        expected.append(torch.nn.functional.cross_entropy(
            logits[torch.tensor(masked.mask_positions)],
            torch.tensor(masked.original_ids), reduction="none"))  # fmt: skip
    torch.testing.assert_close(loss, torch.cat(expected).mean(), rtol=1e-5, atol=1e-6)

    weights = []
    for alpha in (0.5, 1.0):
        pet = learner()
        settings = PetSettings(steps=2, batch_size=2, unlabelled_batch_size=2, alpha=alpha)
        train_pet_model(pet, split.train, split.dev, settings, SEED, torch.device("cpu"))
        weights.append(pet.model.lm_head.dense.weight.detach().clone())
    assert not torch.equal(*weights)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_final_classifiers_loss_is_pets_distillation_at_its_temperature(temperature):
    """``T**2`` times the cross-entropy of ``softmax(logits / T)`` against the ensemble's
    ``softmax(mean / T)``, from the stored log-probabilities at T = 1, averaged over rows."""
    from smash.train.fewshot.ipet.soft_labels import SoftLabelLearner, SoftTargets

    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, generator=g) * 3  # the ensemble's mean label-word logits
    stored = torch.log_softmax(mean, dim=-1).half()  # what the store holds
    targets = SoftTargets(stored, [[0]] * 5, temperature, "store")

    class Inner:  # the loss reads nothing of the inner learner
        model = tokenizer = None
        task = get_task("SST-2")

    learner = SoftLabelLearner(Inner(), targets, [])
    logits = torch.randn(3, 3, generator=g)
    rows = torch.tensor([4, 0, 2])
    loss = learner.loss((logits, rows), None)
    target = torch.softmax(stored[rows].float() / temperature, dim=-1)
    expected = -(target * torch.log_softmax(logits / temperature, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(loss, temperature**2 * expected, rtol=1e-5, atol=1e-6)
