"""The synthetic collection generator of the benchmarks (eval/synthetic.py): shapes and determinism."""

import numpy as np
import pytest

from lsr.eval.synthetic import SHAPES, VOCAB, generate, shape_stats

N_DOCS, N_QUERIES = 4000, 200
QUERY_TERMS = {"project": (35, 42), "msmarco": (40, 48), "long-query": (85, 105)}


@pytest.fixture(scope="module")
def collections():
    return {shape: generate(shape, N_DOCS, N_QUERIES, seed=1) for shape in SHAPES}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_statistics(collections, shape):
    indptr, terms, weights, queries = collections[shape]
    assert indptr.dtype == np.int64 and terms.dtype == np.uint32 and weights.dtype == np.float32
    assert indptr[0] == 0 and indptr[-1] == terms.size == weights.size and len(indptr) == N_DOCS + 1
    stats = shape_stats(indptr, terms, queries)
    assert 110 <= stats["doc_terms"]["mean"] <= 130
    low, high = QUERY_TERMS[shape]
    assert low <= stats["query_terms"]["mean"] <= high
    assert terms.max() < VOCAB and (weights > 0).all() and weights.max() <= SHAPES[shape].max_weight
    for d in range(0, N_DOCS, 97):  # terms of a document: sorted, distinct
        assert (np.diff(terms[indptr[d]:indptr[d + 1]].astype(np.int64)) > 0).all()
    for q_terms, q_weights in queries:
        assert (np.diff(q_terms.astype(np.int64)) > 0).all() and (q_weights > 0).all()


def test_zipfian_term_use(collections):
    """A few terms carry much of the postings: the 1% most used terms hold far more than 1% of them."""
    for shape, (indptr, terms, _, queries) in collections.items():
        assert shape_stats(indptr, terms, queries)["top1pct_term_share"] > 0.15, shape


def test_deterministic_per_seed(collections):
    again = generate("msmarco", N_DOCS, N_QUERIES, seed=1)
    other = generate("msmarco", N_DOCS, N_QUERIES, seed=2)
    first = collections["msmarco"]
    for a, b in zip(first[:3], again[:3]):
        assert np.array_equal(a, b)
    assert all(np.array_equal(qa[0], qb[0]) and np.array_equal(qa[1], qb[1]) for qa, qb in zip(first[3], again[3]))
    assert not (first[1].size == other[1].size and np.array_equal(first[1], other[1]))


def test_shapes_differ_in_query_length(collections):
    lengths = {s: np.mean([len(t) for t, _ in c[3]]) for s, c in collections.items()}
    assert lengths["project"] < lengths["msmarco"] < lengths["long-query"]


def test_written_as_vectors_jsonl_that_lsr_indexes(tmp_path):
    """write_vectors spells the generated terms as the model's tokens: `lsr index` of the file stores the same
    documents (terms and, up to rounding and quantization, weights) and the query file reads back the same queries."""
    from lsr.engine import Engine
    from lsr.eval.bench_modes import load_queries
    from lsr.eval.synthetic import write_vectors

    write_vectors(tmp_path / "syn", "msmarco", 300, 5, seed=2)
    indptr, terms, weights, queries = generate("msmarco", 300, 5, seed=2)
    engine = Engine.build(tmp_path / "syn" / "vectors.jsonl", tmp_path / "idx", structures=(), progress=False)
    index = engine.index
    assert index.num_docs == 300
    for d in (0, 123, 299):
        got_terms, got_weights = index.doc_vector(d)
        np.testing.assert_array_equal(got_terms, terms[indptr[d]:indptr[d + 1]])
        np.testing.assert_allclose(got_weights, weights[indptr[d]:indptr[d + 1]], atol=index.scale)
    for (q_terms, q_weights), (got_terms, got_weights) in zip(queries, load_queries(tmp_path / "syn" / "queries.jsonl",
                                                                                     index, None)):
        np.testing.assert_array_equal(np.sort(got_terms), q_terms)
        np.testing.assert_allclose(got_weights[np.argsort(got_terms)], q_weights, atol=1e-4)
