"""Pruning structures stored beside the inverted index, and the search modes that use them.

A structure is a class with this contract (see ``index/bmp.py`` and ``index/seismic/structure.py``)::

    NAME: str                                   # key in manifest["structures"]
    MODES: tuple[str, ...]                      # search modes it serves
    @classmethod build(cls, index, **params) -> dict
        # write its arrays into index.index_dir with storage.write_array and return
        # {"params": {...}, "arrays": {array name: manifest entry}}
    @classmethod load(cls, index, info: dict) -> instance   # info = manifest["structures"][NAME]
    @classmethod rebuild_params(cls, params: dict, num_docs: int) -> dict
        # build arguments that rebuild it (recorded params, built over num_docs docs) for other documents
    search(qterms uint32, qweights int32, k, mode, **params) -> (doc ids uint32, int scores)
    search_batch(quantized: list[(qterms, qweights, qscale)], k, mode, threads, **params)
        -> list[(doc ids uint32, int scores)]

Query weights arrive quantized exactly as for exact search, so the scores of every mode are the same
integers as exact scoring for the documents they return. Exact search (``index/exact.py``) answers through
the same ``search``/``search_batch`` contract, and every mode runs its query kernel on the shared
scaffold of ``index/batch.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .storage import IndexFormatError, read_manifest, write_manifest

# structure name -> "module:Class"
STRUCTURES = {"bmp": "lsr.index.bmp:BmpIndex", "seismic": "lsr.index.seismic:SeismicIndex"}
# search mode -> structure it needs (None: the plain inverted index)
MODES = {"exact": None, "bmp": "bmp", "bmp-approx": "bmp", "seismic": "seismic"}


def structure_for_mode(mode: str) -> str | None:
    """The structure a search mode needs (None for exact); ValueError for an unknown mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(MODES)}")
    return MODES[mode]


def structure_class(name: str):
    """The class implementing a structure."""
    if name not in STRUCTURES:
        raise ValueError(f"unknown structure {name!r}; available: {', '.join(STRUCTURES)}")
    module, cls = STRUCTURES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_structure(index, name: str):
    """Load a structure of an open index; a clear error if the index does not hold it."""
    info = index.manifest.get("structures", {}).get(name)
    if info is None:
        raise IndexFormatError(
            f"index {index.index_dir} has no {name!r} structure; add it with `lsr index --add-structures {name}`"
        )
    return structure_class(name).load(index, info)


def add_structure(index, name: str, **params) -> dict:
    """Build a structure into an open index's directory and record it in the manifest (atomic rewrite).

    The open ``index`` object keeps its old manifest: reopen the index to search the new structure."""
    info = structure_class(name).build(index, **params)
    manifest = read_manifest(Path(index.index_dir))
    for stale in set(manifest.get("structures", {}).get(name, {}).get("arrays", [])) - set(info["arrays"]):
        manifest["arrays"].pop(stale, None)  # left over from an earlier build with other settings
        (Path(index.index_dir) / f"{stale}.npy").unlink(missing_ok=True)
    manifest["arrays"].update(info["arrays"])
    manifest.setdefault("structures", {})[name] = {"params": info["params"], "arrays": sorted(info["arrays"])}
    write_manifest(Path(index.index_dir), manifest)
    return manifest
