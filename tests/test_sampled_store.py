"""Sampled teacher targets: the draws, the store that keeps them, resume and read-back."""

import json

import numpy as np
import pytest
import torch
from smash.precompute.shared.sampled_targets import counter_uniforms, targets_record
from smash.store.cli import main as store_main
from smash.store.cli import verify_store
from smash.store.fingerprint import tokenizer_record
from smash.store.manifest import finalize_store, load_manifest
from smash.store.reader import StoreDataset
from smash.store.writer import StoreWriter
from test_precompute import assert_same_store, kill_after_one_shard, run
from transformers import AutoModelForMaskedLM, AutoTokenizer

SAMPLED = ("--targets", "sampled", "--samples", "12")


@pytest.fixture(scope="module")
def sampled_store(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled")
    assert run(tiny, out, *SAMPLED, k=None) == 0
    return out


def test_uniforms_are_a_pure_function_of_seed_example_mask_and_draw():
    keys, masks = np.array([0, 1, 2, 2**40]), np.array([0, 0, 3, 1])
    u = counter_uniforms(7, keys, masks, 5)
    assert u.shape == (4, 5) and (u >= 0).all() and (u < 1).all()
    np.testing.assert_array_equal(u[1:3], counter_uniforms(7, keys[1:3], masks[1:3], 5))
    np.testing.assert_array_equal(u[:, :2], counter_uniforms(7, keys, masks, 2))
    assert not np.isin(u, counter_uniforms(8, keys, masks, 5)).any()
    many = counter_uniforms(0, np.arange(20_000), np.zeros(20_000), 4).ravel()
    # uniform on [0, 1): mean 1/2 and deciles 1/10 each, to a few standard errors
    assert abs(many.mean() - 0.5) < 0.01
    deciles = np.bincount((many * 10).astype(int), minlength=10) / many.size
    assert np.abs(deciles - 0.1).max() < 0.01


def assert_draws_follow_the_proposal(tiny, store, tau, every=11):
    """Every ``every``-th example's stored draws are the inverse CDF of the teacher at ``tau``
    at the counter uniforms of its key, with log(p/q) ratios and the teacher's entropy."""
    model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
    for ex in list(StoreDataset(store, shuffle=False))[::every]:
        shard, row = ex["__key__"].split("/")
        key = int(shard.removeprefix("shard-").removesuffix(".tar")) * 30 + int(row)
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None]).logits[0]
        logp = torch.log_softmax(logits[int(ex["mask_positions"][0])].float(), -1).double()
        logq = torch.log_softmax(logp / tau, -1)
        cdf = np.cumsum(logq.exp().numpy())
        u = counter_uniforms(0, np.array([key]), np.array([0]), 12)[0]
        draws = np.searchsorted(cdf, u * cdf[-1], side="right")
        ids, counts = ex["topk_ids"][0], ex["sample_counts"][0]
        drawn = dict(zip(*np.unique(draws, return_counts=True)))
        assert {int(i): int(c) for i, c in zip(ids, counts) if c} == drawn
        assert len(set(ids.tolist())) == 12 and counts.sum() == 12  # padding: count 0, distinct
        ratios = np.where(counts > 0, (logp - logq).numpy()[ids], 0.0)
        np.testing.assert_allclose(ex["sample_logratios"][0], ratios, rtol=1e-5, atol=1e-6)
        entropy = -(logp.exp() * logp).sum()  # stored in float16 (format 4): to its precision
        assert ex["teacher_entropy"][0] == pytest.approx(float(entropy), rel=2**-11, abs=1e-5)


def test_stored_draws_are_the_teachers_inverse_cdf_at_counter_uniforms(tiny, sampled_store):
    manifest = load_manifest(sampled_store)
    assert manifest.format_version == 4 and manifest.k == 12
    assert manifest.targets == {
        "mode": "sampled",
        "samples": 12,
        "proposal_temperature": 1.0,
        "estimator": "unbiased",
        "seed": 0,
    }
    assert len(list(StoreDataset(sampled_store, shuffle=False))) == 90
    assert_draws_follow_the_proposal(tiny, sampled_store, 1.0)
    assert all((ex["sample_logratios"] == 0).all() for ex in StoreDataset(sampled_store))


