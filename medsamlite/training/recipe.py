"""Reproducible student recipes: distil a small encoder from the packaged LiteMedSAM, in resumable pieces.

A recipe fixes everything but the budget: the student and how it starts from the teacher, the data
medsamlite makes itself (`data.unlabelled`: synthetic images and the real images installed packages
ship, part of each source held out), the teacher cache, the optimiser and the learning-rate schedule.
The budget (minutes of CPU, every piece counted) becomes a number of optimiser steps once, in the first
piece, from the measured time per step and what setting up cost; `plan.json` keeps it, so the cosine
follows the whole planned run, not the piece. Each piece stops at its own limit and `resume` continues
the same schedule, data order and teacher cache: 3 x 40 minutes give the student 1 x 120 minutes give.

    run_recipe(RECIPES["student-v1"], "~/student-run", budget_minutes=170, piece_minutes=40)  # then again
    ship_student("~/student-run", "medsamlite/weights/litemedsam_s8.safetensors")  # fp16 where agreement holds

Agreement is the per-case mean over boxes of the Dice between the student's and the teacher's masks for
the same boxes, on held-out synthetic and real images and on the outside test set.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..checkpoints import save_model
from ..data.datasets import NpzImageDataset
from ..data.unlabelled import write_image_set
from ..factory import create_model
from ..runtime.files import atomic_file
from . import state as ckpt
from .config import DistillConfig
from ..runtime.metrics import dsc
from .distill import DistillTask, TeacherCache, copy_heads, distill
from .loop import write_json

PLAN_FILE, PIECES_FILE, AGREEMENT_FILE = "plan.json", "pieces.json", "agreement.json"
PARTS = ("heldout/synthetic", "heldout/real", "outside")


@dataclass(frozen=True)
class StudentRecipe:
    """How a student is made: its model, its start, its data and its optimiser; the budget is the run's."""

    name: str
    student: str  # registered model name, or "<model>:<encoder>" for a model with another encoder
    init: str  # "teacher-trunk": the teacher's own trunk and neck; "teacher-neck": its neck only
    teacher: str = "litemedsam"
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.01
    batch_size: int = 4
    synthetic_images: int = 600
    real_images: bool = True  # scikit-image's, pydicom's and nibabel's (tests leave them out)
    real_variants: int = 10  # seeded crops, flips, curves of each real training image, each with its own target
    held_out: float = 0.1
    # the teacher-mask term (`DistillTask`; 0: embedding MSE only). Off: at 0.1 its gradient is ~7x the MSE's at
    # the start and it ruined the embedding (held-out R2 after 150 steps -0.05 against 0.30 with MSE alone), and
    # one box per image adds ~30% to a step (docs/training.md, "Choosing the recipe by measurement")
    mask_weight: float = 0.0
    mask_boxes: int = 1
    precision: str = "auto"  # "auto": bf16 where the CPU has it natively (AVX512-BF16, AMX), else f32
    seed: int = 0
    save_every: int = 100


RECIPES = {
    "student-v1": StudentRecipe("student-v1", "litemedsam_s8", "teacher-trunk", lr=5e-4),
    # f32: under bf16 autocast its random trunk's gradients reached inf by the second step (blocks.6's token
    # mixer first; the loop stops at the NaN loss that follows), while f32 trains (docs/training.md)
    "repvit-neck": StudentRecipe("repvit-neck", "repvit_m0_6_medsam", "teacher-neck", lr=1e-3, precision="f32"),
}


def recipe_precision(recipe: StudentRecipe) -> str:
    """The training precision of this piece: the recipe's, with "auto" resolved on this CPU (each piece may
    run on another machine; the plan's steps stay as planned)."""
    if recipe.precision != "auto":
        return recipe.precision
    from ..runtime.precision import cpu_supports_bf16

    return "bf16" if cpu_supports_bf16() else "f32"


