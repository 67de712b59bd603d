"""TREC run files: written and read."""

from __future__ import annotations

import os
from pathlib import Path

from lsr.corpus import CorpusError
from lsr.evaluation.base import EvalError
from lsr.evaluation.metrics import Ranked


def write_run(path: str | os.PathLike, run: dict[str, Ranked], tag: str = "lsr") -> None:
    """TREC run file: ``qid Q0 docid rank score tag``."""
    with open(path, "w", encoding="utf-8") as fh:
        for qid, ranked in run.items():
            for rank, (doc, score) in enumerate(ranked, 1):
                fh.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def read_run(path: str | os.PathLike) -> dict[str, Ranked]:
    """A TREC run file, each query's documents ordered by score (then by the rank column)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no such run file")
    rows: dict[str, list[tuple[float, int, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise CorpusError(path, lineno, None, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            try:
                rank, score = int(parts[3]), float(parts[4])
            except ValueError:
                raise CorpusError(path, lineno, None, "rank must be an integer and score a number") from None
            rows.setdefault(parts[0], []).append((-score, rank, parts[2]))
    if not rows:
        raise EvalError(f"{path}: empty run file")
    return {q: [(d, -s) for s, _, d in sorted(r)] for q, r in rows.items()}
