"""Data-aware fine-tuning (DAFT): one adapter (or model) per router group, each trained on its group's cases."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..adapters import api
from ..adapters.daft import DataAwareModel
from ..runtime.router import Router


@dataclass
class DaftSettings:
    """What `train_daft` adapts and how cases are split."""

    method: str = "lora"
    adapter: dict[str, Any] = field(default_factory=dict)  # r, alpha, dropout, lam
    include_decoder: bool = False
    train_decoder: bool = False
    val_fraction: float = 0.2
    targets_per_image: int | None = None  # K targets per item (None: one)


def train_daft(base: nn.Module, cases: Sequence[str | Path], router: Router, settings: DaftSettings | None = None,
               finetune_config: Any = None, after_step: Callable[[nn.Module, Any], None] | None = None
               ) -> tuple[DataAwareModel, dict[str, Any]]:
    """Fine-tune one adapter (or model) per router group on that group's cases; returns the model and results.

    Each group is one run of the training loop in `output_dir/<group>` (checkpoints, log, run.json);
    with `resume`, every group that has checkpoints continues from its newest. Groups without cases
    keep the untrained adapter and are reported with 0 cases. Each group's best weights (lowest
    validation loss) are restored after its run. `after_step` runs after every optimiser step.
    """
    from ..data.datasets import NpzSliceDataset, split_cases
    from .finetune import FinetuneConfig, finetune
    from .state import list_checkpoints

    settings = settings or DaftSettings()
    finetune_config = finetune_config or FinetuneConfig()
    extra = dict(include_decoder=settings.include_decoder, train_decoder=settings.train_decoder, **settings.adapter)
    if settings.method in api.PEFT_METHODS:
        model = DataAwareModel.with_adapters(base, router, settings.method, **extra)
    else:
        model = DataAwareModel.with_models(base, router, settings.method, **extra)
    targets = {} if settings.targets_per_image is None else {"targets_per_image": settings.targets_per_image}
    results: dict[str, Any] = {}
    for group in router.groups:
        files = [Path(f) for f in cases if router.route(f) == group]
        if not files:
            results[group] = {"cases": 0}
            continue
        train_files, val_files = split_cases(files, settings.val_fraction, finetune_config.seed, router.overrides)
        train = NpzSliceDataset(train_files, base.config, augment=True, seed=finetune_config.seed, **targets)
        val = NpzSliceDataset(val_files, base.config, augment=False, slices="all", **targets) if val_files else None
        out = Path(finetune_config.output_dir) / group
        resume = str(out) if finetune_config.resume and list_checkpoints(out) else None
        config = dataclasses.replace(finetune_config, output_dir=str(out), resume=resume)
        net = model.select(group)
        method_hook = api.after_step(net, group if group in api.records(net) else None)  # e.g. ARENA's proximal step
        result = finetune(net, train, val, config, after_step=_chain([h for h in (method_hook, after_step) if h]),
                          save=_saver(group), run_info={"group": group})
        _restore_best(net, group, result.output_dir / "best")
        results[group] = {"cases": len(files), "train": len(train_files), "val": len(val_files),
                          "best_val_loss": result.best_val_loss, "epochs": result.epochs, "steps": result.steps,
                          "trainable": api.trainable_parameters(model.select(group))}
    return model, results


class _Chain:
    """Hooks run in order; the state of those that have one (AdaLoRA's allocation) goes into checkpoints."""

    def __init__(self, hooks: list[Callable[[nn.Module, Any], None]]) -> None:
        self.hooks = hooks

    def __call__(self, model: nn.Module, optimizer: Any) -> None:
        for hook in self.hooks:
            hook(model, optimizer)

    def state_dict(self) -> list:
        return [hook.state_dict() if hasattr(hook, "state_dict") else None for hook in self.hooks]

    def load_state_dict(self, states: list) -> None:
        for hook, state in zip(self.hooks, states):
            if state is not None:
                hook.load_state_dict(state)


def _chain(hooks: list[Callable[[nn.Module, Any], None]]) -> _Chain | None:
    return _Chain(hooks) if hooks else None


def _saver(group: str):
    def save(net: nn.Module, directory: Path) -> None:
        api.save_adapter(net, Path(directory) / "adapter.safetensors", group if group in api.records(net) else None)
    return save


def _restore_best(net: nn.Module, group: str, directory: Path) -> None:
    path = directory / "adapter.safetensors"
    if not path.exists():
        return
    _, tensors = api.read_adapter(path)
    if group in api.records(net) and api.get_method(api.records(net)[group].method).kind == api.PEFT:
        from ..adapters import tuners

        tuners.load_state_dict(net, tensors, group)
    else:
        net.load_state_dict(tensors, strict=False)
