"""Metrics of a run against qrels (``ir_measures``, i.e. pytrec_eval), latency summaries and paired significance
tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lsr.evaluation.base import EvalError

METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
_IR_MEASURES = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "mrr@10": "RR@10", "map@100": "AP@100"}


Ranked = list[tuple[str, float]]  # one query's ranking: (doc id, score), best first


def _as_ranking(run: dict[str, Ranked], qids) -> dict[str, dict[str, float]]:
    """Scores replaced by strictly decreasing values, so ties are evaluated in the order returned."""
    out = {}
    for qid in qids:
        ranked = run.get(qid) or []
        scores: dict[str, float] = {}
        for i, (doc, _) in enumerate(ranked):
            scores.setdefault(doc, float(len(ranked) - i))
        if scores:
            out[qid] = scores
    return out


def per_query(run: dict[str, Ranked], qrels: dict[str, dict[str, int]], metrics: Sequence[str] = METRICS
              ) -> dict[str, dict[str, float]]:
    """``{metric: {query id: value}}`` over every judged query (a query without results scores 0)."""
    import ir_measures

    unknown = [m for m in metrics if m not in _IR_MEASURES]
    if unknown:
        raise EvalError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(_IR_MEASURES)}")
    measures = {str(ir_measures.parse_measure(_IR_MEASURES[m])): m for m in metrics}
    values = {m: dict.fromkeys(qrels, 0.0) for m in metrics}
    ranking = _as_ranking(run, qrels)
    if ranking:
        for r in ir_measures.iter_calc([ir_measures.parse_measure(s) for s in measures], qrels, ranking):
            values[measures[str(r.measure)]][r.query_id] = float(r.value)
    return values


def evaluate(run: dict[str, Ranked], qrels: dict[str, dict[str, int]], metrics: Sequence[str] = METRICS
             ) -> dict[str, float]:
    """Mean of each metric over the judged queries."""
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in per_query(run, qrels, metrics).items()}


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    ms = np.asarray(ms, dtype=np.float64)
    if not len(ms):
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": round(float(ms.mean()), 4), "p50": round(float(np.percentile(ms, 50)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4)}


def compare_runs(run_a: dict[str, Ranked], run_b: dict[str, Ranked], qrels: dict[str, dict[str, int]],
                 metrics: Sequence[str] = METRICS, test: str = "student", alpha: float = 0.05) -> dict:
    """Paired significance test per metric over the judged queries that either run answers.

    ``student``: paired t-test (as ranx's ``compare``); ``wilcoxon``: Wilcoxon signed-rank.
    """
    from scipy import stats

    if test not in ("student", "wilcoxon"):
        raise EvalError(f"unknown test {test!r}; choose student or wilcoxon")
    qids = [q for q in qrels if q in run_a or q in run_b]
    if not qids:
        raise EvalError("neither run answers any judged query (do the query ids match the qrels?)")
    qrels = {q: qrels[q] for q in qids}
    va, vb = per_query(run_a, qrels, metrics), per_query(run_b, qrels, metrics)
    out = {"queries": len(qids), "test": test, "alpha": alpha, "metrics": {}}
    for m in metrics:
        a = np.array([va[m][q] for q in qids])
        b = np.array([vb[m][q] for q in qids])
        diff = b - a
        if not np.any(diff):
            p = 1.0
        elif test == "student":
            p = float(stats.ttest_rel(a, b).pvalue)
        else:
            p = float(stats.wilcoxon(a, b).pvalue)
        p = 1.0 if np.isnan(p) else p
        out["metrics"][m] = {"a": float(a.mean()), "b": float(b.mean()), "delta": float(diff.mean()), "p_value": p,
                             "significant": p < alpha, "b_wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
                             "b_losses": int((diff < 0).sum())}
    return out
