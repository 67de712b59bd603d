"""Pruned search on a memory-mapped index against the same index opened with ``preload`` (huge-page copies).

    python -m lsr.eval.bench_preload --index DIR [--queries 100] [--modes seismic,bmp-approx]

Queries are documents' heaviest terms (``--query-terms``, default 44, the msmarco shape's query length), so any
index works without a model. Each variant runs every query twice in one process, one thread; the second (warm)
pass is reported as mean/p50/p99 with its ratio to the mapped index, next to the private memory the copies take.
Writes ``eval/results/preload-<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numba
import numpy as np

from lsr.eval.timing import latency_summary
from lsr.index import InvertedIndex

RESULTS = Path(__file__).parent / "results"


def private_mb() -> float:
    """This process's private memory (anonymous and private file pages), MB."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup") if ":" in line)
    return sum(int(fields[name].split()[0]) for name in ("Private_Clean", "Private_Dirty")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--name", default=None, help="Results name (default: the index directory's name).")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--query-terms", type=int, default=44)
    parser.add_argument("--modes", default="seismic,bmp-approx")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    numba.set_num_threads(1)
    modes = args.modes.split(",")
    rows, memory = {}, {}
    for preload in (False, True):
        before = private_mb()
        index = InvertedIndex.open(args.index, preload=preload)
        memory[preload] = private_mb() - before
        rng = np.random.default_rng(args.seed)
        queries = []
        for doc in rng.integers(0, index.num_docs, args.queries):
            terms, weights = index.doc_vector(int(doc))
            top = np.argsort(-weights, kind="stable")[:args.query_terms]
            queries.append((terms[top], weights[top]))
        for mode in modes:
            for _ in range(2):  # the second pass is the warm one
                seconds = []
                for terms, weights in queries:
                    started = time.perf_counter()
                    index.search(terms, weights, k=args.k, mode=mode)
                    seconds.append(time.perf_counter() - started)
            rows[(mode, preload)] = latency_summary(seconds)
        del index
    name = args.name or args.index.resolve().name
    result = {"index_docs": InvertedIndex.open(args.index).num_docs, "queries": args.queries,
              "query_terms": args.query_terms, "k": args.k,
              "preload_private_mb": memory[True] - memory[False],
              "runs": [{"mode": mode, "preload": preload, **rows[(mode, preload)]} for mode, preload in rows]}
    lines = [f"## Preload A/B: {name} ({result['index_docs']:,} documents), {args.queries} queries of "
             f"{args.query_terms} terms, k = {args.k}, one thread, warm pass", "",
             "| mode | arrays | mean ms | p50 ms | p99 ms | × mapped |", "|---|---|---:|---:|---:|---:|"]
    for mode in modes:
        base = rows[(mode, False)]["mean"]
        for preload in (False, True):
            r = rows[(mode, preload)]
            lines.append(f"| {mode} | {'preloaded (huge pages)' if preload else 'memory-mapped'} | "
                         f"{r['mean']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['mean'] / base:.2f} |")
    lines += ["", f"Private memory of the preloaded copies: {result['preload_private_mb']:,.0f} MB per process. "
              f"Command: `python -m lsr.eval.bench_preload --index DIR --queries {args.queries} --modes {args.modes}`."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"preload-{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"preload-{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
