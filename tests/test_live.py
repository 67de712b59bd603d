"""Live index (lsr.live): segments, deletions, updates and compaction equal a from-scratch index of the live documents."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from lsr.index.storage import WriterLockedError, verify_index, writer_lock
from lsr import Engine
from lsr.corpus import Document
from lsr.faults import ENV as FAULT_ENV
from lsr.live import DocumentNotFoundError, DuplicateDocumentError, compact, read_commit
from tests.conftest import write_jsonl

QUERIES = ["parse command line arguments", "compress files with gzip", "regular expression matching",
           "date and time", "random numbers", "json encoding", "threads and locks", "sockets network"]
MODES = [("exact", {}), ("bmp", {})]


def _docs(records: list[dict]) -> list[Document]:
    return [Document(id=r["_id"], text=r["text"], title=r.get("title", "")) for r in records]


def _reference(tmp_path, records: list[dict], scale: float, encoder, name: str, **kwargs) -> Engine:
    """A from-scratch index of exactly these records, quantized with ``scale``."""
    root = tmp_path / f"{name}-corpus"
    root.mkdir()
    write_jsonl(root / "corpus.jsonl", records)
    return Engine.build(root, tmp_path / name, encoder=encoder, progress=False, scale=scale, **kwargs)


def _results(engine: Engine, mode: str, params: dict, k: int = 10, queries=QUERIES, **kwargs):
    out = []
    for q in queries:
        hits = engine.search(q, k=k, mode=mode, **params, **{"retriever": "sparse", **kwargs})
        out.append([(h.id, round(h.score, 5)) for h in hits])
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory, module_docs, encoder):
    """An index of the first 60 module passages (with BMP), then 30 added, 8 deleted and 3 updated."""
    tmp = tmp_path_factory.mktemp("live")
    first, second = module_docs[:60], module_docs[60:90]
    root = tmp / "c1"
    root.mkdir()
    write_jsonl(root / "corpus.jsonl", first)
    engine = Engine.build(root, tmp / "index", encoder=encoder, progress=False, structures=["bmp", "seismic"])
    engine.add_documents(_docs(second))
    deleted = [d["_id"] for d in first[5:10]] + [d["_id"] for d in second[:3]]
    engine.delete_documents(deleted)
    updated = [dict(d, text=d["text"] + " Updated: also handles gzip compression.") for d in first[20:23]]
    engine.add_documents(_docs(updated), update=True)
    engine = engine.refresh()
    gone = set(deleted) | {d["_id"] for d in updated}
    expected = [d for d in first + second if d["_id"] not in gone] + updated
    return tmp, engine, expected


def test_segments_equal_from_scratch(live, encoder):
    tmp, engine, expected = live
    assert engine.info()["segments"] == 3 and engine.info()["deleted"] == 11
    assert engine.index.num_docs == len(expected) == len(engine.docs)
    assert engine.docs.ids() == [d["_id"] for d in expected]
    ref = _reference(tmp, expected, engine.index.scale, encoder, "ref", structures=["bmp"])
    for mode, params in MODES:
        assert _results(engine, mode, params) == _results(ref, mode, params), mode
        assert _results(engine, mode, params, k=1000) == _results(ref, mode, params, k=1000), mode
    # batch search over segments == the reference's batch search (batch encoding pads queries together)
    for mode, _ in MODES:
        batch = engine.search_batch(QUERIES, k=10, mode=mode, retriever="sparse")
        ref_batch = ref.search_batch(QUERIES, k=10, mode=mode, retriever="sparse")
        assert [[(h.id, h.score) for h in hits] for hits in batch] == \
            [[(h.id, h.score) for h in hits] for hits in ref_batch]


def test_approximate_modes_over_segments_keep_recall(live):
    _, engine, _ = live
    assert engine.info()["segments"] == 3
    for mode, params in [("seismic", {}), ("bmp-approx", {"alpha": 0.9})]:
        found = total = 0
        for q in QUERIES:
            exact = {h.id for h in engine.search(q, k=10, retriever="sparse")}
            approx = engine.search(q, k=10, mode=mode, retriever="sparse", **params)
            assert len({h.id for h in approx}) == len(approx)  # no document twice, none deleted
            found += len(exact & {h.id for h in approx})
            total += len(exact)
        assert found / total >= 0.9, (mode, found / total)


def test_deleted_and_updated_documents(live):
    _, engine, expected = live
    ids = {d["_id"] for d in expected}
    for q in QUERIES:
        assert {h.id for h in engine.search(q, k=1000)} <= ids
    updated = expected[-1]
    assert "Updated" in engine.document(updated["_id"]).text
    with pytest.raises(KeyError):
        engine.document("module:" + "no-such-module")


def test_stored_documents_read_across_segments_like_one_by_one(live):
    _, engine, _ = live
    docnos = [h.docno for h in engine.search(QUERIES[0], k=1000, retriever="sparse")] + [10 ** 9]
    docs = engine.stored_documents(docnos)
    assert len({engine.index.locate(d)[0] for d in docnos[:-1]}) > 1  # the hits span segments
    assert set(docs) == set(docnos[:-1])  # a number that is not stored is left out
    assert all(docs[d] == engine.stored_document(d) for d in docnos[:-1])


def test_errors_leave_the_commit_unchanged(live, module_docs):
    _, engine, _ = live
    index_dir = engine.index_dir
    before = read_commit(index_dir)
    with pytest.raises(DuplicateDocumentError, match="already in the index"):
        engine.add_documents(_docs(module_docs[30:31]))
    with pytest.raises(DocumentNotFoundError, match="not in the index"):
        engine.delete_documents(["no-such-id", module_docs[0]["_id"]])
    assert read_commit(index_dir) == before
    assert engine.refresh() is engine  # nothing was committed
    with writer_lock(index_dir, "test"):
        with pytest.raises(WriterLockedError, match=r"locked by pid \d+ \(test"):
            engine.delete_documents([module_docs[0]["_id"]])
    assert read_commit(index_dir) == before


def test_compact_equals_from_scratch_and_searches_keep_working(live, tmp_path, encoder):
    src, engine, expected = live
    index_dir = tmp_path / "index"
    shutil.copytree(engine.index_dir, index_dir)
    old = Engine.open(index_dir, encoder=encoder)
    # encoded once: the loop checks the index under compaction, not torch's float sums on another thread
    vectors = [old.query_vector(q) for q in QUERIES]
    want = _results(old, "exact", {}, queries=vectors)
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_loop():
        try:
            while not stop.is_set():
                assert _results(old, "exact", {}, queries=vectors) == want
        except BaseException as err:  # surfaced below
            errors.append(err)

    thread = threading.Thread(target=search_loop)
    thread.start()
    try:
        report = compact(index_dir, progress=False)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert report["compacted"] and report["after"] == {"segments": 1, "deleted": 0, "documents": len(expected)}
    assert read_commit(index_dir) is None and not (index_dir / "segments").exists()
    assert verify_index(index_dir) == []
    new = old.refresh()
    assert new is not old and new.info()["segments"] == 1
    assert new.docs.ids() == [d["_id"] for d in expected]
    ref = _reference(src, expected, engine.index.scale, encoder, "ref2", structures=["bmp"])
    for mode, params in MODES:
        assert _results(new, mode, params) == _results(ref, mode, params)
    assert np.array_equal(new.index.postings_docs(), ref.index.postings_docs())
    assert np.array_equal(new.index.array("postings_impacts"), ref.index.array("postings_impacts"))


def test_live_hybrid(tmp_path, hybrid_engine, module_docs, encoder):
    index_dir = tmp_path / "index"
    shutil.copytree(hybrid_engine.index_dir, index_dir)
    engine = Engine.open(index_dir, encoder=encoder)
    new = dict(module_docs[0], _id="brand-new", text="A module for brewing coffee with espresso machines.")
    engine.add_documents(_docs([new]))
    engine.delete_documents([module_docs[1]["_id"]])
    engine = engine.refresh()
    for retriever in ("dense", "hybrid"):
        hits = engine.search("espresso coffee brewing", k=5, retriever=retriever)
        assert hits[0].id == "brand-new", retriever
        assert module_docs[1]["_id"] not in {h.id for h in engine.search(module_docs[1]["text"][:200], k=20,
                                                                          retriever=retriever)}
    compact(index_dir, progress=False)
    engine = engine.refresh()
    assert engine.search("espresso coffee brewing", k=1, retriever="dense")[0].id == "brand-new"
    assert engine.dense.num_docs == engine.index.num_docs == len(hybrid_engine.docs)


def _snapshot(index_dir):
    engine = Engine.open(index_dir)
    return read_commit(index_dir), engine.docs.ids(), _results(engine, "exact", {})


def _killed_at(fault: str, *cmd: str) -> None:
    """Run ``lsr CMD`` as a real subprocess that SIGKILLs itself at fault point ``fault`` (``LSR_FAULT``,
    lsr.faults)."""
    proc = subprocess.run([sys.executable, "-m", "lsr.cli", *cmd], capture_output=True, text=True, timeout=600,
                          env={**os.environ, FAULT_ENV: fault})
    assert proc.returncode == -signal.SIGKILL, f"not killed at {fault} (exit {proc.returncode}): {proc.stderr}"


def _uncommitted_segments(index_dir) -> set[str]:
    """Directories under segments/ that the commit does not list (staging directories included)."""
    committed = {s["dir"].split("/")[-1] for s in read_commit(index_dir)["segments"]}
    return {p.name for p in (index_dir / "segments").iterdir()} - committed


def test_sigkill_during_add_and_compact_keeps_the_last_commit(live, tmp_path):
    from lsr.sample import sample_documents

    _, engine, _ = live
    index_dir = tmp_path / "index"
    shutil.copytree(engine.index_dir, index_dir)
    extra = [d for d in sample_documents() if not d["_id"].startswith("module:")][:400]
    corpus = write_jsonl(tmp_path / "extra.jsonl", extra)
    before = _snapshot(index_dir)
    # killed while writing the new segment, then right after its directory is complete (before live.json)
    for fault in ("add.window", "add.segment_ready"):
        _killed_at(fault, "add", str(corpus), "--index", str(index_dir), "--no-progress")
        assert _snapshot(index_dir) == before and verify_index(index_dir) == []
    commit = before[0]
    assert _uncommitted_segments(index_dir) == {f"{commit['generation'] + 1:06d}"}  # complete, never committed
    # a rerun commits everything (and removes what the killed runs left)
    from typer.testing import CliRunner

    from lsr.cli import app

    result = CliRunner().invoke(app, ["add", str(corpus), "--index", str(index_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert _uncommitted_segments(index_dir) == set()
    added = Engine.open(index_dir)
    assert added.index.num_docs == engine.index.num_docs + len(extra)
    after_add = _snapshot(index_dir)
    # killed during compaction (a merged window stored), then with the merged index complete before the exchange:
    # the staged merge is discarded, the last commit stays
    for fault in ("merge.window", "compact.before_exchange"):
        _killed_at(fault, "compact", "--index", str(index_dir), "--no-progress")
        assert _snapshot(index_dir) == after_add
        assert CliRunner().invoke(app, ["verify", "--index", str(index_dir)]).exit_code == 0
    result = CliRunner().invoke(app, ["compact", "--index", str(index_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    compacted = _snapshot(index_dir)
    assert compacted[0] is None and compacted[1:] == after_add[1:]


def test_deleting_the_best_documents_refetches(live, tmp_path, encoder):
    """When deleted documents fill a segment's first fetch (2k), it is asked again: results stay exact."""
    _, engine, _ = live
    index_dir = tmp_path / "index"
    shutil.copytree(engine.index_dir, index_dir)
    engine = Engine.open(index_dir, encoder=encoder)
    query = "compress files with gzip"
    before = {mode: engine.search(query, k=1000, mode=mode, retriever="sparse") for mode, _ in MODES}
    victims = [h.id for h in before["exact"][:25]]
    engine.delete_documents(victims)
    engine = engine.refresh()
    for mode, _ in MODES:
        want = [(h.id, h.score) for h in before[mode] if h.id not in victims][:10]
        assert [(h.id, h.score) for h in engine.search(query, k=10, mode=mode, retriever="sparse")] == want, mode
        batch = engine.search_batch([query, "regular expression matching"], k=10, mode=mode, retriever="sparse")[0]
        assert [h.id for h in batch] == [i for i, _ in want], mode


