"""AdaLoRA through peft: W = W0 + P·diag(E)·Q with a rank budget reallocated during training (arXiv 2303.10512).

The closest published kin of ARENA: both prune the components of an SVD-shaped update, AdaLoRA by an
importance score under a shrinking global budget, ARENA by an l1 proximal step. E starts at zero, so the
model starts unchanged. peft's `RankAllocator` runs in `RankAllocation`, the `after_step` hook that
`training.finetune` calls after each optimiser step (the gradients are still there). peft's AdaLoRA has
Linear layers only; its orthogonality penalty is added to the loss by peft's model wrapper, which a plain
`SamLite` has not, so it is not applied here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import AdaLoraConfig
from peft.tuners.adalora import RankAllocator
from torch import nn

from .registry import Method, register_method
from .targets import linear_only
from .tuners import modules_to_save, peft_apply


@dataclass
class AdaLoraSettings:
    """Initial and target mean rank, scale, dropout and the budget schedule (in optimiser steps)."""

    init_r: int = 12
    target_r: int = 4
    alpha: float = 16.0
    dropout: float = 0.0
    total_step: int = 1000
    tinit: int = 0
    tfinal: int = 0
    delta_t: int = 1


def adalora_config(names: list[str], settings: AdaLoraSettings, train_decoder: bool) -> AdaLoraConfig:
    """peft's AdaLoRA config on exactly `names`."""
    return AdaLoraConfig(init_r=settings.init_r, target_r=settings.target_r, lora_alpha=settings.alpha,
                         lora_dropout=settings.dropout, total_step=settings.total_step, tinit=settings.tinit,
                         tfinal=settings.tfinal, deltaT=settings.delta_t, target_modules=names,
                         modules_to_save=modules_to_save(train_decoder))


class RankAllocation:
    """`after_step(model, optimizer)` hook: peft's AdaLoRA budget schedule on the active adapter.

    Its step, importance averages and rank pattern go into training checkpoints (`state_dict`), so a
    resumed run allocates as the uninterrupted one.
    """

    _AVERAGES = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def __init__(self) -> None:
        self.step = 0
        self.allocator: RankAllocator | None = None
        self.config: AdaLoraConfig | None = None
        self.restored: dict | None = None

    def state_dict(self) -> dict:
        averages = {a: dict(getattr(self.allocator, a)) for a in self._AVERAGES} if self.allocator else {}
        return {"step": self.step, "rank_pattern": self.config.rank_pattern if self.config else None, **averages}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.restored = state["step"], state  # applied when the allocator exists (first call)

    @torch.no_grad()
    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        name = model.__dict__.get("active_adapter_name", "default")
        config = self.config = model.peft_config[name]
        if self.allocator is None:
            self.allocator = RankAllocator(model, config, name)
            if self.restored is not None:
                for a in self._AVERAGES:
                    getattr(self.allocator, a).update(self.restored.get(a, {}))
                config.rank_pattern = self.restored["rank_pattern"]
        final = config.total_step - config.tfinal
        if self.step < final:
            _, pattern = self.allocator.update_and_allocate(model, self.step)
            config.rank_pattern = pattern or config.rank_pattern
        elif self.step == final:
            _, config.rank_pattern = self.allocator.update_and_allocate(model, self.step, force_mask=True)
            self.allocator.reset_ipt()
        else:
            self.allocator.mask_using_rank_pattern(model, config.rank_pattern)
        self.step += 1


METHOD = register_method(Method(
    "adalora", AdaLoraSettings, peft_apply(adalora_config, linear_only), peft_layout=True,
    hook=lambda settings: RankAllocation(),
    description="peft AdaLoRA: SVD-shaped update, rank budget reallocated by importance (Linear layers)"))