def test_draws_at_a_proposal_temperature_keep_their_importance_ratios(tiny, tmp_path):
    extra = (*SAMPLED, "--proposal-temperature", "2.5", "--num-examples", "30")
    assert run(tiny, tmp_path, *extra, k=None) == 0
    assert load_manifest(tmp_path).targets["proposal_temperature"] == 2.5
    assert_draws_follow_the_proposal(tiny, tmp_path, 2.5, every=3)


def test_another_sample_seed_draws_other_tokens_for_the_same_examples(
    tiny, sampled_store, tmp_path
):
    assert run(tiny, tmp_path, *SAMPLED, "--sample-seed", "5", k=None) == 0
    assert load_manifest(tmp_path).targets["seed"] == 5
    ours = list(StoreDataset(tmp_path, shuffle=False))
    theirs = list(StoreDataset(sampled_store, shuffle=False))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(ours, theirs))
    same = [np.array_equal(a["topk_ids"], b["topk_ids"]) for a, b in zip(ours, theirs)]
    assert not any(same)


def test_killed_sampled_run_resumes_to_the_same_store(tiny, sampled_store, tmp_path, monkeypatch):
    kill_after_one_shard(tiny, tmp_path, monkeypatch, *SAMPLED, k=None)
    assert run(tiny, tmp_path, *SAMPLED, k=None) == 0
    assert_same_store(tmp_path, sampled_store)
    assert verify_store(str(tmp_path)) == []


def write_sampled(root, tokenizer, examples, samples):
    """A sampled store of ``examples`` written directly (no teacher)."""
    writer = StoreWriter(
        root,
        producer={},
        tokenizer=tokenizer_record(tokenizer),
        k=samples,
        targets=targets_record(samples, seed=0),
    )
    writer.write_shard(0, examples)
    finalize_store(root)


