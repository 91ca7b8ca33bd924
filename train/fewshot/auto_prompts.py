"""LM-BFF's automatically searched prompts, read from its published files.

LM-BFF (Gao et al., 2021) ships, per task and k-shot split, its searched templates and label
words sorted by dev performance, best first::

    auto_template/SST-2/16-13.sort.txt        *cls**sent_0*_And_that_is*mask*.*sep+*
    auto_label_mapping/SST-2/16-13.sort.txt   {"0": "embarrassing", "1": "exquisite"}

A checkout of LM-BFF (or any folder holding those two folders) is named with
``--lmbff-prompts DIR``. As LM-BFF's ``run.py`` does with ``--template_path FILE
--template_id 0`` (and ``--mapping_path FILE --mapping_id 0``), the first line is taken: the
first non-empty template line, and the first label-mapping line. Folders use LM-BFF's names
(``SST-2``, ``sst-5``, ``mr``, ``cr``, ``MNLI``, ...), as the k-shot splits do.

A label mapping is a Python dict literal from label (as written in the task files; the CSV
tasks write them as integers) to word; it becomes the harness's verbalizer in label order
(STS-B: ``"0"`` the low word, ``"1"`` the high one), typed without the space that the learner
adds in front. The label mappings were searched with the manual template (LM-BFF's README).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from smash.precompute.kshot.data import DataError
from smash.precompute.kshot.tasks import Task
from smash.precompute.shared.templates import parse_template, verbalizer_ids
from smash.precompute.shared.text_files import utf8_lines

__all__ = [
    "AutoPrompt",
    "check_label_words",
    "label_mapping_path",
    "read_auto_prompt",
    "read_label_mapping",
    "read_template",
    "template_path",
]

_HINT = "--lmbff-prompts names a checkout of princeton-nlp/LM-BFF"


@dataclass(frozen=True)
class AutoPrompt:
    """The top template and label words of one (task, K, seed), with where each was read
    (``FILE:LINE``)."""

    template: str
    words: tuple[str, ...]
    template_source: str
    words_source: str


def template_path(root: str | Path, task: Task, k: int, seed: int) -> Path:
    return Path(root) / "auto_template" / task.dirname / f"{k}-{seed}.sort.txt"


def label_mapping_path(root: str | Path, task: Task, k: int, seed: int) -> Path:
    return Path(root) / "auto_label_mapping" / task.dirname / f"{k}-{seed}.sort.txt"


def read_auto_prompt(
    root: str | Path, task: Task, k: int, seed: int, words: bool = True
) -> AutoPrompt:
    """The top searched template and (when ``words``) the top searched label words of one
    k-shot split; without ``words`` the label-mapping file is not read (``words`` is empty)."""
    template, t_src = read_template(template_path(root, task, k, seed), task)
    if not words:
        return AutoPrompt(template, (), t_src, "")
    found, w_src = read_label_mapping(label_mapping_path(root, task, k, seed), task)
    return AutoPrompt(template, found, t_src, w_src)


def read_template(path: Path, task: Task) -> tuple[str, str]:
    """The first non-empty line of a sorted template file and its ``FILE:LINE``."""
    for line, text in _lines(path):
        text = text.strip()
        if not text:
            continue
        try:
            template = parse_template(text)
        except ValueError as err:
            raise DataError(f"{path}:{line}: {err}") from None
        if template.num_sentences > len(task.text_columns):
            raise DataError(
                f"{path}:{line}: template {text!r} reads {template.num_sentences} sentences, "
                f"{task.name} has {len(task.text_columns)}"
            )
        return text, f"{path}:{line}"
    raise DataError(f"{path}: no template (the file is empty)")


def read_label_mapping(path: Path, task: Task) -> tuple[tuple[str, ...], str]:
    """The first line of a sorted label-mapping file as label words in label order."""
    lines = list(_lines(path))
    if not lines:
        raise DataError(f"{path}: no label mapping (the file is empty)")
    line, text = lines[0]
    where = f"{path}:{line}"
    try:
        mapping = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        mapping = None
    if not isinstance(mapping, dict):
        raise DataError(f"{where}: expected a dict of label to word, e.g. {{'0': 'bad'}}")
    labels = task.labels or ("0", "1")  # regression: "0" the low word, "1" the high one
    by_label = {str(key): word for key, word in mapping.items()}
    if sorted(by_label) != sorted(labels) or len(by_label) != len(mapping):
        raise DataError(
            f"{where}: labels {sorted(map(str, mapping))} are not {task.name}'s {sorted(labels)}"
        )
    words = tuple(by_label[label] for label in labels)
    for word in words:
        if not isinstance(word, str) or not word or len(word.split()) != 1 or word != word.strip():
            raise DataError(f"{where}: label word {word!r} is not a word without spaces")
    return words, where


def check_label_words(tokenizer, words: tuple[str, ...], source: str) -> None:
    """Each ``' ' + word`` must be one token of ``tokenizer``; raises DataError at ``source``."""
    try:
        verbalizer_ids(tokenizer, words)
    except ValueError as err:
        raise DataError(f"{source}: {err}") from None


def _lines(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found ({_HINT})")
    for line, text in utf8_lines(path, DataError):
        yield line, text.rstrip("\n")
