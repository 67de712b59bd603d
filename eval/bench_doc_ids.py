"""Posting doc ids in 16 bits (format 3: low halves + runs, :mod:`index.docids`) against uint32 ids (format 2).

One synthetic collection is built once; a copy of its index is rewritten with the uint32 ids format 2 stored. Both
answer the same queries in one process, one thread, the two formats alternating query by query, so the ratio is
measured in one run on one machine state::

    python -m lsr.eval.bench_doc_ids --docs 1000000 --shape msmarco [--reorder bp] [--work DIR]

Reports bytes per document of the doc ids (and of the whole base index), exact-search latency mean/p50/p99 and the
ratio, and checks that both return the same top-k. Writes ``eval/results/doc-ids-<shape>-<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from tqdm.auto import tqdm

from lsr.eval.bench_pruning import add_vectors
from lsr.eval.bench_scale import count_label
from lsr.eval.synthetic import SHAPES, VOCAB, generate
from lsr.eval.timing import latency_summary
from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.docids import RUN_ARRAYS
from lsr.index.reorder import reorder_index
from lsr.index.storage import read_manifest, write_array, write_manifest

RESULTS = Path(__file__).parent / "results"
WARMUP = 10


def build(out: Path, docs: int, shape: str, queries: int, seed: int, reorder: str | None) -> list:
    """Build the 16-bit index into ``out/new`` and its uint32 twin into ``out/old``; return the queries."""
    indptr, terms, weights, qs = generate(shape, docs, queries, seed)
    builder = IndexBuilder(out / "new", VOCAB)
    add_vectors(builder, indptr, terms, weights, docs, progress=True)
    builder.finalize()
    del indptr, terms, weights
    if reorder:
        reorder_index(out / "new", reorder)
    shutil.copytree(out / "new", out / "old")
    manifest = read_manifest(out / "old")
    manifest["arrays"]["postings_docs"] = write_array(out / "old", "postings_docs",
                                                      InvertedIndex.open(out / "new").postings_docs())
    for name in RUN_ARRAYS:
        (out / "old" / manifest["arrays"].pop(name)["file"]).unlink()
    manifest["format_version"] = 2
    write_manifest(out / "old", manifest)
    return qs


def doc_id_bytes(index: InvertedIndex) -> int:
    """Bytes of the doc ids: the ids and, in 16 bits, their runs."""
    names = ("postings_docs", *RUN_ARRAYS) if index.array("postings_docs").dtype == np.uint16 else ("postings_docs",)
    return sum(index.array(name).nbytes for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="msmarco")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--reorder", choices=("bp", "terms"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None, help="Build directory (default: a temporary one).")
    args = parser.parse_args()
    numba.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_doc_ids_") as tmp:
        work = args.work or Path(tmp)
        queries = build(work, args.docs, args.shape, args.queries, args.seed, args.reorder)
        new, old = InvertedIndex.open(work / "new"), InvertedIndex.open(work / "old")
        indexes = {"uint32 ids (format 2)": old, "16-bit ids + runs (format 3)": new}
        for index in indexes.values():
            for terms, weights in queries[:WARMUP]:
                index.search(terms, weights, k=args.k)
        seconds = {name: [] for name in indexes}
        same = 0
        for i, (terms, weights) in enumerate(tqdm(queries, desc="queries", unit="q", dynamic_ncols=True)):
            found = {}
            for name in (list(indexes) if i % 2 else list(indexes)[::-1]):
                started = time.perf_counter()
                found[name] = indexes[name].search(terms, weights, k=args.k)
                seconds[name].append(time.perf_counter() - started)
            a, b = found.values()
            same += bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
        rows = {}
        for name, index in indexes.items():
            base = sum(index.array(n).nbytes for n in index.manifest["arrays"])
            rows[name] = {"doc_id_bytes_per_doc": doc_id_bytes(index) / index.num_docs,
                          "doc_id_bytes_per_posting": doc_id_bytes(index) / index.num_postings,
                          "base_bytes_per_doc": base / index.num_docs,
                          "latency_ms": latency_summary(seconds[name])}
        baseline = rows["uint32 ids (format 2)"]["latency_ms"]["mean"]
        for row in rows.values():
            row["mean_ratio"] = row["latency_ms"]["mean"] / baseline
        runs = new.postings_runs()[1].shape[0]
        result = {"docs": args.docs, "shape": args.shape, "reorder": args.reorder, "queries": len(queries),
                  "k": args.k, "postings": new.num_postings, "runs": runs, "same_top_k": same, "rows": rows}
    name = f"doc-ids-{args.shape}-{count_label(args.docs)}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"## Posting doc ids: {args.docs:,} {args.shape}-shaped documents, {result['postings']:,} postings, "
             f"{runs:,} runs, {len(queries)} queries, k = {args.k}, exact search, one thread", "",
             "| doc ids | bytes/doc (ids) | bytes/posting (ids) | base index bytes/doc | mean ms | p50 ms | p99 ms "
             "| × uint32 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, row in rows.items():
        lat = row["latency_ms"]
        lines.append(f"| {label} | {row['doc_id_bytes_per_doc']:,.0f} | {row['doc_id_bytes_per_posting']:.2f} | "
                     f"{row['base_bytes_per_doc']:,.0f} | {lat['mean']:.3f} | {lat['p50']:.3f} | {lat['p99']:.3f} | "
                     f"{row['mean_ratio']:.2f} |")
    lines += ["", f"Same top-{args.k} (ids and scores) on {same} of {len(queries)} queries. Command: "
              f"`python -m lsr.eval.bench_doc_ids --docs {args.docs} --shape {args.shape}"
              + (f" --reorder {args.reorder}" if args.reorder else "") + "`."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
