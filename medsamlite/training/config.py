"""Training configurations (torch-free, so the command line can show their defaults without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Settings of the one training loop, shared by every mode (finetune, distill, daft).

    The learning rate warms up linearly over `warmup_steps`, then follows a cosine to
    `min_lr_ratio` x `lr` at the last step (`max_steps`, else `epochs` x optimiser steps per epoch).
    """

    output_dir: str = "runs/train"
    epochs: int = 10
    max_steps: int | None = None  # optimiser steps; also the length of the LR schedule
    max_seconds: float | None = None  # also stop after this much training time
    batch_size: int = 4  # per process
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: str | None = "f32"  # TRAIN_PRECISIONS; None: what `accelerate launch` (or its config) set, else f32
    device: str = "auto"  # "auto": CUDA when available, else CPU; "cpu"; "cuda"
    seed: int = 0
    save_every: int | None = 500  # optimiser steps between checkpoints (one is always written at the end)
    keep: int = 3  # checkpoints kept (the newest)
    resume: str | None = None  # a checkpoint folder, or an output folder holding checkpoints/
    num_workers: int = 0
    sync_bn: bool | None = None  # SyncBatchNorm; None: on for training BatchNorm layers under >1 CUDA process
    log_every: int = 1  # optimiser steps between log rows
    progress: bool = True


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning: LiteMedSAM's loss and optimiser (AdamW 5e-5, wd 0.01); DAFT's early-stopping patience of 7."""

    output_dir: str = "runs/finetune"
    loss: str = "litemedsam"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze: tuple[str, ...] = ("prompt_encoder",)  # parameter-name prefixes, e.g. "image_encoder"
    early_stopping_patience: int | None = 7  # epochs without a better validation loss; None: never
    decoder: str = "dense"  # "factorised": each image's box-independent decoder part once (pays from ~4 targets)
    interactive: int = 0  # click rounds per step after the box (SAM / micro-sam style); 0: boxes only
    embedding_cache: int = 256  # images whose embedding a frozen image encoder keeps (4 MiB each at f32); 0: none


@dataclass
class DistillConfig(TrainConfig):
    """Distillation: the student's image encoder learns the teacher's embeddings (MSE), plus `mask_weight` x
    the teacher's masks for `mask_boxes` random boxes per image through the teacher's frozen decoder."""

    output_dir: str = "runs/distill"  # the student (save_model), logs and checkpoints go here
    epochs: int = 1
    lr: float = 5e-4
    copy_heads: bool = True
    teacher_cache: str | None = None  # folder of fp16 teacher embeddings, reused across epochs and students
    student_key: str = "student"
    teacher_key: str = "teacher"
    mask_weight: float = 0.0
    mask_boxes: int = 4


# learning rates per method (AdamW): the whole model moves slowly, the few adapter numbers fast
LEARNING_RATES = {"full": 1e-5, "decoder": 1e-4, "probe": 1e-2}


@dataclass
class FewShotConfig:
    """What the protocol draws, which methods it adapts with and how long each trains."""

    shots: tuple[int, ...] = (1, 5, 10)
    draws: int = 3
    methods: tuple[str, ...] = ("full", "decoder", "bitfit", "norm", "lora", "adaptformer", "probe", "spatial")
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: apply's settings
    lr: float = 1e-3  # methods not in `lrs` (default LEARNING_RATES)
    lrs: dict[str, float] = field(default_factory=lambda: dict(LEARNING_RATES))
    steps: int = 30
    batch_size: int = 4
    test_cases: int = 3  # held out per group, never drawn
    seed: int = 0
    cache_embeddings: bool = True
    device: str = "cpu"
