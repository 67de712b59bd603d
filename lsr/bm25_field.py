"""BM25 stored natively: a sparse field of saturated term frequencies in the index's own format.

BM25 is linear in the query's terms, so it is one more sparse vector field: the document weight of term t is the
saturated term frequency ``tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl))`` (quantized to impacts like SPLADE's,
with the fixed step ``(k1 + 1) / levels``), the query weight is Lucene's idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``
times the term's count in the query, from document frequencies stored with the field. Exact, BMP and Seismic
search serve it unchanged. The field lives in the ``bm25/`` subdirectory of an index directory (an index of its
own: arrays, ``manifest.json`` with the BM25 parameters, the document frequencies ``bm25_df.npy`` and the
vocabulary ``vocab.txt``); the index's manifest names it under ``"bm25"``.

Analyzers (``analyzer``): ``word`` follows Lucene's English analyzer as Pyserini (Anserini) uses it: Unicode word
tokens (UAX#29-like: ``don't``, ``u.s``, ``3.14`` stay whole), English possessives dropped, lowercase, Lucene's 33
English stopwords, Porter stemming (PyStemmer's ``porter``), document length counted after stopword removal and,
with ``lucene_norms``, rounded as Lucene stores it (one byte, :func:`lucene_length`). ``model`` uses the SPLADE
model's word-piece tokenizer (term ids are its vocabulary; no stopwords, no stemming).

Building (:func:`build_bm25_field`) is two passes over locally spilled data, memory bounded by the vocabulary and
one length per document: the documents are analyzed once (:class:`Bm25Analysis`), their term counts spilled in
chunks while lengths are counted; then the chunks are saturated with the collection's ``avgdl`` and fed to an
:class:`lsr.index.IndexBuilder` (:meth:`Bm25Analysis.write`). A live index's new segment (``base``) keeps the base
field's ``avgdl``, parameters and vocabulary (new words appended), and idf is computed at query time from the
document frequencies of all segments (:class:`Bm25Side`), so BM25 scores of segments stay comparable. A sharded
index's shards are written with the collection's ``avgdl`` and word vocabulary (the second pass waits for every
shard's first), so their term ids agree and :class:`Bm25Side` adds up their document frequencies the same way:
a sharded field scores exactly as a single index's.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lsr.index import IndexBuilder, InvertedIndex
from lsr.index.storage import check_checksum, read_manifest, sha256_file, write_array, write_manifest
from lsr.query_encoders import bm25_idf

BM25_DIR = "bm25"
MANIFEST_KEY = "bm25"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
DF_ARRAY = "bm25_df"
ANALYZERS = ("word", "model")
DEFAULT_ANALYZER = "word"
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
SPILL_POSTINGS = 5_000_000  # term counts buffered before a chunk is spilled to disk

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (what Anserini's default English analyzer removes)
LUCENE_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split())
# UAX#29-like words: letters/digits/underscore runs joined by MidLetter/MidNumLet between letters
# (``don't``, ``u.s``) or by MidNum/MidNumLet between digits (``3.14``, ``1,000``)
_WORD = re.compile(r"\w+(?:(?:(?<=[^\W\d_])[:'’.·](?=[^\W\d_])|(?<=\d)[.,;'’](?=\d))\w+)*")
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)


def lucene_length(lengths: np.ndarray) -> np.ndarray:
    """Document lengths as Lucene's BM25 reads them back from its one-byte norms (``SmallFloat.intToByte4`` then
    ``byte4ToInt``): exact below 24, then 4 significant bits of ``length - 24``."""
    n = np.asarray(lengths, np.int64)
    free = 24
    rest = np.maximum(n - free, 0)
    bits = np.zeros_like(rest)
    nz = rest > 0
    bits[nz] = np.floor(np.log2(rest[nz])).astype(np.int64) + 1
    shift = np.maximum(bits - 4, 0)
    rounded = (rest >> shift) << shift  # keep the 4 leading bits (truncation, as Lucene does)
    return np.where(n < free, n, free + rounded)


class WordAnalyzer:
    """Lucene-English-like word analysis: tokens, possessives, lowercase, stopwords, Porter stems."""

    name = "word"

    def __init__(self) -> None:
        import Stemmer  # PyStemmer

        self._stemmer = Stemmer.Stemmer("porter", 200_000)

    def tokens(self, text: str) -> list[str]:
        words = [_POSSESSIVE.sub("", w).lower() for w in _WORD.findall(text)]
        return self._stemmer.stemWords([w for w in words if w and w not in LUCENE_STOPWORDS])

    def describe(self) -> dict:
        return {"name": self.name, "tokenizer": "uax29-like words", "stopwords": "lucene-english-33",
                "stemmer": "porter (PyStemmer)", "possessives": "removed", "lowercase": True}


class ModelAnalyzer:
    """The SPLADE model's tokenizer: its word-piece ids are the terms (special tokens dropped)."""

    name = "model"

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        from lsr.query_encoders import special_token_ids

        self.tokenizer_json = tokenizer_json
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._special = set(special_token_ids(tokenizer_json))
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def ids(self, text: str) -> list[int]:
        return [i for i in self._tokenizer.encode(text, add_special_tokens=False).ids if i not in self._special]

    def describe(self) -> dict:
        return {"name": self.name, "tokenizer": "the SPLADE model's", "stopwords": None, "stemmer": None}


