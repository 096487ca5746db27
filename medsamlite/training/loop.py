"""The one training loop (finetune, distill, daft) on Hugging Face Accelerate; a `Task` says what a step computes.

One process (`medsamlite train ...`) or N (`accelerate launch`, `torchrun`: gloo on CPU, NCCL on CUDA):
`Accelerator.prepare` wraps the task's module in DDP, every rank reads its shard of one seeded stream
(`data.samplers`), rank 0 alone writes logs, checkpoints, `run.json` and models. Mixed precision
(`bf16` autocast; `fp16` with loss scaling on CUDA), gradient accumulation, clipping, warmup + cosine.

Determinism: each epoch seeds torch's RNG from (seed, epoch, rank), the sampler from (seed, epoch) and
the dataset's augmentation from (seed, epoch, item); a checkpoint stores the step, the position in
the epoch and every rank's RNG, so a run stopped and resumed repeats the uninterrupted run exactly.
At the end every rank's parameter digest is gathered into `run.json` (`rank_digests`); ranks that
diverged fail the run.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm.auto import tqdm

from ..checkpoints import state_dict_digest
from ..constants import TRAIN_PRECISIONS
from ..data.samplers import ShuffleSampler, StreamSampler
from ..runtime.files import atomic_file
from . import state as ckpt
from .config import TrainConfig
from .frozen import train_mode

LOG_FILE, RUN_FILE = "log.csv", "run.json"
LOG_COLUMNS = ("phase", "epoch", "step", "loss", "lr", "images_per_s", "masks_per_s", "val_loss", "val_dsc",
               "seconds")


class Task:
    """What one training step computes; the loop owns everything else. Subclasses set `name` and `model`."""

    name = "task"
    model: nn.Module  # what is checkpointed and digested

    def module(self) -> nn.Module:
        """The module DDP wraps: its forward is what `step` calls (its trainable parameters are trained)."""
        return self.model

    def to(self, device: torch.device) -> None:
        """Move what the loop does not prepare (e.g. a teacher) to the training device."""

    def train_mode(self) -> None:
        """The model in training mode, its frozen modules (BatchNorm statistics, dropout) in eval mode."""
        train_mode(self.model)

    def step(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, int, int]:
        """(loss, images, masks) of one micro-batch, computed through `module`."""
        raise NotImplementedError

    def evaluate(self, data: Dataset, config: TrainConfig, device: torch.device) -> tuple[float, float, int]:
        """(validation loss, DSC, both summed over `count` masks) of one rank's shard; tasks that validate."""
        raise NotImplementedError(f"{self.name} has no validation")

    def save_best(self, directory: Path) -> None:
        """Write the model with the best validation loss so far."""

    def finish(self, output_dir: Path, main: bool) -> None:
        """After the last step (every rank; `main` writes)."""


@dataclass
class TrainResult:
    """What a run did: `losses` per optimiser step (mean over ranks), `history` one row per epoch."""

    output_dir: Path
    steps: int
    epochs: int
    seconds: float
    losses: list[float]
    history: list[dict[str, float]]
    best_val_loss: float
    best_epoch: int | None
    stopped_early: bool
    world_size: int
    rank: int = 0  # this process's (only rank 0 writes)


