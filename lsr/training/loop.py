"""The training loop: resume point, data order, optimizer and LR schedule, checkpoints, the saved model and report."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsr.evaluation.results import portable_model, portable_path
from lsr.training.checkpoints import checkpoints, save_checkpoint
from lsr.training.config import REPORT, RUN_DIR, TrainConfig, TrainError
from lsr.training.data import TrainingData, load_training_data
from lsr.training.model import SpladeModel
from lsr.training.negatives import cached_negatives, query_idf_table

log = logging.getLogger(__name__)


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
    """Fine-tune ``cfg.model`` on the pairs; write the checkpoint to ``out`` (see :mod:`lsr.training`).

    ``resume`` continues from the last checkpoint in ``out`` (which must have been made with the same settings
    and data). ``_stop_after`` (tests) stops after that many steps, as an interruption would.
    """
    import torch

    from lsr.encoder import default_device
    from lsr.models import DEFAULT_SPLADE, resolve_model
    from lsr.training.loss import BatchLoss  # torch at import time: only when training

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
    existing = checkpoints(ckpt_root) if ckpt_root.is_dir() else []
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
    t_mine = time.time()
    negatives = cached_negatives(data, cfg, run, cache, {"model": str(start_ref.path), "data": key["data"]})
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
    load_seconds = time.time() - t_load - mine_seconds

    step_loss = BatchLoss(net, data, cfg, negatives, doc_tokens, query_tokens, idf,
                          reg_warmup=max(1, int(cfg.reg_warmup_ratio * total)))

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
                save_checkpoint(ckpt_root, net, optimizer, scheduler, progress, cfg.keep_checkpoints)
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
        "model": portable_path(out),
        "start_model": {"name": portable_model(start_ref.name), "path": portable_path(start_ref.path)},
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
