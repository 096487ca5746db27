"""VeRA through peft: frozen random A, B shared by every layer, trained vectors b (zero at start) and d.

ΔW = diag(b)·B·diag(d)·A (arXiv 2310.11454); the shared projections come again from `seed`, so an
adapter file holds the vectors only. peft keeps the projections on its tuner, so VeRA is injected with
peft's `VeraModel` (one VeRA adapter per model) and has Linear layers only.
"""
from __future__ import annotations

from dataclasses import dataclass

from peft import VeraConfig
from peft.tuners.vera import VeraModel
from torch import nn

from .registry import Method, register_method
from .targets import linear_only
from .tuners import modules_to_save, peft_apply


@dataclass
class VeraSettings:
    """Rank of the shared projections, initial d, dropout and the projections' seed."""

    r: int = 64
    d_initial: float = 0.1
    dropout: float = 0.0
    seed: int = 0


def vera_config(names: list[str], settings: VeraSettings, train_decoder: bool) -> VeraConfig:
    """peft's VeRA config on exactly `names` (projections regenerated from the seed, not saved)."""
    return VeraConfig(r=settings.r, d_initial=settings.d_initial, vera_dropout=settings.dropout,
                      projection_prng_key=settings.seed, save_projection=False, target_modules=names,
                      modules_to_save=modules_to_save(train_decoder))


def inject_vera(config: VeraConfig, model: nn.Module, adapter_name: str) -> None:
    """peft's tuner injects the layers and the shared projections into `model` (in place)."""
    if getattr(model, "peft_config", None):
        raise ValueError(f"model '{model.config.name}' already has peft adapters {sorted(model.peft_config)}; "
                         "VeRA shares one projection pair per model, so it takes one adapter")
    VeraModel(model, config, adapter_name)


METHOD = register_method(Method(
    "vera", VeraSettings, peft_apply(vera_config, linear_only, inject_vera), peft_layout=True,
    description="peft VeRA: shared frozen random projections, trained scaling vectors (Linear layers)"))
