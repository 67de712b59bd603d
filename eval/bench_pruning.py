"""Pruning benchmark (issue 4): lsr exact / BMP / Seismic against pyseismic-lsr, the BMP authors' ``bmp`` package
and scipy brute force, all on the same vectors, in one run.

    python -m lsr.eval.bench_pruning --index $LSR_CACHE/indexes/scifact-splade-tiny-b5712e6cc5ee \\
        --queries $LSR_DATA/beir/scifact/queries.jsonl --name scifact
    python -m lsr.eval.bench_pruning --synthetic 1000000 --reorder bp --peers --name synthetic-1m
    python -m lsr.eval.bench_pruning --synthetic 200000 --shape msmarco --reorder bp --peers
    python -m lsr.eval.bench_pruning --synthetic 20000 --max-queries 200 --name synthetic-20k     # smoke test

* Vectors: ``--index`` takes an existing index's (dequantized) document vectors, in its document order, and
  encodes ``--queries`` with its model (cached in ``eval/results/bench_pruning_<name>.queries.npz``);
  ``--synthetic N`` generates a collection of the ``--shape`` (:mod:`eval.synthetic`: ``project``, ``msmarco``,
  ``long-query``).
* Builds, each in a fresh spawned child process, into ``--work`` (default: a temporary directory): time and peak
  RSS (the child's high-water mark, :func:`eval.peers.peak_rss_mb`; it includes the interpreter, its imports and
  the loaded vectors, ``rss_before_mb`` in the JSON). Ours: IndexBuilder on the vectors, optionally ``--reorder``
  (counted in lsr bmp's build; synthetic documents come in random order, so BMP blocks have no locality without
  it), then the ``bmp`` and ``seismic`` structures (with the ``--index``'s own settings when it has them), after
  a tiny warm-up build that loads the Numba kernels; sizes count the base index plus the structure. Peers:
  scipy's CSR matrix; with ``--peers``, pyseismic-lsr with the same total posting budget as ours
  (:func:`eval.peers.seismic_params`; ``--seismic-n-postings`` sets ours) and the ``bmp`` package on our
  quantized impacts, rescaled against overflow (:func:`eval.peers.bmp_impact_scale`).
* Search, in this process: per-query latency on one thread (Numba set to 1 thread; the peers' single-query
  calls), batch queries/s on ``--threads`` threads (ours: ``search_batch``; pyseismic-lsr: ``batch_search``;
  bmp: none; scipy: single-threaded chunks), and Recall@k against our exact top-k.

Writes ``eval/results/bench_pruning_<name>.json`` and ``.md``, ``eval/plots/pruning_<name>.png``, and prints the
table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from lsr.eval.timing import latency_summary, time_each
from lsr.eval.peers import (BMP_MAX_TERMS, BmpPeer, SeismicPeer, bmp_impact_scale, peak_rss_mb, seismic_params)
from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.bmp import DEFAULT_BLOCK_SIZE
from lsr.index.seismic import BUILD_DEFAULTS as SEISMIC_BUILD_DEFAULTS
from lsr.index.storage import read_manifest
from lsr.index.structures import add_structure
from lsr.eval.synthetic import SHAPES, VOCAB as SYNTH_VOCAB, generate, shape_stats
from lsr.evaluation.results import portable_path

RESULTS = Path(__file__).parent / "results"
PLOTS = Path(__file__).parent / "plots"
WARMUP_QUERIES = 5
SCIPY_CHUNK = 64  # queries per scipy batch product (an N x 64 float32 score matrix)
SYSTEMS = ("lsr exact", "lsr bmp", "lsr seismic", "bmp package", "pyseismic-lsr", "scipy")


# ---------------------------------------------------------------------------------------------- builds (children)
def run_child(target: str, **kwargs) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh spawned process (its peak RSS is its own); return its dict."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, kwargs, results))
    proc.start()
    while True:
        try:
            result = results.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                try:
                    result = results.get(timeout=1.0)
                    break
                except queue_module.Empty:
                    raise RuntimeError(f"{target} failed in its child process (exit code {proc.exitcode})") from None
    proc.join()
    return result


def _child(target: str, kwargs: dict, results) -> None:
    module, name = target.split(":")
    results.put(getattr(importlib.import_module(module), name)(**kwargs))


def add_vectors(builder: IndexBuilder, indptr: np.ndarray, terms: np.ndarray, weights: np.ndarray,
                docs: int, progress: bool = False) -> None:
    """Add the first ``docs`` documents (CSR rows) to ``builder`` in batches of 50,000 (``progress``: a bar)."""
    step = 50_000
    for lo in tqdm(range(0, docs, step), desc="build", unit="batch", dynamic_ncols=True, disable=not progress):
        hi = min(lo + step, docs)
        a, b = indptr[lo], indptr[hi]
        builder.add(indptr[lo:hi + 1] - a, terms[a:b], weights[a:b])


def build_lsr(vectors_path: str, out_dir: str, vocab_size: int, quant_bits: int, threads: int) -> dict:
    """Our IndexBuilder on the vectors into ``out_dir`` (child process)."""
    numba.set_num_threads(threads)
    with np.load(vectors_path) as data:
        indptr, terms, weights = data["indptr"], data["terms"], data["weights"]
    with tempfile.TemporaryDirectory() as tmp:  # load the Numba kernels before the clock starts
        warm = IndexBuilder(Path(tmp), vocab_size, quant_bits)
        add_vectors(warm, indptr, terms, weights, min(256, len(indptr) - 1))
        warm.finalize()
    before = peak_rss_mb()
    started = time.perf_counter()
    builder = IndexBuilder(Path(out_dir), vocab_size, quant_bits)
    add_vectors(builder, indptr, terms, weights, len(indptr) - 1)
    builder.finalize()
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}


def _tiny_copy(index: InvertedIndex, out_dir: Path, docs: int) -> InvertedIndex:
    """An index of ``index``'s first documents with the same dtypes (for warming up Numba kernels)."""
    offsets = np.asarray(index.array("forward_offsets"))[:docs + 1]
    terms = np.asarray(index.array("forward_terms"))[:offsets[-1]]
    weights = np.asarray(index.array("forward_impacts"))[:offsets[-1]] * np.float32(index.scale)
    builder = IndexBuilder(out_dir, index.vocab_size, index.manifest["quantization"]["bits"])
    add_vectors(builder, offsets, terms, weights, len(offsets) - 1)
    builder.finalize()
    return InvertedIndex.open(out_dir)


