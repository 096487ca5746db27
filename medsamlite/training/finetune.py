"""Fine-tuning of a `SamLite` on box-prompted items, as a task of the one training loop (`training.loop`).

AdamW (lr 5e-5, weight decay 0.01, LiteMedSAM's), warmup + cosine, the validation loss at each
epoch's end choosing the best model (`output_dir/best`) and stopping early, the final model in
`output_dir/model` (`checkpoints.save_model`). The trainable parameters are those with
`requires_grad` after the named parts are frozen, so an adapter method that froze the base model
beforehand keeps its choice; frozen named parts stay in eval mode, and a frozen image encoder computes
each distinct image once (`embedding_cache` images kept), so its steps cost the heads alone. Items hold
one target (`box`, `mask`) or K (`boxes`, `masks`, `valid`): the image is encoded once and all its valid boxes go
through the decoder in one call; the loss is averaged over the valid masks. With `interactive` > 0, each
step also trains that many rounds of simulated clicks (`training.interactive`).

Partial labels (MultiTalent's, the FMLLM tutorial's): with a partial-label loss (`partial_bce_dice`,
`partial_bce`, `partial_dice`) the model's class outputs are trained instead (`SamLite.decode_classes`:
C learned class-prompt tokens beside each box, added by `factory.with_classes`). The items carry
`targets` (C, m, m) and `annotated` (C,) (a dataset with `num_classes`); each box's target for class c
is class c's mask inside the box, and the classes its source data set does not annotate get exactly
zero gradient (`PartialLabelLoss`): unknown, not background.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import save_model
from ..constants import DECODERS
from ..data.samplers import StreamSampler
from ..runtime.files import atomic_dir
from .config import FinetuneConfig, TrainConfig
from .frozen import cached_if_frozen, train_mode
from .interactive import InteractiveForward, interactive_loss
from .loop import Task, TrainResult, to_device, train
from .losses import BoxLoss, PartialLabelLoss, get_loss

BEST_DIR, MODEL_DIR = "best", "model"


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


def save_best(model: nn.Module, directory: Path) -> None:
    """`save_model` into a folder that replaces `directory` atomically."""
    with atomic_dir(directory) as tmp:
        save_model(model, tmp)


def dice_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample DSC of `logits > 0` (sigmoid > 0.5) with `target > 0.5`; 1 where both are empty."""
    pred, ref = (logits > 0).flatten(1), (target > 0.5).flatten(1)
    inter = (pred & ref).sum(1).float()
    total = (pred.sum(1) + ref.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's valid boxes (N, 4), masks (N, 1, m, m) and the image each belongs to (N,)."""
    if "boxes" in batch:  # K targets per image, padded rows marked invalid
        valid = batch["valid"].bool()
        return batch["boxes"][valid], batch["masks"][valid], valid.nonzero()[:, 0]
    return batch["box"], batch["mask"], torch.arange(len(batch["box"]), device=batch["box"].device)


def box_region(boxes: torch.Tensor, size: int, frame: int) -> torch.Tensor:
    """(N, 1, size, size) bool: the pixels of a size x size mask (covering the S = `frame` square) inside each box."""
    centres = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) * (frame / size)
    inside_x = (centres >= boxes[:, 0:1]) & (centres <= boxes[:, 2:3])
    inside_y = (centres >= boxes[:, 1:2]) & (centres <= boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)


