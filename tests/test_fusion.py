"""Fusion functions, dense retrieval and hybrid search through the Python API (real models, real index)."""

from __future__ import annotations

import inspect
import shutil

import numpy as np
import pytest

from lsr import Engine
from lsr.dense import DenseIndex
from lsr.engine import document_text
from lsr.explain import explain, query_token_ids, snippet
from lsr.fusion import (FusionConfig, agreement_weights, convex, fuse, normalize, pseudo_query_weights, rrf,
                        sample_pseudo_queries)

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
    fused = fuse({"sparse": sparse, "dense": dense}, config, k=4,
                 scorers={"sparse": lambda d: np.array([exact_sparse[int(x)] for x in d]),
                          "dense": lambda d: np.array([exact_dense[int(x)] for x in d])})
    expected = {d: 0.5 * exact_sparse[d] / 10.0 + 0.5 * (exact_dense[d] + 1) / 1.8 for d in exact_sparse}
    assert fused.docs.tolist() == sorted(expected, key=lambda d: -expected[d])
    assert fused.scores == pytest.approx([expected[d] for d in fused.docs.tolist()])
    assert fused.retriever_scores["sparse"].tolist() == [exact_sparse[d] for d in fused.docs.tolist()]
    # same numbers from the vectorised helper
    assert convex({"sparse": np.array([7.5]), "dense": np.array([0.8])}, {"sparse": 0.5, "dense": 0.5}, "tmm",
                  {"sparse": sparse[1], "dense": dense[1]}) == pytest.approx(expected[4])


def test_three_way_fusion_by_hand():
    lists = {"sparse": (np.array([1, 2]), np.array([8.0, 4.0])),
             "dense": (np.array([2, 3]), np.array([0.6, 0.2])),
             "bm25": (np.array([3, 1, 4]), np.array([12.0, 6.0, 3.0]))}
    exact = {"sparse": {1: 8.0, 2: 4.0, 3: 2.0, 4: 0.0}, "dense": {1: -0.4, 2: 0.6, 3: 0.2, 4: 0.0}}
    scorers = {name: (lambda d, e=e: np.array([e[int(x)] for x in d])) for name, e in exact.items()}
    config = FusionConfig(method="convex", normalization="tmm", weights={"sparse": 1, "dense": 2, "bm25": 1})
    fused = fuse(lists, config, k=4, scorers=scorers)
    # tmm: sparse / 8, (dense + 1) / 1.6, bm25 / 12 (bm25 has no scorer: doc 2 gets its worst retrieved, 3.0)
    bm25 = {1: 6.0, 2: 3.0, 3: 12.0, 4: 3.0}
    expected = {d: 0.25 * exact["sparse"][d] / 8 + 0.5 * (exact["dense"][d] + 1) / 1.6 + 0.25 * bm25[d] / 12
                for d in (1, 2, 3, 4)}
    assert fused.docs.tolist() == sorted(expected, key=lambda d: (-expected[d], d))
    assert fused.scores == pytest.approx([expected[d] for d in fused.docs.tolist()])
    assert fused.retriever_scores["bm25"].tolist() == [bm25[d] for d in fused.docs.tolist()]
    # RRF over the three rankings, weighted
    rrf_fused = fuse(lists, FusionConfig(method="rrf", weights={"sparse": 1, "dense": 1, "bm25": 2}), k=4)
    by_hand = {1: 1 / 61 + 2 / 62, 2: 1 / 62 + 1 / 61, 3: 1 / 62 + 2 / 61, 4: 2 / 63}
    assert dict(zip(rrf_fused.docs.tolist(), rrf_fused.scores.tolist())) == pytest.approx(by_hand)
    assert np.isnan(rrf_fused.retriever_scores["dense"][rrf_fused.docs.tolist().index(1)])  # dense did not return 1


def test_normalisation_statistics_come_from_the_top_depth_whatever_k():
    """Asking for more results (k > k') passes longer lists; a document's fused score must not change with them."""
    rng = np.random.default_rng(3)
    exact = {"sparse": rng.gamma(2.0, 3.0, 60), "dense": rng.uniform(-0.2, 0.8, 60), "bm25": rng.gamma(2.0, 4.0, 60)}
    scorers = {n: (lambda d, e=e: e[d]) for n, e in exact.items()}

    def top(name, n):
        order = np.argsort(-exact[name], kind="stable")[:n]
        return order.astype(np.int64), exact[name][order]

    for norm in ("tmm", "minmax", "zscore"):
        config = FusionConfig("convex", normalization=norm, depth=10)
        short = fuse({n: top(n, 10) for n in exact}, config, k=10, scorers=scorers)
        long = fuse({n: top(n, 40) for n in exact}, config, k=60, scorers=scorers)
        scores = dict(zip(long.docs.tolist(), long.scores.tolist()))
        assert short.scores == pytest.approx([scores[d] for d in short.docs.tolist()])
        # exact scores make a fused score a function of the document alone: same top-10 (none enters from deeper)
        assert short.docs.tolist() == long.docs.tolist()[:10]


