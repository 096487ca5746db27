"""Fine-tuning of a `SamLite` on box-prompted items (LiteMedSAM's recipe by default).

AdamW (lr 5e-5, weight decay 0.01), ReduceLROnPlateau on the validation loss (factor 0.9,
patience 5), early stopping on the validation loss, the best model saved with
`checkpoints.save_model`, a training state for resuming (model, optimizer, scheduler, epoch, step)
and a CSV log. The trainable parameters are those with `requires_grad` after the named parts are
frozen, so an adapter method that froze the base model beforehand keeps its choice; `after_step`
runs after every optimiser step (e.g. ARENA's proximal step).

Every epoch draws from generators seeded with (seed, epoch): shuffling, the dataset's augmentation
(`set_epoch`) and torch's RNG. A run resumed from epoch k therefore repeats, step for step, what an
uninterrupted run does from epoch k.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from tqdm.auto import tqdm

from ..checkpoints import save_model
from .config import FinetuneConfig
from .frozen import train_mode
from .losses import BoxLoss, get_loss

STATE_FILE, LOG_FILE, BEST_DIR = "last.pt", "log.csv", "best"
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_dsc", "lr", "seconds")


@dataclass
class FinetuneResult:
    """What a fine-tuning run did; `history` holds the CSV log's rows."""

    output_dir: Path
    epochs: int
    steps: int
    best_val_loss: float
    best_epoch: int | None
    stopped_early: bool
    history: list[dict[str, float]]


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def freeze(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Set `requires_grad=False` on parameters whose name is or starts with one of `names` + '.'; returns them."""
    names = tuple(names)
    params = dict(model.named_parameters())
    unknown = [n for n in names if not any(k == n or k.startswith(n + ".") for k in params)]
    if unknown:
        roots = sorted({k.split(".")[0] for k in params})
        raise ValueError(f"freeze names {unknown} match no parameter; top-level parts: {roots}")
    frozen = [k for k in params if any(k == n or k.startswith(n + ".") for n in names)]
    for k in frozen:
        params[k].requires_grad_(False)
    return frozen


def set_epoch(obj: Any, epoch: int) -> None:
    """Call `obj.set_epoch(epoch)` where it exists (datasets, samplers, loaders' datasets and samplers)."""
    for target in (obj, getattr(obj, "dataset", None), getattr(obj, "sampler", None),
                   getattr(getattr(obj, "batch_sampler", None), "sampler", None)):
        if target is not None and callable(getattr(target, "set_epoch", None)):
            target.set_epoch(epoch)


def epoch_loader(data: Dataset | DataLoader, epoch: int, batch_size: int, num_workers: int, seed: int,
                 sampler: Sampler | None = None, shuffle: bool = True) -> DataLoader:
    """This epoch's loader: a given DataLoader as is, else one shuffled by a (seed, epoch) generator."""
    set_epoch(data, epoch)
    if sampler is not None:
        set_epoch(sampler, epoch)
    if isinstance(data, DataLoader):
        return data
    if sampler is None and shuffle:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    return DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())


class CsvLog:
    """Append rows to a CSV file, writing the header once."""

    def __init__(self, path: Path, columns: tuple[str, ...], append: bool) -> None:
        self.path, self.columns = path, columns
        if not (append and path.exists()):
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(columns)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in self.columns])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a half-written state."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_best(model: nn.Module, directory: Path) -> None:
    """`save_model` into a temporary folder, then swap it in for `directory`."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def dice_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample DSC of `logits > 0` (sigmoid > 0.5) with `target > 0.5`; 1 where both are empty."""
    pred, ref = (logits > 0).flatten(1), (target > 0.5).flatten(1)
    inter = (pred & ref).sum(1).float()
    total = (pred.sum(1) + ref.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a collated batch moved to `device`; other entries (names, modalities) as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def box_loss_step(model: nn.Module, loss_fn: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward one batch of box-prompted items: (loss, logits)."""
    logits, iou = model(batch["image"], batch["box"])
    return loss_fn(logits, batch["mask"], iou), logits


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, loss_fn: nn.Module, batch_size: int = 4,
             num_workers: int = 0, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean loss and mean DSC over `data`, in order, in eval mode (the dataset's epoch is left as is)."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False,
                                                                  num_workers=num_workers)
    was_training = model.training
    model.eval()
    total_loss, dsc, n = 0.0, 0.0, 0
    for batch in loader:
        batch = to_device(batch, torch.device(device))
        loss, logits = box_loss_step(model, loss_fn, batch)
        b = logits.shape[0]
        total_loss += float(loss) * b
        dsc += float(dice_scores(logits, batch["mask"]).sum())
        n += b
    if was_training:
        train_mode(model)
    if n == 0:
        raise ValueError("validation data is empty")
    return total_loss / n, dsc / n


def _load_state(resume: str, device: torch.device) -> dict:
    path = Path(resume)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training state to resume from (expected a file written by finetune)")
    try:  # tensors and plain containers only: a training state never needs code from the file
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable finetune training state ({type(error).__name__}: "
                         f"{(str(error).strip().splitlines() or [''])[0][:200]})") from None
    missing = {"model", "optimizer", "scheduler", "epoch", "step"} - set(state)
    if missing:
        raise ValueError(f"{path}: not a finetune training state (missing {sorted(missing)})")
    return state


def finetune(model: nn.Module, train_data: Dataset | DataLoader, val_data: Dataset | DataLoader | None = None,
             config: FinetuneConfig | None = None, *, sampler: Sampler | None = None,
             after_step: Callable[[nn.Module, torch.optim.Optimizer], None] | None = None,
             save: Callable[[nn.Module, Path], None] = save_best) -> FinetuneResult:
    """Fine-tune `model` on `train_data` items (`image`, `box`, `mask`; e.g. `NpzSliceDataset`).

    `val_data` (a case split, without augmentation) drives the scheduler, early stopping and the
    best checkpoint (`output_dir/best`, written by `save`); without it, the training loss does.
    `sampler` (e.g. `ModalityBalancedSampler`) replaces shuffling; its `set_epoch` is called.
    """
    config = config or FinetuneConfig()
    device = resolve_device(config.device)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    loss_fn = get_loss(config.loss, **config.loss_kwargs)
    if not isinstance(loss_fn, BoxLoss):
        raise ValueError(f"loss {config.loss!r} is not a box-prompted loss (logits, mask, iou); finetune trains "
                         "one mask per box — partial-label losses need a multi-class head")
    model.to(device)
    loss_fn.to(device)
    freeze(model, config.freeze)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                           patience=config.plateau_patience)
    start_epoch, step, best, best_epoch, since_best, history = 0, 0, math.inf, None, 0, []
    if config.resume:
        state = _load_state(config.resume, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        best, best_epoch, since_best = state["best_val_loss"], state["best_epoch"], state["epochs_since_best"]
        history = state["history"]
    log = CsvLog(out / LOG_FILE, LOG_COLUMNS, append=bool(config.resume))
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        if config.max_steps is not None and step >= config.max_steps:
            break
        start = time.perf_counter()
        torch.manual_seed(epoch_seed(config.seed, epoch))
        loader = epoch_loader(train_data, epoch, config.batch_size, config.num_workers, config.seed, sampler)
        train_mode(model)  # frozen modules (BatchNorm statistics, dropout) stay in eval mode
        losses = []
        for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not config.progress, leave=False):
            loss, _ = box_loss_step(model, loss_fn, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step(model, optimizer)
            losses.append(float(loss.detach()))
            step += 1
            if config.max_steps is not None and step >= config.max_steps:
                break
        train_loss = float(np.mean(losses)) if losses else math.nan
        if val_data is not None:
            val_loss, val_dsc = evaluate(model, val_data, loss_fn, config.batch_size, config.num_workers, device)
        else:
            val_loss, val_dsc = train_loss, math.nan
        scheduler.step(val_loss)
        if val_loss < best:
            best, best_epoch, since_best = val_loss, epoch, 0
            save(model, out / BEST_DIR)
        else:
            since_best += 1
        row = dict(epoch=epoch, step=step, train_loss=train_loss, val_loss=val_loss, val_dsc=val_dsc,
                   lr=optimizer.param_groups[0]["lr"], seconds=round(time.perf_counter() - start, 3))
        history.append(row)
        log.write(row)
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
                           "best_val_loss": best, "best_epoch": best_epoch, "epochs_since_best": since_best,
                           "history": history, "config": dataclasses.asdict(config)}, out / STATE_FILE)
        if config.early_stopping_patience is not None and since_best >= config.early_stopping_patience:
            stopped_early = True
            break
    model.eval()
    return FinetuneResult(out, len(history), step, best, best_epoch, stopped_early, history)
