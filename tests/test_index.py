"""Tests for the on-disk inverted index: builder, storage/verification and exact top-k search."""

from __future__ import annotations

import ast
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lsr.index import FORMAT_VERSION, IndexBuilder, IndexFormatError, InvertedIndex, quantize_query, verify_index
from lsr.index.storage import sha256_file
from lsr.index.topk import heap_offer, heap_replace_top, heap_sort, heapify

N_DOCS = 3000
VOCAB = 2000
USED_TERMS = 1900  # term ids >= USED_TERMS never occur in documents
INT32_MAX = 2**31 - 1


def make_corpus(seed: int, n_docs: int = N_DOCS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random CSR documents: Zipfian terms (unsorted, with duplicates), ~30 terms/doc, some empty docs and
    blocks of duplicated documents (to create score ties)."""
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, USED_TERMS + 1) ** 1.1
    probs = probs[rng.permutation(USED_TERMS)] / probs.sum()
    lengths = rng.poisson(30, n_docs)
    lengths[rng.choice(n_docs, n_docs // 50, replace=False)] = 0
    docs = [
        (rng.choice(USED_TERMS, n, p=probs), rng.exponential(1.0, n).astype(np.float32))
        for n in lengths
    ]
    for i in range(200, 400):  # docs 200..399 duplicate docs 0..199
        docs[i] = docs[i - 200]
    indptr = np.zeros(n_docs + 1, np.int64)
    np.cumsum([len(t) for t, _ in docs], out=indptr[1:])
    return indptr, np.concatenate([t for t, _ in docs]), np.concatenate([w for _, w in docs])


def expected_impacts(indptr, terms, weights, bits: int) -> tuple[sp.csr_matrix, float, int]:
    """Independent reference: combine duplicates by max, quantize, drop zeros -> (int64 CSR, scale, dropped)."""
    doc_ids = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keep = weights > 0
    doc_ids, terms, weights = doc_ids[keep], terms[keep].astype(np.int64), weights[keep]
    keys = doc_ids * VOCAB + terms
    order = np.lexsort((weights, keys))
    keys, weights = keys[order], weights[order]
    last = np.ones(keys.size, bool)
    last[:-1] = keys[1:] != keys[:-1]
    keys, weights = keys[last], weights[last]
    levels = 2**bits - 1
    scale = float(weights.max()) / levels
    impacts = np.rint(weights.astype(np.float64) / scale)
    nz = impacts > 0
    mat = sp.csr_matrix(
        (impacts[nz].astype(np.int64), (keys[nz] // VOCAB, keys[nz] % VOCAB)), shape=(len(indptr) - 1, VOCAB)
    )
    return mat, scale, int((~nz).sum())


def build(out_dir: Path, indptr, terms, weights, batch: int = 700, **kwargs) -> dict:
    builder = IndexBuilder(out_dir, VOCAB, **kwargs)
    for start in range(0, len(indptr) - 1, batch):
        end = min(start + batch, len(indptr) - 1)
        lo, hi = indptr[start], indptr[end]
        builder.add(indptr[start:end + 1] - lo, terms[lo:hi], weights[lo:hi])
    return builder.finalize(extra={"model": {"name": "test"}})


def brute_force(mat: sp.csr_matrix, qterms, qweights, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by (int score desc, doc id asc) over docs with score > 0."""
    qvec = np.zeros(VOCAB, np.int64)
    qvec[qterms.astype(np.int64)] = qweights
    scores = mat @ qvec
    cand = np.flatnonzero(scores > 0)
    order = np.lexsort((cand, -scores[cand]))[:k]
    return cand[order], scores[cand[order]]


def random_queries(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, VOCAB + 50, m), rng.exponential(1.0, m))  # some ids unseen or >= vocab
        for m in rng.integers(1, 21, n)
    ]


def in_vocab_quantized(index: InvertedIndex, terms, weights):
    terms, weights = np.asarray(terms), np.asarray(weights)
    keep = terms < VOCAB
    return quantize_query(terms[keep], weights[keep], 2 ** index.manifest["quantization"]["bits"] - 1)