def test_weights_resolution():
    assert FusionConfig().weights_for(["sparse", "dense", "bm25"]) == pytest.approx(
        {"sparse": 1 / 3, "dense": 1 / 3, "bm25": 1 / 3})
    assert FusionConfig(alpha=0.25).weights_for(["sparse", "dense"]) == {"sparse": 0.25, "dense": 0.75}
    assert FusionConfig(weights={"dense": 3, "bm25": 1}).weights_for(["dense", "bm25"]) == {"dense": 0.75, "bm25": 0.25}
    with pytest.raises(ValueError, match="give weights instead"):
        FusionConfig(alpha=0.5).weights_for(["sparse", "dense", "bm25"])
    with pytest.raises(ValueError, match="no weight for bm25"):
        FusionConfig(weights={"sparse": 1, "dense": 1}).weights_for(["sparse", "dense", "bm25"])
    for bad in ({"sparse": -1, "dense": 1}, {"sparse": 0, "dense": 0}):
        with pytest.raises(ValueError, match="weights"):
            FusionConfig(weights=bad)


def test_fuse_rrf_and_ties():
    sparse = (np.array([5, 2]), np.array([1.0, 1.0]))
    dense = (np.array([2, 5]), np.array([0.5, 0.5]))
    fused = fuse({"sparse": sparse, "dense": dense}, FusionConfig(method="rrf"), k=2)
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
        sparse = hybrid_engine.search(q, k=10, retriever="sparse")
        dense = hybrid_engine.search(q, k=10, retriever="dense")
        only_sparse = hybrid_engine.search(q, k=10, retriever="sparse+dense", fusion="convex", alpha=1.0)
        only_dense = hybrid_engine.search(q, k=10, retriever="dense+sparse", fusion="convex", alpha=0.0)
        assert [h.id for h in only_sparse] == [h.id for h in sparse]
        assert [h.id for h in only_dense] == [h.id for h in dense]
        # the per-retriever scores behind a fused score are exact, also for documents one side did not return
        for hit in hybrid_engine.search(q, k=10, retriever="sparse+dense"):
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
    assert rrf_hits[0].score <= len(hybrid_engine.resolve_retriever("hybrid")) / 61 + 1e-12  # rank 1 everywhere
    scores = [h.score for h in rrf_hits]
    assert scores == sorted(scores, reverse=True)


def test_filter_on_metadata(hybrid_engine):
    q = "random numbers"  # the top hits are from the random and secrets modules, not pickle
    assert not hybrid_engine.search(q, k=1, retriever="sparse")[0].id.startswith("module:pickle")
    hits = hybrid_engine.search(q, k=3, retriever="hybrid", filter={"module": "pickle"})
    assert hits and all(h.id.startswith("module:pickle#") for h in hits)
    either = hybrid_engine.search(q, k=50, retriever="sparse", filter={"module": ["json", "pickle"]})
    assert either and {h.id.split("#")[0] for h in either} <= {"module:json", "module:pickle"}
    unfiltered = [h.id for h in hybrid_engine.search(q, k=hybrid_engine.index.num_docs, retriever="sparse")]
    assert [h.id for h in either] == [i for i in unfiltered if i.split("#")[0] in ("module:json", "module:pickle")]
    assert hybrid_engine.search(q, k=3, retriever="sparse", filter={"module": "no-such-module"}) == []


def test_search_errors(hybrid_engine, engine):
    with pytest.raises(ValueError, match="unknown retriever"):
        hybrid_engine.search("x", retriever="colbert")
    with pytest.raises(ValueError, match="alpha"):
        hybrid_engine.search("x", retriever="sparse+dense", alpha=2.0)
    with pytest.raises(ValueError, match="no dense vectors"):
        engine.search("x", retriever="dense")
    for spec, message in (("sparse+colbert", "unknown retriever 'colbert'"), ("sparse+sparse", "twice"),
                          ("sparse+", "unknown retriever ''")):
        with pytest.raises(ValueError, match=message):
            hybrid_engine.search("x", retriever=spec)
    with pytest.raises(ValueError, match="needs text queries"):
        hybrid_engine.retrieve([hybrid_engine.query_vector("x")], retriever="sparse+dense")