@dataclass
class _Progress:
    """Everything a checkpoint restores besides the torch objects."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches of `epoch` done by this rank
    accel_step: int = 0
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = math.inf
    best_epoch: int | None = None
    since_best: int = 0


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a collated batch moved to `device`; other entries (names, modalities) as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def set_epoch(obj: Any, epoch: int) -> None:
    """Call `obj.set_epoch(epoch)` where it exists (a dataset's augmentation)."""
    if callable(getattr(obj, "set_epoch", None)):
        obj.set_epoch(epoch)


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor at step s: linear warmup to 1, then a cosine to `min_ratio` at step `total`."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def weights_digest(model: nn.Module, buffers: bool = True) -> str:
    """sha256 of a module's state (names and bytes; parameters only with `buffers=False`)."""
    return state_dict_digest(model.state_dict() if buffers else dict(model.named_parameters()), layout=False)


def check_settings(precision: str, device: str) -> bool:
    """Raise a one-line ValueError for a precision or device this machine cannot train with; True: on CPU."""
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {TRAIN_PRECISIONS}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}; expected auto, cpu or cuda (the launcher picks each process's GPU)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA GPU is visible")
    cpu = device == "cpu" or not torch.cuda.is_available()
    if precision == "fp16" and cpu:
        raise ValueError("precision fp16 needs a CUDA GPU (loss scaling); use bf16 or f32 on CPU")
    return cpu


# accelerate's names for the precisions of TRAIN_PRECISIONS
_ACCELERATE_PRECISION = {"f32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve_precision(requested: str | None) -> tuple[str, str]:
    """(precision, why): `requested` (the CLI's --precision) wins; else what `accelerate launch --mixed_precision`
    or the accelerate config set (the launcher passes it as ACCELERATE_MIXED_PRECISION); else f32."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    from_launcher = {v: k for k, v in _ACCELERATE_PRECISION.items()}.get(launcher, launcher)
    if requested is not None:
        overridden = f"; the launcher's {from_launcher} is overridden" if from_launcher not in (None, requested) else ""
        return requested, f"precision {requested} (--precision{overridden})"
    if from_launcher is not None:
        return from_launcher, f"precision {from_launcher} (from accelerate launch or its config)"
    return "f32", "precision f32 (the default)"


def make_accelerator(config: TrainConfig, output_dir: Path):
    """An `Accelerator` for `config` (a resolved precision, accumulation, device); TensorBoard when installed."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import is_tensorboard_available

    cpu = check_settings(config.precision, config.device)
    if config.grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {config.grad_accum}")
    # one process may run several trainings (daft's groups, tests): the settings are per run
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(mixed_precision=_ACCELERATE_PRECISION[config.precision],
                       gradient_accumulation_steps=config.grad_accum, cpu=cpu,
                       log_with="tensorboard" if is_tensorboard_available() else None, project_dir=str(output_dir))


def freeze_unused(task: Task, data: Dataset) -> list[str]:
    """Freeze the trainable parameters that a step leaves without a gradient; returns their names.

    DDP fails on its second step when a trainable parameter took no part in the loss (a box-only prompt never
    uses the point and mask embeddings, the factorised decoder skips the multimask heads). AdamW skips a
    parameter without a gradient, so freezing it changes no result, where `find_unused_parameters` would walk
    the graph at every step. The probe is the first item, in eval mode, the same on every rank.
    """
    module = task.module()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    module.eval()
    with torch.random.fork_rng(devices=[]):
        loss, _, _ = task.step(module, default_collate([data[0]]))
        loss.backward()
    unused = [n for n, p in trainable.items() if p.grad is None]
    for name, p in trainable.items():
        p.grad = None
        p.requires_grad_(name not in unused)
    return unused


def use_sync_bn(requested: bool | None, module: nn.Module, world: int, device: torch.device) -> bool:
    """Whether to convert BatchNorm to SyncBatchNorm: asked for, or (None) a training BatchNorm under > 1 CUDA process.

    A few images per GPU give each rank noisy batch statistics, and the running statistics drift apart;
    torch's SyncBatchNorm has no CPU kernel, so asking for it on CPU is an error.
    """
    trains = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
                 for m in module.modules())
    if requested and device.type != "cuda" and world > 1:
        raise ValueError("sync_bn needs CUDA processes (torch's SyncBatchNorm has no CPU kernel); use --no-sync-bn")
    return bool(world > 1 and trains and (requested or (requested is None and device.type == "cuda")))


def write_json(path: Path, obj: dict) -> None:
    """JSON written atomically."""
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())


