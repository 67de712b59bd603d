"""Training data: (query, positive) pairs from qrels or a pairs file (JSONL or TSV, texts or ids), the dataset's
queries and documents, and teacher scores; every problem names its file and line."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lsr.corpus import CorpusError, parse_json_object
from lsr.evaluation.results import portable_path
from lsr.training.config import TrainError

QUERY_TEXT_KEYS = ("query", "query_text", "question")
QUERY_ID_KEYS = ("query_id", "query-id", "qid")
DOC_TEXT_KEYS = ("doc", "document", "positive", "pos", "passage", "doc_text")
DOC_ID_KEYS = ("doc_id", "doc-id", "corpus_id", "corpus-id", "docid", "pid", "positive_id")
SCORE_KEYS = ("score", "relevance", "label")


@dataclass
class TrainingData:
    """Queries and documents by id, the (query, positive) pairs, every positive per query, teacher scores."""

    queries: dict[str, str]
    docs: dict[str, str]
    examples: list[tuple[str, str]]
    positives: dict[str, set[str]]
    source: str
    dataset_dir: Path | None = None
    teacher: dict[str, dict[str, float]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for q, d in self.examples:
            h.update(f"{q}\t{d}\t{self.queries[q]}\t{self.docs[d]}\n".encode())
        for q in sorted(self.teacher):
            for d, s in sorted(self.teacher[q].items()):
                h.update(f"T{q}\t{d}\t{s!r}\n".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {"source": portable_path(self.source), "pairs": len(self.examples), "queries": len({q for q, _ in self.examples}),
                "documents": len(self.docs), "teacher_scores": sum(len(v) for v in self.teacher.values())}


@dataclass
class _Row:
    path: Path
    line: int
    qid: str | None
    qtext: str | None
    did: str | None
    dtext: str | None


def _lines(path: Path, what: str = "training pairs") -> list[tuple[int, str]]:
    """Non-blank (line number, text) of a UTF-8 file; an empty file is an error."""
    if not path.is_file():
        raise CorpusError(path, 0, None, "no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorpusError(path, 0, None, f"not UTF-8 text ({err.reason})") from None
    rows = [(i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not rows:
        raise CorpusError(path, 0, None, f"empty file: no {what}")
    return rows


def _number(path: Path, line: int, value, what: str = "score") -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CorpusError(path, line, what, f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise CorpusError(path, line, what, f"not a finite number: {value!r}")
    return x


_COLUMN_NAMES = {
    **{k: "qtext" for k in QUERY_TEXT_KEYS}, **{k: "qid" for k in QUERY_ID_KEYS},
    **{k: "dtext" for k in DOC_TEXT_KEYS}, **{k: "did" for k in DOC_ID_KEYS}, **{k: "score" for k in SCORE_KEYS},
    "iter": "skip", "q0": "skip",
}


def _header(parts: list[str]) -> list[str] | None:
    names = [p.strip().lower() for p in parts]
    if all(n in _COLUMN_NAMES for n in names):
        return [_COLUMN_NAMES[n] for n in names]
    return None


def read_pairs_tsv(path: Path, *, qrels: bool = False) -> Iterator[_Row]:
    """(query, positive) rows of a TSV: a header naming the columns (``query``/``query-id``, ``doc``/``corpus-id``,
    optional ``score``), or no header with 2 columns (query text, document text), 3 (BEIR qrels: query-id,
    corpus-id, score) or 4 (TREC qrels: qid, iter, docid, rel). Rows with a score <= 0 are not positives."""
    lines = _lines(path)
    first_line, first = lines[0]
    columns = _header(first.split("\t"))
    if columns is not None:
        if columns.count("qtext") + columns.count("qid") != 1 or columns.count("dtext") + columns.count("did") != 1:
            raise CorpusError(path, first_line, None, "the header must name one query column (query or query-id) "
                                                      "and one document column (doc or corpus-id)")
        lines = lines[1:]
        if not lines:
            raise CorpusError(path, first_line, None, "only a header: no training pairs")
    for lineno, line in lines:
        parts = line.split("\t")
        if columns is not None:
            if len(parts) != len(columns):
                raise CorpusError(path, lineno, None, f"expected {len(columns)} tab-separated columns as the header "
                                                      f"names, got {len(parts)}")
            row = dict(zip(columns, parts))
        elif len(parts) == 2 and not qrels:
            row = {"qtext": parts[0], "dtext": parts[1]}
        elif len(parts) == 3:
            row = {"qid": parts[0], "did": parts[1], "score": parts[2]}
        elif len(parts) == 4:
            row = {"qid": parts[0], "did": parts[2], "score": parts[3]}
        else:
            raise CorpusError(path, lineno, None, (
                "expected 3 tab-separated columns (query-id, corpus-id, score) or 4 (TREC: qid iter docid rel)"
                if qrels else
                "expected 2 tab-separated columns (query, document), 3 (query-id, corpus-id, score), or a header "
                "naming the columns") + f", got {len(parts)}")
        if "score" in row and _number(path, lineno, row["score"]) <= 0:
            continue
        yield _row(path, lineno, row)


def _row(path: Path, lineno: int, row: dict) -> _Row:
    values = {}
    for key in ("qid", "qtext", "did", "dtext"):
        value = row.get(key)
        if value is not None:
            name = {"qid": "query_id", "qtext": "query", "did": "doc_id", "dtext": "doc"}[key]
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise CorpusError(path, lineno, name, f"must be a string, got {type(value).__name__}")
            value = str(value).strip()
            if not value:
                raise CorpusError(path, lineno, name, "empty value")
        values[key] = value
    return _Row(path, lineno, values["qid"], values["qtext"], values["did"], values["dtext"])


def read_pairs_jsonl(path: Path) -> Iterator[_Row]:
    """(query, positive) rows of a JSONL: a query (``query`` text or ``query_id``) and a document (``doc`` /
    ``positive`` text or ``doc_id`` / ``corpus-id``) per line; an optional ``score`` <= 0 drops the line."""
    for lineno, line in _lines(path):
        record = parse_json_object(line, path, lineno)
        row = {}
        for kind, keys in (("qtext", QUERY_TEXT_KEYS), ("qid", QUERY_ID_KEYS), ("dtext", DOC_TEXT_KEYS),
                           ("did", DOC_ID_KEYS), ("score", SCORE_KEYS)):
            hit = next((k for k in keys if k in record), None)
            if hit is not None:
                row[kind] = record[hit]
        if "qtext" not in row and "qid" not in row:
            raise CorpusError(path, lineno, "/".join(QUERY_TEXT_KEYS[:1] + QUERY_ID_KEYS[:1]),
                              "missing the query (its text or its id)")
        if "dtext" not in row and "did" not in row:
            raise CorpusError(path, lineno, "/".join(DOC_TEXT_KEYS[:3] + DOC_ID_KEYS[:1]),
                              "missing the document (its text or its id)")
        if "score" in row and _number(path, lineno, row["score"]) <= 0:
            continue
        yield _row(path, lineno, row)


def _dataset_texts(dataset: Path) -> tuple[dict[str, str], dict[str, str], Path, Path]:
    """Queries and documents (title + text) of a BEIR-layout dataset directory."""
    from lsr.corpus import CorpusReader, read_queries
    from lsr.engine import document_text

    if not dataset.is_dir():
        raise TrainError(f"{dataset}: not a dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    corpus = next((dataset / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (dataset / n).is_file()), None)
    if corpus is None:
        raise TrainError(f"{dataset}: no corpus.jsonl or corpus.jsonl.gz")
    queries_file = next((dataset / n for n in ("queries.jsonl", "queries.jsonl.gz") if (dataset / n).is_file()), None)
    if queries_file is None:
        raise TrainError(f"{dataset}: no queries.jsonl")
    docs = {d.id: document_text(d) for d in CorpusReader(corpus, fmt="jsonl")}
    return dict(read_queries(queries_file)), docs, queries_file, corpus


def load_training_data(dataset: str | os.PathLike | None = None, pairs: str | os.PathLike | None = None, *,
                       split: str = "train", teacher: str | os.PathLike | None = None) -> TrainingData:
    """Read and check the training pairs (and teacher scores); every problem names its file and line.

    With ``pairs`` None the pairs are ``DATASET/qrels/<split>.tsv``. Pairs given by id are looked up in the
    dataset's ``queries.jsonl`` and corpus; pairs given as text need no dataset (their text is their id).
    """
    root = Path(dataset) if dataset is not None else None
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    queries_file = corpus_file = None
    if root is not None:
        queries, docs, queries_file, corpus_file = _dataset_texts(root)
    if pairs is None:
        if root is None:
            raise TrainError("give a DATASET directory (its qrels/<split>.tsv are the pairs) or --pairs FILE")
        path = root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
            raise TrainError(f"{path}: no qrels for split {split!r}" + (
                f" (available: {', '.join(splits)}); pass --split or --pairs FILE" if splits else ""))
        rows = list(read_pairs_tsv(path, qrels=True))
        source = str(path)
    else:
        path = Path(pairs)
        suffix = path.name.lower().removesuffix(".gz").rsplit(".", 1)[-1]
        rows = list(read_pairs_jsonl(path) if suffix in ("jsonl", "json", "ndjson") else read_pairs_tsv(path))
        source = str(path)
    if not rows:
        raise CorpusError(path, 0, None, "no positive pairs (every row has a score <= 0)")
    examples: list[tuple[str, str]] = []
    positives: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        qid = _resolve(r, r.qid, r.qtext, queries, "query", queries_file, root)
        did = _resolve(r, r.did, r.dtext, docs, "doc", corpus_file, root)
        positives.setdefault(qid, set()).add(did)
        if (qid, did) not in seen:
            seen.add((qid, did))
            examples.append((qid, did))
    data = TrainingData(queries, docs, examples, positives, source, root)
    if teacher is not None:
        data.teacher = read_teacher(Path(teacher), data)
    return data


def _resolve(r: _Row, ident: str | None, text: str | None, table: dict[str, str], kind: str,
             file: Path | None, root: Path | None) -> str:
    """The id of a row's query or document, adding text-only entries to ``table`` (their id is their text)."""
    if ident is not None:
        if ident in table:
            if text is not None and table[ident] != text:
                table[ident] = text  # the pair file's text wins over the dataset's
            return ident
        if text is not None:
            table[ident] = text
            return ident
        if root is None:
            raise CorpusError(r.path, r.line, f"{kind}_id",
                              f"{kind} id {ident!r} given without its text and without a DATASET directory to look "
                              f"it up in")
        what = "query" if kind == "query" else "document"
        raise CorpusError(r.path, r.line, f"{kind}_id", f"unknown {what} {ident!r}: not in {file}")
    table.setdefault(text, text)
    return text


