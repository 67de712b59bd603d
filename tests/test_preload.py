"""Opt-in preloading: the arrays pruned search reads at random are copied into (huge-page) memory at open."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lsr import Engine
from lsr.index import InvertedIndex
from lsr.index.structures import add_structure
from lsr.server.app import create_app

QUERIES = ("parse command line arguments", "send email over smtp", "json encoder and decoder")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, engine):
    """A private copy of the fixture index with both structures (one test overwrites a file of it)."""
    target = tmp_path_factory.mktemp("preload") / "index"
    shutil.copytree(engine.index_dir, target)
    add_structure(InvertedIndex.open(target), "seismic", n_postings=300)
    return target


def test_preloaded_index_answers_like_the_mapped_one_and_holds_copies(index_dir, encoder):
    mapped, loaded = InvertedIndex.open(index_dir), InvertedIndex.open(index_dir, preload=True)
    vectors = [encoder.encode_query(text) for text in QUERIES]
    for mode in ("exact", "bmp", "bmp-approx", "seismic"):
        for terms, weights in vectors:
            want, got = mapped.search(terms, weights, k=10, mode=mode), loaded.search(terms, weights, k=10, mode=mode)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    terms = np.array(loaded.array("forward_terms"))
    assert not loaded.array("forward_terms").flags.writeable
    path = index_dir / "forward_terms.npy"  # overwrite the data in place: a mapping sees it, a copy does not
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size - terms.nbytes)
        fh.write(bytes(terms.nbytes))
    try:
        assert not np.asarray(mapped.array("forward_terms")).any()
        np.testing.assert_array_equal(loaded.array("forward_terms"), terms)
    finally:
        with open(path, "r+b") as fh:
            fh.seek(path.stat().st_size - terms.nbytes)
            fh.write(terms.tobytes())


def test_engine_and_server_preload(index_dir, encoder):
    mapped = Engine.open(index_dir, encoder=encoder)
    preloaded = Engine.open(index_dir, preload=True, encoder=encoder)
    assert preloaded.preload and preloaded.reopen().preload and not mapped.preload
    for text in QUERIES:
        want = [h.id for h in mapped.search(text, k=5, retriever="sparse", mode="seismic")]
        assert [h.id for h in preloaded.search(text, k=5, retriever="sparse", mode="seismic")] == want
    with TestClient(create_app(index_dir, load="now", warmup=False, preload=True)) as client:
        assert client.app.state.lsr.engine.preload
        r = client.get("/search", params={"q": QUERIES[0], "k": 5, "retriever": "sparse", "mode": "bmp"})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["hits"]] == [h.id for h in mapped.search(QUERIES[0], k=5,
                                                                                    retriever="sparse", mode="bmp")]
