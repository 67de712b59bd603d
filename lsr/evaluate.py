"""BEIR evaluation: datasets, cached indexes, a registry of retrievers, metrics, latency and result JSON.

A *retriever* is a callable ``fn(ctx: EvalContext) -> Retrieval`` registered under a name::

    from lsr.evaluate import register_retriever, timed_queries

    @register_retriever("dense")
    def dense(ctx):
        index = ...                                   # build once under ctx.cache_path("dense", ...)
        return timed_queries(ctx.dataset.queries, encode=index.encode, search=index.search, k=ctx.k,
                             desc="searching dense", progress=ctx.progress,
                             info={"implementation": "...", "model": "..."}, index_size_bytes=...)

Built in: ``sparse`` (this package's index, any search mode of ``index.structures.MODES``), ``dense`` and
``hybrid`` (the dense vectors stored in the same index, fused by ``lsr.fusion`` exactly as the engine and the
server fuse) and ``bm25`` (Pyserini or bm25s, see ``lsr.bm25``). Modules named in ``PLUGIN_MODULES`` and the
``LSR_EVAL_PLUGINS`` environment variable (comma-separated) are imported on demand so they can register more.

Every retriever answers the queries one at a time on one thread, timing query encoding and search
separately; the run it returns is what gets evaluated, so the latency is that of the measured run.
Metrics come from ``ir_measures`` (pytrec_eval) and are computed on the ranking exactly as returned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lsr import __version__
from lsr.corpus import CorpusError, CorpusReader, Document, read_queries

log = logging.getLogger("lsr.evaluate")

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
_IR_MEASURES = {"ndcg@10": "nDCG@10", "recall@100": "R@100", "mrr@10": "RR@10", "map@100": "AP@100"}
DEFAULT_K = 100
DEFAULT_SPLIT = "test"
PLUGIN_MODULES: tuple[str, ...] = ()
DEFAULT_REORDER = {"bmp": "bp"}  # structure -> document reordering applied before building it
INDEX_SETTINGS = {"doc_max_length": 256, "query_max_length": 64, "doc_top_k": None, "quant_bits": 8}


class EvalError(ValueError):
    """Bad evaluation input (dataset, run, option): a one-line message naming the file."""


def default_cache_dir() -> Path:
    """``$LSR_CACHE`` or ``~/.cache/lsr/eval``."""
    return Path(os.environ.get("LSR_CACHE") or Path.home() / ".cache" / "lsr" / "eval").expanduser()


def _digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "x"


# ====================================================================== datasets
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


# ====================================================================== retrievals and the registry
@dataclass
class Retrieval:
    """What a retriever returns: ranked ``(doc id, score)`` lists per query and per-query timings."""

    qids: list[str]
    results: list[list[tuple[str, float]]]
    encode_ms: np.ndarray  # query encoding (0 where the retriever has no separate step)
    search_ms: np.ndarray  # search alone
    index_size_bytes: int | None = None
    info: dict = field(default_factory=dict)  # implementation, model, index directory, parameters

    @property
    def run(self) -> dict[str, list[tuple[str, float]]]:
        return dict(zip(self.qids, self.results))


@dataclass
class EvalContext:
    """Everything a retriever needs: the dataset, k, the sparse search mode, parameters and the cache."""

    dataset: Dataset
    cache_dir: Path
    k: int = DEFAULT_K
    mode: str = "exact"
    model: str | None = None
    fusion: str | None = None  # lsr.fusion method (None: its default)
    params: dict = field(default_factory=dict)  # plain keys: search parameters; "prefix.key": a component's
    reorder: str | None = "auto"
    bm25: str = "auto"
    batch_size: int = 32
    progress: bool = True
    query_encoder: str = "model"  # sparse side: "model" (SPLADE) or "inference-free" (tokenizer + IDF table)
    query_runtime: str | None = None  # what runs the models on queries: torch, onnx, onnx-int8 (None: the default)
    _done: dict = field(default_factory=dict, repr=False)

    def retrieve(self, name: str) -> Retrieval:
        """Run a registered retriever (once per context; a retriever may build on another's run)."""
        if name not in self._done:
            self._done[name] = get_retriever(name)(self)
        return self._done[name]

    def search_params(self) -> dict:
        """Parameters without a dotted prefix: knobs of the sparse search mode (e.g. BMP's alpha)."""
        return {k: v for k, v in self.params.items() if "." not in k}

    def params_for(self, prefix: str) -> dict:
        """Parameters ``prefix.key=value`` as ``{key: value}`` (e.g. ``fusion``, ``bm25``, ``index``, ``build.bmp``)."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.params.items() if k.startswith(prefix + ".") and "." not in k[n:]}

    def cache_path(self, kind: str, key: Any) -> Path:
        """A cache directory for ``kind`` (e.g. ``dense``) for this dataset and a settings ``key``."""
        return self.cache_dir / kind / f"{_slug(self.dataset.name)}-{_digest([self.dataset.fingerprint, key])}"


Retriever = Callable[[EvalContext], Retrieval]
RETRIEVERS: dict[str, Retriever] = {}
_plugin_errors: dict[str, str] = {}


def register_retriever(name: str) -> Callable[[Retriever], Retriever]:
    """Decorator: make ``fn(ctx) -> Retrieval`` available as ``lsr eval --retriever NAME``."""

    def deco(fn: Retriever) -> Retriever:
        RETRIEVERS[name] = fn
        return fn

    return deco


@functools.lru_cache(maxsize=None)
def load_plugins() -> None:
    """Import the plugin modules (missing ones are skipped; import failures are remembered for messages)."""
    extra = [m.strip() for m in os.environ.get("LSR_EVAL_PLUGINS", "").split(",") if m.strip()]
    for module in (*PLUGIN_MODULES, *extra):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                _plugin_errors[module] = f"{type(err).__name__}: {err}"
        except Exception as err:  # a plugin that fails to import must not break the other retrievers
            _plugin_errors[module] = f"{type(err).__name__}: {err}"


def get_retriever(name: str) -> Retriever:
    if name not in RETRIEVERS:
        load_plugins()
    if name not in RETRIEVERS:
        problems = "; ".join(f"{m}: {e}" for m, e in _plugin_errors.items())
        raise EvalError(f"retriever {name!r} is not available (available: {', '.join(sorted(RETRIEVERS))}); "
                        f"a module registers one with lsr.evaluate.register_retriever"
                        + (f" [plugin import errors: {problems}]" if problems else ""))
    return RETRIEVERS[name]


def available_retrievers() -> list[str]:
    load_plugins()
    return sorted(RETRIEVERS)


@contextlib.contextmanager
def single_thread():
    """Torch and Numba limited to one thread (latency is reported per query on one thread)."""
    saved = []
    # Numba first: setting its thread count resets the OpenMP pool Torch shares (found the hard way).
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        saved.append((numba.set_num_threads, numba.get_num_threads()))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        saved.append((torch.set_num_threads, torch.get_num_threads()))
    for setter, _ in saved:
        setter(1)
    try:
        yield
    finally:
        for setter, value in saved:
            setter(value)


def timed_queries(
    queries: dict[str, str], encode: Callable[[str], Any], search: Callable[[Any, int], list[tuple[str, float]]],
    k: int, *, desc: str = "searching", progress: bool = True, info: dict | None = None,
    index_size_bytes: int | None = None, warmup: int = 5,
) -> Retrieval:
    """Answer queries one at a time on one thread, timing ``encode(text)`` and ``search(encoded, k)`` apart.

    ``warmup`` queries (cycling through the list) are run untimed first (JIT compilation, caches, lazy loading).
    """
    qids = list(queries)
    results, enc, srch = [], np.zeros(len(qids)), np.zeros(len(qids))
    clock = time.perf_counter
    with single_thread():
        for i in range(min(warmup, 10 * len(qids))):
            search(encode(queries[qids[i % len(qids)]]), k)
        for i, qid in enumerate(tqdm(qids, desc=desc, unit="q", disable=not progress, dynamic_ncols=True)):
            t0 = clock()
            encoded = encode(queries[qid])
            t1 = clock()
            hits = search(encoded, k)
            t2 = clock()
            enc[i], srch[i] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
            results.append([(str(d), float(s)) for d, s in hits])
    return Retrieval(qids, results, enc, srch, index_size_bytes, dict(info or {}))


# ====================================================================== sparse (this package's index)
def sparse_index_key(ctx: EvalContext) -> tuple[dict, str]:
    """The cache key of the base sparse index (corpus content, model files, index settings) and the model name."""
    from lsr.models import model_hash, resolve_model

    ref = resolve_model(ctx.model)
    settings = {**INDEX_SETTINGS, **ctx.params_for("index")}
    unknown = set(settings) - set(INDEX_SETTINGS)
    if unknown:
        raise EvalError(f"unknown index setting(s) {', '.join(sorted(unknown))}; known: {', '.join(INDEX_SETTINGS)}")
    return {"corpus_sha256": ctx.dataset.fingerprint, "model": ref.name, "model_sha256": model_hash(ref.path),
            **settings}, ref.name


def sparse_index_dir(ctx: EvalContext) -> tuple[Path, dict]:
    key, model = sparse_index_key(ctx)
    return ctx.cache_dir / "indexes" / f"{_slug(ctx.dataset.name)}-{_slug(model)}-{_digest(key)}", key


def _matches(manifest: dict, key: dict) -> str | None:
    """Why an index manifest does not fit a cache key (None when it fits)."""
    model = manifest.get("model", {})
    checks = [("model sha256", model.get("sha256"), key["model_sha256"]),
              ("doc_max_length", model.get("doc_max_length"), key["doc_max_length"]),
              ("query_max_length", model.get("query_max_length"), key["query_max_length"]),
              ("doc_top_k", model.get("doc_top_k"), key["doc_top_k"]),
              ("quantization bits", manifest.get("quantization", {}).get("bits"), key["quant_bits"])]
    for what, have, want in checks:
        if have != want:
            return f"{what} is {have!r}, expected {want!r}"
    return None


def adopt_index(ctx: EvalContext, index_dir: str | os.PathLike) -> Path:
    """Copy a prebuilt index of this dataset into the cache (after checking model, settings and documents)."""
    from lsr.index.storage import read_manifest

    src = Path(index_dir)
    if not (src / "manifest.json").is_file():
        raise EvalError(f"{src}: no index here (missing manifest.json)")
    target, key = sparse_index_dir(ctx)
    manifest = read_manifest(src)
    problem = _matches(manifest, key)
    if problem is None and manifest.get("num_docs") != ctx.dataset.num_docs:
        problem = f"it holds {manifest.get('num_docs')} documents, the corpus {ctx.dataset.num_docs}"
    if problem is None:
        from lsr.docstore import DocStore

        store = DocStore(src / manifest["documents"]["file"], readonly=True)
        foreign = next((i for i in store.ids() if i not in ctx.dataset.doc_ids), None)
        if foreign is not None:
            problem = f"it holds document {foreign!r}, which the corpus has not"
    if problem:
        raise EvalError(f"{src}: cannot reuse this index for {ctx.dataset.corpus_file}: {problem}")
    if not (target / "manifest.json").is_file():
        _copy_dir(src, target)
        log.info("adopted %s as %s", src, target)
    return target


def _copy_dir(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.copy-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging, ignore=shutil.ignore_patterns(".*"))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _dense_settings(ctx: EvalContext) -> dict:
    from lsr.dense import DEFAULT_HNSW_THRESHOLD
    from lsr.models import DEFAULT_DENSE, model_hash, resolve_model

    p = ctx.params_for("dense")
    unknown = set(p) - {"model", "dtype", "hnsw_threshold"}
    if unknown:
        raise EvalError(f"unknown dense setting(s) {', '.join(sorted(unknown))}; known: model, dtype, hnsw_threshold")
    ref = resolve_model(p.get("model"), DEFAULT_DENSE)
    return {"model": p.get("model"), "sha256": model_hash(ref.path), "dtype": p.get("dtype", "float16"),
            "hnsw_threshold": int(p.get("hnsw_threshold", DEFAULT_HNSW_THRESHOLD))}


def _has_dense(manifest: dict, want: dict) -> bool:
    info = manifest.get("dense") or {}
    return bool(info) and info["model"].get("sha256") == want["sha256"] and info.get("dtype") == want["dtype"] \
        and info.get("hnsw_threshold") == want["hnsw_threshold"]


def eval_engine(ctx: EvalContext, mode: str = "exact", dense: bool = False):
    """Open the cached index for the context (building it once) with what ``mode`` and ``dense`` need.

    The encoded base index is keyed by corpus, model and index settings. Dense vectors and a structure
    built without reordering are added to it in place; reordering (``bp`` before BMP by default) or structure
    build parameters (``build.<structure>.<key>=value``) make a copy of the base, so encoding happens once.
    """
    from lsr.index.structures import structure_for_mode
    from lsr.engine import Engine

    structure = structure_for_mode(mode)
    base, key = sparse_index_dir(ctx)
    if not (base / "manifest.json").is_file():
        settings = {k: v for k, v in key.items() if k in INDEX_SETTINGS}
        Engine.build(ctx.dataset.root, base, model=ctx.model, batch_size=ctx.batch_size,
                     progress=ctx.progress, **settings)
        (base.parent / f"{base.name}.key.json").write_text(json.dumps(key, indent=1))
    engine = _with_query_table(ctx, Engine.open(base))
    want_dense = _dense_settings(ctx) if dense else None
    if dense and not _has_dense(engine.manifest, want_dense):
        engine = engine.add_dense(want_dense["model"], batch_size=ctx.batch_size, dtype=want_dense["dtype"],
                                  hnsw_threshold=want_dense["hnsw_threshold"], progress=ctx.progress)
    if structure is None:
        return engine
    reorder = DEFAULT_REORDER.get(structure) if ctx.reorder == "auto" else ctx.reorder
    build = ctx.params_for(f"build.{structure}")
    target = base
    if reorder or build:
        target = base.parent / f"{base.name}-{_slug(reorder or 'noreorder')}-{_digest([structure, build], 8)}"
        stale = (target / "manifest.json").is_file() and dense and not _has_dense(Engine.open(target).manifest,
                                                                                   want_dense)
        if stale or not (target / "manifest.json").is_file():  # (re)copy the base, dense vectors included
            _copy_dir(base, target)
    engine = _with_query_table(ctx, Engine.open(target))
    if structure not in engine.manifest.get("structures", {}):
        try:
            engine = engine.add_structures([structure], reorder=reorder if target != base else None,
                                           **({structure: build} if build else {}))
        except ModuleNotFoundError as err:
            raise EvalError(f"mode {mode!r} needs the {structure!r} structure, which cannot be built here "
                            f"({err})") from err
    return engine


def _with_query_table(ctx: EvalContext, engine):
    """The engine, with the inference-free query table added first when the context needs it and the index
    (built before the table existed) lacks it. The table is derived from the index alone, so the cache key of
    the index does not change."""
    if ctx.query_encoder == "inference-free" and not engine.manifest.get("inference_free"):
        log.info("adding the inference-free query table to %s", engine.index_dir)
        engine = engine.add_inference_free()
    return engine


def index_sizes(engine) -> dict:
    """Bytes on disk of an index by part, from its manifest: ``base`` (postings, forward index, manifest),
    ``structures`` (per structure), ``dense`` (vectors and graph) and ``docstore``."""
    m, root = engine.manifest, Path(engine.index_dir)

    def size(name: str) -> int:
        return (root / name).stat().st_size if (root / name).is_file() else 0

    owner = {a: name for name, info in m.get("structures", {}).items() for a in info.get("arrays", [])}
    dense = m.get("dense") or {}
    sizes = {"base": size("manifest.json"), "structures": {}, "dense": 0, "docstore": size(m["documents"]["file"])}
    for name, entry in m["arrays"].items():
        if name in owner:
            sizes["structures"][owner[name]] = sizes["structures"].get(owner[name], 0) + size(entry["file"])
        elif dense and name == dense.get("array"):
            sizes["dense"] += size(entry["file"])
        else:
            sizes["base"] += size(entry["file"])
    if dense.get("hnsw"):
        sizes["dense"] += size(dense["hnsw"]["file"])
    return sizes


def sparse_size(sizes: dict, mode: str) -> int:
    """Bytes a sparse search mode needs: the base arrays and the mode's structure."""
    from lsr.index.structures import structure_for_mode

    return sizes["base"] + sizes["structures"].get(structure_for_mode(mode), 0)


@register_retriever("sparse")
def sparse_retriever(ctx: EvalContext) -> Retrieval:
    """This package's learned-sparse index in the context's search mode."""
    engine = eval_engine(ctx, ctx.mode)
    params = ctx.search_params()
    encoder = engine.query_encoder(ctx.query_encoder, ctx.query_runtime)
    lengths: list[int] = []

    def encode(text):
        vector = encoder.encode_query(text)
        lengths.append(len(vector[0]))
        return vector

    def search(vector, k):
        return [(h.id, h.score) for h in engine.search(vector, k=k, mode=ctx.mode, **params)]

    sizes = index_sizes(engine)
    r = timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc=f"searching sparse/{ctx.mode}",
        progress=ctx.progress, index_size_bytes=sparse_size(sizes, ctx.mode),
        info={"implementation": "lsr", "model": engine.manifest["model"]["name"], "query_encoder": ctx.query_encoder,
              "index": str(engine.index_dir), "sizes": sizes,
              "structures": sorted(engine.manifest.get("structures", {})), "search_params": params},
    )
    r.info["nnz"] = nnz_stats(engine, lengths[-len(r.qids):] if r.qids else [])  # the timed pass, not the warm-up
    return r


