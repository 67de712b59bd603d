"""The ``lsr`` command line: index, add, delete, compact, search, info, encode, export-vectors, verify, demo, serve,
eval, train."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import List, Optional

import typer

from lsr.corpus import CorpusError, read_queries
from lsr.engine import (DEFAULT_INDEX_DIR, DEFAULT_RETRIEVER, MODES, RETRIEVER_HELP, Engine, Hit,
                        ModelMismatchError, parse_retriever)
from lsr.searcher import LABEL_FREE_METHODS
from lsr.models import ModelNotFoundError
from lsr.bm25_field import DEFAULT_ANALYZER
from lsr.encoder import DEFAULT_DOC_WINDOWS, DEFAULT_WINDOW_DECAY, DEFAULT_WINDOW_POOLING
from lsr.pipeline import DEFAULT_STRUCTURES, BuildSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learned sparse retrieval: index, search, serve, evaluate.")

IndexOpt = typer.Option(DEFAULT_INDEX_DIR, "--index", "-i", help="Index directory.")
DocWindowsOpt = typer.Option(
    str(DEFAULT_DOC_WINDOWS), "--doc-windows", help="Windows of --max-length tokens read per document, pooled into one vector: 1 (the first "
                               "--max-length tokens), N (at most N), or all.")
WindowStrideOpt = typer.Option(
    None, "--window-stride", min=1, help="Tokens between the starts of consecutive windows (default: 3/4 of the "
                                         "window, so windows overlap).")
WindowPoolingOpt = typer.Option(
    DEFAULT_WINDOW_POOLING, "--window-pooling", help="How windows are pooled: max, mean, decay (max of weight x decay^window) or first "
                                    "(max of the first window and decay x the others).")
WindowDecayOpt = typer.Option(DEFAULT_WINDOW_DECAY, "--window-decay", help="Weight of later windows for decay and first pooling.")
QueryEncoderOpt = typer.Option(
    "model", "--query-encoder", help="How text queries are encoded: model (SPLADE) or inference-free (tokenizer + "
                                     "the index's IDF table; no model, no torch).")
QueryRuntimeOpt = typer.Option(
    None, "--query-runtime", help="What runs the models on text queries: auto (default: SPLADE onnx-int8, dense onnx), "
                                  "torch, onnx (fp32 export) or onnx-int8 (exports cached in ~/.cache/lsr/onnx or "
                                  "$LSR_ONNX_CACHE).")
_USER_ERRORS = (CorpusError, ModelNotFoundError, ModelMismatchError, FileNotFoundError, ValueError)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def user_errors(func):
    """Turn bad input into a one-line error message and exit code 2 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _USER_ERRORS as err:
            _fail(str(err))
        except OSError as err:  # e.g. a full disk: the previous index is intact, say so in one line
            _fail(str(err))
        except RuntimeError as err:  # IndexFormatError and other clear failures
            if type(err).__name__ in ("IndexFormatError", "WriterLockedError"):
                _fail(str(err))
            raise

    return wrapper


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command("index")
@user_errors
def index_cmd(
    corpus: Optional[Path] = typer.Argument(None, help="BEIR dir, JSONL(.gz), CSV/TSV, folder of .txt/.md, or vectors JSONL."),
    index: Path = IndexOpt,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Masked-LM checkpoint: hub id or local path (default: embedded splade-tiny)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_length: int = typer.Option(256, "--max-length", min=8, help="Max document tokens."),
    query_max_length: int = typer.Option(64, "--query-max-length", min=4),
    doc_top_k: Optional[int] = typer.Option(None, "--doc-top-k", min=1, help="Keep only the top-k terms of each document."),
    doc_windows: str = DocWindowsOpt,
    window_stride: Optional[int] = WindowStrideOpt,
    window_pooling: str = WindowPoolingOpt,
    window_decay: float = WindowDecayOpt,
    quant_bits: int = typer.Option(8, "--quant-bits", help="Impact quantization: 8 or 16 bits."),
    id_field: Optional[str] = typer.Option(None, "--id-field"),
    text_field: Optional[str] = typer.Option(None, "--text-field"),
    title_field: Optional[str] = typer.Option(None, "--title-field"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Log and skip bad records instead of stopping."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads for encoding."),
    structures: Optional[str] = typer.Option(
        None, "--structures", help="Pruning structures to build too: bmp,seismic (default: bmp; 'none': no structure)."),
    add_structures: Optional[str] = typer.Option(
        None, "--add-structures", help="Add structures (bmp,seismic) to the existing index at --index; no CORPUS."),
    reorder: Optional[str] = typer.Option(None, "--reorder", help="Reorder documents for BMP blocks first: bp (graph bisection) or terms (cheap: by top terms); default: none."),
    dense: Optional[bool] = typer.Option(
        None, "--dense/--no-dense", help="Also store dense vectors for dense/hybrid search (default: on when the "
                                         "dense model is available)."),
    dense_model: Optional[str] = typer.Option(
        None, "--dense-model", help="Dense model: hub id or local path (default: embedded all-MiniLM-L6-v2)."),
    add_dense: bool = typer.Option(False, "--add-dense", help="Add dense vectors to the existing index at --index; no CORPUS."),
    bm25: Optional[bool] = typer.Option(
        None, "--bm25/--no-bm25", help="Also store the BM25 field for --retriever bm25 (default: on for text "
                                       "corpora, with --shards too; off for vector files)."),
    bm25_analyzer: str = typer.Option(
        DEFAULT_ANALYZER, "--bm25-analyzer", help="BM25 analyzer: word (Lucene-English-like: stopwords, Porter "
                                                  "stems) or model (the SPLADE tokenizer's word pieces)."),
    add_bm25: bool = typer.Option(
        False, "--add-bm25", help="Add (or rebuild) the BM25 field of the existing index at --index; no CORPUS."),
    add_inference_free: bool = typer.Option(
        False, "--add-inference-free", help="Add the inference-free query table (IDF + tokenizer) to the existing "
                                            "index at --index (indexes built before it existed); no CORPUS."),
    hnsw_threshold: Optional[int] = typer.Option(
        None, "--hnsw-threshold", min=1, help="Build an HNSW graph for dense search from this many documents on "
                                              "(default 100000; below it dense search is exact)."),
    shards: Optional[int] = typer.Option(
        None, "--shards", min=1, help="Build N index shards on Ray (documents routed by a stable hash of their id); "
                                      "search and serve them like one index."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray", help="With --shards: Ray cluster address (auto, ray://host:10001); default: a local runtime."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="With --shards: encoder workers (default: one per CPU of the Ray cluster)."),
    window: int = typer.Option(
        2048, "--window", min=1, help="Documents encoded and committed per checkpoint (a resume repeats it)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted build of --index (same CORPUS and settings) from its last "
                                "checkpoint instead of starting over."),
) -> None:
    """Index a corpus into an on-disk index (atomically replaces any previous index at --index).

    Progress is committed every --window documents; a killed build leaves the previous index untouched and
    `lsr index ... --resume` finishes it."""
    if quant_bits not in (8, 16):
        raise ValueError("--quant-bits must be 8 or 16")
    if resume and (corpus is None or shards is not None):
        raise ValueError("--resume continues an interrupted `lsr index CORPUS --index DIR` (not --shards or --add-*): "
                         "repeat that command with --resume")
    _set_threads(threads)
    started = time.time()
    if add_structures is not None:
        if corpus is not None:
            raise ValueError("--add-structures works on the existing index at --index: give no CORPUS")
        names = _split_names(add_structures)
        Engine.open(index, checksums=True).add_structures(names, reorder=reorder, progress=True)
        typer.echo(f"added {', '.join(names)} to {index} in {time.time() - started:.1f}s")
        return
    if add_inference_free:
        if corpus is not None:
            raise ValueError("--add-inference-free works on the existing index at --index: give no CORPUS")
        Engine.open(index, checksums=True).add_inference_free()
        typer.echo(f"added the inference-free query table to {index} in {time.time() - started:.1f}s")
        return
    if add_bm25:
        if corpus is not None:
            raise ValueError("--add-bm25 works on the existing index at --index: give no CORPUS")
        Engine.open(index, checksums=True).add_bm25(bm25_analyzer)
        typer.echo(f"added the BM25 field ({bm25_analyzer} analyzer) to {index} in {time.time() - started:.1f}s")
        return
    if add_dense:
        if corpus is not None:
            raise ValueError("--add-dense works on the existing index at --index: give no CORPUS")
        Engine.open(index, checksums=True).add_dense(dense_model, batch_size=batch_size, hnsw_threshold=hnsw_threshold)
        typer.echo(f"added dense vectors to {index} in {time.time() - started:.1f}s")
        return
    if corpus is None:
        raise ValueError("give a CORPUS to index (or --add-structures for an existing index)")
    if dense is None:  # on by default when the dense model is at hand (and the corpus has text to embed)
        from lsr.dense import dense_model_available
        from lsr.vectors import is_vector_file

        dense = dense_model is not None or (dense_model_available() and not is_vector_file(corpus))
    settings = BuildSettings(
        model=model, batch_size=batch_size, doc_max_length=max_length, query_max_length=query_max_length,
        doc_top_k=doc_top_k, doc_windows=doc_windows, window_stride=window_stride, window_pooling=window_pooling,
        window_decay=window_decay, quant_bits=quant_bits, id_field=id_field, text_field=text_field,
        title_field=title_field, skip_bad=skip_bad, structures=_structure_names(structures), reorder=reorder,
        window=window, dense=dense, dense_model=dense_model, hnsw_threshold=hnsw_threshold, bm25=bm25,
        bm25_analyzer=bm25_analyzer)
    if shards is not None:
        _index_sharded(corpus, index, shards, ray_address, workers, settings, encoder_threads=threads or 1)
        return
    engine = Engine.build(corpus, index, settings, resume=resume)
    info = engine.info()
    skipped = engine.manifest.get("skipped_records", 0)
    typer.echo(
        f"indexed {info['documents']} documents ({info['postings']} postings, {info['size_bytes'] / 1e6:.1f} MB) "
        f"into {index} in {time.time() - started:.1f}s" + (f"; skipped {skipped} bad record(s)" if skipped else "")
    )


def _windows_text(model: dict) -> str:
    """How an index read documents longer than one window of the model (``lsr info``)."""
    windows = model.get("doc_windows", 1)
    if windows == 1:
        return f"first window only ({model['doc_max_length']} tokens; --doc-windows reads more)"
    pooling = model["window_pooling"] + (f" (decay {model['window_decay']})" if model["window_pooling"] in
                                         ("decay", "first") else "")
    return (f"{'all' if windows == 'all' else f'up to {windows}'} windows of {model['doc_max_length']} tokens every "
            f"{model['window_stride']} tokens, {pooling} pooling")


def _index_sharded(corpus: Path, index: Path, shards: int, address: Optional[str], workers: Optional[int],
                   settings: BuildSettings, encoder_threads: int) -> None:
    """``lsr index --shards N``: encode on Ray workers into N shards (lsr.sharded; windows of its own size)."""
    from dataclasses import replace

    from lsr.sharded.build import DEFAULT_WINDOW, build_sharded
    from lsr.sharded.layout import index_size_bytes

    started = time.time()
    manifest = build_sharded(corpus, index, shards, replace(settings, window=DEFAULT_WINDOW), address=address,
                             workers=workers, encoder_threads=encoder_threads)
    enc = manifest["encoding"]
    skipped = manifest.get("skipped_records", 0)
    typer.echo(
        f"indexed {manifest['num_docs']} documents ({manifest['num_postings']} postings, "
        f"{index_size_bytes(index) / 1e6:.1f} MB) into {shards} shard(s) at {index} in {time.time() - started:.1f}s "
        f"({enc['workers']} encoder worker(s), {enc['docs_per_s']} docs/s)"
        + (f"; skipped {skipped} bad record(s)" if skipped else ""))


@app.command("search")
@user_errors
def search_cmd(
    query: Optional[str] = typer.Argument(None, help="Query text (or use --queries)."),
    index: Path = IndexOpt,
    k: int = typer.Option(10, "-k", "--k", min=1, max=10000),
    mode: str = typer.Option("exact", "--mode", help=f"Search mode: {', '.join(MODES)}."),
    param: list[str] = typer.Option([], "--param", "-p", help="Mode knob NAME=VALUE, repeatable (e.g. alpha=0.9)."),
    retriever: str = typer.Option(DEFAULT_RETRIEVER, "--retriever", "-r", help=f"Retriever: {RETRIEVER_HELP}."),
    fusion: Optional[str] = typer.Option(None, "--fusion", help="How combinations are fused: convex or rrf "
                                                                "(default: lsr.fusion's)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fusion weight of each retriever, e.g. "
                                                                  "sparse=1,dense=2,bm25=1 (default: equal), or "
                                                                  "pseudo / agreement: chosen on this collection "
                                                                  "without labels."),
    queries: Optional[Path] = typer.Option(None, "--queries", "-q", help="BEIR queries.jsonl or id<TAB>text TSV."),
    as_json: bool = typer.Option(False, "--json", help="JSON output (one line per query with --queries)."),
    run_out: Optional[Path] = typer.Option(None, "--run-out", help="Write a TREC run file."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    query_encoder: str = QueryEncoderOpt,
    query_runtime: Optional[str] = QueryRuntimeOpt,
    ray_address: Optional[str] = typer.Option(
        None, "--ray", help="Sharded index: Ray cluster address (auto, ray://host:10001); default: a local runtime."),
) -> None:
    """Search the index with one query or a file of queries."""
    from lsr.query_encoders import check_query_encoder

    if (query is None) == (queries is None):
        raise ValueError("give either a QUERY argument or --queries FILE")
    if query is not None and not query.strip():
        raise ValueError("empty query: give some text to search for")
    check_query_encoder(query_encoder)
    parse_retriever(retriever)
    _set_threads(threads, torch_too=query_encoder == "model")
    params = parse_params(param)
    options = dict(retriever=retriever, fusion=fusion, weights=parse_weights(weights), query_encoder=query_encoder,
                   query_runtime=query_runtime)
    engine = _open_engine(index, ray_address)
    if queries is not None:
        pairs = list(read_queries(queries, require_text=True))
        results = engine.search_batch([text for _, text in pairs], k=k, mode=mode, threads=threads, **options,
                                      **params)
        qids = [qid for qid, _ in pairs]
    else:
        qids, results = ["1"], [engine.search(query, k=k, mode=mode, **options, **params)]
    if run_out is not None:
        write_run(run_out, qids, results)
    for qid, hits in zip(qids, results):
        if as_json:
            typer.echo(json.dumps({"query_id": qid, "hits": [{"id": h.id, "score": round(h.score, 6)} for h in hits]},
                                  ensure_ascii=False) if queries is not None else
                       json.dumps({"query": query, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
        elif run_out is None or queries is None:
            _print_hits(qid if queries is not None else None, hits)


def _open_engine(index: Path, ray_address: Optional[str] = None) -> Engine:
    """The index at ``index``: a plain, live or sharded one (lsr.sharded, searched on Ray at ``ray_address``)."""
    from lsr.sharded.layout import is_sharded

    return Engine.open(index, address=ray_address) if is_sharded(index) else Engine.open(index)


def parse_params(pairs: list[str]) -> dict[str, float | int]:
    """``["alpha=0.9", "query_cut=10"]`` -> ``{"alpha": 0.9, "query_cut": 10}``."""
    params: dict[str, float | int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param expects NAME=VALUE, got {pair!r}")
        try:
            params[name] = int(value)
        except ValueError:
            try:
                params[name] = float(value)
            except ValueError:
                raise ValueError(f"--param {name}: {value!r} is not a number") from None
    return params


def parse_weights(spec: Optional[str]) -> dict[str, float] | str | None:
    """``"sparse=1,dense=2"`` -> ``{"sparse": 1.0, "dense": 2.0}``; a label-free method name as it is; None: the
    default weights."""
    if not spec or spec in LABEL_FREE_METHODS:
        return spec or None
    weights = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            name = ""
        if not name.strip():
            raise ValueError(f"--weights expects NAME=NUMBER,..., e.g. sparse=1,dense=2; got {item!r}")
    return weights


def _split_names(names: Optional[str]) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()] if names else []


def _structure_names(names: Optional[str]) -> list[str]:
    """The structures of ``--structures``: the default ones if not given, none for 'none'."""
    if names is None:
        return list(DEFAULT_STRUCTURES)
    return [] if names.strip().lower() == "none" else _split_names(names)


def write_run(path: Path, qids: list[str], results: list[list[Hit]], tag: str = "lsr") -> None:
    """Write a TREC run file: ``qid Q0 docid rank score tag``."""
    with open(path, "w", encoding="utf-8") as fh:
        for qid, hits in zip(qids, results):
            for rank, hit in enumerate(hits, 1):
                fh.write(f"{qid} Q0 {hit.id} {rank} {hit.score:.6f} {tag}\n")


def _print_hits(qid: Optional[str], hits: list[Hit]) -> None:
    if qid is not None:
        typer.secho(f"query {qid}", bold=True)
    if not hits:
        typer.echo("  (no matching documents)")
    for rank, hit in enumerate(hits, 1):
        typer.echo(f"{rank:>4}  {hit.score:8.3f}  {hit.id}  {hit.title[:80]}")


@app.command("info")
@user_errors
def info_cmd(index: Path = IndexOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show documents, terms, postings, size on disk, model and build time of an index."""
    info = _open_engine(index).info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    model = info["model"]
    docs = max(1, info["documents"])
    rows = [
        ("index", info["index"]), ("documents", info["documents"]), ("terms", info["terms"]),
        ("postings", info["postings"]), ("avg terms/doc", info["avg_terms_per_doc"]),
        ("size on disk", f"{info['size_bytes'] / 1e6:.1f} MB ({info['size_bytes'] / docs:,.0f} B/doc)"),
        ("quantization", f"{info['quantization']['bits']}-bit, scale {info['quantization']['scale']:.5g}"),
        ("model", f"{model['name']} (sha256 {model['sha256'][:12]}…, doc max {model['doc_max_length']} tokens)"),
        ("long documents", _windows_text(model)),
        ("built", f"{info['built_at']} in {info['build_seconds']:.1f}s"), ("corpus", info["corpus"]),
    ]
    if info.get("structure_bytes"):
        rows.append(("structures", ", ".join(f"{name} {size / 1e6:.1f} MB ({size / docs:,.0f} B/doc)"
                                             for name, size in info["structure_bytes"].items())))
    free = info.get("inference_free")
    rows.append(("inference-free", f"yes ({free['nonzero_terms']} weighted terms)" if free else
                 "no (add with --add-inference-free)"))
    bm25 = info.get("bm25")
    rows.append(("bm25", f"{bm25['analyzer']} analyzer, k1 {bm25['k1']}, b {bm25['b']}" if bm25 else
                 "no"))
    if info.get("dense"):
        dense = info["dense"]
        rows.append(("dense", f"{dense['model']['name']} ({dense['dim']}-d {dense['dtype']}, "
                              f"{'HNSW' if dense.get('hnsw') else 'exact'} search)"))
    if info.get("segments", 1) > 1 or info.get("deleted"):
        rows.append(("live", f"{info['segments']} segments, {info['deleted']} deleted documents, commit "
                             f"generation {info['generation']} (`lsr compact` merges them)"))
    if info.get("num_shards"):
        rows.append(("shards", f"{info['num_shards']} ({', '.join(str(s['documents']) for s in info['shards'])} "
                               f"documents; routed by {info['routing']['hash']} of the id)"))
    for key, value in rows:
        typer.echo(f"{key:>14}: {value}")


@app.command("verify")
@user_errors
def verify_cmd(index: Path = IndexOpt) -> None:
    """Check every checksum and the structural invariants of an index."""
    from lsr.sharded.layout import is_sharded, verify_sharded

    if is_sharded(index):
        problems = verify_sharded(index)
    else:
        from lsr.live import verify_live

        problems = verify_live(index)
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{index}: OK")


@app.command("encode")
@user_errors
def encode_cmd(
    corpus: Path = typer.Argument(..., help="Corpus to encode."),
    out: Path = typer.Argument(..., help="Output vectors JSONL ({\"id\", \"title\", \"vector\": {token: weight}})."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_length: int = typer.Option(256, "--max-length", min=8),
    with_text: bool = typer.Option(False, "--with-text", help="Also write the text as `contents` (needed to index it)."),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    shard: str = typer.Option("0/1", "--shard", help="I/N: encode only documents whose position mod N is I."),
    resume: bool = typer.Option(False, "--resume", help="Append to OUT, skipping the documents it already holds."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    doc_windows: str = DocWindowsOpt,
    window_stride: Optional[int] = WindowStrideOpt,
    window_pooling: str = WindowPoolingOpt,
    window_decay: float = WindowDecayOpt,
) -> None:
    """Encode a corpus into precomputed vectors (the Pyserini/Seismic JSONL format), streaming and resumable."""
    from itertools import islice

    from lsr.pipeline import encode_documents, progress_bar, text_windows
    from lsr.vectors import write_vector

    part, _, parts = shard.partition("/")
    if not (part.isdigit() and parts.isdigit() and int(part) < int(parts)):
        raise ValueError(f"--shard expects I/N with 0 <= I < N, got {shard!r}")
    part, parts = int(part), int(parts)
    _set_threads(threads)
    done = _complete_lines(out) if resume and out.exists() else 0
    settings = BuildSettings(model=model, batch_size=batch_size, doc_max_length=max_length, skip_bad=skip_bad,
                             window=1024, doc_windows=doc_windows, window_stride=window_stride,
                             window_pooling=window_pooling, window_decay=window_decay)
    encoder = settings.load_encoder()
    reader = settings.corpus_reader(corpus)
    total = reader.count()
    docs = islice((d for j, d in enumerate(reader) if j % parts == part), done, None)
    written = done
    with open(out, "a" if resume else "w", encoding="utf-8") as fh, \
            progress_bar("encoding", total // parts - done if total else None) as bar:
        for window in text_windows(docs, settings.window):
            batch = encode_documents(encoder, window.docs, settings.batch_size)
            for i, doc in enumerate(window.docs):
                write_vector(fh, doc.id, encoder.decode(*batch.row(i)), doc.text if with_text else None, doc.title)
            fh.flush()
            written += len(window.docs)
            bar.update(len(window.docs))
    typer.echo(f"{out}: {written} vectors ({written - done} new)")


def _complete_lines(path: Path) -> int:
    """Number of complete lines in a file; a partial last line (an interrupted write) is cut off."""
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        fh.truncate(end)
    return data[:end].count(b"\n")


@app.command("export-vectors")
@user_errors
def export_cmd(
    out: Path = typer.Argument(..., help="Output JSONL."),
    index: Path = IndexOpt,
    with_text: bool = typer.Option(False, "--with-text"),
) -> None:
    """Export an index's (dequantized) document vectors as JSONL."""
    count = Engine.open(index).export_vectors(out, with_text=with_text)
    typer.echo(f"wrote {count} vectors to {out}")


@app.command("demo")
@user_errors
def demo_cmd(
    index: Path = IndexOpt,
    sample_dir: Path = typer.Option(Path("lsr_sample"), "--sample-dir", help="Where to write the sample corpus."),
    serve_it: bool = typer.Option(False, "--serve", help="Then serve the index (web page and API) until Ctrl-C."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port of --serve (on 127.0.0.1)."),
) -> None:
    """Index the bundled sample corpus (Python's own documentation), run a few searches, then show how to serve it
    (or, with --serve, serve it on 127.0.0.1)."""
    from lsr.sample import SAMPLE_QUERIES, write_sample_corpus

    write_sample_corpus(sample_dir)
    typer.secho(f"sample corpus: {sample_dir}/corpus.jsonl", bold=True)
    started = time.time()
    from lsr.dense import dense_model_available

    engine = Engine.build(sample_dir, index, dense=dense_model_available())
    typer.echo(f"indexed {engine.index.num_docs} documents into {index} in {time.time() - started:.1f}s"
               + (" (with dense vectors for hybrid search)" if engine.dense is not None else "") + "\n")
    for text in SAMPLE_QUERIES[:4]:
        t0 = time.perf_counter()
        hits = engine.search(text, k=3)
        typer.secho(f"> {text}   ({(time.perf_counter() - t0) * 1000:.1f} ms)", bold=True)
        _print_hits(None, hits)
        typer.echo("")
    typer.echo(f"search it yourself:  lsr search \"how do I open a file\" --index {index}")
    if not serve_it:
        typer.echo(f"serve it (web page, HTTP API at /docs):  lsr serve --index {index}")
        return
    from lsr.server.app import serve

    del engine  # the server opens its own snapshot
    typer.echo(f"serving {index} on http://127.0.0.1:{port}/  (API docs: /docs; Ctrl-C stops)")
    serve(index, host="127.0.0.1", port=port, log_level="warning")


@app.command("serve")
@user_errors
def serve_cmd(
    index: Path = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Micro-batch size for query encoding (1: off)."),
    search_threads: Optional[int] = typer.Option(None, "--search-threads", min=1, help="Search thread pool size."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads of the query encoder thread."),
    shards: Optional[Path] = typer.Option(
        None, "--shards", help="Serve this sharded index (built with `lsr index --shards N`) through the Ray "
                               "coordinator; a sharded --index is detected too."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray", help="Sharded index: Ray cluster address (auto, ray://host:10001); default: a local runtime."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="LSR_API_KEY", show_envvar=True,
        help="Key that enables the write endpoints (POST/DELETE /documents); without one the server is read-only."),
    read_api_key: Optional[str] = typer.Option(
        None, "--read-api-key", envvar="LSR_READ_API_KEY", show_envvar=True,
        help="Also require a key for searches, documents and stats: this one or the write key."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.0, help="Per-request timeout of searches and document "
                                                                   "fetches in seconds (504; 0: none)."),
    max_body_bytes: int = typer.Option(10 * 1024 * 1024, "--max-body-bytes", min=1, help="Request body limit (413)."),
    max_query_chars: int = typer.Option(1000, "--max-query-chars", min=1, max=1000, help="Query length limit (400)."),
    max_batch_queries: int = typer.Option(256, "--max-batch-queries", min=1, max=256,
                                          help="Queries per POST /search/batch (422 above)."),
    max_documents: int = typer.Option(1000, "--max-documents", min=1, max=1000,
                                      help="Documents per POST /documents (422 above)."),
    query_runtime: Optional[str] = QueryRuntimeOpt,
    workers: int = typer.Option(1, "--workers", min=1,
                                help="Server processes on the port (each loads the models; the memory-mapped index "
                                     "is shared through the page cache)."),
    preload: bool = typer.Option(
        False, "--preload", help="Copy the forward index (what bmp and seismic read at random) into memory backed "
                                 "by huge pages: faster pruned search on large indexes, at its size in private "
                                 "memory per worker. Single and live indexes."),
) -> None:
    """Serve the index over HTTP: search page at /, JSON API (/search, /documents/ID, /stats), docs at /docs.

    Writes (POST /documents, DELETE /documents/ID) need --api-key (or LSR_API_KEY), sent by clients as
    `Authorization: Bearer KEY` or `X-API-Key: KEY`; without a key the server is read-only.
    """
    from lsr.sharded.layout import is_sharded, read_sharded_manifest

    index = shards if shards is not None else index
    if is_sharded(index):
        from lsr.sharded.ray_runtime import init_ray

        if workers > 1:
            raise ValueError("a sharded index is served by one process (--workers 1): its shard actors search in "
                             "parallel already")
        if preload:
            raise ValueError("--preload applies to single and live indexes, not to a sharded one")
        read_sharded_manifest(index)  # fail now on a broken directory
        init_ray(ray_address)  # the server's loader then starts one actor per shard in this runtime
    elif shards is not None:
        raise FileNotFoundError(f"no sharded index at {shards} (missing shards.json); build one with "
                                "`lsr index CORPUS --shards N`")
    elif not (index / "manifest.json").is_file():
        raise FileNotFoundError(f"no index at {index} (missing manifest.json); build one with `lsr index CORPUS`")
    from lsr.server.app import serve

    typer.echo(f"serving {index} on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    typer.echo("writes enabled with the API key" if api_key else
               "read-only: no API key (--api-key or LSR_API_KEY enables POST/DELETE /documents)")
    if read_api_key:
        typer.echo("reads need an API key too (--read-api-key)")
    serve(index, host=host, port=port, workers=workers, max_batch=max_batch, search_threads=search_threads,
          encode_threads=threads, log_level="warning", api_key=api_key or None, read_api_key=read_api_key or None,
          timeout_s=timeout or None, max_body_bytes=max_body_bytes, max_query_chars=max_query_chars,
          max_batch_queries=max_batch_queries, max_documents=max_documents, query_runtime=query_runtime,
          preload=preload)


def _set_threads(threads: Optional[int], torch_too: bool = True) -> None:
    """Numba (and torch, unless ``torch_too`` is false: inference-free queries never import it) threads."""
    if threads:
        import numba

        # numba first: its OpenMP layer resets the thread count torch's intra-op pool uses
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if torch_too:
            import torch

            torch.set_num_threads(threads)


@app.command("eval")
@user_errors
def eval_cmd(
    dataset: str = typer.Argument(..., help="BEIR dataset directory (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv) or a BEIR dataset name (downloaded once)."),
    split: str = typer.Option("test", "--split", help="Qrels split: qrels/<split>.tsv."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Sparse model (default: embedded splade-tiny)."),
    mode: str = typer.Option("exact", "--mode", help=f"Sparse search mode: {', '.join(MODES)}."),
    retriever: str = typer.Option("sparse", "--retriever", "-r", help="sparse, dense, auto (the engine's default: sparse+dense+bm25 fused with the default fusion), hybrid (every retriever of the default index), bm25 (the index's BM25 field), pyserini-bm25 (the reference baseline), a fusion such as sparse+dense+bm25, or any registered retriever."),
    fusion: Optional[str] = typer.Option(None, "--fusion", help="Hybrid fusion: convex or rrf (default: lsr.fusion's); --param fusion.alpha=0.5, fusion.normalization=minmax, fusion.rrf_k=60, fusion.depth=100."),
    k: int = typer.Option(100, "-k", "--k", min=1, max=10000, help="Results per query (metrics go to depth 100)."),
    run_out: Optional[Path] = typer.Option(None, "--run-out", help="Write the TREC run file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every metric, latency and size."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="LSR_CACHE", help="Index cache (default ~/.cache/lsr/eval)."),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Also save the JSON as <dataset>__<column>.json here (e.g. eval/results)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable: search-mode knobs (e.g. alpha=0.9), or prefixed: fusion.*, dense.model/dtype/hnsw_threshold, bm25.k1/b, index.doc_max_length (etc.), build.<structure>.*."),
    reorder: str = typer.Option("auto", "--reorder", help="Reorder documents before building a structure: auto (bp for BMP), none, or a method."),
    bm25: str = typer.Option("auto", "--bm25", help="pyserini-bm25 implementation: auto (Pyserini when it runs here, else bm25s), pyserini, bm25s."),
    adopt_index: Optional[Path] = typer.Option(None, "--adopt-index", help="Copy this prebuilt index of the dataset into the cache (model and documents are checked)."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", min=1, help="Only the first N judged queries (quick runs)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Encoding batch size when the index is built."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    query_encoder: str = QueryEncoderOpt,
    query_runtime: Optional[str] = QueryRuntimeOpt,
) -> None:
    """Evaluate a retriever on a BEIR dataset: nDCG@10, Recall@100, MRR@10, MAP@100, latency and index size."""
    from lsr.evaluation import parse_params, run_eval, save_result

    result = run_eval(
        dataset, retriever=retriever, mode=mode, split=split, model=model, fusion=fusion, k=k,
        params=parse_params(param or []), reorder=None if reorder == "none" else reorder, bm25=bm25,
        cache_dir=cache_dir, progress=progress, max_queries=max_queries, run_out=run_out, adopt=adopt_index,
        batch_size=batch_size, query_encoder=query_encoder, query_runtime=query_runtime,
    )
    saved = save_result(result, results_dir) if results_dir is not None else None
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    what = result["retriever"] + (f"/{result['mode']}" if result["mode"] else "") + (
        f" ({result['fusion']})" if result["fusion"] else "") + (
        f" [{result['query_encoder']} queries]" if result.get("query_encoder") else "")
    lat, tot = result["latency_ms"], result["latency_with_encoding_ms"]
    size = result["index_size_bytes"]
    typer.secho(f"{result['dataset']} [{result['split']}: {result['queries']} queries, {result['documents']} docs]  "
                f"{what}  {result['implementation']}" + (f"  {result['model']}" if isinstance(result["model"], str) else ""),
                bold=True)
    typer.echo("  ".join(f"{m}: {result[m]:.4f}" for m in ("ndcg@10", "recall@100", "mrr@10", "map@100")))
    typer.echo(f"latency (1 thread): search mean {lat['mean']:.2f} ms, p50 {lat['p50']:.2f}, p99 {lat['p99']:.2f}; "
               f"with query encoding mean {tot['mean']:.2f} ms, p50 {tot['p50']:.2f}, p99 {tot['p99']:.2f}")
    if size is not None:
        typer.echo(f"index size: {size / 1e6:.1f} MB")
    if result.get("nnz"):
        typer.echo(f"non-zero terms: {result['nnz']['doc']:.1f} per document, {result['nnz']['query']:.1f} per query")
    if run_out is not None:
        typer.echo(f"run written to {run_out}")
    if saved is not None:
        typer.echo(f"result saved to {saved}")


@app.command("compare")
@user_errors
def compare_cmd(
    run_a: Path = typer.Argument(..., help="TREC run file A (the baseline)."),
    run_b: Path = typer.Argument(..., help="TREC run file B."),
    qrels: str = typer.Option(..., "--qrels", help="Qrels TSV, or a BEIR dataset directory or name."),
    split: str = typer.Option("test", "--split", help="Split when --qrels is a dataset."),
    test: str = typer.Option("student", "--test", help="Paired test: student (t-test) or wilcoxon."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compare two runs per metric with a paired significance test (B against A)."""
    from lsr.evaluation import compare_runs, load_qrels_arg, read_run

    report = compare_runs(read_run(run_a), read_run(run_b), load_qrels_arg(qrels, split), test=test, alpha=alpha)
    report.update({"run_a": str(run_a), "run_b": str(run_b)})
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"A = {run_a}\nB = {run_b}\n{report['queries']} judged queries, paired {test} test, alpha {alpha}")
    typer.echo(f"{'metric':<12}{'A':>9}{'B':>9}{'B-A':>9}{'p':>10}     B wins/ties/losses")
    for m, r in report["metrics"].items():
        mark = "*" if r["significant"] else " "
        typer.echo(f"{m:<12}{r['a']:>9.4f}{r['b']:>9.4f}{r['delta']:>+9.4f}{r['p_value']:>10.4g} {mark}   "
                   f"{r['b_wins']}/{r['ties']}/{r['b_losses']}")
    typer.echo(f"* significant at alpha {alpha}")


@app.command("train")
@user_errors
def train_cmd(
    dataset: Optional[Path] = typer.Argument(None, help="BEIR dataset directory: qrels/<split>.tsv are the pairs (and "
                                                       "it resolves ids in --pairs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output checkpoint directory (`lsr index --model OUT`)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="JSONL or TSV of (query, positive document) pairs, as "
                                                               "texts or as ids of DATASET."),
    split: str = typer.Option("train", "--split", help="Qrels split of DATASET used for training."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Starting masked-LM checkpoint (default: "
                                                                     "embedded splade-tiny)."),
    epochs: int = typer.Option(1, "--epochs", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Pairs per step (in-batch negatives)."),
    lr: float = typer.Option(2e-5, "--lr"),
    lambda_q: float = typer.Option(1e-3, "--lambda-q", help="FLOPS regularisation weight of queries."),
    lambda_d: float = typer.Option(1e-3, "--lambda-d", help="Regularisation weight of documents."),
    reg_warmup: float = typer.Option(1 / 3, "--reg-warmup", help="Quadratic lambda warm-up, fraction of the steps."),
    doc_reg: str = typer.Option("flops", "--doc-reg", help="Document regulariser: flops, idf-flops or l0."),
    query_encoder: str = typer.Option("model", "--query-encoder", help="model, or inference-free: train the "
                                                                       "document-only variant (IDF queries)."),
    hard_negatives: str = typer.Option("bm25", "--hard-negatives", help="Mine negatives with bm25, sparse (the "
                                                                        "starting model's index) or none."),
    negatives: int = typer.Option(1, "--negatives", min=0, help="Hard negatives per pair."),
    negatives_depth: int = typer.Option(50, "--negatives-depth", min=1, help="Sample them from this many top hits."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher scores (query, doc, score) to distil."),
    distill: str = typer.Option("margin-mse", "--distill", help="Distillation loss: margin-mse or kl."),
    distill_weight: float = typer.Option(1.0, "--distill-weight"),
    max_length: int = typer.Option(256, "--max-length", min=8, help="Max document tokens."),
    query_max_length: int = typer.Option(64, "--query-max-length", min=4),
    seed: int = typer.Option(13, "--seed"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", min=1, help="Checkpoint every N steps (and at "
                                                                                "each epoch end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
    evaluate: Optional[bool] = typer.Option(None, "--eval/--no-eval", help="Evaluate before/after with `lsr eval` "
                                                                          "(default: when DATASET has --eval-split)."),
    eval_split: str = typer.Option("test", "--eval-split"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="LSR_CACHE", help="lsr eval's index cache."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune a masked-LM checkpoint as a SPLADE model on (query, positive) pairs (see lsr/training/)."""
    from lsr.training import TrainConfig, evaluate_before_after, train

    cfg = TrainConfig(
        model=model, epochs=epochs, batch_size=batch_size, lr=lr, lambda_q=lambda_q, lambda_d=lambda_d,
        reg_warmup_ratio=reg_warmup, doc_reg=doc_reg, query_encoder=query_encoder, hard_negatives=hard_negatives,
        negatives=negatives, negatives_depth=negatives_depth, teacher=str(teacher) if teacher else None,
        distill=distill, distill_weight=distill_weight, doc_max_length=max_length, query_max_length=query_max_length,
        seed=seed, max_steps=max_steps, split=split, checkpoint_every=checkpoint_every, threads=threads,
        device=device, progress=progress,
    ).check()
    _set_threads(threads)
    try:
        result = train(cfg, out, dataset=dataset, pairs=pairs, resume=resume, cache_dir=cache_dir)
    except KeyboardInterrupt:
        _fail("interrupted; continue from the last checkpoint with the same command and --resume")
    report = result.report
    data = report["data"]
    typer.echo(f"trained {report['steps']} steps on {data['pairs']} pairs ({data['queries']} queries) in "
               f"{report['train_seconds']:.0f}s ({report['device']}, {report['threads']} thread(s)); "
               f"negatives mined in {report['mine_seconds']:.0f}s; model saved to {out}")
    if report["losses"]:
        first, last = report["losses"][0], report["losses"][-1]
        typer.echo(f"loss {first['loss']:.4f} -> {last['loss']:.4f}; non-zero terms per doc "
                   f"{first['nnz_d']:.0f} -> {last['nnz_d']:.0f}, per query {first['nnz_q']:.0f} -> {last['nnz_q']:.0f}")
    if evaluate is None:
        evaluate = dataset is not None and (dataset / "qrels" / f"{eval_split}.tsv").is_file()
    if evaluate:
        if dataset is None:
            raise ValueError("--eval needs the DATASET directory")
        from lsr.training import REPORT, RUN_DIR

        ev = evaluate_before_after(model, out, dataset, eval_split, cache_dir=cache_dir, progress=progress)
        report["eval"] = ev
        (out / RUN_DIR / REPORT).write_text(json.dumps(report, indent=1), encoding="utf-8")
        typer.secho(f"{dataset.name} [{eval_split}]  before -> after", bold=True)
        for qe in ("model", "inference-free"):
            b, a = ev["results"][f"before/{qe}"], ev["results"][f"after/{qe}"]
            typer.echo(f"  {qe:>14} queries: nDCG@10 {b['ndcg@10']:.4f} -> {a['ndcg@10']:.4f} "
                       f"({a['ndcg@10'] - b['ndcg@10']:+.4f}), R@100 {b['recall@100']:.4f} -> {a['recall@100']:.4f}, "
                       f"nnz/doc {b['nnz']['doc']:.0f} -> {a['nnz']['doc']:.0f}, nnz/query {b['nnz']['query']:.1f} -> "
                       f"{a['nnz']['query']:.1f}, encoding {b['encoding_ms']['mean']:.2f} -> "
                       f"{a['encoding_ms']['mean']:.2f} ms")



@app.command("add")
@user_errors
def add_cmd(
    corpus: Path = typer.Argument(..., help="Documents to add: BEIR dir, JSONL(.gz), CSV/TSV or folder of .txt/.md."),
    index: Path = IndexOpt,
    update: bool = typer.Option(False, "--update", help="Replace live documents that have the same ids "
                                                        "(otherwise such ids are an error)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    id_field: Optional[str] = typer.Option(None, "--id-field"),
    text_field: Optional[str] = typer.Option(None, "--text-field"),
    title_field: Optional[str] = typer.Option(None, "--title-field"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Log and skip bad records instead of stopping."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Add documents to an index as a new segment (one atomic commit; searches see all of them or none)."""
    from lsr.live import add_documents

    settings = BuildSettings(batch_size=batch_size, id_field=id_field, text_field=text_field,
                             title_field=title_field, skip_bad=skip_bad)
    reader = settings.corpus_reader(corpus)
    started = time.time()
    report = add_documents(index, iter(reader), update=update, batch_size=settings.batch_size, progress=progress,
                           total=reader.count())
    if reader.skipped:
        typer.echo(f"skipped {reader.skipped} bad record(s)")
    if report["truncated"]:
        typer.echo(f"{report['truncated']} document(s) reached the model's length limit: only their start is indexed")
    typer.echo(f"added {report['added']} document(s), replaced {report['replaced']} as segment {report['segment']} "
               f"(generation {report['generation']}) in {time.time() - started:.1f}s")
    if report["merged_segments"]:
        typer.echo(f"merged the {report['merged_segments']} added segments into one")


@app.command("delete")
@user_errors
def delete_cmd(
    ids: List[str] = typer.Argument(..., help="External ids of the documents to delete."),
    index: Path = IndexOpt,
    missing_ok: bool = typer.Option(False, "--missing-ok", help="Ignore ids that are not in the index."),
) -> None:
    """Delete documents by id (tombstones, one atomic commit; `lsr compact` reclaims the space)."""
    from lsr.live import DocumentNotFoundError, delete_documents

    try:
        report = delete_documents(index, ids, missing_ok=missing_ok)
    except DocumentNotFoundError as err:
        _fail(f"{err}; nothing deleted (use --missing-ok to delete the others)")
    typer.echo(f"deleted {report['deleted']} document(s) (generation {report['generation']})"
               + (f"; not found: {', '.join(report['missing'])}" if report["missing"] else ""))


@app.command("compact")
@user_errors
def compact_cmd(index: Path = IndexOpt, progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Merge all segments into one and drop deleted documents; searches keep working meanwhile."""
    from lsr.live import compact

    started = time.time()
    report = compact(index, progress=progress)
    b, a = report["before"], report["after"]
    if not report["compacted"]:
        typer.echo(f"{index}: already one segment without deletions ({b['documents']} documents)")
        return
    typer.echo(f"compacted {b['segments']} segment(s), {b['deleted']} deleted -> 1 segment, {a['documents']} "
               f"documents in {time.time() - started:.1f}s")

if __name__ == "__main__":
    app(prog_name="lsr")
