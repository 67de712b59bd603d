"""Hard negatives mined once before training (BM25 or the starting model's index), and the IDF table of
inference-free queries."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from lsr.training.config import TrainConfig, TrainError
from lsr.training.data import TrainingData

log = logging.getLogger(__name__)


def mine_negatives(data: TrainingData, cfg: TrainConfig, work: Path, cache_dir: Path | None = None
                   ) -> dict[str, list[str]]:
    """Top ``negatives_depth`` non-positive documents per training query from BM25 or the starting model's index."""
    if cfg.hard_negatives == "none":
        return {}
    qids = list(dict.fromkeys(q for q, _ in data.examples))
    depth = cfg.negatives_depth + max(len(data.positives[q]) for q in qids)
    depth = min(depth, len(data.docs))
    started = time.time()
    if cfg.hard_negatives == "bm25":
        from lsr import bm25

        try:
            import bm25s  # noqa: F401
        except ImportError:
            raise TrainError("--hard-negatives bm25 needs the bm25s package (pip install 'lsr[eval]'); or mine with "
                             "--hard-negatives sparse (the starting model's own index) or none") from None
        index = bm25.open_or_build(lambda: iter(data.docs.items()), work / "bm25", implementation="bm25s",
                                   progress=cfg.progress)
        ranked = [[d for d, _ in index.search(index.analyze(data.queries[q]), depth)] for q in qids]
    else:
        engine = mining_engine(data, cfg, work, cache_dir)
        hits = engine.search_batch([data.queries[q] for q in qids], k=depth, query_encoder=cfg.query_encoder)
        ranked = [[h.id for h in hs] for hs in hits]
    out = {q: [d for d in r if d not in data.positives[q]][: cfg.negatives_depth] for q, r in zip(qids, ranked)}
    log.info("mined %s negatives for %d queries in %.1fs", cfg.hard_negatives, len(qids), time.time() - started)
    return out


def cached_negatives(data: TrainingData, cfg: TrainConfig, run: Path, cache_dir: Path | None, key: dict
                     ) -> dict[str, list[str]]:
    """:func:`mine_negatives`, or the negatives ``run/negatives.json`` holds when they were mined the same way
    (``key``: the starting model and the data, with the mining settings added here)."""
    file = run / "negatives.json"
    key = {"method": cfg.hard_negatives, "depth": cfg.negatives_depth, "query_encoder": cfg.query_encoder, **key}
    if file.is_file():
        stored = json.loads(file.read_text())
        if stored.get("key") == key:
            return stored["negatives"]
    negatives = mine_negatives(data, cfg, run, cache_dir)
    file.write_text(json.dumps({"key": key, "negatives": negatives}), encoding="utf-8")
    return negatives


def mining_engine(data: TrainingData, cfg: TrainConfig, work: Path, cache_dir: Path | None):
    """An index of the training corpus with the starting model: the ``lsr eval`` cache index for a BEIR dataset
    (shared with ``lsr eval``, built once), else an index of the pairs' documents under the run directory."""
    from lsr.engine import Engine

    if data.dataset_dir is not None and (data.dataset_dir / "qrels" / f"{cfg.split}.tsv").is_file():
        from lsr import evaluation as ev

        ds = ev.load_dataset(data.dataset_dir, cfg.split, cache_dir)
        ctx = ev.EvalContext(ds, Path(cache_dir).expanduser() if cache_dir else ev.default_cache_dir(),
                             model=cfg.model, progress=cfg.progress,
                             query_encoder=cfg.query_encoder)
        return ev.eval_engine(ctx)
    target = work / "mining-index"
    if not (target / "manifest.json").is_file():
        corpus = work / "mining-corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as fh:
            for did, text in data.docs.items():
                fh.write(json.dumps({"_id": did, "text": text}) + "\n")
        Engine.build(corpus, target, model=cfg.model, doc_max_length=cfg.doc_max_length,
                     query_max_length=cfg.query_max_length, progress=cfg.progress)
        corpus.unlink()
    return Engine.open(target)


def query_idf_table(data: TrainingData, cfg: TrainConfig, work: Path, tokenizer, cache_dir: Path | None
                    ) -> np.ndarray:
    """IDF weights for inference-free queries during training: the index's table when the starting model's index is
    at hand (``--hard-negatives sparse``), else BM25 IDF of the tokens' document frequencies in the corpus text."""
    from lsr.query_encoders import bm25_idf

    if cfg.hard_negatives == "sparse":
        engine = mining_engine(data, cfg, work, cache_dir)
        return np.asarray(engine.inference_free.idf, dtype=np.float32)
    vocab = len(tokenizer)
    df = np.zeros(vocab, np.int64)
    texts = list(data.docs.values())
    for start in range(0, len(texts), 1024):
        for ids in tokenizer(texts[start:start + 1024], truncation=True, max_length=cfg.doc_max_length,
                             add_special_tokens=False)["input_ids"]:
            df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    idf = bm25_idf(df, len(texts))
    idf[tokenizer.all_special_ids] = 0.0
    return idf
