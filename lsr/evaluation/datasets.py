"""BEIR datasets: qrels, queries and corpus read and cross-checked; dataset names downloaded once."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lsr.corpus import CorpusError, CorpusReader, Document, read_queries
from lsr.evaluation.base import EvalError, default_cache_dir

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DEFAULT_SPLIT = "test"


@dataclass
class Qrels:
    """Judgments ``{query id: {doc id: relevance}}`` and where each query and document first appears."""

    path: Path
    judgments: dict[str, dict[str, int]]
    query_line: dict[str, int]
    doc_line: dict[str, int]


def read_qrels(path: str | os.PathLike) -> Qrels:
    """A BEIR qrels TSV (``query-id corpus-id score``, optional header, LF or CRLF) or TREC qrels (``qid 0 docid rel``)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no such qrels file")
    judgments: dict[str, dict[str, int]] = {}
    query_line: dict[str, int] = {}
    doc_line: dict[str, int] = {}
    first = True
    with open(path, encoding="utf-8-sig", errors="strict") as fh:  # universal newlines: CRLF is fine
        try:
            lines = list(enumerate(fh, 1))
        except UnicodeDecodeError as err:
            raise EvalError(f"{path}: not UTF-8 text ({err.reason})") from err
    for lineno, line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) == 3:
            qid, did, rel = parts
        elif len(parts) == 4:
            qid, _, did, rel = parts
        else:
            raise CorpusError(path, lineno, None, f"expected 3 tab-separated columns (query-id, corpus-id, score) "
                                                  f"or 4 (TREC: qid iter docid rel), got {len(parts)}")
        try:
            score = int(float(rel))
        except ValueError:
            if first:  # header line (BEIR: query-id corpus-id score)
                first = False
                continue
            raise CorpusError(path, lineno, "score", f"relevance must be an integer, got {rel!r}") from None
        first = False
        qid, did = qid.strip(), did.strip()
        if not qid or not did:
            raise CorpusError(path, lineno, None, "empty query or document id")
        judgments.setdefault(qid, {})[did] = score
        query_line.setdefault(qid, lineno)
        doc_line.setdefault(did, lineno)
    if not judgments:
        raise EvalError(f"{path}: no judgments")
    return Qrels(path, judgments, query_line, doc_line)


@dataclass
class Dataset:
    """A BEIR-layout dataset: the judged queries of one split, their qrels, and the corpus file."""

    name: str
    root: Path
    split: str
    corpus_file: Path
    queries_file: Path
    qrels_file: Path
    queries: dict[str, str]  # judged queries only, in file order
    qrels: dict[str, dict[str, int]]
    num_docs: int
    doc_ids: frozenset = frozenset()

    def documents(self) -> Iterator[Document]:
        return iter(CorpusReader(self.corpus_file, fmt="jsonl"))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the corpus file: indexes are cached per corpus content."""
        h = hashlib.sha256()
        with open(self.corpus_file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def limit(self, n: int | None) -> "Dataset":
        """Keep only the first ``n`` judged queries (quick runs)."""
        if n:
            self.queries = dict(list(self.queries.items())[:n])
            self.qrels = {q: self.qrels[q] for q in self.queries}
        return self


def resolve_dataset_dir(spec: str | os.PathLike, cache_dir: Path | None = None) -> Path:
    """A local dataset directory, or a BEIR dataset name downloaded with ``beir.util.download_and_unzip``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise EvalError(f"{path}: not a directory (DATASET is a BEIR dataset directory or a BEIR dataset name)")
    name = str(spec)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise EvalError(f"{spec}: no such dataset directory")
    return download_beir(name, (cache_dir or default_cache_dir()) / "datasets")