def assert_matches(index: InvertedIndex, mat: sp.csr_matrix, terms, weights, k: int, ids, scores) -> None:
    qterms, qweights, qscale = in_vocab_quantized(index, terms, weights)
    exp_ids, exp_int = brute_force(mat, qterms, qweights, k)
    np.testing.assert_array_equal(ids, exp_ids)
    assert ids.dtype == np.uint32 and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, (exp_int * (index.scale / qscale)).astype(np.float32))


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("index8")
    manifest = build(out, *corpus)
    mat, scale, dropped = expected_impacts(*corpus, bits=8)
    return out, manifest, mat, scale, dropped


@pytest.fixture(scope="module")
def index(built):
    return InvertedIndex.open(built[0], verify=True)


def test_manifest_and_arrays_match_reference(built, index):
    out, manifest, mat, scale, dropped = built
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "lsr-index" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"] == {"name": "test"}
    assert (manifest["num_docs"], manifest["vocab_size"]) == (N_DOCS, VOCAB)
    assert manifest["num_postings"] == mat.nnz and dropped > 0 and manifest["dropped_postings"] == dropped
    assert manifest["quantization"]["bits"] == 8 and manifest["quantization"]["scale"] == pytest.approx(scale)
    assert not (out / "_chunks").exists()

    np.testing.assert_array_equal(index.array("forward_offsets"), mat.indptr)
    np.testing.assert_array_equal(index.array("forward_terms"), mat.indices)
    np.testing.assert_array_equal(index.array("forward_impacts"), mat.data)
    csc = mat.tocsc()
    csc.sort_indices()
    np.testing.assert_array_equal(index.array("postings_offsets"), csc.indptr)
    np.testing.assert_array_equal(index.postings_docs(), csc.indices)
    np.testing.assert_array_equal(index.array("postings_impacts"), csc.data)
    np.testing.assert_array_equal(index.array("term_max_impact"), mat.max(axis=0).toarray().ravel())
    assert index.array("postings_impacts").dtype == np.uint8
    assert index.array("term_max_impact")[USED_TERMS:].sum() == 0


def test_doc_vector(index, built):
    mat = built[2]
    for doc in (0, 5, 200, N_DOCS - 1):
        terms, weights = index.doc_vector(doc)
        row = mat.getrow(doc)
        np.testing.assert_array_equal(terms, row.indices)
        np.testing.assert_allclose(weights, (row.data * index.scale).astype(np.float32))
    empty = np.flatnonzero(np.diff(mat.indptr) == 0)
    assert empty.size > 0 and index.doc_vector(int(empty[0]))[0].size == 0
    with pytest.raises(IndexError):
        index.doc_vector(N_DOCS)


@pytest.mark.parametrize("k", [1, 10, 1000, N_DOCS + 500])
def test_search_matches_brute_force(index, built, k):
    mat = built[2]
    for terms, weights in random_queries(seed=k, n=25):
        qterms, qweights, _ = in_vocab_quantized(index, terms, weights)
        ids, int_scores = index.search_quantized(qterms, qweights, k)
        exp_ids, exp_int = brute_force(mat, qterms, qweights, k)
        np.testing.assert_array_equal(ids, exp_ids)
        np.testing.assert_array_equal(int_scores, exp_int)
        assert_matches(index, mat, terms, weights, k, *index.search(terms, weights, k))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [10, 1000])
def test_search_batch_matches_brute_force(index, built, k, threads):
    mat = built[2]
    queries = random_queries(seed=100 + k, n=40)
    queries.insert(7, (np.array([], np.int64), np.array([])))
    results = index.search_batch(queries, k=k, threads=threads)
    assert len(results) == len(queries)
    for (terms, weights), (ids, scores) in zip(queries, results):
        assert_matches(index, mat, terms, weights, k, ids, scores)
        single = index.search(terms, weights, k)
        np.testing.assert_array_equal(ids, single[0])
        np.testing.assert_array_equal(scores, single[1])
    assert index.search_batch([], k=k) == []


def test_concurrent_callers_get_the_serial_results(index):
    """Per-thread scratch and the shared worker pool: callers on several threads, each also running batches
    on several workers, get exactly the results of serial calls."""
    queries = random_queries(seed=7, n=30)
    serial = [index.search(terms, weights, 10) for terms, weights in queries]

    def call(i: int) -> list:
        if i % 2:
            return index.search_batch(queries, k=10, threads=3)
        return [index.search(terms, weights, 10) for terms, weights in queries]

    with ThreadPoolExecutor(4) as pool:
        for results in pool.map(call, range(8)):
            for (ids, scores), (want_ids, want_scores) in zip(results, serial):
                np.testing.assert_array_equal(ids, want_ids)
                np.testing.assert_array_equal(scores, want_scores)


