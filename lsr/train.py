"""``lsr train``: fine-tune a masked-LM checkpoint as a SPLADE model on (query, positive document) pairs.

Training data is a BEIR dataset's ``qrels/<split>.tsv`` (default ``train``) or a file of pairs (``--pairs``: JSONL
or TSV, with texts or with ids resolved against the dataset). Every problem in the input is reported with file
and line (:class:`lsr.corpus.CorpusError`).

The loss, per batch of B (query, positive) pairs with n mined hard negatives each:

* contrastive cross-entropy of each query against all B·(1+n) documents of the batch (in-batch negatives plus hard
  negatives); documents judged relevant to a query other than its own target are masked out;
* FLOPS regularisation (Paria et al. 2020, as in SPLADE v2): ``sum_j (mean_i w_ij)^2`` over the vocabulary, on the
  queries (``lambda_q``) and on the documents (``lambda_d``), with the SPLADE v2 quadratic warm-up of both lambdas
  (``lambda_t = lambda * min(1, t / T)^2``, T a third of the steps by default);
* with ``query_encoder="inference-free"`` (the document-only variant) queries are not encoded by the model but are
  the index-time IDF of their tokens, so the ranking gradient of a document term is IDF-weighted (Geng et al.
  2024's IDF-aware matching); ``doc_reg="l0"`` replaces FLOPS on documents by an ℓ0 relaxation
  ``mean_i sum_j (1 - exp(-w_ij / eps))`` (a smooth count of non-zero terms), ``doc_reg="idf-flops"`` weights the
  FLOPS term of each vocabulary entry by ``1 / (1 + idf_j)`` so frequent, uninformative terms cost more;
* optional distillation from a teacher's scores (``--teacher FILE`` of query, document, score): Margin-MSE on
  (positive, negative) score margins, or KL between the teacher's and the student's softmax over them.

Hard negatives are mined once, before training, from an index of the corpus: BM25 (bm25s) or the starting
model's own sparse retrieval (the ``lsr eval`` cache index of the dataset, built when missing).

SPLADE's max pooling is trained without materialising gradients for the [tokens × vocabulary] logits: the logits
are computed without autograd to find, for each vocabulary entry, the token holding the maximum, then only the
positive maxima are recomputed with autograd from that token's hidden state (``relu`` zeroes the gradient of the
others). The gradient is exactly that of ``max`` (up to ties), at a fraction of the memory and time.

Checkpoints (model, optimizer, LR schedule, RNG state, position in the data order) are written atomically every
``checkpoint_every`` steps and at the end of each epoch; data order and negative sampling are pure functions of
(seed, epoch, position), so a run resumed from a checkpoint ends with the same weights as an uninterrupted run.
The result is a standard Hugging Face checkpoint directory (``save_pretrained`` model and tokenizer) that
``lsr index --model DIR`` takes; the run's files (report, mined negatives, checkpoints) sit in ``DIR/lsr_train/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsr.corpus import CorpusError, parse_json_object

log = logging.getLogger("lsr.train")

RUN_DIR = "lsr_train"  # inside the output directory; a subdirectory, so not part of the checkpoint's model hash
REPORT = "report.json"
HARD_NEGATIVES = ("bm25", "sparse", "none")
DOC_REGS = ("flops", "idf-flops", "l0")
DISTILL = ("margin-mse", "kl")
L0_EPS = 0.1

QUERY_TEXT_KEYS = ("query", "query_text", "question")
QUERY_ID_KEYS = ("query_id", "query-id", "qid")
DOC_TEXT_KEYS = ("doc", "document", "positive", "pos", "passage", "doc_text")
DOC_ID_KEYS = ("doc_id", "doc-id", "corpus_id", "corpus-id", "docid", "pid", "positive_id")
SCORE_KEYS = ("score", "relevance", "label")


class TrainError(ValueError):
    """A training run that cannot start or resume as asked (one line, names the file)."""


# ====================================================================== configuration
@dataclass
class TrainConfig:
    """Everything that defines a training run (``checkpoint_every``, ``threads``, ``progress`` do not change results)."""

    model: str | None = None  # starting checkpoint: embedded name, local dir or hub id (default splade-tiny)
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # linear LR warm-up, then linear decay to 0
    lambda_q: float = 1e-3
    lambda_d: float = 1e-3
    reg_warmup_ratio: float = 1 / 3  # quadratic warm-up of the lambdas over this fraction of the steps
    doc_reg: str = "flops"
    query_encoder: str = "model"  # "inference-free": the document-only variant (queries = IDF of their tokens)
    hard_negatives: str = "bm25"
    negatives: int = 1  # hard negatives per pair
    negatives_depth: int = 50  # sampled from the top this-many non-positive results
    teacher: str | None = None
    distill: str = "margin-mse"
    distill_weight: float = 1.0
    doc_max_length: int = 256
    query_max_length: int = 64
    seed: int = 13
    max_steps: int | None = None
    max_grad_norm: float = 1.0
    split: str = "train"
    checkpoint_every: int = 100
    keep_checkpoints: int = 1
    threads: int | None = None
    device: str | None = None
    progress: bool = True

    _RUNTIME = ("checkpoint_every", "keep_checkpoints", "threads", "device", "progress")

    def check(self) -> "TrainConfig":
        from lsr.query_encoders import check_query_encoder

        for name, value, allowed in (("--hard-negatives", self.hard_negatives, HARD_NEGATIVES),
                                     ("--doc-reg", self.doc_reg, DOC_REGS), ("--distill", self.distill, DISTILL)):
            if value not in allowed:
                raise ValueError(f"{name}: unknown value {value!r}; choose from {', '.join(allowed)}")
        check_query_encoder(self.query_encoder)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "checkpoint_every": self.checkpoint_every, "doc_max_length": self.doc_max_length,
                    "query_max_length": self.query_max_length, "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value}")
        for name in ("lambda_q", "lambda_d", "weight_decay", "distill_weight", "negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max-steps must be positive, got {self.max_steps}")
        if self.hard_negatives != "none" and self.negatives_depth < 1:
            raise ValueError("negatives-depth must be positive")
        return self

    def key(self) -> dict:
        """The settings that determine the result (compared when resuming)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self._RUNTIME}


