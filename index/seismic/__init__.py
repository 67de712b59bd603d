"""Seismic: approximate top-k over blocked, summarized posting lists (Bruch, Nardini, Rulli, Venturini, SIGIR 2024).

One module per concern, as in the authors' library:

* :mod:`.config`: the build and search settings, named after the paper's knobs (``n_postings`` = λ,
  ``centroid_fraction``, ``summary_energy`` = α, ``query_cut``, ``heap_factor``), defaults and checks;
* :mod:`.build`: static pruning of every posting list and its blocking by a shallow k-means;
* :mod:`.summaries`: the quantized summary of every block;
* :mod:`.search`: the query algorithm (a kernel of the shared :mod:`index.batch` scaffold);
* :mod:`.structure`: :class:`SeismicIndex`, the ``seismic`` structure that builds, stores and searches them.

With ``summary_energy=1`` and no ``summary_cap`` a summary dot product bounds every document score in the block; then
``heap_factor <= 1``, no static pruning (``n_postings`` at least the longest list, fixed pruning) and
``query_cut`` at least the number of query terms make the search exact (``heap_factor=0`` does so
whatever the summaries).
"""

from .config import BUILD_DEFAULTS, SEARCH_DEFAULTS, auto_n_postings
from .structure import SeismicIndex

__all__ = ["BUILD_DEFAULTS", "SEARCH_DEFAULTS", "SeismicIndex", "auto_n_postings"]
