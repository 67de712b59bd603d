"""Query encoding cost per runtime: torch fp32, ONNX fp32 and ONNX int8, for the SPLADE and the dense model.

    python -m lsr.eval.bench_query_encoders --queries ../shared/data/beir/scifact/queries.jsonl
        [--max-queries 300] [--models splade,dense] [--repeat 3] [--out eval/results/query-encoders.json]

One query at a time on one thread (torch intra-op threads = 1, ONNX Runtime intra-op threads = 1): p50/mean/p99
wall-clock latency of ``encode_query`` (tokenization included) after a warm-up, each query timed ``--repeat``
times and its fastest run kept (other processes on shared cores inflate single runs), plus the thread's CPU time,
and the per-query cost in batches of 32. Agreement
with torch: SPLADE term-set Jaccard overlap, the share of queries with the very same terms, the largest weight
difference on those; dense cosine similarity. Writes the JSON and a markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from lsr.corpus import read_queries
from lsr.eval.timing import latency_summary

RUNTIMES = ("torch", "onnx", "onnx-int8")


def make_encoder(model: str, runtime: str):
    """The query encoder of ``model`` (``splade`` or ``dense``, the embedded defaults) in ``runtime``, one thread."""
    if runtime == "torch":
        import torch

        torch.set_num_threads(1)
        if model == "splade":
            from lsr.encoder import SpladeEncoder

            return SpladeEncoder(device="cpu", threads=1)
        from lsr.dense import DenseEncoder

        return DenseEncoder(device="cpu")
    from lsr.onnx_encoders import OnnxDenseEncoder, OnnxSpladeEncoder

    cls = OnnxSpladeEncoder if model == "splade" else OnnxDenseEncoder
    return cls(int8=runtime == "onnx-int8", threads=1)


def time_queries(encoder, texts: list[str], repeat: int = 3, warmup: int = 20) -> tuple[list, dict, dict]:
    """Encode each text alone ``repeat`` times: (vectors, wall-clock latency summary, thread CPU-time summary) in ms,
    each query's time being its fastest repetition (robust to other processes on shared cores)."""
    for text in texts[:warmup]:
        encoder.encode_query(text)
    vectors, wall, cpu = [], [], []
    for text in texts:
        best_wall = best_cpu = float("inf")
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), time.thread_time()
            vector = encoder.encode_query(text)
            best_cpu = min(best_cpu, time.thread_time() - c0)
            best_wall = min(best_wall, time.perf_counter() - w0)
        vectors.append(vector)
        wall.append(best_wall)
        cpu.append(best_cpu)
    return vectors, latency_summary(wall, 3), latency_summary(cpu, 3)


def batch_ms_per_query(encoder, texts: list[str], batch_size: int = 32) -> float:
    """Mean cost per query when encoded in batches of ``batch_size`` (ms)."""
    started = time.perf_counter()
    encoder.encode_queries(texts, batch_size=batch_size)
    return round((time.perf_counter() - started) * 1000 / max(len(texts), 1), 3)


def sparse_agreement(reference: list, vectors: list) -> dict:
    """Term-set overlap of SPLADE vectors with the torch ones."""
    jaccard, same, max_diff = [], 0, 0.0
    for (ref_terms, ref_weights), (terms, weights) in zip(reference, vectors):
        a, b = set(ref_terms.tolist()), set(terms.tolist())
        jaccard.append(len(a & b) / len(a | b) if a | b else 1.0)
        if a == b:
            same += 1
            if len(terms):
                max_diff = max(max_diff, float(np.abs(np.asarray(weights) - np.asarray(ref_weights)).max()))
    return {"term_jaccard": round(float(np.mean(jaccard)), 4), "same_terms": round(same / len(reference), 4),
            "max_weight_diff_same_terms": max_diff,
            "nnz": round(float(np.mean([len(v[0]) for v in vectors])), 2)}


def dense_agreement(reference: list, vectors: list) -> dict:
    """Cosine similarity of dense query vectors with the torch ones."""
    cosine = np.array([float(np.dot(a, b)) for a, b in zip(reference, vectors)])
    return {"cosine_min": round(float(cosine.min()), 5), "cosine_mean": round(float(cosine.mean()), 5)}


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table."""
    lines = ["| model | runtime | p50 ms | mean ms | p99 ms | CPU p50 ms | batch-32 ms/query | agreement with torch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        agree = r["agreement"]
        text = (f"Jaccard {agree['term_jaccard']:.4f}, same terms {agree['same_terms']:.1%}" if "term_jaccard" in agree
                else f"cosine min {agree['cosine_min']:.4f}, mean {agree['cosine_mean']:.4f}")
        lines.append(f"| {r['model']} | {r['runtime']} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['mean']:.2f} | "
                     f"{r['latency_ms']['p99']:.2f} | {r['cpu_ms']['p50']:.2f} | {r['batch32_ms_per_query']:.2f} | "
                     f"{text} |")
    return "\n".join(lines) + "\n"


def run(queries: Path, max_queries: int, models: list[str], repeat: int = 3) -> dict:
    texts = [text for _, text in read_queries(queries)][:max_queries]
    rows = []
    for model in models:
        reference = None
        for runtime in RUNTIMES:
            encoder = make_encoder(model, runtime)
            vectors, wall, cpu = time_queries(encoder, texts, repeat)
            if runtime == "torch":
                reference = vectors
            agree = sparse_agreement if model == "splade" else dense_agreement
            rows.append({"model": model, "name": encoder.name, "runtime": runtime, "latency_ms": wall, "cpu_ms": cpu,
                         "batch32_ms_per_query": batch_ms_per_query(encoder, texts),
                         "agreement": agree(reference, vectors)})
            print(json.dumps(rows[-1]), flush=True)
    return {"queries": f"{queries.parent.name}/{queries.name}", "num_queries": len(texts), "threads": 1,
            "repeat": repeat, "rows": rows,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_average": [round(x, 2) for x in os.getloadavg()],
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=Path, required=True, help="BEIR queries.jsonl or id<TAB>text")
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--models", default="splade,dense", help="comma-separated: splade, dense")
    parser.add_argument("--repeat", type=int, default=3, help="runs per query; its fastest one counts")
    parser.add_argument("--out", type=Path, default=Path("eval/results/query-encoders.json"))
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"splade", "dense"}
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; known: splade, dense")
    result = run(args.queries, args.max_queries, models, args.repeat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result["rows"]))
    print(markdown(result["rows"]))


if __name__ == "__main__":
    main()
