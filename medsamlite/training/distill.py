"""Encoder distillation as a task of the one loop: a student's image encoder learns a frozen teacher's embeddings.

The loss is the embedding MSE plus, with `mask_weight` > 0, a mask term: for `mask_boxes` random boxes
per image, the teacher's frozen decoder turns the student's and the teacher's embeddings into masks, and
the student's are pulled to the teacher's (`losses.teacher_mask_loss`; prompt-in-the-loop distillation,
as in EdgeSAM). The MSE treats every channel and position alike; the mask term weighs what the decoder
reads. The boxes come from torch's RNG, which the loop seeds per epoch and checkpoints, so a resumed
run draws the same boxes.

The student and the teacher may take different input sizes and normalisations: each batch carries
one tensor per model, both preprocessed from the same raw image (`NpzImageDataset` with
`inputs={"student": student.config, "teacher": teacher.config}`). Both embed to the same
(256, 64, 64) grid. After training, the teacher's prompt encoder and mask decoder are copied into
the student, so the student is a whole model whose heads expect the teacher's embedding.

`TeacherCache` keeps the teacher's embeddings on disk (fp16 `.npy`, one per case, slice and
preprocessing key — teacher name, input size, normalisation and weights digest), so later epochs and
other students skip the teacher. A cached embedding is only valid for the unaugmented image: when the
dataset augments (random flips change the image), the cache is bypassed with a warning. With a cache
the target is always the fp16-rounded embedding, whether read or just computed, so a run does not
depend on what was cached before.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..checkpoints import save_model
from ..data.samplers import StreamSampler
from ..runtime.files import atomic_file
from .config import DistillConfig
from .frozen import train_mode
from .loop import Task, TrainResult, train, weights_digest
from .losses import teacher_mask_loss


def copy_heads(student: nn.Module, teacher: nn.Module) -> None:
    """Copy the teacher's prompt encoder and mask decoder weights into the student (strict)."""
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())


class TeacherCache:
    """fp16 teacher embeddings under `directory/<preprocessing key>/<case>/<slice>.npy`, written atomically."""

    def __init__(self, directory: str | Path, teacher: nn.Module) -> None:
        c = teacher.config
        self.key = f"{c.name}-{c.input_size}-{c.normalization}-{weights_digest(teacher)[:12]}"
        self.root = Path(directory) / self.key
        self.hits = self.misses = 0

    def path(self, case: str, slice_: int) -> Path:
        return self.root / case / f"{slice_}.npy"

    def get(self, case: str, slice_: int) -> np.ndarray | None:
        path = self.path(case, slice_)
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return np.load(path, allow_pickle=False)

    def put(self, case: str, slice_: int, embedding: np.ndarray) -> None:
        with atomic_file(self.path(case, slice_)) as f:
            np.save(f, embedding.astype(np.float16))


def random_boxes(extent: torch.Tensor, count: int, smallest: float = 0.05, largest: float = 0.8) -> torch.Tensor:
    """`count` boxes [x0, y0, x1, y1] per image inside its extent (B, 2) as (h, w); sides log-uniform between
    `smallest` and `largest` of the extent's, at least 4 px; from torch's RNG. Returns (B, count, 4)."""
    hw = extent.float()[:, None, :].expand(-1, count, -1)  # (B, K, 2)
    log_lo, log_hi = math.log(smallest), math.log(largest)
    sides = torch.maximum(torch.exp(torch.empty(hw.shape).uniform_(log_lo, log_hi)) * hw, torch.full(hw.shape, 4.0))
    sides = torch.minimum(sides, hw)
    start = torch.rand(hw.shape) * (hw - sides)
    (y0, x0), (h, w) = start.unbind(-1), sides.unbind(-1)
    return torch.stack([x0, y0, x0 + w, y0 + h], -1)


