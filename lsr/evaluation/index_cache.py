"""The cached index an evaluation searches: built once per corpus, model and settings, then given the
dense vectors, structures and query table a run needs; adopting a prebuilt index; sizes on disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from lsr.encoder import DEFAULT_DOC_WINDOWS, DEFAULT_WINDOW_DECAY, DEFAULT_WINDOW_POOLING
from lsr.evaluation.base import EvalError, digest, slug
from lsr.evaluation.registry import EvalContext

log = logging.getLogger(__name__)

DEFAULT_REORDER = {"bmp": "bp"}  # structure -> document reordering applied before building it
INDEX_SETTINGS = {"doc_max_length": 256, "query_max_length": 64, "doc_top_k": None, "quant_bits": 8}
# how long documents are read (``-p index.doc_windows=4`` etc.); part of the cache key unless one window is read
WINDOW_SETTINGS = {"doc_windows": DEFAULT_DOC_WINDOWS, "window_stride": None, "window_pooling": DEFAULT_WINDOW_POOLING,
                   "window_decay": DEFAULT_WINDOW_DECAY}


def sparse_index_key(ctx: EvalContext) -> tuple[dict, str]:
    """The cache key of the base sparse index (corpus content, model files, index settings) and the model name."""
    from lsr.models import model_hash, resolve_model

    from lsr.encoder import check_doc_windows, default_window_stride

    ref = resolve_model(ctx.model)
    settings = {**INDEX_SETTINGS, **WINDOW_SETTINGS, **ctx.params_for("index")}
    known = {**INDEX_SETTINGS, **WINDOW_SETTINGS}
    unknown = set(settings) - set(known)
    if unknown:
        raise EvalError(f"unknown index setting(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    try:
        settings["doc_windows"] = check_doc_windows(settings["doc_windows"])
    except ValueError as err:
        raise EvalError(f"index.doc_windows: {err}") from None
    if settings["doc_windows"] == 1:  # the first window alone: the other window settings change nothing
        settings = {k: v for k, v in settings.items() if k in INDEX_SETTINGS}
    else:
        settings["window_stride"] = int(settings["window_stride"] or default_window_stride(settings["doc_max_length"]))
        settings["window_decay"] = float(settings["window_decay"])
    return {"corpus_sha256": ctx.dataset.fingerprint, "model": ref.name, "model_sha256": model_hash(ref.path),
            **settings}, ref.name


def sparse_index_dir(ctx: EvalContext) -> tuple[Path, dict]:
    key, model = sparse_index_key(ctx)
    return ctx.cache_dir / "indexes" / f"{slug(ctx.dataset.name)}-{slug(model)}-{digest(key)}", key


def _matches(manifest: dict, key: dict) -> str | None:
    """Why an index manifest does not fit a cache key (None when it fits)."""
    model = manifest.get("model", {})
    checks = [("model sha256", model.get("sha256"), key["model_sha256"]),
              ("doc_max_length", model.get("doc_max_length"), key["doc_max_length"]),
              ("query_max_length", model.get("query_max_length"), key["query_max_length"]),
              ("doc_top_k", model.get("doc_top_k"), key["doc_top_k"]),
              ("quantization bits", manifest.get("quantization", {}).get("bits"), key["quant_bits"]),
              ("doc_windows", model.get("doc_windows", 1), key.get("doc_windows", 1))]
    if key.get("doc_windows", 1) != 1:
        checks += [(name, model.get(name), key[name]) for name in ("window_stride", "window_pooling", "window_decay")]
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
        copy_dir(src, target)
        log.info("adopted %s as %s", src, target)
    return target


def copy_dir(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.copy-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging, ignore=shutil.ignore_patterns(".*"))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def dense_settings(ctx: EvalContext) -> dict:
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


def eval_engine(ctx: EvalContext, mode: str = "exact", dense: bool = False, bm25: bool = False):
    """Open the cached index for the context (building it once) with what ``mode``, ``dense`` and ``bm25`` (the
    BM25 field, added in place when an index built before it existed lacks it) need.

    The encoded base index is keyed by corpus, model and index settings. Dense vectors and a structure
    built without reordering are added to it in place; reordering (``bp`` before BMP by default) or structure
    build parameters (``build.<structure>.<key>=value``) make a copy of the base, so encoding happens once.
    """
    from lsr.index.structures import structure_for_mode
    from lsr.engine import Engine

    structure = structure_for_mode(mode)
    base, key = sparse_index_dir(ctx)
    if not (base / "manifest.json").is_file():
        settings = {k: v for k, v in key.items() if k in INDEX_SETTINGS or k in WINDOW_SETTINGS}
        Engine.build(ctx.dataset.root, base, model=ctx.model, batch_size=ctx.batch_size,
                     progress=ctx.progress, **settings)
        (base.parent / f"{base.name}.key.json").write_text(json.dumps(key, indent=1))
    engine = _with_query_table(ctx, Engine.open(base))
    want_dense = dense_settings(ctx) if dense else None
    if dense and not _has_dense(engine.manifest, want_dense):
        engine = engine.add_dense(want_dense["model"], batch_size=ctx.batch_size, dtype=want_dense["dtype"],
                                  hnsw_threshold=want_dense["hnsw_threshold"], progress=ctx.progress)
    if bm25 and not engine.has_bm25:
        engine = engine.add_bm25()
    if structure is None:
        return engine
    reorder = DEFAULT_REORDER.get(structure) if ctx.reorder == "auto" else ctx.reorder
    build = ctx.params_for(f"build.{structure}")
    target = base
    if reorder or build:
        target = base.parent / f"{base.name}-{slug(reorder or 'noreorder')}-{digest([structure, build], 8)}"
        copied = Engine.open(target) if (target / "manifest.json").is_file() else None
        stale = copied is not None and ((dense and not _has_dense(copied.manifest, want_dense))
                                        or (bm25 and not copied.has_bm25))
        if stale or copied is None:  # (re)copy the base, dense vectors and BM25 field included
            copy_dir(base, target)
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
    ``structures`` (per structure), ``dense`` (vectors and graph), ``docstore`` and ``bm25`` (the BM25 field's
    directory, its structures included)."""
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
    if m.get("bm25"):
        sizes["bm25"] = sum(f.stat().st_size for f in (root / m["bm25"]["dir"]).rglob("*") if f.is_file())
    return sizes


def sparse_size(sizes: dict, mode: str) -> int:
    """Bytes a sparse search mode needs: the base arrays and the mode's structure."""
    from lsr.index.structures import structure_for_mode

    return sizes["base"] + sizes["structures"].get(structure_for_mode(mode), 0)
