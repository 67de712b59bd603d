"""lsr: learned sparse retrieval with SPLADE encoders and a Numba inverted index."""

__version__ = "0.1.0"

from lsr.engine import Engine, Hit  # noqa: E402
from lsr.encoder import SparseBatch, SpladeEncoder  # noqa: E402

__all__ = ["Engine", "Hit", "SparseBatch", "SpladeEncoder", "__version__"]
