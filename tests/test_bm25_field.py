"""The native BM25 field on real on-disk indexes: scores against a plain reference BM25, search modes, adding it
to an old index, live segments, CLI and HTTP."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lsr import Engine
from lsr.bm25_field import LUCENE_STOPWORDS, WordAnalyzer, field_dir, lucene_length
from lsr.cli import app
from lsr.corpus import Document
from lsr.server.app import create_app

from .conftest import write_jsonl

K1, B = 0.9, 0.4
DOCS = [
    ("d1", "Gardening", "Tomatoes need sun and water; water them daily in the summer."),
    ("d2", "Cooking", "A tomato sauce simmers slowly with garlic, basil and olive oil."),
    ("d3", "Astronomy", "The telescope's mirror gathers faint light from distant galaxies."),
    ("d4", "", "Galaxies collide: stars rarely touch, but gas clouds compress and form new stars."),
    ("d5", "Travel", "Trains across the Alps; the mountain railway climbs through tunnels and over bridges."),
    ("d6", "Gardening", "Basil grows well beside tomatoes, and both like warm soil, sun and regular water."),
    ("d7", "Physics", "Light bends near galaxies: gravitational lensing magnifies distant light sources."),
    ("d8", "Railways", "The railway museum shows steam trains, old tunnels and a working model railway."),
]
QUERIES = ["tomato sauce with basil", "distant galaxies light", "railway tunnels trains", "water the tomatoes sun",
           "stars and gas", "nothing matches zzzz"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25corpus")
    write_jsonl(root / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in DOCS])
    return root


@pytest.fixture(scope="module")
def bm25_engine(tmp_path_factory, tiny_corpus, encoder) -> Engine:
    """The tiny corpus with the BM25 field (built by default) and BMP blocks for both fields."""
    return Engine.build(tiny_corpus, tmp_path_factory.mktemp("bm25idx") / "index", encoder=encoder, progress=False,
                        structures=["bmp"], dense=False)


def reference_bm25(query: str) -> dict[str, float]:
    """BM25 written out plainly (Lucene's idf, query term counts, length after stopword removal)."""
    analyzer = WordAnalyzer()
    docs = {i: Counter(analyzer.tokens(f"{t} {x}".strip())) for i, t, x in DOCS}
    lengths = {i: sum(c.values()) for i, c in docs.items()}
    avgdl = sum(lengths.values()) / len(docs)
    scores = {}
    for doc_id, counts in docs.items():
        score = 0.0
        for term, qtf in Counter(analyzer.tokens(query)).items():
            df = sum(term in c for c in docs.values())
            tf = counts.get(term, 0)
            if tf:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                score += qtf * idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths[doc_id] / avgdl))
        if score > 0:
            scores[doc_id] = score
    return scores


def test_word_analyzer_follows_lucene_english():
    tokens = WordAnalyzer().tokens("The Runner's shoes don't fit: U.S. sizes 3.14, e-mail THEM to the runners")
    # possessive dropped, "don't" / "u.s" / "3.14" whole ("u.s" Porter-stems to "u."), hyphen splits, "the"/"to" stopped
    assert tokens == ["runner", "shoe", "don't", "fit", "u.", "size", "3.14", "e", "mail", "them", "runner"]
    assert not set(tokens) & LUCENE_STOPWORDS


def test_lucene_length_rounding():
    # SmallFloat.byte4ToInt(SmallFloat.intToByte4(n)) in Lucene: exact below 24, then 4 significant bits of n - 24
    assert lucene_length(np.array([0, 1, 23, 24, 25, 39, 40, 41, 100, 1000])).tolist() == \
        [0, 1, 23, 24, 25, 39, 40, 40, 96, 984]


def test_scores_and_ranking_match_reference_bm25(bm25_engine):
    assert bm25_engine.has_bm25
    field = bm25_engine.parts.bm25
    for query in QUERIES:
        expected = reference_bm25(query)
        hits = bm25_engine.search(query, k=len(DOCS), retriever="bm25")
        assert {h.id for h in hits} == set(expected), query
        # quantization: half an impact step per matching term, times that term's query weight
        step = (K1 + 1) / 255
        tolerance = 0.5 * step * float(field.query_vector(query)[1].sum()) * 1.01 + 1e-4
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.id], abs=tolerance)
        for better, worse in zip(hits, hits[1:]):
            assert expected[better.id] >= expected[worse.id] - 2 * tolerance
        assert [h.id for h in hits] == sorted(expected, key=lambda d: (-expected[d], d))


def test_bm25_candidates_and_modes(bm25_engine):
    exact = bm25_engine.bm25_candidates(QUERIES, 5, "exact")
    assert exact[-1] == [] and all(isinstance(d, int) and isinstance(s, float) for d, s in exact[0])
    assert bm25_engine.bm25_candidates(QUERIES, 5, "bmp") == exact  # safe BMP on the field's own blocks
    assert json.loads((field_dir(bm25_engine.index_dir) / "manifest.json").read_text())["structures"]["bmp"]
    hits = bm25_engine.search(QUERIES[0], k=5, retriever="bm25", mode="bmp")
    assert [h.docno for h in hits] == [d for d, _ in exact[0]]
    with pytest.raises(ValueError, match="text queries"):
        bm25_engine.retrieve([{"tomato": 1.0}], 5, retriever="bm25")