def test_default_retriever_is_what_the_index_holds(hybrid_engine, engine):
    """auto: sparse+dense(+bm25) on an index with dense vectors, sparse(+bm25) without; vectors: sparse."""
    with_bm25 = ("bm25",) if hybrid_engine.available_retrievers()[-1] == "bm25" else ()
    assert hybrid_engine.resolve_retriever() == ("sparse", "dense", *with_bm25)
    assert engine.resolve_retriever() == ("sparse", *(("bm25",) if engine.available_retrievers()[-1] == "bm25" else ()))
    assert hybrid_engine.resolve_retriever("hybrid") == hybrid_engine.available_retrievers()
    assert hybrid_engine.resolve_retriever("auto", text=False) == ("sparse",)
    default = hybrid_engine.search(QUERIES[0], k=5)
    fused = hybrid_engine.search(QUERIES[0], k=5, retriever="+".join(hybrid_engine.resolve_retriever()))
    assert [h.id for h in default] == [h.id for h in fused]
    assert all(h.sparse_score is not None and h.dense_score is not None for h in default)
    assert engine.status()["default_retriever"] == "+".join(engine.resolve_retriever())


def test_explain_contributions_sum_to_score(hybrid_engine):
    q = "random numbers"
    vec = hybrid_engine.query_vector(q)
    own = query_token_ids(hybrid_engine, q)
    hit = hybrid_engine.search(q, k=1, retriever="sparse")[0]
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


# ---------------------------------------------------------------------- label-free weights
def test_pseudo_queries_are_deterministic_quotes():
    texts = ["The quick brown fox jumps over the lazy dog. It was not amused at all.",
             "short", "Sparse retrieval with learned term weights. Dense retrieval with embeddings of passages.",
             "One two three four five six seven eight nine ten eleven twelve."]
    pairs = sample_pseudo_queries(len(texts), texts.__getitem__, n=3, seed=7)
    assert pairs == sample_pseudo_queries(len(texts), texts.__getitem__, n=3, seed=7)
    assert len(pairs) == 3 and all(docno != 1 for docno, _ in pairs)  # "short" has too few words to quote
    for docno, query in pairs:
        assert 4 <= len(query.split()) <= 10 and query in texts[docno]


def test_pseudo_query_weights_by_hand():
    """Retriever a ranks each source document first, b ranks it third: weights on a win (MRR 1 vs 1/3)."""
    def ranked(first, *rest):
        docs = np.array([first, *rest])
        return docs, np.linspace(1.0, 0.5, len(docs))

    runs = {"a": [ranked(1, 2, 3), ranked(4, 5, 6)], "b": [ranked(2, 3, 1), ranked(5, 6, 4)]}
    weights = pseudo_query_weights(runs, [1, 4])
    assert weights["a"] > weights["b"] and sum(weights.values()) == pytest.approx(1.0)
    assert pseudo_query_weights(runs, [1, 4]) == weights
    # nothing to choose between: the point nearest equal weights
    assert pseudo_query_weights({"a": runs["a"], "b": runs["a"]}, [1, 4]) == {"a": 0.5, "b": 0.5}
    # agreement: c agrees with a and b, a and b only with c
    tops = {"a": [(np.array([1, 2]), np.ones(2))], "b": [(np.array([3, 4]), np.ones(2))],
            "c": [(np.array([1, 3]), np.ones(2))]}
    assert agreement_weights(tops, cutoff=2) == {"a": 0.25, "b": 0.25, "c": 0.5}


def test_label_free_weights_read_no_labels(hybrid_engine, tmp_path):
    """The weights come from the index alone: no parameter takes labels, and a copy of the index with no qrels
    anywhere near it gives the same weights."""
    for function in (pseudo_query_weights, agreement_weights, sample_pseudo_queries, hybrid_engine.label_free_weights):
        params = set(inspect.signature(function).parameters)
        assert not {p for p in params if any(word in p for word in ("qrel", "label", "relevan", "judg"))}
    weights = hybrid_engine.label_free_weights("sparse+dense", "pseudo", queries=30)
    assert set(weights) == {"sparse", "dense"} and sum(weights.values()) == pytest.approx(1.0)
    target = tmp_path / "copy"
    shutil.copytree(hybrid_engine.index_dir, target)
    copy = Engine.open(target, encoder=hybrid_engine.encoder)
    assert copy.label_free_weights("sparse+dense", "pseudo", queries=30) == weights
    agreement = copy.label_free_weights("sparse+dense", "agreement", queries=30)
    assert agreement == hybrid_engine.label_free_weights("sparse+dense", "agreement", queries=30)
    hits = copy.search(QUERIES[0], k=5, retriever="sparse+dense", weights="pseudo")
    expected = copy.search(QUERIES[0], k=5, retriever="sparse+dense",  # the weights of the default 200 queries
                           weights=copy.label_free_weights("sparse+dense", "pseudo"))
    assert [h.id for h in hits] == [h.id for h in expected]
    with pytest.raises(ValueError, match="unknown label-free weighting"):
        copy.label_free_weights("sparse+dense", "oracle")
