"""Sparse-vector inverted index: on-disk storage, external-memory builder and exact top-k search.

This package knows nothing about text or models: documents and queries are sparse vectors
of (term id, non-negative float weight).
"""

from .builder import IndexBuilder
from .search import InvertedIndex, quantize_query
from .storage import FORMAT_VERSION, IndexFormatError, verify_index

__all__ = ["FORMAT_VERSION", "IndexBuilder", "IndexFormatError", "InvertedIndex", "quantize_query", "verify_index"]