@dataclass(frozen=True)
class Bm25Settings:
    """How the BM25 field is built: analyzer, k1, b, impact bits and Lucene's length rounding."""

    analyzer: str = DEFAULT_ANALYZER
    k1: float = DEFAULT_K1
    b: float = DEFAULT_B
    quant_bits: int = 8
    lucene_norms: bool = True

    def __post_init__(self) -> None:
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"unknown BM25 analyzer {self.analyzer!r}; available: {', '.join(ANALYZERS)}")
        if not (0 < self.k1 < 100 and 0 <= self.b <= 1):
            raise ValueError(f"BM25 needs 0 < k1 < 100 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


class _Terms:
    """Term ids of analyzed text: a growing word vocabulary (``word``) or the tokenizer's ids (``model``)."""

    def __init__(self, settings: Bm25Settings, tokenizer_json: str | None, vocab: Sequence[str] = ()):
        self.word = settings.analyzer == "word"
        if self.word:
            self.analyzer = WordAnalyzer()
            self.vocab: list[str] = list(vocab)
            self.ids = {term: i for i, term in enumerate(self.vocab)}
        else:
            if tokenizer_json is None:
                raise ValueError("the 'model' BM25 analyzer needs the model's tokenizer")
            self.analyzer = ModelAnalyzer(tokenizer_json)

    @property
    def vocab_size(self) -> int:
        return max(len(self.vocab), 1) if self.word else self.analyzer.vocab_size

    def of_document(self, text: str) -> list[int]:
        """Term ids of a document's tokens (new words get new ids)."""
        if not self.word:
            return self.analyzer.ids(text)
        out = []
        for token in self.analyzer.tokens(text):
            i = self.ids.get(token)
            if i is None:
                i = self.ids[token] = len(self.vocab)
                self.vocab.append(token)
            out.append(i)
        return out

    def of_query(self, text: str) -> list[int]:
        """Term ids of a query's tokens that the vocabulary knows."""
        if not self.word:
            return self.analyzer.ids(text)
        return [i for i in map(self.ids.get, self.analyzer.tokens(text)) if i is not None]


class Bm25Analysis:
    """The first pass of building a BM25 field: the documents analyzed once, their term counts spilled in chunks to
    ``spill_dir``, their lengths and the vocabulary kept. :meth:`write` is the second pass; a sharded build runs
    the two apart, so that every shard's field is written with the collection's ``avgdl`` and vocabulary."""

    def __init__(self, texts: Iterable[str], spill_dir: Path, settings: Bm25Settings, *,
                 tokenizer_json: str | None = None, base: "Bm25Side | None" = None):
        if base is not None:
            settings = base.settings
            tokenizer_json = base.tokenizer_json
        self.settings, self.base = settings, base
        self.terms = _Terms(settings, tokenizer_json, base.vocab if base is not None else ())
        self.spill_dir = Path(spill_dir)
        shutil.rmtree(self.spill_dir, ignore_errors=True)  # left by a killed build
        self.spill_dir.mkdir(parents=True)
        self.chunks: list[Path] = []
        try:
            self.lengths = self._analyze(texts)
        except BaseException:
            self.close()
            raise

    def _analyze(self, texts: Iterable[str]) -> np.ndarray:
        """Spill the documents' term counts; return their lengths."""
        lengths: list[np.int32] = []
        buf_ptr, buf_terms, buf_tf, buffered, first_doc, num_docs = [0], [], [], 0, 0, 0

        def spill() -> None:
            nonlocal buf_ptr, buf_terms, buf_tf, buffered, first_doc
            path = self.spill_dir / f"tf_{len(self.chunks):05d}.npz"
            np.savez(path, first=first_doc, indptr=np.asarray(buf_ptr, np.int64),
                     terms=np.concatenate(buf_terms) if buf_terms else np.empty(0, np.int64),
                     tf=np.concatenate(buf_tf) if buf_tf else np.empty(0, np.int32))
            self.chunks.append(path)
            buf_ptr, buf_terms, buf_tf, buffered, first_doc = [0], [], [], 0, num_docs

        for text in texts:
            ids = self.terms.of_document(text)
            lengths.append(np.int32(len(ids)))
            counts = Counter(ids)
            buf_terms.append(np.fromiter(counts.keys(), np.int64, len(counts)))
            buf_tf.append(np.fromiter(counts.values(), np.int32, len(counts)))
            buffered += len(counts)
            buf_ptr.append(buffered)
            num_docs += 1
            if buffered >= SPILL_POSTINGS:
                spill()
        spill()
        return np.asarray(lengths, np.int64)

    def length_stats(self) -> tuple[int, int]:
        """(total length, documents with terms): what the collection's ``avgdl`` is the ratio of."""
        return int(self.lengths.sum()), int(np.count_nonzero(self.lengths))

    @property
    def vocab(self) -> list[str]:
        """The words seen, by term id (``word`` analyzer; empty for ``model``)."""
        return self.terms.vocab if self.terms.word else []

    def close(self) -> None:
        """Remove the spilled term counts."""
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def __enter__(self) -> "Bm25Analysis":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, out_dir: Path, *, avgdl: float | None = None, vocab: Sequence[str] | None = None) -> dict:
        """Saturate the spilled counts and write the field into ``out_dir``; return its manifest. ``avgdl``: the
        collection's (default: the base field's, else these documents'); ``vocab``: the collection's word
        vocabulary holding every word seen here (term ids are renumbered to it, so the fields of all shards share
        term ids and their document frequencies add up)."""
        out_dir = Path(out_dir)
        settings, terms, dl = self.settings, self.terms, self.lengths
        if avgdl is None:
            total, with_terms = self.length_stats()
            avgdl = self.base.avgdl if self.base is not None else (total / with_terms if with_terms else 1.0)
        words, remap = terms.vocab if terms.word else [], None
        if vocab is not None and terms.word:
            index = {w: i for i, w in enumerate(vocab)}
            remap = np.fromiter((index[w] for w in terms.vocab), np.int64, len(terms.vocab))
            words = list(vocab)
        vocab_size = max(len(words), 1) if terms.word else terms.vocab_size
        norm_dl = lucene_length(dl) if settings.lucene_norms else dl
        k1, b = settings.k1, settings.b
        builder = IndexBuilder(out_dir, vocab_size, quant_bits=settings.quant_bits)
        df = np.zeros(vocab_size, np.int64)
        for path in self.chunks:
            with np.load(path) as chunk:
                first, indptr, term_ids, tf = int(chunk["first"]), chunk["indptr"], chunk["terms"], chunk["tf"]
            if remap is not None:
                term_ids = remap[term_ids]
            doc_len = np.repeat(norm_dl[first:first + len(indptr) - 1], np.diff(indptr))
            weights = tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len / avgdl))
            builder.add(indptr, term_ids, weights.astype(np.float32))
            df += np.bincount(term_ids, minlength=vocab_size)
        extra = {"bm25": {**asdict(settings), "avgdl": float(avgdl), "documents_with_terms": int(np.count_nonzero(dl)),
                          "analyzer_details": terms.analyzer.describe()}}
        if terms.word:
            (out_dir / VOCAB_FILE).write_text("".join(t + "\n" for t in words), encoding="utf-8")
            extra["bm25"]["vocab"] = {"file": VOCAB_FILE, "terms": len(words), "sha256": sha256_file(out_dir / VOCAB_FILE)}
        else:
            (out_dir / TOKENIZER_FILE).write_text(terms.analyzer.tokenizer_json, encoding="utf-8")
            extra["bm25"]["tokenizer"] = {"file": TOKENIZER_FILE, "sha256": sha256_file(out_dir / TOKENIZER_FILE)}
        levels = 2 ** settings.quant_bits - 1
        manifest = builder.finalize(extra, scale=(k1 + 1) / levels)
        manifest["arrays"][DF_ARRAY] = write_array(out_dir, DF_ARRAY, df.astype(np.uint32))
        write_manifest(out_dir, manifest)
        return manifest


