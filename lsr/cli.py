"""The ``lsr`` command line: index, search, info, encode, export-vectors, verify, demo."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Optional

import typer

from lsr.corpus import CorpusError, read_queries
from lsr.engine import DEFAULT_INDEX_DIR, MODES, Engine, Hit, ModelMismatchError
from lsr.models import ModelNotFoundError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learned sparse retrieval: index, search, serve, evaluate.")

IndexOpt = typer.Option(DEFAULT_INDEX_DIR, "--index", "-i", help="Index directory.")
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
        except RuntimeError as err:  # IndexFormatError and other clear failures
            if type(err).__name__ == "IndexFormatError":
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
    quant_bits: int = typer.Option(8, "--quant-bits", help="Impact quantization: 8 or 16 bits."),
    id_field: Optional[str] = typer.Option(None, "--id-field"),
    text_field: Optional[str] = typer.Option(None, "--text-field"),
    title_field: Optional[str] = typer.Option(None, "--title-field"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Log and skip bad records instead of stopping."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads for encoding."),
    structures: Optional[str] = typer.Option(None, "--structures", help="Pruning structures to build too: bmp,seismic."),
    add_structures: Optional[str] = typer.Option(
        None, "--add-structures", help="Add structures (bmp,seismic) to the existing index at --index; no CORPUS."),
    reorder: Optional[str] = typer.Option(None, "--reorder", help="Reorder documents for BMP blocks: bp or cluster."),
) -> None:
    """Index a corpus into an on-disk index (atomically replaces any previous index at --index)."""
    if quant_bits not in (8, 16):
        raise ValueError("--quant-bits must be 8 or 16")
    _set_threads(threads)
    started = time.time()
    if add_structures is not None:
        if corpus is not None:
            raise ValueError("--add-structures works on the existing index at --index: give no CORPUS")
        names = _split_names(add_structures)
        Engine.open(index).add_structures(names, reorder=reorder)
        typer.echo(f"added {', '.join(names)} to {index} in {time.time() - started:.1f}s")
        return
    if corpus is None:
        raise ValueError("give a CORPUS to index (or --add-structures for an existing index)")
    engine = Engine.build(
        corpus, index, model=model, batch_size=batch_size, doc_max_length=max_length,
        query_max_length=query_max_length, doc_top_k=doc_top_k, quant_bits=quant_bits, id_field=id_field,
        text_field=text_field, title_field=title_field, skip_bad=skip_bad,
        structures=_split_names(structures), reorder=reorder,
    )
    info = engine.info()
    skipped = engine.manifest.get("skipped_records", 0)
    typer.echo(
        f"indexed {info['documents']} documents ({info['postings']} postings, {info['size_bytes'] / 1e6:.1f} MB) "
        f"into {index} in {time.time() - started:.1f}s" + (f"; skipped {skipped} bad record(s)" if skipped else "")
    )


@app.command("search")
@user_errors
def search_cmd(
    query: Optional[str] = typer.Argument(None, help="Query text (or use --queries)."),
    index: Path = IndexOpt,
    k: int = typer.Option(10, "-k", "--k", min=1, max=10000),
    mode: str = typer.Option("exact", "--mode", help=f"Search mode: {', '.join(MODES)}."),
    param: list[str] = typer.Option([], "--param", "-p", help="Mode knob NAME=VALUE, repeatable (e.g. alpha=0.9)."),
    queries: Optional[Path] = typer.Option(None, "--queries", "-q", help="BEIR queries.jsonl or id<TAB>text TSV."),
    as_json: bool = typer.Option(False, "--json", help="JSON output (one line per query with --queries)."),
    run_out: Optional[Path] = typer.Option(None, "--run-out", help="Write a TREC run file."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
) -> None:
    """Search the index with one query or a file of queries."""
    if (query is None) == (queries is None):
        raise ValueError("give either a QUERY argument or --queries FILE")
    _set_threads(threads)
    params = parse_params(param)
    engine = Engine.open(index)
    if queries is not None:
        pairs = list(read_queries(queries))
        results = engine.search_batch([text for _, text in pairs], k=k, mode=mode, threads=threads, **params)
        qids = [qid for qid, _ in pairs]
    else:
        qids, results = ["1"], [engine.search(query, k=k, mode=mode, **params)]
    if run_out is not None:
        write_run(run_out, qids, results)
    for qid, hits in zip(qids, results):
        if as_json:
            typer.echo(json.dumps({"query_id": qid, "hits": [{"id": h.id, "score": round(h.score, 6)} for h in hits]},
                                  ensure_ascii=False) if queries is not None else
                       json.dumps({"query": query, "hits": [h.to_dict() for h in hits]}, ensure_ascii=False))
        elif run_out is None or queries is None:
            _print_hits(qid if queries is not None else None, hits)


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


def _split_names(names: Optional[str]) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()] if names else []


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
    info = Engine.open(index).info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    model = info["model"]
    rows = [
        ("index", info["index"]), ("documents", info["documents"]), ("terms", info["terms"]),
        ("postings", info["postings"]), ("avg terms/doc", info["avg_terms_per_doc"]),
        ("size on disk", f"{info['size_bytes'] / 1e6:.1f} MB"),
        ("quantization", f"{info['quantization']['bits']}-bit, scale {info['quantization']['scale']:.5g}"),
        ("model", f"{model['name']} (sha256 {model['sha256'][:12]}…, doc max {model['doc_max_length']} tokens)"),
        ("built", f"{info['built_at']} in {info['build_seconds']:.1f}s"), ("corpus", info["corpus"]),
    ]
    for key, value in rows:
        typer.echo(f"{key:>14}: {value}")


@app.command("verify")
@user_errors
def verify_cmd(index: Path = IndexOpt) -> None:
    """Check every checksum and the structural invariants of an index."""
    from index import verify_index

    problems = verify_index(index)
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{index}: OK")


@app.command("encode")
@user_errors
def encode_cmd(
    corpus: Path = typer.Argument(..., help="Corpus to encode."),
    out: Path = typer.Argument(..., help="Output vectors JSONL ({\"id\", \"vector\": {token: weight}})."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_length: int = typer.Option(256, "--max-length", min=8),
    with_text: bool = typer.Option(False, "--with-text", help="Also write the text as `contents`."),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
) -> None:
    """Encode a corpus into precomputed vectors (the Pyserini/Seismic JSONL format)."""
    from lsr.corpus import CorpusReader
    from lsr.encoder import SpladeEncoder
    from lsr.engine import document_text
    from lsr.vectors import write_vector

    encoder = SpladeEncoder(model, doc_max_length=max_length)
    reader = CorpusReader(corpus, skip_bad=skip_bad)
    docs = list(reader)
    batch = encoder.encode_documents([document_text(d) for d in docs], batch_size, progress=True)
    with open(out, "w", encoding="utf-8") as fh:
        for i, doc in enumerate(docs):
            write_vector(fh, doc.id, encoder.decode(*batch.row(i)), doc.text if with_text else None)
    typer.echo(f"wrote {len(docs)} vectors to {out}")


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
) -> None:
    """Index the bundled sample corpus (Python's own documentation), run a few searches, show how to serve."""
    from lsr.sample import SAMPLE_QUERIES, write_sample_corpus

    write_sample_corpus(sample_dir)
    typer.secho(f"sample corpus: {sample_dir}/corpus.jsonl", bold=True)
    started = time.time()
    engine = Engine.build(sample_dir, index)
    typer.echo(f"indexed {engine.index.num_docs} documents into {index} in {time.time() - started:.1f}s\n")
    for text in SAMPLE_QUERIES[:4]:
        t0 = time.perf_counter()
        hits = engine.search(text, k=3)
        typer.secho(f"> {text}   ({(time.perf_counter() - t0) * 1000:.1f} ms)", bold=True)
        _print_hits(None, hits)
        typer.echo("")
    typer.echo(f"search it yourself:  lsr search \"how do I open a file\" --index {index}")


def _set_threads(threads: Optional[int]) -> None:
    if threads:
        import numba
        import torch

        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


if __name__ == "__main__":
    app(prog_name="lsr")
