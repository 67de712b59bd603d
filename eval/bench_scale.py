"""Scale benchmark (issue 15): every search mode and the peer engines on a synthetic collection of N documents
of one shape, reported per engine as bytes per document, build time and peak RSS, latency and Recall@10.

    python -m lsr.eval.bench_scale --docs 200000 --shape msmarco --peers
    python -m lsr.eval.bench_scale --docs 200000 --shape project --peers
    python -m lsr.eval.bench_scale --docs 20000 --shape long-query --max-queries 100     # smoke test

The runs are :func:`eval.bench_pruning.run` (each build in a fresh child process, its VmHWM as peak RSS; our
documents BP-reordered by default, the peers getting the same order; latency one query at a time on one thread;
Recall@k against our exact top-k) over the default knob grids, which contain the defaults of every mode. On top of
its table this one reports bytes per document of each mode (ours: base index + structure; the peers: their saved
index) and the fastest setting of every engine at Recall@10 >= ``--target`` (0.95).

Writes ``eval/results/scale-<shape>-<N>.json`` and ``.md`` and ``eval/plots/scale-<shape>-<N>.png`` (N as
``200k``, ``1m``, ...).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lsr.eval.bench_pruning import PLOTS, RESULTS, add_common_arguments, plot, render, run

ENGINES = ("lsr exact", "lsr bmp", "lsr seismic", "pyseismic-lsr", "bmp package", "scipy")


def count_label(n: int) -> str:
    """200000 -> "200k", 1000000 -> "1m", 1500000 -> "1500k", 1234 -> "1234"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def fastest(runs: list[dict], target: float) -> dict[str, dict | None]:
    """Per engine: its run with the lowest mean latency among those with recall >= ``target`` (None if none)."""
    out = {}
    for engine in ENGINES:
        ok = [r for r in runs if r["system"] == engine and r["recall"] >= target]
        if any(r["system"] == engine for r in runs):
            out[engine] = min(ok, key=lambda r: r["latency_ms"]["mean"]) if ok else None
    return out


def summary(result: dict, target: float) -> str:
    """Markdown: the shape, bytes per document and build cost per engine, and the fastest setting at the target."""
    n = result["docs"]
    stats = result["source"]["stats"]
    lines = [f"## scale: {result['source']['shape']} shape, {n:,} documents",
             "",
             f"Documents: {stats['doc_terms']['mean']:.1f} terms (p5 {stats['doc_terms']['p5']:.0f}, p95 "
             f"{stats['doc_terms']['p95']:.0f}); queries: {stats['query_terms']['mean']:.1f} terms (p5 "
             f"{stats['query_terms']['p5']:.0f}, p95 {stats['query_terms']['p95']:.0f}); the 1% most used terms hold "
             f"{100 * stats['top1pct_term_share']:.0f}% of the postings. Our structures: "
             f"{json.dumps(result['structure_params'])}; documents reordered: {result['reorder']}.",
             "",
             f"| engine | bytes/doc | build s | build peak MB | fastest setting at R@{result['k']} ≥ {target:g} "
             f"| mean ms | p50 ms | p99 ms | R@{result['k']} |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for engine, best in fastest(result["runs"], target).items():
        any_run = next(r for r in result["runs"] if r["system"] == engine)
        b = any_run["build"]
        size = "n/a" if b["size_mb"] is None else f"{b['size_mb'] * 1e6 / n:,.0f}"
        head = f"| {engine} | {size} | {b['seconds']:.1f} | {b['peak_rss_mb']:.0f} | "
        if best is None:
            lines.append(head + "none | | | | |")
        else:
            lat = best["latency_ms"]
            lines.append(head + f"{best['setting']} | {lat['mean']:.3f} | {lat['p50']:.3f} | {lat['p99']:.3f} | "
                         f"{best['recall']:.4f} |")
    everything = sum(result["sizes"].values())
    lines += ["", f"All our modes in one index (base + bmp + seismic): {everything / n:,.0f} bytes/doc "
              f"({', '.join(f'{k} {v / n:,.0f}' for k, v in result['sizes'].items())}). Build time and peak of "
              f"a mode: its base build, reordering (bmp) and structure; peak MB includes the interpreter and the "
              f"loaded vectors."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, required=True, help="Number of synthetic documents.")
    parser.add_argument("--reorder", choices=("bp", "terms", "none"), default="bp",
                        help="Reordering of our documents before the structures (default bp).")
    parser.add_argument("--target", type=float, default=0.95, help="Recall@k of the 'fastest setting' column.")
    add_common_arguments(parser)
    args = parser.parse_args()
    args.index, args.queries, args.synthetic = None, None, args.docs
    args.reorder = None if args.reorder == "none" else args.reorder
    name = f"scale-{args.shape}-{count_label(args.docs)}"
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            result = run(args, name, Path(tmp))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(args, name, args.work)
    result["target"] = args.target
    result["fastest"] = {engine: None if best is None else best["setting"]
                         for engine, best in fastest(result["runs"], args.target).items()}
    RESULTS.mkdir(exist_ok=True)
    PLOTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    text = summary(result, args.target) + "\n\n" + render(result)
    (RESULTS / f"{name}.md").write_text(text + "\n")
    plot(result, PLOTS / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