def download_beir(name: str, out_dir: Path) -> Path:
    """Download and unzip a BEIR dataset with BEIR's own loader (once; later calls reuse the directory)."""
    target = out_dir / name
    if (target / "queries.jsonl").is_file():
        return target
    from beir import util

    url = BEIR_URL.format(name=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return Path(util.download_and_unzip(url, str(out_dir)))
    except Exception as err:  # no network, unknown name (an HTML error page is not a zip), disk full
        (out_dir / f"{name}.zip").unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        raise EvalError(f"{name}: no such directory, and downloading BEIR dataset {name!r} from {url} failed "
                        f"({type(err).__name__}: {err})") from err


def _first_file(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def load_dataset(spec: str | os.PathLike, split: str = DEFAULT_SPLIT, cache_dir: Path | None = None) -> Dataset:
    """Load and check a BEIR dataset (same reading rules as ``beir``'s ``GenericDataLoader.load(split)``).

    Only judged queries are kept. Missing qrels for the split, judged queries absent from the queries file,
    queries none of which is judged, judged documents absent from the corpus and an empty corpus are
    errors naming the file (and line).
    """
    root = resolve_dataset_dir(spec, cache_dir)
    corpus_file = _first_file(root, ("corpus.jsonl", "corpus.jsonl.gz"))
    if corpus_file is None:
        raise EvalError(f"{root}: no corpus.jsonl or corpus.jsonl.gz (a BEIR dataset has corpus.jsonl, "
                        f"queries.jsonl and qrels/<split>.tsv)")
    queries_file = _first_file(root, ("queries.jsonl", "queries.jsonl.gz"))
    if queries_file is None:
        raise EvalError(f"{root}: no queries.jsonl")
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise EvalError(f"{qrels_file}: no qrels for split {split!r} "
                        + (f"(available splits: {', '.join(splits)})" if splits else "(no qrels/*.tsv files)"))
    qrels = read_qrels(qrels_file)
    all_queries = dict(read_queries(queries_file))
    if not all_queries:
        raise EvalError(f"{queries_file}: no queries")
    queries = {q: t for q, t in all_queries.items() if q in qrels.judgments}
    if not queries:
        example = next(iter(qrels.judgments))
        raise EvalError(f"{queries_file}: none of its {len(all_queries)} queries has judgments in {qrels_file} "
                        f"(which judges query ids like {example!r})")
    missing = [q for q in qrels.judgments if q not in all_queries]
    if missing:
        raise EvalError(f"{qrels_file}:{qrels.query_line[missing[0]]}: judged query {missing[0]!r} is not in "
                        f"{queries_file} ({len(missing)} judged quer{'y' if len(missing) == 1 else 'ies'} missing)")
    doc_ids = {doc.id for doc in CorpusReader(corpus_file, fmt="jsonl")}  # raises on an empty corpus
    unknown = [d for d in qrels.doc_line if d not in doc_ids]
    if unknown:
        first = min(unknown, key=qrels.doc_line.__getitem__)
        raise EvalError(f"{qrels_file}:{qrels.doc_line[first]}: judged document {first!r} is not in {corpus_file} "
                        f"({len(unknown)} judged document{'' if len(unknown) == 1 else 's'} missing from the corpus)")
    no_relevant = [q for q in queries if not any(r > 0 for r in qrels.judgments[q].values())]
    if no_relevant:
        log.warning("%s: %d judged queries have no relevant document (they score 0)", qrels_file, len(no_relevant))
    return Dataset(root.name, root, split, corpus_file, queries_file, qrels_file, queries,
                   {q: qrels.judgments[q] for q in queries}, len(doc_ids), frozenset(doc_ids))


def load_qrels_arg(spec: str | os.PathLike, split: str = DEFAULT_SPLIT, cache_dir: Path | None = None
                   ) -> dict[str, dict[str, int]]:
    """Qrels from a qrels file, or from a BEIR dataset (directory or name) and split."""
    path = Path(spec)
    if path.is_file():
        return read_qrels(path).judgments
    root = resolve_dataset_dir(spec, cache_dir)
    return read_qrels(root / "qrels" / f"{split}.tsv").judgments
