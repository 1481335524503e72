"""One rule cuts text into documents: training, evaluation, corpora, held-out files."""

import json

import pytest

from layra.config import DataConfig, SourceConfig
from layra.corpus.files import document_paragraphs
from layra.data import build_dataset, iter_documents
from layra.documents import documents_jsonl, read_documents, split_documents
from layra.errors import LayraError
from layra.evaluation.bpb import load_text

# Blank lines of every kind: empty, spaces, a tab, CRLF, three newlines in a row.
TEXT = "  first doc\nline two \n\n\n second\n \t\nthird é\r\n\r\nfourth\n  \n"
DOCS = ["first doc\nline two", "second", "third é", "fourth"]


def test_split_documents_rule():
    assert split_documents(TEXT) == DOCS
    assert split_documents("") == [] and split_documents(" \n\n\t\n") == []
    # A line break alone does not separate documents; a whitespace-only line does.
    assert split_documents("a\nb") == ["a\nb"]
    assert split_documents("a\n\u00a0\nb") == ["a", "b"]  # no-break space: whitespace too


def test_training_evaluation_and_corpus_read_txt_alike(tmp_path):
    p = tmp_path / "gl.txt"
    p.write_text(TEXT, encoding="utf-8")
    # Training split on exactly "\n\n" before: " \t" between two documents joined them.
    assert list(iter_documents(SourceConfig(path=str(p), lang="glg"))) == DOCS
    assert list(load_text("glg", p).docs) == DOCS
    assert list(document_paragraphs(TEXT)) == DOCS
    assert read_documents(p) == DOCS


def test_jsonl_round_trips_documents_with_blank_lines_inside(tmp_path):
    docs = ["one\n\ntwo paragraphs", "tab\there", 'quote " é\n \nend']
    p = tmp_path / "h.jsonl"
    p.write_text(documents_jsonl(docs), encoding="utf-8")
    assert read_documents(p) == docs
    assert list(load_text("glg", p).docs) == docs
    p.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(LayraError, match="h.jsonl:2: not a JSON line"):
        read_documents(p)
    p.write_text('{"body": "a"}\n', encoding="utf-8")
    with pytest.raises(LayraError, match='expected {"text"'):
        read_documents(p)


def test_run_heldout_text_saves_and_reloads_exactly(tmp_path, tok):
    # JSONL rows are whole documents, blank lines inside included (a web page).
    rows = [f"documento {i}\n\nsegundo parágrafo {i} con texto abondo" for i in range(40)]
    src = tmp_path / "gl.jsonl"
    src.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(
        sources=[SourceConfig(path=str(src), lang="glg")], seq_len=16, heldout_fraction=0.3
    )
    packed = build_dataset(cfg, tok)
    held = packed.heldout["glg"]
    assert held and all(d in rows for d in held)
    # The prepared data keeps them as JSONL, and so does a run directory (layra.train).
    again = build_dataset(cfg, tok)
    assert again.heldout == {"glg": held}
    from layra.rundir import RunDir
    from layra.train import _record_data

    _record_data(RunDir(tmp_path / "run"), packed)
    # `layra eval bpb --text glg=RUN/heldout/glg.jsonl` scores the same documents.
    assert list(load_text("glg", tmp_path / "run" / "heldout" / "glg.jsonl").docs) == held
