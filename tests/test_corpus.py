"""Tests for lsr.corpus readers and the bundled sample corpus."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from lsr.corpus import CorpusError, CorpusReader, Document, read_queries
from lsr.sample import SAMPLE_QUERIES, write_sample_corpus


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


BEIR_RECORDS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr.", "metadata": {"url": "http://c"}},
    {"_id": 2, "title": "Dogs", "text": "Dogs bark."},
    {"_id": "d3", "text": ""},
]


def check_beir_docs(docs: list[Document], source: Path) -> None:
    assert [d.id for d in docs] == ["d1", "2", "d3"]
    assert [d.title for d in docs] == ["Cats", "Dogs", ""]
    assert [d.text for d in docs] == ["Cats purr.", "Dogs bark.", ""]
    assert docs[0].metadata == {"url": "http://c"}
    assert docs[1].metadata == {}
    assert [d.line for d in docs] == [1, 2, 3]
    assert all(d.source == str(source) for d in docs)


def test_beir_dir_jsonl(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", BEIR_RECORDS)
    reader = CorpusReader(tmp_path)
    assert reader.format == "beir"
    assert reader.count() == 3
    check_beir_docs(list(reader), corpus)


def test_beir_dir_jsonl_gz(tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in BEIR_RECORDS)
    reader = CorpusReader(tmp_path)
    assert reader.format == "beir"
    check_beir_docs(list(reader), corpus)


def test_jsonl_default_fields_and_metadata(tmp_path):
    path = tmp_path / "docs.ndjson"
    path.write_text(
        json.dumps({"docid": 7, "contents": "seven", "lang": "en", "year": 2020}) + "\n\n"
        + json.dumps({"id": "x", "body": "ex", "title": None}) + "\n",
        encoding="utf-8",
    )
    reader = CorpusReader(path)
    assert reader.format == "jsonl"
    docs = list(reader)
    assert [(d.id, d.text, d.title) for d in docs] == [("7", "seven", ""), ("x", "ex", "")]
    assert docs[0].metadata == {"lang": "en", "year": 2020}
    assert [d.line for d in docs] == [1, 3]


def test_jsonl_custom_fields(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"pid": "p1", "passage": "hello", "head": "H", "id": "ignored"}])
    docs = list(CorpusReader(path, id_field="pid", text_field="passage", title_field="head"))
    assert [(d.id, d.text, d.title) for d in docs] == [("p1", "hello", "H")]
    assert docs[0].metadata == {"id": "ignored"}


def test_csv(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text('id,title,text,lang\n1,One,"first, with comma",en\n2,,"multi\nline",fr\n3,Three,,de\n',
                    encoding="utf-8")
    reader = CorpusReader(path)
    assert reader.format == "csv"
    docs = list(reader)
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("1", "One", "first, with comma"), ("2", "", "multi\nline"), ("3", "Three", "")]
    assert [d.metadata for d in docs] == [{"lang": "en"}, {"lang": "fr"}, {"lang": "de"}]
    assert [d.line for d in docs] == [2, 3, 5]


def test_tsv_gz(tmp_path):
    path = tmp_path / "docs.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('docid\ttext\nA\tsays "hi\nB\ttab-free text\n')
    reader = CorpusReader(path)
    assert reader.format == "tsv"
    assert reader.count() is None
    assert [(d.id, d.text) for d in reader] == [("A", 'says "hi'), ("B", "tab-free text")]


def test_text_directory(tmp_path):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("plain text\n", encoding="utf-8")
    (tmp_path / "sub" / "a.md").write_text("intro\n\n## Guide Title ##\n\nbody\n", encoding="utf-8")
    (tmp_path / "sub" / "deep" / "c.md").write_text("no heading", encoding="utf-8")
    (tmp_path / "ignored.py").write_text("print()", encoding="utf-8")
    reader = CorpusReader(tmp_path)
    assert reader.format == "text"
    assert reader.count() == 3
    docs = list(reader)
    assert [d.id for d in docs] == ["b.txt", "sub/a.md", "sub/deep/c.md"]
    assert [d.title for d in docs] == ["b", "Guide Title", "c"]
    assert docs[1].text == "intro\n\n## Guide Title ##\n\nbody\n"
    assert all(d.line == 0 for d in docs)


def test_single_markdown_file(tmp_path):
    path = tmp_path / "note.md"
    path.write_text("# Note\n\nbody", encoding="utf-8")
    docs = list(CorpusReader(path))
    assert [(d.id, d.title, d.text) for d in docs] == [("note.md", "Note", "# Note\n\nbody")]


def test_error_str_format():
    assert str(CorpusError("f.jsonl", 3, "text", "missing")) == "f.jsonl:3: field 'text': missing"
    assert str(CorpusError("f.jsonl", 3, None, "bad")) == "f.jsonl:3: bad"
    err = CorpusError("dir", 0, None, "empty")
    assert str(err) == "dir: empty"
    assert (err.path, err.line, err.field, err.message) == ("dir", 0, None, "empty")


def read_error(path: Path, **kwargs) -> CorpusError:
    with pytest.raises(CorpusError) as info:
        list(CorpusReader(path, **kwargs))
    return info.value


def test_malformed_json_line_3(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "c", "text": \n', encoding="utf-8")
    err = read_error(path)
    assert (err.line, err.field) == (3, None)
    assert str(err).startswith(f"{path}:3: malformed JSON: Expecting value")


def test_non_object_json(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n[1, 2]\n', encoding="utf-8")
    assert str(read_error(path)) == f"{path}:2: expected a JSON object, got list"


def test_missing_id(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"text": "no id"}])
    assert str(read_error(path)) == f"{path}:2: field '_id/id/docid': missing id"
    path = write_jsonl(tmp_path / "d.jsonl", [{"pid": " ", "text": "blank id"}])
    assert str(read_error(path, id_field="pid")) == f"{path}:1: field 'pid': empty id"


def test_missing_and_bad_text(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "t"}])
    hint = "name the field that holds the text with --text-field"
    assert str(read_error(path)) == \
        f"{path}:1: field 'text/contents/body': missing text (the record has fields 'id', 'title'; {hint})"
    assert str(read_error(path, text_field="passage")) == \
        f"{path}:1: field 'passage': missing text (the record has fields 'id', 'title'; {hint})"
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "ok"}, {"id": "b", "text": 42}])
    assert str(read_error(path)) == f"{path}:2: field 'text': text must be a string, got int"


def test_text_under_another_field_is_an_error_not_an_empty_document(tmp_path):
    records = [{"id": "a", "abstract": "Cats purr."}, {"id": "b", "abstract": "Dogs bark.", "year": 2020}]
    path = write_jsonl(tmp_path / "c.jsonl", records)
    err = read_error(path)
    assert (err.line, err.field) == (1, "text/contents/body")
    assert str(err) == (f"{path}:1: field 'text/contents/body': missing text (the record has fields 'id', 'abstract'; "
                        f"name the field that holds the text with --text-field)")
    assert [(d.id, d.text) for d in CorpusReader(path, text_field="abstract")] == [("a", "Cats purr."),
                                                                                 ("b", "Dogs bark.")]
    many = write_jsonl(tmp_path / "many.jsonl", [{"id": "x", **{f"f{i}": i for i in range(12)}}])
    assert "(the record has fields 'id', 'f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8' and 3 more;" \
        in str(read_error(many))
    only_id = write_jsonl(tmp_path / "one.jsonl", [{"id": "x"}])
    assert "(the record has field 'id';" in str(read_error(only_id))


def test_skip_bad_skips_records_without_text(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "one"}, {"id": "b", "body_text": "lost"},
                                             {"id": "c", "text": "two"}])
    reader = CorpusReader(path, skip_bad=True)
    assert [d.id for d in reader] == ["a", "c"] and reader.skipped == 1


def test_non_utf8_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "ok"}\n{"id": "c", "text": "caf\xe9"}\n')
    err = read_error(path)
    assert (err.path, err.line, err.field) == (str(path), 3, None)
    assert str(err).startswith(f"{path}:3: invalid UTF-8 at byte offset 24")


def test_non_utf8_gz_and_text_file(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"id": "a", "text": "\xff"}\n')
    assert read_error(path).line == 1
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.txt").write_bytes(b"fine\nstill fine\nbad \xc3\x28\n")
    err = read_error(tmp_path / "docs")
    assert (err.path, err.line) == (str(tmp_path / "docs" / "x.txt"), 3)


def test_bad_csv_row(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,text\n1,ok\n2,too,many\n3,fine\n", encoding="utf-8")
    assert str(read_error(path)) == f"{path}:3: expected 2 columns, got 3"
    reader = CorpusReader(path, skip_bad=True)
    assert [d.id for d in reader] == ["1", "3"]
    assert reader.skipped == 1


def test_csv_header_without_text_column_is_fatal(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,content\n1,x\n", encoding="utf-8")
    err = read_error(path, skip_bad=True)
    assert str(err).startswith(f"{path}:1: field 'text/contents/body': header has no text column")


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(CorpusError) as info:
        CorpusReader(tmp_path / "nope.jsonl")
    assert (info.value.line, info.value.field) == (0, None)
    assert "no such file" in str(info.value)
    (tmp_path / "empty").mkdir()
    err = read_error(tmp_path / "empty")
    assert str(err) == f"{tmp_path / 'empty'}: no documents found (format: text)"


def test_skip_bad_counts_and_logs(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "one"}\n'
        b'not json\n'
        b'{"text": "no id"}\n'
        b'"string"\n'
        b'{"id": "e", "text": "\xff"}\n'
        b'{"id": "f"}\n'
        b'{"id": "g", "text": "two"}\n'
    )
    reader = CorpusReader(path, skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="lsr.corpus"):
        assert [d.id for d in reader] == ["a", "g"]
    assert reader.skipped == 5
    assert len(caplog.records) == 5
    assert f"{path}:3: field '_id/id/docid'" in caplog.records[1].getMessage()
    assert [d.id for d in reader] == ["a", "g"] and reader.skipped == 5  # re-iteration resets the count


def test_skip_error_policy(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}])
    err = CorpusError(path, 1, "id", "duplicate id 'a'")
    with pytest.raises(CorpusError):
        CorpusReader(path).skip_error(err)
    lenient = CorpusReader(path, skip_bad=True)
    lenient.skip_error(err)
    assert lenient.skipped == 1


def test_explicit_format_and_unknown_extension(tmp_path):
    path = write_jsonl(tmp_path / "docs.data", [{"id": "a", "text": "x"}])
    with pytest.raises(CorpusError, match="cannot detect corpus format"):
        CorpusReader(path)
    assert [d.id for d in CorpusReader(path, fmt="jsonl")] == ["a"]


def test_read_queries_jsonl_and_beir_dir(tmp_path):
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "cats"}, {"_id": 2, "text": "dogs", "metadata": {}}])
    assert list(read_queries(tmp_path / "queries.jsonl")) == [("q1", "cats"), ("2", "dogs")]
    assert list(read_queries(tmp_path)) == [("q1", "cats"), ("2", "dogs")]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"_id": "q1", "text": "ok"}, {"_id": "q2"}])
    with pytest.raises(CorpusError) as info:
        list(read_queries(bad))
    assert str(info.value) == f"{bad}:2: field 'text/query': missing query text"


def test_read_queries_tsv(tmp_path):
    path = tmp_path / "queries.tsv"
    path.write_text("query-id\ttext\n1\twhat is a cat\nq2\tdogs\tand more\n", encoding="utf-8")
    assert list(read_queries(path)) == [("1", "what is a cat"), ("q2", "dogs\tand more")]
    path.write_text("5\tno header\nbroken line\n", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        list(read_queries(path))
    assert (info.value.line, info.value.field) == (2, None)


def test_sample_corpus(tmp_path):
    out = write_sample_corpus(tmp_path / "a")
    assert out == tmp_path / "a"
    reader = CorpusReader(out)
    assert reader.format == "beir"
    docs = list(reader)
    assert 500 <= len(docs) <= 1500
    assert len({d.id for d in docs}) == len(docs)
    assert all(d.text.strip() and d.title for d in docs)
    assert max(len(d.text) for d in docs) <= 1500
    assert any(d.id.startswith("module:json#") for d in docs)
    assert any(d.id == "try#1" for d in docs)
    queries = list(read_queries(out))
    assert queries == [(f"q{i}", q) for i, q in enumerate(SAMPLE_QUERIES, 1)]
    assert 6 <= len(queries) <= 12


def test_sample_corpus_deterministic(tmp_path):
    a, b = write_sample_corpus(tmp_path / "a"), write_sample_corpus(tmp_path / "b")
    for name in ("corpus.jsonl", "queries.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
