"""Training checkpoints: model, optimizer, LR schedule, RNG state and progress, written atomically; the last few
kept."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from lsr.training.model import SpladeModel


def checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("step-*") if re.fullmatch(r"step-\d+", p.name)
             and (p / "progress.json").is_file() and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(root: Path, net: SpladeModel, optimizer, scheduler, progress: dict, keep: int) -> Path:
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
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final