def random_sampled_examples(vocab, n=40, samples=255, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = 1 + i % 3  # masks per example
        counts = rng.multinomial(samples, rng.dirichlet(np.ones(samples) * 0.05), size=m)
        ids = np.stack([rng.permutation(vocab)[:samples] for _ in range(m)])
        out.append(
            {
                "input_ids": rng.integers(0, vocab, 20),
                "mask_positions": np.arange(m) * 2,
                "topk_ids": ids,
                "sample_counts": counts,
                "sample_logratios": rng.normal(size=counts.shape).astype(np.float32),
                "teacher_entropy": (rng.random(m) * 6).astype(np.float16),
                "label": i % 3,
            }
        )
    return out


def test_sampled_targets_read_back_losslessly(tiny, tmp_path):
    """Whatever is written (ids, counts up to 255, ratios, entropies) is read back bit for bit."""
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    written = random_sampled_examples(len(tokenizer))
    write_sampled(tmp_path, tokenizer, written, 255)
    read = list(StoreDataset(tmp_path, shuffle=False))
    assert set(read[0]) == {"__key__", "input_ids", "mask_positions", "topk_ids", "sample_counts",
                            "sample_logratios", "teacher_entropy", "mlm_labels", "label",
                            "meta"}  # fmt: skip
    assert all((r["mlm_labels"] == -100).all() for r in read)  # not a masked-text store
    for w, r in zip(written, read, strict=True):
        for name in ("input_ids", "mask_positions", "label"):
            np.testing.assert_array_equal(r[name], w[name])
        np.testing.assert_array_equal(r["teacher_entropy"].astype(np.float16).view(np.uint16),
                                      w["teacher_entropy"].view(np.uint16))  # fmt: skip
        assert r["teacher_entropy"].dtype == np.float32  # decoded as every version decodes it
        for row in range(len(w["mask_positions"])):  # rows come back in canonical order
            entries = ("topk_ids", "sample_counts", "sample_logratios")
            got = zip(*(r[n][row].view(np.uint32) if n == "sample_logratios" else r[n][row]
                        for n in entries))  # fmt: skip
            put = zip(*(w[n][row].view(np.uint32) if n == "sample_logratios" else w[n][row]
                        for n in entries))  # fmt: skip
            assert sorted(got) == sorted(put)
            assert (np.diff(r["sample_counts"][row]) <= 0).all()  # most drawn first
    assert verify_store(str(tmp_path)) == []


def test_counts_that_disagree_with_the_manifest_are_named(tiny, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    examples = random_sampled_examples(len(tokenizer), n=3, samples=16)
    counts = examples[2]["sample_counts"]
    counts[0, counts[0].argmax()] -= 1
    write_sampled(tmp_path, tokenizer, examples, 16)
    [(name, problem)] = verify_store(str(tmp_path))
    assert name == "shard-000000.tar"
    assert "mask row 3 counts 15 draws, the manifest records samples=16" in problem


def test_negative_counts_are_refused_naming_the_field(tiny, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    examples = random_sampled_examples(len(tokenizer), n=2, samples=16)
    examples[1]["sample_counts"][0, -1] = -1
    with pytest.raises(ValueError, match="sample_counts must be >= 0, got -1"):
        write_sampled(tmp_path, tokenizer, examples, 16)


def test_inspect_and_verify_a_sampled_store(sampled_store, capsys):
    assert store_main(["inspect", str(sampled_store), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["statistics"]
    assert 1 <= stats["mean_distinct_ids"] <= 12 and stats["mean_entropy_nats"] > 0
    assert store_main(["verify", str(sampled_store)]) == 0


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("--targets", "sampled", "--k", "8"), "--k is for --targets topk"),
        (("--samples", "8"), "--proposal-temperature are for --targets sampled"),
        (("--sample-seed", "3"), "--proposal-temperature are for --targets sampled"),
        (("--proposal-temperature", "2"), "--proposal-temperature are for --targets sampled"),
        (
            ("--targets", "sampled", "--proposal-temperature", "0"),
            "argument --proposal-temperature: expected a finite number > 0, got '0'",
        ),
        (
            ("--targets", "sampled", "--samples", "0"),
            "argument --samples: expected a whole number >= 1, got '0'",
        ),
    ],
)
def test_conflicting_target_options_are_refused(tiny, tmp_path, capsys, extra, expected):
    assert run(tiny, tmp_path / "out", *extra, k=None) == 2
    assert expected in capsys.readouterr().err


def test_a_sampled_rerun_of_a_topk_store_is_another_configuration(tiny, tmp_path, capsys):
    assert run(tiny, tmp_path, "--num-examples", "30", k=8) == 0
    assert run(tiny, tmp_path, *SAMPLED, "--num-examples", "30", k=None) == 2
    assert "targets" in capsys.readouterr().err


def test_each_mask_of_masked_text_draws_from_its_own_counter(tiny, tmp_path):
    """A mlm store's examples hold several masks: mask j of example i draws at the uniforms of
    (seed, i, j), the inverse CDF of the teacher at that position."""
    options = ("--max-length", "64", "--segment-words", "30", "--tokenize-workers", "0")
    assert run(tiny, tmp_path, *SAMPLED, *options, task="mlm", n=20, shard=10, k=None) == 0
    model = AutoModelForMaskedLM.from_pretrained(tiny["teacher"]).eval()
    examples = list(StoreDataset(tmp_path, shuffle=False))
    assert sum(len(ex["mask_positions"]) for ex in examples) > 2 * len(examples)
    for ex in examples[::3]:
        shard, row = ex["__key__"].split("/")
        key = int(shard.removeprefix("shard-").removesuffix(".tar")) * 10 + int(row)
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ex["input_ids"])[None]).logits[0]
        for j, position in enumerate(ex["mask_positions"]):
            cdf = np.cumsum(torch.softmax(logits[position].double(), -1).numpy())
            u = counter_uniforms(0, np.array([key]), np.array([j]), 12)[0]
            draws = np.searchsorted(cdf, u * cdf[-1], side="right")
            ids, counts = ex["topk_ids"][j], ex["sample_counts"][j]
            drawn = dict(zip(*np.unique(draws, return_counts=True)))
            assert {int(i): int(c) for i, c in zip(ids, counts) if c} == drawn
