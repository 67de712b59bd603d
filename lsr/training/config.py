"""The settings of a training run, checked, and the names of the run's files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RUN_DIR = "lsr_train"  # inside the output directory; a subdirectory, so not part of the checkpoint's model hash
REPORT = "report.json"
HARD_NEGATIVES = ("bm25", "sparse", "none")
DOC_REGS = ("flops", "idf-flops", "l0")
DISTILL = ("margin-mse", "kl")


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
