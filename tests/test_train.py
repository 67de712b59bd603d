"""`lsr train`: a few real steps of the embedded splade-tiny on a tiny self-written dataset, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lsr.cli import app
from lsr.training import SpladeModel, TrainConfig, TrainError, load_training_data, train
from tests.conftest import write_jsonl

runner = CliRunner()

DOCS = [
    ("d1", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen."),
    ("d2", "Mitochondria", "The mitochondrion produces ATP through cellular respiration in eukaryotic cells."),
    ("d3", "Volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gases."),
    ("d4", "Glaciers", "Glaciers form where snow accumulates faster than it melts and compacts into ice."),
    ("d5", "Vaccines", "Vaccines train the immune system to recognise a pathogen without causing disease."),
    ("d6", "Antibiotics", "Antibiotics kill bacteria or stop their growth; they do not work against viruses."),
    ("d7", "Earthquakes", "Earthquakes happen when stress on a fault is released as seismic waves."),
    ("d8", "Tides", "The gravitational pull of the moon and the sun causes the ocean tides."),
    ("d9", "Insulin", "Insulin lets cells take up glucose from the blood; diabetes disturbs this."),
    ("d10", "Lightning", "Lightning is an electrostatic discharge between clouds or between a cloud and the ground."),
]
QUERIES = [
    ("q1", "how do plants make sugar from light"), ("q2", "where is ATP made in the cell"),
    ("q3", "what comes out of an erupting volcano"), ("q4", "how does ice build up into glaciers"),
    ("q5", "how do vaccines protect against infection"), ("q6", "do antibiotics work on viruses"),
    ("q7", "what causes seismic waves"), ("q8", "why does the sea level rise and fall"),
    ("q9", "hormone that controls blood sugar"), ("q10", "electric discharge during storms"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainset")
    write_jsonl(root / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in DOCS])
    write_jsonl(root / "queries.jsonl", [{"_id": i, "text": t} for i, t in QUERIES])
    (root / "qrels").mkdir()
    rows = "".join(f"q{i}\td{i}\t1\n" for i in range(1, 11))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=1e-4, doc_max_length=48, query_max_length=16, checkpoint_every=2,
                hard_negatives="bm25", negatives=1, negatives_depth=3, progress=False, threads=1, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "model"
    train(_cfg(), out, dataset=dataset)
    return out


def test_training_changes_loss_and_writes_a_loadable_checkpoint(trained, dataset, tmp_path):
    from lsr import Engine
    from lsr.models import resolve_model

    report = json.loads((trained / "lsr_train" / "report.json").read_text())
    assert report["finished"] and report["steps"] == 6 and report["data"]["pairs"] == 10
    losses = [row["loss"] for row in report["losses"]]
    assert len(losses) >= 2 and losses[0] != losses[-1]
    assert all(np.isfinite(losses)) and {"ce", "reg_q", "reg_d", "nnz_d", "nnz_q"} <= set(report["losses"][0])
    assert not (trained / "lsr_train" / "checkpoints").exists()  # removed once the run is complete
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (trained / name).is_file()
    start = _weights(resolve_model(None).path)
    after = _weights(trained)
    common = set(after) & set(start)
    assert len(common) > 10 and any(not np.array_equal(after[k], start[k]) for k in common)
    # `lsr index --model DIR` takes it; inference-free works on its index too
    result = runner.invoke(app, ["index", str(dataset), "--index", str(tmp_path / "idx"), "--model", str(trained),
                                 "--no-dense"])
    assert result.exit_code == 0, result.output
    engine = Engine.open(tmp_path / "idx")
    assert engine.manifest["model"]["name"] == str(trained)
    assert engine.search("volcano eruption lava", k=1)[0].id == "d3"
    assert engine.search("volcano eruption lava", k=1, query_encoder="inference-free")[0].id == "d3"


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(trained, dataset, tmp_path):
    out = tmp_path / "model"
    # killed after step 5 (mid-epoch): the last checkpoint is step 4 (every 2 steps and at epoch ends)
    partial = train(_cfg(), out, dataset=dataset, _stop_after=5)
    assert partial.report == {"finished": False, "step": 5}
    assert [p.name for p in (out / "lsr_train" / "checkpoints").iterdir()] == ["step-0000004"]
    with pytest.raises(TrainError, match="--resume"):
        train(_cfg(), out, dataset=dataset)
    with pytest.raises(TrainError, match="lr"):
        train(_cfg(lr=5e-5), out, dataset=dataset, resume=True)
    result = train(_cfg(checkpoint_every=5), out, dataset=dataset, resume=True)  # checkpoint interval may change
    assert result.report["finished"] and result.report["steps"] == 6
    a, b = _weights(trained), _weights(out)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    first = json.loads((trained / "lsr_train" / "report.json").read_text())["losses"]
    assert result.report["losses"][:3] == first[:3]  # the windows logged before the interruption are kept


def test_fast_max_pooling_equals_the_encoder(dataset):
    from lsr.encoder import SpladeEncoder
    from lsr.models import resolve_model

    encoder = SpladeEncoder(doc_max_length=64)
    net = SpladeModel(resolve_model(None).path, "cpu")
    net.model.eval()
    texts = [f"{t} {x}" for _, t, x in DOCS[:4]]
    reps = net.encode(net.tokenize(texts, 64)).detach().numpy()
    batch = encoder.encode_documents(texts)
    for i in range(len(texts)):
        terms, weights = batch.row(i)
        dense = np.zeros(reps.shape[1], np.float32)
        dense[terms] = weights
        np.testing.assert_allclose(reps[i], dense, atol=1e-5)


def test_pairs_files_teacher_and_inference_free_variant(dataset, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"query": "how do plants make sugar", "doc": "Plants turn light into glucose."},
        {"query_id": "q3", "doc_id": "d3"},
        {"query": "tides", "doc_id": "d8"},
    ])
    data = load_training_data(dataset, pairs)
    assert len(data.examples) == 3 and data.examples[1] == ("q3", "d3")
    assert data.queries["how do plants make sugar"] == "how do plants make sugar"
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("what causes tides\tThe moon pulls the oceans.\nice ages\tGlaciers grew.\n")
    assert len(load_training_data(None, tsv).examples) == 2
    teacher = tmp_path / "teacher.tsv"
    teacher.write_text("query_id\tdoc_id\tscore\n" + "".join(
        f"q{i}\td{i}\t{10 + i}\nq{i}\td{i % 10 + 1}\t{i / 2}\n" for i in range(1, 11)))
    out = tmp_path / "m"
    result = train(_cfg(epochs=1, teacher=str(teacher), query_encoder="inference-free", doc_reg="l0",
                        hard_negatives="none"), out, dataset=dataset)
    assert result.report["finished"] and result.report["data"]["teacher_scores"] == 20
    assert any("distill" in row for row in result.report["losses"])
    assert all(row["reg_q"] == 0 for row in result.report["losses"])  # no query model in the document-only variant


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("case, expected", [
    ("empty", r"pairs.tsv: empty file: no training pairs"),
    ("columns", r"pairs.tsv:2: expected 2 tab-separated columns \(query, document\), 3"),
    ("unknown-doc", r"pairs.jsonl:2: field 'doc_id': unknown document 'nope': not in .*corpus.jsonl"),
    ("unknown-query", r"train.tsv:3: field 'query_id': unknown query 'q99': not in .*queries.jsonl"),
    ("bad-json", r"pairs.jsonl:1: malformed JSON"),
    ("teacher-score", r"teacher.tsv:2: field 'score': not a number: 'high'"),
    ("teacher-unknown", r"teacher.tsv:1: field 'doc': unknown document 'd99'"),
    ("teacher-empty", r"teacher.tsv: empty file: no teacher scores"),
    ("no-split", r"qrels/dev.tsv: no qrels for split 'dev' \(available: test, train\)"),
])
def test_bad_training_input_names_file_and_line(dataset, tmp_path, case, expected):
    args = ["train", "--out", tmp_path / "out", "--no-eval", "--no-progress", "--hard-negatives", "none"]
    ds = dataset
    if case == "empty":
        (tmp_path / "pairs.tsv").write_text("\n\n")
        args += ["--pairs", tmp_path / "pairs.tsv"]
    elif case == "columns":
        (tmp_path / "pairs.tsv").write_text("a query\ta document\nno tab here\n")
        args += ["--pairs", tmp_path / "pairs.tsv"]
    elif case == "unknown-doc":
        write_jsonl(tmp_path / "pairs.jsonl", [{"query_id": "q1", "doc_id": "d1"}, {"query_id": "q2", "doc_id": "nope"}])
        args += ["--pairs", tmp_path / "pairs.jsonl"]
    elif case == "unknown-query":
        ds = tmp_path / "ds"
        import shutil

        shutil.copytree(dataset, ds)
        (ds / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq99\td1\t1\n")
    elif case == "bad-json":
        (tmp_path / "pairs.jsonl").write_text('{"query": "x", "doc": \n')
        args += ["--pairs", tmp_path / "pairs.jsonl"]
    elif case.startswith("teacher"):
        text = {"teacher-score": "q1\td1\t2.5\nq1\td2\thigh\n", "teacher-unknown": "q1\td99\t1.0\n",
                "teacher-empty": ""}[case]
        (tmp_path / "teacher.tsv").write_text(text)
        args += ["--teacher", tmp_path / "teacher.tsv"]
    elif case == "no-split":
        args += ["--split", "dev"]
    result = _cli(*args[:1], ds, *args[1:])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    import re

    assert re.search(expected, message), message


def test_train_cli_with_before_after_eval(dataset, tmp_path):
    out = tmp_path / "cli-model"
    result = _cli("train", dataset, "--out", out, "--epochs", "1", "--batch-size", "5", "--lr", "1e-4",
                  "--max-length", "48", "--negatives-depth", "3", "--threads", "1", "--no-progress",
                  "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 10 pairs" in result.output
    assert "model queries: nDCG@10" in result.output and "inference-free queries: nDCG@10" in result.output
    report = json.loads((out / "lsr_train" / "report.json").read_text())
    rows = report["eval"]["results"]
    assert set(rows) >= {"before/model", "after/model", "before/inference-free", "after/inference-free"}
    assert rows["after/model"]["nnz"]["doc"] > 0 and rows["after/inference-free"]["nnz"]["query"] > 0
    again = _cli("train", dataset, "--out", out, "--no-progress", "--no-eval")
    assert again.exit_code == 2 and "already holds a finished training run" in again.output
