"""Tests for the Seismic structure (index/seismic/): recall, exactness when nothing is pruned, exact scores of
returned documents, edge cases, parameter handling and the manifest record."""

from __future__ import annotations

import shutil
from pathlib import Path

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from lsr.index import IndexBuilder, IndexFormatError, InvertedIndex, verify_index
from lsr.index.seismic import BUILD_DEFAULTS, SEARCH_DEFAULTS
from lsr.index.storage import read_manifest, write_manifest
from lsr.index.structures import add_structure

VOCAB = 3000
USED = 2800  # term ids >= USED never occur in documents
N_DOCS = 3000
# every list kept whole, summaries that bound every score, every query term visited
EXHAUSTIVE_BUILD = {"pruning": "fixed", "n_postings": N_DOCS, "summary_energy": 1.0, "summary_cap": None}
EXHAUSTIVE_SEARCH = {"query_cut": None, "heap_factor": 1.0}


def zipf_corpus(seed: int, n_docs: int = N_DOCS):
    """CSR documents: Zipfian terms, ~40 per doc with topical clusters (so blocking has structure to find),
    some empty docs and duplicated docs (score ties)."""
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, USED + 1) ** 1.05
    probs = probs[rng.permutation(USED)] / probs.sum()
    topics = [rng.choice(USED, 60, replace=False) for _ in range(30)]
    docs = []
    for i in range(n_docs):
        n = rng.poisson(30)
        t = rng.choice(USED, n, p=probs)
        topic = topics[rng.integers(len(topics))]
        t = np.concatenate([t, rng.choice(topic, rng.poisson(10))])
        docs.append((t, rng.exponential(1.0, t.size).astype(np.float32)))
    for i in rng.choice(n_docs, n_docs // 50, replace=False):
        docs[i] = (np.empty(0, np.int64), np.empty(0, np.float32))
    for i in range(100, 150):  # duplicates of docs 0..49
        docs[i] = docs[i - 100]
    indptr = np.zeros(n_docs + 1, np.int64)
    np.cumsum([t.size for t, _ in docs], out=indptr[1:])
    return indptr, np.concatenate([t for t, _ in docs]), np.concatenate([w for _, w in docs])


def build_index(out: Path, seed: int, **kwargs) -> InvertedIndex:
    indptr, terms, weights = zipf_corpus(seed)
    builder = IndexBuilder(out, VOCAB, **kwargs)
    for start in range(0, N_DOCS, 1000):
        lo, hi = indptr[start], indptr[min(start + 1000, N_DOCS)]
        builder.add(indptr[start:start + 1001] - lo, terms[lo:hi], weights[lo:hi])
    builder.finalize(extra={"model": {"name": "test"}})
    return InvertedIndex.open(out)


def with_seismic(src: Path, dst: Path, **params) -> InvertedIndex:
    """A copy of the index at ``src`` with a seismic structure built with ``params``."""
    shutil.copytree(src, dst)
    add_structure(InvertedIndex.open(dst), "seismic", **params)
    return InvertedIndex.open(dst)


def make_queries(index: InvertedIndex, seed: int, n: int = 60) -> list[tuple[np.ndarray, np.ndarray]]:
    """Queries shaped like learned sparse ones: a few heavy terms of a random document plus light random ones."""
    rng = np.random.default_rng(seed)
    out = []
    for d in rng.choice(index.num_docs, n, replace=False):
        doc_terms, _ = index.doc_vector(int(d))
        heavy = rng.choice(doc_terms, min(8, doc_terms.size), replace=False)
        t = np.concatenate([heavy, rng.integers(0, USED, 12)]).astype(np.int64)
        w = np.concatenate([rng.uniform(1.0, 3.0, heavy.size), rng.exponential(0.3, 12)])
        out.append((t, w))
    return out


def forward_matrix(index: InvertedIndex) -> sp.csr_matrix:
    offsets = np.asarray(index.array("forward_offsets"))
    return sp.csr_matrix((np.asarray(index.array("forward_impacts")).astype(np.int64),
                          np.asarray(index.array("forward_terms")), offsets), shape=(index.num_docs, VOCAB))


def exact_int_scores(fwd: sp.csr_matrix, qterms: np.ndarray, qweights: np.ndarray) -> np.ndarray:
    q = np.zeros(VOCAB, np.int64)
    q[qterms.astype(np.int64)] = qweights
    return fwd @ q


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seismic") / "base"
    build_index(out, seed=7)
    return out


@pytest.fixture(scope="module")
def approx(base_dir, tmp_path_factory) -> InvertedIndex:
    """Pruned like a real deployment: lists cut to 400 of up to ~1500 postings."""
    return with_seismic(base_dir, tmp_path_factory.mktemp("approx") / "idx", n_postings=400)


@pytest.fixture(scope="module")
def exhaustive(base_dir, tmp_path_factory) -> InvertedIndex:
    return with_seismic(base_dir, tmp_path_factory.mktemp("exh") / "idx", **EXHAUSTIVE_BUILD)


def recall(index: InvertedIndex, queries, k: int = 10, **params) -> float:
    hits = []
    for t, w in queries:
        exact = set(index.search(t, w, k)[0].tolist())
        got = set(index.search(t, w, k, mode="seismic", **params)[0].tolist())
        hits.append(len(exact & got) / max(1, len(exact)))
    return float(np.mean(hits))


def test_recall_on_zipf_data(approx):
    queries = make_queries(approx, 1)
    assert recall(approx, queries) >= 0.9
    assert recall(approx, queries, query_cut=20, heap_factor=0.7) >= recall(approx, queries, query_cut=2,
                                                                             heap_factor=1.0)


@pytest.mark.parametrize("k", [1, 10, 1000])
def test_exhaustive_settings_equal_exact(exhaustive, k):
    for t, w in make_queries(exhaustive, 2, 25):
        ids, scores = exhaustive.search(t, w, k, mode="seismic", **EXHAUSTIVE_SEARCH)
        eids, escores = exhaustive.search(t, w, k)
        np.testing.assert_array_equal(ids, eids)
        np.testing.assert_array_equal(scores, escores)


def test_no_block_skipping_equals_exact_whatever_the_summaries(base_dir, tmp_path):
    index = with_seismic(base_dir, tmp_path / "idx", pruning="fixed", n_postings=N_DOCS, summary_energy=0.2,
                         centroid_fraction=0.3)
    for t, w in make_queries(index, 3, 20):
        ids, scores = index.search(t, w, 10, mode="seismic", query_cut=None, heap_factor=0.0)
        eids, escores = index.search(t, w, 10)
        np.testing.assert_array_equal(ids, eids)
        np.testing.assert_array_equal(scores, escores)


def summary_codes(index: InvertedIndex) -> np.ndarray:
    """Every summary entry's code, unpacked from two 4-bit codes per byte when the structure has 4-bit summaries."""
    values = np.asarray(index.array("seismic_sum_values"))
    if index.manifest["structures"]["seismic"]["params"].get("summary_bits", 8) == 8:
        return values
    entries = int(np.asarray(index.array("seismic_sum_offsets"))[-1])
    assert values.shape[0] == (entries + 1) // 2
    return np.stack([values & 15, values >> 4], axis=1).ravel()[:entries]


def test_summaries_capped_to_the_heaviest_terms(base_dir, tmp_path):
    """A block's summary holds at most summary_cap terms, the heaviest of the block (max impact over its docs)."""
    cap = 6
    index = with_seismic(base_dir, tmp_path / "idx", n_postings=400, summary_energy=1.0, summary_cap=cap,
                         summary_bits=8)
    fwd = forward_matrix(index).tocsr()
    s_off, s_terms = np.asarray(index.array("seismic_sum_offsets")), np.asarray(index.array("seismic_sum_terms"))
    s_vals, b_off = np.asarray(index.array("seismic_sum_values")), np.asarray(index.array("seismic_block_offsets"))
    docs, steps = np.asarray(index.array("seismic_docs")), np.asarray(index.array("seismic_block_step"))
    sizes = np.diff(s_off.astype(np.int64))
    assert s_terms.dtype == np.uint16 and sizes.max() == cap and index.manifest["structures"]["seismic"][
        "params"]["stats"]["summary_entries"] == s_off[-1]
    for b in range(0, b_off.shape[0] - 1, 37):
        block_max = fwd[docs[b_off[b]:b_off[b + 1]]].max(axis=0).toarray().ravel()
        heaviest = np.sort(block_max)[::-1]
        terms, values = s_terms[s_off[b]:s_off[b + 1]], s_vals[s_off[b]:s_off[b + 1]].astype(np.int64) * steps[b]
        assert sizes[b] == min(cap, np.count_nonzero(block_max))
        np.testing.assert_array_equal(values, block_max[terms])
        np.testing.assert_array_equal(np.sort(values)[::-1], heaviest[:sizes[b]])


def test_4_bit_summaries_round_the_8_bit_ones_up(base_dir, tmp_path):
    """4-bit summaries (the default) keep the 8-bit summaries' terms, each code * step the smallest multiple of the
    block's step at or above the term's block max, the step the smallest one that fits the top impact in 15 levels;
    with every term kept and no block skipped on the bound they still equal exact search."""
    params = {"n_postings": 400, "summary_energy": 0.6, "summary_cap": 20}
    wide = with_seismic(base_dir, tmp_path / "wide", summary_bits=8, **params)
    narrow = with_seismic(base_dir, tmp_path / "narrow", **params)
    assert narrow.manifest["structures"]["seismic"]["params"]["summary_bits"] == 4
    np.testing.assert_array_equal(narrow.array("seismic_sum_terms"), wide.array("seismic_sum_terms"))
    np.testing.assert_array_equal(narrow.array("seismic_sum_offsets"), wide.array("seismic_sum_offsets"))
    offsets = np.asarray(wide.array("seismic_sum_offsets")).astype(np.int64)
    block = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    exact = summary_codes(wide).astype(np.int64) * np.asarray(wide.array("seismic_block_step"))[block]
    codes = summary_codes(narrow).astype(np.int64)
    steps = np.asarray(narrow.array("seismic_block_step")).astype(np.int64)
    assert codes.max() <= 15 and steps.max() > 1
    np.testing.assert_array_equal(codes, -(-exact // steps[block]))
    top = np.maximum.reduceat(exact, offsets[:-1])[np.diff(offsets) > 0]
    np.testing.assert_array_equal(steps[np.diff(offsets) > 0], np.maximum(1, -(-top // 15)))
    assert verify_index(narrow.index_dir) == []

    bounded = with_seismic(base_dir, tmp_path / "bounded", **EXHAUSTIVE_BUILD)
    for t, w in make_queries(bounded, 5, 25):
        ids, scores = bounded.search(t, w, 10, mode="seismic", **EXHAUSTIVE_SEARCH)
        eids, escores = bounded.search(t, w, 10)
        np.testing.assert_array_equal(ids, eids)
        np.testing.assert_array_equal(scores, escores)


def test_structures_without_summary_bits_read_8_bit_codes(base_dir, tmp_path):
    """A structure built before summary_bits existed (8-bit codes, no such parameter) answers as it did."""
    index = with_seismic(base_dir, tmp_path / "idx", n_postings=400, summary_bits=8)
    queries = make_queries(index, 6, 20)
    before = [index.search(t, w, 10, mode="seismic") for t, w in queries]
    manifest = read_manifest(index.index_dir)
    del manifest["structures"]["seismic"]["params"]["summary_bits"]
    write_manifest(index.index_dir, manifest)
    reopened = InvertedIndex.open(index.index_dir)
    for (t, w), (ids, scores) in zip(queries, before):
        got_ids, got_scores = reopened.search(t, w, 10, mode="seismic")
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_scores, scores)


def test_summaries_streamed_in_runs_are_the_same(base_dir, tmp_path, monkeypatch):
    """Summaries built in runs of 7 blocks (appended to their files run by run) equal a build in one run."""
    from lsr.index.seismic import summaries

    whole = with_seismic(base_dir, tmp_path / "whole", n_postings=400)
    monkeypatch.setattr(summaries, "RUN_BLOCKS", 7)
    runs = with_seismic(base_dir, tmp_path / "runs", n_postings=400)
    assert int(np.asarray(runs.array("seismic_block_offsets")).shape[0]) > 100
    for name in runs.manifest["structures"]["seismic"]["arrays"]:
        np.testing.assert_array_equal(runs.array(name), whole.array(name))
        assert runs.manifest["arrays"][name] == whole.manifest["arrays"][name]
    assert verify_index(runs.index_dir) == []


def test_version_1_summaries_ask_for_a_rebuild(approx, tmp_path):
    """A seismic structure in format version 1's term-major summary layout is refused with the rebuild command."""
    shutil.copytree(approx.index_dir, tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    manifest["format_version"] = 1
    info = manifest["structures"]["seismic"]
    info["arrays"] = [name for name in info["arrays"] if not name.startswith("seismic_sum_")] + [
        "seismic_comp_terms", "seismic_comp_offsets", "seismic_sum_blocks", "seismic_sum_values"]
    write_manifest(tmp_path / "idx", manifest)
    index = InvertedIndex.open(tmp_path / "idx")
    t, w = make_queries(index, 2, 1)[0]
    assert index.search(t, w, 10)[0].size
    with pytest.raises(IndexFormatError, match="--add-structures seismic"):
        index.search(t, w, 10, mode="seismic")


def test_returned_scores_are_exact_and_ranked(approx):
    fwd = forward_matrix(approx)
    structure = approx.structure("seismic")
    for t, w in make_queries(approx, 4, 30):
        qterms, qweights, qscale = approx._quantize(t, w)
        if not qterms.size:
            continue
        ids, scores = structure.search(qterms, qweights, 50, query_cut=5, heap_factor=0.9)
        truth = exact_int_scores(fwd, qterms, qweights)
        np.testing.assert_array_equal(scores, truth[ids])
        assert len(set(ids.tolist())) == ids.size and np.all(scores > 0)
        order = np.lexsort((ids, -scores.astype(np.int64)))
        np.testing.assert_array_equal(order, np.arange(ids.size))
        # the float API reports the same integers, dequantized like exact search
        fids, fscores = approx.search(t, w, 50, mode="seismic", query_cut=5, heap_factor=0.9)
        np.testing.assert_array_equal(fids, ids)
        np.testing.assert_array_equal(fscores, (scores * (approx.scale / qscale)).astype(np.float32))


def test_empty_and_unseen_queries(approx):
    empty = np.empty(0, np.int64), np.empty(0, np.float32)
    for t, w in [empty, (np.array([USED, USED + 5]), np.array([1.0, 2.0])),  # terms in no document
                 (np.array([VOCAB + 10]), np.array([1.0])),                    # beyond the vocabulary
                 (np.array([3, 4]), np.array([0.0, -1.0]))]:                   # no positive weight
        ids, scores = approx.search(t, w, 10, mode="seismic")
        assert ids.size == 0 and scores.size == 0 and ids.dtype == np.uint32
        assert all(r[0].size == 0 for r in approx.search_batch([(t, w), (t, w)], 10, mode="seismic"))
    # a query mixing unseen and seen terms still answers
    t, w = make_queries(approx, 5, 1)[0]
    ids, _ = approx.search(np.concatenate([t, [USED + 1, VOCAB + 3]]), np.concatenate([w, [5.0, 5.0]]), 10,
                           mode="seismic")
    np.testing.assert_array_equal(ids, approx.search(t, w, 10, mode="seismic")[0])


def test_k_one_and_large_k(approx):
    for t, w in make_queries(approx, 6, 10):
        top1, _ = approx.search(t, w, 1, mode="seismic", query_cut=None, heap_factor=0.0)
        np.testing.assert_array_equal(top1, approx.search(t, w, 1)[0])
        ids, scores = approx.search(t, w, 1000, mode="seismic")
        assert ids.size <= 1000 and len(set(ids.tolist())) == ids.size
        assert np.all(np.diff(scores) <= 0)


@pytest.mark.parametrize("build", [
    {"n_postings": 1},
    {"n_postings": 5, "centroid_fraction": 1.0, "min_cluster_size": 0},
    {"n_postings": 50, "min_cluster_size": 1000},          # every cluster dissolved: one block per list
    {"summary_energy": 0.01, "doc_cut": 1, "seed": 3},
    {"pruning": "global", "n_postings": 3, "max_fraction": 2.0},
    {"pruning": "global", "n_postings": 10**6},
])
def test_loose_settings_never_crash(base_dir, tmp_path, build):
    index = with_seismic(base_dir, tmp_path / "idx", **build)
    fwd = forward_matrix(index)
    structure = index.structure("seismic")
    for params in ({"query_cut": 1, "heap_factor": 10.0}, {"query_cut": 3, "heap_factor": 0.5}, {}):
        for t, w in make_queries(index, 8, 8):
            qterms, qweights, _ = index._quantize(t, w)
            ids, scores = structure.search(qterms, qweights, 7, **params)
            assert ids.size <= 7
            np.testing.assert_array_equal(scores, exact_int_scores(fwd, qterms, qweights)[ids])


def test_uint16_impacts(tmp_path):
    index = build_index(tmp_path / "idx", seed=9, quant_bits=16)
    add_structure(index, "seismic", **EXHAUSTIVE_BUILD)
    index = InvertedIndex.open(tmp_path / "idx")
    assert np.asarray(index.array("postings_impacts")).max() > 255  # summaries need a quantization step
    for t, w in make_queries(index, 9, 15):
        ids, scores = index.search(t, w, 10, mode="seismic", **EXHAUSTIVE_SEARCH)
        eids, escores = index.search(t, w, 10)
        np.testing.assert_array_equal(ids, eids)
        np.testing.assert_array_equal(scores, escores)


def test_search_batch_matches_search_and_restores_threads(approx):
    queries = make_queries(approx, 11, 40) + [(np.empty(0, np.int64), np.empty(0))]
    before = numba.get_num_threads()
    for threads in (1, 2, None):
        batch = approx.search_batch(queries, 10, threads=threads, mode="seismic", query_cut=4, heap_factor=0.9)
        assert numba.get_num_threads() == before
        for (ids, scores), (t, w) in zip(batch, queries):
            sids, sscores = approx.search(t, w, 10, mode="seismic", query_cut=4, heap_factor=0.9)
            np.testing.assert_array_equal(ids, sids)
            np.testing.assert_array_equal(scores, sscores)


def test_manifest_records_params_and_verifies(approx):
    info = approx.manifest["structures"]["seismic"]
    params = info["params"]
    assert set(BUILD_DEFAULTS) <= set(params) and params["n_postings"] == 400 and params["pruning"] == "fixed"
    assert params["stats"]["postings"] == int(np.minimum(np.diff(np.asarray(approx.array("postings_offsets"))),
                                                         400).sum())
    assert all(name in approx.manifest["arrays"] for name in info["arrays"])
    assert verify_index(approx.index_dir) == []


def test_parameter_errors(base_dir, tmp_path, approx):
    shutil.copytree(base_dir, tmp_path / "idx")
    index = InvertedIndex.open(tmp_path / "idx")
    with pytest.raises(ValueError, match="bogus"):
        add_structure(index, "seismic", bogus=1)
    for bad in ({"n_postings": 0}, {"summary_energy": 0.0}, {"summary_energy": 1.5}, {"centroid_fraction": 2},
                {"pruning": "random"}, {"doc_cut": 0}, {"min_cluster_size": -1}, {"n_postings": 2.5},
                {"summary_bits": 6}):
        with pytest.raises(ValueError):
            add_structure(index, "seismic", **bad)
    t, w = make_queries(approx, 12, 1)[0]
    with pytest.raises(ValueError, match="alpha"):
        approx.search(t, w, 10, mode="seismic", alpha=1.0)
    with pytest.raises(ValueError, match="n_postings"):  # a build knob is not a search knob
        approx.search_batch([(t, w)], 10, mode="seismic", n_postings=10)
    for bad in ({"query_cut": 0}, {"heap_factor": -1.0}, {"heap_factor": float("nan")}, {"query_cut": 1.5}):
        with pytest.raises(ValueError):
            approx.search(t, w, 10, mode="seismic", **bad)
    assert set(SEARCH_DEFAULTS) == {"query_cut", "heap_factor"}


def test_real_splade_index(engine, tmp_path):
    """A real (SPLADE-encoded) index from the session fixture, copied so its manifest stays untouched."""
    shutil.copytree(engine.index_dir, tmp_path / "idx")
    index = InvertedIndex.open(tmp_path / "idx")
    queries = engine.query_vectors(["parse command line arguments", "compress files with gzip",
                                    "regular expression matching", "read and write json data",
                                    "run a subprocess and capture output", "date and time arithmetic",
                                    "unit testing framework", "random numbers", "sockets and networking",
                                    "temporary files and directories"])
    longest = int(np.diff(np.asarray(index.array("postings_offsets"))).max())
    add_structure(index, "seismic", pruning="fixed", n_postings=longest, summary_energy=1.0, summary_cap=None)
    index = InvertedIndex.open(tmp_path / "idx")
    for t, w in queries:
        ids, scores = index.search(t, w, 10, mode="seismic", **EXHAUSTIVE_SEARCH)
        eids, escores = index.search(t, w, 10)
        np.testing.assert_array_equal(ids, eids)
        np.testing.assert_array_equal(scores, escores)
    # pruned hard (lists cut to a fifth of the collection, 3 query terms), recall stays usable
    add_structure(index, "seismic", n_postings=max(2, index.num_docs // 5), centroid_fraction=0.2)
    index = InvertedIndex.open(tmp_path / "idx")
    assert recall(index, queries, query_cut=3, heap_factor=0.9) >= 0.6
    assert recall(index, queries) >= 0.8
