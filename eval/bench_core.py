"""Core benchmark (issue 3): encoding, index build, size, memory and exact search vs baselines, in one run.

    python -m lsr.eval.bench_core --index /path/to/built/index --queries DATASET/queries.jsonl [--docs N]

* Encoding: our SpladeEncoder vs a plain ``transformers`` loop (fp32, batch 32, padded to the longest in the
  batch) on the same documents, with the largest relative weight difference between the two.
* Build from vectors: our IndexBuilder on the index's own (dequantized) vectors vs pyseismic-lsr's build on
  the same vectors (when the ``bench`` extra is installed); peak RSS of each build measured in a child process.
* Exact search: per-query latency (mean/p50/p99, one thread) and batch queries/s (all threads) vs scipy's
  sparse product + argpartition over the same quantized postings.
* Query encoding one query at a time on one thread: the SPLADE model vs inference-free (tokenizer + the index's
  IDF table, when the index has it).

Writes ``eval/results/bench_core_<name>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
import torch

from lsr.index import IndexBuilder, InvertedIndex
from lsr import Engine
from lsr.corpus import CorpusReader, read_queries
from lsr.engine import document_text
from lsr.evaluation.results import portable_path

from .peers import peak_rss_mb
from .timing import latency_summary, time_each

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------------------------- encoding
def plain_transformers_encode(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """The textbook SPLADE loop: full logits, activation on every cell, masked max over tokens."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")
            logits = model(**batch).logits
            weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
            rows.append(weights.max(dim=1).values.numpy())
    return np.concatenate(rows)


def bench_encoding(engine: Engine, corpus: Path, n_docs: int) -> dict:
    from transformers import AutoModelForMaskedLM

    encoder = engine.encoder
    docs = [d for _, d in zip(range(n_docs), CorpusReader(corpus))]
    texts = [document_text(d) for d in docs]
    encoder.encode_documents(texts[:64])  # warm-up
    started = time.perf_counter()
    ours = encoder.encode_documents(texts, batch_size=32)
    ours_s = time.perf_counter() - started
    plain_model = AutoModelForMaskedLM.from_pretrained(encoder.ref.path).eval()
    plain_transformers_encode(plain_model, encoder.tokenizer, texts[:64], encoder.doc_max_length)
    started = time.perf_counter()
    plain = plain_transformers_encode(plain_model, encoder.tokenizer, texts, encoder.doc_max_length)
    plain_s = time.perf_counter() - started
    worst, same_top = 0.0, 0
    for i in range(len(texts)):
        terms, weights = ours.row(i)
        dense = np.zeros(plain.shape[1], np.float32)
        dense[terms] = weights
        worst = max(worst, float(np.abs(dense - plain[i]).max() / max(plain[i].max(), 1e-9)))
        same_top += set(np.argsort(-dense)[:10]) == set(np.argsort(-plain[i])[:10])
    return {
        "docs": len(texts),
        "ours_docs_per_s": len(texts) / ours_s,
        "plain_docs_per_s": len(texts) / plain_s,
        "speedup": plain_s / ours_s,
        "max_relative_weight_diff": worst,
        "identical_top10_fraction": same_top / len(texts),
    }


