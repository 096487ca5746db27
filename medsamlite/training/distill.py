"""Encoder distillation: train a student's image encoder to reproduce a frozen teacher's embeddings.

The student and the teacher may take different input sizes and normalisations: each batch carries
one tensor per model, both preprocessed from the same raw image (`NpzImageDataset` with
`inputs={"student": student.config, "teacher": teacher.config}`). Both embed to the same
(256, 64, 64) grid, and the resize-longest-side + bottom-right pad puts the image at the same place
of it. After the encoder is trained, the teacher's prompt encoder and mask decoder are copied into
the student, so the student is a whole model whose heads expect the teacher's embedding.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoints import save_model
from .config import DistillConfig
from .finetune import CsvLog, epoch_loader, epoch_seed, resolve_device, to_device

LOG_COLUMNS = ("epoch", "step", "loss", "lr", "seconds")


@dataclass
class DistillResult:
    """What a distillation run did; `losses` is the embedding MSE of every step."""

    steps: int
    epochs: int
    seconds: float
    losses: list[float]


def copy_heads(student: nn.Module, teacher: nn.Module) -> None:
    """Copy the teacher's prompt encoder and mask decoder weights into the student (strict)."""
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())


def distill(student: nn.Module, teacher: nn.Module, data: Dataset | DataLoader,
            config: DistillConfig | None = None) -> DistillResult:
    """MSE between the student's and the frozen teacher's image embeddings; trains `student.image_encoder` only."""
    config = config or DistillConfig()
    device = resolve_device(config.device)
    student.to(device)
    teacher.to(device).eval()
    params = [p for p in student.image_encoder.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student's image encoder has no trainable parameter")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    log = None
    if config.output_dir is not None:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        log = CsvLog(Path(config.output_dir) / "distill_log.csv", LOG_COLUMNS, append=False)
    start, step, losses, epochs = time.perf_counter(), 0, [], 0
    done = False
    for epoch in range(config.epochs):
        torch.manual_seed(epoch_seed(config.seed, epoch))
        loader = epoch_loader(data, epoch, config.batch_size, config.num_workers, config.seed)
        student.train()
        epoch_losses = []
        for batch in tqdm(loader, desc=f"distill {epoch}", disable=not config.progress, leave=False):
            batch = to_device(batch, device)
            with torch.no_grad():
                target = teacher.encode(batch[config.teacher_key])
            pred = student.encode(batch[config.student_key])
            if pred.shape != target.shape:
                raise ValueError(f"student embedding {tuple(pred.shape)} and teacher embedding "
                                 f"{tuple(target.shape)} differ; distillation needs the same grid")
            loss = F.mse_loss(pred, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
            step += 1
            done = (config.max_steps is not None and step >= config.max_steps) or (
                config.max_seconds is not None and time.perf_counter() - start >= config.max_seconds)
            if done:
                break
        losses += epoch_losses
        epochs += 1
        if log is not None:
            log.write(dict(epoch=epoch, step=step, loss=float(np.mean(epoch_losses)) if epoch_losses else math.nan,
                           lr=optimizer.param_groups[0]["lr"], seconds=round(time.perf_counter() - start, 3)))
        if done:
            break
    student.eval()
    if config.copy_heads:
        copy_heads(student, teacher)
    if config.output_dir is not None:
        save_model(student, config.output_dir)
    return DistillResult(step, epochs, time.perf_counter() - start, losses)