class CsvLog:
    """Rows appended to a CSV file; on resume, rows after the checkpoint's step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step
                        or (int(r["step"]) == resume_step and r["phase"] == "train")]
        with atomic_file(path) as f, io.TextIOWrapper(f, newline="") as text:
            writer = csv.DictWriter(text, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOG_COLUMNS).writerow({c: row.get(c, "") for c in LOG_COLUMNS})


def train(task: Task, data: Dataset, config: TrainConfig, *, val_data: Dataset | None = None,
          sampler: StreamSampler | None = None, after_step: Callable[[nn.Module, Any], None] | None = None,
          run_info: dict[str, Any] | None = None) -> TrainResult:
    """Train `task` on `data` (shuffled, or drawn by `sampler`); see the module docstring.

    `val_data` is evaluated at each epoch's end (sharded across ranks, the sums reduced): the best model
    is saved by the task and early stopping (`early_stopping_patience`) applies. `after_step(model,
    optimizer)` runs after every optimiser step, while the gradients are still there (ARENA's proximal
    step, AdaLoRA's rank allocation); its `state_dict()`, where it has one, is checkpointed. `run_info`
    goes into run.json.
    """
    run = _Run(task, data, config, sampler, after_step)
    run.resume()
    run.open_records(run_info)
    stopped_early = False
    while not stopped_early and not run.done and run.progress.epoch < run.config.epochs:
        run.train_epoch()
        stopped_early = run.end_epoch(val_data)
    return run.finish(stopped_early)


class _Run:
    """One call of `train`: the prepared objects and the progress, moved on by `train` in this order (the order
    of seeding, sampler positions, scheduler steps and saves is what makes a resumed run repeat the original)."""

    def __init__(self, task: Task, data: Dataset, config: TrainConfig, sampler: StreamSampler | None,
                 after_step: Callable[[nn.Module, Any], None] | None) -> None:
        """The accelerator for the resolved precision, this rank's shard of the sampler, the run's length."""
        precision, why = resolve_precision(config.precision)
        self.config = config = dataclasses.replace(config, precision=precision)
        self.task, self.data, self.after_step, self.out = task, data, after_step, Path(config.output_dir)
        self.accelerator = make_accelerator(config, self.out)
        self.main, self.rank = self.accelerator.is_main_process, self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.accelerator.print(f"{task.name}: {why}")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.sampler = (sampler or ShuffleSampler(len(data), config.seed)).shard(self.rank, self.world)
        self.micro_per_epoch = math.ceil(self.sampler.stream_length() // self.world / config.batch_size)
        self.total = config.max_steps or max(1, config.epochs * self.micro_per_epoch // config.grad_accum)
        self._prepare_model()
        self.progress, self.rng = _Progress(), None

    def _prepare_model(self) -> None:
        """The task's module (unused parameters frozen, SyncBatchNorm where it applies) and AdamW, prepared by
        accelerate; the warmup + cosine schedule."""
        task, config, accelerator, world = self.task, self.config, self.accelerator, self.world
        module = task.module()
        if world > 1:
            unused = freeze_unused(task, self.data)
            if unused:
                accelerator.print(f"{task.name}: froze {len(unused)} trainable parameters no step uses (DDP needs "
                                  f"every trainable one in each step): {', '.join(unused)}")
        if use_sync_bn(config.sync_bn, module, world, accelerator.device):
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place below the root: task.model follows
            accelerator.print(f"{task.name}: SyncBatchNorm (batch statistics over {world} processes)")
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{task.name}: no trainable parameters (every parameter has requires_grad=False)")
        optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        task.to(accelerator.device)
        # stepped here, once per optimiser step (accelerate's wrapper steps it once per process)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, warmup_cosine(config.warmup_steps, self.total, config.min_lr_ratio))

    def resume(self) -> None:
        """With `config.resume`: the model, optimiser, scheduler, scaler, hook, progress and RNG of its checkpoint."""
        if self.config.resume:
            self.progress, self.rng = _restore(ckpt.find_checkpoint(self.config.resume), self.task, self.optimizer,
                                               self.scheduler, self.accelerator, self.after_step)

    def open_records(self, run_info: dict[str, Any] | None) -> None:
        """run.json (rank 0), the trackers, log.csv (cut back to the checkpoint's step on resume); then the clock
        and the progress bar start."""
        config, accelerator = self.config, self.accelerator
        if self.main:
            self.info = {"mode": self.task.name, "world_size": self.world, "precision": config.precision,
                         "seed": config.seed, "device": str(accelerator.device),
                         "distributed": str(accelerator.distributed_type), "total_steps": self.total,
                         "config": dataclasses.asdict(config), "args": run_info or {}, "torch": torch.__version__}
            write_json(self.out / RUN_FILE, self.info)
        accelerator.init_trackers("tensorboard")
        self.log = CsvLog(self.out / LOG_FILE, self.progress.step if config.resume else None) if self.main else None
        accelerator.step = self.progress.accel_step
        self.patience = getattr(config, "early_stopping_patience", None)
        self.started, self.last_saved = time.perf_counter(), -1
        self.meter = _Meter()
        self.bar = tqdm(total=self.total, initial=self.progress.step, desc=self.task.name,
                        disable=not (config.progress and self.main), leave=False)
        self.done = self.progress.step >= self.total

    def train_epoch(self) -> None:
        """The micro-batches left in this epoch, until it ends or the run is done (last step, time limit)."""
        for batch in self._loader():
            self._micro_step(batch)
            if not self.accelerator.sync_gradients:
                continue
            self._stepped()
            if self.done:
                break

    def _loader(self) -> DataLoader:
        """This epoch's loader from the run's position: torch's RNG seeded for the epoch (or as the checkpoint left
        it, mid-epoch), the augmentation and the sampler set to the epoch; the task in training mode."""
        progress, config = self.progress, self.config
        if progress.position == 0:
            torch.manual_seed(epoch_seed(config.seed, progress.epoch, self.rank))
        elif self.rng is not None:  # resumed mid-epoch: the RNG as it was at the checkpoint
            ckpt.set_rng_state(self.rng)
        self.rng = None
        set_epoch(self.data, progress.epoch)
        self.sampler.set_epoch(progress.epoch, progress.position * config.batch_size)
        loader = DataLoader(self.data, batch_size=config.batch_size, sampler=self.sampler,
                            num_workers=config.num_workers, pin_memory=self.accelerator.device.type == "cuda",
                            generator=torch.Generator().manual_seed(epoch_seed(config.seed, progress.epoch, self.rank)))
        self.task.train_mode()
        return loader

    def _micro_step(self, batch: dict) -> None:
        """Forward and backward of one micro-batch; where gradients are synchronised, the clipped optimiser step
        and `after_step` (before zero_grad: AdaLoRA's allocator reads the gradients)."""
        accelerator, config, optimizer = self.accelerator, self.config, self.optimizer
        with accelerator.accumulate(self.module):
            with accelerator.autocast():
                loss, images, masks = self.task.step(self.module, to_device(batch, accelerator.device))
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.grad_clip:
                accelerator.clip_grad_norm_(self.params, config.grad_clip)
            optimizer.step()
            if self.after_step is not None and accelerator.sync_gradients:
                self.after_step(self.task.model, optimizer)
            optimizer.zero_grad(set_to_none=True)
        self.progress.position += 1
        self.meter.add(float(loss.detach()), images, masks)

    def _stepped(self) -> None:
        """After an optimiser step: the schedule, the step's row, a checkpoint every `save_every` steps, and
        whether the run is done."""
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.scheduler.step()
        self.progress.step += 1
        row = self.meter.reduce(self.accelerator)
        if not math.isfinite(row["loss"]):  # every rank sees the reduced loss, so every rank stops here
            raise FloatingPointError(f"step {self.progress.step}: the loss is {row['loss']} (precision "
                                     f"{self.accelerator.mixed_precision}); the run stops: its weights are no longer "
                                     "finite, and the last checkpoint is the one to resume from")
        self.progress.losses.append(row["loss"])
        if self.main:
            self._report(row, lr)
        if self.config.save_every and self.progress.step % self.config.save_every == 0:
            self.save()
        self.done = self.progress.step >= self.total or self._out_of_time()

    def _report(self, row: dict[str, float], lr: float) -> None:
        """Rank 0: the progress bar, and every `log_every` steps (and the last) a row of log.csv and the trackers."""
        step = self.progress.step
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}", img_s=f"{row['images_per_s']:.1f}",
                             masks_s=f"{row['masks_per_s']:.1f}")
        if step % self.config.log_every == 0 or step == self.total:
            self.log.write(dict(row, phase="train", epoch=self.progress.epoch, step=step, lr=lr,
                                seconds=round(time.perf_counter() - self.started, 3)))
            self.accelerator.log({"loss": row["loss"], "lr": lr, "images_per_s": row["images_per_s"],
                                  "masks_per_s": row["masks_per_s"]}, step=step)

    def _out_of_time(self) -> bool:
        """Whether `max_seconds` have passed: rank 0's clock decides, every rank gets its answer."""
        from accelerate.utils import broadcast_object_list

        return self.config.max_seconds is not None and bool(broadcast_object_list(
            [time.perf_counter() - self.started >= self.config.max_seconds])[0])

    def save(self) -> None:
        """A checkpoint of this step (every rank takes part)."""
        self.progress.accel_step = self.accelerator.step
        _save(self.out, self.progress, self.task, self.optimizer, self.scheduler, self.accelerator, self.config,
              self.after_step)
        self.last_saved = self.progress.step

    def end_epoch(self, val_data: Dataset | None) -> bool:
        """Validation where the epoch is over or the run done, then the next epoch begins; True: stop early."""
        progress = self.progress
        epoch_over = progress.position >= self.micro_per_epoch
        stopped_early = False
        if val_data is not None and (epoch_over or self.done):
            stopped_early = _validate(self.task, val_data, self.config, self.accelerator, progress, self.log,
                                      self.started, self.patience)
            self.meter.since = time.perf_counter()  # throughput is training's: validation time is not counted
        if epoch_over:
            progress.epoch, progress.position = progress.epoch + 1, 0
        return stopped_early

    def finish(self, stopped_early: bool) -> TrainResult:
        """The last checkpoint (unless this step has one), the task's `finish`, run.json completed; a RuntimeError
        where the ranks' parameters differ."""
        from accelerate.utils import gather_object

        self.bar.close()
        if self.last_saved != self.progress.step:
            self.save()
        self.accelerator.wait_for_everyone()
        # parameters only: BatchNorm running statistics are each rank's own until DDP's next forward
        # broadcasts rank 0's (rank 0's are the ones saved)
        digests = gather_object([weights_digest(self.task.model, buffers=False)])
        self.task.finish(self.out, self.main)
        seconds = time.perf_counter() - self.started
        self._close_records(digests, seconds)
        if len(set(digests)) > 1:
            raise RuntimeError(f"{self.out}: ranks ended with different weights (digests {digests})")
        p = self.progress
        return TrainResult(self.out, p.step, len(p.history), seconds, p.losses, p.history, p.best, p.best_epoch,
                           stopped_early, self.world, self.rank)

    def _close_records(self, digests: list[str], seconds: float) -> None:
        """run.json completed (rank 0) and the trackers finished."""
        if self.main:
            self.info.update(steps=self.progress.step, epochs=self.progress.epoch, seconds=round(seconds, 3),
                             rank_digests=digests,
                             final_loss=self.progress.losses[-1] if self.progress.losses else None)
            write_json(self.out / RUN_FILE, self.info)
        for tracker in self.accelerator.trackers:  # not end_training: it destroys the process group that the next
            tracker.finish()                       # run of this process (daft's next group) still needs