# ====================================================================== training data
@dataclass
class TrainingData:
    """Queries and documents by id, the (query, positive) pairs, every positive per query, teacher scores."""

    queries: dict[str, str]
    docs: dict[str, str]
    examples: list[tuple[str, str]]
    positives: dict[str, set[str]]
    source: str
    dataset_dir: Path | None = None
    teacher: dict[str, dict[str, float]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for q, d in self.examples:
            h.update(f"{q}\t{d}\t{self.queries[q]}\t{self.docs[d]}\n".encode())
        for q in sorted(self.teacher):
            for d, s in sorted(self.teacher[q].items()):
                h.update(f"T{q}\t{d}\t{s!r}\n".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {"source": self.source, "pairs": len(self.examples), "queries": len({q for q, _ in self.examples}),
                "documents": len(self.docs), "teacher_scores": sum(len(v) for v in self.teacher.values())}


@dataclass
class _Row:
    path: Path
    line: int
    qid: str | None
    qtext: str | None
    did: str | None
    dtext: str | None


def _lines(path: Path, what: str = "training pairs") -> list[tuple[int, str]]:
    """Non-blank (line number, text) of a UTF-8 file; an empty file is an error."""
    if not path.is_file():
        raise CorpusError(path, 0, None, "no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorpusError(path, 0, None, f"not UTF-8 text ({err.reason})") from None
    rows = [(i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not rows:
        raise CorpusError(path, 0, None, f"empty file: no {what}")
    return rows


def _number(path: Path, line: int, value, what: str = "score") -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise CorpusError(path, line, what, f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise CorpusError(path, line, what, f"not a finite number: {value!r}")
    return x


_COLUMN_NAMES = {
    **{k: "qtext" for k in QUERY_TEXT_KEYS}, **{k: "qid" for k in QUERY_ID_KEYS},
    **{k: "dtext" for k in DOC_TEXT_KEYS}, **{k: "did" for k in DOC_ID_KEYS}, **{k: "score" for k in SCORE_KEYS},
    "iter": "skip", "q0": "skip",
}


def _header(parts: list[str]) -> list[str] | None:
    names = [p.strip().lower() for p in parts]
    if all(n in _COLUMN_NAMES for n in names):
        return [_COLUMN_NAMES[n] for n in names]
    return None


def read_pairs_tsv(path: Path, *, qrels: bool = False) -> Iterator[_Row]:
    """(query, positive) rows of a TSV: a header naming the columns (``query``/``query-id``, ``doc``/``corpus-id``,
    optional ``score``), or no header with 2 columns (query text, document text), 3 (BEIR qrels: query-id,
    corpus-id, score) or 4 (TREC qrels: qid, iter, docid, rel). Rows with a score <= 0 are not positives."""
    lines = _lines(path)
    first_line, first = lines[0]
    columns = _header(first.split("\t"))
    if columns is not None:
        if columns.count("qtext") + columns.count("qid") != 1 or columns.count("dtext") + columns.count("did") != 1:
            raise CorpusError(path, first_line, None, "the header must name one query column (query or query-id) "
                                                      "and one document column (doc or corpus-id)")
        lines = lines[1:]
        if not lines:
            raise CorpusError(path, first_line, None, "only a header: no training pairs")
    for lineno, line in lines:
        parts = line.split("\t")
        if columns is not None:
            if len(parts) != len(columns):
                raise CorpusError(path, lineno, None, f"expected {len(columns)} tab-separated columns as the header "
                                                      f"names, got {len(parts)}")
            row = dict(zip(columns, parts))
        elif len(parts) == 2 and not qrels:
            row = {"qtext": parts[0], "dtext": parts[1]}
        elif len(parts) == 3:
            row = {"qid": parts[0], "did": parts[1], "score": parts[2]}
        elif len(parts) == 4:
            row = {"qid": parts[0], "did": parts[2], "score": parts[3]}
        else:
            raise CorpusError(path, lineno, None, (
                "expected 3 tab-separated columns (query-id, corpus-id, score) or 4 (TREC: qid iter docid rel)"
                if qrels else
                "expected 2 tab-separated columns (query, document), 3 (query-id, corpus-id, score), or a header "
                "naming the columns") + f", got {len(parts)}")
        if "score" in row and _number(path, lineno, row["score"]) <= 0:
            continue
        yield _row(path, lineno, row)


def _row(path: Path, lineno: int, row: dict) -> _Row:
    values = {}
    for key in ("qid", "qtext", "did", "dtext"):
        value = row.get(key)
        if value is not None:
            name = {"qid": "query_id", "qtext": "query", "did": "doc_id", "dtext": "doc"}[key]
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise CorpusError(path, lineno, name, f"must be a string, got {type(value).__name__}")
            value = str(value).strip()
            if not value:
                raise CorpusError(path, lineno, name, "empty value")
        values[key] = value
    return _Row(path, lineno, values["qid"], values["qtext"], values["did"], values["dtext"])


def read_pairs_jsonl(path: Path) -> Iterator[_Row]:
    """(query, positive) rows of a JSONL: a query (``query`` text or ``query_id``) and a document (``doc`` /
    ``positive`` text or ``doc_id`` / ``corpus-id``) per line; an optional ``score`` <= 0 drops the line."""
    for lineno, line in _lines(path):
        record = parse_json_object(line, path, lineno)
        row = {}
        for kind, keys in (("qtext", QUERY_TEXT_KEYS), ("qid", QUERY_ID_KEYS), ("dtext", DOC_TEXT_KEYS),
                           ("did", DOC_ID_KEYS), ("score", SCORE_KEYS)):
            hit = next((k for k in keys if k in record), None)
            if hit is not None:
                row[kind] = record[hit]
        if "qtext" not in row and "qid" not in row:
            raise CorpusError(path, lineno, "/".join(QUERY_TEXT_KEYS[:1] + QUERY_ID_KEYS[:1]),
                              "missing the query (its text or its id)")
        if "dtext" not in row and "did" not in row:
            raise CorpusError(path, lineno, "/".join(DOC_TEXT_KEYS[:3] + DOC_ID_KEYS[:1]),
                              "missing the document (its text or its id)")
        if "score" in row and _number(path, lineno, row["score"]) <= 0:
            continue
        yield _row(path, lineno, row)


def _dataset_texts(dataset: Path) -> tuple[dict[str, str], dict[str, str], Path, Path]:
    """Queries and documents (title + text) of a BEIR-layout dataset directory."""
    from lsr.corpus import CorpusReader, read_queries
    from lsr.engine import document_text

    if not dataset.is_dir():
        raise TrainError(f"{dataset}: not a dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    corpus = next((dataset / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (dataset / n).is_file()), None)
    if corpus is None:
        raise TrainError(f"{dataset}: no corpus.jsonl or corpus.jsonl.gz")
    queries_file = next((dataset / n for n in ("queries.jsonl", "queries.jsonl.gz") if (dataset / n).is_file()), None)
    if queries_file is None:
        raise TrainError(f"{dataset}: no queries.jsonl")
    docs = {d.id: document_text(d) for d in CorpusReader(corpus, fmt="jsonl")}
    return dict(read_queries(queries_file)), docs, queries_file, corpus


def load_training_data(dataset: str | os.PathLike | None = None, pairs: str | os.PathLike | None = None, *,
                       split: str = "train", teacher: str | os.PathLike | None = None) -> TrainingData:
    """Read and check the training pairs (and teacher scores); every problem names its file and line.

    With ``pairs`` None the pairs are ``DATASET/qrels/<split>.tsv``. Pairs given by id are looked up in the
    dataset's ``queries.jsonl`` and corpus; pairs given as text need no dataset (their text is their id).
    """
    root = Path(dataset) if dataset is not None else None
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    queries_file = corpus_file = None
    if root is not None:
        queries, docs, queries_file, corpus_file = _dataset_texts(root)
    if pairs is None:
        if root is None:
            raise TrainError("give a DATASET directory (its qrels/<split>.tsv are the pairs) or --pairs FILE")
        path = root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
            raise TrainError(f"{path}: no qrels for split {split!r}" + (
                f" (available: {', '.join(splits)}); pass --split or --pairs FILE" if splits else ""))
        rows = list(read_pairs_tsv(path, qrels=True))
        source = str(path)
    else:
        path = Path(pairs)
        suffix = path.name.lower().removesuffix(".gz").rsplit(".", 1)[-1]
        rows = list(read_pairs_jsonl(path) if suffix in ("jsonl", "json", "ndjson") else read_pairs_tsv(path))
        source = str(path)
    if not rows:
        raise CorpusError(path, 0, None, "no positive pairs (every row has a score <= 0)")
    examples: list[tuple[str, str]] = []
    positives: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        qid = _resolve(r, r.qid, r.qtext, queries, "query", queries_file, root)
        did = _resolve(r, r.did, r.dtext, docs, "doc", corpus_file, root)
        positives.setdefault(qid, set()).add(did)
        if (qid, did) not in seen:
            seen.add((qid, did))
            examples.append((qid, did))
    data = TrainingData(queries, docs, examples, positives, source, root)
    if teacher is not None:
        data.teacher = read_teacher(Path(teacher), data)
    return data


def _resolve(r: _Row, ident: str | None, text: str | None, table: dict[str, str], kind: str,
             file: Path | None, root: Path | None) -> str:
    """The id of a row's query or document, adding text-only entries to ``table`` (their id is their text)."""
    if ident is not None:
        if ident in table:
            if text is not None and table[ident] != text:
                table[ident] = text  # the pair file's text wins over the dataset's
            return ident
        if text is not None:
            table[ident] = text
            return ident
        if root is None:
            raise CorpusError(r.path, r.line, f"{kind}_id",
                              f"{kind} id {ident!r} given without its text and without a DATASET directory to look "
                              f"it up in")
        what = "query" if kind == "query" else "document"
        raise CorpusError(r.path, r.line, f"{kind}_id", f"unknown {what} {ident!r}: not in {file}")
    table.setdefault(text, text)
    return text


def read_teacher(path: Path, data: TrainingData) -> dict[str, dict[str, float]]:
    """Teacher scores ``{query: {doc: score}}`` from a TSV (query, doc, score; optional header) or a JSONL
    (``query_id``/``query``, ``doc_id``/``doc``, ``score``). Queries and documents are ids of the training data
    (or, for pairs given as text, the texts). Rows for queries that are not trained on are ignored."""
    out: dict[str, dict[str, float]] = {}
    suffix = path.name.lower().rsplit(".", 1)[-1]
    lines = _lines(path, "teacher scores")
    for lineno, line in lines:
        if suffix in ("jsonl", "json", "ndjson"):
            record = parse_json_object(line, path, lineno)
            q = next((record[k] for k in QUERY_ID_KEYS + QUERY_TEXT_KEYS if k in record), None)
            d = next((record[k] for k in DOC_ID_KEYS + DOC_TEXT_KEYS if k in record), None)
            s = next((record[k] for k in SCORE_KEYS if k in record), None)
            if q is None or d is None or s is None:
                raise CorpusError(path, lineno, None, "expected fields query_id, doc_id and score")
            q, d = str(q), str(d)
        else:
            parts = line.split("\t")
            if len(parts) != 3:
                raise CorpusError(path, lineno, None, f"expected 3 tab-separated columns (query, doc, score), "
                                                      f"got {len(parts)}")
            q, d, s = (p.strip() for p in parts)
            if lineno == lines[0][0] and _header(parts) is not None:
                continue
        score = _number(path, lineno, s)
        if q not in data.queries:
            raise CorpusError(path, lineno, "query", f"unknown query {q!r}")
        if d not in data.docs:
            raise CorpusError(path, lineno, "doc", f"unknown document {d!r}")
        if q in data.positives:
            out.setdefault(q, {})[d] = score
    return out


# ====================================================================== the model
class SpladeModel:
    """A masked-LM checkpoint with SPLADE pooling for training (see the module docstring for the fast max-pool)."""

    def __init__(self, path: str | os.PathLike, device: str, tokenizer_path: str | os.PathLike | None = None):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
        self.model = AutoModelForMaskedLM.from_pretrained(str(path)).to(device)
        self.decoder = self.model.get_output_embeddings()
        self.vocab_size = int(self.decoder.out_features if hasattr(self.decoder, "out_features")
                              else self.decoder.weight.shape[0])
        self.head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        self.fast = self.head is not None and isinstance(self.decoder, torch.nn.Linear)
        self._captured = None
        self._hook = self.decoder.register_forward_hook(self._capture) if self.fast else None

    def _capture(self, module, inputs, output):
        self._captured = inputs[0]
        return output.detach()

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def encode(self, ids: list[list[int]]):
        """SPLADE vectors [len(ids), vocab] (autograd through the model) of token-id lists."""
        torch = self.torch
        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        mask = padded["attention_mask"].to(self.device)
        if not self.fast:
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            pooled = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
            return torch.log1p(torch.relu(pooled))
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weight, bias = self.decoder.weight, self.decoder.bias
        rows = []
        for i, n in enumerate(mask.sum(dim=1).tolist()):
            logits = self.head(hidden[i, :n])  # full logits without autograd (the hook detaches them)
            x = self._captured  # the decoder's input, with autograd
            values, where = logits.max(dim=0)
            nz = torch.nonzero(values > 0).squeeze(1)
            pooled = (x[where[nz]] * weight[nz]).sum(-1)
            if bias is not None:
                pooled = pooled + bias[nz]
            row = torch.zeros(self.vocab_size, device=self.device, dtype=pooled.dtype)
            rows.append(row.scatter(0, nz, torch.log1p(torch.relu(pooled))))
        self._captured = None
        return torch.stack(rows)

    def save(self, out: Path) -> None:
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))


# ====================================================================== hard negatives
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


def mining_engine(data: TrainingData, cfg: TrainConfig, work: Path, cache_dir: Path | None):
    """An index of the training corpus with the starting model: the ``lsr eval`` cache index for a BEIR dataset
    (shared with ``lsr eval``, built once), else an index of the pairs' documents under the run directory."""
    from lsr.engine import Engine

    if data.dataset_dir is not None and (data.dataset_dir / "qrels" / f"{cfg.split}.tsv").is_file():
        from lsr import evaluate as ev

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


# ====================================================================== checkpoints
def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("step-*") if re.fullmatch(r"step-\d+", p.name)
             and (p / "progress.json").is_file() and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(root: Path, net: SpladeModel, optimizer, scheduler, progress: dict, keep: int) -> Path:
    import torch

    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{progress['step']:07d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    net.model.save_pretrained(str(tmp))
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1), encoding="utf-8")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ====================================================================== training
@dataclass
class TrainResult:
    out: Path
    report: dict


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def train(cfg: TrainConfig, out: str | os.PathLike, *, dataset: str | os.PathLike | None = None,
          pairs: str | os.PathLike | None = None, resume: bool = False, cache_dir: str | os.PathLike | None = None,
          data: TrainingData | None = None, _stop_after: int | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` on the pairs; write the checkpoint to ``out`` (see the module docstring).

    ``resume`` continues from the last checkpoint in ``out`` (which must have been made with the same settings
    and data). ``_stop_after`` (tests) stops after that many steps, as an interruption would.
    """
    import torch
    import torch.nn.functional as F

    from lsr.encoder import default_device
    from lsr.models import DEFAULT_SPLADE, resolve_model

    cfg.check()
    out = Path(out)
    run = out / RUN_DIR
    ckpt_root = run / "checkpoints"
    cache = Path(cache_dir) if cache_dir else None
    if (run / REPORT).is_file() and json.loads((run / REPORT).read_text()).get("finished"):
        if not resume:
            raise TrainError(f"{out} already holds a finished training run; choose another --out")
        report = json.loads((run / REPORT).read_text())
        log.warning("%s: training already finished", out)
        return TrainResult(out, report)
    existing = _checkpoints(ckpt_root) if ckpt_root.is_dir() else []
    if existing and not resume:
        raise TrainError(f"{out} holds checkpoints of an interrupted run ({existing[-1].name}); pass --resume to "
                         f"continue it, or choose another --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = cfg.device or default_device()
    start_ref = resolve_model(cfg.model, DEFAULT_SPLADE)
    t_load = time.time()
    if data is None:
        data = load_training_data(dataset, pairs, split=cfg.split, teacher=cfg.teacher)
    key = {"config": cfg.key(), "data": data.fingerprint()}
    run.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ resume point
    progress: dict = {"step": 0, "epoch": 0, "batch": 0, "losses": [], "elapsed": 0.0}
    load_from = start_ref.path
    if existing:
        last = existing[-1]
        saved = json.loads((last / "progress.json").read_text())
        if saved.get("key") != key:
            diff = [k for k in cfg.key() if saved.get("key", {}).get("config", {}).get(k) != cfg.key()[k]]
            raise TrainError(f"{last}: made with other settings or data ({', '.join(diff) or 'training data'} "
                             f"differ); resume with the same ones or choose another --out")
        progress = saved
        load_from = last
        log.info("resuming from %s (step %d)", last, progress["step"])

    # ------------------------------------------------------------ model, negatives, batches
    torch.manual_seed(cfg.seed)
    net = SpladeModel(load_from, device, tokenizer_path=start_ref.path)  # checkpoints hold no tokenizer
    neg_file = run / "negatives.json"
    neg_key = {"method": cfg.hard_negatives, "depth": cfg.negatives_depth, "query_encoder": cfg.query_encoder,
               "model": str(start_ref.path), "data": key["data"]}
    negatives = None
    if neg_file.is_file():
        stored = json.loads(neg_file.read_text())
        if stored.get("key") == neg_key:
            negatives = stored["negatives"]
    t_mine = time.time()
    if negatives is None:
        negatives = mine_negatives(data, cfg, run, cache)
        neg_file.write_text(json.dumps({"key": neg_key, "negatives": negatives}), encoding="utf-8")
    mine_seconds = time.time() - t_mine
    idf = None
    if cfg.query_encoder == "inference-free" or cfg.doc_reg == "idf-flops":
        idf = torch.as_tensor(query_idf_table(data, cfg, run, net.tokenizer, cache), device=device)

    doc_ids = sorted({d for _, d in data.examples} | {d for ns in negatives.values() for d in ns}
                     | {d for t in data.teacher.values() for d in t})
    doc_tokens = dict(zip(doc_ids, net.tokenize([data.docs[d] for d in doc_ids], cfg.doc_max_length)))
    qids = sorted({q for q, _ in data.examples})
    query_tokens = dict(zip(qids, net.tokenize([data.queries[q] for q in qids], cfg.query_max_length)))

    n = len(data.examples)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
    params = [p for p in net.model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, max(1, int(cfg.warmup_ratio * total))))
    if existing:
        state = torch.load(existing[-1] / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    reg_warmup = max(1, int(cfg.reg_warmup_ratio * total))
    load_seconds = time.time() - t_load - mine_seconds

    def negatives_for(example: int, epoch: int) -> list[str]:
        qid = data.examples[example][0]
        pool = [d for d, _ in sorted(data.teacher.get(qid, {}).items(), key=lambda x: -x[1])
                if d not in data.positives[qid]] or negatives.get(qid, [])
        pool = pool[: cfg.negatives_depth]
        if not pool or cfg.negatives == 0:
            return []
        rng = np.random.default_rng([cfg.seed, epoch, example])
        return [pool[i] for i in rng.choice(len(pool), size=min(cfg.negatives, len(pool)), replace=False)]

    def doc_reg(docs):
        if cfg.doc_reg == "l0":
            return (1 - torch.exp(-docs / L0_EPS)).sum(dim=1).mean()
        flops = docs.mean(dim=0) ** 2
        if cfg.doc_reg == "idf-flops":
            flops = flops / (1 + idf)
        return flops.sum()

    def step_loss(batch: np.ndarray, epoch: int, step: int) -> tuple["torch.Tensor", dict]:
        exs = [data.examples[i] for i in batch]
        negs = [negatives_for(int(i), epoch) for i in batch]
        docs = [d for _, d in exs] + [d for ns in negs for d in ns]
        D = net.encode([doc_tokens[d] for d in docs])
        if cfg.query_encoder == "inference-free":
            Q = torch.zeros(len(exs), net.vocab_size, device=device)
            for r, (q, _) in enumerate(exs):
                ids = sorted(set(query_tokens[q]) - set(net.tokenizer.all_special_ids))
                Q[r, ids] = idf[ids]
        else:
            Q = net.encode([query_tokens[q] for q, _ in exs])
        S = Q @ D.T
        block = torch.zeros_like(S, dtype=torch.bool)
        for r, (q, target) in enumerate(exs):
            for c, d in enumerate(docs):
                if c != r and d in data.positives[q]:
                    block[r, c] = True
        S_masked = S.masked_fill(block, float("-inf"))
        ce = F.cross_entropy(S_masked, torch.arange(len(exs), device=device))
        ramp = min(1.0, (step + 1) / reg_warmup) ** 2
        reg_q = (Q.mean(dim=0) ** 2).sum() if cfg.query_encoder == "model" else torch.zeros((), device=device)
        reg_d = doc_reg(D)
        loss = ce + ramp * (cfg.lambda_q * reg_q + cfg.lambda_d * reg_d)
        parts = {"ce": ce.item(), "reg_q": reg_q.item(), "reg_d": reg_d.item()}
        if data.teacher:
            kd = _distill(S, exs, docs, negs, len(exs), cfg.distill)
            if kd is not None:
                loss = loss + cfg.distill_weight * kd
                parts["distill"] = kd.item()
        with torch.no_grad():
            parts["nnz_q"] = float((Q > 0).sum(dim=1).float().mean())
            parts["nnz_d"] = float((D > 0).sum(dim=1).float().mean())
        parts["loss"] = loss.item()
        return loss, parts

    def _distill(S, exs, docs, negs, B, method):
        terms = []
        offset = B
        for r, ((q, pos), ns) in enumerate(zip(exs, negs)):
            t = data.teacher.get(q, {})
            cols = [(r, pos)] + [(offset + j, d) for j, d in enumerate(ns)]
            offset += len(ns)
            scored = [(c, t[d]) for c, d in cols if d in t]
            if len(scored) < 2 or cols[0][1] not in t:
                continue
            s = S[r, [c for c, _ in scored]]
            tt = torch.tensor([v for _, v in scored], device=S.device, dtype=S.dtype)
            if method == "margin-mse":
                terms.append((((s[0] - s[1:]) - (tt[0] - tt[1:])) ** 2).mean())
            else:
                terms.append(F.kl_div(F.log_softmax(s, 0), F.log_softmax(tt, 0), log_target=True, reduction="sum"))
        return torch.stack(terms).mean() if terms else None

    # ------------------------------------------------------------ loop
    from tqdm.auto import tqdm

    net.model.train()
    bar = tqdm(total=total, initial=progress["step"], unit="step", desc="training", disable=not cfg.progress,
               dynamic_ncols=True)
    step, epoch, batch_pos = progress["step"], progress["epoch"], progress["batch"]
    t0 = time.time()
    window: list[dict] = []
    while step < total:
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        batches = [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        while batch_pos < len(batches) and step < total:
            loss, parts = step_loss(batches[batch_pos], epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            batch_pos += 1
            window.append(parts)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", nnz_d=f"{parts['nnz_d']:.0f}")
            end_of_epoch = batch_pos == len(batches)
            if step % cfg.checkpoint_every == 0 or end_of_epoch or step == total:
                progress["losses"].append({"step": step, **{k: round(float(np.mean([w[k] for w in window if k in w])), 5)
                                                             for k in window[-1]}})
                window = []
                next_epoch, next_batch = (epoch + 1, 0) if end_of_epoch else (epoch, batch_pos)
                progress.update(step=step, epoch=next_epoch, batch=next_batch, key=key,
                                elapsed=round(progress["elapsed"] + time.time() - t0, 2))
                t0 = time.time()
                _save_checkpoint(ckpt_root, net, optimizer, scheduler, progress, cfg.keep_checkpoints)
            if _stop_after is not None and step >= _stop_after:
                bar.close()
                return TrainResult(out, {"finished": False, "step": step})
        epoch, batch_pos = epoch + 1, 0
    bar.close()

    # ------------------------------------------------------------ save
    net.model.eval()
    net.save(out)
    report = {
        "finished": True,
        "model": str(out.resolve()),
        "start_model": {"name": start_ref.name, "path": str(start_ref.path)},
        "config": dataclasses.asdict(cfg),
        "data": data.summary(),
        "steps": step,
        "steps_per_epoch": per_epoch,
        "train_seconds": progress["elapsed"],
        "mine_seconds": round(mine_seconds, 2),
        "setup_seconds": round(load_seconds, 2),
        "device": device,
        "threads": torch.get_num_threads(),
        "losses": progress["losses"],
    }
    (run / REPORT).write_text(json.dumps(report, indent=1), encoding="utf-8")
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return TrainResult(out, report)


# ====================================================================== before / after
def evaluate_before_after(start_model: str | None, trained: Path, dataset: Path, split: str = "test",
                          query_encoders: Sequence[str] = ("model", "inference-free"),
                          cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """``lsr eval`` of the starting and the trained model on a split, for each query encoder: nDCG@10 and friends,
    query-encoding latency and non-zero terms per document and per query."""
    from lsr.evaluate import run_eval

    rows = {}
    for label, model in (("before", start_model), ("after", str(trained))):
        for qe in query_encoders:
            r = run_eval(dataset, model=model, split=split, query_encoder=qe, cache_dir=cache_dir, progress=progress)
            rows[f"{label}/{qe}"] = {k: r[k] for k in ("ndcg@10", "recall@100", "mrr@10", "map@100", "nnz",
                                                       "encoding_ms", "latency_ms", "queries", "documents")}
            rows[f"{label}/{qe}"]["model"] = r["model"]
    for qe in query_encoders:
        before, after = rows.get(f"before/{qe}"), rows.get(f"after/{qe}")
        if before and after:
            rows[f"delta/{qe}"] = {"ndcg@10": round(after["ndcg@10"] - before["ndcg@10"], 6),
                                   "recall@100": round(after["recall@100"] - before["recall@100"], 6)}
    return {"dataset": str(dataset), "split": split, "results": rows}
