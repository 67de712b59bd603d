"""Bundled sample corpus built from documentation that ships with Python (no downloads)."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

from pydoc_data.topics import topics as _HELP_TOPICS

MIN_PASSAGE = 600
MAX_PASSAGE = 1500

# Well-known pure-Python stdlib modules; those without a substantial docstring are skipped.
STDLIB_MODULES = sorted([
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "doctest", "email", "enum", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "getpass", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html",
    "http", "http.server", "inspect", "ipaddress", "json", "locale", "logging", "mimetypes",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "platform", "plistlib", "pprint",
    "pydoc", "queue", "random", "re", "sched", "secrets", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "typing",
    "unittest", "urllib.parse", "uuid", "warnings", "wave", "weakref", "zipfile",
])
MIN_MODULE_DOC = 200

SAMPLE_QUERIES: list[str] = [
    "how do I catch an exception",
    "what does the with statement do",
    "how to format a string with padding",
    "how to parse command line arguments",
    "how do I define a class with methods",
    "what is the difference between is and ==",
    "how does a generator yield values",
    "how to serialize data to json",
    "how to run a shell command from python",
    "what is a lambda expression",
]


def _units(text: str) -> Iterator[tuple[str, str]]:
    """(separator, piece) units: paragraphs, or lines/word runs of paragraphs longer than MAX_PASSAGE."""
    for para in re.split(r"\n\s*\n", text.strip()):
        para = para.strip("\n")
        if not para.strip():
            continue
        if len(para) <= MAX_PASSAGE:
            yield "\n\n", para
            continue
        sep = "\n\n"
        for line in para.splitlines():
            while len(line) > MAX_PASSAGE:
                cut = line.rfind(" ", 0, MAX_PASSAGE) if " " in line[:MAX_PASSAGE] else MAX_PASSAGE
                yield sep, line[:cut]
                line, sep = line[cut:].lstrip(), " "
            yield sep, line
            sep = "\n"


def split_passages(text: str) -> list[str]:
    """Split prose into passages of roughly MIN_PASSAGE..MAX_PASSAGE characters, preferring blank lines."""
    passages: list[str] = []
    current = ""
    for sep, unit in _units(text):
        too_long = len(current) + len(sep) + len(unit) > MAX_PASSAGE
        if current and (too_long or (sep == "\n\n" and len(current) >= MIN_PASSAGE)):
            passages.append(current.strip())
            current = ""
        current = f"{current}{sep}{unit}" if current else unit
    if current.strip():
        if passages and len(current) < MIN_PASSAGE // 2 and len(passages[-1]) + len(current) + 2 <= MAX_PASSAGE:
            passages[-1] = f"{passages[-1]}\n\n{current.strip()}"
        else:
            passages.append(current.strip())
    return passages


def _module_docstring(name: str) -> str | None:
    """The docstring of a pure-Python stdlib module, read from its leading tokens without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    skip = {tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE}
    try:
        with open(spec.origin, "rb") as f:
            first = next(t for t in tokenize.tokenize(f.readline) if t.type not in skip)
        if first.type != tokenize.STRING:
            return None
        value = ast.literal_eval(first.string)
    except (OSError, SyntaxError, ValueError, StopIteration, tokenize.TokenError):
        return None
    return inspect.cleandoc(value) if isinstance(value, str) else None


def sample_documents() -> Iterator[dict]:
    """BEIR-style records (`_id`, `title`, `text`, `metadata`) for the sample corpus."""
    for name in sorted(_HELP_TOPICS):
        body = _HELP_TOPICS[name]
        heading = body.strip().splitlines()[0].strip()
        for i, passage in enumerate(split_passages(body), 1):
            yield {"_id": f"{name}#{i}", "title": f"{heading} (part {i})", "text": passage,
                   "metadata": {"source": "python-reference", "topic": name}}
    for module in STDLIB_MODULES:
        doc = _module_docstring(module)
        if not doc or len(doc) < MIN_MODULE_DOC:
            continue
        for i, passage in enumerate(split_passages(doc), 1):
            yield {"_id": f"module:{module}#{i}", "title": f"{module} module (part {i})", "text": passage,
                   "metadata": {"source": "stdlib-docstring", "module": module}}


def write_sample_corpus(out_dir: Path) -> Path:
    """Write a BEIR-layout sample corpus (corpus.jsonl + queries.jsonl) built from Python's bundled documentation; return out_dir. Deterministic."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for record in sample_documents():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(out_dir / "queries.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for i, query in enumerate(SAMPLE_QUERIES, 1):
            f.write(json.dumps({"_id": f"q{i}", "text": query}) + "\n")
    return out_dir
