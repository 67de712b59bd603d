"""Sharded indexes without Ray: stable routing of document ids to shards and the on-disk layout.

A sharded index is a directory holding ``shards.json`` and ``shard-000/ … shard-<N-1>/``, each a normal index
directory (``Engine.open`` opens one alone). Documents are routed by a stable hash of their id (the first 8 bytes
of BLAKE2b over the UTF-8 id, little-endian, mod N — never Python's per-process salted ``hash()``), so the same id
always lands on the same shard: adds, deletes and look-ups by id go to exactly one shard, and duplicate ids meet
in one document store. Every shard records, per document, its *ordinal*: its position in the corpus (the order a
single index would number it). A document's global number is ``ordinal * N + shard``, so global numbers order
documents like a single index over the same corpus and name their shard (``docno % N``).

The Ray side (building with Ray workers, shard actors, the coordinator) is :mod:`lsr.sharded`; a sharded
index opens with ``Engine.open`` like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SHARDS_FILE = "shards.json"
SHARDED_FORMAT = "lsr-sharded-index"
SHARDED_FORMAT_VERSION = 1
ROUTING = {"hash": "blake2b-64", "key": "utf-8 document id", "rule": "int.from_bytes(digest, 'little') % num_shards"}
IMPACT_LEVELS = {8: 255, 16: 65535}  # quantization bits -> largest impact
ORDINALS_ARRAY = "shard_ordinals"  # per shard: build-time doc number -> ordinal (position in the corpus), int64


def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard of a document id: stable across processes, machines and Python versions."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    digest = hashlib.blake2b(str(doc_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def shard_dir_name(shard: int) -> str:
    return f"shard-{shard:03d}"


def is_sharded(index_dir: str | os.PathLike) -> bool:
    """True if ``index_dir`` is a sharded index (holds ``shards.json``)."""
    return (Path(index_dir) / SHARDS_FILE).is_file()


def read_sharded_manifest(index_dir: str | os.PathLike) -> dict:
    """Load and check ``shards.json``; FileNotFoundError / ValueError with the path when unusable."""
    path = Path(index_dir) / SHARDS_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no sharded index at {index_dir} (missing {SHARDS_FILE})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT:
        raise ValueError(f"{path}: not an {SHARDED_FORMAT!r} manifest")
    if manifest.get("format_version") != SHARDED_FORMAT_VERSION:
        raise ValueError(f"{path}: sharded format version {manifest.get('format_version')!r}, this code reads "
                         f"version {SHARDED_FORMAT_VERSION}")
    for shard in manifest["shards"]:
        if not (Path(index_dir) / shard["dir"] / "manifest.json").is_file():
            raise FileNotFoundError(f"{Path(index_dir) / shard['dir']}: shard index missing (no manifest.json)")
    return manifest


def index_size_bytes(index_dir: str | os.PathLike) -> int:
    """Bytes on disk of an index directory, shards and BM25 fields included."""
    return sum(f.stat().st_size for f in Path(index_dir).rglob("*") if f.is_file())


def verify_sharded(index_dir: str | os.PathLike) -> list[str]:
    """Problems of a sharded index: every shard's checksums and invariants, its BM25 field
    (:func:`lsr.bm25_field.verify_field`), and that the shards' fields share the avgdl and vocabulary
    ``shards.json`` records (or that none has one when it records none)."""
    from lsr.bm25_field import field_dir, has_field, verify_field
    from lsr.index import verify_index
    from lsr.index.storage import read_manifest

    root = Path(index_dir)
    manifest = read_sharded_manifest(root)
    entry, problems, vocabs = manifest.get("bm25"), [], set()
    for shard in manifest["shards"]:
        path = root / shard["dir"]
        problems += verify_index(path)
        shard_manifest = read_manifest(path)
        problems += verify_field(path, shard_manifest)
        if bool(entry) != has_field(shard_manifest):
            problems.append(f"{path}: {'no' if entry else 'a'} BM25 field, while {SHARDS_FILE} records "
                            f"{'one' if entry else 'none'}")
        elif entry and (path / entry["dir"] / "manifest.json").is_file():
            info = read_manifest(field_dir(path))["bm25"]
            if info["avgdl"] != entry["avgdl"]:
                problems.append(f"{path}: BM25 avgdl {info['avgdl']}, not the collection's {entry['avgdl']}")
            vocabs.add((info.get("vocab") or {}).get("sha256"))
    if len(vocabs) > 1:
        problems.append(f"{root}: the shards' BM25 fields have different vocabularies (term ids would not agree)")
    return problems


class ReadOnlyIndexError(ValueError):
    """An operation that changes an index in place, asked of a sharded index (which is rebuilt instead)."""


def read_only_error(index_dir: str | os.PathLike, what: str) -> ReadOnlyIndexError:
    """The error for any change asked of a sharded index: it is rebuilt, never changed in place."""
    return ReadOnlyIndexError(f"{index_dir} is a sharded index, which cannot {what}: it is rebuilt, not changed (`lsr "
                              "index CORPUS --shards N`, with --structures/--dense); open one shard directory with "
                              "Engine.open to work on that shard alone")
