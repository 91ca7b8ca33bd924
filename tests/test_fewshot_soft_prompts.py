"""``evaluate-fewshot --mode ppt / prompt-tuning``: a soft prompt tuned on each task, the model
frozen, under the LM-BFF protocol with PPT's learning rates; the Vanilla PPT row beside the
paper's."""

import json
from pathlib import Path

import pytest
import torch
from fewshot_support import cli_error
from smash.precompute.kshot.data import load_kshot
from smash.precompute.kshot.splits import make_kshot
from smash.precompute.kshot.tasks import get_task
from smash.train.cli import main as train_student
from smash.train.fewshot.cli import main
from smash.train.fewshot.paper import paper_row
from smash.train.fewshot.protocol import Protocol, run_point
from smash.train.fewshot.soft_prompts import SoftPromptOptions, soft_prompt_factory
from smash.train.soft_prompt import load_soft_prompt
from test_fewshot_resume import _count_units
from train_support import sentiment_store_of, tiny_config, write_config
from transformers import AutoModelForMaskedLM, AutoTokenizer

ORIGINAL = Path(__file__).parent / "data" / "kshot" / "original"


@pytest.fixture(scope="module")
def kshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kshot")
    make_kshot(ORIGINAL, root, [get_task(t) for t in ("SST-2", "MRPC")], seeds=[13], k=8)
    return root


@pytest.fixture(scope="module")
def pretrained(tiny, tmp_path_factory) -> Path:
    """A 4-vector prompt pre-trained on the tiny sentiment store (hard labels)."""
    out = tmp_path_factory.mktemp("ppt")
    store = sentiment_store_of(tiny, tmp_path_factory)
    config = tiny_config(out / "run", tiny["student"], [(store, 1.0)], objective="hard",
                         soft_prompt_length=4, max_steps=3)  # fmt: skip
    assert train_student(["--config", write_config(out / "c.json", config)]) == 0
    return out / "run" / "student"


def common(tiny, kshot, out):
    return ["--model", str(tiny["student"]), "--name", "distilroberta-base", "--data", str(kshot),
            "--k", "8", "--seeds", "13", "--batch-sizes", "4", "--max-steps", "2",
            "--eval-every", "2", "--max-length", "64", "--device", "cpu", "--out", str(out)]  # fmt: skip


def test_only_the_prompt_moves_from_where_ppt_left_it(tiny, kshot, pretrained):
    task = get_task("SST-2")
    tokenizer = AutoTokenizer.from_pretrained(tiny["student"])
    options = SoftPromptOptions({"": str(pretrained)})
    make = soft_prompt_factory("ppt", str(tiny["student"]), tokenizer, task, 64, task.template,
                               task.verbalizer, options)  # fmt: skip
    learner = make()
    start = learner.model.prompt.embeddings.detach().clone()
    assert [n for n, p in learner.model.named_parameters() if p.requires_grad] == [
        "prompt.embeddings"
    ]
    assert torch.equal(start, load_soft_prompt(pretrained)[0].embeddings)
    protocol = Protocol(learning_rates=(5e-2,), batch_sizes=(4,), max_steps=3, eval_every=3)
    trained = {}

    def keep():  # the learner the protocol trains, kept to look at afterwards
        trained["learner"] = make()
        return trained["learner"]

    run_point(keep, load_kshot(kshot, task, 8, 13), 13, 5e-2, 4, protocol, torch.device("cpu"))
    model = trained["learner"].model
    assert not torch.equal(model.prompt.embeddings, start)
    original = AutoModelForMaskedLM.from_pretrained(tiny["student"]).state_dict()
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, original[name]), name


