"""The retriever registry and what a retriever needs: its context, its result, one-thread timed queries."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lsr.evaluation.base import EvalError, digest, slug
from lsr.evaluation.datasets import Dataset

DEFAULT_K = 100
PLUGIN_MODULES: tuple[str, ...] = ()


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
        return self.cache_dir / kind / f"{slug(self.dataset.name)}-{digest([self.dataset.fingerprint, key])}"


Retriever = Callable[[EvalContext], Retrieval]
RETRIEVERS: dict[str, Retriever] = {}
_combinations: list[Callable[..., Retrieval]] = []  # the one function that runs a combination such as sparse+bm25
_plugin_errors: dict[str, str] = {}


def register_retriever(name: str) -> Callable[[Retriever], Retriever]:
    """Decorator: make ``fn(ctx) -> Retrieval`` available as ``lsr eval --retriever NAME``."""

    def deco(fn: Retriever) -> Retriever:
        RETRIEVERS[name] = fn
        return fn

    return deco


def register_combination(fn: Callable[..., Retrieval]) -> Callable[..., Retrieval]:
    """Register the function ``fn(ctx, spec)`` that runs a combination of retrievers (``sparse+dense+bm25``)."""
    _combinations.append(fn)
    return fn


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
    if "+" in name:  # a combination: fused by the engine (registered by lsr.evaluation.retrievers)
        from lsr.searcher import parse_retriever

        try:
            parse_retriever(name)
        except ValueError as err:
            raise EvalError(str(err)) from err
        return functools.partial(_combinations[-1], spec=name)
    if name not in RETRIEVERS:
        load_plugins()
    if name not in RETRIEVERS:
        problems = "; ".join(f"{m}: {e}" for m, e in _plugin_errors.items())
        raise EvalError(f"retriever {name!r} is not available (available: {', '.join(sorted(RETRIEVERS))}); "
                        f"a module registers one with lsr.evaluation.register_retriever"
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
