"""Resumable checkpoints: written to a temp file and renamed, so a kill mid-write loses nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, **state: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class LossLog:
    """Appends `step,loss[,extra]` lines to a CSV next to the checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, **values: float) -> None:
        new = not self.path.exists()
        with self.path.open("a") as f:
            if new:
                f.write(",".join(["step", *values]) + "\n")
            f.write(",".join([str(step), *(f"{v:.6g}" for v in values.values())]) + "\n")
