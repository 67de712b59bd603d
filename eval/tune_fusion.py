"""Choose the hybrid fusion defaults of ``lsr.fusion`` on a BEIR train split, report them on the test split.

    python -m lsr.eval.tune_fusion --index INDEX_WITH_DENSE --dataset $LSR_DATA/beir/scifact [--out eval/results/fusion-scifact.json]

The index must hold dense vectors (``lsr index --dense`` or ``lsr index --add-dense``). Every query is encoded
once; each retriever's full score vector is computed once, so every configuration of the grid (method,
normalisation, alpha, depth k', RRF k) is fused by :func:`lsr.fusion.fuse` itself, the function the engine and
the server use, with exact scores for documents one side did not return. The configuration with the best mean
nDCG@10 on the *train* split is chosen; the test split is only used to report the chosen configuration
(through ``Engine.search_batch(..., retriever="hybrid")``, the public path) next to sparse-only and dense-only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from lsr import Engine
from lsr.corpus import read_queries
from lsr.evaluation import read_qrels
from lsr.evaluation.results import portable_path
from lsr.fusion import FusionConfig, fuse

ALPHAS = [round(a, 2) for a in np.arange(0.0, 1.0001, 0.05)]
DEPTHS = [20, 50, 100, 200, 500]
RRF_KS = [10, 30, 60, 100]


def ndcg10(qrels: dict, run: dict[str, dict[str, float]]) -> float:
    import ir_measures
    from ir_measures import nDCG

    run = {q: docs for q, docs in run.items() if q in qrels}
    value = ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]
    # queries with no retrieved documents count as 0, as in BEIR
    return float(value) * len(run) / len(qrels) if run else 0.0


class Split:
    """Queries of one split with both retrievers' exact scores over the whole collection."""

    def __init__(self, engine: Engine, queries: list[tuple[str, str]], max_depth: int) -> None:
        self.engine = engine
        self.qids = [q for q, _ in queries]
        texts = [t for _, t in queries]
        n = engine.index.num_docs
        sparse_hits = engine.index.search_batch(engine.query_vectors(texts), k=n)
        self.sparse_all = np.zeros((len(texts), n))
        for i, (ids, scores) in enumerate(sparse_hits):
            self.sparse_all[i, ids.astype(np.int64)] = scores
        dense_q = engine.dense_query_vectors(texts)
        self.dense_all = dense_q @ np.asarray(engine.dense.vectors, np.float32).T
        self.sparse_top = [(ids[:max_depth].astype(np.int64), s[:max_depth]) for ids, s in sparse_hits]
        self.dense_top = [_top(row, max_depth) for row in self.dense_all]
        self.ids = engine.docs.ids()

    def run(self, config: FusionConfig | None, retriever: str = "hybrid", k: int = 10) -> dict:
        out = {}
        for i, qid in enumerate(self.qids):
            if retriever == "sparse":
                docs, scores = self.sparse_top[i][0][:k], self.sparse_top[i][1][:k]
            elif retriever == "dense":
                docs, scores = self.dense_top[i][0][:k], self.dense_top[i][1][:k]
            else:
                d = config.depth
                fused = fuse({"sparse": (self.sparse_top[i][0][:d], self.sparse_top[i][1][:d]),
                              "dense": (self.dense_top[i][0][:d], self.dense_top[i][1][:d])}, config, k,
                             scorers={"sparse": lambda docs, i=i: self.sparse_all[i, docs],
                                      "dense": lambda docs, i=i: self.dense_all[i, docs]})
                docs, scores = fused.docs, fused.scores
            out[qid] = {self.ids[int(doc)]: float(s) for doc, s in zip(docs, scores)}
        return out


def _top(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(len(row)), -row))[:k]
    return order.astype(np.int64), row[order]


def grid() -> list[FusionConfig]:
    configs = [FusionConfig("convex", a, norm, d) for norm, a, d in itertools.product(("tmm", "minmax", "zscore"),
                                                                                    ALPHAS, DEPTHS)]
    configs += [FusionConfig("rrf", depth=d, rrf_k=rk) for d, rk in itertools.product(DEPTHS, RRF_KS)]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--tune-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    started = time.time()
    engine = Engine.open(args.index)
    engine.require_dense()
    queries = dict(read_queries(args.dataset / "queries.jsonl"))
    result: dict = {"index": portable_path(args.index), "dataset": portable_path(args.dataset), "metric": "nDCG@10"}
    splits = {}
    for name in (args.tune_split, args.test_split):
        qrels = read_qrels(args.dataset / "qrels" / f"{name}.tsv").judgments
        split = Split(engine, [(q, queries[q]) for q in qrels if q in queries], max(DEPTHS))
        splits[name] = (split, qrels)
        print(f"{name}: {len(split.qids)} queries encoded and scored ({time.time() - started:.0f}s)", flush=True)

    train, train_qrels = splits[args.tune_split]
    scores = []
    for config in grid():
        scores.append((ndcg10(train_qrels, train.run(config)), config))
    scores.sort(key=lambda sc: -sc[0])
    best = scores[0][1]
    by_method = {}
    for value, config in scores:
        key = config.method if config.method == "rrf" else f"convex-{config.normalization}"
        by_method.setdefault(key, (value, config))
    result["train"] = {
        "sparse": ndcg10(train_qrels, train.run(None, "sparse")),
        "dense": ndcg10(train_qrels, train.run(None, "dense")),
        "best": {"config": best.to_dict(), "ndcg@10": scores[0][0]},
        "best_per_method": {k: {"config": c.to_dict(), "ndcg@10": v} for k, (v, c) in by_method.items()},
        "alpha_curve_at_best_normalization_and_depth": {str(c.alpha): v for v, c in scores
                                  if c.method == "convex" and c.normalization == best.normalization
                                  and c.depth == best.depth},
        "grid": [{**c.to_dict(), "ndcg@10": round(v, 5)} for v, c in scores],
    }
    test, test_qrels = splits[args.test_split]
    texts = [queries[q] for q in test.qids]

    def public(**kwargs) -> float:  # the public API path on the test split
        hits = engine.search_batch(texts, k=10, **kwargs)
        return ndcg10(test_qrels, {q: {h.id: h.score for h in hs} for q, hs in zip(test.qids, hits)})

    rrf = FusionConfig("rrf")  # the library's RRF settings
    result["test"] = {
        "sparse": public(retriever="sparse"),
        "dense": public(retriever="dense"),
        "hybrid (chosen on train)": public(retriever="sparse+dense", fusion=best),
        f"hybrid rrf (k={rrf.rrf_k}, depth {rrf.depth})": public(retriever="sparse+dense", fusion=rrf),
        "hybrid library defaults": public(retriever="sparse+dense"),
    }
    result["test"]["per-method best-on-train"] = {
        k: ndcg10(test_qrels, test.run(c)) for k, (v, c) in by_method.items()}
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
