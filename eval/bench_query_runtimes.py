"""Effectiveness of each query runtime: nDCG@10 and Recall@100 of the SPLADE and dense retrievers with their queries
encoded by torch fp32, ONNX fp32 and ONNX int8, on every shared collection (the documents are the same index).

    python -m lsr.eval.bench_query_runtimes --data $LSR_DATA [--collections scifact,medline,...]
        [--adopt wn-gcide=WN_GCIDE_INDEX] [--out eval/results/query-runtimes.json]

``$LSR_DATA`` holds ``beir/<name>`` and ``corpora/wn-gcide``. Indexes come from ``lsr eval``'s cache (built on
first use); ``--adopt NAME=DIR`` reuses a prebuilt index of a collection (``lsr eval --adopt-index``). The table
gives each runtime's difference to torch fp32 and whether it stays within ``--tolerance`` (0.005) on every
collection: the rule :data:`lsr.onnx_encoders.AUTO_RUNTIMES` follows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from lsr.eval.fusion_study import COLLECTIONS  # the shared collections: name -> path under $LSR_DATA
from lsr.evaluation import run_eval
from lsr.onnx_encoders import AUTO_RUNTIMES

RUNTIMES = ("torch", "onnx", "onnx-int8")
RETRIEVERS = ("sparse", "dense")
METRICS = ("ndcg@10", "recall@100")


def measure(data: Path, names: list[str], adopt: dict[str, str]) -> list[dict]:
    """One row per collection × retriever × runtime."""
    rows = []
    for name in names:
        for retriever in RETRIEVERS:
            for runtime in RUNTIMES:
                r = run_eval(data / COLLECTIONS[name], retriever=retriever, query_runtime=runtime, adopt=adopt.get(name),
                             progress=False)
                rows.append({"collection": name, "retriever": retriever, "runtime": runtime,
                             **{m: r[m] for m in METRICS}, "queries": r["queries"]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], tolerance: float) -> str:
    """Per retriever: nDCG@10 of each runtime per collection, its largest |difference| to torch, and the verdict."""
    names = list(dict.fromkeys(r["collection"] for r in rows))
    lines = []
    for retriever in RETRIEVERS:
        table = {(r["collection"], r["runtime"]): r for r in rows if r["retriever"] == retriever}
        lines += [f"### {retriever} (nDCG@10 / Recall@100; auto picks `{AUTO_RUNTIMES[retriever]}`)", "",
                  "| runtime | " + " | ".join(names) + " | max abs. nDCG@10 diff. to torch | within "
                  f"{tolerance} |", "| --- |" + " ---: |" * len(names) + " ---: | --- |"]
        for runtime in RUNTIMES:
            cells, diffs = [], []
            for name in names:
                row, ref = table.get((name, runtime)), table.get((name, "torch"))
                if row is None:
                    cells.append("")
                    continue
                cells.append(f"{row['ndcg@10']:.4f} / {row['recall@100']:.4f}")
                diffs.append(abs(row["ndcg@10"] - ref["ndcg@10"]))
            worst = max(diffs, default=0.0)
            lines.append(f"| {runtime} | " + " | ".join(cells) + f" | {worst:.4f} | {'yes' if worst <= tolerance else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("LSR_DATA", "../shared/data")))
    parser.add_argument("--collections", default=",".join(COLLECTIONS))
    parser.add_argument("--adopt", action="append", default=[], help="NAME=INDEX_DIR: a prebuilt index of NAME")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--out", type=Path, default=Path("eval/results/query-runtimes.json"))
    args = parser.parse_args(argv)
    adopt = dict(a.split("=", 1) for a in args.adopt)
    rows = measure(args.data, [n for n in args.collections.split(",") if n], adopt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "tolerance": args.tolerance,
                                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    table = markdown(rows, args.tolerance)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
