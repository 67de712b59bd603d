"""Shared fixtures: a small real corpus (Python stdlib module docs) indexed once with the real default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsr import Engine, SpladeEncoder
from lsr.sample import sample_documents


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def module_docs() -> list[dict]:
    """~100 real passages: the docstrings of well-known stdlib modules."""
    return [d for d in sample_documents() if d["_id"].startswith("module:")]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, module_docs) -> Path:
    """A BEIR-layout corpus directory with the module passages and an empty document."""
    root = tmp_path_factory.mktemp("corpus")
    records = module_docs + [{"_id": "empty-doc", "title": "", "text": "", "metadata": {}}]
    write_jsonl(root / "corpus.jsonl", records)
    write_jsonl(root / "queries.jsonl", [
        {"_id": "q1", "text": "parse command line arguments"},
        {"_id": "q2", "text": "compress files with gzip"},
        {"_id": "q3", "text": "regular expression matching"},
    ])
    return root


@pytest.fixture(scope="session")
def encoder() -> SpladeEncoder:
    """The embedded default SPLADE model."""
    return SpladeEncoder()


@pytest.fixture(scope="session")
def engine(tmp_path_factory, corpus_dir, encoder) -> Engine:
    """The fixture corpus indexed on disk."""
    return Engine.build(corpus_dir, tmp_path_factory.mktemp("idx") / "index", encoder=encoder, progress=False)


@pytest.fixture(scope="session")
def hybrid_engine(tmp_path_factory, engine) -> Engine:
    """A copy of the fixture index with dense vectors (embedded all-MiniLM-L6-v2) added: exact dense search."""
    import shutil

    target = tmp_path_factory.mktemp("hybrid") / "index"
    shutil.copytree(engine.index_dir, target)
    return Engine.open(target, encoder=engine.encoder).add_dense(progress=False)
