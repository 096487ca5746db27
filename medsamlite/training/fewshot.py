"""The k-shot protocol (after FSEFT / the FMLLM tutorial): per modality group, adapt on k cases, score held-out ones.

For each router group of a data folder: a fixed held-out test split (seeded), then for each k and draw,
k cases drawn (seeded) from the rest; each method adapts a fresh copy of the base model on them
(`training.finetune`, a fixed number of optimiser steps) and is scored with DSC/NSD (`runtime.metrics`)
on the group's test cases. The zero-shot base is scored once per group (method `none`, k = 0).
Methods whose image encoder is frozen (decoder, probe, spatial) train on cached embeddings.
"""
from __future__ import annotations

import copy
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..adapters import api
from ..data.datasets import NpzSliceDataset, read_labels
from ..runtime.metrics import evaluate_case
from ..runtime.npz import read_case
from ..runtime.predictor import Predictor
from ..runtime.router import Router
from .config import FewShotConfig, FinetuneConfig
from .frozen import CachedEncoder

ZERO_SHOT = "none"


def _frozen_encoder(model: nn.Module) -> tuple[nn.Module, str] | None:
    """(parent, attribute) of the image encoder when no parameter of it trains (the spatial adapter's base)."""
    inner = getattr(model.image_encoder, "base", None)
    parent, encoder = (model.image_encoder, inner) if isinstance(inner, nn.Module) else (model, model.image_encoder)
    if any(p.requires_grad for p in encoder.parameters()):
        return None
    return parent, "base" if parent is not model else "image_encoder"


def group_cases(files: Sequence[Path], router: Router) -> dict[str, list[Path]]:
    """Case files by router group (sorted, so that draws depend only on the seed)."""
    groups: dict[str, list[Path]] = {}
    for f in sorted(Path(f) for f in files):
        groups.setdefault(router.route(f), []).append(f)
    return groups


def split_group(files: list[Path], test_cases: int, seed: int, group: str) -> tuple[list[Path], list[Path]]:
    """(pool, test): `test_cases` held out by a seeded permutation, the rest to draw shots from."""
    order = np.random.default_rng([seed, zlib.crc32(group.encode())]).permutation(len(files))
    test = sorted(files[i] for i in order[:test_cases])
    return sorted(files[i] for i in order[test_cases:]), test


def draw_shots(pool: list[Path], k: int, draw: int, seed: int, group: str) -> list[Path]:
    """k cases of `pool` for draw number `draw` (seeded by seed, k, draw and group)."""
    rng = np.random.default_rng([seed, k, draw, zlib.crc32(group.encode())])
    return sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))


def score(model: nn.Module, cases: Sequence[Path]) -> tuple[float, float]:
    """Mean DSC and NSD of `model`'s label maps over `cases` (each case's mean over its labels)."""
    predictor = Predictor(model.eval())
    dscs, nsds = [], []
    for path in cases:
        case = read_case(path)
        with torch.no_grad():
            segs = (predictor.predict_3d if case.kind == "3D" else predictor.predict_2d)(case.imgs, case.boxes)
        result = evaluate_case(segs, read_labels(Path(path), case.imgs.shape), case.spacing)
        dscs.append(result.mean_dsc)
        nsds.append(result.mean_nsd)
    return float(np.mean(dscs)), float(np.mean(nsds))


def adapt(model: nn.Module, files: list[Path], method: str, config: FewShotConfig, workdir: Path) -> nn.Module:
    """`method` applied to `model` and trained `config.steps` steps on `files` (the one call of `finetune`)."""
    from .finetune import finetune

    api.apply(model, method, **config.settings.get(method, {}))
    items = config.steps * config.batch_size
    # one epoch of distinct items (each repeat of a case draws its own flips, label, slice and box)
    data = NpzSliceDataset(files * -(-items // len(files)), model.config, augment=True, seed=config.seed)
    frozen = _frozen_encoder(model) if config.cache_embeddings else None
    if frozen is not None:
        parent, attr = frozen
        encoder = getattr(parent, attr)
        setattr(parent, attr, CachedEncoder(encoder))
    hook = api.after_step(model)
    run = FinetuneConfig(output_dir=str(workdir), epochs=1, max_steps=config.steps, batch_size=config.batch_size,
                         lr=config.lrs.get(method, config.lr), early_stopping_patience=None, device=config.device,
                         seed=config.seed, progress=False, embedding_cache=0)  # cached above
    try:
        finetune(model, data, None, run, after_step=hook, save=lambda net, directory: None)
    finally:
        if frozen is not None:
            setattr(parent, attr, encoder)
    return model.eval()


def run_fewshot(base: nn.Module, files: Sequence[str | Path], config: FewShotConfig | None = None,
                router: Router | None = None, log: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """One row per (group, k, draw, method): DSC, NSD, trainable parameters, adaptation seconds, cases."""
    config = config or FewShotConfig()
    for method in config.methods:
        api.get_method(method)  # an unknown name fails before any training
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        if log is not None:
            log(row)

    with tempfile.TemporaryDirectory(prefix="fewshot-") as workdir:
        for group, group_files in group_cases([Path(f) for f in files], router or Router()).items():
            pool, test = split_group(group_files, config.test_cases, config.seed, group)
            if not pool or not test:
                raise ValueError(f"group {group!r} has {len(group_files)} cases; the protocol needs more than "
                                 f"test_cases={config.test_cases} (to hold out) to draw shots from")
            dsc, nsd = score(copy.deepcopy(base), test)
            emit(dict(group=group, k=0, draw=0, method=ZERO_SHOT, dsc=dsc, nsd=nsd, trainable=0, seconds=0.0,
                      train_cases="", test_cases=len(test)))
            for k in config.shots:
                if k > len(pool):
                    continue  # reported by its absence: the group has fewer cases than k
                for draw in range(config.draws):
                    shots = draw_shots(pool, k, draw, config.seed, group)
                    for method in config.methods:
                        start = time.perf_counter()
                        model = adapt(copy.deepcopy(base), shots, method, config, Path(workdir))
                        seconds = time.perf_counter() - start
                        trainable = api.summary(model).trainable
                        dsc, nsd = score(model, test)
                        emit(dict(group=group, k=k, draw=draw, method=method, dsc=dsc, nsd=nsd, trainable=trainable,
                                  seconds=round(seconds, 2), train_cases=";".join(p.stem for p in shots),
                                  test_cases=len(test)))
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, k): mean and std of DSC over groups and draws, mean NSD, trainable count, mean seconds."""
    keys = sorted({(r["method"], r["k"]) for r in rows}, key=lambda mk: (mk[1] > 0, mk[0], mk[1]))
    out = []
    for method, k in keys:
        chosen = [r for r in rows if r["method"] == method and r["k"] == k]
        dsc = [r["dsc"] for r in chosen]
        out.append(dict(method=method, k=k, runs=len(chosen), dsc=float(np.mean(dsc)), dsc_std=float(np.std(dsc)),
                        nsd=float(np.mean([r["nsd"] for r in chosen])),
                        trainable=int(max(r["trainable"] for r in chosen)),
                        seconds=float(np.mean([r["seconds"] for r in chosen]))))
    return out


__all__ = ["FewShotConfig", "run_fewshot", "summarise", "adapt", "score", "draw_shots", "split_group",
           "group_cases", "CachedEncoder"]