def nnz_stats(engine, query_lengths: Sequence[int]) -> dict:
    """Average non-zero terms per indexed document and per encoded query (the efficiency side of a model)."""
    m = engine.manifest
    return {"doc": round(m["num_postings"] / max(m["num_docs"], 1), 2),
            "query": round(float(np.mean(query_lengths)) if len(query_lengths) else 0.0, 2)}


@register_retriever("dense")
def dense_retriever(ctx: EvalContext) -> Retrieval:
    """Dense vectors stored in the index (``lsr.dense``): exact inner product, or HNSW on large collections."""
    from lsr import fusion

    engine = eval_engine(ctx, "exact", dense=True)
    encoder = engine.dense_query_encoder(ctx.query_runtime)

    def encode(text):
        return text, encoder.encode_query(text)

    def search(encoded, k):
        text, vector = encoded
        return [(h.id, h.score) for h in fusion.search(engine, text, k, retriever="dense", dense_vector=vector)]

    sizes = index_sizes(engine)
    return timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc="searching dense", progress=ctx.progress,
        index_size_bytes=sizes["dense"],
        info={"implementation": "lsr-dense" + ("-hnsw" if engine.dense.uses_hnsw else "-exact"),
              "model": encoder.name, "index": str(engine.index_dir), "sizes": sizes},
    )


