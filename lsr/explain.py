"""Why a document matched: per-term contributions of a sparse score, and query-biased snippets with highlights.

A SPLADE score is ``sum over vocabulary terms of query_weight * document_weight``; :func:`explain` lists the
terms behind a hit, heaviest contribution first, and marks *expansion* terms: terms the model added that are
not among the query's own tokens. :func:`snippet` picks the passage of a document with the most (weighted)
matched terms and returns the character spans to highlight.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from lsr.searcher import Searcher

_WORD = re.compile(r"\w+", re.UNICODE)
MIN_PREFIX = 4  # a term this long also matches words it begins (e.g. "compress" in "compression")


@dataclass
class TermContribution:
    """One vocabulary term's share of a sparse score."""

    term: str
    query_weight: float
    doc_weight: float
    contribution: float
    expansion: bool  # not one of the query's own tokens

    def to_dict(self) -> dict:
        return asdict(self)


def query_token_ids(engine: "Searcher", text: str) -> set[int]:
    """The query's own (non-special) token ids under the sparse model's tokenizer."""
    return set(engine.encoder.tokenizer(text, add_special_tokens=False)["input_ids"])


def explain(engine: "Searcher", query_vector: tuple[np.ndarray, np.ndarray], docno: int, *,
            own_tokens: set[int] | None = None, top: int | None = 10) -> list[TermContribution]:
    """Terms shared by a query vector and a document's stored vector, by contribution (heaviest first).

    ``own_tokens`` are the query's own token ids (see :func:`query_token_ids`); terms outside it are marked as
    expansion terms. Without it (a precomputed query vector) no term is marked.
    """
    qterms, qweights = (np.asarray(a) for a in query_vector)
    dterms, dweights = engine.index.doc_vector(int(docno))
    common, qi, di = np.intersect1d(qterms.astype(np.int64), dterms.astype(np.int64), assume_unique=True,
                                    return_indices=True)  # a vector holds each term once
    contrib = qweights[qi].astype(np.float64) * dweights[di].astype(np.float64)
    order = np.lexsort((common, -contrib))[:top]
    return [
        TermContribution(engine.encoder.token(int(common[j])), float(qweights[qi[j]]), float(dweights[di[j]]),
                         float(contrib[j]), own_tokens is not None and int(common[j]) not in own_tokens)
        for j in order
    ]


def _fold(text: str) -> str:
    """Lower-case and strip accents (as BERT's uncased tokenizer does)."""
    text = text.lower()
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def snippet(text: str, terms: Mapping[str, float], width: int = 40,
            expansion: set[str] | None = None) -> tuple[str, list[dict]]:
    """The ``width``-word window of ``text`` with the largest total weight of distinct matched ``terms``.

    ``terms`` maps tokens (word pieces starting with ``##`` are ignored) to weights; a word matches a term equal
    to it or, for terms of at least :data:`MIN_PREFIX` characters, one it starts with. Returns the snippet (with
    ``…`` where text was cut) and highlight spans ``{"start", "end", "term", "expansion"}`` into the snippet.
    """
    expansion = expansion or set()
    weights = {_fold(t): float(w) for t, w in terms.items() if t and not t.startswith("##") and _WORD.fullmatch(t)}
    prefixes = {t for t in weights if len(t) >= MIN_PREFIX}
    prefix_lengths = sorted({len(t) for t in prefixes}, reverse=True)  # longest first
    words = list(_WORD.finditer(text))
    if not words:
        return text.strip()[: width * 8], []
    cache: dict[str, str | None] = {}
    matched: list[str | None] = []
    for m in words:
        word = m.group()
        if word not in cache:
            folded = _fold(word)
            cache[word] = folded if folded in weights else next(  # the longest term the word starts with
                (folded[:n] for n in prefix_lengths if n < len(folded) and folded[:n] in prefixes), None)
        matched.append(cache[word])
    best = 0
    if len(words) > width:  # slide the window, keeping the weight of the distinct terms inside it
        counts: dict[str, int] = {}
        score = 0.0
        for t in matched[:width]:
            if t:
                score += weights[t] if not counts.get(t) else 0.0
                counts[t] = counts.get(t, 0) + 1
        best_score = score
        for start in range(1, len(words) - width + 1):
            out_t, in_t = matched[start - 1], matched[start + width - 1]
            if out_t:
                counts[out_t] -= 1
                if not counts[out_t]:
                    score -= weights[out_t]
            if in_t:
                if not counts.get(in_t):
                    score += weights[in_t]
                counts[in_t] = counts.get(in_t, 0) + 1
            if score > best_score + 1e-9:
                best, best_score = start, score
    end = min(len(words), best + width)
    lo = 0 if best == 0 else words[best].start()
    hi = len(text) if end == len(words) else words[end - 1].end()
    prefix = "" if lo == 0 else "… "
    out = prefix + text[lo:hi] + ("" if hi == len(text) else " …")
    spans = []
    for m, term in zip(words[best:end], matched[best:end]):
        if term:
            start = len(prefix) + m.start() - lo
            spans.append({"start": start, "end": start + len(m.group()), "term": term,
                          "expansion": term in expansion})
    return out, spans
