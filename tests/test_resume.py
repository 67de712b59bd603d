"""Crash safety and resume of `lsr index`: real `lsr index` subprocesses SIGKILLed at the build's commit steps, then
resumed.

The kills are deterministic: ``LSR_FAULT=POINT[:N]`` (:mod:`lsr.faults`) makes the build kill itself the N-th time it
reaches a fault point. Checked after every kill: the previous index at the target still opens, verifies and answers
as before. Checked at the end: the resumed build equals an uninterrupted one (same array sha256s, same ids and
scores). In-process tests interrupt builds (``KeyboardInterrupt``, as Ctrl-C) at the same points, resume vector files
and cover the errors (a second builder, other settings).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsr import Engine, SpladeEncoder
from lsr.cli import app
from lsr.docstore import DocStore
from lsr.faults import ENV as FAULT_ENV
from lsr.index.storage import WriterLockedError, verify_index, writer_lock
from lsr.pipeline import DOCSTORE_FILE, PROGRESS_FILE, ResumeError
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


def _start(cmd: list[str], fault: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1", FAULT_ENV: fault})


def _killed_at(fault: str, cmd: list[str]) -> str:
    """Run ``cmd`` with ``LSR_FAULT=fault``: it must die by SIGKILL there. Its stderr."""
    proc = _start(cmd, fault)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {fault} (exit {proc.returncode}): {stderr}"
    return stderr


def _stopped_at(fault: str, cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` with ``LSR_FAULT=fault:stop`` and wait until it holds still (SIGSTOP) at that point."""
    proc = _start(cmd, f"{fault}:stop")
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the build ended (status {status}) before {fault}"
    return proc


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
    old_files = _files(target)

    def previous_index_intact() -> None:
        assert _files(target) == old_files
        assert verify_index(target) == []
        result = runner.invoke(app, ["verify", "--index", str(target)])
        assert result.exit_code == 0 and "OK" in result.output
        assert _results(target, short_encoder) == old_results

    # 1. killed with the new index complete in the staging directory, just before it replaces the previous one
    _killed_at("build.before_exchange", _index_cmd(corpus, target))
    assert _progress(target) is None  # the checkpoint goes first: a complete build is not resumed
    previous_index_intact()

    # 2. killed right at the start: the first window's chunk written, nothing committed yet
    _killed_at("build.chunk_written", _index_cmd(corpus, target))
    assert _staging(target).is_dir() and _progress(target) is None
    previous_index_intact()

    # 3. resumed (nothing committed: starts from scratch), held after its first window while a second builder is
    # refused, then killed
    proc = _stopped_at("build.progress_written:1", _index_cmd(corpus, target, "--resume"))
    _second_builder_refused(corpus, target, proc.pid)
    proc.kill()
    _, stderr = proc.communicate(timeout=60)
    assert "nothing to resume" in stderr
    first = _progress(target)
    assert first["windows"] == 1 and first["num_docs"] == first["records"] == WINDOW
    previous_index_intact()

    # 4. resumed, killed once it has committed two more windows
    stderr = _killed_at("build.progress_written:2", _index_cmd(corpus, target, "--resume"))
    assert f"{WINDOW} documents (1 windows) were done" in stderr
    second = _progress(target)
    assert second["windows"] == 3 and second["num_docs"] == 3 * WINDOW
    previous_index_intact()

    # 5. resumed, killed between the document-store commit and the progress write of its first window: that
    # window's chunk and documents are on disk but not in the checkpoint (the resume drops them)
    _killed_at("build.store_committed", _index_cmd(corpus, target, "--resume"))
    assert _progress(target) == second
    chunks = _staging(target) / "_chunks"
    assert len(list(chunks.glob("*.npz"))) == len(second["chunks"]) + 1
    assert len(DocStore(_staging(target) / DOCSTORE_FILE, readonly=True)) == second["num_docs"] + WINDOW
    (chunks / "chunk_00099.npz.tmp").write_bytes(b"torn")
    previous_index_intact()

    # 6. resumed, killed after the last window: the index is written in the staging directory, the checkpoint
    # still there
    _killed_at("build.finalized", _index_cmd(corpus, target, "--resume"))
    assert _progress(target)["num_docs"] == DOCS
    previous_index_intact()

    # 7. resumed to the end: the same index as the uninterrupted build
    done = subprocess.run(_index_cmd(corpus, target, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"indexed {DOCS} documents" in done.stdout and "resuming" in done.stderr
    assert verify_index(target) == []
    assert _arrays(target) == want_arrays
    assert _results(target, short_encoder) == want_results
    assert Engine.open(target).docs.ids() == Engine.open(reference).docs.ids()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx")] == []  # no staging dir, lock released


def _second_builder_refused(corpus: Path, target: Path, pid: int) -> None:
    result = runner.invoke(app, ["index", str(corpus), "--index", str(target), "--no-dense", "--resume"])
    assert result.exit_code == 2, result.output
    assert f"is locked by pid {pid} (lsr index, since" in result.output, result.output


def _interrupt_at(monkeypatch, fault: str) -> None:
    """The next build raises KeyboardInterrupt (as Ctrl-C) at fault point ``fault`` (``NAME:N``)."""
    monkeypatch.setenv(FAULT_ENV, f"{fault}:interrupt")


def test_interrupted_between_store_commit_and_progress_write(corpus, short_encoder, in_process_reference, tmp_path,
                                                             monkeypatch, caplog):
    target = tmp_path / "idx"
    _interrupt_at(monkeypatch, "build.store_committed:3")
    caplog.set_level(logging.WARNING, "lsr.engine")
    with pytest.raises(KeyboardInterrupt):
        Engine.build(corpus, target, encoder=short_encoder, window=WINDOW, progress=False)
    monkeypatch.undo()
    assert f"interrupted: {2 * WINDOW} documents of {target} are committed; `lsr index ... --resume`" in caplog.text
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
    _interrupt_at(monkeypatch, "build.finalized:1")
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
    _interrupt_at(monkeypatch, "build.store_committed:4")
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
    _interrupt_at(monkeypatch, "build.store_committed:2")
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


def _files(index_dir: Path) -> dict[str, bytes]:
    """Every file under an index directory (the BM25 field is a subdirectory) by its relative path."""
    return {str(p.relative_to(index_dir)): p.read_bytes() for p in sorted(index_dir.rglob("*")) if p.is_file()}
