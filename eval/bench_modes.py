"""Latency and Recall@k of every search mode of an existing index, on query vectors, one thread.

    python -m lsr.eval.bench_modes --index DIR --queries queries.jsonl [--max-queries 200] [--preload] \
        [--name msmarco-8800k]

``--queries`` is a vectors JSONL (``{"id", "vector": {token: weight}}``, as written by ``python -m
lsr.eval.synthetic`` or ``lsr encode``), its tokens mapped to the index model's vocabulary. Every mode the index
serves runs at its default knobs over all queries ``--passes`` times (the first passes warm the page cache; the
last is reported): latency mean/p50/p99 and its ratio to exact search, Recall@k against exact search. The time to
open the index is reported too. Writes ``eval/results/modes-<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numba
import numpy as np
from tqdm.auto import tqdm

from lsr.eval.timing import latency_summary
from lsr.index import InvertedIndex
from lsr.index.structures import MODES
from lsr.models import resolve_model
from lsr.vectors import read_vectors

RESULTS = Path(__file__).parent / "results"


def load_queries(path: Path, index: InvertedIndex, limit: int | None,
                 offset: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(term ids, weights) of ``limit`` query vectors of ``path`` after the first ``offset``, in the index model's
    vocabulary."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(resolve_model(index.manifest["model"]["name"]).path)).get_vocab()
    queries = []
    for i, (_, vector) in enumerate(read_vectors(path)):
        if limit is not None and len(queries) == limit:
            break
        if i < offset:
            continue
        terms = np.array([vocab[token] for token in vector], np.int64)
        queries.append((terms, np.array(list(vector.values()), np.float32)))
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="Query vectors JSONL.")
    parser.add_argument("--max-queries", type=int, default=200)
    parser.add_argument("--skip-queries", type=int, default=0, help="Start after this many queries of the file.")
    parser.add_argument("--passes", type=int, default=2, help="Passes over the queries per mode (the last reported).")
    parser.add_argument("--preload", action="store_true", help="Open the index with preload=True.")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--name", default=None, help="Results name (default: the index directory's name).")
    args = parser.parse_args()
    numba.set_num_threads(1)
    started = time.perf_counter()
    index = InvertedIndex.open(args.index, preload=args.preload)
    open_s = time.perf_counter() - started
    queries = load_queries(args.queries, index, args.max_queries, args.skip_queries)
    built = set(index.manifest.get("structures", {}))
    modes = [mode for mode, needs in MODES.items() if needs is None or needs in built]  # exact first
    found: dict[str, list[np.ndarray]] = {}
    rows = {}
    for mode in modes:
        for _ in range(args.passes):
            seconds, found[mode] = [], []
            for terms, weights in tqdm(queries, desc=mode, unit="q", dynamic_ncols=True, leave=False):
                t0 = time.perf_counter()
                ids, _ = index.search(terms, weights, args.k, mode=mode)
                seconds.append(time.perf_counter() - t0)
                found[mode].append(ids)
        recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / max(1, len(e))
                          for a, e in zip(found[mode], found["exact"])])
        rows[mode] = {"latency_ms": latency_summary(seconds), "recall": float(recall)}
        rows[mode]["mean_ratio"] = rows[mode]["latency_ms"]["mean"] / rows["exact"]["latency_ms"]["mean"]
        print(f"{mode:12} {rows[mode]['latency_ms']}  R@{args.k} {recall:.4f}")
    name = args.name or args.index.name
    result = {"docs": int(index.num_docs), "postings": int(index.num_postings), "queries": len(queries),
              "avg_query_terms": float(np.mean([t.size for t, _ in queries])), "k": args.k, "preload": args.preload,
              "skip_queries": args.skip_queries, "open_s": open_s, "passes": args.passes, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"modes-{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"## Search modes: {result['docs']:,} documents, {len(queries)} queries "
             f"({result['avg_query_terms']:.1f} terms), k = {args.k}, one thread, pass {args.passes} of "
             f"{args.passes}" + (", forward arrays preloaded" if args.preload else ""), "",
             "| mode (default knobs) | mean ms | p50 ms | p99 ms | × exact | R@10 |", "|---|---:|---:|---:|---:|---:|"]
    for mode, row in rows.items():
        lat = row["latency_ms"]
        lines.append(f"| {mode} | {lat['mean']:.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {row['mean_ratio']:.2f} "
                     f"| {row['recall']:.4f} |")
    lines += ["", f"Index opened in {open_s * 1000:.0f} ms. Command: `python -m lsr.eval.bench_modes --index DIR "
              f"--queries QUERIES --max-queries {args.max_queries} --skip-queries {args.skip_queries} --passes "
              f"{args.passes}" + (" --preload" if args.preload else "") + "`."]
    (RESULTS / f"modes-{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
