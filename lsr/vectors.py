"""Precomputed sparse vectors in the JSONL form Pyserini and Seismic use: ``{"id": ..., "vector": {"token": weight}}``."""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from lsr.corpus import CorpusError, Document, read_lines

VECTOR_FIELD = "vector"
_CONTENT_FIELDS = ("contents", "content", "text")


def is_vector_file(path: Path) -> bool:
    """True if the first non-blank line of a JSONL file is an object with a ``vector`` dict."""
    path = Path(path)
    if path.is_dir() or not path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json", ".ndjson")):
        return False
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and isinstance(record.get(VECTOR_FIELD), dict)
    return False


def read_vectors(
    path: Path, on_error: Callable[[CorpusError], None] | None = None
) -> Iterator[tuple[Document, dict[str, float]]]:
    """Yield (document, {token: weight}) from a vectors JSONL(.gz); bad records raise CorpusError (file, line, field).

    ``on_error`` may log and swallow the error instead (``--skip-bad``); the record is then skipped.
    """
    path = Path(path)
    fail = on_error or _raise
    for line_no, line in read_lines(path, fail):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            fail(CorpusError(path, line_no, None, f"malformed JSON: {err.msg} at column {err.colno}"))
            continue
        try:
            yield _parse_record(record, path, line_no)
        except CorpusError as err:
            fail(err)


def _parse_record(record: object, path: Path, line_no: int) -> tuple[Document, dict[str, float]]:
    if not isinstance(record, dict):
        raise CorpusError(path, line_no, None, "expected a JSON object")
    doc_id = record.get("id", record.get("_id", record.get("docid")))
    if doc_id is None or str(doc_id) == "":
        raise CorpusError(path, line_no, "id", "missing id")
    vector = record.get(VECTOR_FIELD)
    if not isinstance(vector, dict):
        raise CorpusError(path, line_no, VECTOR_FIELD, "missing or not an object of token -> weight")
    for token, weight in vector.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise CorpusError(path, line_no, f"{VECTOR_FIELD}.{token}", f"weight must be a finite number >= 0, got {weight!r}")
    text = next((record[f] for f in _CONTENT_FIELDS if isinstance(record.get(f), str)), "")
    title = record.get("title") if isinstance(record.get("title"), str) else ""
    doc = Document(id=str(doc_id), text=text, title=title, source=str(path), line=line_no)
    return doc, {str(t): float(w) for t, w in vector.items()}


def write_vector(
    fh: IO[str], doc_id: str, vector: dict[str, float], text: str | None = None, title: str | None = None
) -> None:
    """Write one record ``{"id", "title"?, "contents"?, "vector"}`` as a JSONL line."""
    record: dict = {"id": doc_id}
    if title:
        record["title"] = title
    if text is not None:
        record["contents"] = text
    record[VECTOR_FIELD] = {t: round(w, 5) for t, w in vector.items()}
    fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _raise(err: CorpusError) -> None:
    raise err