def class_targets(batch: dict, boxes: torch.Tensor, owner: torch.Tensor, frame: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box's per-class targets (N, C, m, m), its image's classes inside the box, and annotation flags (N, C)."""
    if "targets" not in batch or "annotated" not in batch:
        raise ValueError("a partial-label loss needs items with 'targets' (C, m, m) and 'annotated' (C,); "
                         "expected a dataset built with num_classes=C")
    targets = batch["targets"][owner]
    return targets * box_region(boxes, targets.shape[-1], frame).to(targets.dtype), batch["annotated"][owner]


class BoxForward(nn.Module):
    """One encoder pass per image, then every box of the batch through the decoder: in one call (dense), or
    per image on its box-independent part computed once (factorised: the same loss and gradients to rounding;
    decoder forward + backward of 8 boxes on one image 1.35 -> 0.70 s, 1 box 0.17 -> 0.23 s, CPU).
    `classes=True`: each box's per-class logits (`SamLite.decode_classes`) instead of its one mask.
    `encoder` (a `CachedEncoder` of the model's frozen encoder) replaces `model.encode`."""

    def __init__(self, model: nn.Module, decoder: str = "dense", classes: bool = False,
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
        self.model, self.decoder, self.classes, self.encoder = model, decoder, classes, encoder

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.model.encode(images) if self.encoder is None else self.encoder(images)
        decode = self.model.decode_classes if self.classes else self.model.decode
        if self.decoder == "dense":
            return decode(embeddings if len(images) == 1 else embeddings[owner], boxes)
        rows = [(owner == i).nonzero()[:, 0] for i in range(len(images))]
        parts = [decode(embeddings[i:i + 1], boxes[r], decoder="factorised")
                 for i, r in enumerate(rows) if len(r)]
        order = torch.cat([r for r in rows if len(r)])
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=order.device)  # each box's row in the batch again
        return torch.cat([p[0] for p in parts])[back], torch.cat([p[1] for p in parts])[back]


def box_loss(forward: nn.Module, loss_fn: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss over the batch's valid masks, logits, masks)."""
    boxes, masks, owner = targets(batch)
    logits, iou = forward(batch["image"], boxes, owner)
    return loss_fn(logits.float(), masks, iou.float()), logits, masks


def class_loss(forward: nn.Module, loss_fn: nn.Module, batch: dict, frame: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(partial-label loss over the batch's valid boxes, per-class logits, targets, annotated); `frame`: box frame S."""
    boxes, _, owner = targets(batch)
    logits, _ = forward(batch["image"], boxes, owner)
    masks, annotated = class_targets(batch, boxes, owner, frame)
    return loss_fn(logits.float(), masks, annotated), logits, masks, annotated


def scored_loss(forward: nn.Module, loss_fn: nn.Module, batch: dict, frame: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, DSC of each scored mask): each valid box's mask, or with a partial-label loss its annotated classes."""
    if isinstance(loss_fn, PartialLabelLoss):
        loss, logits, masks, annotated = class_loss(forward, loss_fn, batch, frame)
        kept = annotated.bool()
        return loss, dice_scores(logits[kept], masks[kept])
    loss, logits, masks = box_loss(forward, loss_fn, batch)
    return loss, dice_scores(logits, masks)


@torch.no_grad()
def evaluation_sums(model: nn.Module, data: Dataset | DataLoader, loss_fn: nn.Module, batch_size: int = 4,
                    num_workers: int = 0, device: torch.device | str | None = None,
                    encoder: nn.Module | None = None) -> tuple[float, float, int]:
    """(loss summed over masks, DSC summed over masks, masks) over `data` in eval mode; a shard's part of `evaluate`.

    With a partial-label loss the masks are each box's annotated classes; `encoder` as `BoxForward` takes it."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False,
                                                                  num_workers=num_workers)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    classes = isinstance(loss_fn, PartialLabelLoss)
    forward = BoxForward(model, classes=classes, encoder=encoder)
    frame = model.config.box_frame if classes else 0  # the box path needs no frame (and adapted models no config)
    total_loss, dsc, n = 0.0, 0.0, 0
    for batch in loader:
        loss, scores = scored_loss(forward, loss_fn, to_device(batch, device), frame)
        total_loss += float(loss) * len(scores)
        dsc += float(scores.sum())
        n += len(scores)
    if was_training:
        train_mode(model)
    return total_loss, dsc, n


def evaluate(model: nn.Module, data: Dataset | DataLoader, loss_fn: nn.Module, batch_size: int = 4,
             num_workers: int = 0, device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean loss and DSC per mask over `data`, in order, in eval mode (the dataset's epoch is left as is)."""
    total_loss, dsc, n = evaluation_sums(model, data, loss_fn, batch_size, num_workers, device)
    if n == 0:
        raise ValueError("validation data is empty")
    return total_loss / n, dsc / n


class FinetuneTask(Task):
    """Box-prompted mask loss of `model` (its named parts frozen), or with a partial-label loss the masked loss of
    its class outputs; `save` writes best and final models."""

    name = "finetune"

    def __init__(self, model: nn.Module, loss_fn: nn.Module, frozen: Iterable[str] = ("prompt_encoder",),
                 save: Callable[[nn.Module, Path], None] = save_best, decoder: str = "dense",
                 interactive: int = 0, embedding_cache: int = 0) -> None:
        self.classes = isinstance(loss_fn, PartialLabelLoss)
        if not self.classes and not isinstance(loss_fn, BoxLoss):
            raise ValueError(f"loss {type(loss_fn).__name__} is neither a box-prompted loss (logits, mask, iou) "
                             "nor a partial-label loss (logits, targets, annotated)")
        if self.classes and not getattr(model.config, "num_classes", 0):
            raise ValueError(f"loss {type(loss_fn).__name__} trains class outputs and model '{model.config.name}' "
                             "has none (num_classes 0): box-prompted finetuning takes litemedsam, daft or "
                             "dice_focal; add class outputs with --num-classes (factory.with_classes)")
        if interactive and (decoder != "dense" or self.classes):
            raise ValueError("interactive fine-tuning feeds the previous mask back, which only the dense decoder "
                             f"takes, and trains box masks, not class outputs; got decoder={decoder!r}"
                             + (f", loss {type(loss_fn).__name__}" if self.classes else ""))
        self.model, self.loss_fn, self.save, self.interactive = model, loss_fn, save, interactive
        freeze(model, frozen)
        self.encoder = cached_if_frozen(model, embedding_cache)  # a frozen encoder's steps cost the heads only
        self.forward = (InteractiveForward(model, interactive, self.encoder) if interactive
                        else BoxForward(model, decoder, self.classes, self.encoder))

    def module(self) -> nn.Module:
        return self.forward

    def to(self, device: torch.device) -> None:
        self.loss_fn.to(device)

    def train_mode(self) -> None:
        train_mode(self.model)  # frozen BatchNorm statistics and dropout stay as trained

    def step(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, int, int]:
        if self.classes:
            loss, logits, _, _ = class_loss(module, self.loss_fn, batch, self.model.config.box_frame)
            return loss, len(batch["image"]), logits.shape[:2].numel()  # masks: boxes x classes
        if self.interactive:
            boxes, masks, owner = targets(batch)
            loss, logits = interactive_loss(module, self.loss_fn, batch, boxes, masks, owner)
        else:
            loss, logits, _ = box_loss(module, self.loss_fn, batch)
        return loss, len(batch["image"]), len(logits)

    def evaluate(self, data: Dataset, config: TrainConfig, device: torch.device) -> tuple[float, float, int]:
        return evaluation_sums(self.model, data, self.loss_fn, config.batch_size, config.num_workers, device,
                               self.encoder)

    def save_best(self, output_dir: Path) -> None:
        self.save(self.model, output_dir / BEST_DIR)

    def finish(self, output_dir: Path, main: bool) -> None:
        self.model.eval()
        if main:
            self.save(self.model, output_dir / MODEL_DIR)


def finetune(model: nn.Module, train_data: Dataset, val_data: Dataset | None = None,
             config: FinetuneConfig | None = None, *, sampler: StreamSampler | None = None,
             after_step: Callable[[nn.Module, Any], None] | None = None,
             save: Callable[[nn.Module, Path], None] = save_best, run_info: dict | None = None) -> TrainResult:
    """Fine-tune `model` on `train_data` items (e.g. `NpzSliceDataset`) with the one loop.

    `val_data` (a case split, without augmentation) picks the best model (`output_dir/best`, written
    by `save`) and drives early stopping; `sampler` (e.g. `ModalityBalancedSampler`) replaces shuffling.
    """
    config = config or FinetuneConfig()
    task = FinetuneTask(model, get_loss(config.loss, **config.loss_kwargs), config.freeze, save, config.decoder,
                        config.interactive, config.embedding_cache)
    return train(task, train_data, config, val_data=val_data, sampler=sampler, after_step=after_step,
                 run_info=run_info)