def test_added_segments_are_merged_beyond_the_limit(live, tmp_path, module_docs, encoder):
    """More than max_segments added segments are merged into one: same results, deleted documents dropped."""
    _, engine, _ = live
    index_dir = tmp_path / "index"
    shutil.copytree(engine.index_dir, index_dir)
    engine = Engine.open(index_dir, encoder=encoder)
    from lsr.live import add_documents

    extra = [dict(d, _id=f"copy-{d['_id']}") for d in module_docs[:6]]
    reports = [add_documents(index_dir, _docs([d]), encoder=encoder, max_segments=4) for d in extra[:4]]
    assert [r["merged_segments"] for r in reports] == [None, None, 5, None]  # the fixture's 2 + 3 adds > 4
    engine = engine.refresh()
    assert engine.info()["segments"] == 3 and engine.index.deleted.max() < engine.index.bases[1]
    engine.delete_documents([extra[0]["_id"]])
    report = add_documents(index_dir, _docs(extra[4:6]), encoder=encoder, max_segments=2)
    assert report["merged_segments"] == 3
    merged = engine.refresh()
    assert merged.info()["segments"] == 2 and len(merged.index.deleted) == len(engine.index.deleted)
    assert {"copy-" + d["_id"] for d in module_docs[1:6]} <= set(merged.docs.ids())
    assert extra[0]["_id"] not in merged.docs.ids() and verify_index(index_dir / merged.commit["segments"][0]["dir"]) == []
    for mode, params in MODES:
        got = [[hit for hit in hits if hit[0] not in ("copy-" + module_docs[4]["_id"], "copy-" + module_docs[5]["_id"],
                                                     extra[0]["_id"])] for hits in _results(merged, mode, params, k=50)]
        want = [[hit for hit in hits if hit[0] != extra[0]["_id"]] for hits in _results(engine, mode, params, k=50)]
        assert [g[:8] for g in got] == [w[:8] for w in want], mode


