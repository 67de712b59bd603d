"""What every evaluation module shares: the error type, the cache directory, cache-key digests and slugs."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any


class EvalError(ValueError):
    """Bad evaluation input (dataset, run, option): a one-line message naming the file."""


def default_cache_dir() -> Path:
    """``$LSR_CACHE`` or ``~/.cache/lsr/eval``."""
    return Path(os.environ.get("LSR_CACHE") or Path.home() / ".cache" / "lsr" / "eval").expanduser()


def digest(obj: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the sha256 of ``obj`` as canonical JSON (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def slug(text: str) -> str:
    """``text`` reduced to a short file-name-safe string (at most its last 60 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "x"