def test_top_k_heap_keeps_the_best_with_ties_by_lower_id():
    rng = np.random.default_rng(3)
    scores_in = rng.integers(0, 20, 500).astype(np.int32)  # many ties
    docs_in = rng.permutation(500).astype(np.uint32)
    for k in (1, 7, 64, 500):
        scores, docs, size = np.empty(k, np.int32), np.empty(k, np.uint32), 0
        for s, d in zip(scores_in, docs_in):
            size = heap_offer(scores, docs, size, k, s, d)
        heap_sort(scores, docs, size)
        best = np.lexsort((docs_in, -scores_in.astype(np.int64)))[:k]
        np.testing.assert_array_equal(docs[:size], docs_in[best])
        np.testing.assert_array_equal(scores[:size], scores_in[best])


def test_heap_with_negated_keys_pops_largest_first():
    """BMP's use of the top-k heap: keys (-bound, last - block) pop by bound desc, then block asc."""
    rng = np.random.default_rng(4)
    bounds = rng.integers(1, 30, 200).astype(np.int32)
    last = bounds.size - 1
    keys, blocks = -bounds, (last - np.arange(bounds.size)).astype(np.uint32)
    size = bounds.size
    heapify(keys, blocks, size)
    popped = []
    while size:
        popped.append(last - int(blocks[0]))
        size -= 1
        heap_replace_top(keys, blocks, size, keys[size], blocks[size])
    np.testing.assert_array_equal(popped, np.lexsort((np.arange(bounds.size), -bounds.astype(np.int64))))


def test_index_package_imports_nothing_else_from_lsr():
    """lsr.index is the engine's core: it must not depend on text, models or HTTP (the rest of lsr)."""
    root = Path(__import__("lsr.index").index.__file__).parent
    for path in root.rglob("*.py"):
        package = ["lsr", "index", *path.parent.relative_to(root).parts]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "lsr":
                    assert name.startswith("lsr.index"), f"{path.name}:{node.lineno} imports {name}"


def test_ties_ordered_by_doc_id(index, built):
    mat = built[2]
    doc = int(np.argmax(np.diff(mat.indptr)[:200] > 0))
    terms = mat.getrow(doc).indices
    ids, scores = index.search(terms, np.ones(terms.size), k=N_DOCS)
    first, copy = (int(np.flatnonzero(ids == d)[0]) for d in (doc, doc + 200))
    assert first < copy and scores[first] == scores[copy]
    ties = np.flatnonzero(scores[1:] == scores[:-1])
    assert ties.size > 10 and np.all(ids[ties] < ids[ties + 1])
    assert_matches(index, mat, terms, np.ones(terms.size), N_DOCS, ids, scores)


def test_single_term_query(index, built):
    mat = built[2]
    term = int(np.argmax(np.diff(mat.tocsc().indptr)))
    ids, scores = index.search([term], [0.7], k=N_DOCS)
    col = mat.getcol(term).toarray().ravel()
    order = np.lexsort((np.arange(N_DOCS), -col))[: np.count_nonzero(col)]
    np.testing.assert_array_equal(ids, order)
    assert np.all(np.diff(scores) <= 0)


def test_empty_unseen_and_out_of_vocab_queries(index):
    for terms, weights in [
        ([], []),
        ([5, 6], [0.0, -1.0]),
        ([USED_TERMS, VOCAB - 1], [1.0, 2.0]),
        ([VOCAB, VOCAB + 10**6], [1.0, 1.0]),
    ]:
        ids, scores = index.search(np.array(terms, np.int64), np.array(weights), k=10)
        assert ids.size == 0 and scores.size == 0
    with_oov = index.search([3, 7, VOCAB + 3], [1.0, 0.5, 9.0], k=20)
    without = index.search([3, 7], [1.0, 0.5], k=20)
    np.testing.assert_array_equal(with_oov[0], without[0])
    np.testing.assert_array_equal(with_oov[1], without[1])
    with pytest.raises(ValueError):
        index.search([1], [1.0], k=0)