def fusion_config(ctx: EvalContext):
    """The :class:`lsr.fusion.FusionConfig` of ``--fusion`` and ``--param fusion.<field>=value``."""
    from lsr.fusion import FusionConfig

    p = ctx.params_for("fusion")
    unknown = set(p) - {"alpha", "normalization", "depth", "rrf_k"}
    if unknown:
        raise EvalError(f"unknown fusion parameter(s) {', '.join(sorted(unknown))}; "
                        f"known: alpha, normalization, depth, rrf_k")
    return FusionConfig.make(ctx.fusion, **p)


@register_retriever("hybrid")
def hybrid_retriever(ctx: EvalContext) -> Retrieval:
    """Sparse (in ``--mode``) and dense fused by ``lsr.fusion`` exactly as the engine and server do."""
    from lsr import fusion

    config = fusion_config(ctx)
    engine = eval_engine(ctx, ctx.mode, dense=True)
    sparse_encoder = engine.query_encoder(ctx.query_encoder, ctx.query_runtime)
    dense_encoder = engine.dense_query_encoder(ctx.query_runtime)
    params = ctx.search_params()

    def encode(text):
        return text, sparse_encoder.encode_query(text), dense_encoder.encode_query(text)

    def search(encoded, k):
        text, sv, dv = encoded
        return [(h.id, h.score) for h in fusion.search(engine, text, k, mode=ctx.mode, retriever="hybrid",
                                                       fusion=config, sparse_vector=sv, dense_vector=dv,
                                                       params=params)]

    sizes = index_sizes(engine)
    return timed_queries(
        ctx.dataset.queries, encode, search, ctx.k, desc=f"searching hybrid/{config.method}", progress=ctx.progress,
        index_size_bytes=sparse_size(sizes, ctx.mode) + sizes["dense"],
        info={"implementation": "lsr-fusion", "model": {"sparse": engine.manifest["model"]["name"],
                                                        "dense": dense_encoder.name},
              "query_encoder": ctx.query_encoder,
              "fusion": config.to_dict(), "index": str(engine.index_dir), "sizes": sizes, "search_params": params},
    )