def test_ppt_and_prompt_tuning_end_to_end_beside_the_paper(
    tiny, kshot, pretrained, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    argv = [*common(tiny, kshot, out), "--tasks", "SST-2", "MRPC", "--mode", "ppt",
            "prompt-tuning", "--ppt-prompt", f"sentiment={pretrained}",
            f"sentence-pair={pretrained}", "--prompt-length", "3", "--prompt-tuning-lrs", "1e-2",
            "5e-2", "--compare-paper"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    entries = {(e["mode"], e["task"]): e for e in result["entries"]}
    assert set(entries) == {(m, t) for m in ("ppt", "prompt-tuning") for t in ("SST-2", "MRPC")}
    for entry in entries.values():  # PPT's rates, not the protocol's --lrs
        assert entry["seeds"][0]["lr"] in (1e-2, 5e-2) and len(entry["seeds"][0]["grid_dev"]) == 2
    lines = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()[1:]]
    units = [line for line in lines if "unit" in line]  # not the chosen points' test lines
    keys = {u["unit"]["mode"]: json.loads(u["unit"]["inputs"])["soft_prompt"] for u in units}
    assert keys["prompt-tuning"] == {"length": 3} and keys["ppt"]["prompt"].startswith("sha256:")
    md = (out / "results.md").read_text()
    assert "| paper: Vanilla PPT | 75.3 (2.9) |" in md and "83.6 (0.9)" in md
    assert "(ppt and prompt-tuning: lr {0.01, 0.05}, PPT's prompt-tuning rates)" in md
    assert paper_row("distilroberta-base", "ppt")[1]["STS-B"] == (55.7, 3.0)
    # rerun: every unit is recorded, nothing trains again
    trained = _count_units(monkeypatch)
    assert main([*argv, "--resume"]) == 0
    assert trained == []


def test_refusals(tiny, kshot, pretrained, tmp_path, capsys):
    base = [*common(tiny, kshot, tmp_path / "o"), "--tasks", "SST-2"]
    for extra, says in [
        (["--mode", "prompt", "--ppt-prompt", str(pretrained)], "--ppt-prompt applies to --mode ppt"),
        (["--mode", "ppt"], "--mode ppt needs --ppt-prompt"),
        (["--mode", "prompt", "--prompt-length", "4"], "--prompt-length applies to --mode"),
        (["--mode", "prompt-tuning", "--prompt-length", "0"], "--prompt-length: expected a whole"),
        (["--mode", "ppt", "--ppt-prompt", str(pretrained), "--prompt-tuning-lrs", "nan"],
         "--prompt-tuning-lrs: expected a finite number > 0"),
        (["--mode", "prompt-tuning", "--prompt-tuning-lrs", "0.01", "1e-2"],
         "--prompt-tuning-lrs 0.01 is given twice"),
        (["--mode", "ppt", "--ppt-prompt", "pairs=x"], "the group is one of sentiment"),
        (["--mode", "ppt", "--ppt-prompt", "a", "--ppt-prompt", "b"], "is given twice"),
        (["--mode", "ppt", "--ppt-prompt", str(tmp_path)], "no soft prompt"),
        (["--mode", "ppt", "--ppt-prompt", f"sentence-pair={pretrained}"],
         "no pre-trained prompt for SST-2, a sentiment task"),
    ]:  # fmt: skip
        assert says in cli_error(capsys, [*base, *extra]), extra
    # a prompt trained with another model, and a max length its vectors do not leave room for
    other = [*common(tiny, kshot, tmp_path / "p"), "--tasks", "SST-2", "--mode", "ppt",
             "--ppt-prompt", str(pretrained)]  # fmt: skip
    other[1] = str(tiny["teacher"])
    assert "a soft prompt trained with" in cli_error(capsys, other)
    long = [*base, "--mode", "prompt-tuning", "--max-length", "128"]  # the last one counts
    assert "exceed the 130 positions" in cli_error(capsys, long)


def test_prompt_tuning_end_to_end_on_a_t5(tiny_t5, kshot, tmp_path):
    """A T5 student, its prompt in front of the encoder's input (the prompt's equality with
    tokens in front is ``test_soft_prompt.py``'s), through the whole runner."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_t5["student"]), "--data", str(kshot), "--k", "8", "--seeds", "13",
            "--batch-sizes", "4", "--max-steps", "2", "--eval-every", "2", "--max-length", "64",
            "--device", "cpu", "--out", str(out), "--tasks", "SST-2", "--mode", "prompt-tuning",
            "--prompt-length", "3", "--prompt-tuning-lrs", "5e-2"]  # fmt: skip
    assert main(argv) == 0
    (entry,) = json.loads((out / "results.json").read_text())["entries"]
    assert (entry["mode"], entry["task"], entry["seeds"][0]["lr"]) == ("prompt-tuning", "SST-2",
                                                                       5e-2)  # fmt: skip
    assert 0 <= entry["seeds"][0]["tests"]["SST-2"] <= 1


def test_a_checkpoint_keeps_the_prompt_not_the_frozen_model(tiny, kshot, pretrained):
    """The best checkpoint holds what training changes (the prompt, and buffers), not the
    frozen backbone; a fresh learner tested with it scores as the trained one; a checkpoint
    that lacks the prompt is refused."""
    from smash.train.fewshot.protocol import checkpoint_tests, load_checkpoint, train_point

    task = get_task("SST-2")
    tokenizer = AutoTokenizer.from_pretrained(tiny["student"])
    make = soft_prompt_factory("ppt", str(tiny["student"]), tokenizer, task, 64, task.template,
                               task.verbalizer, SoftPromptOptions({"": str(pretrained)}))  # fmt: skip
    split = load_kshot(kshot, task, 8, 13)
    protocol = Protocol(max_steps=3, eval_every=3)
    cpu = torch.device("cpu")
    _, state = train_point(make, split, 13, 5e-2, 4, protocol, cpu)
    weights = [k for k, v in state.items() if v.is_floating_point()]
    assert weights == ["prompt.embeddings"]
    tested = run_point(make, split, 13, 5e-2, 4, protocol, cpu).tests
    assert checkpoint_tests(make(), split, state, protocol, cpu) == tested
    with pytest.raises(RuntimeError, match=r"missing \['prompt.embeddings'\]"):
        load_checkpoint(make().model, {k: v for k, v in state.items() if k not in weights})
