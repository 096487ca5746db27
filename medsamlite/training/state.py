"""Training checkpoints: atomic step folders (rank 0's state plus each rank's RNG), the newest k kept.

A checkpoint is `OUTPUT/checkpoints/step-00000400/` holding `state.pt` (model, optimiser,
scheduler, scaler, step, sampler position, history; written by rank 0) and `rng-<rank>.pt` (each
rank's torch, CUDA, numpy and Python RNG states). It is written under a temporary name and renamed
when every rank has written its part, so a crash never leaves a half checkpoint behind. Everything
is plain tensors and numbers, read back with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.files import replace_dir

CHECKPOINTS, STATE_FILE = "checkpoints", "state.pt"
_STEP = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict[str, Any]:
    """This process's RNG states as weights-only-loadable values."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos,
                                                       has_gauss, gauss], "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = [p for p in root.iterdir() if _STEP.match(p.name) and (p / STATE_FILE).exists()] if root.is_dir() else []
    return sorted(found)


def find_checkpoint(resume: str | Path) -> Path:
    """A checkpoint folder, or the newest one of an output folder."""
    path = Path(resume)
    if (path / STATE_FILE).exists():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path}: no training checkpoint to resume from (expected {STATE_FILE} or "
                                f"{CHECKPOINTS}/step-*/{STATE_FILE})")
    return found[-1]


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """Where a checkpoint is written before it is renamed into place."""
    final = checkpoint_dir(output_dir, step)
    return final.with_name(f".{final.name}.tmp")


def write_rank_part(output_dir: str | Path, step: int, rank: int) -> None:
    """Each rank's RNG state into the staging folder (after rank 0 created it)."""
    torch.save(rng_state(), staging_dir(output_dir, step) / f"rng-{rank}.pt")


def begin(output_dir: str | Path, step: int, state: dict[str, Any]) -> None:
    """Rank 0: a fresh staging folder holding `state.pt`."""
    tmp = staging_dir(output_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)


def commit(output_dir: str | Path, step: int, keep: int) -> Path:
    """Rank 0, once every rank wrote its part: rename into place, drop all but the newest `keep`."""
    final = checkpoint_dir(output_dir, step)
    replace_dir(staging_dir(output_dir, step), final)
    for old in list_checkpoints(output_dir)[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A checkpoint's state and this rank's RNG state (None if that rank did not exist then)."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    missing = {"model", "optimizer", "scheduler", "step", "epoch", "position"} - set(state)
    if missing:
        raise ValueError(f"{path / STATE_FILE}: not a medsamlite training checkpoint (missing {sorted(missing)})")
    rng_path = path / f"rng-{rank}.pt"
    rng = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.exists() else None
    return state, rng