def add_lsr_structure(index_dir: str, name: str, params: dict, threads: int) -> dict:
    """Add one of our pruning structures to the index in ``index_dir`` (child process)."""
    numba.set_num_threads(threads)
    index = InvertedIndex.open(Path(index_dir))
    with tempfile.TemporaryDirectory() as tmp:
        add_structure(_tiny_copy(index, Path(tmp), min(256, index.num_docs)), name, **params)
    before = peak_rss_mb()
    started = time.perf_counter()
    manifest = add_structure(index, name, **params)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "params": manifest["structures"][name]["params"]}


def reorder_lsr(index_dir: str, method: str, threads: int) -> dict:
    """Renumber the documents of the index in ``index_dir`` (child process)."""
    from lsr.index.reorder import reorder_index

    numba.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        index = InvertedIndex.open(Path(index_dir))
        _tiny_copy(index, Path(tmp), min(256, index.num_docs))
        reorder_index(Path(tmp), method)
    before = peak_rss_mb()
    started = time.perf_counter()
    reorder_index(Path(index_dir), method)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "method": method}


def build_scipy(vectors_path: str, vocab_size: int) -> dict:
    """scipy's CSR matrix of the vectors (child process); its size is in memory, there is no file."""
    with np.load(vectors_path) as data:
        indptr, terms, weights = data["indptr"], data["terms"], data["weights"]
    before = peak_rss_mb()
    started = time.perf_counter()
    matrix = sp.csr_matrix((weights, terms, indptr), shape=(len(indptr) - 1, vocab_size))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "size_bytes": matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes}


# ---------------------------------------------------------------------------------------------- measuring search
def time_queries(search, queries: list, desc: str) -> tuple[list[np.ndarray], list[float]]:
    """Top-k ids and seconds of every query, one at a time (after a few warm-up queries)."""
    found, seconds = time_each(search, queries, WARMUP_QUERIES, desc)
    return [np.asarray(f) for f in found], seconds


