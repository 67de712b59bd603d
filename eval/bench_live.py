"""What a live index costs: search latency over segments with deletions, against the same index compacted.

    python -m lsr.eval.bench_live --index DIR --queries queries.jsonl [--segments 4] [--docs-per-segment 250]
        [--deletes 1000] [--max-queries 1000] [--modes exact,bmp] [--name NAME]

Works on a copy of ``--index`` (never modified). Adds ``--segments`` segments, each re-indexing
``--docs-per-segment`` documents already in the index with ``update=True`` (so each also tombstones the old
versions), then deletes ``--deletes`` more documents. Measures, one thread, per query: the latency of every
mode on the single-segment copy, on the live index, and after ``lsr compact``; checks that the live index and the
compacted one return the same ids and scores; and times the writes and the compaction.
Writes ``eval/results/bench_live_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lsr.eval.timing import latency_summary, time_each
from lsr import Engine
from lsr.corpus import Document, read_queries
from lsr.evaluation.results import portable_path
from lsr.live import compact


def time_queries(engine: Engine, vectors, mode: str, k: int = 10) -> tuple[dict, list]:
    """Per-query latency (ms, one thread) and results of ``engine.index.search`` in ``mode``."""
    results, seconds = time_each(lambda v: engine.index.search(v[0], v[1], k=k, mode=mode), vectors, warmup=20)
    return latency_summary(seconds, 4), [(ids.tolist(), scores.tolist()) for ids, scores in results]


def _named(engine: Engine, results: list) -> list:
    """Results with external ids instead of internal numbers."""
    out = []
    for ids, scores in results:
        headers = engine.docs.headers(ids)
        out.append(([headers[i][0] for i in ids], scores))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--queries", required=True, type=Path)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--docs-per-segment", type=int, default=250)
    parser.add_argument("--deletes", type=int, default=1000)
    parser.add_argument("--max-queries", type=int, default=1000)
    parser.add_argument("--modes", default="exact,bmp")
    parser.add_argument("--name", default="live")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    import numba

    numba.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="lsr-bench-live-", dir=args.workdir))
    index = scratch / "index"
    started = time.time()
    shutil.copytree(args.index, index)
    engine = Engine.open(index)
    modes = [m for m in args.modes.split(",") if m == "exact" or m in engine.manifest.get("structures", {})
             or (m == "bmp-approx" and "bmp" in engine.manifest.get("structures", {}))]
    queries = [text for _, text in read_queries(args.queries)][: args.max_queries]
    vectors = engine.query_vectors(queries)
    report: dict = {"index": portable_path(args.index), "documents": engine.index.num_docs, "queries": len(queries),
                    "modes": modes, "latency_ms": {}}
    report["latency_ms"]["single"] = {m: time_queries(engine, vectors, m)[0] for m in modes}

    rng = np.random.default_rng(0)
    order = rng.permutation(engine.index.num_docs)
    per = args.docs_per_segment
    writes = []
    for s in range(args.segments):
        docnos = order[s * per:(s + 1) * per]
        docs = [engine.docs.get(int(d)) for d in docnos]
        docs = [Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata) for d in docs]
        t0 = time.time()
        result = engine.add_documents(docs, update=True)
        writes.append({"op": "add --update", "documents": result["added"], "seconds": round(time.time() - t0, 2)})
        engine = engine.refresh()
    victims = [engine.docs.get(int(d)).id for d in order[args.segments * per: args.segments * per + args.deletes]]
    t0 = time.time()
    engine.delete_documents(victims)
    writes.append({"op": "delete", "documents": len(victims), "seconds": round(time.time() - t0, 2)})
    engine = engine.refresh()
    info = engine.info()
    report["live"] = {"segments": info["segments"], "deleted": info["deleted"], "documents": info["documents"]}
    report["writes"] = writes
    live_results = {}
    report["latency_ms"]["live"] = {}
    for m in modes:
        report["latency_ms"]["live"][m], live_results[m] = time_queries(engine, vectors, m)

    t0 = time.time()
    compact(index, progress=True)
    report["compact_seconds"] = round(time.time() - t0, 2)
    compacted = engine.refresh()
    report["latency_ms"]["compacted"] = {}
    report["live_equals_compacted"] = {}
    for m in modes:
        report["latency_ms"]["compacted"][m], results = time_queries(compacted, vectors, m)
        # global numbers differ after compaction: compare external ids and scores
        same = _named(compacted, results) == _named(engine, live_results[m])
        report["live_equals_compacted"][m] = same
    report["ratio_live_to_single"] = {m: round(report["latency_ms"]["live"][m]["mean"]
                                               / report["latency_ms"]["single"][m]["mean"], 2) for m in modes}
    report["seconds"] = round(time.time() - started, 1)
    out = Path(__file__).resolve().parent / "results" / f"bench_live_{args.name}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
