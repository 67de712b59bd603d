"""The `lsr` command line, run in-process (typer's CliRunner) and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lsr.cli import app
from lsr.index.storage import read_manifest
from tests.conftest import write_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def cli_index(engine):
    """The session's real index directory (built by the engine fixture)."""
    return str(engine.index_dir)


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_search_text_and_json(cli_index, engine):
    result = run("search", "parse command line arguments", "--index", cli_index, "-k", "3")
    assert result.exit_code == 0, result.output
    assert "module:" in result.output and result.stdout.count("\n") == 3
    result = run("search", "parse command line arguments", "--index", cli_index, "-k", "2", "--json")
    payload = json.loads(result.stdout)
    assert payload["query"] == "parse command line arguments" and len(payload["hits"]) == 2
    assert set(payload["hits"][0]) >= {"id", "score", "title"}
    assert payload["hits"] == [h.to_dict() for h in engine.search("parse command line arguments", k=2)]


def test_search_retrievers(cli_index, hybrid_engine):
    """--retriever: the default is the best combination the index holds; combinations fuse; bad specs are errors."""
    query = "parse command line arguments"
    index = str(hybrid_engine.index_dir)
    payload = json.loads(run("search", query, "--index", index, "-k", "3", "--json").stdout)
    assert payload["hits"] == [h.to_dict() for h in hybrid_engine.search(query, k=3)]
    assert all(h["sparse_score"] is not None and h["dense_score"] is not None for h in payload["hits"])
    payload = json.loads(run("search", query, "--index", index, "-k", "3", "--json", "--retriever", "dense+sparse",
                             "--weights", "sparse=1,dense=3").stdout)
    assert payload["hits"] == [h.to_dict() for h in hybrid_engine.search(query, k=3, retriever="sparse+dense",
                                                                         alpha=0.25)]
    for args, message in (
            (["--retriever", "sparse+colbert"], "unknown retriever 'colbert' in 'sparse+colbert'"),
            (["--retriever", "sparse+sparse"], "retriever 'sparse+sparse' names a retriever twice"),
            (["--weights", "sparse=heavy"], "--weights expects NAME=NUMBER,..., e.g. sparse=1,dense=2; got 'sparse=heavy'"),
            (["--retriever", "sparse+dense", "--weights", "sparse=1"], "fusion weights give no weight for dense")):
        result = runner.invoke(app, ["search", query, "--index", index, *args])
        assert result.exit_code == 2 and result.output.startswith(f"error: {message}"), result.output
    result = runner.invoke(app, ["search", query, "--index", cli_index, "--retriever", "dense"])
    assert result.exit_code == 2 and "has no dense vectors" in result.output


def test_search_queries_file_json_and_run(cli_index, corpus_dir, tmp_path):
    run_file = tmp_path / "run.trec"
    result = run("search", "--queries", str(corpus_dir / "queries.jsonl"), "--index", cli_index, "-k", "5",
                 "--json", "--run-out", str(run_file))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query_id"] for line in lines] == ["q1", "q2", "q3"]
    assert all(len(line["hits"]) == 5 and set(line["hits"][0]) == {"id", "score"} for line in lines)
    rows = [row.split() for row in run_file.read_text().splitlines()]
    assert len(rows) == 15 and rows[0][:4] == ["q1", "Q0", lines[0]["hits"][0]["id"], "1"]
    tsv = tmp_path / "q.tsv"
    tsv.write_text("a\tregular expression matching\nb\tsend email over smtp\n")
    result = run("search", "--queries", str(tsv), "--index", cli_index, "-k", "1", "--json")
    assert [json.loads(x)["query_id"] for x in result.stdout.splitlines()] == ["a", "b"]


@pytest.mark.parametrize("query", ["", "  \t "], ids=["empty", "whitespace"])
def test_empty_query_is_an_error(cli_index, query):
    result = runner.invoke(app, ["search", query, "--index", cli_index, "--json"])
    assert result.exit_code == 2 and result.output == "error: empty query: give some text to search for\n"


def test_empty_query_in_a_queries_file_is_an_error(cli_index, tmp_path):
    tsv = tmp_path / "q.tsv"
    tsv.write_text("a\tregular expression matching\n\nb\t \n")
    result = runner.invoke(app, ["search", "--queries", str(tsv), "--index", cli_index, "--json"])
    assert result.exit_code == 2 and result.output == f"error: {tsv}:3: empty query 'b': every query needs some text\n"
    jsonl = write_jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "gzip"}, {"_id": "q2", "text": ""}])
    result = runner.invoke(app, ["search", "--queries", str(jsonl), "--index", cli_index])
    assert result.exit_code == 2 and result.output == f"error: {jsonl}:2: empty query 'q2': every query needs some text\n"


