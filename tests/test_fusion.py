"""Fusion functions, dense retrieval and hybrid search through the Python API (real models, real index)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lsr import Engine
from lsr.dense import DenseIndex
from lsr.engine import document_text
from lsr.explain import explain, query_token_ids, snippet
from lsr.fusion import FusionConfig, convex, fuse, normalize, rrf

QUERIES = ["parse command line arguments", "compress files with gzip", "regular expression matching",
           "send email over the network", "random numbers"]


# ---------------------------------------------------------------------- pure functions
def test_normalizations():
    s = np.array([4.0, 2.0, 1.0])
    assert np.allclose(normalize(s, "minmax"), [1.0, 1 / 3, 0.0])
    assert np.allclose(normalize(s, "zscore"), (s - s.mean()) / s.std())
    # theoretical min-max: (s - inf) / (max - inf), inf = 0 for sparse, -1 for cosine
    assert np.allclose(normalize(s, "tmm", theoretical_min=0.0), [1.0, 0.5, 0.25])
    assert np.allclose(normalize(np.array([0.5, 0.0]), "tmm", theoretical_min=-1.0), [1.0, 1 / 1.5])
    # statistics come from the reference (retrieved) set; a filled-in score can fall outside [0, 1]
    assert np.allclose(normalize(np.array([0.0]), "minmax", reference=s), [-1 / 3])
    # degenerate lists do not divide by zero
    assert np.allclose(normalize(np.array([3.0, 3.0]), "minmax"), [1.0, 1.0])
    assert np.allclose(normalize(np.array([3.0, 3.0]), "zscore"), [0.0, 0.0])
    assert normalize(np.array([]), "tmm").size == 0
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize(s, "softmax")


def test_rrf_by_hand():
    docs, scores = rrf([np.array([7, 3, 5]), np.array([3, 9])], rrf_k=60)
    got = dict(zip(docs.tolist(), scores.tolist()))
    assert got == pytest.approx({7: 1 / 61, 3: 1 / 62 + 1 / 61, 5: 1 / 63, 9: 1 / 62})


def test_convex_and_fuse_with_exact_fill():
    sparse = (np.array([1, 2, 3]), np.array([10.0, 5.0, 2.5]))
    dense = (np.array([4, 1]), np.array([0.8, 0.6]))
    exact_sparse = {1: 10.0, 2: 5.0, 3: 2.5, 4: 7.5}
    exact_dense = {1: 0.6, 2: 0.1, 3: -0.2, 4: 0.8}
    config = FusionConfig(method="convex", alpha=0.5, normalization="tmm")
    fused = fuse(sparse, dense, config, k=4,
                 score_sparse=lambda d: np.array([exact_sparse[int(x)] for x in d]),
                 score_dense=lambda d: np.array([exact_dense[int(x)] for x in d]))
    expected = {d: 0.5 * exact_sparse[d] / 10.0 + 0.5 * (exact_dense[d] + 1) / 1.8 for d in exact_sparse}
    assert fused.docs.tolist() == sorted(expected, key=lambda d: -expected[d])
    assert fused.scores == pytest.approx([expected[d] for d in fused.docs.tolist()])
    assert fused.sparse.tolist() == [exact_sparse[d] for d in fused.docs.tolist()]
    # same numbers from the vectorised helper
    assert convex(np.array([7.5]), np.array([0.8]), 0.5, "tmm", sparse[1], dense[1]) == pytest.approx(expected[4])


def test_fuse_rrf_and_ties():
    sparse = (np.array([5, 2]), np.array([1.0, 1.0]))
    dense = (np.array([2, 5]), np.array([0.5, 0.5]))
    fused = fuse(sparse, dense, FusionConfig(method="rrf"), k=2)
    assert fused.docs.tolist() == [2, 5]  # equal RRF scores: lower doc number first
    assert fused.scores[0] == pytest.approx(fused.scores[1])


def test_fusion_config_validation():
    assert FusionConfig.make("rrf", alpha=None).method == "rrf"
    assert FusionConfig.make(None, alpha=0.3).alpha == 0.3
    for bad in ({"method": "max"}, {"alpha": 1.5}, {"normalization": "l2"}, {"depth": 0}, {"rrf_k": -1}):
        with pytest.raises(ValueError):
            FusionConfig(**bad)


def test_snippet_picks_matching_window_and_spans():
    text = " ".join(["filler"] * 100) + " gzip compression of files " + " ".join(["more"] * 100)
    out, spans = snippet(text, {"gzip": 2.0, "compress": 1.0, "##ion": 5.0}, width=10, expansion={"compress"})
    assert out.startswith("… ") and out.endswith(" …")
    marked = {out[s["start"]:s["end"]]: s["expansion"] for s in spans}
    assert marked == {"gzip": False, "compression": True}  # prefix match; word pieces ignored


# ---------------------------------------------------------------------- dense retrieval on a real index
def test_dense_store_and_exact_search(hybrid_engine, module_docs):
    dense = hybrid_engine.dense
    assert isinstance(dense, DenseIndex) and not dense.uses_hnsw
    info = hybrid_engine.manifest["dense"]
    assert info["model"]["name"] == "all-MiniLM-L6-v2" and info["dim"] == 384 and info["dtype"] == "float16"
    entry = hybrid_engine.manifest["arrays"]["dense_vectors"]
    assert entry["shape"] == [hybrid_engine.index.num_docs, 384] and len(entry["sha256"]) == 64
    # stored vectors are the model's embeddings of the document text, in doc-number order
    docno = hybrid_engine.docs.docno(module_docs[0]["_id"])
    text = document_text(hybrid_engine.document(module_docs[0]["_id"]))
    direct = hybrid_engine.dense_encoder.encode_documents([text])[0]
    assert np.allclose(dense.vector(docno), direct, atol=2e-3)
    # dense search = brute-force inner product, best first, ties by doc number
    hits = hybrid_engine.search(QUERIES[0], k=5, retriever="dense")
    q = hybrid_engine.dense_query_encoder().encode_query(QUERIES[0])  # what the engine encodes with
    brute = np.asarray(dense.vectors, np.float32) @ q
    expected = np.lexsort((np.arange(len(brute)), -brute))[:5]
    assert [h.docno for h in hits] == expected.tolist()
    assert [h.score for h in hits] == pytest.approx(brute[expected].tolist(), abs=1e-5)
    assert hits[0].id.startswith("module:argparse")


def test_hybrid_extremes_match_single_retrievers(hybrid_engine):
    for q in QUERIES:
        sparse = hybrid_engine.search(q, k=10)
        dense = hybrid_engine.search(q, k=10, retriever="dense")
        only_sparse = hybrid_engine.search(q, k=10, retriever="hybrid", fusion="convex", alpha=1.0)
        only_dense = hybrid_engine.search(q, k=10, retriever="hybrid", fusion="convex", alpha=0.0)
        assert [h.id for h in only_sparse] == [h.id for h in sparse]
        assert [h.id for h in only_dense] == [h.id for h in dense]
        # the per-retriever scores behind a fused score are exact, also for documents one side did not return
        for hit in hybrid_engine.search(q, k=10, retriever="hybrid"):
            assert hit.sparse_score is not None and hit.dense_score is not None
            vec = hybrid_engine.query_vector(q)
            assert hit.sparse_score == pytest.approx(hybrid_engine.index.score_docs(vec, np.array([hit.docno]))[0])


def test_sparse_scores_match_index(hybrid_engine):
    vec = hybrid_engine.query_vector(QUERIES[1])
    hits = hybrid_engine.search(vec, k=10)
    got = hybrid_engine.index.score_docs(vec, np.array([h.docno for h in hits]))
    assert got == pytest.approx([h.score for h in hits], rel=1e-6)


def test_hybrid_defaults_batch_and_rrf(hybrid_engine):
    single = [hybrid_engine.search(q, k=5, retriever="hybrid") for q in QUERIES]
    batch = hybrid_engine.search_batch(QUERIES, k=5, retriever="hybrid")
    assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in single]
    rrf_hits = hybrid_engine.search(QUERIES[0], k=5, retriever="hybrid", fusion="rrf")
    assert rrf_hits[0].score <= 2 / 61 + 1e-12
    scores = [h.score for h in rrf_hits]
    assert scores == sorted(scores, reverse=True)


def test_filter_on_metadata(hybrid_engine):
    q = "random numbers"  # the top hits are from the random and secrets modules, not pickle
    assert not hybrid_engine.search(q, k=1)[0].id.startswith("module:pickle")
    hits = hybrid_engine.search(q, k=3, retriever="hybrid", filter={"module": "pickle"})
    assert hits and all(h.id.startswith("module:pickle#") for h in hits)
    either = hybrid_engine.search(q, k=50, filter={"module": ["json", "pickle"]})
    assert either and {h.id.split("#")[0] for h in either} <= {"module:json", "module:pickle"}
    unfiltered = [h.id for h in hybrid_engine.search(q, k=hybrid_engine.index.num_docs)]
    assert [h.id for h in either] == [i for i in unfiltered if i.split("#")[0] in ("module:json", "module:pickle")]
    assert hybrid_engine.search(q, k=3, filter={"module": "no-such-module"}) == []


def test_search_errors(hybrid_engine, engine):
    with pytest.raises(ValueError, match="unknown retriever"):
        hybrid_engine.search("x", retriever="colbert")
    with pytest.raises(ValueError, match="alpha"):
        hybrid_engine.search("x", retriever="hybrid", alpha=2.0)
    with pytest.raises(ValueError, match="no dense vectors"):
        engine.search("x", retriever="dense")


def test_explain_contributions_sum_to_score(hybrid_engine):
    q = "random numbers"
    vec = hybrid_engine.query_vector(q)
    own = query_token_ids(hybrid_engine, q)
    hit = hybrid_engine.search(q, k=1)[0]
    terms = explain(hybrid_engine, vec, hit.docno, own_tokens=own, top=None)
    assert sum(t.contribution for t in terms) == pytest.approx(hit.score, rel=0.02)
    contributions = [t.contribution for t in terms]
    assert contributions == sorted(contributions, reverse=True)
    tokens = {t.term: t.expansion for t in terms}
    assert tokens.get("random") is False  # the query's own word
    assert any(tokens.values())  # SPLADE adds expansion terms that also match


def test_hnsw_above_threshold(hybrid_engine, tmp_path):
    target = tmp_path / "index"
    shutil.copytree(hybrid_engine.index_dir, target)
    engine = Engine.open(target, encoder=hybrid_engine.encoder).add_dense(hnsw_threshold=10, progress=False)
    assert engine.dense.uses_hnsw and engine.manifest["dense"]["hnsw"]["sha256"]
    assert DenseIndex.open(target, engine.manifest, verify=True).uses_hnsw
    queries = engine.dense_query_vectors(QUERIES)
    approx = engine.dense.search_batch(queries, k=10)
    exact = engine.dense.search_batch(queries, k=10, exact=True)
    recall = np.mean([len(set(a[0]) & set(e[0])) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    hits = engine.retrieve(QUERIES, k=5, retriever="hybrid")
    assert all(len(h) == 5 for h in hits)


def test_dense_vectors_follow_reordering(hybrid_engine, tmp_path):
    pytest.importorskip("lsr.index.reorder")
    target = tmp_path / "index"
    shutil.copytree(hybrid_engine.index_dir, target)
    before = Engine.open(target)
    doc_id = before.docs.ids()[5]
    vector = before.dense.vector(before.docs.docno(doc_id))
    expected = [h.id for h in before.search(QUERIES[0], k=5, retriever="dense")]
    try:
        after = before.add_structures([], reorder="bp")
    except (ValueError, NotImplementedError) as err:  # reordering not available in this build
        pytest.skip(f"reordering unavailable: {err}")
    assert np.array_equal(after.dense.vector(after.docs.docno(doc_id)), vector)
    assert [h.id for h in after.search(QUERIES[0], k=5, retriever="dense")] == expected


def test_snippet_window_is_the_best_one():
    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "gamma", "delta", "noise", "other", "thing"]
    weights = {"alpha": 3.0, "beta": 1.0, "gamma": 0.5, "delta": 2.0}
    for _ in range(50):
        words = list(rng.choice(vocab, size=int(rng.integers(5, 60))))
        out, spans = snippet(" ".join(words), weights, width=8)
        inner = out.removeprefix("… ").removesuffix(" …").split()
        best = max(sum(weights[t] for t in set(words[i:i + 8]) if t in weights)
                   for i in range(max(1, len(words) - 7)))
        assert sum(weights[t] for t in set(inner) if t in weights) == pytest.approx(best)
        assert len(spans) == sum(w in weights for w in inner)


def test_cli_add_dense_and_info(engine, tmp_path):
    from typer.testing import CliRunner

    from lsr.cli import app

    target = tmp_path / "index"
    shutil.copytree(engine.index_dir, target)
    runner = CliRunner()
    result = runner.invoke(app, ["index", "--add-dense", "--index", str(target)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", "--index", str(target)]).output
    assert "all-MiniLM-L6-v2 (384-d float16, exact search)" in info
    assert Engine.open(target).search("random numbers", k=3, retriever="hybrid")
    bad = runner.invoke(app, ["index", str(tmp_path), "--add-dense", "--index", str(target)])
    assert bad.exit_code == 2 and "give no CORPUS" in bad.output
    missing = runner.invoke(app, ["serve", "--index", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no index" in missing.output