def test_quantize_query():
    terms, q, qscale = quantize_query([9, 3, 9, 4, 5], [1.0, 2.0, 3.0, 0.0, -1.0], 255)
    np.testing.assert_array_equal(terms, [3, 9])
    assert terms.dtype == np.uint32 and q.dtype == np.int32
    assert q[1] > q[0] > 0 and q[1] == np.floor(3.0 * qscale)
    rng = np.random.default_rng(0)
    for levels in (255, 65535):
        w = np.r_[1e3, rng.random(500) * 1e-6]
        _, q, _ = quantize_query(np.arange(w.size), w, levels)
        assert q.min() >= 1 and int(q.sum()) * levels <= INT32_MAX
    terms, q, qscale = quantize_query([], [], 255)
    assert terms.size == 0 and q.size == 0


def test_16_bit_quantization(tmp_path):
    corpus = make_corpus(seed=2, n_docs=800)
    manifest = build(tmp_path, *corpus, quant_bits=16)
    mat, scale, _ = expected_impacts(*corpus, bits=16)
    index = InvertedIndex.open(tmp_path, verify=True)
    assert manifest["quantization"]["bits"] == 16 and index.array("postings_impacts").dtype == np.uint16
    assert index.array("term_max_impact").dtype == np.uint16 and index.array("term_max_impact").max() == 65535
    np.testing.assert_array_equal(index.array("forward_impacts"), mat.data)
    queries = random_queries(seed=3, n=20)
    for (terms, weights), (ids, scores) in zip(queries, index.search_batch(queries, k=50)):
        assert_matches(index, mat, terms, weights, 50, ids, scores)
        assert_matches(index, mat, terms, weights, 50, *index.search(terms, weights, k=50))


def test_many_chunks_identical_to_one_chunk(tmp_path):
    corpus = make_corpus(seed=4, n_docs=600)
    one = build(tmp_path / "one", *corpus, batch=600)
    many = build(tmp_path / "many", *corpus, batch=37, chunk_postings=97)
    assert one == many
    for name, entry in one["arrays"].items():
        assert (tmp_path / "one" / entry["file"]).read_bytes() == (tmp_path / "many" / entry["file"]).read_bytes(), name


def test_no_dropped_postings(tmp_path):
    indptr, terms, weights = make_corpus(seed=5, n_docs=400)
    weights = weights + 1.0
    manifest = build(tmp_path, indptr, terms, weights, chunk_postings=1000)
    mat, _, dropped = expected_impacts(indptr, terms, weights, bits=8)
    assert dropped == 0 and manifest["dropped_postings"] == 0 and manifest["num_postings"] == mat.nnz
    index = InvertedIndex.open(tmp_path, verify=True)
    np.testing.assert_array_equal(index.array("forward_impacts"), mat.data)
    np.testing.assert_array_equal(index.postings_docs(), mat.tocsc().indices)


def test_invalid_search_arguments(index):
    with pytest.raises(ValueError):
        index.search_quantized(np.array([VOCAB], np.uint32), np.array([1], np.int32))
    with pytest.raises(ValueError):
        index.search_quantized(np.array([1], np.uint32), np.array([0], np.int32))
    with pytest.raises(ValueError):
        index.search_quantized(np.array([1, 2], np.uint32), np.array([2**30, 2**30], np.int32))
    with pytest.raises(ValueError):
        index.search_batch([([1], [1.0])], threads=0)
    with pytest.raises(ValueError):
        index.search([1, 2], [1.0], k=10)


def test_empty_index(tmp_path):
    manifest = IndexBuilder(tmp_path / "none", VOCAB).finalize()
    assert manifest["num_docs"] == 0 and manifest["num_postings"] == 0
    assert manifest["quantization"]["scale"] == 1.0
    builder = IndexBuilder(tmp_path / "zeros", VOCAB)
    builder.add(np.array([0, 2, 2, 3]), np.array([4, 5, 6]), np.zeros(3, np.float32))
    assert builder.num_docs == 3
    assert builder.finalize()["num_postings"] == 0
    for name, num_docs in (("none", 0), ("zeros", 3)):
        assert verify_index(tmp_path / name) == []
        index = InvertedIndex.open(tmp_path / name, verify=True)
        assert index.num_docs == num_docs and index.num_postings == 0
        ids, scores = index.search([4, 5], [1.0, 1.0], k=10)
        assert ids.size == 0 and scores.size == 0
        assert all(ids.size == 0 for ids, _ in index.search_batch([([4], [1.0])] * 3, k=5))
    assert InvertedIndex.open(tmp_path / "zeros").doc_vector(1)[0].size == 0


