"""Query encoders on ONNX Runtime: the SPLADE and dense models exported from their own checkpoints.

A *query runtime* runs the query side of a model: ``torch`` (the PyTorch model itself), ``onnx`` (an fp32 ONNX
export) or ``onnx-int8`` (the same export with int8 weights, ``onnxruntime.quantization.quantize_dynamic``). Sessions
run on one intra-op thread (latency, not throughput); batches are length-sorted and padded.

Exports are made on first use (torch is needed only then) and cached in ``$LSR_ONNX_CACHE`` or
``~/.cache/lsr/onnx``, one directory per checkpoint (``<sha256 of the checkpoint files>[:16]``). ``splade.json`` /
``dense.json`` there record the source model's full hash, every file's sha256 and the versions that made them; an
export is reused while the source hash, the export format and every file's sha256 match, and made again otherwise.

SPLADE graph: the masked-LM body and head transform give token states ``h`` [batch, tokens, hidden]; padding
positions get a copy of the first token's state (so the max over tokens needs no mask); the graph returns ``h`` and
the output projection's logits [batch, tokens, vocabulary]. The max over tokens (faster outside the graph than ONNX
Runtime's ReduceMax over a middle axis), the bias and ``log(1 + relu(x))`` of the few positive ones follow in
Numba; batches are capped at a few queries so the logits stay in cache. Both graphs are exported with eager
attention and rewritten by ONNX Runtime's transformer fusions (attention, embedding layer norm). The int8 variant
quantizes only the projection (per-channel 7-bit weights, which cannot saturate the int16 sums of AVX2 kernels;
dynamic per-tensor activations): every term whose int8 logit is within a bound of the quantization error of 0 is
rescored exactly in fp32, so it yields the fp32 vector (same terms, same weights up to float rounding) at the int8
cost. Dense graph: the transformer, the checkpoint's pooling and L2 normalisation; its int8 variant quantizes every
MatMul with a constant weight but the feed-forward down-projections (per-channel).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numba import njit

from lsr.encoder import SparseBatch
from lsr.models import DEFAULT_DENSE, DEFAULT_SPLADE, ModelRef, model_hash, resolve_model

log = logging.getLogger("lsr.onnx")

QUERY_RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
DEFAULT_QUERY_RUNTIME = "auto"
# ``auto``: per model, the fastest runtime whose nDCG@10 stays within 0.005 of torch fp32 on every shared BEIR set
# (eval/results/query-runtimes.md): SPLADE int8 (exact by rescoring), dense fp32 (int8 moved lisa by +0.008).
AUTO_RUNTIMES = {"sparse": "onnx-int8", "dense": "onnx"}
CACHE_ENV = "LSR_ONNX_CACHE"
EXPORT_FORMAT = 5  # bump when a graph changes: older cached exports are then made again
OPSET = 17
SPLADE_MAX_BATCH = 4  # queries per SPLADE run: their [tokens, vocabulary] logits stay in cache


def check_query_runtime(name: str) -> str:
    """``name`` if it is a known query runtime, else a ValueError listing them."""
    if name not in QUERY_RUNTIMES:
        raise ValueError(f"unknown query runtime {name!r}; available: {', '.join(QUERY_RUNTIMES)}")
    return name


def runtime_for(kind: str, runtime: str) -> str:
    """The concrete runtime (``torch``, ``onnx``, ``onnx-int8``) that ``runtime`` means for a ``sparse`` or ``dense``
    query encoder."""
    return AUTO_RUNTIMES[kind] if check_query_runtime(runtime) == "auto" else runtime


def onnx_cache_dir() -> Path:
    """``$LSR_ONNX_CACHE`` or ``~/.cache/lsr/onnx``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lsr" / "onnx").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- export and cache
