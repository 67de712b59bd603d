"""Long documents: SPLADE vectors from the first window only vs overlapping windows pooled into one vector
(``lsr index --doc-windows N|all --window-stride S --window-pooling max|mean|decay|first``): nDCG@10, Recall@100,
index size (bytes per document) and build time per collection and setting.

    LSR_DATA=DATA_DIR python eval/bench_long_documents.py --out eval/results/long-documents
    LSR_DATA=DATA_DIR python eval/bench_long_documents.py --datasets beir/scifact --append --out ...  # add one

Each collection's documents are encoded once, window by window, with :class:`lsr.encoder.SpladeEncoder` itself
(:meth:`~lsr.encoder.SpladeEncoder.encode_windows`, every window). Each setting pools the windows it reads with
:func:`lsr.encoder.pool_windows` (what ``encode_documents`` runs), builds a real index and searches it (exact,
one thread). Setting ``1`` is the first window alone: the same tokens as the default build (``doc_windows=1``,
the first ``doc_max_length`` tokens; ``tests/test_long_documents.py`` checks the two agree). Build time = encoding
time + pooling + index build, where the encoding time of a setting is the all-windows encoding time scaled by the
share of window tokens it reads (encoding time is close to linear in tokens: the vocabulary projection of each
real token dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lsr.encoder import SparseBatch, SpladeEncoder, pool_windows
from lsr.evaluation import evaluate, load_dataset
from lsr.evaluation.results import machine
from lsr.index import IndexBuilder, InvertedIndex
from lsr.pipeline import document_text, take_rows

DATASETS = ("beir/time", "beir/medline", "beir/cacm", "beir/lisa", "beir/npl", "beir/scifact")
SETTINGS = ("max-2", "max-4", "max-all", "mean-4", "mean-all", "decay0.5-all", "decay0.7-all", "decay0.8-all",
            "decay0.9-all", "first0.5-4", "first0.5-all", "first0.7-all")


def parse_setting(name: str) -> tuple[str, float, int | str]:
    """``max-4`` -> (max, 0.5, 4); ``decay0.8-all`` -> (decay, 0.8, "all")."""
    pooling, count = name.rsplit("-", 1)
    head = pooling.rstrip("0123456789.")
    return head, float(pooling[len(head):] or 0.5), count if count == "all" else int(count)


def measure(index_dir: Path, vectors: SparseBatch, vocab_size: int, queries: list, qids: list[str], ids: list[str],
            qrels: dict) -> dict:
    """Index ``vectors``, search the queries (exact, k=100, one thread) and score the run."""
    started = time.perf_counter()
    builder = IndexBuilder(index_dir, vocab_size)
    builder.add(vectors.indptr, vectors.indices, vectors.values)
    builder.finalize({})
    index_s = time.perf_counter() - started
    index = InvertedIndex.open(index_dir)
    hits = index.search_batch(queries, k=100, threads=1)
    run = {q: [(ids[int(d)], float(s)) for d, s in zip(*h)] for q, h in zip(qids, hits)}
    scores = evaluate(run, qrels, ("ndcg@10", "recall@100"))
    size = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file())
    return {**{m: round(v, 4) for m, v in scores.items()}, "bytes_per_doc": round(size / len(ids), 1),
            "terms_per_doc": round(len(vectors.values) / len(ids), 1), "index_seconds": round(index_s, 3)}


def run_dataset(path: Path, settings: list[str], stride: int | None, batch_size: int, work: Path) -> dict:
    dataset = load_dataset(path)
    docs = list(dataset.documents())
    texts, ids = [document_text(d) for d in docs], [d.id for d in docs]
    qids = list(dataset.queries)
    encoder = SpladeEncoder(device="cpu", doc_windows="all", window_stride=stride)
    queries = [encoder.encode_query(dataset.queries[q]) for q in qids]
    started = time.perf_counter()
    windows, owner, position, _ = encoder.encode_windows(texts, "all", batch_size)
    all_s = time.perf_counter() - started
    body = encoder.doc_max_length - sum(len(t) for t in encoder._special_tokens)
    lengths = np.array([len(t) for t in encoder.tokenizer(texts, add_special_tokens=False, verbose=False,
                                                         return_attention_mask=False)["input_ids"]])
    window_tokens = np.minimum(lengths[owner] - position * encoder.window_stride, body)  # real tokens per window
    row = {"dataset": dataset.name, "documents": len(docs), "queries": len(qids),
           "longer_than_one_window": int((lengths > body).sum()), "mean_tokens": round(float(lengths.mean()), 1),
           "windows_per_doc_all": round(len(owner) / len(docs), 2), "window_stride": encoder.window_stride,
           "encode_seconds_all_windows": round(all_s, 2), "settings": {}}
    for name in ["max-1"] + settings:
        pooling, decay, count = parse_setting(name)
        rows = np.flatnonzero(position < (np.inf if count == "all" else count))
        started = time.perf_counter()
        pooled = pool_windows(take_rows(windows, rows), owner[rows], position[rows], len(docs), pooling, decay)
        pool_s = time.perf_counter() - started
        result = measure(work / f"{dataset.name}-{name}", pooled, encoder.vocab_size, queries, qids, ids,
                         dataset.qrels)
        encode_s = all_s * window_tokens[rows].sum() / window_tokens.sum()
        result["build_seconds"] = round(encode_s + pool_s + result.pop("index_seconds"), 2)
        result["windows_per_doc"] = round(len(rows) / len(docs), 2)
        for metric in ("ndcg@10", "recall@100"):
            result[f"delta_{metric}"] = round(result[metric] - row["settings"].get("1", result)[metric], 4)
        row["settings"]["1" if name == "max-1" else name] = result
    return row


def summary(rows: list[dict], settings: list[str], margin: float) -> dict:
    """Per setting: the mean change of nDCG@10 and Recall@100 against the first window, and on how many collections
    nDCG@10 rose / fell by more than ``margin``."""
    out = {}
    for name in settings:
        deltas = [r["settings"][name]["delta_ndcg@10"] for r in rows]
        recalls = [r["settings"][name]["delta_recall@100"] for r in rows]
        out[name] = {"mean_delta_ndcg@10": round(float(np.mean(deltas)), 4),
                     "mean_delta_recall@100": round(float(np.mean(recalls)), 4),
                     "better": sum(d > margin for d in deltas), "worse": sum(d < -margin for d in deltas)}
    return out


def markdown(report: dict) -> str:
    rows, settings = report["rows"], ["1"] + report["settings"]
    lines = ["# Long documents: first window vs pooled windows", "",
             *[f"`LSR_DATA=../shared/data {c}`" for c in report["commands"]], "",
             f"splade-tiny, windows of {report['doc_max_length']} tokens every {rows[0]['window_stride']} tokens; "
             "exact search, k=100, one thread. Δ: change against the first window only (setting `1`, today's "
             "default). Build time = encoding + pooling + index build (see the script's docstring).", "",
             "| collection | docs | longer than one window | mean tokens | windows/doc (all) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['dataset']} | {r['documents']} | {r['longer_than_one_window']} | {r['mean_tokens']} | "
              f"{r['windows_per_doc_all']} |" for r in rows]
    lines += ["", "## Summary over the collections", "",
              f"better / worse: collections where nDCG@10 rose / fell by more than {report['margin']}.", "",
              "| setting | mean Δ nDCG@10 | mean Δ Recall@100 | better | worse |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {s['mean_delta_ndcg@10']:+.4f} | {s['mean_delta_recall@100']:+.4f} | {s['better']} | "
              f"{s['worse']} |" for name, s in report["summary"].items()]
    for r in rows:
        lines += ["", f"## {r['dataset']}", "",
                  "| setting | nDCG@10 | Δ | Recall@100 | Δ | B/doc | terms/doc | windows/doc | build s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in settings:
            s = r["settings"][name]
            lines.append(f"| {name} | {s['ndcg@10']:.4f} | {s.get('delta_ndcg@10', 0):+.4f} | {s['recall@100']:.4f} | "
                         f"{s.get('delta_recall@100', 0):+.4f} | {s['bytes_per_doc']:.0f} | {s['terms_per_doc']} | "
                         f"{s['windows_per_doc']} | {s['build_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("LSR_DATA", "data"))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--settings", default=",".join(SETTINGS), help="POOLING[DECAY]-COUNT, comma-separated")
    ap.add_argument("--stride", type=int, default=None, help="window stride in tokens (default: the encoder's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--margin", type=float, default=0.002)
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    ap.add_argument("--append", action="store_true", help="keep the other collections already in OUT.json")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = args.settings.split(",")
    rows = []
    command = "python eval/bench_long_documents.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.datasets.split(","):
            rows.append({**run_dataset(Path(args.data) / spec, settings, args.stride, args.batch_size, Path(tmp)),
                         "command": command})
            print(json.dumps(rows[-1]), flush=True)
            kept = []
            if args.append and args.out and args.out.with_suffix(".json").is_file():  # another run's collections
                ours = {r["dataset"] for r in rows}
                earlier = json.loads(args.out.with_suffix(".json").read_text())
                kept = [{"command": earlier.get("command"), **r} for r in earlier["rows"] if r["dataset"] not in ours]
                if earlier["settings"] != settings:
                    raise SystemExit(f"--append: {args.out}.json was measured with other settings")
            report = {"commands": sorted({r["command"] for r in kept + rows}), "model": "splade-tiny",
                      "doc_max_length": 256, "settings": settings, "margin": args.margin,
                      "summary": summary(kept + rows, settings, args.margin), "rows": kept + rows,
                      "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if args.out:  # rewritten after each collection
                args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
                args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
