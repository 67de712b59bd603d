"""Native BM25 field vs Pyserini: nDCG@10 and Recall@100 per collection for each analyzer, bytes per document of
the field and its build time (documents analyzed and indexed; SPLADE encoding not involved).

    LSR_DATA=DATA_DIR python eval/bench_bm25.py --out eval/results/bm25_native.json

Pyserini's numbers are read from ``eval/results/<dataset>__bm25.json`` (``lsr eval --retriever pyserini-bm25``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lsr.bm25_field import ANALYZERS, Bm25Settings, Bm25Side, build_bm25_field
from lsr.evaluation import evaluate, load_dataset
from lsr.evaluation.results import machine
from lsr.pipeline import document_text

DATASETS = ("beir/scifact", "beir/medline", "beir/cacm", "beir/npl", "beir/lisa", "beir/time", "corpora/wn-gcide")
RESULTS = Path(__file__).parent / "results"


def model_tokenizer_json() -> str:
    from lsr.models import DEFAULT_SPLADE, resolve_model
    from lsr.query_encoders import fast_tokenizer_json

    return fast_tokenizer_json(resolve_model(DEFAULT_SPLADE).path)


def measure(dataset, settings: Bm25Settings, tokenizer_json: str | None, work: Path) -> dict:
    out = work / f"{dataset.name}-{settings.analyzer}"
    started = time.perf_counter()
    build_bm25_field((document_text(d) for d in dataset.documents()), out, settings, tokenizer_json=tokenizer_json)
    build_s = time.perf_counter() - started
    side = Bm25Side.open([out])
    qids = list(dataset.queries)
    vectors = [side.query_vector(dataset.queries[q]) for q in qids]
    started = time.perf_counter()
    hits = side.index.search_batch(vectors, k=100, threads=1)
    search_ms = (time.perf_counter() - started) * 1000 / max(len(qids), 1)
    ids = dataset_ids(dataset)
    run = {q: [(ids[int(d)], float(s)) for d, s in zip(*h)] for q, h in zip(qids, hits)}
    scores = evaluate(run, dataset.qrels, ("ndcg@10", "recall@100"))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {**{m: round(v, 4) for m, v in scores.items()}, "build_seconds": round(build_s, 2),
            "search_ms_per_query": round(search_ms, 3), "bytes": size, "bytes_per_doc": round(size / side.num_docs, 1)}


def dataset_ids(dataset) -> list[str]:
    return [d.id for d in dataset.documents()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("LSR_DATA", "data"))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--analyzers", default=",".join(ANALYZERS))
    ap.add_argument("--no-lucene-norms", action="store_true", help="exact document lengths instead of Lucene's")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tokenizer_json = model_tokenizer_json() if "model" in args.analyzers else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.datasets.split(","):
            dataset = load_dataset(Path(args.data) / spec)
            ref = json.loads((RESULTS / f"{dataset.name}__bm25.json").read_text())
            row = {"dataset": dataset.name, "documents": dataset.num_docs, "queries": len(dataset.queries),
                   "pyserini": {"ndcg@10": ref["ndcg@10"], "recall@100": ref["recall@100"]}}
            for analyzer in args.analyzers.split(","):
                settings = Bm25Settings(analyzer=analyzer, lucene_norms=not args.no_lucene_norms)
                row[analyzer] = measure(dataset, settings, tokenizer_json, Path(tmp))
                row[analyzer]["delta_ndcg@10"] = round(row[analyzer]["ndcg@10"] - ref["ndcg@10"], 4)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"command": "python eval/bench_bm25.py " + " ".join(os.sys.argv[1:]),
                                        "settings": {"k1": 0.9, "b": 0.4, "lucene_norms": not args.no_lucene_norms},
                                        "machine": machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