def ensure_export(kind: str, ref: ModelRef, model_sha256: str, cache_dir: str | os.PathLike | None = None
                  ) -> tuple[Path, dict]:
    """The cached export of ``kind`` (``splade`` or ``dense``) of a checkpoint: its directory and record.

    Exports (under a file lock, so concurrent processes export once) when there is none, or when the record's
    source hash, export format or any file's sha256 does not match.
    """
    directory = Path(cache_dir or onnx_cache_dir()).expanduser() / model_sha256[:16]
    directory.mkdir(parents=True, exist_ok=True)
    record_path = directory / f"{kind}.json"
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = _stale(directory, record_path, model_sha256)
        if problem is None:
            return directory, json.loads(record_path.read_text())
        log.info("exporting %s model %s to ONNX in %s (%s)", kind, ref.name, directory, problem)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        files, config = _EXPORTERS[kind](ref, directory)
        record = {
            "kind": kind, "format": EXPORT_FORMAT, "opset": OPSET, "config": config,
            "source": {"name": ref.name, "path": str(ref.path), "sha256": model_sha256},
            "files": {role: {"file": name, "sha256": _sha256(directory / name)} for role, name in files.items()},
            "versions": _versions(),
        }
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(record_path)
        return directory, record


def _stale(directory: Path, record_path: Path, model_sha256: str) -> str | None:
    """Why the cached export must be made (again), or None when it can be used."""
    if not record_path.is_file():
        return "no export yet"
    try:
        record = json.loads(record_path.read_text())
        files = list(record["files"].values())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return f"{record_path} is unreadable"
    if record.get("source", {}).get("sha256") != model_sha256:
        return "the record belongs to another model"
    if record.get("format") != EXPORT_FORMAT:
        return f"export format {record.get('format')} is not {EXPORT_FORMAT}"
    for entry in files:
        path = directory / entry["file"]
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            return f"{path} is missing or does not match its sha256"
    return None


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _export_graph(module, out: Path, outputs: list[str], sample: dict) -> None:
    """``torch.onnx.export`` of ``module(input_ids, attention_mask)`` with dynamic batch and length axes."""
    import torch

    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    axes.update({name: {0: "batch", 1: "tokens"} for name in outputs})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices about the transformers code
        torch.onnx.export(module, (sample["input_ids"], sample["attention_mask"]), str(out),
                          input_names=["input_ids", "attention_mask"], output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def _fuse_transformer(path: Path, config) -> None:
    """Rewrite an exported graph with ONNX Runtime's transformer fusions (attention, embedding and skip layer norms,
    bias GELU: fewer, larger kernels). Graphs the fusions do not recognise are left as they are."""
    from onnxruntime.transformers import optimizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                                             hidden_size=config.hidden_size, opt_level=1, use_gpu=False)
    except Exception as error:  # an architecture the optimizer does not know: the plain graph still runs
        log.info("transformer fusion of %s skipped: %s", path.name, error)
        return
    fused.save_model_to_file(str(path))