def build_bm25_field(texts: Iterable[str], out_dir: Path, settings: Bm25Settings, *,
                     tokenizer_json: str | None = None, base: "Bm25Side | None" = None) -> dict:
    """Analyze the documents' ``texts`` (title and body, in document-number order) and write the BM25 field into ``out_dir``; return its manifest.

    ``base``: the field of a live index's first segment; the new field keeps its settings, ``avgdl`` and
    vocabulary (new words appended), so scores stay comparable across segments."""
    with Bm25Analysis(texts, Path(out_dir) / "_tf", settings, tokenizer_json=tokenizer_json, base=base) as analysis:
        return analysis.write(out_dir)


def collection_vocab(vocabs: Iterable[Sequence[str]]) -> list[str]:
    """One word vocabulary holding those of several shards: the first's words, then each next one's new words."""
    seen: dict[str, None] = {}
    for vocab in vocabs:
        seen.update(dict.fromkeys(vocab))
    return list(seen)


class Bm25Side:
    """The BM25 field of a single index or of every segment of a live one: query vectors and the sparse index."""

    def __init__(self, dirs: Sequence[Path], index, checksums: bool = True):
        self.dirs = [Path(d) for d in dirs]
        self.index = index  # InvertedIndex, or SegmentedIndex over the segments' fields
        manifests = [read_manifest(d) for d in self.dirs]
        info = manifests[0]["bm25"]
        self.settings = Bm25Settings(**{k: info[k] for k in ("analyzer", "k1", "b", "quant_bits", "lucene_norms")})
        self.avgdl = float(info["avgdl"])
        last, last_info = self.dirs[-1], manifests[-1]["bm25"]  # the newest vocabulary holds every older one
        self.tokenizer_json = None
        vocab: Sequence[str] = ()
        if "vocab" in last_info:
            if checksums:
                check_checksum(last / VOCAB_FILE, last_info["vocab"]["sha256"])
            vocab = (last / VOCAB_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        else:
            if checksums:
                check_checksum(last / TOKENIZER_FILE, last_info["tokenizer"]["sha256"])
            self.tokenizer_json = (last / TOKENIZER_FILE).read_text(encoding="utf-8")
        self._terms = _Terms(self.settings, self.tokenizer_json, vocab)
        self.vocab = vocab
        df = np.zeros(self._terms.vocab_size, np.int64)
        for d, m in zip(self.dirs, manifests):
            part = np.load(d / m["arrays"][DF_ARRAY]["file"], mmap_mode="r")
            df[:len(part)] += part
        self.num_docs = sum(int(m["num_docs"]) for m in manifests)
        self.idf = bm25_idf(df, self.num_docs)

    @classmethod
    def open(cls, dirs: Sequence[Path], index=None, *, verify: bool = False, checksums: bool = True) -> "Bm25Side":
        """The field stored in ``dirs`` (one per segment); ``index``: their sparse index if already opened."""
        if index is None:
            index = InvertedIndex.open(dirs[0], verify=verify, checksums=checksums)
        return cls(dirs, index, checksums)

    def query_vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(term ids, idf x count in the query) of a text query; unknown words dropped."""
        counts = Counter(self._terms.of_query(text))
        ids = np.fromiter(counts.keys(), np.uint32, len(counts))
        weights = self.idf[ids] * np.fromiter(counts.values(), np.float32, len(counts))
        keep = weights > 0
        return ids[keep], weights[keep].astype(np.float32)

    def describe(self) -> dict:
        return {**asdict(self.settings), "avgdl": round(self.avgdl, 3), "vocab_size": len(self.idf)}


def field_dir(index_dir: Path) -> Path:
    """Where an index directory keeps its BM25 field."""
    return Path(index_dir) / BM25_DIR


def has_field(manifest: dict) -> bool:
    return bool(manifest.get(MANIFEST_KEY))


def verify_field(index_dir: Path, manifest: dict) -> list[str]:
    """Problems of the BM25 field an index manifest names: its arrays (:func:`lsr.index.verify_index`), its
    vocabulary or tokenizer file, and its document count against the index's."""
    from lsr.index import verify_index

    if not has_field(manifest):
        return []
    path = Path(index_dir) / manifest[MANIFEST_KEY]["dir"]
    problems = verify_index(path)
    if problems:
        return problems
    field = read_manifest(path)
    if field["num_docs"] != manifest["num_docs"]:
        problems.append(f"{path}: the BM25 field holds {field['num_docs']} documents, the index {manifest['num_docs']}")
    info = field.get("bm25") or {}
    for entry in (info.get("vocab"), info.get("tokenizer")):
        if entry and (not (path / entry["file"]).is_file() or sha256_file(path / entry["file"]) != entry["sha256"]):
            problems.append(f"{path / entry['file']}: missing, or sha256 mismatch (file corrupt or modified)")
    return problems


def manifest_entry(index_dir: Path) -> dict:
    """What an index's manifest records of its BM25 field."""
    path = field_dir(index_dir) / "manifest.json"
    info = json.loads(path.read_text(encoding="utf-8"))["bm25"]
    return {"dir": BM25_DIR, "analyzer": info["analyzer"], "k1": info["k1"], "b": info["b"]}