class DistillTask(Task):
    """MSE between `student.image_encoder`'s embedding and the frozen teacher's (from `cache` when given),
    plus `mask_weight` x the teacher-mask loss over `mask_boxes` random boxes per image."""

    name = "distill"

    def __init__(self, student: nn.Module, teacher: nn.Module, cache: TeacherCache | None = None,
                 student_key: str = "student", teacher_key: str = "teacher", copy_heads: bool = True,
                 mask_weight: float = 0.0, mask_boxes: int = 4) -> None:
        self.model, self.teacher, self.cache = student, teacher.eval(), cache
        self.student_key, self.teacher_key, self.copy = student_key, teacher_key, copy_heads
        self.mask_weight, self.mask_boxes = mask_weight, mask_boxes
        for p in teacher.parameters():
            p.requires_grad_(False)

    def module(self) -> nn.Module:
        return self.model.image_encoder  # what DDP wraps: its forward is `student.encode`

    def to(self, device: torch.device) -> None:
        self.teacher.to(device)

    def train_mode(self) -> None:
        train_mode(self.model)
        self.teacher.eval()

    @torch.no_grad()
    def target(self, batch: dict) -> torch.Tensor:
        """The teacher's embeddings of the batch (cached ones read, missing ones computed and written)."""
        images = batch[self.teacher_key]
        if self.cache is None:
            return self.teacher.encode(images).float()
        keys = list(zip(batch["case"], [int(s) for s in batch["slice"]]))
        found = [self.cache.get(c, s) for c, s in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = self.teacher.encode(images[missing]).float().cpu().numpy().astype(np.float16)
            for i, emb in zip(missing, computed):
                self.cache.put(*keys[i], emb)
                found[i] = emb
        return torch.from_numpy(np.stack(found)).to(images.device).float()

    def step(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, int, int]:
        target = self.target(batch)
        pred = module(batch[self.student_key]).float()
        if pred.shape != target.shape:
            raise ValueError(f"student embedding {tuple(pred.shape)} and teacher embedding "
                             f"{tuple(target.shape)} differ; distillation needs the same grid")
        loss, masks = F.mse_loss(pred, target), 0
        if self.mask_weight:
            mask_loss, masks = self.mask_term(pred, target, batch[f"{self.teacher_key}_hw"])
            loss = loss + self.mask_weight * mask_loss
        return loss, len(pred), masks

    def mask_term(self, pred: torch.Tensor, target: torch.Tensor, extent: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Teacher-mask loss of the student's embeddings `pred` for random boxes; (loss, masks)."""
        boxes = random_boxes(extent.cpu(), self.mask_boxes).to(pred.device).reshape(-1, 4)
        with torch.no_grad():
            teacher_logits, _ = self.teacher.decode(target.repeat_interleave(self.mask_boxes, 0), boxes)
        student_logits, _ = self.teacher.decode(pred.repeat_interleave(self.mask_boxes, 0), boxes)
        return teacher_mask_loss(student_logits.float(), teacher_logits.float()), len(boxes)

    def finish(self, output_dir: Path, main: bool) -> None:
        self.model.eval()
        if self.copy:
            copy_heads(self.model, self.teacher)
        if main:
            save_model(self.model, output_dir)


def distill(student: nn.Module, teacher: nn.Module, data: Dataset, config: DistillConfig | None = None, *,
            sampler: StreamSampler | None = None, after_step: Callable[[nn.Module, Any], None] | None = None,
            run_info: dict | None = None) -> TrainResult:
    """Train `student.image_encoder` on the teacher's embeddings with the one loop; the student lands in output_dir."""
    config = config or DistillConfig()
    if not any(p.requires_grad for p in student.image_encoder.parameters()):
        raise ValueError("the student's image encoder has no trainable parameter")
    cache = None
    if config.teacher_cache:
        if getattr(data, "augment", False):
            warnings.warn("teacher cache bypassed: the dataset augments (flips change the image); "
                          "build it with augment=False to use the cache", stacklevel=2)
        else:
            cache = TeacherCache(config.teacher_cache, teacher)
    task = DistillTask(student, teacher, cache, config.student_key, config.teacher_key, config.copy_heads,
                       config.mask_weight, config.mask_boxes)
    return train(task, data, config, sampler=sampler, after_step=after_step, run_info=run_info)
