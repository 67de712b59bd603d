"""``lsr eval`` of the starting and the trained model, for each query encoder (``lsr train --eval``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def evaluate_before_after(start_model: str | None, trained: Path, dataset: Path, split: str = "test",
                          query_encoders: Sequence[str] = ("model", "inference-free"),
                          cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """``lsr eval`` of the starting and the trained model on a split, for each query encoder: nDCG@10 and friends,
    query-encoding latency and non-zero terms per document and per query."""
    from lsr.evaluation import run_eval
    from lsr.evaluation.results import portable_path

    rows = {}
    for label, model in (("before", start_model), ("after", str(trained))):
        for qe in query_encoders:
            r = run_eval(dataset, model=model, split=split, query_encoder=qe, cache_dir=cache_dir, progress=progress)
            rows[f"{label}/{qe}"] = {k: r[k] for k in ("ndcg@10", "recall@100", "mrr@10", "map@100", "nnz",
                                                       "encoding_ms", "latency_ms", "queries", "documents")}
            rows[f"{label}/{qe}"]["model"] = r["model"]
    for qe in query_encoders:
        before, after = rows.get(f"before/{qe}"), rows.get(f"after/{qe}")
        if before and after:
            rows[f"delta/{qe}"] = {"ndcg@10": round(after["ndcg@10"] - before["ndcg@10"], 6),
                                   "recall@100": round(after["recall@100"] - before["recall@100"], 6)}
    return {"dataset": portable_path(dataset), "split": split, "results": rows}