# ====================================================================== BM25
@register_retriever("bm25")
def bm25_retriever(ctx: EvalContext) -> Retrieval:
    """BM25 over title + text: Pyserini (Lucene) when available, else bm25s; ``implementation`` says which."""
    from lsr import bm25
    from lsr.engine import document_text

    p = ctx.params_for("bm25")
    root = ctx.cache_dir / "bm25" / f"{_slug(ctx.dataset.name)}-{ctx.dataset.fingerprint[:12]}"
    try:
        index = bm25.open_or_build(lambda: ((d.id, document_text(d)) for d in ctx.dataset.documents()), root,
                                   implementation=ctx.bm25, k1=float(p.get("k1", bm25.DEFAULT_K1)),
                                   b=float(p.get("b", bm25.DEFAULT_B)), progress=ctx.progress)
    except bm25.BM25Unavailable as err:
        raise EvalError(str(err)) from err
    return timed_queries(
        ctx.dataset.queries, index.analyze, index.search, ctx.k, desc=f"searching bm25/{index.implementation}",
        progress=ctx.progress, index_size_bytes=index.size_bytes,
        warmup=200 if index.implementation == "pyserini" else 5,  # the JVM compiles hot code for a while
        info={"implementation": index.implementation, "params": index.params, "index": str(index.index_dir)},
    )