def read_teacher(path: Path, data: TrainingData) -> dict[str, dict[str, float]]:
    """Teacher scores ``{query: {doc: score}}`` from a TSV (query, doc, score; optional header) or a JSONL
    (``query_id``/``query``, ``doc_id``/``doc``, ``score``). Queries and documents are ids of the training data
    (or, for pairs given as text, the texts). Rows for queries that are not trained on are ignored."""
    out: dict[str, dict[str, float]] = {}
    suffix = path.name.lower().rsplit(".", 1)[-1]
    lines = _lines(path, "teacher scores")
    for lineno, line in lines:
        if suffix in ("jsonl", "json", "ndjson"):
            record = parse_json_object(line, path, lineno)
            q = next((record[k] for k in QUERY_ID_KEYS + QUERY_TEXT_KEYS if k in record), None)
            d = next((record[k] for k in DOC_ID_KEYS + DOC_TEXT_KEYS if k in record), None)
            s = next((record[k] for k in SCORE_KEYS if k in record), None)
            if q is None or d is None or s is None:
                raise CorpusError(path, lineno, None, "expected fields query_id, doc_id and score")
            q, d = str(q), str(d)
        else:
            parts = line.split("\t")
            if len(parts) != 3:
                raise CorpusError(path, lineno, None, f"expected 3 tab-separated columns (query, doc, score), "
                                                      f"got {len(parts)}")
            q, d, s = (p.strip() for p in parts)
            if lineno == lines[0][0] and _header(parts) is not None:
                continue
        score = _number(path, lineno, s)
        if q not in data.queries:
            raise CorpusError(path, lineno, "query", f"unknown query {q!r}")
        if d not in data.docs:
            raise CorpusError(path, lineno, "doc", f"unknown document {d!r}")
        if q in data.positives:
            out.setdefault(q, {})[d] = score
    return out
