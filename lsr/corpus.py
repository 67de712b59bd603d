"""Streaming readers for document corpora (BEIR, JSONL, CSV/TSV, text trees) and query files."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("lsr.corpus")

FORMATS = ("beir", "jsonl", "csv", "tsv", "text")
ID_FIELDS = ("_id", "id", "docid")
TEXT_FIELDS = ("text", "contents", "body")
TITLE_FIELDS = ("title",)
QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id")
QUERY_TEXT_FIELDS = ("text", "query")
QUERY_HEADER_IDS = {"query-id", "query_id", "id", "qid", "_id"}

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_TEXT_SUFFIXES = {".txt", ".md"}
_MD_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")

# Documents can be far larger than csv's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Document:
    """One corpus record; `source`/`line` locate it (line is 0 for whole-file documents)."""

    id: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict)
    source: str = ""
    line: int = 0


class CorpusError(ValueError):
    """Bad input: names file, line and field."""

    def __init__(self, path: str | os.PathLike, line: int, field: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path + (f":{line}" if line else "")
        what = f" field '{field}':" if field is not None else ""
        super().__init__(f"{where}:{what} {message}")


def _strip_gz(path: Path) -> str:
    """Lower-case suffix of `path`, ignoring a trailing `.gz`."""
    name = path.name.lower()
    return Path(name[:-3] if name.endswith(".gz") else name).suffix


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_lines(path: Path, on_error) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) from a plain or gzipped file.

    Undecodable lines are passed to `on_error` (which raises or records the skip) and omitted.
    """
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    on_error(CorpusError(path, lineno, None, f"invalid UTF-8 at byte offset {e.start}: {e.reason}"))
                    continue
                yield lineno, line
    except (OSError, EOFError) as e:  # unreadable file or corrupt/truncated gzip stream
        raise CorpusError(path, lineno + 1 if lineno else 0, None, f"cannot read file: {e}") from e


def _pick(record: dict, explicit: str | None, candidates: tuple[str, ...]) -> tuple[str, Any] | None:
    """Return (key, value) for the explicit field, or the first candidate key present."""
    for key in (explicit,) if explicit else candidates:
        if key in record:
            return key, record[key]
    return None


def _field_label(explicit: str | None, candidates: tuple[str, ...]) -> str:
    return explicit or "/".join(candidates)


def _describe_fields(record: dict) -> str:
    """``fields 'a', 'b'`` (at most 10 named), for messages about a record's missing field."""
    names = [repr(k) for k in list(record)[:10]]
    more = f" and {len(record) - 10} more" if len(record) > 10 else ""
    return f"field{'s' if len(record) > 1 else ''} {', '.join(names)}{more}"


