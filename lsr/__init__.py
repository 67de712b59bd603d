"""lsr: learned sparse retrieval with SPLADE encoders and a Numba inverted index."""

from lsr.encoder import SparseBatch, SpladeEncoder
from lsr.engine import Engine, Hit
from lsr.version import __version__

__all__ = ["Engine", "Hit", "SparseBatch", "SpladeEncoder", "__version__"]
