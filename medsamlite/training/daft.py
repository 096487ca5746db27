"""Data-aware fine-tuning (DAFT): one adapter (or model) per router group, each trained on its group's cases."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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


def train_daft(base: nn.Module, cases: Sequence[str | Path], router: Router, settings: DaftSettings | None = None,
               finetune_config: Any = None) -> tuple[DataAwareModel, dict[str, Any]]:
    """Fine-tune one adapter (or model) per router group on that group's cases; returns the model and results.

    Groups without cases keep the untrained adapter and are reported with 0 cases. Each group's best
    weights (lowest validation loss) are restored after its run.
    """
    from ..data.datasets import NpzSliceDataset, split_cases
    from .finetune import FinetuneConfig, finetune

    settings = settings or DaftSettings()
    finetune_config = finetune_config or FinetuneConfig()
    extra = dict(include_decoder=settings.include_decoder, train_decoder=settings.train_decoder, **settings.adapter)
    if settings.method in api.PEFT_METHODS:
        model = DataAwareModel.with_adapters(base, router, settings.method, **extra)
    else:
        model = DataAwareModel.with_models(base, router, settings.method, **extra)
    results: dict[str, Any] = {}
    for group in router.groups:
        files = [Path(f) for f in cases if router.route(f) == group]
        if not files:
            results[group] = {"cases": 0}
            continue
        train_files, val_files = split_cases(files, settings.val_fraction, finetune_config.seed, router.overrides)
        train = NpzSliceDataset(train_files, base.config, augment=True, seed=finetune_config.seed)
        val = NpzSliceDataset(val_files, base.config, augment=False, slices="all") if val_files else None
        config = dataclasses.replace(finetune_config, output_dir=str(Path(finetune_config.output_dir) / group))
        net = model.select(group)
        result = finetune(net, train, val, config, after_step=api.after_step(net, group if group in api.records(net)
                                                                              else None), save=_saver(group))
        _restore_best(net, group, result.output_dir / "best")
        results[group] = {"cases": len(files), "train": len(train_files), "val": len(val_files),
                          "best_val_loss": result.best_val_loss, "epochs": result.epochs, "steps": result.steps,
                          "trainable": api.trainable_parameters(model.select(group))}
    return model, results


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
        from peft.functional import set_peft_model_state_dict

        set_peft_model_state_dict(net, tensors, adapter_name=group)
    else:
        net.load_state_dict(tensors, strict=False)