class _Meter:
    """Loss, images and masks since the last optimiser step; throughput over all ranks."""

    def __init__(self) -> None:
        self.loss, self.micro, self.images, self.masks, self.since = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, loss: float, images: int, masks: int) -> None:
        self.loss, self.micro = self.loss + loss, self.micro + 1
        self.images, self.masks = self.images + images, self.masks + masks

    def reduce(self, accelerator) -> dict[str, float]:
        totals = accelerator.reduce(torch.tensor([self.loss, self.micro, self.images, self.masks],
                                                 dtype=torch.float64, device=accelerator.device), "sum").tolist()
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        self.__init__()
        return {"loss": totals[0] / max(totals[1], 1), "images_per_s": totals[2] / elapsed,
                "masks_per_s": totals[3] / elapsed}


def _validate(task: Task, val_data: Dataset, config: TrainConfig, accelerator, progress: _Progress,
              log: CsvLog | None, started: float, patience: int | None) -> bool:
    """Every rank validates its shard, the sums are reduced; rank 0 keeps the best model. True: stop early."""
    if accelerator.num_processes > 1:  # rank 0's BatchNorm statistics (those saved) on every rank
        for buffer in task.model.buffers():
            torch.distributed.broadcast(buffer.data, 0)
    shard = Subset(val_data, range(accelerator.process_index, len(val_data), accelerator.num_processes))
    sums = accelerator.reduce(torch.tensor(task.evaluate(shard, config, accelerator.device), dtype=torch.float64,
                                           device=accelerator.device), "sum").tolist()
    if not sums[2]:
        raise ValueError("validation data is empty")
    val_loss, val_dsc = sums[0] / sums[2], sums[1] / sums[2]
    epoch_losses = progress.losses[-max(1, progress.position // config.grad_accum):]
    row = dict(epoch=progress.epoch, step=progress.step, train_loss=float(np.mean(epoch_losses)),
               val_loss=val_loss, val_dsc=val_dsc)
    progress.history.append(row)
    if val_loss < progress.best:
        progress.best, progress.best_epoch, progress.since_best = val_loss, progress.epoch, 0
        if accelerator.is_main_process:
            task.save_best(Path(config.output_dir))
    else:
        progress.since_best += 1
    if log is not None:
        log.write(dict(phase="epoch", epoch=progress.epoch, step=progress.step, loss=row["train_loss"],
                       val_loss=val_loss, val_dsc=val_dsc, seconds=round(time.perf_counter() - started, 3)))
    task.train_mode()
    return patience is not None and progress.since_best >= patience


def _save(out: Path, progress: _Progress, task: Task, optimizer, scheduler, accelerator, config: TrainConfig,
          hook: Any = None) -> None:
    """A checkpoint: rank 0 stages the state, every rank adds its RNG, rank 0 renames it into place."""
    if accelerator.is_main_process:
        ckpt.begin(out, progress.step, {
            "model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "hook": hook.state_dict() if hasattr(hook, "state_dict") else None,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "world_size": accelerator.num_processes, "config": dataclasses.asdict(config),
            **dataclasses.asdict(progress)})
    accelerator.wait_for_everyone()
    ckpt.write_rank_part(out, progress.step, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.commit(out, progress.step, config.keep)
    accelerator.wait_for_everyone()


def _restore(path: Path, task: Task, optimizer, scheduler, accelerator, hook: Any = None
             ) -> tuple[_Progress, dict | None]:
    """Load a checkpoint into the task's model and the optimiser, scheduler, scaler and `after_step` hook."""
    state, rng = ckpt.load(path, accelerator.process_index)
    if int(state.get("world_size", 1)) != accelerator.num_processes:
        raise ValueError(f"{path}: written by {state['world_size']} processes; resume with the same number "
                         f"(this run has {accelerator.num_processes})")
    task.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    if hasattr(hook, "load_state_dict") and state.get("hook") is not None:
        hook.load_state_dict(state["hook"])
    fields = {f.name for f in dataclasses.fields(_Progress)}
    return _Progress(**{k: v for k, v in state.items() if k in fields}), rng