def build_student(recipe: StudentRecipe, teacher: nn.Module) -> nn.Module:
    """The recipe's student, started from what the teacher can give; the teacher's heads always."""
    from ..encoders.tinyvit import init_from_teacher

    name, _, encoder = recipe.student.partition(":")
    torch.manual_seed(recipe.seed)
    student = create_model(name, **({"encoder": encoder} if encoder else {}))
    if recipe.init == "teacher-trunk":
        init_from_teacher(student.image_encoder, teacher.image_encoder)
    elif recipe.init == "teacher-neck":
        student.image_encoder.neck.load_state_dict(teacher.image_encoder.neck.state_dict())
    else:
        raise ValueError(f"recipe {recipe.name}: init {recipe.init!r}; expected teacher-trunk or teacher-neck")
    copy_heads(student, teacher)
    return student


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def prepare_data(recipe: StudentRecipe, root: Path) -> dict[str, list[Path]]:
    """The recipe's image set under `root/data`, written once (`parts.json` marks it complete with its settings)."""
    marker = root / "data" / "parts.json"
    settings = {k: getattr(recipe, k) for k in ("synthetic_images", "real_images", "real_variants", "held_out",
                                                "seed")}
    if not marker.exists():
        parts = write_image_set(root / "data", recipe.synthetic_images, recipe.held_out, recipe.seed,
                                recipe.real_images, recipe.real_variants)
        write_json(marker, {"settings": settings, "parts": {k: [p.name for p in v] for k, v in parts.items()}})
    written = _read(marker, {})
    if written.get("settings") != settings:
        raise ValueError(f"{marker}: images made with {written.get('settings')}; recipe {recipe.name} needs "
                         f"{settings}: use another data folder")
    return {k: [root / "data" / k / n for n in v] for k, v in written["parts"].items()}


@torch.no_grad()
def fill_teacher_cache(cache: TeacherCache, teacher: nn.Module, data: NpzImageDataset, batch: int = 8) -> int:
    """Compute the teacher's embedding of every item not cached yet; returns how many were computed."""
    computed = 0
    for start in range(0, len(data), batch):
        items = [data[i] for i in range(start, min(start + batch, len(data)))]
        items = [it for it in items if not cache.path(it["case"], int(it["slice"])).exists()]
        if items:
            embeddings = teacher.encode(torch.stack([it["teacher"] for it in items])).float().numpy()
            for it, emb in zip(items, embeddings):
                cache.put(it["case"], int(it["slice"]), emb)
            computed += len(items)
    return computed


def _seconds_per_step(student: nn.Module, teacher: nn.Module, data: NpzImageDataset, cache: TeacherCache,
                      recipe: StudentRecipe, steps: int = 4) -> float:
    """Median wall time of a training step (its batch read, the recipe's loss and precision) on a throwaway copy
    of the student."""
    from torch.utils.data import default_collate

    task = DistillTask(copy.deepcopy(student), teacher, cache, mask_weight=recipe.mask_weight,
                       mask_boxes=recipe.mask_boxes)
    probe = task.module().train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=recipe.lr)
    times = []
    for s in range(steps + 1):
        began = time.perf_counter()  # reading and preprocessing the batch count: the loop does them too
        batch = default_collate([data[(s * recipe.batch_size + i) % len(data)] for i in range(recipe.batch_size)])
        with torch.autocast("cpu", torch.bfloat16, enabled=recipe_precision(recipe) == "bf16"):
            loss = task.step(probe, batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - began)
    return float(np.median(times[1:]))