# ---------------------------------------------------------------------------------------------- building
def forward_vectors(index: InvertedIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index's document vectors (CSR, dequantized float32)."""
    return (np.asarray(index.array("forward_offsets")), np.asarray(index.array("forward_terms")),
            np.asarray(index.array("forward_impacts"), np.float32) * np.float32(index.scale))


def _build_ours(vectors_path: str, vocab_size: int, out_dir: str, queue) -> None:
    data = np.load(vectors_path)
    started = time.perf_counter()
    builder = IndexBuilder(Path(out_dir), vocab_size)
    indptr, terms, weights = data["indptr"], data["terms"], data["weights"]
    step = 50_000
    for lo in range(0, len(indptr) - 1, step):
        hi = min(lo + step, len(indptr) - 1)
        builder.add(indptr[lo : hi + 1] - indptr[lo], terms[indptr[lo] : indptr[hi]], weights[indptr[lo] : indptr[hi]])
    builder.finalize()
    queue.put({"seconds": time.perf_counter() - started,
               "peak_rss_mb": peak_rss_mb()})


def _build_seismic(vectors_path: str, vocab_size: int, out_dir: str, queue) -> None:
    from lsr.eval.peers import seismic_build

    queue.put(seismic_build(vectors_path, vocab_size))


def measure_build(target, vectors_path: Path, vocab_size: int) -> dict | None:
    """Run a build in a fresh child process (so peak RSS is the build's own)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as out_dir:
        proc = ctx.Process(target=target, args=(str(vectors_path), vocab_size, out_dir, queue))
        proc.start()
        proc.join()
        return queue.get() if proc.exitcode == 0 and not queue.empty() else None


# ---------------------------------------------------------------------------------------------- search
def scipy_topk(matrix: sp.csr_matrix, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    top = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]


def bench_search(index: InvertedIndex, queries: list[tuple[np.ndarray, np.ndarray]], k: int) -> dict:
    n, vocab = index.num_docs, index.vocab_size
    indptr, terms, weights = forward_vectors(index)
    matrix = sp.csr_matrix((weights, terms, indptr), shape=(n, vocab))
    dense_queries = []
    for t, w in queries:
        q = np.zeros(vocab, np.float32)
        q[t] = w
        dense_queries.append(q)
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    index.search(*queries[0], k=k)  # compile/warm
    ours, base, agree = [], [], 0
    for (t, w), q in zip(queries, dense_queries):
        started = time.perf_counter()
        ids, _ = index.search(t, w, k=k)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        expected = scipy_topk(matrix, q, k)
        base.append(time.perf_counter() - started)
        agree += len(set(ids.tolist()) & set(expected.tolist())) / max(len(expected), 1)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    index.search_batch(queries[:8], k=k)
    started = time.perf_counter()
    index.search_batch(queries, k=k)
    batch_s = time.perf_counter() - started
    query_matrix = sp.csr_matrix(np.stack(dense_queries))
    started = time.perf_counter()
    scores = (matrix @ query_matrix.T).toarray()
    for column in range(scores.shape[1]):
        top = np.argpartition(-scores[:, column], k)[:k]
        top[np.lexsort((top, -scores[top, column]))]
    scipy_batch_s = time.perf_counter() - started
    ours_lat, base_lat = latency_summary(ours), latency_summary(base)
    return {
        "queries": len(queries), "k": k,
        "ours_ms": ours_lat, "scipy_ms": base_lat, "latency_ratio_mean": ours_lat["mean"] / base_lat["mean"],
        "ours_batch_qps": len(queries) / batch_s, "scipy_batch_qps": len(queries) / scipy_batch_s,
        "batch_ratio": batch_s / scipy_batch_s, "threads_batch": numba.config.NUMBA_NUM_THREADS,
        "overlap_with_scipy_topk": agree / len(queries),
    }


# ---------------------------------------------------------------------------------------------- query encoders
def bench_query_encoders(engine: Engine, texts: list[str]) -> dict:
    """Per-query encoding latency (one at a time, one thread) of the model and of inference-free queries."""
    torch.set_num_threads(1)
    _, model = time_each(engine.encoder.encode_query, texts)
    out = {"queries": len(texts), "model_ms": latency_summary(model), "inference_free_ms": None, "speedup": None}
    if engine.manifest.get("inference_free"):
        _, free = time_each(engine.inference_free.encode_query, texts)
        out["inference_free_ms"] = latency_summary(free)
        out["speedup"] = out["model_ms"]["mean"] / out["inference_free_ms"]["mean"]
    return out


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="A built lsr index.")
    parser.add_argument("--queries", type=Path, required=True, help="queries.jsonl or TSV.")
    parser.add_argument("--name", default=None, help="Result name (default: index dir name).")
    parser.add_argument("--docs", type=int, default=1000, help="Documents for the encoding comparison.")
    parser.add_argument("--max-queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    engine = Engine.open(args.index)
    name = args.name or args.index.name
    info = engine.info()
    result: dict = {"name": name, "index": {**info, "index": portable_path(info["index"]),
                                            "corpus": info["corpus"] and portable_path(info["corpus"])}}
    print(f"[{name}] encoding benchmark on {args.docs} documents …", flush=True)
    result["encoding"] = bench_encoding(engine, Path(engine.manifest["corpus"]), args.docs)

    with tempfile.TemporaryDirectory() as tmp:
        vectors = Path(tmp) / "vectors.npz"
        indptr, terms, weights = forward_vectors(engine.index)
        np.savez(vectors, indptr=indptr, terms=terms, weights=weights)
        print(f"[{name}] build from vectors: ours …", flush=True)
        result["build_ours"] = measure_build(_build_ours, vectors, engine.index.vocab_size)
        print(f"[{name}] build from vectors: pyseismic-lsr …", flush=True)
        result["build_seismic"] = measure_build(_build_seismic, vectors, engine.index.vocab_size)

    texts = [text for _, text in read_queries(args.queries)][: args.max_queries]
    started = time.perf_counter()
    queries = engine.query_vectors(texts)
    result["query_encoding_ms_per_query"] = (time.perf_counter() - started) * 1000 / len(texts)
    print(f"[{name}] exact search on {len(texts)} queries …", flush=True)
    result["search"] = bench_search(engine.index, queries, args.k)
    print(f"[{name}] query encoding, model vs inference-free …", flush=True)
    result["query_encoders"] = bench_query_encoders(engine, texts)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_core_{name}.json").write_text(json.dumps(result, indent=2))
    print(render(result))


def render(r: dict) -> str:
    """Markdown summary of one result."""
    e, s, info = r["encoding"], r["search"], r["index"]
    ours_b, seis_b = r["build_ours"], r["build_seismic"]
    lines = [
        f"### {r['name']}: {info['documents']} docs, {info['postings']} postings, {info['size_bytes'] / 1e6:.1f} MB on disk",
        "",
        "| measure | lsr | baseline | ratio |",
        "|---|---|---|---|",
        f"| encoding docs/s ({e['docs']} docs) | {e['ours_docs_per_s']:.1f} | {e['plain_docs_per_s']:.1f} (plain transformers loop) | {e['speedup']:.2f}× faster |",
        f"| exact search ms/query mean (1 thread) | {s['ours_ms']['mean']:.3f} | {s['scipy_ms']['mean']:.3f} (scipy) | {s['latency_ratio_mean']:.3f} |",
        f"| exact search p50 / p99 ms | {s['ours_ms']['p50']:.3f} / {s['ours_ms']['p99']:.3f} | {s['scipy_ms']['p50']:.3f} / {s['scipy_ms']['p99']:.3f} | |",
        f"| batch queries/s ({s['threads_batch']} threads) | {s['ours_batch_qps']:.0f} | {s['scipy_batch_qps']:.0f} (scipy) | {s['batch_ratio']:.3f} |",
    ]
    if ours_b:
        seis = f"{seis_b['seconds']:.2f} s, {seis_b['peak_rss_mb']:.0f} MB (pyseismic-lsr)" if seis_b else "n/a"
        ratio = f"{ours_b['seconds'] / seis_b['seconds']:.2f}" if seis_b else ""
        lines.append(f"| build from vectors: time, peak RSS | {ours_b['seconds']:.2f} s, {ours_b['peak_rss_mb']:.0f} MB | {seis} | {ratio} |")
    qe = r.get("query_encoders")
    if qe and qe["inference_free_ms"]:
        lines.append(f"| query encoding ms/query mean (1 thread) | {qe['inference_free_ms']['mean']:.3f} (inference-free) | "
                     f"{qe['model_ms']['mean']:.3f} (SPLADE model) | {qe['speedup']:.0f}× faster |")
    lines += ["", f"Encoding: max relative weight difference {e['max_relative_weight_diff']:.2e}, identical top-10 terms for "
              f"{e['identical_top10_fraction']:.1%} of documents. Query encoding {r['query_encoding_ms_per_query']:.2f} ms/query (batched)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
