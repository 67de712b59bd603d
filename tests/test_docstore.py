"""The SQLite document store (lsr/docstore.py): renumbering after a document reordering."""

from __future__ import annotations

import numpy as np

from lsr.corpus import Document
from lsr.docstore import DocStore


def test_renumber_moves_every_document_and_leaves_no_free_pages(tmp_path):
    store = DocStore(tmp_path / "docs.sqlite")
    for n in range(3000):
        store.add(n, Document(id=f"doc-{n}", text=f"text of document {n} " * 5, title=f"title {n}"))
    store.commit()
    new_to_old = np.random.default_rng(0).permutation(3000)
    store.renumber(new_to_old)
    assert [store.get(new).id for new in range(0, 3000, 7)] == [f"doc-{new_to_old[new]}" for new in range(0, 3000, 7)]
    assert store.docno("doc-5") == int(np.flatnonzero(new_to_old == 5)[0]) and len(store) == 3000
    assert store._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    store.close()
