"""`lsr eval` / `lsr compare`: metrics against hand-computed values, dataset checks, the index cache, retrievers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsr import evaluation as ev
from lsr.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()

QUERIES = [
    {"_id": "q1", "text": "parse command line arguments"},
    {"_id": "q2", "text": "send email over smtp"},
    {"_id": "q3", "text": "regular expression matching"},
    {"_id": "q4", "text": "an unjudged query"},
]
QRELS = [("q1", "module:argparse#1", 1), ("q1", "module:optparse#1", 1), ("q1", "module:getopt#1", 1),
         ("q2", "module:smtplib#1", 1), ("q3", "module:re#1", 2), ("q3", "module:re#2", 1)]


def make_dataset(root: Path, corpus_src: Path | None = None, qrels=QRELS, queries=QUERIES, crlf: bool = False,
                 split: str = "test") -> Path:
    """A BEIR-layout dataset dir: the fixture corpus (copied byte for byte), queries, qrels/<split>.tsv."""
    root.mkdir(parents=True, exist_ok=True)
    if corpus_src is not None:
        shutil.copy(corpus_src / "corpus.jsonl", root / "corpus.jsonl")
    write_jsonl(root / "queries.jsonl", queries)
    (root / "qrels").mkdir(exist_ok=True)
    eol = "\r\n" if crlf else "\n"
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / f"{split}.tsv").write_bytes(eol.join(rows).encode() + eol.encode())
    return root


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------------- metric sanity anchors
def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d1": 2, "d5": 1}, "q3": {"d9": 1}}
    run = {"q1": [("d3", 4.0), ("d1", 3.0), ("d4", 2.0), ("d2", 1.0)],
           "q2": [("d5", 2.0), ("d1", 1.0)]}  # q3 is judged but unanswered: it scores 0
    # nDCG@10 (trec_eval: gain = relevance, discount = log2(rank + 1)):
    #   q1: DCG  = 1/log2(3) + 1/log2(5) = 0.630930 + 0.430677 = 1.061606
    #       IDCG = 1 + 1/log2(3)                               = 1.630930   -> 1.061606 / 1.630930 = 0.650920
    #   q2: DCG  = 1/1 + 2/log2(3) = 1 + 1.261860 = 2.261860
    #       IDCG = 2/1 + 1/log2(3) = 2 + 0.630930 = 2.630930                -> 2.261860 / 2.630930 = 0.859719
    #   q3: 0.
    #   mean = (0.650920 + 0.859719 + 0) / 3 = 0.503546
    # MRR@10: q1 first relevant at rank 2 -> 1/2, q2 -> 1, q3 -> 0; mean 0.5.
    # Recall@100: 2/2, 2/2, 0/1 -> 2/3.  MAP@100: q1 (1/2 + 2/4) / 2 = 0.5, q2 (1/1 + 2/2) / 2 = 1, q3 0 -> 0.5.
    m = ev.evaluate(run, qrels)
    assert m["ndcg@10"] == pytest.approx(0.503546, abs=1e-6)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@100"] == pytest.approx(2 / 3)
    assert m["map@100"] == pytest.approx(0.5)
    per = ev.per_query(run, qrels)
    assert per["ndcg@10"]["q1"] == pytest.approx(0.650920, abs=1e-6)
    assert per["ndcg@10"]["q2"] == pytest.approx(0.859719, abs=1e-6)


def test_ties_are_evaluated_in_the_returned_order():
    # trec_eval would put the tied d2 before d1 (doc id descending); our ranking says d1 first.
    assert ev.evaluate({"q": [("d1", 1.0), ("d2", 1.0)]}, {"q": {"d2": 1}})["mrr@10"] == pytest.approx(0.5)


def test_latency_is_measured_on_one_thread():
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    with ev.single_thread():
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    assert (torch.get_num_threads(), numba.get_num_threads()) == before
    assert ev.latency_summary([1.0, 2.0, 3.0, 10.0])["p50"] == pytest.approx(2.5)


# ---------------------------------------------------------------------- datasets
def test_read_qrels_beir_crlf_header_and_trec(tmp_path):
    (tmp_path / "a.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\n1\t31715818\t1\r\n3\t14717500\t2\r\n")
    assert ev.read_qrels(tmp_path / "a.tsv").judgments == {"1": {"31715818": 1}, "3": {"14717500": 2}}
    (tmp_path / "b.txt").write_text("1 0 d1 1\n1 0 d2 0\n")
    assert ev.read_qrels(tmp_path / "b.txt").judgments == {"1": {"d1": 1, "d2": 0}}
    (tmp_path / "c.tsv").write_text("q\td\tscore\nq1\td1\tyes\n")
    with pytest.raises(ValueError, match=r"c.tsv:2: field 'score'"):
        ev.read_qrels(tmp_path / "c.tsv")


def test_loader_agrees_with_beirs_generic_data_loader(tmp_path, corpus_dir):
    from beir.datasets.data_loader import GenericDataLoader

    root = make_dataset(tmp_path / "ds", corpus_dir, crlf=True)
    ds = ev.load_dataset(root)
    _, queries, qrels = GenericDataLoader(str(root)).load(split="test")
    assert ds.queries == queries and ds.qrels == qrels
    assert "q4" not in ds.queries and ds.num_docs == sum(1 for _ in open(root / "corpus.jsonl"))


@pytest.mark.parametrize("case, expected", [
    ("no-split", r"qrels/test.tsv: no qrels for split 'test' \(available splits: dev\)"),
    ("no-judged-queries", r"queries.jsonl: none of its 4 queries has judgments in .*test.tsv"),
    ("unknown-query", r"test.tsv:8: judged query 'q9' is not in .*queries.jsonl"),
    ("unknown-doc", r"test.tsv:8: judged document 'nope' is not in .*corpus.jsonl \(1 judged document missing"),
    ("empty-corpus", r"corpus.jsonl: no documents found"),
    ("bad-score", r"test.tsv:2: field 'score': relevance must be an integer"),
    ("not-a-dataset", r"no corpus.jsonl or corpus.jsonl.gz"),
])
def test_bad_datasets_fail_with_one_line_naming_the_file(tmp_path, corpus_dir, case, expected):
    root = tmp_path / case
    if case == "no-split":
        make_dataset(root, corpus_dir, split="dev")
    elif case == "no-judged-queries":
        make_dataset(root, corpus_dir, qrels=[("x1", "module:re#1", 1)])
    elif case == "unknown-query":
        make_dataset(root, corpus_dir, qrels=QRELS + [("q9", "module:re#1", 1)])
    elif case == "unknown-doc":
        make_dataset(root, corpus_dir, qrels=QRELS + [("q2", "nope", 1)])
    elif case == "empty-corpus":
        make_dataset(root)
        (root / "corpus.jsonl").write_text("")
    elif case == "bad-score":
        make_dataset(root, corpus_dir, qrels=[("q1", "module:re#1", "high")])
    else:
        root.mkdir()
    result = cli("eval", root, "--cache-dir", tmp_path / "cache", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip()
    assert message.count("\n") == 0 and message.startswith("error: "), message
    assert re.search(expected, message), message


def test_beir_name_is_downloaded_with_beirs_loader(tmp_path, monkeypatch, corpus_dir):
    import beir.util

    calls = []

    def fake_download(url, out_dir, chunk_size=1024):
        calls.append(url)
        return str(make_dataset(Path(out_dir) / "tinyset", corpus_dir))

    monkeypatch.setattr(beir.util, "download_and_unzip", fake_download)
    ds = ev.load_dataset("tinyset", cache_dir=tmp_path)
    assert calls == ["https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/tinyset.zip"]
    assert ds.root == tmp_path / "datasets" / "tinyset" and len(ds.queries) == 3
    ev.load_dataset("tinyset", cache_dir=tmp_path)  # downloaded once, then reused
    assert len(calls) == 1

    def offline(url, out_dir, chunk_size=1024):
        raise OSError("network is unreachable")

    monkeypatch.setattr(beir.util, "download_and_unzip", offline)
    with pytest.raises(ev.EvalError, match=r"otherset: no such directory, and downloading BEIR dataset 'otherset'"):
        ev.load_dataset("otherset", cache_dir=tmp_path)


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus_dir) -> Path:
    return make_dataset(tmp_path_factory.mktemp("beir") / "tiny", corpus_dir)


def test_sparse_eval_end_to_end_and_the_cache_is_reused(tmp_path, dataset, engine, monkeypatch):
    cache, run_file, results = tmp_path / "cache", tmp_path / "run.trec", tmp_path / "results"
    result = cli("eval", dataset, "--cache-dir", cache, "--adopt-index", engine.index_dir, "--json", "--no-progress",
                 "--run-out", run_file, "--results-dir", results)
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert (r["dataset"], r["retriever"], r["mode"], r["implementation"], r["model"]) == \
        ("tiny", "sparse", "exact", "lsr", "splade-tiny")
    assert r["queries"] == 3 and r["documents"] == engine.index.num_docs and r["k"] == 100
    assert r["ndcg@10"] > 0.5 and 0 < r["recall@100"] <= 1 and r["mrr@10"] > 0.5 and r["map@100"] > 0
    for key in ("latency_ms", "latency_with_encoding_ms", "encoding_ms"):
        assert set(r[key]) == {"mean", "p50", "p99"} and r[key]["p99"] >= r[key]["p50"] > 0
    assert r["latency_with_encoding_ms"]["mean"] > r["latency_ms"]["mean"] and r["index_size_bytes"] > 0
    lines = run_file.read_text().splitlines()
    assert lines[0].split()[:4] == ["q1", "Q0", lines[0].split()[2], "1"] and {ln.split()[0] for ln in lines} == {"q1", "q2", "q3"}
    assert json.loads((results / "tiny__sparse-exact.json").read_text())["ndcg@10"] == r["ndcg@10"]
    # the run file evaluates to the same numbers
    assert ev.evaluate(ev.read_run(run_file), ev.load_dataset(dataset).qrels)["ndcg@10"] == pytest.approx(r["ndcg@10"], abs=1e-6)

    import lsr.engine

    def no_build(*a, **kw):
        raise AssertionError("the cached index should have been reused")

    monkeypatch.setattr(lsr.engine.Engine, "build", no_build)
    again = ev.run_eval(dataset, cache_dir=cache, progress=False)
    assert again["ndcg@10"] == r["ndcg@10"]


def test_adopting_an_index_of_another_corpus_is_refused(tmp_path, engine, corpus_dir):
    other = make_dataset(tmp_path / "other", corpus_dir)
    with open(other / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "extra", "text": "one more document"}) + "\n")
    with pytest.raises(ev.EvalError, match=r"cannot reuse this index .* holds \d+ documents, the corpus \d+"):
        ev.run_eval(other, cache_dir=tmp_path / "cache", adopt=engine.index_dir, progress=False)
    renamed = make_dataset(tmp_path / "renamed", corpus_dir)
    text = (renamed / "corpus.jsonl").read_text().replace('"module:wave#4"', '"module:wave#9"')
    (renamed / "corpus.jsonl").write_text(text)
    with pytest.raises(ev.EvalError, match=r"holds document 'module:wave#4', which the corpus has not"):
        ev.run_eval(renamed, cache_dir=tmp_path / "cache", adopt=engine.index_dir, progress=False)


def test_bm25_baseline_says_which_implementation(tmp_path, dataset):
    r = ev.run_eval(dataset, retriever="pyserini-bm25", bm25="bm25s", cache_dir=tmp_path, progress=False)
    assert r["implementation"] == "bm25s" and r["mode"] is None and r["details"]["params"]["k1"] == 0.9
    assert r["ndcg@10"] > 0.3 and r["index_size_bytes"] > 0
    assert ev.result_key(r) == "bm25"
    assert ev.result_key({**r, "retriever": "bm25", "implementation": "pyserini"}) == "bm25"  # records before


def test_native_bm25_is_added_to_an_index_without_it(tmp_path, dataset, encoder):
    from lsr import Engine

    old = Engine.build(dataset, tmp_path / "old", encoder=encoder, progress=False, dense=False, bm25=False)
    cache = tmp_path / "cache"
    r = ev.run_eval(dataset, retriever="bm25", cache_dir=cache, adopt=old.index_dir, progress=False)
    assert r["implementation"] == "lsr-bm25" and r["mode"] == "exact" and ev.result_key(r) == "bm25-native"
    assert r["details"]["params"]["analyzer"] == "word" and r["index_size_bytes"] == r["details"]["sizes"]["bm25"] > 0
    assert r["ndcg@10"] > 0.3
    bmp = ev.run_eval(dataset, retriever="bm25", mode="bmp", cache_dir=cache, progress=False)
    assert ev.result_key(bmp) == "bm25-native-bmp" and bmp["ndcg@10"] == r["ndcg@10"]  # safe BMP: same ranking


def test_dense_and_hybrid_go_through_the_engine(tmp_path, dataset, hybrid_engine):
    cache = tmp_path / "cache"
    dense = ev.run_eval(dataset, retriever="dense", cache_dir=cache, adopt=hybrid_engine.index_dir, progress=False)
    assert dense["implementation"] == "lsr-dense-exact" and dense["ndcg@10"] > 0.3 and dense["mode"] is None
    for fusion in ("rrf", "convex"):
        r = ev.run_eval(dataset, retriever="hybrid", fusion=fusion, cache_dir=cache, progress=False)
        assert r["fusion"] == fusion and r["mode"] == "exact" and ev.result_key(r) == f"hybrid-{fusion}"
        assert r["ndcg@10"] > 0.3 and r["details"]["fusion"]["method"] == fusion
    with pytest.raises(ValueError, match="unknown fusion"):
        ev.run_eval(dataset, retriever="hybrid", fusion="nope", cache_dir=cache, progress=False)
    # the engine's default retriever: every retriever of the default index, the default fusion, the three-way column
    auto = ev.run_eval(dataset, retriever="auto", cache_dir=cache, progress=False)
    assert auto["retrievers"] == ["sparse", "dense", "bm25"] and auto["fusion"] == "convex" and auto["mode"] == "exact"
    assert ev.result_key(auto) == "sparse+dense+bm25-convex" and auto["query_encoder"] == "model"
    assert auto["ndcg@10"] == r["ndcg@10"]  # hybrid (every retriever) with the default fusion: the same ranking
    # a combination goes through the same engine path; label-free weights are chosen before the queries
    r = ev.run_eval(dataset, retriever="dense+sparse", cache_dir=cache, progress=False,
                    params={"fusion.weights": "agreement"})
    assert r["retrievers"] == ["sparse", "dense"] and ev.result_key(r) == "dense+sparse-convex-agreement"
    assert r["weights"] == pytest.approx(hybrid_engine.label_free_weights("sparse+dense", "agreement"))
    assert r["ndcg@10"] > 0.3 and r["mode"] == "exact"
    for spec, params, message in (("sparse+nope", {}, "unknown retriever 'nope'"),
                                  ("sparse+dense", {"fusion.weights": "oracle"}, "fusion.weights='oracle'"),
                                  ("sparse+dense", {"fusion.weights": {"sparse": 1}}, "no weight for dense")):
        with pytest.raises(ev.EvalError, match=message):
            ev.run_eval(dataset, retriever=spec, params=params, cache_dir=cache, progress=False)


def test_registered_retrievers_plug_in(tmp_path, dataset, monkeypatch):
    @ev.register_retriever("oracle")
    def oracle(ctx):
        def search(_, k):
            return sorted(ctx.dataset.qrels[current[0]].items(), key=lambda x: -x[1])[:k]

        current = [None]

        def encode(text):
            current[0] = next(q for q, t in ctx.dataset.queries.items() if t == text)
            return text

        return ev.timed_queries(ctx.dataset.queries, encode, search, ctx.k, progress=False,
                                info={"implementation": "oracle"})

    monkeypatch.setitem(ev.RETRIEVERS, "oracle", oracle)
    r = ev.run_eval(dataset, retriever="oracle", cache_dir=tmp_path, progress=False)
    assert r["ndcg@10"] == pytest.approx(1.0) and r["recall@100"] == pytest.approx(1.0)
    result = cli("eval", dataset, "--retriever", "nope", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and "retriever 'nope' is not available" in result.output


# ---------------------------------------------------------------------- compare
def test_compare_paired_t_test(tmp_path):
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}, "q3": {"d1": 1}}
    ev.write_run(tmp_path / "a.trec", {"q1": [("d1", 3), ("d2", 2), ("d4", 1)], "q2": [("d3", 1.0), ("d4", 0.5)],
                                       "q3": [("d2", 2), ("d1", 1)]})
    ev.write_run(tmp_path / "b.trec", {"q1": [("d4", 3), ("d2", 2)], "q2": [("d4", 1.0), ("d3", 0.5)],
                                       "q3": [("d1", 2)]})
    (tmp_path / "qrels.tsv").write_text("".join(f"{q}\t{d}\t{r}\n" for q, docs in qrels.items() for d, r in docs.items()))
    result = cli("compare", tmp_path / "a.trec", tmp_path / "b.trec", "--qrels", tmp_path / "qrels.tsv", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ndcg = report["metrics"]["ndcg@10"]
    # same numbers as ranx.compare(..., stat_test="student") on these runs
    assert ndcg["a"] == pytest.approx(0.8769765845238192) and ndcg["b"] == pytest.approx(0.6725941869353331)
    assert ndcg["p_value"] == pytest.approx(0.5603663481058974) and not ndcg["significant"]
    assert report["metrics"]["recall@100"]["p_value"] == pytest.approx(0.4226497308103743)
    assert (ndcg["b_wins"], ndcg["ties"], ndcg["b_losses"]) == (1, 0, 2)
    text = cli("compare", tmp_path / "a.trec", tmp_path / "b.trec", "--qrels", tmp_path / "qrels.tsv")
    assert "ndcg@10" in text.output and "0.5604" in text.output
    bad = cli("compare", tmp_path / "a.trec", tmp_path / "missing.trec", "--qrels", tmp_path / "qrels.tsv")
    assert bad.exit_code == 2 and "missing.trec: no such run file" in bad.output


# ---------------------------------------------------------------------- results table
def test_make_results_builds_the_table_and_plots(tmp_path):
    from lsr.eval import make_results

    results = tmp_path / "results"
    results.mkdir()
    base = {"split": "test", "queries": 10, "documents": 100, "k": 100, "mode": None, "fusion": None,
            "recall@100": 0.9, "mrr@10": 0.5, "map@100": 0.4, "implementation": "x",
            "latency_ms": {"mean": 1.5, "p50": 1.0, "p99": 3.0},
            "latency_with_encoding_ms": {"mean": 5.0, "p50": 4.0, "p99": 9.0}, "index_size_bytes": 2_000_000}
    (results / "a.json").write_text(json.dumps({**base, "dataset": "scifact", "retriever": "bm25", "ndcg@10": 0.679}))
    (results / "b.json").write_text(json.dumps({**base, "dataset": "scifact", "retriever": "sparse", "mode": "exact",
                                                "ndcg@10": 0.6436}))
    (results / "c.json").write_text(json.dumps({**base, "dataset": "scifact", "retriever": "bm25", "mode": "exact",
                                                "implementation": "lsr-bm25", "ndcg@10": 0.6789}))
    (results / "fusion-scifact.json").write_text(json.dumps({"metric": "nDCG@10", "grid": []}))  # not a record
    out = tmp_path / "RESULTS.md"
    assert make_results.main(["--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| scifact |"))
    assert row.startswith("| scifact | **0.679 / 0.900 (1.5 ms)** | 0.679 / 0.900 (1.5 ms) | 0.644 / 0.900 (1.5 ms) | — |")
    assert "| dataset | Pyserini BM25 | BM25 (native) | sparse exact |" in text
    assert row.endswith("| Pyserini BM25 | — |")  # the best system by nDCG@10 (the first of a tie); no default run
    # the default (`--retriever auto`, recorded with the retrievers it resolved to) fills the three-way column and is
    # checked against the best single retriever (nDCG@10) and each of them (Recall@100)
    fused = {**base, "dataset": "scifact", "retriever": "auto", "retrievers": ["sparse", "dense", "bm25"],
             "fusion": "convex", "mode": "exact", "ndcg@10": 0.70, "recall@100": 0.95}
    (results / "d.json").write_text(json.dumps({**base, "dataset": "scifact", "retriever": "dense", "ndcg@10": 0.645,
                                                "recall@100": 0.92}))
    (results / "e.json").write_text(json.dumps(fused))
    (results / "f.json").write_text(json.dumps({**fused, "dataset": "time", "ndcg@10": 0.60, "recall@100": 0.99}))
    (results / "g.json").write_text(json.dumps({**base, "dataset": "time", "retriever": "bm25", "ndcg@10": 0.65}))
    (results / "h.json").write_text(json.dumps({**base, "dataset": "time", "retriever": "dense", "ndcg@10": 0.58}))
    (results / "i.json").write_text(json.dumps({**base, "dataset": "time", "retriever": "sparse", "mode": "exact",
                                                "ndcg@10": 0.55, "latency_ms": {"mean": 0.5}}))
    (results / "j.json").write_text(json.dumps({**fused, "dataset": "time", "retriever": "sparse+dense",
                                                "retrievers": ["sparse", "dense"], "ndcg@10": 0.62,
                                                "latency_ms": {"mean": 1.25}}))
    assert make_results.main(["--results", str(results), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = {d: next(line for line in lines if line.startswith(f"| {d} |")) for d in ("scifact", "time")}  # main table
    assert "**0.700 / 0.950 (1.5 ms)**" in rows["scifact"]
    assert rows["scifact"].endswith("| sparse+dense+BM25 convex (default) | nDCG@10 ✓, R@100 ✓ |")
    assert rows["time"].endswith("| Pyserini BM25 | nDCG@10 ✗, R@100 ✓ |")
    assert "| time | 1.50 | 5.00 | 1.25 | 5.00 | — / — |" in lines  # latency: three-way next to two-way
    assert "| time | — |" in text and "Do not edit by hand" in text
    assert (tmp_path / "plots" / "ndcg_at_10.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "recall_vs_latency.png").stat().st_size > 1000


# ---------------------------------------------------------------------- paths in result files
def test_portable_paths(tmp_path, monkeypatch):
    import tempfile

    from lsr.evaluation.results import portable_argv, portable_model, portable_path

    data, cache, work, home, tmp = (tmp_path / n for n in ("data", "cache", "work", "home", "tmp"))
    for d in (data / "beir" / "scifact", cache / "indexes" / "x", work / "runs" / "ft", home / "notes", tmp / "t1"):
        d.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("LSR_DATA", str(data))
    monkeypatch.setenv("LSR_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert portable_path(data / "beir" / "scifact") == "$LSR_DATA/beir/scifact"
    assert portable_path(cache / "indexes" / "x") == "$LSR_CACHE/indexes/x"
    assert portable_path(work / "runs" / "ft") == portable_path("runs/ft") == "runs/ft"
    assert portable_path(home / "notes") == "~/notes" and portable_path(tmp / "t1") == "$TMPDIR/t1"
    monkeypatch.delenv("LSR_DATA")
    assert portable_path(data / "beir" / "scifact") == "../data/beir/scifact"  # no root: relative to the cwd
    assert portable_argv(["--build", str(work / "runs" / "ft"), "-k", "3"]) == "--build runs/ft -k 3"
    assert portable_model(str(work / "runs" / "ft")) == "runs/ft" and portable_model("splade-tiny") == "splade-tiny"


def test_committed_results_name_no_machine_paths():
    """Result files and the tables made from them record relative or symbolic paths only."""
    root = Path(__file__).resolve().parent.parent / "eval"
    absolute = re.compile(r"(?<![\w.$~])/(?:work|root|home|tmp|Users|var|opt|mnt)/")
    files = [*root.glob("results/*.json"), *root.glob("results/*.md"), root / "RESULTS.md", *root.glob("*.py")]
    found = [f"{f.name}: {m.group(0)}" for f in files for m in absolute.finditer(f.read_text(encoding="utf-8"))]
    assert found == []