def run_recipe(recipe: StudentRecipe, output: str | Path, budget_minutes: float | None = None,
               piece_minutes: float | None = None, steps: int | None = None, data_dir: str | Path | None = None,
               progress: bool = False) -> dict:
    """Run (or continue) `recipe` in `output` for one piece; returns the plan with what is done so far.

    The first call plans the run: `steps` optimiser steps, or as many as `budget_minutes` allow after
    setting up. Later calls resume where the last piece stopped. A piece ends after `piece_minutes`
    (wall time, its set-up included) or when the planned steps are done; then the student is saved
    to `output/student` and its agreement measured. `data_dir` (default `output`) holds the images, the
    teacher cache and the teacher's masks: runs of recipes with the same data settings may share it.
    """
    began, out = time.perf_counter(), Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    plan = _read(out / PLAN_FILE, None)
    if plan is not None and plan["recipe"] != dataclasses.asdict(recipe):
        raise ValueError(f"{out / PLAN_FILE}: planned for recipe {plan['recipe']['name']} with other settings; "
                         "use a new output folder")
    teacher = create_model(recipe.teacher, pretrained=True)
    student = build_student(recipe, teacher)
    shared = Path(data_dir).expanduser() if data_dir else out
    parts = prepare_data(recipe, shared)
    data = NpzImageDataset(parts["train"], {"student": student.config, "teacher": teacher.config},
                           augment=False, seed=recipe.seed)
    cache = TeacherCache(shared / "teacher-cache", teacher)
    computed = fill_teacher_cache(cache, teacher, data)
    if plan is None:
        plan = _plan(recipe, student, teacher, data, cache, budget_minutes, steps, time.perf_counter() - began)
        write_json(out / PLAN_FILE, plan)
    pieces = _read(out / PIECES_FILE, [])
    setup = time.perf_counter() - began
    limit = None if piece_minutes is None else max(1.0, piece_minutes * 60 - setup)
    precision = recipe_precision(recipe)
    result = distill(student, teacher, data, _config(recipe, plan, data, out, shared, limit, precision, progress))
    pieces.append({"setup_seconds": round(setup, 1), "teacher_images": computed, "precision": precision,
                   "train_seconds": round(result.seconds, 1), "steps_to": result.steps,
                   "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
    plan["steps_done"] = result.steps
    if result.steps >= plan["steps"]:
        measured = time.perf_counter()
        save_model(student, out / "student")
        plan["agreement"] = measure(student, teacher, parts, shared, out)
        pieces[-1]["measure_seconds"] = round(time.perf_counter() - measured, 1)
    write_json(out / PIECES_FILE, pieces)
    plan["cpu_minutes"] = round(sum(p["setup_seconds"] + p["train_seconds"] + p.get("measure_seconds", 0)
                                    for p in pieces) / 60, 1)
    return plan


def ship_student(output: str | Path, destination: str | Path, data_dir: str | Path | None = None,
                 tolerance: float = 0.005) -> dict:
    """Write a finished run's student as fp16 safetensors at `destination` (what a registry entry ships).

    fp16 halves the file; it is kept only if the rounded student's agreement with the teacher stays within
    `tolerance` of the f32 student's on every part, else the f32 weights ship. Returns the precision, the
    file's sha256 (for the entry) and both agreements.
    """
    from safetensors.torch import save

    from ..constants import FORMAT_MODEL
    from ..factory import load_model
    from ..runtime.files import file_digest

    out = Path(output).expanduser()
    plan, agreement = _read(out / PLAN_FILE, {}), _read(out / AGREEMENT_FILE, None)
    if agreement is None:  # written with the student when the last planned step is done
        raise ValueError(f"{out}: the run is not finished (no {AGREEMENT_FILE}); resume it first")
    recipe = StudentRecipe(**plan["recipe"])
    shared = Path(data_dir).expanduser() if data_dir else out
    student, teacher = load_model(out / "student"), create_model(recipe.teacher, pretrained=True)
    state = {k: v.detach().clone() for k, v in student.state_dict().items()}  # a copy: load_state_dict rounds in place
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    student.load_state_dict(half)  # rounded through fp16, back in the model's f32
    rounded = measure(student.eval(), teacher, prepare_data(recipe, shared), shared)
    kept = all(abs(rounded[p]["mean"] - agreement[p]["mean"]) <= tolerance
               for p in PARTS if rounded[p]["mean"] is not None)
    with atomic_file(destination) as f:
        f.write(save(half if kept else state, metadata={"format": FORMAT_MODEL, "recipe": recipe.name}))
    return {"precision": "fp16" if kept else "f32", "sha256": file_digest(destination),
            "agreement": agreement, "agreement_shipped": rounded if kept else agreement}


def _plan(recipe: StudentRecipe, student: nn.Module, teacher: nn.Module, data: NpzImageDataset, cache: TeacherCache,
          budget_minutes: float | None, steps: int | None, setup_seconds: float) -> dict:
    """The run's length in optimiser steps: given, or what the budget leaves after set-up at the measured pace."""
    if steps is None:
        if budget_minutes is None:
            raise ValueError("a new recipe run needs budget_minutes (or steps)")
        per_step = _seconds_per_step(student, teacher, data, cache, recipe)
        steps = max(1, int((budget_minutes * 60 - setup_seconds) / per_step))
    else:
        per_step = None
    return {"recipe": dataclasses.asdict(recipe), "steps": steps, "budget_minutes": budget_minutes,
            "seconds_per_step": per_step, "setup_seconds": round(setup_seconds, 1), "train_images": len(data)}


def _config(recipe: StudentRecipe, plan: dict, data: NpzImageDataset, out: Path, shared: Path,
            limit: float | None, precision: str, progress: bool) -> DistillConfig:
    train_dir = out / "train"
    resume = str(train_dir) if ckpt.list_checkpoints(train_dir) else None
    return DistillConfig(output_dir=str(train_dir), epochs=math.ceil(plan["steps"] * recipe.batch_size / len(data)) + 1,
                         max_steps=plan["steps"], max_seconds=limit, batch_size=recipe.batch_size, lr=recipe.lr,
                         weight_decay=recipe.weight_decay, warmup_steps=recipe.warmup_steps,
                         min_lr_ratio=recipe.min_lr_ratio, seed=recipe.seed, save_every=recipe.save_every,
                         keep=1000, resume=resume, teacher_cache=str(shared / "teacher-cache"), progress=progress,
                         device="cpu", log_every=5, precision=precision, mask_weight=recipe.mask_weight,
                         mask_boxes=recipe.mask_boxes)


# agreement ------------------------------------------------------------------------------------------------

def case_agreement(student_segs: np.ndarray, teacher_segs: np.ndarray, labels: int) -> float:
    """Mean over labels 1..`labels` of the Dice between two label maps (a label empty in both counts 1)."""
    scores = [dsc(student_segs == k, teacher_segs == k) for k in range(1, labels + 1)]
    return float(np.mean(scores)) if scores else 1.0


def _teacher_segs(teacher: nn.Module, files: list[Path], folder: Path) -> list[np.ndarray]:
    """The teacher's label maps of `files`, computed once into `folder`."""
    from ..runtime import Predictor

    predictor, segs = Predictor(teacher), []
    for path in files:
        cached = folder / f"{path.stem}.npy"
        if not cached.exists():
            with np.load(path) as case:
                with atomic_file(cached) as f:
                    np.save(f, predictor.predict_2d(case["imgs"], case["boxes"]))
        segs.append(np.load(cached))
    return segs


def measure(student: nn.Module, teacher: nn.Module, parts: dict[str, list[Path]], shared: Path,
            out: Path | None = None) -> dict:
    """Per part: mean, worst and per-modality agreement of `student` with `teacher`, plus per-case values
    (written to `out/agreement.json` when `out` is given)."""
    from ..runtime import Predictor

    predictor, result = Predictor(student), {}
    for part in PARTS:
        files = parts.get(part, [])
        teacher_segs = _teacher_segs(teacher, files, shared / "teacher-segs" / part.replace("/", "-"))
        cases = {}
        for path, reference in zip(files, teacher_segs):
            with np.load(path) as case:
                cases[path.stem] = case_agreement(predictor.predict_2d(case["imgs"], case["boxes"]), reference,
                                                  len(case["boxes"]))
        by_modality: dict[str, list[float]] = {}
        for name, value in cases.items():
            by_modality.setdefault(name.split("_")[1], []).append(value)
        result[part] = {"mean": float(np.mean(list(cases.values()))) if cases else None,
                        "worst": min(cases.values()) if cases else None, "cases": cases,
                        "modalities": {m: float(np.mean(v)) for m, v in sorted(by_modality.items())}}
    if out is not None:
        write_json(out / AGREEMENT_FILE, result)
    return result


def agreement_curve(recipe: StudentRecipe, output: str | Path, data_dir: str | Path | None = None,
                    on_point: Callable[[dict], None] | None = None, every: int = 1) -> list[dict]:
    """Agreement of a run's checkpoints at multiples of `every` steps, its last, and the untrained start (step 0),
    against training minutes."""
    out = Path(output).expanduser()
    shared = Path(data_dir).expanduser() if data_dir else out
    teacher = create_model(recipe.teacher, pretrained=True)
    student = build_student(recipe, teacher)
    parts = prepare_data(recipe, shared)
    log = _train_seconds(out / "train" / "log.csv")
    points = []
    checkpoints = ckpt.list_checkpoints(out / "train")
    chosen = [c for c in checkpoints if int(c.name.split("-")[-1]) % every == 0 or c == checkpoints[-1]]
    for checkpoint in [None, *chosen]:
        step = 0
        if checkpoint is not None:
            state, _ = ckpt.load(checkpoint, 0)
            student.load_state_dict(state["model"])
            step = int(state["step"])
        result = measure(student.eval(), teacher, parts, shared)
        point = {"step": step, "train_minutes": round(log.get(step, 0.0) / 60, 2),
                 **{part: {k: result[part][k] for k in ("mean", "worst", "modalities")} for part in PARTS}}
        points.append(point)
        if on_point is not None:
            on_point(point)
    write_json(out / "curve.json", points)
    return points


def _train_seconds(log: Path) -> dict[int, float]:
    """Training seconds at each logged step, summed over pieces (each piece's clock restarts at 0)."""
    import csv

    if not log.exists():
        return {}
    seconds, offset, last = {}, 0.0, 0.0
    with log.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["phase"] != "train":
                continue
            t = float(row["seconds"])
            if t < last:  # a new piece
                offset += last
            last = t
            seconds[int(row["step"])] = offset + t
    return seconds
