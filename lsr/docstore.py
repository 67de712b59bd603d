"""Document store: external id, title, text and metadata per internal doc number, in SQLite."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

from lsr.corpus import Document

DOCSTORE_FILE = "docs.sqlite"  # the document store of an index directory

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    docno INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
)
"""


class DuplicateIdError(KeyError):
    """A document id that is already in the store."""


_MMAP_BYTES = 1 << 40  # read-only connections map the whole file (SQLite caps it at the file's size)
_LOW_SPACE = 1 << 20  # an SQLite I/O error with less free space than this is a full disk


def _disk_errors(method):
    """Report SQLite's disk failures ('database or disk is full', 'disk I/O error') as an OSError naming the file."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as err:
            if "disk" not in str(err):
                raise
            full = "full" in str(err) or shutil.disk_usage(self.path.parent).free < _LOW_SPACE
            code = errno.ENOSPC if full else errno.EIO
            raise OSError(code, f"{self.path}: {os.strerror(code)} (SQLite: {err})") from err

    return wrapper


class DocStore:
    """SQLite table of documents keyed by internal doc number (the index's doc id).

    A read-only store gives every thread its own connection, so concurrent readers (a server's search threads)
    never wait for each other on one connection's lock; a writable store has a single connection. A read-only
    store also opens one shared connection at once: an engine's snapshot stays readable after a compaction or
    merge replaced its files, and threads that come later use that connection.
    """

    @_disk_errors
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"document store {self.path} is missing")
            self._local = threading.local()
            self._inode = os.stat(self.path).st_ino
            self._shared = self._connect_readonly()
        else:
            self._writer = sqlite3.connect(self.path, check_same_thread=False)
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=NORMAL")
            self._writer.execute(_SCHEMA)

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (read-only store), or the store's one connection (writable store)."""
        if not self.readonly:
            return self._writer
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._thread_connection()
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection that reads pages through a memory map (no read() copy per page; the page cache
        holds the file once for every connection and process)."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        return db

    def _same_file(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            return False

    def _thread_connection(self) -> sqlite3.Connection:
        """A connection of this thread's own while the file is the one opened (the shared connection keeps its
        inode alive, so the check before and after connecting is exact); else the shared connection."""
        if self._same_file():
            try:
                db = self._connect_readonly()
            except sqlite3.OperationalError:
                return self._shared
            if self._same_file():
                return db
            db.close()
        return self._shared

    @_disk_errors
    def add(self, docno: int, doc: Document) -> None:
        """Insert one document; raise DuplicateIdError if its id is already stored."""
        try:
            self._db.execute(
                "INSERT INTO docs VALUES (?, ?, ?, ?, ?)",
                (docno, doc.id, doc.title, doc.text, json.dumps(doc.metadata, ensure_ascii=False)),
            )
        except sqlite3.IntegrityError as err:
            raise DuplicateIdError(doc.id) from err

    @_disk_errors
    def commit(self) -> None:
        """Commit pending inserts."""
        self._db.commit()

    @_disk_errors
    def close(self) -> None:
        """Commit and close; checkpoint the WAL into the main file."""
        self._db.commit()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.close()

    @_disk_errors
    def truncate(self, num_docs: int) -> None:
        """Delete (and commit) every document numbered ``num_docs`` or above."""
        with self._db:
            self._db.execute("DELETE FROM docs WHERE docno >= ?", (int(num_docs),))

    def abandon(self) -> None:
        """Close without committing: pending inserts roll back."""
        self._db.close()

    @_disk_errors
    def renumber(self, new_to_old) -> None:
        """Give every document a new number: document ``new_to_old[n]`` becomes number ``n``.

        The table is rewritten in the new order from a join with the permutation (one pass, not an update per
        document: 8.8M documents took ~5 min that way), then the file is compacted."""
        db = self._db
        with db:
            db.execute("CREATE TEMP TABLE renumber (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
            db.executemany("INSERT INTO renumber VALUES (?, ?)",
                           zip(map(int, new_to_old), range(len(new_to_old))))
            db.execute("ALTER TABLE docs RENAME TO docs_before")
            db.execute(_SCHEMA)
            db.execute("INSERT INTO docs SELECT r.new, d.id, d.title, d.text, d.metadata FROM docs_before AS d "
                       "JOIN renumber AS r ON r.old = d.docno ORDER BY r.new")
            db.execute("DROP TABLE docs_before")
            db.execute("DROP TABLE renumber")
        db.execute("VACUUM")

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def get(self, docno: int) -> Document:
        """The document with this internal number."""
        row = self._db.execute("SELECT id, title, text, metadata FROM docs WHERE docno = ?", (int(docno),)).fetchone()
        if row is None:
            raise KeyError(docno)
        return Document(id=row[0], title=row[1], text=row[2], metadata=json.loads(row[3]))

    def get_many(self, docnos: list[int]) -> dict[int, Document]:
        """Several documents by internal number in one query (numbers not stored are left out)."""
        if not docnos:
            return {}
        marks = ",".join("?" * len(docnos))
        rows = self._db.execute(f"SELECT docno, id, title, text, metadata FROM docs WHERE docno IN ({marks})",
                                [int(d) for d in docnos])
        return {docno: Document(id=doc_id, title=title, text=text, metadata=json.loads(metadata))
                for docno, doc_id, title, text, metadata in rows}

    def docno(self, doc_id: str) -> int:
        """Internal number of an external id (KeyError if unknown)."""
        row = self._db.execute("SELECT docno FROM docs WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise KeyError(doc_id)
        return row[0]

    def headers(self, docnos: list[int]) -> dict[int, tuple[str, str]]:
        """(external id, title) of several documents in one query."""
        if not docnos:
            return {}
        marks = ",".join("?" * len(docnos))
        rows = self._db.execute(f"SELECT docno, id, title FROM docs WHERE docno IN ({marks})", [int(d) for d in docnos])
        return {docno: (doc_id, title) for docno, doc_id, title in rows}

    def ids(self) -> list[str]:
        """All external ids in doc-number order."""
        return [r[0] for r in self._db.execute("SELECT id FROM docs ORDER BY docno")]
