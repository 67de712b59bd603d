"""The ``seismic`` structure (:mod:`index.structures` contract): build, load and search of blocked, summarized lists.

Arrays (flat CSR, beside the index's own): ``seismic_list_blocks`` int64[V+1] (block range of a
term), ``seismic_block_offsets`` uint32/int64[B+1] (range in ``seismic_docs`` uint32), and the block-major
summaries of :mod:`.summaries`: ``seismic_sum_offsets`` uint32/int64[B+1] (range of a block's summary),
``seismic_sum_terms`` uint16/uint32, ``seismic_sum_values`` codes (uint8, or two 4-bit codes per byte) and
``seismic_block_step`` uint16[B] (the code scale). For an older index with uint32 forward term ids that fit 16
bits, ``seismic_forward_terms16`` uint16[P] is a 16-bit copy of them (less memory traffic when scoring documents).
"""

from __future__ import annotations

import numpy as np

from ..batch import QueryRunner, Result
from ..storage import IndexFormatError, open_array, read_manifest, write_array
from .build import block_lists, prune
from .config import BUILD_DEFAULTS, LEGACY_SUMMARY_BITS, BuildConfig, SearchConfig, auto_n_postings
from .search import seismic_top_k
from .summaries import summarize

ARRAYS = ("seismic_list_blocks", "seismic_block_offsets", "seismic_docs", "seismic_block_step",
          "seismic_sum_offsets", "seismic_sum_terms", "seismic_sum_values")


class SeismicIndex:
    """The ``seismic`` structure: blocked, summarized posting lists searched with ``mode="seismic"``."""

    NAME = "seismic"
    MODES = ("seismic",)

    def __init__(self, index, params: dict, arrays: dict[str, np.ndarray]):
        self.index = index
        self.params = params
        self._nibbles = int(params.get("summary_bits", LEGACY_SUMMARY_BITS)) == 4
        num_docs = int(index.num_docs)
        list_blocks = arrays["seismic_list_blocks"]
        max_blocks = int(np.max(np.diff(list_blocks))) if list_blocks.shape[0] > 1 else 0
        terms = arrays.get("seismic_forward_terms16")
        data = (*(arrays[name] for name in ARRAYS), index.array("forward_offsets"),
                index.array("forward_terms") if terms is None else terms, index.array("forward_impacts"))
        scratch = ((index.vocab_size, np.int32), ((num_docs + 63) // 64, np.uint64),  # query weights, visited docs
                   (max(1, max_blocks), np.int64))  # summary dot products of a list's blocks
        self._runner = QueryRunner(seismic_top_k, data, scratch, num_docs)

    # ------------------------------------------------------------------ build
    @classmethod
    def rebuild_params(cls, params: dict, num_docs: int) -> dict:
        """The build arguments that rebuild this structure (recorded ``params``, built over ``num_docs``
        documents) for another set of documents: an automatic λ is chosen again for the new size."""
        out = {key: params[key] for key in BUILD_DEFAULTS if key in params}
        if out.get("n_postings") == auto_n_postings(num_docs):
            out["n_postings"] = None
        return out

    @classmethod
    def build(cls, index, **params) -> dict:
        """Build the structure into ``index.index_dir``; return {"params", "arrays"} for the manifest."""
        config = BuildConfig.from_params(params, index.num_docs)
        p = config.to_params()
        keep, threshold = prune(np.ascontiguousarray(index.array("postings_offsets")),
                                index.array("postings_impacts"), config)
        if threshold is not None:
            p["global_threshold"] = threshold
        list_blocks, block_offsets, docs = block_lists(index, keep, config)
        if block_offsets[-1] < 2**32:
            block_offsets = block_offsets.astype(np.uint32)
        forward = tuple(index.array(n) for n in ("forward_offsets", "forward_terms", "forward_impacts"))
        arrays, entries = summarize(index.index_dir, block_offsets, docs, forward, config.summary_energy,
                                    config.summary_cap or int(index.vocab_size), int(index.vocab_size),
                                    config.summary_bits)
        out = {"seismic_list_blocks": list_blocks, "seismic_block_offsets": block_offsets, "seismic_docs": docs}
        if index.vocab_size <= 65536 and forward[1].dtype != np.uint16:  # 16-bit copy of an old index's term ids
            out["seismic_forward_terms16"] = np.asarray(forward[1]).astype(np.uint16)
        arrays.update({name: write_array(index.index_dir, name, arr) for name, arr in out.items()})
        p["stats"] = {"postings": int(docs.shape[0]), "blocks": int(list_blocks[-1]), "summary_entries": entries}
        return {"params": p, "arrays": arrays}

    @classmethod
    def load(cls, index, info: dict) -> "SeismicIndex":
        """Open the structure's (memory-mapped) arrays."""
        names = info.get("arrays", ARRAYS)
        if "seismic_comp_terms" in names:
            raise IndexFormatError(f"{index.index_dir}: the seismic structure is in the term-major summary layout of "
                                   "format version 1; rebuild it with `lsr index --index DIR --add-structures seismic`")
        arrays, manifest = {}, None
        for name in names:
            try:
                arrays[name] = index.array(name)
            except KeyError:  # built after this index object was opened
                manifest = manifest or read_manifest(index.index_dir)
                arrays[name] = open_array(index.index_dir, manifest, name)
        return cls(index, dict(info.get("params", {})), arrays)

    # ----------------------------------------------------------------- search
    def _knobs(self, mode: str, params: dict) -> tuple[int, float, bool]:
        if mode not in self.MODES:
            raise ValueError(f"the seismic structure serves modes {self.MODES}, not {mode!r}")
        config = SearchConfig.from_params(params)
        return config.query_cut, config.heap_factor, self._nibbles

    def search(self, qterms: np.ndarray, qweights: np.ndarray, k: int, mode: str = "seismic", **params) -> Result:
        """Top-k of a quantized query (terms ascending, weights > 0): (doc ids uint32, int32 scores)."""
        return self._runner.search(qterms, qweights, k, self._knobs(mode, params))

    def search_batch(self, quantized: list, k: int, mode: str = "seismic", threads: int | None = None,
                     **params) -> list[Result]:
        """:meth:`search` for many quantized queries [(terms, weights, qscale)] in parallel over ``threads``."""
        return self._runner.search_batch(quantized, k, threads, self._knobs(mode, params))
