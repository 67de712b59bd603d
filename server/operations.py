"""What the endpoints do, through the Engine's public methods only: search (queries micro-batched into the
encoders, ranked and rendered on the search pool), batch search, document fetch, add and delete.

Searches and document fetches run as cancellable jobs (:mod:`lsr.server.workers`): when a request times out its
job stops at its next check and its search thread is replaced at once. Writes run on the writer thread, one at a
time, never cancelled: a write that was started is finished (and answered), never abandoned half-way."""

from __future__ import annotations

import asyncio
import time
from typing import Optional

import numpy as np

from lsr.corpus import Document
from lsr.engine import Engine, IndexFormatError
from lsr.fusion import FusionConfig
from lsr.server.errors import UserError
from lsr.server.rendering import needs_sparse_vector, render_hits, search_response
from lsr.server.schemas import (AddDocumentsRequest, BatchSearchRequest, DocumentResponse, SearchOptions,
                                SearchResponse, BatchSearchResponse)
from lsr.server.state import ServerState
from lsr.server.workers import Cancellation

INFERENCE_FREE = "inference-free"


# ---------------------------------------------------------------------- searching
async def search(state: ServerState, q: Optional[str], opts: SearchOptions) -> SearchResponse:
    """One query: encode (micro-batched with concurrent requests), rank and render on the search pool."""
    started = time.perf_counter()
    q = state.limits.check_query(q)
    engine = state.engine  # one snapshot for the whole request, even if a newer commit is swapped in meanwhile
    names = _check_options(engine, opts)
    need_sparse, need_dense = needs_sparse_vector(opts, names), "dense" in names
    free = opts.query_encoder == INFERENCE_FREE  # tokenizer + table lookup: microseconds, no batching
    sparse_vec, dense_vec = await asyncio.gather(
        state.sparse_batcher.submit(q) if need_sparse and not free else _none(),
        state.dense_batcher.submit(q) if need_dense else _none(),
    )
    if need_sparse and free:
        sparse_vec = engine.query_vectors([q], INFERENCE_FREE)[0]
    hits = await state.search_pool.run(_rank_and_render, state, engine, [q], opts, names,
                                       None if sparse_vec is None else [sparse_vec],
                                       None if dense_vec is None else np.asarray(dense_vec)[None, :])
    took = time.perf_counter() - started
    state.record(took)
    return search_response(q, opts, names, hits[0], took)


async def search_batch(state: ServerState, body: BatchSearchRequest) -> BatchSearchResponse:
    """Many queries with shared options: encoded together, searched together."""
    started = time.perf_counter()
    state.limits.check_batch(len(body.queries))
    queries = [state.limits.check_query(q) for q in body.queries]
    engine = state.engine
    names = _check_options(engine, body)
    need_sparse, need_dense = needs_sparse_vector(body, names), "dense" in names
    if need_sparse and body.query_encoder == INFERENCE_FREE:
        sparse_vecs = engine.query_vectors(queries, INFERENCE_FREE)
    else:
        sparse_vecs = await state.encode_pool.run(state.encode_sparse_chunked, queries) if need_sparse else None
    dense_vecs = await state.encode_pool.run(state.encode_dense_chunked, queries) if need_dense else None
    results = await state.search_pool.run(_rank_and_render, state, engine, queries, body, names, sparse_vecs,
                                          dense_vecs)
    took = time.perf_counter() - started
    state.record(took, len(queries))
    return BatchSearchResponse(took_ms=round(took * 1000, 3), results=[
        search_response(q, body, names, hits, took) for q, hits in zip(queries, results)])


def _check_options(engine: Engine, opts: SearchOptions) -> tuple[str, ...]:
    """The retrievers ``opts.retriever`` means on this index (422 when the index lacks one, or for bad weights)."""
    try:
        names = engine.resolve_retriever(opts.retriever)
        if len(names) > 1:
            FusionConfig.make(opts.fusion, alpha=opts.alpha, weights=opts.weights).weights_for(names)
    except ValueError as err:
        raise UserError(422, str(err)) from None
    if opts.query_encoder not in engine.query_encoder_names():
        raise UserError(422, f"query_encoder {opts.query_encoder!r} needs the index's query table, and this index has "
                             f"none (add it with `lsr index --add-inference-free --index {engine.index_dir}`)")
    return names


