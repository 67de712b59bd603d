"""Which fusion of {sparse, dense, bm25} should be the default, and do label-free weights help? Measured on runs.

    # 1. known-item pseudo-queries of each collection, as a BEIR-layout dataset (corpus linked, not copied)
    python -m lsr.eval.fusion_study pseudo $LSR_DATA/beir/scifact --out $STUDY/pseudo
    # 2. runs (k=1000) of each single retriever on the test queries and on the pseudo-queries, e.g.
    lsr eval $LSR_DATA/beir/scifact --retriever dense -k 1000 --run-out $STUDY/runs/scifact/test__dense.run
    lsr eval $STUDY/pseudo/scifact --retriever dense -k 1000 --run-out $STUDY/runs/scifact/pseudo__dense.run
    # 3. every 2- and 3-way fusion, each way of weighting, scored on the test qrels
    python -m lsr.eval.fusion_study report --runs $STUDY/runs --data $LSR_DATA [--out eval/results/fusion-study]

``$STUDY`` is any scratch directory. Step 3 fuses with :func:`lsr.fusion.fuse` (the engine's function) as the
engine does: each retriever's top max(k, k') (k = 100, k' = the default 100 unless a row says otherwise), a
candidate missing from one list scored by that retriever from its deeper run (exact within its top 1000, else the
run's last score), ``worst-fill`` rows instead giving it the retriever's worst retrieved score. It reports nDCG@10
and Recall@100 on the test qrels and MRR@10 on the pseudo-queries of: each single retriever; RRF; equal-weight
convex fusion with each normalisation; the weights :func:`lsr.fusion.pseudo_query_weights` chooses on the
collection's pseudo-queries; and :func:`lsr.fusion.agreement_weights` on the same pseudo-queries. The test qrels
are only read to score.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import numpy as np

from lsr.corpus import CorpusReader
from lsr.evaluation import read_qrels
from lsr.evaluation.metrics import evaluate
from lsr.evaluation.results import portable_path
from lsr.evaluation.runs import read_run
from lsr.fusion import (DEFAULT_DEPTH, DEFAULT_NORMALIZATION, DEFAULT_PSEUDO_QUERIES, NORMALIZATIONS, FusionConfig, agreement_weights, fuse, pseudo_query_weights,
                        sample_pseudo_queries)
from lsr.pipeline import document_text

RETRIEVERS = ("sparse", "dense", "bm25")
COLLECTIONS = {"scifact": "beir/scifact", "medline": "beir/medline", "cacm": "beir/cacm", "npl": "beir/npl",
               "lisa": "beir/lisa", "time": "beir/time", "wn-gcide": "corpora/wn-gcide"}
LABEL_FREE_NORMALIZATION = DEFAULT_NORMALIZATION  # the normalisation the label-free weights are chosen and used with
RUN_DEPTH = 1000  # documents per query in the runs
DEPTH = DEFAULT_DEPTH  # k' of the fusion (the engine's default; `lsr eval` asks k = 100)
OTHER_DEPTHS = (20, 50, 200)  # k' compared with it on the three-way fusion


# ---------------------------------------------------------------------- step 1: pseudo-query datasets
def write_pseudo_dataset(dataset: Path, out: Path, n: int = DEFAULT_PSEUDO_QUERIES, seed: int = 0) -> Path:
    """``out/<name>/``: the dataset's corpus (a link), its pseudo-queries and qrels naming each one's source."""
    corpus = next(p for p in (dataset / "corpus.jsonl", dataset / "corpus.jsonl.gz") if p.is_file())
    docs = list(CorpusReader(corpus, fmt="jsonl"))
    pairs = sample_pseudo_queries(len(docs), lambda i: document_text(docs[i]), n, seed)
    target = out / dataset.name
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    link = target / corpus.name
    if not link.exists():
        os.symlink(corpus.resolve(), link)
    with open(target / "queries.jsonl", "w", encoding="utf-8") as fh:
        for i, (_, query) in enumerate(pairs):
            fh.write(json.dumps({"_id": f"p{i}", "text": query}) + "\n")
    with open(target / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for i, (docno, _) in enumerate(pairs):
            fh.write(f"p{i}\t{docs[docno].id}\t1\n")
    return target


# ---------------------------------------------------------------------- step 3: fusing the runs
class Runs:
    """One collection's runs of each retriever as (doc numbers, scores) per query, doc ids numbered in one table."""

    def __init__(self, directory: Path, split: str, retrievers: tuple[str, ...], numbering: dict[str, int]):
        self.numbering = numbering
        self.lists: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for name in retrievers:
            run = read_run(directory / f"{split}__{name}.run")
            self.lists[name] = {q: self._arrays(ranked) for q, ranked in run.items()}
        self.qids = sorted(set().union(*(set(v) for v in self.lists.values())))

    def _arrays(self, ranked) -> tuple[np.ndarray, np.ndarray]:
        docs = np.array([self.numbering.setdefault(d, len(self.numbering)) for d, _ in ranked[:RUN_DEPTH]], np.int64)
        return docs, np.array([s for _, s in ranked[:RUN_DEPTH]], np.float64)

    def candidates(self, names, qid: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        empty = (np.zeros(0, np.int64), np.zeros(0))
        return {n: self.lists[n].get(qid, empty) for n in names}


def fused_run(runs: Runs, names, config: FusionConfig, k: int = 100,
              fill: str = "exact") -> dict[str, list[tuple[str, float]]]:
    """Each query's ``names`` fused as the engine fuses them (:meth:`lsr.searcher.Searcher.retrieve`): each
    retriever's top max(k, k') candidates, a candidate missing from one list scored by that retriever. ``fill``:
    ``exact`` looks the score up in the retriever's deeper run (a document below it gets the run's last score, an
    upper bound of its own), as the engine's exact scorers do; ``worst``: the retriever's worst retrieved score."""
    ids = {v: d for d, v in runs.numbering.items()}
    depth = max(k, config.depth)
    out = {}
    for qid in runs.qids:
        deep = {n: c for n, c in runs.candidates(names, qid).items() if len(c[0])}
        if not deep:
            out[qid] = []
            continue
        lists = {n: (c[0][:depth], c[1][:depth]) for n, c in deep.items()}
        scorers = {n: _run_scorer(*c) for n, c in deep.items()} if fill == "exact" else None
        fused = fuse(lists, FusionConfig.make(config, weights={n: config.weights[n] for n in lists}
                                              if config.weights else None), k, scorers)
        out[qid] = [(ids[int(d)], float(s)) for d, s in zip(fused.docs, fused.scores)]
    return out


def _run_scorer(docs: np.ndarray, scores: np.ndarray):
    """A retriever's scores of any documents read from its run (the last score of the run for those below it)."""
    order = np.argsort(docs)
    sorted_docs, sorted_scores = docs[order], scores[order]
    floor = float(scores[-1])

    def score(wanted: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(sorted_docs, wanted), len(sorted_docs) - 1)
        return np.where(sorted_docs[at] == wanted, sorted_scores[at], floor)
    return score


def single_run(runs: Runs, name: str, k: int = 100) -> dict[str, list[tuple[str, float]]]:
    ids = {v: d for d, v in runs.numbering.items()}
    return {q: [(ids[int(d)], float(s)) for d, s in zip(*[a[:k] for a in runs.lists[name].get(q, ([], []))])]
            for q in runs.qids}


def pseudo_inputs(pseudo: Runs, names, qrels: dict[str, dict[str, int]]):
    """Each retriever's candidates of every pseudo-query, and the doc number each query was taken from."""
    qids = [q for q in pseudo.qids if q in qrels]
    targets = [pseudo.numbering.setdefault(next(iter(qrels[q])), len(pseudo.numbering)) for q in qids]
    runs = {n: [pseudo.candidates([n], q)[n] for q in qids] for n in names}
    return runs, targets


def study_collection(name: str, runs_dir: Path, data: Path) -> dict:
    """Every single retriever and every 2- and 3-way fusion of one collection, scored on its test qrels."""
    directory = runs_dir / name
    retrievers = tuple(r for r in RETRIEVERS if (directory / f"test__{r}.run").is_file())
    numbering: dict[str, int] = {}
    test = Runs(directory, "test", retrievers, numbering)
    pseudo = Runs(directory, "pseudo", retrievers, numbering)
    pseudo_qrels = read_qrels(pseudo_qrels_file(name, runs_dir)).judgments
    qrels = read_qrels(data / COLLECTIONS[name] / "qrels" / "test.tsv").judgments

    def score(make) -> dict:
        """Test nDCG@10 and Recall@100 of ``make(runs)``, and its MRR@10 on the pseudo-queries (no labels)."""
        metrics, known_item = evaluate(make(test), qrels), evaluate(make(pseudo), pseudo_qrels, ("mrr@10",))
        return {"ndcg@10": round(metrics["ndcg@10"], 4), "recall@100": round(metrics["recall@100"], 4),
                "pseudo_mrr@10": round(known_item["mrr@10"], 4)}

    def fusion(names, config: FusionConfig, fill: str = "exact"):
        return lambda runs: fused_run(runs, names, config, fill=fill)

    rows = {r: score(lambda runs, r=r: single_run(runs, r)) for r in retrievers}
    weights: dict[str, dict] = {}
    for size in (2, 3):
        for names in itertools.combinations(retrievers, size):
            combo = "+".join(names)
            runs, targets = pseudo_inputs(pseudo, names, pseudo_qrels)
            runs = {n: [(docs[:DEPTH], scores[:DEPTH]) for docs, scores in lists] for n, lists in runs.items()}
            chosen = {"pseudo": pseudo_query_weights(runs, targets, normalization=LABEL_FREE_NORMALIZATION),
                      "agreement": agreement_weights(runs)}
            weights[combo] = chosen
            configs = {"rrf": FusionConfig("rrf"),
                       **{f"{norm}-equal": FusionConfig("convex", normalization=norm) for norm in NORMALIZATIONS},
                       **{f"{LABEL_FREE_NORMALIZATION}-{method}": FusionConfig(
                           "convex", normalization=LABEL_FREE_NORMALIZATION, weights=w) for method, w in chosen.items()}}
            if names == ("sparse", "dense"):
                configs["tmm-alpha0.25"] = FusionConfig("convex", normalization="tmm", alpha=0.25)  # an early default
            for method, config in configs.items():
                rows[f"{combo} {method}"] = score(fusion(names, FusionConfig.make(config, depth=DEPTH)))
            if size == 3:  # what the depth k' and the filling of missing scores do to the three-way fusion
                for norm in NORMALIZATIONS:
                    rows[f"{combo} {norm}-equal worst-fill"] = score(fusion(
                        names, FusionConfig("convex", normalization=norm, depth=DEPTH), fill="worst"))
                    for depth in OTHER_DEPTHS:
                        rows[f"{combo} {norm}-equal k'={depth}"] = score(fusion(
                            names, FusionConfig("convex", normalization=norm, depth=depth)))
    return {"retrievers": list(retrievers), "rows": rows, "weights": weights,
            "pseudo_queries": len(pseudo.qids), "test_queries": len(test.qids)}


def pseudo_qrels_file(name: str, runs_dir: Path) -> Path:
    return runs_dir.parent / "pseudo" / name / "qrels" / "test.tsv"


def summarize(collections: dict[str, dict]) -> dict[str, dict]:
    """Per fusion row: on how many collections it reaches the targets (nDCG@10 >= the best single retriever,
    Recall@100 >= every single retriever) and its mean nDCG@10 gap to the best single retriever."""
    out: dict[str, dict] = {}
    for study in collections.values():
        singles = [study["rows"][r] for r in study["retrievers"]]
        best_ndcg = max(s["ndcg@10"] for s in singles)
        best_recall = max(s["recall@100"] for s in singles)
        for row, m in study["rows"].items():
            if row in study["retrievers"]:
                continue
            s = out.setdefault(row, {"collections": 0, "ndcg_target": 0, "recall_target": 0, "ndcg_gap": [],
                                     "pseudo_mrr": []})
            s["collections"] += 1
            s["ndcg_target"] += m["ndcg@10"] >= best_ndcg
            s["recall_target"] += m["recall@100"] >= best_recall
            s["ndcg_gap"].append(m["ndcg@10"] - best_ndcg)
            s["pseudo_mrr"].append(m["pseudo_mrr@10"])
    for s in out.values():
        s["ndcg_gap"] = round(float(np.mean(s["ndcg_gap"])), 4)
        s["pseudo_mrr"] = round(float(np.mean(s["pseudo_mrr"])), 4)
    return out


def markdown(collections: dict[str, dict], summary: dict[str, dict]) -> str:
    names = list(collections)
    rows = list(dict.fromkeys(r for c in collections.values() for r in c["rows"]))
    lines = ["# Fusion study: single retrievers and every 2- and 3-way fusion", "",
             "Generated by `python -m lsr.eval.fusion_study report` from runs (k=1000) of `lsr eval`; see the "
             "module docstring for the commands. `minmax-equal`: equal-weight convex fusion with min-max "
             "normalisation (the default; `tmm-equal`, `zscore-equal`: the same with theoretical-min-max or z-score "
             "normalisation; `k'=N`: normalisation statistics and candidates from each retriever's top N; "
             "`worst-fill`: a missing score counted as the retriever's worst retrieved one); `*-pseudo`: weights chosen on the collection's known-item "
             "pseudo-queries; `*-agreement`: weights from retriever agreement on the same pseudo-queries; "
             "`rrf`: reciprocal rank fusion, k=60. Bold: best of the column.", ""]
    for metric in ("ndcg@10", "recall@100", "pseudo_mrr@10"):
        lines += [f"## {metric}", "", "| system | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        best = {c: max(m[metric] for m in collections[c]["rows"].values()) for c in names}
        for row in rows:
            cells = []
            for c in names:
                m = collections[c]["rows"].get(row)
                cells.append("" if m is None else (f"**{m[metric]:.4f}**" if m[metric] == best[c] else f"{m[metric]:.4f}"))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets", "", "Collections where the fusion's nDCG@10 ≥ the best single retriever's and its "
              "Recall@100 ≥ every single retriever's; mean nDCG@10 difference to the best single retriever; mean MRR@10 "
              "on the known-item pseudo-queries (no labels: what a collection can tell without test queries).", "",
              "| fusion | nDCG@10 target | Recall@100 target | mean nDCG@10 − best single | mean pseudo MRR@10 |",
              "|---|---:|---:|---:|---:|"]
    for row, s in sorted(summary.items(), key=lambda kv: -kv[1]["ndcg_gap"]):
        lines.append(f"| {row} | {s['ndcg_target']}/{s['collections']} | {s['recall_target']}/{s['collections']} "
                     f"| {s['ndcg_gap']:+.4f} | {s['pseudo_mrr']:.4f} |")
    lines += ["", "## Label-free weights chosen", "", "| collection | fusion | pseudo-queries | agreement |",
              "|---|---|---|---|"]
    for c in names:
        for combo, w in collections[c]["weights"].items():
            fmt = lambda ws: ", ".join(f"{k} {v:.2f}" for k, v in ws.items())
            lines.append(f"| {c} | {combo} | {fmt(w['pseudo'])} | {fmt(w['agreement'])} |")
    return "\n".join(lines) + "\n"


def run_report(runs_dir: Path, data: Path, out: Path) -> None:
    collections = {c: study_collection(c, runs_dir, data) for c in COLLECTIONS if (runs_dir / c).is_dir()}
    for c, study in collections.items():
        info = json.loads((runs_dir / c / "test__bm25.json").read_text()) if "bm25" in study["retrievers"] else {}
        study["bm25_implementation"] = info.get("implementation")
    summary = summarize(collections)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"depth": DEPTH, "label_free_normalization": LABEL_FREE_NORMALIZATION, "data": portable_path(data), "collections": collections, "summary": summary}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(collections, summary))
    print(out.with_suffix(".md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pseudo", help="write a dataset's known-item pseudo-queries as a BEIR-layout dataset")
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-n", type=int, default=DEFAULT_PSEUDO_QUERIES)
    r = sub.add_parser("report", help="fuse the runs and write the study")
    r.add_argument("--runs", type=Path, required=True, help="RUNS/<collection>/{test,pseudo}__<retriever>.run")
    r.add_argument("--data", type=Path, default=Path(os.environ.get("LSR_DATA", "data")))
    r.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fusion-study")
    args = parser.parse_args()
    if args.command == "pseudo":
        print(write_pseudo_dataset(args.dataset, args.out, args.n))
    else:
        run_report(args.runs, args.data, args.out)


if __name__ == "__main__":
    main()