def test_verify_detects_corruption(built, tmp_path):
    assert verify_index(built[0]) == []
    bad = tmp_path / "bad"
    shutil.copytree(built[0], bad)
    path = bad / "postings_docs.npy"
    data = bytearray(path.read_bytes())
    for pos in (len(data) - 1, len(data) - 100):
        data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify_index(bad)
    assert any("postings_docs.npy" in p and "sha256" in p for p in problems)
    assert any("postings_docs.npy" in p and ">=" in p for p in problems)  # flipped high byte -> id out of range
    with pytest.raises(IndexFormatError, match="postings_docs.npy"):
        InvertedIndex.open(bad, verify=True)


def test_verify_detects_structural_problems(built, index, tmp_path):
    bad = tmp_path / "unsorted"
    shutil.copytree(built[0], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    impacts = np.load(bad / "forward_impacts.npy")
    impacts[10] = 0
    np.save(bad / "forward_impacts.npy", impacts)
    start = index.array("forward_offsets")[np.argmax(np.diff(index.array("forward_offsets")) >= 2)]
    terms = np.load(bad / "forward_terms.npy")
    terms[[start, start + 1]] = terms[[start + 1, start]]
    np.save(bad / "forward_terms.npy", terms)
    for name in ("forward_impacts", "forward_terms"):
        manifest["arrays"][name]["sha256"] = sha256_file(bad / f"{name}.npy")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_index(bad)
    assert len(problems) == 2
    assert "forward_terms.npy" in problems[0] and "strictly increasing" in problems[0]
    assert "forward_impacts.npy" in problems[1] and "zero" in problems[1]


def test_bad_manifest(built, tmp_path):
    bad = tmp_path / "old"
    shutil.copytree(built[0], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=f"version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        InvertedIndex.open(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="manifest.json"):
        InvertedIndex.open(bad)
    with pytest.raises(IndexFormatError, match="no index manifest"):
        InvertedIndex.open(tmp_path / "missing")


@pytest.mark.parametrize(
    "indptr, terms, weights",
    [
        ([0, 2], [1, 2], [0.5, -0.1]),
        ([0, 2], [1, VOCAB], [0.5, 0.1]),
        ([0, 2], [-1, 2], [0.5, 0.1]),
        ([0, 2], [1, 2], [0.5, np.nan]),
        ([0, 2], [1, 2], [0.5, np.inf]),
        ([0, 3], [1, 2], [0.5, 0.1]),
        ([0, 2], [1, 2], [0.5]),
    ],
)
def test_add_rejects_invalid_input(tmp_path, indptr, terms, weights):
    builder = IndexBuilder(tmp_path, VOCAB)
    with pytest.raises(ValueError):
        builder.add(np.array(indptr), np.array(terms), np.array(weights, np.float32))
    assert builder.num_docs == 0


def assert_runs(index: InvertedIndex) -> None:
    """The index's runs of 16-bit ids are those of its decoded ids (a numpy reference)."""
    offsets, docs = np.asarray(index.array("postings_offsets")), index.postings_docs().astype(np.int64)
    term = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    high = docs >> 16
    starts = np.flatnonzero(np.r_[True, (high[1:] != high[:-1]) | (term[1:] != term[:-1])]) if docs.size else []
    run_offsets, run_high, run_ends = index.postings_runs()
    np.testing.assert_array_equal(run_offsets, np.r_[0, np.cumsum(np.bincount(term[starts], minlength=offsets.size - 1))])
    np.testing.assert_array_equal(run_high, high[starts])
    np.testing.assert_array_equal(run_ends, np.r_[starts[1:], docs.size] - offsets[term[starts]])
    np.testing.assert_array_equal(index.array("postings_docs"), docs & 0xFFFF)


def test_doc_ids_over_16_bits(tmp_path):
    """Over 65,536 documents a list's 16-bit ids come in runs of high halves: the builder (chunk by chunk) and
    the reordering's splitting write the same runs, ids decode to the CSC's, exact search equals brute force on
    both of its paths (few and many postings), and the same index with uint32 ids (format 2) answers the same."""
    from lsr.index.docids import RUN_ARRAYS
    from lsr.index.reorder import reorder_index
    from lsr.index.storage import read_manifest, write_array, write_manifest
    from lsr.index.structures import add_structure

    rng = np.random.default_rng(11)
    n_docs = 3 * 65536 + 123
    lengths = rng.integers(0, 4, n_docs)
    indptr = np.zeros(n_docs + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    terms = (rng.zipf(1.3, indptr[-1]) % USED_TERMS).astype(np.int64)  # a few terms in most documents
    weights = rng.exponential(1.0, indptr[-1]).astype(np.float32) + 0.01
    build(tmp_path / "big", indptr, terms, weights, batch=50_000, chunk_postings=40_000)
    index = InvertedIndex.open(tmp_path / "big", verify=True)
    mat, _, _ = expected_impacts(indptr, terms, weights, bits=8)
    csc = mat.tocsc()
    assert index.array("postings_docs").dtype == np.uint16
    np.testing.assert_array_equal(index.postings_docs(), csc.indices)
    run_offsets, high, _ = index.postings_runs()
    assert np.diff(run_offsets).max() == 4 and set(np.unique(high)) == {0, 1, 2, 3}
    assert_runs(index)
    reordered = tmp_path / "reordered"
    shutil.copytree(tmp_path / "big", reordered)
    perm = reorder_index(reordered, "terms")
    assert verify_index(reordered) == []
    moved = InvertedIndex.open(reordered)
    assert_runs(moved)
    moved_csc = mat[perm].tocsc()
    moved_csc.sort_indices()
    np.testing.assert_array_equal(moved.postings_docs(), moved_csc.indices)

    def check(idx):
        for n_terms in (1, 3, 40):  # the touched-documents path and the full-accumulator path
            for _ in range(5):
                qterms = np.unique(rng.choice(USED_TERMS // 4, n_terms, replace=False)).astype(np.uint32)
                qweights = rng.integers(1, 1000, qterms.size).astype(np.int32)
                want = brute_force(mat, qterms, qweights, 50)
                got = idx.search_quantized(qterms, qweights, k=50)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])

    check(index)
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "big", bad)
    high = np.load(bad / "postings_run_high.npy")
    high[run_offsets[np.argmax(np.diff(run_offsets))]] = 3  # a term's first run claims the last high half
    np.save(bad / "postings_run_high.npy", high)
    assert any("postings_run_high.npy" in p and "sha256" in p for p in verify_index(bad))
    assert any("postings_run_*.npy: 1 terms" in p for p in verify_index(bad))

    shutil.copytree(tmp_path / "big", tmp_path / "wide")
    manifest = read_manifest(tmp_path / "wide")  # format 2 stored full uint32 ids and no runs
    manifest["arrays"]["postings_docs"] = write_array(tmp_path / "wide", "postings_docs", index.postings_docs())
    for name in RUN_ARRAYS:
        (tmp_path / "wide" / manifest["arrays"].pop(name)["file"]).unlink()
    manifest["format_version"] = 2
    write_manifest(tmp_path / "wide", manifest)
    assert verify_index(tmp_path / "wide") == []
    wide = InvertedIndex.open(tmp_path / "wide")
    assert wide.array("postings_docs").dtype == np.uint32
    check(wide)

    # the structures read the ids run by run: built from either format they are the same arrays
    for name, params in (("bmp", {"block_size": 64}), ("seismic", {"n_postings": 5000})):
        for where in ("big", "wide"):
            add_structure(InvertedIndex.open(tmp_path / where), name, **params)
    narrow, wide = InvertedIndex.open(tmp_path / "big"), InvertedIndex.open(tmp_path / "wide")
    for name in narrow.manifest["structures"]["bmp"]["arrays"] + narrow.manifest["structures"]["seismic"]["arrays"]:
        np.testing.assert_array_equal(narrow.array(name), wide.array(name), err_msg=name)
    for terms, weights in ((np.array([1, 5, 9, 200]), np.array([0.5, 1.0, 2.0, 0.7])),
                           (np.arange(0, 400, 7), np.linspace(0.1, 2, 58))):
        exact = narrow.search(terms, weights, k=20)
        for got in (narrow.search(terms, weights, k=20, mode="bmp"), wide.search(terms, weights, k=20, mode="bmp")):
            np.testing.assert_array_equal(got[0], exact[0])
            np.testing.assert_array_equal(got[1], exact[1])