# ====================================================================== metrics
Ranked = list[tuple[str, float]]  # one query's ranking: (doc id, score), best first


def _as_ranking(run: dict[str, Ranked], qids) -> dict[str, dict[str, float]]:
    """Scores replaced by strictly decreasing values, so ties are evaluated in the order returned."""
    out = {}
    for qid in qids:
        ranked = run.get(qid) or []
        scores: dict[str, float] = {}
        for i, (doc, _) in enumerate(ranked):
            scores.setdefault(doc, float(len(ranked) - i))
        if scores:
            out[qid] = scores
    return out


def per_query(run: dict[str, Ranked], qrels: dict[str, dict[str, int]], metrics: Sequence[str] = METRICS
              ) -> dict[str, dict[str, float]]:
    """``{metric: {query id: value}}`` over every judged query (a query without results scores 0)."""
    import ir_measures

    unknown = [m for m in metrics if m not in _IR_MEASURES]
    if unknown:
        raise EvalError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(_IR_MEASURES)}")
    measures = {str(ir_measures.parse_measure(_IR_MEASURES[m])): m for m in metrics}
    values = {m: dict.fromkeys(qrels, 0.0) for m in metrics}
    ranking = _as_ranking(run, qrels)
    if ranking:
        for r in ir_measures.iter_calc([ir_measures.parse_measure(s) for s in measures], qrels, ranking):
            values[measures[str(r.measure)]][r.query_id] = float(r.value)
    return values


