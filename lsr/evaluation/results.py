"""Result records on disk: their column name, the machine they ran on, the JSON file they are saved as, and paths
written so that they mean the same on any machine."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from lsr.evaluation.base import default_cache_dir, slug

DATA_ENV = "LSR_DATA"  # where datasets live: results name them $LSR_DATA/...


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as result files record it: below the working directory, relative to it; below ``$LSR_DATA``,
    the index cache (``$LSR_CACHE``, default ``~/.cache/lsr/eval``), the temporary directory (``$TMPDIR``) or the
    home directory (``~``), with that root as a symbol (the deepest root wins); elsewhere, relative to the working
    directory."""
    path = Path(path).expanduser().resolve()
    roots = [(Path.cwd(), ""), (default_cache_dir(), "$LSR_CACHE"), (Path(tempfile.gettempdir()), "$TMPDIR"),
             (Path.home(), "~")]
    if os.environ.get(DATA_ENV):
        roots.append((Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"))
    below = [(root.resolve(), symbol) for root, symbol in roots if path.is_relative_to(root.resolve())]
    if not below:
        return os.path.relpath(path)
    root, symbol = max(below, key=lambda rs: len(rs[0].parts))
    rel = path.relative_to(root).as_posix()
    if not symbol:
        return rel
    return symbol if rel == "." else f"{symbol}/{rel}"


def portable_argv(argv: list[str]) -> str:
    """A command line for a result file: its absolute-path arguments written with :func:`portable_path`."""
    return " ".join(portable_path(a) if os.path.isabs(a) else a for a in argv)


def portable_model(name: str) -> str:
    """A model as result files record it: a local checkpoint directory as a portable path, else its name."""
    return portable_path(name) if Path(name).expanduser().is_dir() else name


def result_key(result: dict) -> str:
    """Column name of a result: ``bm25`` (the Pyserini/bm25s baseline, ``pyserini-bm25``, which records written
    before the native field called ``bm25``), ``bm25-native`` (+ ``-<mode>``), ``sparse-<mode>``, ``dense``,
    ``hybrid-<fusion>`` or a combination such as ``sparse+dense+bm25-<fusion>`` (+ ``-<label-free weights>``,
    + ``-<mode>``; ``auto`` takes the column of the combination it resolved to); ``-inference-free`` is appended
    when the sparse side used inference-free queries."""
    name = result["retriever"]
    free = "-inference-free" if result.get("query_encoder") == "inference-free" else ""
    if name == "bm25" and result.get("implementation") == "lsr-bm25":
        return "bm25-native" + (f"-{result['mode']}" if result.get("mode") not in (None, "exact") else "")
    if name in ("bm25", "pyserini-bm25"):
        return "bm25"
    if name == "sparse":
        return f"sparse-{result['mode']}{free}"
    if name == "auto" and result.get("retrievers"):  # the default: the column of the combination it resolved to
        name = "+".join(result["retrievers"])
    if name == "hybrid" or "+" in name:
        return (f"{name}-{result['fusion']}" + (f"-{result['label_free_weights']}" if result.get("label_free_weights")
                                               else "")
                + (f"-{result['mode']}" if result.get("mode") not in (None, "exact") else "") + free)
    return name


def machine() -> dict:
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
    path = out / f"{slug(result['dataset'])}__{result_key(result)}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path
