"""Running a Numba parallel kernel on a chosen number of threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba


@contextmanager
def numba_threads(count: int) -> Iterator[None]:
    """Run the block with ``numba.set_num_threads(count)``, restoring the previous setting afterwards."""
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
