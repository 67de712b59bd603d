"""Knob sweep behind the default search/build settings (issue 15): Seismic's posting budget λ against its search
knobs, and bmp-approx's alpha x beta, on a synthetic collection of one shape.

    python -m lsr.eval.sweep_defaults --docs 200000 --shape msmarco --n-postings 512,1024,1562,3000
    python -m lsr.eval.sweep_defaults --docs 200000 --shape project --work DIR     # reuse DIR's index

One base index (BP-reordered) and one BMP structure; Seismic is rebuilt for every λ (each build in a fresh child
process: time, VmHWM, bytes per document). Every setting: mean/p99 latency one query at a time on one thread and
Recall@k against exact. Reports, per λ and for bmp-approx, the fastest setting at Recall@k >= each ``--targets``.
Writes ``eval/results/defaults-<shape>-<N>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numba
import numpy as np

from lsr.eval.bench_pruning import RESULTS, index_sizes, recall_at_k, run_child, time_queries
from lsr.eval.bench_scale import count_label
from lsr.eval.synthetic import SHAPES, VOCAB, generate
from lsr.eval.timing import latency_summary
from lsr.index import InvertedIndex
from lsr.index.seismic import auto_n_postings

ME = "lsr.eval.bench_pruning"


def best_at(rows: list[dict], target: float, by: str) -> dict | None:
    """The fastest row (``by``: "mean_ms" or "p50_ms") with recall >= target."""
    ok = [r for r in rows if r["recall"] >= target]
    return min(ok, key=lambda r: r[by]) if ok else None


def sweep(index_dir: Path, queries: list, k: int, mode: str, grid: list[dict], truth: list) -> list[dict]:
    """Latency and recall of every knob setting of ``mode`` on the index in ``index_dir``."""
    index = InvertedIndex.open(index_dir)
    rows = []
    for params in grid:
        found, seconds = time_queries(lambda q: index.search(q[0], q[1], k=k, mode=mode, **params)[0], queries,
                                      f"{mode} {params}")
        lat = latency_summary(seconds)
        rows.append({"params": params, "mean_ms": lat["mean"], "p50_ms": lat["p50"], "p99_ms": lat["p99"],
                     "recall": recall_at_k(found, truth, k)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="msmarco")
    parser.add_argument("--max-queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="Build threads.")
    parser.add_argument("--work", type=Path, default=None, help="Build directory; an index already there is reused.")
    parser.add_argument("--n-postings", default=None,
                        help="Seismic λ values, comma separated (default: 512, auto_n_postings(N), 2 x that).")
    parser.add_argument("--query-cuts", default="5,8,10,12,16")
    parser.add_argument("--heap-factors", default="0.8,0.9,1.0")
    parser.add_argument("--alphas", default="1,0.95,0.9,0.85")
    parser.add_argument("--betas", default="1,0.85,0.7,0.6,0.5")
    parser.add_argument("--targets", default="0.95,0.97")
    parser.add_argument("--rank-by", choices=("p50", "mean"), default="p50",
                        help="Latency that ranks settings (p50: robust to other processes on a shared machine).")
    parser.add_argument("--render", type=Path, default=None, help="Only re-render this sweep's JSON to Markdown.")
    args = parser.parse_args()
    if args.render is not None:
        text = render(json.loads(args.render.read_text()), [float(x) for x in args.targets.split(",")],
                      f"{args.rank_by}_ms")
        args.render.with_suffix(".md").write_text(text + "\n")
        print(text)
        return
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="sweep_defaults_") as tmp:
            run(args, Path(tmp))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        run(args, args.work)


def run(args, work: Path) -> None:
    floats = lambda text: [float(x) for x in text.split(",") if x]  # noqa: E731
    n, k = args.docs, args.k
    lams = ([int(x) for x in args.n_postings.split(",")] if args.n_postings
            else sorted({512, auto_n_postings(n), 2 * auto_n_postings(n)}))
    indptr, terms, weights, queries = generate(args.shape, n, args.max_queries, args.seed)
    lsr_dir = work / "lsr"
    builds = {}
    if not (lsr_dir / "manifest.json").is_file():
        vectors = work / "vectors.npz"
        np.savez(vectors, indptr=indptr, terms=terms, weights=weights)
        builds["base"] = run_child(f"{ME}:build_lsr", vectors_path=str(vectors), out_dir=str(lsr_dir),
                                   vocab_size=VOCAB, quant_bits=8, threads=args.threads)
        builds["reorder"] = run_child(f"{ME}:reorder_lsr", index_dir=str(lsr_dir), method="bp", threads=args.threads)
    del indptr, terms, weights
    if "bmp" not in InvertedIndex.open(lsr_dir).manifest.get("structures", {}):
        builds["bmp"] = run_child(f"{ME}:add_lsr_structure", index_dir=str(lsr_dir), name="bmp", params={},
                                  threads=args.threads)
    numba.set_num_threads(1)
    exact = InvertedIndex.open(lsr_dir)
    truth, seconds = time_queries(lambda q: exact.search(q[0], q[1], k=k)[0], queries, "exact")
    out = {"shape": args.shape, "docs": n, "queries": len(queries), "k": k, "seed": args.seed,
           "avg_query_terms": float(np.mean([len(t) for t, _ in queries])),
           "exact_ms": latency_summary(seconds), "builds": builds, "seismic": {}}
    out["bmp"] = sweep(lsr_dir, queries, k, "bmp-approx",
                       [{"alpha": a, "beta": b} for a in floats(args.alphas) for b in floats(args.betas)], truth)
    safe = sweep(lsr_dir, queries, k, "bmp", [{}], truth)[0]
    out["bmp_safe_ms"] = {key: safe[key] for key in ("mean_ms", "p50_ms", "p99_ms")}
    seismic_grid = [{"query_cut": int(q), "heap_factor": h} for q in floats(args.query_cuts)
                    for h in floats(args.heap_factors)]
    for lam in lams:
        build = run_child(f"{ME}:add_lsr_structure", index_dir=str(lsr_dir), name="seismic",
                          params={"n_postings": lam}, threads=args.threads)
        build["bytes_per_doc"] = index_sizes(lsr_dir)["seismic"] / n
        out["seismic"][str(lam)] = {"build": build, "runs": sweep(lsr_dir, queries, k, "seismic", seismic_grid, truth)}
    out["base_bytes_per_doc"] = index_sizes(lsr_dir)["base"] / n
    out["bmp_bytes_per_doc"] = index_sizes(lsr_dir)["bmp"] / n
    name = f"defaults-{args.shape}-{count_label(n)}"
    RESULTS.mkdir(exist_ok=True)
    text = render(out, floats(args.targets), f"{args.rank_by}_ms")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{name}.md").write_text(text + "\n")
    print(text)


def _knobs(params: dict) -> str:
    return " ".join(f"{key}={value:g}" for key, value in params.items())


def render(out: dict, targets: list[float], by: str) -> str:
    """Markdown: fastest setting (by ``by`` latency) per target for bmp-approx and every λ, then every row."""
    k = out["k"]
    lines = [f"### defaults sweep: {out['shape']} shape, {out['docs']:,} docs, {out['queries']} queries "
             f"({out['avg_query_terms']:.1f} terms), k = {k}", "",
             f"exact {out['exact_ms']['mean']:.3f} / {out['exact_ms']['p50']:.3f} ms mean / p50; safe bmp "
             f"{out['bmp_safe_ms']['mean_ms']:.3f} / {out['bmp_safe_ms']['p50_ms']:.3f} ms (p99 "
             f"{out['bmp_safe_ms']['p99_ms']:.3f}); base {out['base_bytes_per_doc']:,.0f} B/doc, bmp "
             f"{out['bmp_bytes_per_doc']:,.0f} B/doc.", "",
             f"Fastest settings ranked by {by[:-3]} latency; cells: knobs: mean / p50 ms (R@{k}).", "",
             "| engine | build s | peak MB | B/doc | " + " | ".join(f"fastest at R@{k} ≥ {t:g}" for t in targets)
             + " |", "|---|---:|---:|---:|" + "---|" * len(targets)]

    def cell(rows: list[dict], target: float) -> str:
        best = best_at(rows, target, by)
        return "none" if best is None else \
            f"{_knobs(best['params'])}: {best['mean_ms']:.3f} / {best['p50_ms']:.3f} ms ({best['recall']:.3f})"

    lines.append("| bmp-approx | | | | " + " | ".join(cell(out["bmp"], t) for t in targets) + " |")
    for lam, s in out["seismic"].items():
        b = s["build"]
        lines.append(f"| seismic λ={lam} | {b['seconds']:.1f} | {b['peak_rss_mb']:.0f} | {b['bytes_per_doc']:,.0f} | "
                     + " | ".join(cell(s["runs"], t) for t in targets) + " |")
    lines += ["", f"| setting | mean ms | p50 ms | p99 ms | R@{k} |", "|---|---:|---:|---:|---:|"]
    every = [("bmp-approx", r) for r in out["bmp"]] + [(f"seismic λ={lam}", r) for lam, s in out["seismic"].items()
                                                      for r in s["runs"]]
    for label, r in every:
        lines.append(f"| {label} {_knobs(r['params'])} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['recall']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
