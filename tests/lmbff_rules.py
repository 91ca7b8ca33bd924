"""LM-BFF's input rules, the reference the few-shot tests compare our encodings with.

Written here from what princeton-nlp/LM-BFF's code does (``run.py``: the demonstration
template; ``src/dataset.py``, ``tokenize_multipart_input``: the ids), not copied from it, and
kept as literal as its rules are: string replacement for the demonstration template, one
``*``-separated part at a time, a one-character literal taken as a token by name, the sentence
limits by sentence index, then padding to the max length and cutting the tail.
"""

SENTENCE_PREFIXES = ("sent_", "+sent_", "sent-_", "sentl_", "+sentl_", "sentl-_", "sentu_",
                     "+sentu_")  # fmt: skip


def demo_template(template: str, num_labels: int) -> str:
    """run.py's demonstration template (the single-template path, ``--template_id``): the
    template, then per label the template without ``*cls*``, its sentence numbers shifted by
    string replacement and ``*mask*`` replaced by ``*label_j*``."""
    new = template
    old = template.replace("*cls*", "")
    sent_num = 2 if "_1" in old else 1
    for label_id in range(num_labels):
        sub = old
        for sent_id in range(sent_num):
            sub = sub.replace(f"_{sent_id}", f"_{sent_num + sent_num * label_id + sent_id}")
        new += sub.replace("*mask*", f"*label_{label_id}*")
    return new


def _sentence(part: str, text: str) -> str:
    """The text a sentence part reads, by its prefix."""
    prefix = part[: part.index("_") + 1]
    if "l" in prefix:
        text = text[:1].lower() + text[1:]
    if "u" in prefix:
        text = text[:1].upper() + text[1:]
    if "-" in prefix:
        text = text[:-1]
    return " " + text if prefix.startswith("+") else text


def input_ids(
    tokenizer,
    template: str,
    sentences: list[str],
    label_word_ids: list[int],
    max_length: int,
    first_sent_limit: int | None = None,
    other_sent_limit: int | None = None,
) -> list[int]:
    """The ids LM-BFF feeds its model for one (augmented) example, padded to ``max_length``."""
    special = {"cls": tokenizer.cls_token_id, "mask": tokenizer.mask_token_id,
               "sep": tokenizer.sep_token_id, "sep+": tokenizer.sep_token_id}  # fmt: skip
    ids: list[int] = []
    for part in template.split("*"):
        if part in special:
            tokens = [special[part]]
        elif part.startswith("label_"):
            tokens = [label_word_ids[int(part.split("_")[1])]]
        elif part.startswith(SENTENCE_PREFIXES):
            index = int(part.split("_")[1])
            text = _sentence(part, sentences[index])
            tokens = tokenizer.encode(text, add_special_tokens=False)
            limit = first_sent_limit if index == 0 else other_sent_limit
            tokens = tokens[:limit] if limit is not None else tokens
        else:
            text = part.replace("_", " ")
            if len(text) == 1:
                tokens = [tokenizer.convert_tokens_to_ids(text)]
            else:
                tokens = tokenizer.encode(text, add_special_tokens=False)
        ids += tokens
    ids += [tokenizer.pad_token_id] * (max_length - len(ids))
    return ids[:max_length]
