"""Generate ``eval/RESULTS.md`` and the plots from the result records in ``eval/results/*.json``.

Each record is what ``lsr eval DATASET ... --json`` prints (``--results-dir eval/results`` saves it as
``<dataset>__<column>.json``). Nothing in the table is typed by hand: rerun this script after adding results::

    python -m lsr.eval.make_results            # or: python -m lsr.eval.make_results

Cells without a result show "—" and fill in once their JSON appears.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsr.evaluation import result_key

HERE = Path(__file__).resolve().parent

# (column key as produced by lsr.evaluation.result_key, header)
COLUMNS = [
    ("bm25", "Pyserini BM25"),
    ("bm25-native", "BM25 (native)"),
    ("sparse-exact", "sparse exact"),
    ("sparse-bmp", "sparse BMP"),
    ("sparse-seismic", "sparse Seismic"),
    ("dense", "dense"),
    ("hybrid-rrf", "sparse+dense RRF (k'=20)"),
    ("hybrid-convex", "sparse+dense TMM α=0.25 (k'=20)"),
    ("sparse+dense-convex", "sparse+dense convex"),
    ("dense+bm25-convex", "dense+BM25 convex"),
    ("sparse+dense+bm25-rrf", "sparse+dense+BM25 RRF"),
    ("sparse+dense+bm25-convex", "sparse+dense+BM25 convex (default)"),
]
DEFAULT = "sparse+dense+bm25-convex"  # what `lsr eval --retriever auto` (the engine's default) fills
TWO_WAY = "sparse+dense-convex"
SINGLES = ("bm25", "sparse-exact", "dense")  # the targets: the default >= the best of these (nDCG@10), >= each (R@100)
EXTRA_HEADERS = {"sparse-bmp-approx": "sparse BMP-approx"}  # columns shown only when results exist
DATASETS = ["scifact", "medline", "cacm", "lisa", "npl", "time", "wn-gcide"]
EMPTY = "—"


def load_results(results_dir: Path) -> dict[tuple[str, str], dict]:
    """``{(dataset, column): record}``; a later file for the same cell wins (files are read in name order)."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            sys.exit(f"{path}: not valid JSON ({err})")
        if not isinstance(record, dict) or not {"dataset", "retriever", "ndcg@10"} <= set(record):
            continue  # another tool's JSON (e.g. eval/tune_fusion.py output), not an `lsr eval` record
        out[(record["dataset"], result_key(record))] = record
    return out


def _order(values, preferred):
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def _fmt(x, spec=".3f"):
    return EMPTY if x is None else format(x, spec)


def _mb(n):
    return EMPTY if n is None else f"{n / 1e6:.1f}"


def targets(results: dict[tuple[str, str], dict], dataset: str) -> str:
    """``nDCG@10 ✓/✗, R@100 ✓/✗`` of the default against the single retrievers (— when a result is missing)."""
    default = results.get((dataset, DEFAULT))
    singles = [results.get((dataset, c)) for c in SINGLES]
    if default is None or any(r is None for r in singles):
        return EMPTY
    ndcg = default["ndcg@10"] >= max(r["ndcg@10"] for r in singles)
    recall = default["recall@100"] >= max(r["recall@100"] for r in singles)
    return f"nDCG@10 {'✓' if ndcg else '✗'}, R@100 {'✓' if recall else '✗'}"


def latency_table(results: dict[tuple[str, str], dict], datasets: list[str]) -> list[str]:
    """Mean latency per query (one thread) of the three-way default next to two-way sparse+dense."""
    rows = []
    for d in datasets:
        three, two = results.get((d, DEFAULT)), results.get((d, TWO_WAY))
        if three is None and two is None:
            continue
        cells = []
        for r in (three, two):
            for key in ("latency_ms", "latency_with_encoding_ms"):
                cells.append(_fmt(((r or {}).get(key) or {}).get("mean"), ".2f"))
        load = [((r or {}).get("machine") or {}).get("load_average") or [None] for r in (three, two)]
        rows.append(f"| {d} | " + " | ".join(cells) + " | " + " / ".join(_fmt(x[0], ".1f") for x in load) + " |")
    if not rows:
        return []
    return ["### Latency of the default: three-way next to two-way", "",
            "Mean ms per query, one thread, from the same `lsr eval` runs: *search* excludes query encoding (the "
            "fusion's candidate lists, exact scores of the missing candidates, normalisation), *+enc* includes "
            "encoding the query with SPLADE and MiniLM (BM25's analyzer runs inside *search*). The load average "
            "of the machine when each ran is given: runs on a loaded machine are slower, compare within a row.", "",
            "| dataset | sparse+dense+BM25 search | +enc | sparse+dense search | +enc | load avg |",
            "| --- | ---: | ---: | ---: | ---: | --- |", *rows, ""]


