"""Result records on disk: their column name, the machine they ran on, and the JSON file they are saved as."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from lsr.evaluation.base import slug


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