def batch_qps(search_many, queries: list) -> float:
    """Queries per second of one batch call over all queries (after a warm-up batch)."""
    search_many(queries[:8])
    started = time.perf_counter()
    search_many(queries)
    return len(queries) / (time.perf_counter() - started)


def recall_at_k(found: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    """Mean |found[:k] ∩ truth| / |truth| over queries with a non-empty truth."""
    values = [len(set(f[:k].tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth) if len(t)]
    return float(np.mean(values)) if values else float("nan")


def scipy_batch(matrix: sp.csr_matrix, queries: list, k: int) -> list[np.ndarray]:
    """scipy top-k of many queries: sparse matrix x dense query block, SCIPY_CHUNK queries at a time."""
    out = []
    for lo in range(0, len(queries), SCIPY_CHUNK):
        chunk = queries[lo:lo + SCIPY_CHUNK]
        block = np.zeros((matrix.shape[1], len(chunk)), np.float32)
        for j, (t, w) in enumerate(chunk):
            block[t, j] = w
        scores = np.ascontiguousarray((matrix @ block).T)
        out.extend(_top(col, k) for col in scores)
    return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores (ties: lower index), as bench_core.scipy_topk."""
    top = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]


def scipy_run(index: InvertedIndex, queries: list, k: int) -> tuple[list[np.ndarray], list[float], float]:
    """scipy brute force over the index's (dequantized) forward vectors: (top-k ids, seconds per query, batch q/s)."""
    from lsr.eval.bench_core import forward_vectors, scipy_topk

    indptr, terms, weights = forward_vectors(index)
    matrix = sp.csr_matrix((weights, terms, indptr), shape=(index.num_docs, index.vocab_size))
    del indptr, terms, weights
    dense = np.zeros(index.vocab_size, np.float32)

    def one(q):
        dense[q[0]] = q[1]
        top = scipy_topk(matrix, dense, k)
        dense[q[0]] = 0
        return top

    found, seconds = time_queries(one, queries, "scipy")
    return found, seconds, batch_qps(lambda qs: scipy_batch(matrix, qs, k), queries)


# ---------------------------------------------------------------------------------------------- main
def parse_grid(text: str) -> list[tuple[float, float]]:
    """``"a:b,c:d"`` -> [(a, b), (c, d)]."""
    return [tuple(float(x) for x in pair.split(":")) for pair in text.split(",") if pair]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with :mod:`eval.bench_scale`."""
    parser.add_argument("--shape", choices=sorted(SHAPES), default="project",
                        help="Synthetic collection shape (see eval/synthetic.py).")
    parser.add_argument("--max-queries", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=None, help="Build directory (default: a temporary one).")
    parser.add_argument("--seed", type=int, default=0, help="Synthetic data seed.")
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse the builds already in --work from an earlier run with the same data and settings "
                             "(their time and peak RSS are then not measured: NaN).")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="Threads for builds and batch search.")
    parser.add_argument("--peers", action="store_true",
                        help="Also build and search pyseismic-lsr and the bmp package (pip install 'lsr[bench]').")
    parser.add_argument("--bmp-block-size", type=int, default=None,
                        help="Block size of our bmp structure and of the bmp package (default: the index's, else "
                             f"{DEFAULT_BLOCK_SIZE}).")
    parser.add_argument("--seismic-n-postings", type=int, default=None,
                        help="Seismic's posting budget λ per list (default: the index's, else auto_n_postings(N)); "
                             "pyseismic-lsr gets the same total budget.")
    parser.add_argument("--bmp-grid", default="0.95:1,0.9:1,0.8:1,1:0.7,0.95:0.7,0.9:0.7,1:0.5,0.9:0.5",
                        help="alpha:beta settings of bmp-approx and of the bmp package's approximate runs.")
    parser.add_argument("--seismic-grid", default="5:0.6,8:0.6,10:0.6,12:0.6,8:0.7,10:0.7,8:0.8,10:0.8,8:0.9,10:0.9,8:1",
                        help="query_cut:heap_factor settings of our seismic mode and of pyseismic-lsr.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", type=Path, help="An lsr index (read only).")
    source.add_argument("--synthetic", type=int, metavar="N", help="Generate N synthetic documents instead.")
    parser.add_argument("--queries", type=Path, help="queries.jsonl or TSV (with --index).")
    parser.add_argument("--name", default=None, help="Result name (default: index dir name / synthetic-N).")
    parser.add_argument("--reorder", choices=("bp", "terms"), default=None,
                        help="Reorder our index's documents before the structures (peers get the same order).")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.index is not None and args.queries is None:
        parser.error("--index needs --queries")
    name = args.name or (args.index.name if args.index is not None else
                         f"synthetic-{args.synthetic}" + ("" if args.shape == "project" else f"-{args.shape}"))
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="bench_pruning_") as tmp:
            result = run(args, name, Path(tmp))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(args, name, args.work)
    RESULTS.mkdir(exist_ok=True)
    PLOTS.mkdir(exist_ok=True)
    table = render(result)
    (RESULTS / f"bench_pruning_{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"bench_pruning_{name}.md").write_text(table + "\n")
    plot(result, PLOTS / f"pruning_{name}.png")
    print(table)


def encoded_queries(index_dir: Path, path: Path, limit: int, cache: Path, model_sha: str) -> list:
    """Query vectors of ``path`` by the index's model, cached in ``cache`` (.npz) keyed by file, limit and model."""
    key = f"{path.resolve()}|{limit}|{model_sha}"
    if cache.is_file():
        with np.load(cache) as data:
            if str(data["key"]) == key:
                ptr, terms, weights = data["indptr"], data["terms"], data["weights"]
                return [(terms[ptr[i]:ptr[i + 1]], weights[ptr[i]:ptr[i + 1]]) for i in range(len(ptr) - 1)]
    from lsr import Engine
    from lsr.corpus import read_queries

    texts = [text for _, text in read_queries(path)][:limit]
    print(f"encoding {len(texts)} queries …", flush=True)
    queries = Engine.open(index_dir).query_vectors(texts)
    ptr = np.zeros(len(queries) + 1, np.int64)
    np.cumsum([len(t) for t, _ in queries], out=ptr[1:])
    cache.parent.mkdir(exist_ok=True)
    np.savez(cache, key=np.array(key), indptr=ptr, terms=np.concatenate([t for t, _ in queries]).astype(np.uint32),
             weights=np.concatenate([w for _, w in queries]).astype(np.float32))
    return [(np.asarray(t, np.uint32), np.asarray(w, np.float32)) for t, w in queries]


def structure_params(manifest: dict | None, block_size: int | None, n_postings: int | None = None) -> dict:
    """Our bmp / seismic build parameters: the source index's own when it has the structure, else defaults;
    ``block_size`` and ``n_postings`` (Seismic's λ) override them when given."""
    structures = (manifest or {}).get("structures", {})
    given = structures.get("bmp", {}).get("params", {})
    bmp = {key: given[key] for key in ("block_size", "layout") if key in given}
    if block_size is not None:
        bmp["block_size"] = block_size
    seismic = {key: value for key, value in structures.get("seismic", {}).get("params", {}).items()
               if key in SEISMIC_BUILD_DEFAULTS}
    if n_postings is not None:
        seismic["n_postings"] = n_postings
    return {"bmp": bmp, "seismic": seismic}


def importable(module: str) -> bool:
    """Whether a (peer) package imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def index_sizes(index_dir: Path) -> dict[str, int]:
    """Bytes on disk of the base index (arrays + manifest) and of each structure's arrays."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    size = {name: (index_dir / f"{name}.npy").stat().st_size for name in manifest["arrays"]}
    out = {s: sum(size[a] for a in info["arrays"]) for s, info in manifest.get("structures", {}).items()}
    out["base"] = sum(size.values()) - sum(out.values()) + (index_dir / "manifest.json").stat().st_size
    return out


def run(args, name: str, work: Path) -> dict:
    """Build everything, measure every system and setting; the result dict."""
    from lsr.eval.bench_core import forward_vectors  # bench_core imports torch: parent only

    k, threads = args.k, args.threads
    vectors_path = work / "vectors.npz"
    lsr_dir = work / "lsr"
    notes = []
    if args.index is not None:
        source = InvertedIndex.open(args.index)
        manifest = source.manifest
        quant_bits, vocab = int(manifest["quantization"]["bits"]), source.vocab_size
        queries = encoded_queries(args.index, args.queries, args.max_queries,
                                  RESULTS / f"bench_pruning_{name}.queries.npz", manifest["model"]["sha256"])
        np.savez(vectors_path, **dict(zip(("indptr", "terms", "weights"), forward_vectors(source))))
        origin = {"index": portable_path(args.index), "queries": portable_path(args.queries),
                  "reordered": "doc_original" in manifest["arrays"]}
        del source
    else:
        manifest, quant_bits, vocab = None, 8, SYNTH_VOCAB
        print(f"generating {args.synthetic} synthetic documents of shape {args.shape} …", flush=True)
        indptr, terms, weights, queries = generate(args.shape, args.synthetic, args.max_queries, args.seed)
        if not (args.reuse and vectors_path.is_file()):
            np.savez(vectors_path, indptr=indptr, terms=terms, weights=weights)
        origin = {"synthetic": args.synthetic, "shape": args.shape, "seed": args.seed,
                  "stats": shape_stats(indptr, terms, queries)}
        del indptr, terms, weights
    params = structure_params(manifest, args.bmp_block_size, args.seismic_n_postings)
    have = {peer: args.peers and importable(module)
            for peer, module in (("pyseismic-lsr", "seismic"), ("bmp package", "bmp"))}
    if not args.peers:
        notes.append("peers not run (no --peers).")
    for peer, ok in have.items():
        if args.peers and not ok:
            print(f"note: {peer} is not installed (pip install 'lsr[bench]'); skipping it", flush=True)
            notes.append(f"{peer} not installed: skipped.")
    if vocab > BMP_MAX_TERMS:
        for peer in have:
            if have[peer]:
                notes.append(f"{peer} skipped: it stores term ids in 16 bits, vocabulary is {vocab}.")
            have[peer] = False

    builds: dict[str, dict] = {}
    steps = tqdm(total=6 + bool(args.reorder), desc="builds", unit="build", dynamic_ncols=True)

    def step(label: str, target: str, **kwargs) -> dict:
        steps.set_postfix_str(label)
        result = reused(label) if args.reuse and reused(label) else run_child(target, **kwargs)
        steps.update()
        return result

    def reused(label: str) -> dict | None:
        """With --reuse: a record of a build already in ``work`` (no time or peak measured), else None."""
        stub = {"seconds": float("nan"), "peak_rss_mb": float("nan"), "rss_before_mb": float("nan"), "reused": True}
        built = read_manifest(lsr_dir) if (lsr_dir / "manifest.json").is_file() else None
        structure = built and built.get("structures", {}).get(label.removeprefix("lsr "))
        peer = {"pyseismic-lsr": work / "peer.index.seismic", "bmp package": work / "peer.bmp"}.get(label)
        if label == "lsr base" and built or label == "lsr reorder" and built and "doc_original" in built["arrays"]:
            return stub
        if label in ("lsr bmp", "lsr seismic") and structure:
            return {**stub, "params": structure["params"]}
        if peer is not None and peer.is_file():
            return {**stub, "size_bytes": peer.stat().st_size}
        return None

    me = "lsr.eval.bench_pruning"
    builds["lsr base"] = step("lsr base", f"{me}:build_lsr", vectors_path=str(vectors_path), out_dir=str(lsr_dir),
                              vocab_size=vocab, quant_bits=quant_bits, threads=threads)
    if args.reorder:
        builds["lsr reorder"] = step("lsr reorder", f"{me}:reorder_lsr", index_dir=str(lsr_dir),
                                     method=args.reorder, threads=threads)
        if not builds["lsr reorder"].get("reused"):
            np.savez(vectors_path, **dict(zip(("indptr", "terms", "weights"),
                                              forward_vectors(InvertedIndex.open(lsr_dir)))))
    for structure in ("bmp", "seismic"):
        builds[f"lsr {structure}"] = step(f"lsr {structure}", f"{me}:add_lsr_structure", index_dir=str(lsr_dir),
                                          name=structure, params=params[structure], threads=threads)
    builds["scipy"] = step("scipy", f"{me}:build_scipy", vectors_path=str(vectors_path), vocab_size=vocab)
    index = InvertedIndex.open(lsr_dir)
    sizes = index_sizes(lsr_dir)
    if have["pyseismic-lsr"]:
        ours = builds["lsr seismic"]["params"]
        builds["pyseismic-lsr"] = step("pyseismic-lsr", "lsr.eval.peers:seismic_build", vectors_path=str(vectors_path),
                                       vocab_size=vocab, out_path=str(work / "peer"), threads=threads,
                                       params=seismic_params(np.diff(np.asarray(index.array("postings_offsets"))),
                                                             ours))
    else:
        steps.update()
    if have["bmp package"]:
        scale, bound = bmp_impact_scale(np.asarray(index.array("term_max_impact")), queries)
        bsize = int(builds["lsr bmp"]["params"]["block_size"])
        builds["bmp package"] = step("bmp package", "lsr.eval.peers:bmp_build", index_dir=str(lsr_dir),
                                     out_path=str(work / "peer.bmp"), bsize=bsize, impact_scale=scale)
        builds["bmp package"]["score_bound"] = bound
        notes.append(f"bmp package: impacts × {scale:.3f} (then rounded, min 1) so that the largest possible score "
                     f"of any benchmark query, Σ q_t · max impact of t with its 32-level query weights, is {bound} "
                     f"≤ 65535 (its u16 accumulator).")
    else:
        steps.update()
    steps.close()

    # ------------------------------------------------------------------ search
    runs: list[dict] = []
    numba.set_num_threads(1)

    def record(system: str, setting: str, params: dict, found, seconds, qps, batch_threads) -> None:
        runs.append({"system": system, "setting": setting, "params": params, "latency_ms": latency_summary(seconds),
                     "batch_qps": qps, "batch_threads": batch_threads, "recall": recall_at_k(found, truth, k)})

    def lsr(mode: str, system: str, setting: str, **kw) -> None:
        found, seconds = time_queries(lambda q: index.search(q[0], q[1], k=k, mode=mode, **kw)[0], queries,
                                      f"{system} {setting}")
        qps = batch_qps(lambda qs: index.search_batch(qs, k=k, threads=threads, mode=mode, **kw), queries)
        if mode == "exact":
            truth.extend(found)
        record(system, setting, {"mode": mode, **kw}, found, seconds, qps, threads)

    truth: list[np.ndarray] = []  # our exact top-k, filled by the first run
    lsr("exact", "lsr exact", "exact")
    lsr("bmp", "lsr bmp", "safe")
    for alpha, beta in parse_grid(args.bmp_grid):
        lsr("bmp-approx", "lsr bmp", f"alpha={alpha:g} beta={beta:g}", alpha=alpha, beta=beta)
    for query_cut, heap_factor in parse_grid(args.seismic_grid):
        lsr("seismic", "lsr seismic", f"qc={int(query_cut)} hf={heap_factor:g}", query_cut=int(query_cut),
            heap_factor=heap_factor)

    record("scipy", "brute force", {}, *scipy_run(index, queries, k), 1)

    if have["pyseismic-lsr"]:
        peer = SeismicPeer(str(work / "peer.index.seismic"))
        prepared = peer.prepare(queries)
        for query_cut, heap_factor in parse_grid(args.seismic_grid):
            qc, setting = int(query_cut), f"qc={int(query_cut)} hf={heap_factor:g}"
            found, seconds = time_queries(lambda q: peer.search(q, k, qc, heap_factor), prepared,
                                          f"pyseismic-lsr {setting}")
            qps = batch_qps(lambda qs: peer.search_batch(qs, k, qc, heap_factor, threads), prepared)
            record("pyseismic-lsr", setting, {"query_cut": qc, "heap_factor": heap_factor}, found, seconds, qps,
                   threads)
        del peer
    if have["bmp package"]:
        peer = BmpPeer(str(work / "peer.bmp"))
        prepared = peer.prepare(queries)
        for alpha, beta in [(1.0, 1.0)] + parse_grid(args.bmp_grid):
            setting = "safe" if alpha == beta == 1.0 else f"alpha={alpha:g} beta={beta:g}"
            found, seconds = time_queries(lambda q: peer.search(q, k, alpha, beta), prepared, f"bmp package {setting}")
            record("bmp package", setting, {"alpha": alpha, "beta": beta}, found, seconds, None, None)
        if peer.panics:
            notes.append(f"bmp package panicked on {peer.panics} query runs (counted as no hits).")
        del peer

    build_rows = {
        "lsr exact": (("lsr base",), sizes["base"]),
        "lsr bmp": (("lsr base", "lsr reorder", "lsr bmp"), sizes["base"] + sizes.get("bmp", 0)),
        "lsr seismic": (("lsr base", "lsr seismic"), sizes["base"] + sizes.get("seismic", 0)),
        "scipy": (("scipy",), builds["scipy"]["size_bytes"]),
        "pyseismic-lsr": (("pyseismic-lsr",), builds.get("pyseismic-lsr", {}).get("size_bytes")),
        "bmp package": (("bmp package",), builds.get("bmp package", {}).get("size_bytes")),
    }
    exact_ms = runs[0]["latency_ms"]["mean"]
    scipy_ms = next(r for r in runs if r["system"] == "scipy")["latency_ms"]["mean"]
    for r in runs:
        parts, size = build_rows[r["system"]]
        parts = [builds[p] for p in parts if p in builds]
        r["build"] = {"seconds": sum(p["seconds"] for p in parts), "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
                      "size_mb": size / 1e6}
        r["vs_exact"] = r["latency_ms"]["mean"] / exact_ms
        r["vs_scipy"] = r["latency_ms"]["mean"] / scipy_ms
    return {
        "name": name, "source": origin, "docs": index.num_docs, "postings": index.num_postings, "vocab_size": vocab,
        "queries": len(queries), "avg_query_terms": float(np.mean([len(t) for t, _ in queries])), "k": k,
        "threads": threads, "reorder": args.reorder, "structure_params": params, "sizes": sizes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_start": os.getloadavg()},
        "builds": builds, "runs": runs, "notes": notes,
    }


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(r: dict) -> str:
    """Markdown table of one result."""
    k = r["k"]
    lines = [
        f"### {r['name']}: {r['docs']} docs, {r['postings']} postings, {r['queries']} queries "
        f"({r['avg_query_terms']:.1f} terms), k = {k}",
        "",
        f"| system | setting | build s | size MB | peak MB | mean ms | p50 ms | p99 ms | batch q/s | R@{k} "
        f"| × exact | × scipy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in r["runs"]:
        b, lat = run["build"], run["latency_ms"]
        qps = _fmt(run["batch_qps"], ".0f")
        if run["batch_qps"] is not None and run["batch_threads"] != r["threads"]:
            qps += f" ({run['batch_threads']} thr)"
        lines.append(f"| {run['system']} | {run['setting']} | {b['seconds']:.2f} | {_fmt(b['size_mb'], '.1f')} | "
                     f"{b['peak_rss_mb']:.0f} | {lat['mean']:.3f} | {lat['p50']:.3f} | {lat['p99']:.3f} | {qps} | "
                     f"{run['recall']:.4f} | {run['vs_exact']:.2f} | {run['vs_scipy']:.3f} |")
    before = {name: round(b["rss_before_mb"]) for name, b in r["builds"].items()
              if not b.get("reused")}
    lines += ["", f"Latency: one query at a time on one thread. Batch: {r['threads']} threads. Builds: each in a fresh "
              f"child process; peak MB is its RSS high-water mark (VmHWM), which includes its interpreter and loaded "
              f"data (RSS before building, MB: {before}). lsr sizes: base index + structure; scipy: in-memory matrix. "
              f"Recall against lsr exact top-{k}."]
    lines += [f"- {note}" for note in r["notes"]]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    """Recall@k against mean latency (log x): every setting a point, one line per system through its Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for system in SYSTEMS:
        points = sorted((run["latency_ms"]["mean"], run["recall"]) for run in r["runs"] if run["system"] == system)
        if not points:
            continue
        front = [p for i, p in enumerate(points) if all(p[1] > q[1] for q in points[:i])]
        line, = ax.plot(*zip(*front), marker="o", label=system)
        ax.plot(*zip(*points), marker="o", linestyle="none", color=line.get_color(), alpha=0.35)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("mean latency per query, ms (1 thread, log scale)")
    ax.set_ylabel(f"Recall@{r['k']} vs exact")
    ax.set_title(f"{r['name']}: {r['docs']:,} docs, {r['queries']} queries")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