def render(results: dict[tuple[str, str], dict], plots: list[Path], out_dir: Path) -> str:
    datasets = _order({d for d, _ in results} | set(DATASETS), DATASETS)
    columns = [c for c, _ in COLUMNS] + sorted({c for _, c in results} - {c for c, _ in COLUMNS})
    headers = {**EXTRA_HEADERS, **dict(COLUMNS)}
    lines = [
        "# Evaluation results",
        "",
        "<!-- Generated by eval/make_results.py from eval/results/*.json. Do not edit by hand. -->",
        "",
        "Each cell: **nDCG@10 / Recall@100** and the mean search latency per query (one thread, query encoding",
        "excluded; see the details table for latency with encoding). \"—\": not run yet. In bold, and named in the",
        "last column: each collection's best system by nDCG@10. BM25 is the Pyserini (or bm25s) baseline; `bm25`",
        "inside a combination is the index's own BM25 field.",
        "",
        "| dataset | " + " | ".join(headers.get(c, c) for c in columns) + " | best (nDCG@10) | default: targets |",
        "| --- | " + " | ".join("---" for _ in columns) + " | --- | --- |",
    ]
    for d in datasets:
        cells = []
        present = [c for c in columns if (d, c) in results]
        best = max(present, key=lambda c: results[(d, c)]["ndcg@10"]) if present else None
        for c in columns:
            r = results.get((d, c))
            if r is None:
                cells.append(EMPTY)
            else:
                lat = (r.get("latency_ms") or {}).get("mean")
                cell = f"{r['ndcg@10']:.3f} / {r['recall@100']:.3f} ({_fmt(lat, '.1f')} ms)"
                cells.append(f"**{cell}**" if c == best else cell)
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {headers.get(best, best) if best else EMPTY} "
                     f"| {targets(results, d)} |")
    lines += ["", "*default: targets*: the default (`--retriever auto`, sparse+dense+BM25 convex) against the best "
              "of Pyserini BM25, sparse exact and dense on nDCG@10 and against each of them on Recall@100 "
              "(✓ met, ✗ not).", ""]
    lines += latency_table(results, datasets)
    lines += ["", *(f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots), ""]
    lines += [
        "## Details",
        "",
        "Latency in ms per query on one thread: *search* excludes query encoding, *+enc* includes it. Index size",
        "excludes the document store (sparse: postings, forward index and the mode's structure; dense: vectors and",
        "graph; hybrid: both; Pyserini BM25: the whole Lucene or bm25s index; native BM25: the index's `bm25/` field).",
        "",
        "| dataset | run | implementation | queries | docs | nDCG@10 | R@100 | MRR@10 | MAP@100 | search mean / p50 / p99 "
        "| +enc mean / p50 / p99 | index MB | load avg | date |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for d in datasets:
        for c in columns:
            r = results.get((d, c))
            if r is None:
                continue
            s, t = r.get("latency_ms") or {}, r.get("latency_with_encoding_ms") or {}
            load = (r.get("machine") or {}).get("load_average") or [None]
            lines.append(
                f"| {d} | {headers.get(c, c)} | {r.get('implementation') or EMPTY} | {r['queries']} | {r['documents']} | "
                f"{r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['map@100']:.4f} | "
                f"{_fmt(s.get('mean'), '.2f')} / {_fmt(s.get('p50'), '.2f')} / {_fmt(s.get('p99'), '.2f')} | "
                f"{_fmt(t.get('mean'), '.2f')} / {_fmt(t.get('p50'), '.2f')} / {_fmt(t.get('p99'), '.2f')} | "
                f"{_mb(r.get('index_size_bytes'))} | {_fmt(load[0], '.1f')} | {r.get('date', '')[:10]} |"
            )
    machines = {(r.get("machine") or {}).get("cpu") for r in results.values()} - {None}
    lines += [
        "",
        "## How these were produced",
        "",
        "```bash",
        "for d in scifact time medline cacm lisa npl; do",
        "  for run in \"--retriever pyserini-bm25\" \"--retriever bm25\" \"--retriever sparse\" \"--mode bmp\" \"--mode seismic\" \"--retriever dense\" \\",
        "             \"--retriever sparse+dense\" \"--retriever dense+bm25\" \"--retriever sparse+dense+bm25 --fusion rrf\" \\",
        "             \"--retriever auto\"; do",
        "    lsr eval $LSR_DATA/beir/$d $run --results-dir eval/results",
        "  done",
        "done",
        "lsr eval $LSR_DATA/corpora/wn-gcide --retriever pyserini-bm25 --results-dir eval/results",
        "lsr eval $LSR_DATA/corpora/wn-gcide --adopt-index WN_GCIDE_INDEX --results-dir eval/results",
        "python -m lsr.eval.make_results",
        "```",
        "",
        "The two `hybrid` columns are earlier runs of sparse+dense with the defaults of the time (k'=20; TMM, α=0.25);",
        "every other fusion column uses lsr.fusion's defaults (eval/results/fusion-study.md chose them).",
        "`$LSR_DATA` is the directory holding the datasets (result files name dataset paths relative to it);",
        "`WN_GCIDE_INDEX` is a splade-tiny `lsr index` of wn-gcide built beforehand. Indexes are cached (`$LSR_CACHE`,",
        "default `~/.cache/lsr/eval`), so only the first run of a dataset encodes its corpus; BMP runs on a copy",
        "reordered with `bp`, Seismic with its default build parameters.",
        "",
        "Metrics: ir_measures (pytrec_eval), averaged over every judged query of the split (a query without results",
        "scores 0), on the ranking exactly as returned. Sparse model: the embedded splade-tiny unless a record says",
        "otherwise; BM25: k1=0.9, b=0.4 over title + text (Pyserini BM25: the implementation column says Pyserini or",
        "bm25s; native BM25: the index's field, word analyzer, see `eval/bench_bm25.py`).",
        "Latencies come from a shared machine (" + (", ".join(sorted(machines)) or "unknown CPU")
        + "); the load average at run time is recorded, and loaded runs are slower.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[tuple[str, str], dict], plot_dir: Path) -> list[Path]:
    """A grouped bar chart of nDCG@10 and a Recall@100-vs-latency scatter plot (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    plot_dir.mkdir(parents=True, exist_ok=True)
    datasets = _order({d for d, _ in results}, DATASETS)
    columns = _order({c for _, c in results}, [c for c, _ in COLUMNS])
    headers = {**EXTRA_HEADERS, **dict(COLUMNS)}
    paths = []

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(datasets) + 2), 4))
    width = 0.8 / max(len(columns), 1)
    for j, c in enumerate(columns):
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(datasets))]
        ys = [results[(d, c)]["ndcg@10"] if (d, c) in results else 0.0 for d in datasets]
        ax.bar(xs, ys, width, label=headers.get(c, c))
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("nDCG@10")
    ax.set_ylim(0, 1)
    ax.set_title("nDCG@10 by dataset and retriever")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    paths.append(plot_dir / "ndcg_at_10.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*X<>"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, c in enumerate(columns):
        for i, d in enumerate(datasets):
            r = results.get((d, c))
            lat = ((r or {}).get("latency_ms") or {}).get("mean")
            if r is None or not lat:
                continue
            ax.scatter(lat, r["recall@100"], marker=markers[j % len(markers)], color=colors[i % len(colors)], s=40)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("mean search latency per query (ms, one thread, log scale)")
    ax.set_ylabel("Recall@100")
    ax.set_ylim(0, 1.02)
    ax.set_title("Recall@100 vs latency (colour: dataset, marker: retriever)")
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    by_dataset = [Line2D([], [], ls="", marker="o", color=colors[i % len(colors)], label=d) for i, d in enumerate(datasets)]
    by_column = [Line2D([], [], ls="", marker=markers[j % len(markers)], color="gray", label=headers.get(c, c))
                 for j, c in enumerate(columns)]
    first = ax.legend(handles=by_dataset, fontsize=7, loc="lower left", title="dataset", title_fontsize=7)
    ax.add_artist(first)
    ax.legend(handles=by_column, fontsize=7, loc="lower right", title="retriever", title_fontsize=7)
    fig.tight_layout()
    paths.append(plot_dir / "recall_vs_latency.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results", help="Directory of result JSON files.")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown file to write.")
    parser.add_argument("--plots", type=Path, default=None, help="Plot directory (default: plots/ beside --out).")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    out_dir = args.out.resolve().parent
    plots = plot(results, (args.plots or out_dir / "plots").resolve()) if results else []
    args.out.write_text(render(results, plots, out_dir), encoding="utf-8")
    print(f"wrote {args.out} ({len(results)} results) and {len(plots)} plot(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