def _coerce_id(value: Any, path: Path, line: int, label: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(path, line, label, f"id must be a string or integer, got {type(value).__name__}")
    doc_id = str(value)
    if not doc_id.strip():
        raise CorpusError(path, line, label, "empty id")
    return doc_id


def parse_json_object(line: str, path: Path, lineno: int) -> dict:
    """One JSONL line as a dict; a :class:`CorpusError` naming file and line if it is not a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(path, lineno, None, f"malformed JSON: {e}") from e
    if not isinstance(record, dict):
        raise CorpusError(path, lineno, None, f"expected a JSON object, got {type(record).__name__}")
    return record


class CorpusReader:
    """Iterate Documents from a corpus path, streaming (never loads the whole corpus)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        id_field: str | None = None,
        text_field: str | None = None,
        title_field: str | None = None,
        skip_bad: bool = False,
        fmt: str | None = None,
    ):
        self.path = Path(path)
        self.id_field = id_field
        self.text_field = text_field
        self.title_field = title_field
        self.skip_bad = skip_bad
        self.skipped = 0
        if not self.path.exists():
            raise CorpusError(self.path, 0, None, "no such file or directory")
        if fmt is not None and fmt not in FORMATS:
            raise CorpusError(self.path, 0, None, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.format: str = fmt or self._detect()
        # the one file read (None: a folder of text files)
        self.file: Path | None = self._beir_file() if self.format == "beir" and self.path.is_dir() else self.path

    def _beir_file(self) -> Path | None:
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (self.path / name).is_file():
                return self.path / name
        return None

    def _detect(self) -> str:
        if self.path.is_dir():
            return "beir" if self._beir_file() else "text"
        suffix = _strip_gz(self.path)
        if suffix in _JSONL_SUFFIXES:
            return "jsonl"
        if suffix in (".csv", ".tsv"):
            return suffix[1:]
        if suffix in _TEXT_SUFFIXES and not self.path.name.lower().endswith(".gz"):
            return "text"
        raise CorpusError(
            self.path, 0, None,
            "cannot detect corpus format from the file name; expected a BEIR directory (corpus.jsonl), "
            ".jsonl/.json/.ndjson, .csv, .tsv (optionally .gz), .txt/.md, or a directory of .txt/.md files; "
            "pass the format explicitly",
        )

    def skip_error(self, err: CorpusError) -> None:
        """Log and count `err` when skipping bad records, otherwise raise it."""
        if not self.skip_bad:
            raise err
        self.skipped += 1
        logger.warning("skipping bad record: %s", err)

    def count(self) -> int | None:
        """Cheap estimate of the number of records (for progress bars); None if unknown."""
        if self.format == "text":
            return len(self._text_files())
        if self.file is None or self.file.name.lower().endswith(".gz"):
            return None
        lines, last = 0, b"\n"
        with open(self.file, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        lines += last != b"\n"
        return max(lines - 1, 0) if self.format in ("csv", "tsv") else lines

    def __iter__(self) -> Iterator[Document]:
        self.skipped = 0
        if self.format == "text":
            records = self._iter_text()
        elif self.file is None:
            raise CorpusError(self.path, 0, None, "directory has no corpus.jsonl or corpus.jsonl.gz")
        elif self.format in ("csv", "tsv"):
            records = self._iter_csv(self.file)
        else:
            records = self._iter_jsonl(self.file)
        produced = 0
        for doc in records:
            produced += 1
            yield doc
        if not produced and not self.skipped:
            raise CorpusError(self.path, 0, None, f"no documents found (format: {self.format})")

    def _make_document(self, record: dict, path: Path, line: int, metadata: dict | None) -> Document:
        """Build a Document from a parsed record; remaining keys become metadata unless given."""
        id_label = _field_label(self.id_field, ID_FIELDS)
        text_label = _field_label(self.text_field, TEXT_FIELDS)
        id_hit = _pick(record, self.id_field, ID_FIELDS)
        if id_hit is None:
            raise CorpusError(path, line, id_label, "missing id")
        text_hit = _pick(record, self.text_field, TEXT_FIELDS)
        if text_hit is None:
            raise CorpusError(path, line, text_label,
                              f"missing text (the record has {_describe_fields(record)}; name the field that holds "
                              f"the text with --text-field)")
        if not isinstance(text_hit[1], str):
            raise CorpusError(path, line, text_hit[0], f"text must be a string, got {type(text_hit[1]).__name__}")
        title_hit = _pick(record, self.title_field, TITLE_FIELDS)
        title = "" if title_hit is None or title_hit[1] is None else title_hit[1]
        if not isinstance(title, str):
            raise CorpusError(path, line, title_hit[0], f"title must be a string, got {type(title).__name__}")
        if metadata is None:
            used = {id_hit[0], text_hit[0]} | ({title_hit[0]} if title_hit else set())
            metadata = {k: v for k, v in record.items() if k not in used}
        return Document(
            id=_coerce_id(id_hit[1], path, line, id_hit[0]),
            text=text_hit[1],
            title=title,
            metadata=metadata,
            source=str(path),
            line=line,
        )

    def _iter_jsonl(self, path: Path) -> Iterator[Document]:
        for lineno, line in read_lines(path, self.skip_error):
            if not line.strip():
                continue
            try:
                record = parse_json_object(line, path, lineno)
                meta = record.get("metadata")
                if meta is not None and not isinstance(meta, dict):
                    raise CorpusError(path, lineno, "metadata",
                                      f"metadata must be a JSON object, got {type(meta).__name__}")
                yield self._make_document(record, path, lineno, meta if isinstance(meta, dict) else None)
            except CorpusError as err:
                self.skip_error(err)

    def _iter_csv(self, path: Path) -> Iterator[Document]:
        lines = read_lines(path, self.skip_error)
        numbered = _LineTracker(lines)
        # TSV is read without quote processing: raw TSV corpora often contain unbalanced quotes.
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if self.format == "tsv" else {}
        reader = csv.reader(numbered, **dialect)
        header: list[str] | None = None
        while True:
            numbered.start_record()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                self.skip_error(CorpusError(path, numbered.lineno, None, f"malformed {self.format.upper()}: {e}"))
                continue
            line = numbered.record_start
            if not row:
                continue
            if header is None:
                header = row
                self._check_header(header, path, line)
                continue
            if len(row) != len(header):
                self.skip_error(CorpusError(path, line, None, f"expected {len(header)} columns, got {len(row)}"))
                continue
            try:
                yield self._make_document(dict(zip(header, row)), path, line, None)
            except CorpusError as err:
                self.skip_error(err)

    def _check_header(self, header: list[str], path: Path, line: int) -> None:
        """Fail fast (even with skip_bad) when the header lacks the id or text column."""
        record = dict.fromkeys(header)
        for explicit, candidates, what in (
            (self.id_field, ID_FIELDS, "id"),
            (self.text_field, TEXT_FIELDS, "text"),
        ):
            if _pick(record, explicit, candidates) is None:
                raise CorpusError(
                    path, line, _field_label(explicit, candidates),
                    f"header has no {what} column (columns: {', '.join(header)}); name it with --{what}-field",
                )

    def _text_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(
            (p for p in self.path.rglob("*") if p.suffix.lower() in _TEXT_SUFFIXES and p.is_file()),
            key=lambda p: p.relative_to(self.path).as_posix(),
        )

    def _iter_text(self) -> Iterator[Document]:
        root = self.path.parent if self.path.is_file() else self.path
        for file in self._text_files():
            data = file.read_bytes()
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                line = data[: e.start].count(b"\n") + 1
                self.skip_error(CorpusError(file, line, None, f"invalid UTF-8 at byte offset {e.start}: {e.reason}"))
                continue
            title = file.stem
            if file.suffix.lower() == ".md":
                title = next((m.group(1) for m in map(_MD_HEADING.match, text.splitlines()) if m), title)
            yield Document(id=file.relative_to(root).as_posix(), text=text, title=title, source=str(file))


class _LineTracker:
    """Iterable of lines for csv.reader that remembers the line where the current record started."""

    def __init__(self, lines: Iterable[tuple[int, str]]):
        self._lines = iter(lines)
        self.lineno = 0
        self.record_start = 0
        self._starting = True

    def __iter__(self) -> _LineTracker:
        return self

    def __next__(self) -> str:
        self.lineno, line = next(self._lines)
        if self._starting:
            self.record_start = self.lineno
            self._starting = False
        return line

    def start_record(self) -> None:
        """Mark that the next line read begins a new record."""
        self._starting = True


def read_queries(path: str | os.PathLike, *, require_text: bool = False) -> Iterator[tuple[str, str]]:
    """(query_id, text) from a BEIR queries.jsonl (`_id`, `text`), a JSONL with id/text, or a TSV `id<TAB>text`.

    A BEIR dataset directory reads its queries.jsonl[.gz]. TSV files have no header, but a first
    line that looks like one ('query-id', 'id', 'qid') is skipped. With ``require_text`` an empty or
    whitespace-only query is an error naming its line.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("queries.jsonl", "queries.jsonl.gz") if (path / n).is_file()]
        if not found:
            raise CorpusError(path, 0, None, "directory has no queries.jsonl or queries.jsonl.gz")
        path = found[0]
    if not path.exists():
        raise CorpusError(path, 0, None, "no such file or directory")

    def fail(err: CorpusError) -> None:
        raise err

    first = True
    for lineno, line in read_lines(path, fail):
        if not line.strip():
            continue
        maybe_header, first = first, False
        if _strip_gz(path) in _JSONL_SUFFIXES:
            record = parse_json_object(line, path, lineno)
            id_hit = _pick(record, None, QUERY_ID_FIELDS)
            if id_hit is None:
                raise CorpusError(path, lineno, "/".join(QUERY_ID_FIELDS), "missing query id")
            text_hit = _pick(record, None, QUERY_TEXT_FIELDS)
            if text_hit is None:
                raise CorpusError(path, lineno, "/".join(QUERY_TEXT_FIELDS), "missing query text")
            if not isinstance(text_hit[1], str):
                raise CorpusError(path, lineno, text_hit[0], f"text must be a string, got {type(text_hit[1]).__name__}")
            qid, text = _coerce_id(id_hit[1], path, lineno, id_hit[0]), text_hit[1]
        else:
            qid, tab, text = line.rstrip("\r\n").partition("\t")
            if not tab:
                raise CorpusError(path, lineno, None, "expected 'query_id<TAB>text'")
            if maybe_header and qid.strip().lower() in QUERY_HEADER_IDS:
                continue
            qid = _coerce_id(qid.strip(), path, lineno, "id")
        if require_text and not text.strip():
            raise CorpusError(path, lineno, None, f"empty query {qid!r}: every query needs some text")
        yield qid, text
