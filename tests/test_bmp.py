"""Block-Max Pruning (index/bmp.py) and document reordering (index/reorder.py).

Safe BMP must return exactly what exact search returns (ids, integer scores, order) on random
Zipfian data with score ties, on a real SPLADE index, for every block size, k and query shape.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numba
import numpy as np
import pytest

from lsr.index import IndexBuilder, InvertedIndex, verify_index
from lsr.index.bmp import _bound_terms
from lsr.index.docids import RUN_ARRAYS
from lsr.index.reorder import bp_work, reorder_index
from lsr.index.storage import read_manifest, write_array, write_manifest
from lsr.index.structures import add_structure
from lsr import Engine
from lsr.sample import sample_documents
from tests.conftest import write_jsonl

VOCAB = 800
USED = 700  # term ids >= USED never occur in documents
N_DOCS = 2500
TOPICS = 12


def make_docs(seed: int, n_docs: int = N_DOCS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random CSR documents: each from one of TOPICS topics (its own Zipfian term ranking mixed with a
    global one), topics interleaved in id order, some empty docs, docs 100..199 duplicating 0..99 and
    a run of 150 identical docs spread over the ids (score ties across many blocks)."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, USED + 1) ** 1.1
    zipf /= zipf.sum()
    rankings = [rng.permutation(USED) for _ in range(TOPICS + 1)]
    docs = []
    for i in range(n_docs):
        n = 0 if i % 97 == 5 else int(rng.integers(5, 40))
        topic = rankings[rng.integers(TOPICS)]
        own = topic[rng.choice(USED, n, p=zipf)]
        common = rankings[-1][rng.choice(USED, n // 3, p=zipf)]
        terms = np.concatenate([own, common])
        docs.append((terms, rng.exponential(1.0, terms.size).astype(np.float32)))
    for i in range(100, 200):
        docs[i] = docs[i - 100]
    twin = (np.array([3, 7, 11, 650], np.int64), np.array([2.0, 1.5, 1.0, 3.0], np.float32))
    for i in rng.choice(np.arange(200, n_docs), 150, replace=False):
        docs[i] = twin
    indptr = np.zeros(n_docs + 1, np.int64)
    np.cumsum([t.size for t, _ in docs], out=indptr[1:])
    return indptr, np.concatenate([t for t, _ in docs]), np.concatenate([w for _, w in docs])


def build_index(out: Path, seed: int = 0, quant_bits: int = 8, n_docs: int = N_DOCS) -> Path:
    indptr, terms, weights = make_docs(seed, n_docs)
    builder = IndexBuilder(out, VOCAB, quant_bits=quant_bits)
    builder.add(indptr, terms, weights)
    builder.finalize(extra={"model": {"name": "test"}})
    return out


def make_queries(seed: int, n: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    """Queries of 1..60 terms, some with terms that never occur (>= USED) or out of vocabulary."""
    rng = np.random.default_rng(seed)
    queries = []
    for i in range(n):
        size = 1 if i % 10 == 0 else int(rng.integers(2, 60))
        terms = rng.integers(0, USED, size)
        if i % 7 == 3:
            terms[0] = USED + 5  # in vocabulary, no postings
        if i % 11 == 4:
            terms = np.append(terms, VOCAB + 3)  # out of vocabulary: dropped
        queries.append((terms, rng.exponential(1.0, terms.size)))
    queries.append((np.array([3, 7, 11, 650]), np.array([2.0, 1.5, 1.0, 3.0])))  # the 150 twins tie
    queries.append((np.array([650]), np.array([1.0])))
    return queries


def with_bmp(src: Path, dst: Path, **params) -> InvertedIndex:
    """Copy an index and add a bmp structure to the copy; return the reopened copy."""
    shutil.copytree(src, dst)
    add_structure(InvertedIndex.open(dst), "bmp", **params)
    return InvertedIndex.open(dst)


def assert_same(a, b):
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), (a, b)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_index(tmp_path_factory.mktemp("bmp") / "base")


@pytest.fixture(scope="module")
def queries() -> list:
    return make_queries(1)


@pytest.fixture(scope="module")
def exact(base, queries) -> dict:
    index = InvertedIndex.open(base)
    return {k: [index.search(t, w, k=k) for t, w in queries] for k in (1, 10, 1000)}


# ----------------------------------------------------------------------------------- safe mode
@pytest.mark.parametrize("block_size,layout", [(1, "forward"), (8, "forward"), (64, "forward"), (200, "forward"),
                                               (1, "bitmap"), (8, "bitmap"), (200, "bitmap"), (32, "postings")])
def test_safe_bmp_equals_exact(base, queries, exact, tmp_path, block_size, layout):
    index = with_bmp(base, tmp_path / "idx", block_size=block_size, layout=layout)
    for k, expected in exact.items():
        for (terms, weights), want in zip(queries, expected):
            assert_same(index.search(terms, weights, k=k, mode="bmp"), want)
    batch = index.search_batch(queries, k=10, mode="bmp", threads=2)
    for got, want in zip(batch, exact[10]):
        assert_same(got, want)


def test_ties_resolved_by_lowest_id(base, exact, queries):
    twins = exact[10][-2]
    assert len(twins[0]) == 10 and len(set(twins[1].tolist())) == 1  # ten equal scores
    assert np.all(np.diff(twins[0].astype(np.int64)) > 0)


def test_edge_queries(base, tmp_path):
    index = with_bmp(base, tmp_path / "idx", block_size=16)
    empty = index.search(np.array([], np.int64), np.array([]), k=10, mode="bmp")
    assert empty[0].size == 0 and empty[1].size == 0
    for terms, weights in [([USED + 1], [1.0]), ([5], [0.0]), ([5, 9], [-1.0, 0.0])]:  # no match / no weight
        assert index.search(np.array(terms), np.array(weights), k=5, mode="bmp")[0].size == 0
    one = (np.array([0]), np.array([2.0]))
    assert_same(index.search(*one, k=N_DOCS + 50, mode="bmp"), index.search(*one, k=N_DOCS + 50))
    batch = index.search_batch([(np.array([], np.int64), np.array([])), one], k=3, mode="bmp-approx")
    assert batch[0][0].size == 0 and np.array_equal(batch[1][0], index.search(*one, k=3)[0])


def test_sixteen_bit_impacts_and_large_blocks(tmp_path, queries):
    src = build_index(tmp_path / "base16", seed=3, quant_bits=16, n_docs=1200)
    index = with_bmp(src, tmp_path / "idx", block_size=300)
    assert index.array("postings_impacts").dtype == np.uint16
    for k in (1, 10, 200):
        for terms, weights in queries[::3]:
            assert_same(index.search(terms, weights, k=k, mode="bmp"), index.search(terms, weights, k=k))


def _as_version_1(index_dir: Path) -> None:
    """Rewrite an index as format version 1 wrote it: uint32 forward term ids and posting doc ids."""
    manifest, docs = read_manifest(index_dir), InvertedIndex.open(index_dir).postings_docs()
    terms = np.load(index_dir / "forward_terms.npy").astype(np.uint32)
    manifest["arrays"]["forward_terms"] = write_array(index_dir, "forward_terms", terms)
    manifest["arrays"]["postings_docs"] = write_array(index_dir, "postings_docs", docs)
    for name in RUN_ARRAYS:
        (index_dir / manifest["arrays"].pop(name)["file"]).unlink()
    manifest["format_version"] = 1
    write_manifest(index_dir, manifest)


def _bmp_as_version_1(index_dir: Path) -> None:
    """Rewrite a bmp structure's term-block arrays as format version 1 wrote them: int64 term offsets, uint32
    block ids."""
    manifest = read_manifest(index_dir)
    parts = np.load(index_dir / "bmp_term_parts.npy")
    low = np.load(index_dir / "bmp_term_blocks.npy").astype(np.uint32)
    high = np.concatenate([np.full(b - a, h << 16, np.uint32) for row in parts for h, (a, b) in
                           enumerate(zip(row[:-1], row[1:]))])
    offsets = np.append(parts[:, 0], parts[-1, -1])
    (index_dir / "bmp_term_parts.npy").unlink()
    del manifest["arrays"]["bmp_term_parts"]
    manifest["arrays"]["bmp_term_offsets"] = write_array(index_dir, "bmp_term_offsets", offsets)
    manifest["arrays"]["bmp_term_blocks"] = write_array(index_dir, "bmp_term_blocks", high | low)
    info = manifest["structures"]["bmp"]
    info["arrays"] = sorted(set(info["arrays"]) - {"bmp_term_parts"} | {"bmp_term_offsets"})
    write_manifest(index_dir, manifest)


def test_forward_term_ids_narrow_and_legacy_wide(base, queries, exact, tmp_path):
    """Term ids are stored in 16 bits when the vocabulary allows; an index holding them in 32 bits (format
    version 1, vocabularies over 65,536 terms) answers every mode the same, BMP in every layout."""
    assert InvertedIndex.open(base).array("forward_terms").dtype == np.uint16
    wide = tmp_path / "wide"
    shutil.copytree(base, wide)
    _as_version_1(wide)
    assert not verify_index(wide)
    for layout in ("bitmap", "postings"):  # version 1's layouts and arrays
        add_structure(InvertedIndex.open(wide), "bmp", block_size=16, layout=layout)
        _bmp_as_version_1(wide)
        assert not verify_index(wide)
        index = InvertedIndex.open(wide)
        assert index.array("bmp_term_blocks").dtype == np.uint32
        for (terms, weights), want in zip(queries, exact[10]):
            assert_same(index.search(terms, weights, k=10, mode="bmp"), want)
    for name, params in (("bmp", {"block_size": 16}), ("seismic", {"n_postings": 300})):
        add_structure(InvertedIndex.open(wide), name, **params)
    narrow = with_bmp(base, tmp_path / "narrow", block_size=16)
    add_structure(narrow, "seismic", n_postings=300)
    narrow, index = InvertedIndex.open(tmp_path / "narrow"), InvertedIndex.open(wide)
    assert index.array("forward_terms").dtype == index.array("postings_docs").dtype == np.uint32
    for (terms, weights), want in zip(queries, exact[10]):
        assert_same(index.search(terms, weights, k=10, mode="bmp"), want)
        assert_same(index.search(terms, weights, k=10, mode="seismic"),
                    narrow.search(terms, weights, k=10, mode="seismic"))
        docs = np.arange(0, N_DOCS, 7)
        assert np.array_equal(index.score_docs((terms, weights), docs), narrow.score_docs((terms, weights), docs))
    assert index.doc_vector(3)[0].dtype == narrow.doc_vector(3)[0].dtype == np.uint32
    assert np.array_equal(reorder_index(wide, "bp", iterations=2), reorder_index(tmp_path / "narrow", "bp", iterations=2))


def test_vocabulary_over_16_bits_keeps_32_bit_term_ids(tmp_path, queries):
    indptr, terms, weights = make_docs(5, n_docs=600)
    terms = terms * 97 + 3  # spread over a 77,600-term vocabulary
    builder = IndexBuilder(tmp_path / "big", VOCAB * 97)
    builder.add(indptr, terms, weights)
    builder.finalize()
    index = with_bmp(tmp_path / "big", tmp_path / "idx", block_size=8)
    assert index.array("forward_terms").dtype == np.uint32 and index.doc_vector(1)[0].max() >= 65536
    for t, w in queries[::4]:
        t = t * 97 + 3
        assert_same(index.search(t, w, k=10, mode="bmp"), index.search(t, w, k=10))


def test_block_ids_over_16_bits(tmp_path):
    """Over 65,536 blocks, block ids are split into a 16-bit part per pair and a high part per term range."""
    rng = np.random.default_rng(4)
    n_docs = 70_000
    indptr = np.arange(0, 3 * n_docs + 1, 3, dtype=np.int64)
    terms = rng.integers(0, 40, 3 * n_docs)
    terms[3 * np.arange(0, n_docs, 997)] = 41  # a term with pairs on both sides of block 65,536
    builder = IndexBuilder(tmp_path / "base", 50)
    builder.add(indptr, terms, rng.exponential(1.0, 3 * n_docs).astype(np.float32))
    builder.finalize()
    index = with_bmp(tmp_path / "base", tmp_path / "idx", block_size=1)
    parts = index.array("bmp_term_parts")
    assert parts.shape == (50, 3) and index.array("bmp_term_blocks").dtype == np.uint16
    assert parts[41, 0] < parts[41, 1] < parts[41, 2]
    for t in ([41], [41, 3], [1, 2, 3, 41], [7]):
        t = np.array(t)
        for k in (1, 10, 100):
            assert_same(index.search(t, np.ones(t.size), k=k, mode="bmp"), index.search(t, np.ones(t.size), k=k))


def test_batch_threads_restored(base, tmp_path, queries):
    index = with_bmp(base, tmp_path / "idx", block_size=32)
    before = numba.get_num_threads()
    single = index.search_batch(queries, k=10, mode="bmp", threads=1)
    assert numba.get_num_threads() == before
    for got, want in zip(single, index.search_batch(queries, k=10)):
        assert_same(got, want)


# ----------------------------------------------------------------------------------- parameters
def test_parameters_are_checked(base, tmp_path):
    index = with_bmp(base, tmp_path / "idx", block_size=32)
    q = (np.array([1, 2, 3]), np.array([1.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match="alpha"):
        index.search(*q, mode="bmp", alpha=0.9)
    with pytest.raises(ValueError, match="beta"):
        index.search_batch([q], mode="bmp", beta=0.5)
    with pytest.raises(ValueError, match="gamma"):
        index.search(*q, mode="bmp-approx", gamma=1)
    for bad in ({"alpha": 0.0}, {"alpha": 1.5}, {"beta": -0.1}, {"beta": "x"}, {"alpha": True}):
        with pytest.raises(ValueError):
            index.search(*q, mode="bmp-approx", **bad)
    with pytest.raises(ValueError, match="block_size"):
        add_structure(index, "bmp", block_size=0)
    with pytest.raises(ValueError, match="layout"):
        add_structure(index, "bmp", layout="dense")
    info = read_manifest(index.index_dir)["structures"]["bmp"]
    assert info["params"]["block_size"] == 32 and "bmp_term_blocks" in info["arrays"]
    assert not verify_index(index.index_dir)


# ----------------------------------------------------------------------------------- approximate mode
def test_approx_recall_and_exact_scores(base, queries, exact, tmp_path):
    index = with_bmp(base, tmp_path / "idx", block_size=16)
    forward = _forward_matrix(index)

    def recall(**params):
        hits = []
        for (terms, weights), want in zip(queries, exact[10]):
            ids, scores = index.search(terms, weights, k=10, mode="bmp-approx", **params)
            assert np.all(np.diff(scores) <= 0)
            # returned scores are the exact scores of the returned docs
            qterms, qweights, qscale = index._quantize(terms, weights)
            q = np.zeros(VOCAB, np.int64)
            q[qterms.astype(np.int64)] = qweights
            assert np.allclose(scores, (forward[ids.astype(np.int64)] @ q) * index.scale / qscale, rtol=1e-6)
            if len(want[0]):
                hits.append(len(set(ids.tolist()) & set(want[0].tolist())) / len(want[0]))
        return float(np.mean(hits))

    assert recall(alpha=1.0, beta=1.0) == 1.0
    assert recall() >= 0.95  # defaults
    assert recall(alpha=0.8) >= 0.85
    assert recall(alpha=0.5, beta=0.3) >= 0.2  # loose settings: must run, may lose a lot
    for got, want in zip(index.search_batch(queries, k=10, mode="bmp-approx", alpha=1.0, beta=1.0), exact[10]):
        assert_same(got, want)


@pytest.mark.parametrize("beta", [0.01, 0.3, 0.5, 0.99, 1.0])
def test_bound_terms_are_the_heaviest_with_ties_by_lower_term(beta):
    rng = np.random.default_rng(int(beta * 100))
    qterms = np.sort(rng.choice(30000, 40, replace=False)).astype(np.uint32)
    qweights = rng.integers(1, 6, 40).astype(np.int32)  # many equal weights
    keep = qterms.size if beta >= 1 else max(1, math.ceil(qterms.size * beta))
    order = np.lexsort((qterms, -qweights.astype(np.int64)))[:keep]
    bterms, bweights = _bound_terms(qterms, qweights, beta)
    np.testing.assert_array_equal(np.sort(bterms), np.sort(qterms[order]))
    np.testing.assert_array_equal(bweights[np.argsort(bterms)], qweights[order][np.argsort(qterms[order])])


def _forward_matrix(index: InvertedIndex):
    import scipy.sparse as sp

    return sp.csr_matrix(
        (np.asarray(index.array("forward_impacts"), np.int64), np.asarray(index.array("forward_terms")),
         np.asarray(index.array("forward_offsets"))), shape=(index.num_docs, index.vocab_size))


# ----------------------------------------------------------------------------------- reordering
def _full_ranking(index: InvertedIndex, terms, weights) -> dict:
    """score -> set of doc ids, over every matching doc."""
    ids, scores = index.search(terms, weights, k=index.num_docs)
    groups: dict = {}
    for i, s in zip(ids.tolist(), scores.tolist()):
        groups.setdefault(s, set()).add(i)
    return groups


@pytest.mark.parametrize("method,params", [("bp", {"iterations": 4, "leaf_size": 16}), ("terms", {})])
def test_reorder_preserves_results(base, queries, tmp_path, method, params):
    before = InvertedIndex.open(base)
    work = tmp_path / "idx"
    shutil.copytree(base, work)
    add_structure(InvertedIndex.open(work), "bmp", block_size=32)
    perm = reorder_index(work, method, **params)
    assert sorted(perm.tolist()) == list(range(N_DOCS))
    assert not verify_index(work)
    manifest = read_manifest(work)
    assert manifest["reorder"]["method"] == method and "structures" not in manifest
    assert not any(name.startswith("bmp_") for name in manifest["arrays"])
    assert not list(work.glob("bmp_*.npy"))
    after = InvertedIndex.open(work)
    assert np.array_equal(after.array("doc_original"), perm.astype(np.uint32))
    for d in (0, 17, N_DOCS - 1):  # documents moved with their vectors
        assert all(np.array_equal(x, y) for x, y in zip(after.doc_vector(d), before.doc_vector(int(perm[d]))))
    for terms, weights in queries:
        want = _full_ranking(before, terms, weights)
        got = {s: {int(perm[i]) for i in ids} for s, ids in _full_ranking(after, terms, weights).items()}
        assert got == want
        top_before, top_after = before.search(terms, weights, k=10), after.search(terms, weights, k=10)
        assert np.array_equal(top_before[1], top_after[1])
    add_structure(after, "bmp", block_size=32)
    after = InvertedIndex.open(work)
    for terms, weights in queries:
        assert_same(after.search(terms, weights, k=10, mode="bmp"), after.search(terms, weights, k=10))


def test_reorder_twice_composes_and_checks_arguments(base, tmp_path):
    work = tmp_path / "idx"
    shutil.copytree(base, work)
    reports: list[tuple[int, int]] = []
    first = reorder_index(work, "terms", signature=2, on_progress=lambda done, total: reports.append((done, total)))
    assert reports == [(InvertedIndex.open(work).num_docs,) * 2]
    reports.clear()
    second = reorder_index(work, "bp", iterations=2, leaf_size=64, threads=1,
                           on_progress=lambda done, total: reports.append((done, total)))
    # one report per bisection level, the last one complete
    num_docs = InvertedIndex.open(work).num_docs
    assert len(reports) == math.ceil(math.log2(num_docs / 64)) and reports[-1] == (bp_work(num_docs, 64),) * 2
    assert all(a[0] < b[0] for a, b in zip(reports, reports[1:]))
    manifest = read_manifest(work)
    assert np.array_equal(InvertedIndex.open(work).array("doc_original"), first[second].astype(np.uint32))
    assert [h["method"] for h in manifest["reorder"]["history"]] == ["terms", "bp"]
    with pytest.raises(ValueError, match="method"):
        reorder_index(work, "random")
    with pytest.raises(ValueError, match="signature"):
        reorder_index(work, "bp", signature=3)
    with pytest.raises(ValueError, match="iterations"):
        reorder_index(work, "bp", iterations=0)


def test_bp_groups_topics(tmp_path):
    """On topic-clustered docs BP lowers the log-gap cost of the posting lists and the BMP block bounds."""
    src = build_index(tmp_path / "base", seed=5, n_docs=1500)
    work = tmp_path / "bp"
    shutil.copytree(src, work)
    reorder_index(work, "bp")

    def log_gaps(path):
        index = InvertedIndex.open(path)
        offsets = np.asarray(index.array("postings_offsets"))
        docs = np.asarray(index.postings_docs()).astype(np.int64)
        gaps = np.diff(docs, prepend=-1)
        gaps[offsets[:-1][offsets[:-1] < docs.size]] = docs[offsets[:-1][offsets[:-1] < docs.size]] + 1
        return float(np.log2(gaps).mean())

    assert log_gaps(work) < log_gaps(src) - 0.3
    entries = []
    for path in (src, work):
        add_structure(InvertedIndex.open(path), "bmp", block_size=32)
        entries.append(read_manifest(path)["structures"]["bmp"]["params"]["term_block_entries"])
    assert entries[1] < entries[0]


# ----------------------------------------------------------------------------------- real SPLADE index
@pytest.fixture(scope="module")
def real_index(tmp_path_factory, encoder) -> tuple[Path, list]:
    """200 real passages (Python reference docs) encoded with the embedded SPLADE model."""
    root = tmp_path_factory.mktemp("real")
    docs = [d for d in sample_documents() if not d["_id"].startswith("module:")][:200]
    write_jsonl(root / "corpus.jsonl", docs)
    engine = Engine.build(root, root / "index", encoder=encoder, progress=False)
    texts = ["how do generators yield values", "string formatting with f-strings", "exception handling try except",
             "class inheritance and attribute lookup", "integer division and modulo", "import a module from a package",
             "comparison operators chaining", "lambda expressions", "with statement context manager",
             "mutable sequence methods append"] + [d["title"] for d in docs[::15]]
    return root / "index", engine.query_vectors(texts)


@pytest.mark.parametrize("block_size", [4, 16, 64])
def test_real_index_safe_equals_exact(real_index, tmp_path, block_size):
    src, vectors = real_index
    index = with_bmp(src, tmp_path / "idx", block_size=block_size)
    for k in (1, 10, 100):
        for terms, weights in vectors:
            assert_same(index.search(terms, weights, k=k, mode="bmp"), index.search(terms, weights, k=k))
    for got, want in zip(index.search_batch(vectors, k=10, mode="bmp", threads=2), index.search_batch(vectors, k=10)):
        assert_same(got, want)


def test_real_index_reordered(real_index, tmp_path):
    src, vectors = real_index
    work = tmp_path / "idx"
    shutil.copytree(src, work)
    before = InvertedIndex.open(src)
    perm = reorder_index(work, "bp", iterations=6, leaf_size=8)
    index = with_bmp(work, tmp_path / "bmp", block_size=8)
    hits = []
    for terms, weights in vectors:
        want = before.search(terms, weights, k=10)
        got = index.search(terms, weights, k=10, mode="bmp")
        assert_same(got, index.search(terms, weights, k=10))
        assert np.array_equal(got[1], want[1])
        assert set(perm[got[0]].tolist()) == set(want[0].tolist()) or len(set(want[1].tolist())) < len(want[1])
        approx = index.search(terms, weights, k=10, mode="bmp-approx", alpha=0.8)
        hits.append(len(set(approx[0].tolist()) & set(got[0].tolist())) / max(1, len(got[0])))
    assert np.mean(hits) >= 0.8
    assert json.loads((work / "manifest.json").read_text())["reorder"]["method"] == "bp"


def test_index_sizes_table(base, tmp_path):
    """python -m lsr.eval.index_sizes: every file of the index counted once, in the group owning it."""
    from lsr.eval.index_sizes import format_table, index_sizes

    index = with_bmp(base, tmp_path / "idx", block_size=8)
    sizes = index_sizes(index.index_dir)
    assert set(sizes["groups"]) == {"base", "bmp", "other"}
    assert set(sizes["groups"]["bmp"]) == set(index.manifest["structures"]["bmp"]["arrays"])
    assert sizes["groups"]["base"]["forward_terms"] == {"dtype": "uint16", "bytes": 128 + 2 * index.num_postings}
    counted = sum(a["bytes"] for group in sizes["groups"].values() for a in group.values())
    assert counted == sum(f.stat().st_size for f in index.index_dir.iterdir())
    table = format_table(sizes)
    total = f"{counted:,} | {counted / N_DOCS:,.1f} | {counted / index.num_postings:,.2f} |"
    assert table.splitlines()[-1] == f"| **index total** |  | {total}"
