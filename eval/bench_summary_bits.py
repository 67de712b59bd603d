"""Seismic summaries with 4-bit codes (two per byte) against 8-bit ones, on one synthetic collection.

The base index is built once; two copies get a Seismic structure that differs only in ``summary_bits``. Both
answer the same queries in one process on one thread, alternating query by query, over a grid of search knobs::

    python -m lsr.eval.bench_summary_bits --docs 1000000 --shape msmarco [--work DIR]

Reports bytes per document (summaries, the structure, every array of the index), latency mean/p50/p99, Recall@10
against exact search, the ratio to 8-bit codes at the same knobs and the fastest setting of each at Recall@10 >=
0.95 and 0.97. Writes ``eval/results/summary-bits-<shape>-<N>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numba
from tqdm.auto import tqdm

from lsr.eval.bench_pruning import add_vectors
from lsr.eval.bench_scale import count_label
from lsr.eval.synthetic import SHAPES, VOCAB, generate
from lsr.eval.timing import latency_summary
from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.structures import add_structure

RESULTS = Path(__file__).parent / "results"
WARMUP = 10
GRID = [{"query_cut": qc, "heap_factor": hf} for qc in (8, 10) for hf in (0.6, 0.7, 0.8)]
SUMMARY_ARRAYS = ("seismic_sum_terms", "seismic_sum_values", "seismic_sum_offsets", "seismic_block_step")


def build(out: Path, docs: int, shape: str, queries: int, seed: int) -> list:
    """Build the base index into ``out/base`` and its two Seismic copies ``out/bits8``, ``out/bits4``."""
    indptr, terms, weights, qs = generate(shape, docs, queries, seed)
    builder = IndexBuilder(out / "base", VOCAB)
    add_vectors(builder, indptr, terms, weights, docs, progress=True)
    builder.finalize()
    del indptr, terms, weights
    for bits in (8, 4):
        shutil.copytree(out / "base", out / f"bits{bits}")
        started = time.perf_counter()
        add_structure(InvertedIndex.open(out / f"bits{bits}"), "seismic", summary_bits=bits)
        print(f"seismic with {bits}-bit summaries built in {time.perf_counter() - started:.1f} s")
    return qs


def sizes(index: InvertedIndex) -> dict[str, float]:
    """Bytes per document of the summaries, the Seismic structure and the whole index."""
    arrays = index.manifest["arrays"]
    per_doc = {"summaries": sum(index.array(n).nbytes for n in SUMMARY_ARRAYS),
               "seismic": sum(index.array(n).nbytes for n in arrays if n.startswith("seismic_")),
               "index": sum(index.array(n).nbytes for n in arrays)}
    return {key: value / index.num_docs for key, value in per_doc.items()}


def fastest(rows: list[dict], variant: str, target: float) -> dict | None:
    """The lowest-mean setting of ``variant`` at Recall@10 >= ``target``."""
    ok = [row for row in rows if row["variant"] == variant and row["recall"] >= target]
    return min(ok, key=lambda row: row["latency_ms"]["mean"]) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="msmarco")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None, help="Build directory (default: a temporary one).")
    args = parser.parse_args()
    numba.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_summary_bits_") as tmp:
        work = args.work or Path(tmp)
        queries = build(work, args.docs, args.shape, args.queries, args.seed)
        indexes = {"8-bit": InvertedIndex.open(work / "bits8"), "4-bit": InvertedIndex.open(work / "bits4")}
        exact = [set(indexes["8-bit"].search(t, w, k=args.k)[0].tolist()) for t, w in queries]
        rows = []
        for knobs in tqdm(GRID, desc="settings", dynamic_ncols=True):
            for index in indexes.values():
                for terms, weights in queries[:WARMUP]:
                    index.search(terms, weights, k=args.k, mode="seismic", **knobs)
            seconds = {name: [] for name in indexes}
            hits = {name: 0.0 for name in indexes}
            for i, (terms, weights) in enumerate(queries):
                for name in (list(indexes) if i % 2 else list(indexes)[::-1]):
                    started = time.perf_counter()
                    ids, _ = indexes[name].search(terms, weights, k=args.k, mode="seismic", **knobs)
                    seconds[name].append(time.perf_counter() - started)
                    hits[name] += len(exact[i] & set(ids.tolist())) / max(1, len(exact[i]))
            for name in indexes:
                rows.append({"variant": name, **knobs, "latency_ms": latency_summary(seconds[name]),
                             "recall": hits[name] / len(queries)})
            base = rows[-2]["latency_ms"]["mean"]
            for row in rows[-2:]:
                row["mean_ratio"] = row["latency_ms"]["mean"] / base
        result = {"docs": args.docs, "shape": args.shape, "queries": len(queries), "k": args.k,
                  "sizes": {name: sizes(index) for name, index in indexes.items()},
                  "summary_entries": {name: index.manifest["structures"]["seismic"]["params"]["stats"][
                      "summary_entries"] for name, index in indexes.items()},
                  "rows": rows,
                  "fastest": {f"{name}@{target}": fastest(rows, name, target)
                              for name in indexes for target in (0.95, 0.97)}}
    name = f"summary-bits-{args.shape}-{count_label(args.docs)}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"## Seismic summary codes: {args.docs:,} {args.shape}-shaped documents, {len(queries)} queries, "
             f"k = {args.k}, one thread", "", "| codes | summaries B/doc | seismic B/doc | index B/doc |",
             "|---|---:|---:|---:|"]
    for label, size in result["sizes"].items():
        lines.append(f"| {label} | {size['summaries']:,.0f} | {size['seismic']:,.0f} | {size['index']:,.0f} |")
    lines += ["", "| codes | query_cut | heap_factor | mean ms | p50 ms | p99 ms | R@10 | × 8-bit |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lat = row["latency_ms"]
        lines.append(f"| {row['variant']} | {row['query_cut']} | {row['heap_factor']} | {lat['mean']:.3f} | "
                     f"{lat['p50']:.3f} | {lat['p99']:.3f} | {row['recall']:.4f} | {row['mean_ratio']:.2f} |")
    lines += ["", "Fastest setting at Recall@10 >= target:", ""]
    for key, row in result["fastest"].items():
        lines.append(f"- {key}: " + ("none" if row is None else
                     f"qc {row['query_cut']} hf {row['heap_factor']}: {row['latency_ms']['mean']:.3f} ms "
                     f"(R@10 {row['recall']:.4f})"))
    lines += ["", f"Command: `python -m lsr.eval.bench_summary_bits --docs {args.docs} --shape {args.shape}`."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