def test_cli_info_and_index_wide_additions_on_a_live_index(live, tmp_path):
    from typer.testing import CliRunner

    from lsr.cli import app

    _, engine, _ = live
    index_dir = tmp_path / "index"
    shutil.copytree(engine.index_dir, index_dir)
    result = CliRunner().invoke(app, ["info", "--index", str(index_dir)])
    assert result.exit_code == 0 and "3 segments, 11 deleted documents" in result.output, result.output
    result = CliRunner().invoke(app, ["index", "--index", str(index_dir), "--add-structures", "seismic"])
    assert result.exit_code == 2 and "run `lsr compact" in result.output, result.output
    assert CliRunner().invoke(app, ["compact", "--index", str(index_dir), "--no-progress"]).exit_code == 0
    result = CliRunner().invoke(app, ["index", "--index", str(index_dir), "--add-structures", "bmp"])
    assert result.exit_code == 0, result.output


def test_verify_names_a_corrupt_document_store_of_a_segment(live, tmp_path):
    from typer.testing import CliRunner

    from lsr.cli import app

    _, engine, _ = live
    index_dir = tmp_path / "index"
    shutil.copytree(engine.index_dir, index_dir)
    store = index_dir / read_commit(index_dir)["segments"][0]["dir"] / "docs.sqlite"
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", "--index", str(index_dir)])
    assert result.exit_code == 1 and f"{store}: sha256 mismatch" in result.output, result.output