def test_info(cli_index):
    result = run("info", "--index", cli_index, "--json")
    info = json.loads(result.stdout)
    assert info["documents"] > 100 and info["postings"] > 0 and info["model"]["name"] == "splade-tiny"
    manifest = read_manifest(Path(cli_index))
    structure_bytes = {name: sum((Path(cli_index) / manifest["arrays"][a]["file"]).stat().st_size for a in s["arrays"])
                       for name, s in manifest["structures"].items()}
    assert info["structure_bytes"] == structure_bytes and structure_bytes["bmp"] > 0  # bmp: built by default
    human = run("info", "--index", cli_index).output
    for key in ("documents", "terms", "postings", "size on disk", "model", "built", "structures: bmp"):
        assert key in human


def test_verify(cli_index):
    result = run("verify", "--index", cli_index)
    assert result.exit_code == 0 and "OK" in result.output


def test_bad_corpus_reports_file_line_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "fine"}\n{"id": "2"}\n')
    result = runner.invoke(app, ["index", str(bad), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 2
    assert "bad.jsonl:2: field 'text/contents/body'" in result.output
    assert not (tmp_path / "idx").exists()


def test_user_errors_are_one_line(cli_index, tmp_path):
    result = runner.invoke(app, ["search", "x", "--index", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no index" in result.output
    result = runner.invoke(app, ["search", "x", "--index", cli_index, "--mode", "warp"])
    assert result.exit_code == 2 and "unknown mode" in result.output
    result = runner.invoke(app, ["search", "x", "--index", cli_index, "--param", "alpha"])
    assert result.exit_code == 2 and "NAME=VALUE" in result.output
    result = runner.invoke(app, ["search", "--index", cli_index])
    assert result.exit_code == 2


def test_index_skip_bad_and_text_folder(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Bread baking\n\nKnead the dough and let it rise before baking.\n")
    (docs / "sub" / "b.txt").write_text("Bicycles have two wheels and pedals.\n")
    result = run("index", str(docs), "--index", str(tmp_path / "idx"))
    assert result.exit_code == 0 and "indexed 2 documents" in result.output
    hits = json.loads(run("search", "how to bake bread", "--index", str(tmp_path / "idx"), "--json").stdout)["hits"]
    assert hits[0]["id"] == "a.md" and hits[0]["title"] == "Bread baking"
    # a plain build has the safe pruned mode's structure; --structures none opts out
    bmp = json.loads(run("search", "how to bake bread", "--index", str(tmp_path / "idx"), "--json", "--mode", "bmp").stdout)
    assert [h["id"] for h in bmp["hits"]] == [h["id"] for h in hits]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"id": "1", "text": "ok"}, {"id": "2"}, {"id": "1", "text": "dup"}])
    result = run("index", str(mixed), "--index", str(tmp_path / "idx2"), "--skip-bad", "--structures", "none")
    assert result.exit_code == 0 and "skipped 2 bad record(s)" in result.output
    result = runner.invoke(app, ["search", "ok", "--index", str(tmp_path / "idx2"), "--mode", "bmp"])
    assert result.exit_code == 2 and "no 'bmp' structure" in result.output, result.output


def test_console_script_subprocess(cli_index, engine):
    out = subprocess.run([sys.executable, "-m", "lsr.cli", "search", "json encoder", "--index", cli_index, "-k", "3", "--json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert json.loads(out)["hits"] == [h.to_dict() for h in engine.search("json encoder", k=3)]  # CLI = library


def test_encode_shards_resume_and_index_vectors(tmp_path, module_docs):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in module_docs[:12]])
    parts = []
    for i in range(2):
        out = tmp_path / f"v.{i}.jsonl"
        assert run("encode", str(corpus), str(out), "--shard", f"{i}/2", "--with-text").exit_code == 0
        parts.append(out)
    full = parts[0].read_bytes()
    assert full.count(b"\n") == 6
    parts[0].write_bytes(full[: full.index(b"\n", full.index(b"\n") + 1) + 40])  # two lines and a torn third
    result = run("encode", str(corpus), str(parts[0]), "--shard", "0/2", "--with-text", "--resume")
    assert result.exit_code == 0 and "(4 new)" in result.stdout
    resumed = [json.loads(line) for line in parts[0].read_text().splitlines()]
    original = [json.loads(line) for line in full.decode().splitlines()]
    assert [r["id"] for r in resumed] == [r["id"] for r in original]
    for a, b in zip(resumed, original):  # batches differ after a resume: equal up to float rounding
        terms = a["vector"].keys() | b["vector"].keys()
        assert max(abs(a["vector"].get(t, 0) - b["vector"].get(t, 0)) for t in terms) < 1e-3
    merged = tmp_path / "all.jsonl"
    merged.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    assert run("index", str(merged), "--index", str(tmp_path / "vidx")).exit_code == 0
    assert run("index", str(corpus), "--index", str(tmp_path / "tidx")).exit_code == 0
    by_vectors = json.loads(run("search", "json encoder", "--index", str(tmp_path / "vidx"), "--retriever", "sparse", "--json").stdout)["hits"]
    by_text = json.loads(run("search", "json encoder", "--index", str(tmp_path / "tidx"), "--retriever", "sparse", "--json").stdout)["hits"]
    assert [h["id"] for h in by_vectors] == [h["id"] for h in by_text]
    assert by_vectors[0]["title"] == by_text[0]["title"] != ""