def _quantize(source: Path, out: Path, nodes: list[str] | None = None, reduce_range: bool = False) -> None:
    """Dynamic int8 quantization (per-channel int8 weights, 7-bit with ``reduce_range``) of the MatMuls ``nodes``
    (None: all)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.Filter()
    quiet.filter = lambda record: "pre-processing before quantization" not in record.getMessage()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"])
    finally:
        logging.getLogger().removeFilter(quiet)


def _save_tokenizer(path: Path, directory: Path) -> tuple[str, int]:
    """Write the checkpoint's fast tokenizer as ``tokenizer.json``; return its name and the padding id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: the model's tokenizer has no fast (tokenizers) version; ONNX queries need one")
    (directory / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    return "tokenizer.json", int(tokenizer.pad_token_id or 0)


def _replace_module(root, old, new) -> None:
    """Put ``new`` where ``old`` sits inside ``root``."""
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError("module not found")


def _export_splade(ref: ModelRef, directory: Path) -> tuple[dict, dict]:
    import torch
    from transformers import AutoModelForMaskedLM

    # eager attention exports the pattern ONNX Runtime's attention fusion recognises (sdpa's does not)
    model = AutoModelForMaskedLM.from_pretrained(str(ref.path), attn_implementation="eager").eval()
    projection = model.get_output_embeddings()
    if not isinstance(projection, torch.nn.Linear):
        raise ValueError(f"{ref.name}: the output embedding is a {type(projection).__name__}, not a Linear layer; "
                         "use --query-runtime torch")
    weight = projection.weight.detach().float().clone()  # [vocab, hidden]
    bias = (projection.bias.detach().float().clone() if projection.bias is not None
            else torch.zeros(weight.shape[0]))
    _replace_module(model, projection, torch.nn.Identity())  # the "logits" are now the head's token states

    class SpladeGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlm = model
            self.register_buffer("projection_t", weight.t().contiguous())

        def forward(self, input_ids, attention_mask):
            states = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
            states = torch.where(attention_mask.unsqueeze(-1) > 0, states, states[:, :1])  # padding: first token
            return torch.matmul(states, self.projection_t), states

    tokenizer_file, pad_id = _save_tokenizer(ref.path, directory)
    sample = {"input_ids": torch.tensor([[101, 2054, 2003, 102], [101, 102, pad_id, pad_id]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}
    sample["input_ids"].clamp_(max=weight.shape[0] - 1)
    fp32, int8 = directory / "splade-fp32.onnx", directory / "splade-int8.onnx"
    _export_graph(SpladeGraph().eval(), fp32, ["logits", "states"], sample)
    _fuse_transformer(fp32, model.config)
    node = _projection_node(fp32, tuple(weight.t().shape))
    _quantize(fp32, int8, [node.name], reduce_range=True)  # 7-bit weights: no int16 saturation on AVX2 CPUs
    np.save(directory / "splade-projection.npy", weight.numpy())
    np.save(directory / "splade-bias.npy", bias.numpy())
    np.save(directory / "splade-int8-error.npy", _int8_error(int8, node.input[1], weight.numpy()))
    files = {"fp32": fp32.name, "int8": int8.name, "tokenizer": tokenizer_file, "projection": "splade-projection.npy",
             "bias": "splade-bias.npy", "int8_error": "splade-int8-error.npy"}
    return files, {"pad_id": pad_id, "vocab_size": int(weight.shape[0]), "hidden": int(weight.shape[1])}


def _projection_node(path: Path, shape: tuple[int, int]):
    """The MatMul node of an exported graph whose constant right operand has ``shape`` (the vocabulary projection)."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {i.name: tuple(i.dims) for i in graph.initializer}
    found = [n for n in graph.node if n.op_type == "MatMul" and constants.get(n.input[1]) == shape]
    if len(found) != 1:
        raise ValueError(f"{path}: expected one vocabulary projection of shape {shape}, found {len(found)}")
    return found[0]


def _matmuls_except_down_projections(path: Path) -> list[str]:
    """MatMul nodes with a constant weight, except the feed-forward down-projections ([wider, narrower] weights).

    Their inputs (after GELU) quantize worst: keeping them fp32 lifts MiniLM's int8 query cosine to the fp32 one
    from 0.994 to 0.997 on average (minimum 0.991 -> 0.996; scifact queries) for part of the speed-up (CPU time per
    query there: fp32 7.2 ms, every MatMul int8 4.7 ms, these int8 6.1 ms)."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {i.name: tuple(i.dims) for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and len(constants.get(n.input[1], ())) == 2
            and constants[n.input[1]][0] <= constants[n.input[1]][1]]


def _int8_error(path: Path, weight_name: str, weight: np.ndarray) -> np.ndarray:
    """Per vocabulary row, the L2 norm of (dequantized int8 weight - fp32 weight) in the quantized graph."""
    import onnx
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    quantized = arrays[f"{weight_name}_quantized"].astype(np.float32)  # [hidden, vocab]
    scale = arrays[f"{weight_name}_scale"].astype(np.float32)
    zero = arrays[f"{weight_name}_zero_point"].astype(np.float32)
    if scale.size == quantized.shape[0] and scale.size != quantized.shape[1]:  # per input channel
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
    dequantized = (quantized - zero) * scale
    return np.linalg.norm(dequantized.T - weight, axis=1).astype(np.float32)


def _export_dense(ref: ModelRef, directory: Path) -> tuple[dict, dict]:
    import torch
    from transformers import AutoModel

    from lsr.dense import pool_tokens, pooling_mode

    model = AutoModel.from_pretrained(str(ref.path), attn_implementation="eager").eval()
    pooling = pooling_mode(ref.path)

    class DenseGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return torch.nn.functional.normalize(pool_tokens(torch, states, attention_mask, pooling), p=2, dim=1)

    tokenizer_file, pad_id = _save_tokenizer(ref.path, directory)
    sample = {"input_ids": torch.tensor([[101, 2054, 2003, 102], [101, 102, pad_id, pad_id]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}
    sample["input_ids"].clamp_(max=model.config.vocab_size - 1)
    fp32, int8 = directory / "dense-fp32.onnx", directory / "dense-int8.onnx"
    _export_graph(DenseGraph().eval(), fp32, ["embedding"], sample)
    _quantize(fp32, int8, _matmuls_except_down_projections(fp32))  # from the unfused graph: every projection a MatMul
    _fuse_transformer(fp32, model.config)
    files = {"fp32": fp32.name, "int8": int8.name, "tokenizer": tokenizer_file}
    return files, {"pad_id": pad_id, "dim": int(model.config.hidden_size), "pooling": pooling, "normalize": True}


_EXPORTERS = {"splade": _export_splade, "dense": _export_dense}


# ---------------------------------------------------------------------- encoders
class _OnnxQueryEncoder:
    """Tokenizer + ONNX Runtime session of a cached export (shared by the SPLADE and dense encoders)."""

    kind = ""

    def __init__(self, model: str | None, default: str, *, int8: bool, query_max_length: int,
                 cache_dir: str | os.PathLike | None, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.ref: ModelRef = resolve_model(model, default)
        self.name = self.ref.name
        self.hash = model_hash(self.ref.path)
        self.runtime = "onnx-int8" if int8 else "onnx"
        self.query_max_length = query_max_length
        self.directory, self.record = ensure_export(self.kind, self.ref, self.hash, cache_dir)
        self.config = self.record["config"]
        self.tokenizer = Tokenizer.from_file(str(self._file("tokenizer")))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(query_max_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self._file("int8" if int8 else "fp32")), options,
                                            providers=["CPUExecutionProvider"])

    def _file(self, role: str) -> Path:
        return self.directory / self.record["files"][role]["file"]

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, truncated to ``query_max_length``."""
        if len(texts) == 1:  # the common single-query case: skips the batch call's overhead
            return [self.tokenizer.encode(texts[0]).ids]
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def _batches(self, texts: Sequence[str], ids: list[list[int]], batch_size: int, skip_blank: bool
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions in ``texts``, input ids, attention mask) of length-sorted, right-padded batches."""
        order = [i for i in np.argsort([len(i) for i in ids], kind="stable") if not skip_blank or texts[i].strip()]
        for start in range(0, len(order), max(int(batch_size), 1)):
            chosen = np.asarray(order[start:start + batch_size], np.int64)
            width = max(len(ids[i]) for i in chosen)
            input_ids = np.full((len(chosen), width), self.config["pad_id"], np.int64)
            mask = np.zeros((len(chosen), width), np.int64)
            for row, i in enumerate(chosen):
                input_ids[row, :len(ids[i])] = ids[i]
                mask[row, :len(ids[i])] = 1
            yield chosen, input_ids, mask


class OnnxSpladeEncoder(_OnnxQueryEncoder):
    """SPLADE query vectors from the ONNX export of a masked-LM checkpoint (fp32, or int8 with exact rescoring)."""

    kind = "splade"

    def __init__(self, model: str | None = None, *, int8: bool = True, query_max_length: int = 64,
                 cache_dir: str | os.PathLike | None = None, threads: int = 1) -> None:
        super().__init__(model, DEFAULT_SPLADE, int8=int8, query_max_length=query_max_length, cache_dir=cache_dir,
                         threads=threads)
        self.vocab_size = int(self.config["vocab_size"])
        self.int8 = int8
        self._bias = np.load(self._file("bias"))
        if int8:
            self._projection = np.load(self._file("projection"))  # [vocab, hidden] fp32, for the exact rescoring
            self._int8_error = np.load(self._file("int8_error"))  # per term: |dequantized int8 row - fp32 row|
            # per term, an upper bound of the L1 norm of the dequantized int8 row: |w_v|_1 + sqrt(H) e_v
            self._error_factor = (np.abs(self._projection).sum(axis=1)
                                  + np.sqrt(self._projection.shape[1]) * self._int8_error).astype(np.float32)
        self._per_thread = threading.local()  # an I/O binding and output buffers reused by each thread's runs

    def encode_query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Term ids (uint32, sorted) and weights (float32 > 0) of one query."""
        return self.encode_queries([text]).row(0)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32) -> SparseBatch:
        """Vectors of many queries (rows in input order; blank texts give empty rows)."""
        rows: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.uint32), np.zeros(0, np.float32))] * len(texts)
        ids = self._token_ids(texts) if texts else []
        for chosen, input_ids, mask in self._batches(texts, ids, min(batch_size, SPLADE_MAX_BATCH), skip_blank=True):
            logits, states = self._run(input_ids, mask)
            if self.int8:
                rescored = self._rescore(logits, states, mask.sum(axis=1))
            else:
                pooled = logits.max(axis=1) + self._bias
                rescored = [(np.flatnonzero(p > 0), p[p > 0]) for p in pooled]
            for i, (terms, logits) in zip(chosen, rescored):
                rows[i] = (terms.astype(np.uint32), np.log1p(logits).astype(np.float32))
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r[0]) for r in rows], out=indptr[1:])
        return SparseBatch(indptr, np.concatenate([r[0] for r in rows] or [np.zeros(0, np.uint32)]),
                           np.concatenate([r[1] for r in rows] or [np.zeros(0, np.float32)]),
                           sum(len(i) >= self.query_max_length for i in ids))

    def _run(self, input_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's logits and states, written into this thread's reused buffers (valid until its next run):
        a fresh multi-megabyte logits array per query would cost page faults on every run."""
        local = self._per_thread
        if not hasattr(local, "binding"):
            local.binding, local.logits, local.states = self.session.io_binding(), np.empty(0, np.float32), None
        batch, width = input_ids.shape
        size = batch * width * self.vocab_size
        if local.logits.size < size:
            local.logits = np.empty(size, np.float32)
            local.states = np.empty(batch * width * int(self.config["hidden"]), np.float32)
        logits = local.logits[:size].reshape(batch, width, self.vocab_size)
        states = local.states[:batch * width * int(self.config["hidden"])].reshape(batch, width, -1)
        binding = local.binding
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        binding.bind_output("states", "cpu", 0, np.float32, states.shape, states.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits, states

    def _rescore(self, logits: np.ndarray, states: np.ndarray, lengths: np.ndarray
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact fp32 max-pooled logits of every term the int8 logits cannot rule out; the positive ones per row.

        Dynamic quantization rounds each activation to the batch's uint8 step ``s`` (error ``d`` with ``|d_i| <= s/2``)
        and each weight row with an error ``e_v`` (L2); ``(h + d)(w_v + e_v) - h w_v = d (w_v + e_v) + h e_v``, so
        ``|int8 - fp32| <= s/2 |w_v + e_v|_1 + |h| |e_v|``.
        """
        step = (max(float(states.max()), 0.0) - min(float(states.min()), 0.0)) / 255.0
        activation_error = np.float32(step / 2)
        return [_pool_rescore(logits[row, :n], states[row, :n], self._projection, self._bias, self._error_factor,
                              self._int8_error, activation_error)
                for row, n in enumerate(lengths)]

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.hash, "runtime": self.runtime, "vocab_size": self.vocab_size,
                "query_max_length": self.query_max_length, "export": str(self.directory)}


@njit(cache=True, nogil=True, fastmath=True)
def _pool_rescore(approx: np.ndarray, tokens: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                  error_factor: np.ndarray, weight_error: np.ndarray, activation_error: np.float32
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Terms whose exact ``max over tokens of tokens @ weight[term] + bias[term]`` is positive, and those logits.

    One pass over the int8 logits ``approx`` [tokens, vocabulary], in vocabulary chunks that stay in cache: max-pool
    a chunk, then compute in fp32 the terms whose pooled int8 logit plus its error bound is positive (one thread)."""
    n_tokens, vocab = approx.shape
    norm = np.float32(0.0)
    for t in range(n_tokens):
        norm = max(norm, np.sqrt(np.sum(tokens[t] * tokens[t])))
    terms = np.empty(vocab, np.int64)
    logits = np.empty(vocab, np.float32)
    found = 0
    chunk = 1024
    pooled = np.empty(chunk, np.float32)
    for start in range(0, vocab, chunk):
        width = min(chunk, vocab - start)
        pooled[:width] = approx[0, start:start + width]
        for t in range(1, n_tokens):
            row = approx[t, start:start + width]
            for i in range(width):
                pooled[i] = max(pooled[i], row[i])
        for i in range(width):
            v = start + i
            bound = activation_error * error_factor[v] + norm * weight_error[v] + np.float32(1e-3)
            if pooled[i] + bias[v] + bound <= 0:
                continue
            row = weight[v]
            best = np.float32(-np.inf)
            for t in range(n_tokens):
                acc = np.float32(0.0)
                for d in range(tokens.shape[1]):
                    acc += tokens[t, d] * row[d]
                best = max(best, acc)
            best += bias[v]
            if best > 0:
                terms[found] = v
                logits[found] = best
                found += 1
    return terms[:found].copy(), logits[:found].copy()


class OnnxDenseEncoder(_OnnxQueryEncoder):
    """Sentence embeddings of queries from the ONNX export of a sentence-transformers checkpoint."""

    kind = "dense"

    def __init__(self, model: str | None = None, *, int8: bool = True, query_max_length: int = 64,
                 cache_dir: str | os.PathLike | None = None, threads: int = 1) -> None:
        super().__init__(model, DEFAULT_DENSE, int8=int8, query_max_length=query_max_length, cache_dir=cache_dir,
                         threads=threads)
        self.dim = int(self.config["dim"])

    def encode_query(self, text: str) -> np.ndarray:
        """Embedding [dim] of one query."""
        return self.encode_queries([text])[0]

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings [n, dim] float32. The int8 graph encodes one text per run: its activations are quantized with
        one scale per run, which would make a query's embedding depend on the queries batched with it."""
        if self.runtime == "onnx-int8":
            batch_size = 1
        out = np.zeros((len(texts), self.dim), np.float32)
        ids = self._token_ids(texts) if texts else []
        for chosen, input_ids, mask in self._batches(texts, ids, batch_size, skip_blank=False):
            out[chosen] = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        return out


def open_onnx_encoder(kind: str, model_info: dict, runtime: str, **kwargs):
    """The ONNX query encoder (``kind`` ``sparse`` or ``dense``) of an index's recorded model (``name``,
    ``query_max_length``) in ``runtime`` ``onnx``, ``onnx-int8`` or ``auto``. The caller checks its ``hash``."""
    runtime = runtime_for(kind, runtime)
    if runtime == "torch":
        raise ValueError("the torch runtime is the model itself, not an ONNX export")
    cls = OnnxSpladeEncoder if kind == "sparse" else OnnxDenseEncoder
    return cls(model_info["name"], int8=runtime == "onnx-int8",
               query_max_length=int(model_info.get("query_max_length") or 64), **kwargs)

