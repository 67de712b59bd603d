"""The loss of one training batch (see :mod:`lsr.training`): contrastive cross-entropy against in-batch and hard
negatives, FLOPS / IDF-FLOPS / ℓ0 regularisation with the quadratic lambda warm-up, and teacher distillation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lsr.training.config import TrainConfig
from lsr.training.data import TrainingData
from lsr.training.model import SpladeModel

L0_EPS = 0.1


@dataclass
class BatchLoss:
    """``loss(batch, epoch, step)`` -> (loss tensor, its parts as floats) for a batch of example positions.

    Negative sampling is a pure function of (seed, epoch, example), so a resumed run sees the same batches.
    """

    net: SpladeModel
    data: TrainingData
    cfg: TrainConfig
    negatives: dict[str, list[str]]  # mined hard negatives per query
    doc_tokens: dict[str, list[int]]
    query_tokens: dict[str, list[int]]
    idf: torch.Tensor | None  # inference-free query weights / IDF-FLOPS weights
    reg_warmup: int  # steps of the quadratic lambda warm-up

    def negatives_for(self, example: int, epoch: int) -> list[str]:
        """Hard negatives of one example: sampled from the teacher's top non-positives, else from the mined ones."""
        data, cfg = self.data, self.cfg
        qid = data.examples[example][0]
        pool = [d for d, _ in sorted(data.teacher.get(qid, {}).items(), key=lambda x: -x[1])
                if d not in data.positives[qid]] or self.negatives.get(qid, [])
        pool = pool[: cfg.negatives_depth]
        if not pool or cfg.negatives == 0:
            return []
        rng = np.random.default_rng([cfg.seed, epoch, example])
        return [pool[i] for i in rng.choice(len(pool), size=min(cfg.negatives, len(pool)), replace=False)]

    def doc_reg(self, docs: torch.Tensor) -> torch.Tensor:
        """The document regulariser: FLOPS, IDF-weighted FLOPS or the ℓ0 relaxation."""
        if self.cfg.doc_reg == "l0":
            return (1 - torch.exp(-docs / L0_EPS)).sum(dim=1).mean()
        flops = docs.mean(dim=0) ** 2
        if self.cfg.doc_reg == "idf-flops":
            flops = flops / (1 + self.idf)
        return flops.sum()

    def queries(self, qids: list[str]) -> torch.Tensor:
        """Query vectors: encoded by the model, or the IDF of their tokens (inference-free)."""
        net = self.net
        if self.cfg.query_encoder != "inference-free":
            return net.encode([self.query_tokens[q] for q in qids])
        Q = torch.zeros(len(qids), net.vocab_size, device=net.device)
        for r, q in enumerate(qids):
            ids = sorted(set(self.query_tokens[q]) - set(net.tokenizer.all_special_ids))
            Q[r, ids] = self.idf[ids]
        return Q

    def __call__(self, batch: np.ndarray, epoch: int, step: int) -> tuple[torch.Tensor, dict]:
        data, cfg, device = self.data, self.cfg, self.net.device
        exs = [data.examples[i] for i in batch]
        negs = [self.negatives_for(int(i), epoch) for i in batch]
        docs = [d for _, d in exs] + [d for ns in negs for d in ns]
        D = self.net.encode([self.doc_tokens[d] for d in docs])
        Q = self.queries([q for q, _ in exs])
        S = Q @ D.T
        block = torch.zeros_like(S, dtype=torch.bool)  # documents relevant to a query other than its target
        for r, (q, _) in enumerate(exs):
            for c, d in enumerate(docs):
                if c != r and d in data.positives[q]:
                    block[r, c] = True
        ce = F.cross_entropy(S.masked_fill(block, float("-inf")), torch.arange(len(exs), device=device))
        ramp = min(1.0, (step + 1) / self.reg_warmup) ** 2
        reg_q = (Q.mean(dim=0) ** 2).sum() if cfg.query_encoder == "model" else torch.zeros((), device=device)
        reg_d = self.doc_reg(D)
        loss = ce + ramp * (cfg.lambda_q * reg_q + cfg.lambda_d * reg_d)
        parts = {"ce": ce.item(), "reg_q": reg_q.item(), "reg_d": reg_d.item()}
        if data.teacher:
            kd = self.distill(S, exs, negs)
            if kd is not None:
                loss = loss + cfg.distill_weight * kd
                parts["distill"] = kd.item()
        with torch.no_grad():
            parts["nnz_q"] = float((Q > 0).sum(dim=1).float().mean())
            parts["nnz_d"] = float((D > 0).sum(dim=1).float().mean())
        parts["loss"] = loss.item()
        return loss, parts

    def distill(self, S: torch.Tensor, exs: list[tuple[str, str]], negs: list[list[str]]) -> torch.Tensor | None:
        """Margin-MSE or KL between the teacher's and the student's scores of each query's positive and negatives
        (queries whose positive or every negative lacks a teacher score are left out; None if all are)."""
        terms = []
        offset = len(exs)
        for r, ((q, pos), ns) in enumerate(zip(exs, negs)):
            t = self.data.teacher.get(q, {})
            cols = [(r, pos)] + [(offset + j, d) for j, d in enumerate(ns)]
            offset += len(ns)
            scored = [(c, t[d]) for c, d in cols if d in t]
            if len(scored) < 2 or cols[0][1] not in t:
                continue
            s = S[r, [c for c, _ in scored]]
            tt = torch.tensor([v for _, v in scored], device=S.device, dtype=S.dtype)
            if self.cfg.distill == "margin-mse":
                terms.append((((s[0] - s[1:]) - (tt[0] - tt[1:])) ** 2).mean())
            else:
                terms.append(F.kl_div(F.log_softmax(s, 0), F.log_softmax(tt, 0), log_target=True, reduction="sum"))
        return torch.stack(terms).mean() if terms else None
