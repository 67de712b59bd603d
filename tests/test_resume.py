"""Crash safety and resume of `lsr index`: real `lsr index` subprocesses SIGKILLed at several points, then resumed.

Checked after every kill: the previous index at the target still opens, verifies and answers as before. Checked at
the end: the resumed build equals an uninterrupted one (same array sha256s, same ids and scores). In-process tests
cover the steps a timed kill cannot aim at (between the document-store commit and the progress write, after the
last window) and the errors (a second builder, other settings).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lsr.engine as engine_module
from lsr.index.storage import WriterLockedError, verify_index, writer_lock
from lsr import Engine, SpladeEncoder
from lsr.cli import app
from lsr.engine import PROGRESS_FILE, ResumeError
from lsr.sample import sample_documents
from tests.conftest import write_jsonl

DOCS, WINDOW, MAX_LENGTH = 100, 12, 24
BUILD_ARGS = ["--window", str(WINDOW), "--max-length", str(MAX_LENGTH), "--no-dense", "--threads", "1"]
QUERIES = ["parse command line arguments", "compress files", "regular expressions", "read and write files",
           "date and time", "network sockets", "random numbers", "unit tests"]
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Encode in this process as the subprocesses do (--threads 1), so their vectors are bit-identical."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    docs = itertools.islice(sample_documents(), DOCS)
    return write_jsonl(tmp_path_factory.mktemp("resume") / "corpus.jsonl",
                       [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs])


@pytest.fixture(scope="module")
def short_encoder() -> SpladeEncoder:
    """The embedded model with the short documents the subprocesses use (--max-length)."""
    return SpladeEncoder(doc_max_length=MAX_LENGTH)


def _index_cmd(corpus: Path, target: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lsr.cli", "index", str(corpus), "--index", str(target), *BUILD_ARGS, *extra]


def _staging(target: Path) -> Path:
    return target.parent / f".{target.name}.building"


def _progress(target: Path) -> dict | None:
    try:
        return json.loads((_staging(target) / PROGRESS_FILE).read_text())
    except FileNotFoundError:
        return None


def _results(index_dir: Path, encoder: SpladeEncoder) -> list[list[tuple[str, float]]]:
    engine = Engine.open(index_dir, encoder=encoder)
    return [[(h.id, h.score) for h in hits] for hits in engine.search_batch(QUERIES, k=10)]


def _arrays(index_dir: Path) -> dict:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    return {name: entry["sha256"] for name, entry in manifest["arrays"].items()}


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it ended by itself first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the build ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the build was not killed {what}"


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})


@pytest.fixture(scope="module")
def in_process_reference(corpus, short_encoder, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("ref") / "idx"
    Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False)
    return target


def test_killed_builds_keep_the_previous_index_and_resume_to_the_same_index(corpus, short_encoder,
                                                                           in_process_reference, tmp_path):
    # the uninterrupted build (in this process, one thread: bit-identical to `lsr index ... --threads 1`)
    reference = in_process_reference
    want_arrays, want_results = _arrays(reference), _results(reference, short_encoder)

    # the previous index at the target: another corpus, so its answers differ from the new one's
    target = tmp_path / "idx"
    old_corpus = write_jsonl(tmp_path / "old.jsonl", [{"id": f"old-{i}", "text": t} for i, t in enumerate(
        ["parsing arguments from the command line", "gzip compression of files", "pattern matching with regexes"])])
    Engine.build(old_corpus, target, encoder=short_encoder, progress=False)
    old_results = _results(target, short_encoder)
    old_files = {p.name: p.read_bytes() for p in target.iterdir()}

    def previous_index_intact() -> None:
        assert {p.name: p.read_bytes() for p in target.iterdir()} == old_files
        assert verify_index(target) == []
        result = runner.invoke(app, ["verify", "--index", str(target)])
        assert result.exit_code == 0 and "OK" in result.output
        assert _results(target, short_encoder) == old_results

    # 1. killed right at the start: staging directory made, no window committed yet
    proc = _start(_index_cmd(corpus, target))
    _kill_when(proc, lambda: _staging(target).is_dir() and _progress(target) is None, "the first commit")
    previous_index_intact()

    # 2. resumed (nothing committed: starts from scratch), a second builder is refused, killed after >= 1 window
    proc = _start(_index_cmd(corpus, target, "--resume"))
    _kill_when(proc, lambda: (_progress(target) or {}).get("windows", 0) >= 1 and _second_builder_refused(
        corpus, target, proc.pid), "the first window")
    assert "nothing to resume" in proc.stderr.read()
    first = _progress(target)
    assert first["num_docs"] == first["records"] == first["windows"] * WINDOW and first["num_docs"] < DOCS
    previous_index_intact()

    # 3. resumed, killed again once it has committed at least one more window
    proc = _start(_index_cmd(corpus, target, "--resume"))
    _kill_when(proc, lambda: (_progress(target) or {}).get("windows", 0) >= first["windows"] + 1,
               "a window more")
    assert f"{first['num_docs']} documents" in proc.stderr.read()  # "resuming ...: N documents were done"
    second = _progress(target)
    assert second["windows"] > first["windows"] and second["num_docs"] < DOCS
    previous_index_intact()

    # 4. resumed to the end: the same index as the uninterrupted build
    done = subprocess.run(_index_cmd(corpus, target, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"indexed {DOCS} documents" in done.stdout and "resuming" in done.stderr
    assert verify_index(target) == []
    assert _arrays(target) == want_arrays
    assert _results(target, short_encoder) == want_results
    assert Engine.open(target).docs.ids() == Engine.open(reference).docs.ids()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []  # no staging dir, lock released


def _second_builder_refused(corpus: Path, target: Path, pid: int) -> bool:
    result = runner.invoke(app, ["index", str(corpus), "--index", str(target), "--no-dense", "--resume"])
    assert result.exit_code == 2, result.output
    assert f"is locked by pid {pid} (lsr index, since" in result.output, result.output
    return True


def _interrupt_at_progress_write(monkeypatch, n: int) -> None:
    """KeyboardInterrupt instead of the n-th progress.json write: that window's chunk and documents are on disk
    but not in the checkpoint (as after a kill between the document-store commit and the progress write)."""
    calls = {"n": 0}
    real = engine_module.write_json_atomic

    def write(path, data):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(engine_module, "write_json_atomic", write)


def test_kill_between_store_commit_and_progress_write(corpus, short_encoder, in_process_reference, tmp_path,
                                                      monkeypatch, caplog):
    target = tmp_path / "idx"
    _interrupt_at_progress_write(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False)
    monkeypatch.undo()
    assert not target.exists() and _progress(target)["num_docs"] == 2 * WINDOW
    chunks = _staging(target) / "_chunks"
    assert len(list(chunks.glob("*.npz"))) == 3  # one more than the checkpoint lists
    (chunks / "chunk_00007.npz.tmp").write_bytes(b"torn")
    caplog.set_level(logging.WARNING, "lsr.engine")
    engine = Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False, resume=True)
    assert "resuming the interrupted build" in caplog.text
    assert engine.index.num_docs == DOCS and verify_index(target) == []
    assert _arrays(target) == _arrays(in_process_reference)
    assert _results(target, short_encoder) == _results(in_process_reference, short_encoder)
    assert engine.docs.ids() == Engine.open(in_process_reference).docs.ids()


def test_interrupted_after_the_last_window(corpus, short_encoder, in_process_reference, tmp_path, monkeypatch):
    target = tmp_path / "idx"

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_module, "_add_inference_free_in", fail)
    with pytest.raises(KeyboardInterrupt):
        Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False)
    monkeypatch.undo()
    assert _progress(target)["num_docs"] == DOCS and not target.exists()
    Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False, resume=True)
    assert _arrays(target) == _arrays(in_process_reference)
    assert _results(target, short_encoder) == _results(in_process_reference, short_encoder)


def test_vector_file_resume(in_process_reference, short_encoder, tmp_path, monkeypatch):
    vectors = tmp_path / "vectors.jsonl"
    Engine.open(in_process_reference, encoder=short_encoder).export_vectors(vectors)
    reference = Engine.build(vectors, tmp_path / "ref", encoder=short_encoder, window=WINDOW, progress=False)
    target = tmp_path / "idx"
    _interrupt_at_progress_write(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        Engine.build(vectors, target, encoder=short_encoder, window=WINDOW, progress=False)
    monkeypatch.undo()
    assert _progress(target)["num_docs"] == 3 * WINDOW
    engine = Engine.build(vectors, target, encoder=short_encoder, window=WINDOW, progress=False, resume=True)
    assert _arrays(target) == _arrays(reference.index_dir)
    assert engine.docs.ids() == reference.docs.ids()


def test_resume_errors_and_warnings(corpus, short_encoder, tmp_path, monkeypatch, caplog):
    lines = corpus.read_text().splitlines(keepends=True)
    corpus = tmp_path / "small.jsonl"  # three windows are enough here
    corpus.write_text("".join(lines[:3 * WINDOW]))
    target = tmp_path / "idx"
    caplog.set_level(logging.WARNING, "lsr.engine")
    Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False, resume=True)
    assert "nothing to resume" in caplog.text
    _interrupt_at_progress_write(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False)
    monkeypatch.undo()
    with pytest.raises(ResumeError, match=rf"window was {WINDOW}, now {WINDOW + 10}"):
        Engine.build(corpus, target, encoder=short_encoder, window=WINDOW + 10, progress=False, resume=True)
    result = runner.invoke(app, ["index", str(corpus), "--index", str(target), "--no-dense", "--window", str(WINDOW),
                                 "--resume"])  # default --max-length 256: another setting than the checkpoint's
    assert result.exit_code == 2 and f"doc_max_length was {MAX_LENGTH}, now 256" in result.output
    with writer_lock(target, "test"):
        with pytest.raises(WriterLockedError, match=rf"locked by pid {os.getpid()} \(test"):
            Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False, resume=True)
    assert _progress(target)["num_docs"] == WINDOW  # the refused attempts left the checkpoint alone
    caplog.clear()
    Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False)
    assert f"found an interrupted build of {target} ({WINDOW} documents done); starting over" in caplog.text
    assert not _staging(target).exists()
