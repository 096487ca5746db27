"""Training configurations (torch-free, so the command line can show their defaults without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; defaults are LiteMedSAM's (DAFT's early-stopping patience of 7)."""

    output_dir: str = "runs/finetune"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (checked within an epoch)
    batch_size: int = 4
    lr: float = 5e-5
    weight_decay: float = 0.01
    loss: str = "litemedsam"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze: tuple[str, ...] = ("prompt_encoder",)  # parameter-name prefixes, e.g. "image_encoder"
    plateau_factor: float = 0.9
    plateau_patience: int = 5
    early_stopping_patience: int | None = 7  # epochs without a better validation loss; None: never
    grad_clip: float | None = None
    num_workers: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    seed: int = 0
    resume: str | None = None  # a training state file, or a folder holding last.pt
    progress: bool = True


@dataclass
class DistillConfig:
    """Distillation settings; training stops at `epochs`, `max_steps` or `max_seconds`, whichever comes first."""

    output_dir: str | None = None  # if set: the student (save_model) and distill_log.csv go here
    epochs: int = 1
    max_steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.01
    copy_heads: bool = True
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0
    student_key: str = "student"
    teacher_key: str = "teacher"
    progress: bool = True
