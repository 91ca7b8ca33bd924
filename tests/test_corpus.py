"""Corpus readers, fingerprints and sentence splitting."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from smash.precompute.corpus import CorpusError, open_corpus
from smash.precompute.sentences import SentenceSplitter

DOCS = [
    "First doc, first sentence here. And its second one follows.",
    "Second doc only has one sentence in it.",
    "Third doc: Dr. Smith paid $3.50 for coffee. Was it good? Yes, it was fine.",
]


def test_text_file_with_blank_line_separated_documents(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(
        "\n\n" + DOCS[0] + "\n\n\n" + DOCS[1].replace(" in it", "\nin it") + "\n\n" + DOCS[2] + "\n"
    )
    assert list(open_corpus(path)) == DOCS


def test_folder_of_documents_one_per_file(tmp_path):
    for i, doc in enumerate(DOCS):
        (tmp_path / f"{i:02d}.txt").write_text(doc + "\n\n")
    (tmp_path / ".hidden").write_text("ignored")
    assert [d.strip() for d in open_corpus(tmp_path, one_doc_per_file=True)] == DOCS
    assert list(open_corpus(tmp_path)) == DOCS


def test_jsonl_and_its_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    assert list(open_corpus(path, text_field="body")) == DOCS
    with pytest.raises(CorpusError, match=r"c.jsonl: line 1 has no string field 'text'"):
        list(open_corpus(path))
    path.write_text(json.dumps({"text": "ok"}) + "\n{broken\n")
    with pytest.raises(CorpusError, match="c.jsonl: line 2 is not valid JSON"):
        list(open_corpus(path))


def test_parquet(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), path, row_group_size=2)
    assert list(open_corpus(path)) == DOCS
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(open_corpus(path, text_field="body"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match="bad.parquet: not a readable parquet file"):
        list(open_corpus(tmp_path / "bad.parquet"))


def test_missing_and_empty(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        open_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no files"):
        list(open_corpus(tmp_path / "empty"))


def test_fingerprint_follows_content_and_options(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(DOCS[0])
    first = open_corpus(path).fingerprint()
    assert first == open_corpus(path).fingerprint()
    assert open_corpus(path, one_doc_per_file=True).fingerprint() != first
    path.write_text(DOCS[0] + " More.")
    assert open_corpus(path).fingerprint() != first


def test_hub_corpus_without_datasets_says_what_to_install(monkeypatch):
    corpus = open_corpus("hf:wikimedia/wikipedia:20231101.en")
    assert corpus.fingerprint().startswith("sha256:")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(CorpusError, match=r"smash-distill\[wikipedia\]"):
        next(iter(corpus))


def test_hub_corpus_streams_a_local_dataset_folder(tmp_path):
    """``hf:`` goes through ``datasets.load_dataset(..., streaming=True)``; a local folder of
    JSONL files takes the same path as a hub dataset, without a hub."""
    (tmp_path / "data").mkdir()
    jsonl = tmp_path / "data" / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    corpus = open_corpus(f"hf:{tmp_path}")
    assert corpus.local and not open_corpus("hf:wikimedia/wikipedia").local
    assert list(corpus) == list(open_corpus(jsonl)) == DOCS
    with pytest.raises(CorpusError, match="the corpus is empty \\(no 'body' text\\)"):
        list(open_corpus(f"hf:{tmp_path}", text_field="body"))
    first = corpus.fingerprint()
    assert open_corpus(f"hf:{tmp_path}@v2").fingerprint() != first
    jsonl.write_text(jsonl.read_text() + json.dumps({"text": "One more document."}) + "\n")
    assert corpus.fingerprint() != first  # a local folder is recorded by content


def test_splitter_handles_abbreviations_and_filters_lengths():
    splitter = SentenceSplitter(min_words=4, max_words=8)  # drops "Was it good?"
    assert splitter.split(DOCS[2]) == [
        "Third doc: Dr. Smith paid $3.50 for coffee.",
        "Yes, it was fine.",
    ]
    with pytest.raises(ValueError, match="min_words"):
        SentenceSplitter(min_words=5, max_words=2)