def _rank_and_render(cancellation: Cancellation, state: ServerState, engine: Engine, queries: list[str],
                     opts: SearchOptions, names: tuple[str, ...], sparse_vecs, dense_vecs) -> list[list[dict]]:
    """Runs on a search thread: rank with the engine, then render the hits (stops once abandoned)."""
    state.reached("search")
    cancellation.check()
    try:
        ranked = engine.search_encoded(
            queries, opts.k, sparse_vectors=sparse_vecs, dense_vectors=dense_vecs, mode=opts.mode,
            retriever="+".join(names), fusion=opts.fusion, alpha=opts.alpha, normalization=opts.normalization,
            depth=opts.depth, rrf_k=opts.rrf_k, weights=opts.weights, filter=opts.filter, params=opts.params, threads=1)
    except (ValueError, TypeError, IndexFormatError) as err:  # bad mode knobs, mode without its structure
        raise UserError(422, str(err)) from err
    return [render_hits(engine, q, hits, opts, None if sparse_vecs is None else sparse_vecs[i], cancellation)
            for i, (q, hits) in enumerate(zip(queries, ranked))]


async def _none():
    return None


# ---------------------------------------------------------------------- documents
async def fetch_document(state: ServerState, doc_id: str, terms: int) -> DocumentResponse:
    """A stored document by id (404 if unknown), with its ``terms`` heaviest indexed terms if asked."""
    return await state.search_pool.run(_fetch, state, state.engine, doc_id, terms)


def _fetch(cancellation: Cancellation, state: ServerState, engine: Engine, doc_id: str, terms: int
           ) -> DocumentResponse:
    state.reached("document")
    cancellation.check()
    try:
        doc = engine.document(doc_id)
    except KeyError:
        raise UserError(404, f"no document with id {doc_id!r}") from None
    cancellation.check()
    vector = engine.document_vector(doc_id, top=terms) if terms else None
    return DocumentResponse(id=doc.id, title=doc.title, text=doc.text, metadata=doc.metadata, terms=vector)


# ---------------------------------------------------------------------- writes
async def add_documents(state: ServerState, body: AddDocumentsRequest) -> dict:
    """Append the documents as a new segment (one commit), then serve that commit."""
    state.limits.check_documents(len(body.documents))
    dupes = body.duplicate_ids()
    if dupes:
        raise UserError(409, f"duplicate id(s) in the request: {', '.join(map(repr, dupes[:10]))}"
                             f"{' …' if len(dupes) > 10 else ''}")
    # source:line name the document in a library error ("documents:3: field 'id': ..." = the third one)
    docs = [Document(id=d.id, text=d.text, title=d.title, metadata=d.metadata, source="documents", line=i)
            for i, d in enumerate(body.documents, 1)]
    return await _write(state, _add_sync, state, docs, body.update)


async def delete_document(state: ServerState, doc_id: str) -> dict:
    return await _write(state, _delete_sync, state, doc_id)


async def _write(state: ServerState, fn, *args) -> dict:
    if not state.engine.writable:
        raise UserError(409, "this server serves a sharded index, which it cannot write to; add documents "
                             "to a single index")
    return await asyncio.get_running_loop().run_in_executor(state.write_pool, fn, *args)


def _add_sync(state: ServerState, docs: list[Document], update: bool) -> dict:
    with state.serialized_writes():
        state.reached("write")
        try:
            result = state.engine.add_documents(docs, update=update)
        except Engine.WriterLockedError as err:
            raise UserError(423, f"the index is locked by another writer: {err}") from None
        except Engine.DuplicateDocumentError as err:
            raise UserError(409, f"{err} (send \"update\": true to replace them)") from None
        except ValueError as err:  # a document the library refuses
            raise UserError(422, str(err)) from None
        return _committed(state, result)


def _delete_sync(state: ServerState, doc_id: str) -> dict:
    with state.serialized_writes():
        state.reached("write")
        try:
            result = state.engine.delete_documents([doc_id])
        except Engine.WriterLockedError as err:
            raise UserError(423, f"the index is locked by another writer: {err}") from None
        except Engine.DocumentNotFoundError:
            raise UserError(404, f"no document with id {doc_id!r}") from None
        return _committed(state, result)


def _committed(state: ServerState, result: dict) -> dict:
    """After a write's commit: count it and serve the new commit before answering (searchable on return)."""
    state.writes += 1
    state.reload()
    return result