def evaluate(run: dict[str, Ranked], qrels: dict[str, dict[str, int]], metrics: Sequence[str] = METRICS
             ) -> dict[str, float]:
    """Mean of each metric over the judged queries."""
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in per_query(run, qrels, metrics).items()}


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    ms = np.asarray(ms, dtype=np.float64)
    if not len(ms):
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": round(float(ms.mean()), 4), "p50": round(float(np.percentile(ms, 50)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4)}


# ====================================================================== runs on disk
def write_run(path: str | os.PathLike, run: dict[str, Ranked], tag: str = "lsr") -> None:
    """TREC run file: ``qid Q0 docid rank score tag``."""
    with open(path, "w", encoding="utf-8") as fh:
        for qid, ranked in run.items():
            for rank, (doc, score) in enumerate(ranked, 1):
                fh.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def read_run(path: str | os.PathLike) -> dict[str, Ranked]:
    """A TREC run file, each query's documents ordered by score (then by the rank column)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no such run file")
    rows: dict[str, list[tuple[float, int, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise CorpusError(path, lineno, None, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            try:
                rank, score = int(parts[3]), float(parts[4])
            except ValueError:
                raise CorpusError(path, lineno, None, "rank must be an integer and score a number") from None
            rows.setdefault(parts[0], []).append((-score, rank, parts[2]))
    if not rows:
        raise EvalError(f"{path}: empty run file")
    return {q: [(d, -s) for s, _, d in sorted(r)] for q, r in rows.items()}


def compare_runs(run_a: dict[str, Ranked], run_b: dict[str, Ranked], qrels: dict[str, dict[str, int]],
                 metrics: Sequence[str] = METRICS, test: str = "student", alpha: float = 0.05) -> dict:
    """Paired significance test per metric over the judged queries that either run answers.

    ``student``: paired t-test (as ranx's ``compare``); ``wilcoxon``: Wilcoxon signed-rank.
    """
    from scipy import stats

    if test not in ("student", "wilcoxon"):
        raise EvalError(f"unknown test {test!r}; choose student or wilcoxon")
    qids = [q for q in qrels if q in run_a or q in run_b]
    if not qids:
        raise EvalError("neither run answers any judged query (do the query ids match the qrels?)")
    qrels = {q: qrels[q] for q in qids}
    va, vb = per_query(run_a, qrels, metrics), per_query(run_b, qrels, metrics)
    out = {"queries": len(qids), "test": test, "alpha": alpha, "metrics": {}}
    for m in metrics:
        a = np.array([va[m][q] for q in qids])
        b = np.array([vb[m][q] for q in qids])
        diff = b - a
        if not np.any(diff):
            p = 1.0
        elif test == "student":
            p = float(stats.ttest_rel(a, b).pvalue)
        else:
            p = float(stats.wilcoxon(a, b).pvalue)
        p = 1.0 if np.isnan(p) else p
        out["metrics"][m] = {"a": float(a.mean()), "b": float(b.mean()), "delta": float(diff.mean()), "p_value": p,
                             "significant": p < alpha, "b_wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
                             "b_losses": int((diff < 0).sum())}
    return out


def load_qrels_arg(spec: str | os.PathLike, split: str = DEFAULT_SPLIT, cache_dir: Path | None = None
                   ) -> dict[str, dict[str, int]]:
    """Qrels from a qrels file, or from a BEIR dataset (directory or name) and split."""
    path = Path(spec)
    if path.is_file():
        return read_qrels(path).judgments
    root = resolve_dataset_dir(spec, cache_dir)
    return read_qrels(root / "qrels" / f"{split}.tsv").judgments


# ====================================================================== one evaluation
def result_key(result: dict) -> str:
    """Column name of a result: ``bm25``, ``sparse-<mode>``, ``dense``, ``hybrid-<fusion>`` (+ ``-<mode>``);
    ``-inference-free`` is appended when the sparse side used inference-free queries."""
    name = result["retriever"]
    free = "-inference-free" if result.get("query_encoder") == "inference-free" else ""
    if name == "sparse":
        return f"sparse-{result['mode']}{free}"
    if name == "hybrid":
        return (f"hybrid-{result['fusion']}" + (f"-{result['mode']}" if result.get("mode") not in (None, "exact") else "")
                + free)
    return name


def run_eval(
    dataset: str | os.PathLike, *, retriever: str = "sparse", mode: str = "exact", split: str = DEFAULT_SPLIT,
    model: str | None = None, fusion: str | None = None, k: int = DEFAULT_K, params: dict | None = None,
    reorder: str | None = "auto", bm25: str = "auto", cache_dir: str | os.PathLike | None = None,
    progress: bool = True, max_queries: int | None = None, run_out: str | os.PathLike | None = None,
    adopt: str | os.PathLike | None = None, batch_size: int = 32, query_encoder: str = "model",
    query_runtime: str | None = None,
) -> dict:
    """Evaluate one retriever on one dataset split; return the result record (what ``--json`` prints).

    ``query_encoder`` (sparse and hybrid retrievers) is ``model`` or ``inference-free``; ``query_runtime`` runs the
    models on the queries (:mod:`lsr.onnx_encoders`; the documents are always encoded with torch)."""
    from lsr.index.structures import MODES
    from lsr.onnx_encoders import DEFAULT_QUERY_RUNTIME, check_query_runtime

    query_runtime = check_query_runtime(query_runtime or DEFAULT_QUERY_RUNTIME)
    from lsr.query_encoders import QUERY_ENCODERS

    if query_encoder not in QUERY_ENCODERS:
        raise EvalError(f"unknown query encoder {query_encoder!r}; available: {', '.join(QUERY_ENCODERS)}")
    if query_encoder != "model" and retriever not in ("sparse", "hybrid"):
        raise EvalError(f"--query-encoder {query_encoder} applies to the sparse and hybrid retrievers, not {retriever!r}")
    if mode not in MODES:
        raise EvalError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
    if not 1 <= k <= 10_000:
        raise EvalError(f"k must be between 1 and 10000, got {k}")
    get_retriever(retriever)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    started = time.time()
    ds = load_dataset(dataset, split, cache).limit(max_queries)
    ctx = EvalContext(ds, cache, k=k, mode=mode, model=model, fusion=fusion, params=dict(params or {}),
                      reorder=reorder, bm25=bm25, batch_size=batch_size, progress=progress,
                      query_encoder=query_encoder, query_runtime=query_runtime)
    if retriever == "hybrid":
        fusion = fusion_config(ctx).method  # bad fusion settings fail before any index is built
    if adopt is not None:
        adopt_index(ctx, adopt)
    r = ctx.retrieve(retriever)
    metrics = evaluate(r.run, ds.qrels)
    if run_out is not None:
        write_run(run_out, r.run, tag=f"lsr-{retriever}" + (f"-{mode}" if retriever in ("sparse", "hybrid") else "")
                  + ("-if" if query_encoder == "inference-free" else ""))
    uses_sparse = retriever in ("sparse", "hybrid")
    result = {
        "dataset": ds.name, "split": split, "retriever": retriever,
        "mode": mode if uses_sparse else None, "fusion": fusion if retriever == "hybrid" else None,
        "query_encoder": query_encoder if uses_sparse else None,
        "query_runtime": query_runtime if retriever in ("sparse", "dense", "hybrid") else None,
        "implementation": r.info.get("implementation"), "model": r.info.get("model"),
        "queries": len(ds.queries), "documents": ds.num_docs, "k": k,
        **{m: round(v, 6) for m, v in metrics.items()},
        "latency_ms": latency_summary(r.search_ms),
        "latency_with_encoding_ms": latency_summary(r.encode_ms + r.search_ms),
        "encoding_ms": latency_summary(r.encode_ms),
        "threads": 1,
        "index_size_bytes": r.index_size_bytes,
        "nnz": r.info.get("nnz"),
        "params": ctx.params, "details": r.info,
        "dataset_path": str(ds.root), "lsr_version": __version__, "machine": _machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_seconds": round(time.time() - started, 1),
    }
    return result


def _machine() -> dict:
    import platform

    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    return info


def save_result(result: dict, results_dir: str | os.PathLike) -> Path:
    """Write a result record as ``<dataset>__<column>.json`` (what ``eval/make_results.py`` reads)."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_slug(result['dataset'])}__{result_key(result)}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def parse_params(items: Sequence[str]) -> dict:
    """``key=value`` strings to a dict; values parsed as JSON when they can be (numbers, booleans, null)."""
    params = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise EvalError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params