def test_add_bm25_to_an_index_without_it(tmp_path, tiny_corpus, encoder, bm25_engine):
    old = Engine.build(tiny_corpus, tmp_path / "old", encoder=encoder, progress=False, dense=False, bm25=False)
    assert not old.has_bm25 and not field_dir(old.index_dir).exists()
    with pytest.raises(ValueError, match="--add-bm25"):
        old.search("galaxies", retriever="bm25")
    runner = CliRunner()
    bad = runner.invoke(app, ["search", "galaxies", "--index", str(old.index_dir), "--retriever", "bm25"])
    assert bad.exit_code == 2 and "has no BM25 field" in bad.output
    result = runner.invoke(app, ["index", "--add-bm25", "--index", str(old.index_dir)])
    assert result.exit_code == 0, result.output
    added = Engine.open(old.index_dir)
    assert added.manifest["bm25"]["analyzer"] == "word"
    assert added.bm25_candidates(QUERIES, 8) == bm25_engine.bm25_candidates(QUERIES, 8)
    out = runner.invoke(app, ["search", "railway tunnels", "--index", str(old.index_dir), "--retriever", "bm25",
                              "--json"])
    assert out.exit_code == 0, out.output
    assert [h["id"] for h in json.loads(out.output)["hits"]][:2] == ["d8", "d5"]
    assert runner.invoke(app, ["verify", "--index", str(old.index_dir)]).exit_code == 0
    vocab = field_dir(old.index_dir) / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra\n")
    broken = runner.invoke(app, ["verify", "--index", str(old.index_dir)])
    assert broken.exit_code == 1 and "vocab.txt: missing, or sha256 mismatch" in broken.output
    again = runner.invoke(app, ["index", "--add-bm25", "--index", str(old.index_dir), "--bm25-analyzer", "model"])
    assert again.exit_code == 0, again.output
    assert Engine.open(old.index_dir).search("railway tunnels", retriever="bm25")[0].id == "d8"
    bad = runner.invoke(app, ["index", "--add-bm25", "--index", str(old.index_dir), "--bm25-analyzer", "snowball"])
    assert bad.exit_code == 2 and "unknown BM25 analyzer 'snowball'" in bad.output


def test_live_segments_carry_the_field(tmp_path, bm25_engine):
    target = tmp_path / "live"
    shutil.copytree(bm25_engine.index_dir, target)
    engine = Engine.open(target, encoder=bm25_engine.encoder)
    avgdl = engine.parts.bm25.avgdl
    engine.add_documents([Document("n1", "Zeppelins drift over railway tunnels near the Alps.", "Airships")])
    engine = engine.refresh()
    assert engine.parts.bm25.avgdl == avgdl  # frozen: a new segment's weights use the base's avgdl
    hits = engine.search("zeppelins", retriever="bm25")  # a word the base vocabulary did not have
    assert [h.id for h in hits] == ["n1"]
    assert engine.parts.bm25.idf[engine.parts.bm25.query_vector("railway")[0]][0] == pytest.approx(
        math.log(1 + (9 - 3 + 0.5) / (3 + 0.5)), rel=1e-6)  # df over both segments
    engine.delete_documents(["d8"])
    engine = engine.refresh()
    assert "d8" not in [h.id for h in engine.search("railway tunnels", retriever="bm25", k=9)]
    from lsr.live import compact

    compact(target, progress=False)
    compacted = Engine.open(target)
    assert compacted.has_bm25 and [h.id for h in compacted.search("zeppelins", retriever="bm25")] == ["n1"]


def test_http_retriever_bm25(bm25_engine, tmp_path, tiny_corpus, encoder):
    with TestClient(create_app(bm25_engine.index_dir, load="now")) as client:
        r = client.get("/search", params={"q": "distant galaxies light", "retriever": "bm25", "k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = bm25_engine.search("distant galaxies light", k=3, retriever="bm25")
        assert body["retriever"] == "bm25" and [h["id"] for h in body["hits"]] == [h.id for h in expected]
        r = client.post("/search/batch", json={"queries": ["railway tunnels"], "retriever": "bm25", "k": 2})
        assert r.status_code == 200 and [h["id"] for h in r.json()["results"][0]["hits"]] == ["d8", "d5"]
    old = Engine.build(tiny_corpus, tmp_path / "old", encoder=encoder, progress=False, dense=False, bm25=False)
    with TestClient(create_app(old.index_dir, load="now")) as client:
        r = client.get("/search", params={"q": "galaxies", "retriever": "bm25"})
        assert r.status_code == 422 and "--add-bm25" in r.json()["detail"]
