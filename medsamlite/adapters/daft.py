"""Data-aware fine-tuning (DAFT): per-modality-group adapters (or models) behind a file-name router.

`DataAwareModel` holds one shared base `SamLite` with a named adapter per group (`lora`, `arena`),
or a whole model per group (`full`, `bitfit`, `norm`), and a `Router`. Cases of unknown modality go to
the router's fallback group: the shared base without adapters. Each call runs one group, so a batch
holds one modality (per-sample adapter routing fails on windowed backbones). `train_daft` fine-tunes
one group after the other with `training.finetune`; `export` writes one compiled model per group plus
`daft.json`, which `RoutedPredictor.open` reads and loads lazily. CLI: `medsamlite train daft`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import api
from .arena import ProximalStep
from .router import DEFAULT_GROUPS, FALLBACK, Router, parse_groups
from .routed import MANIFEST

FORMAT = "medsamlite-daft"


class DataAwareModel(nn.Module):
    """A router and, per group, a named adapter on the shared `base` or a whole model in `models`."""

    def __init__(self, base: nn.Module, router: Router, models: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.base, self.router = base, router
        self.models = nn.ModuleDict(models or {})
        unknown = set(self.models) - set(router.groups)
        if unknown:
            raise ValueError(f"models for groups {sorted(unknown)} that the router does not know "
                             f"({list(router.groups)})")

    @property
    def config(self):
        return self.base.config

    @classmethod
    def with_adapters(cls, base: nn.Module, router: Router, method: str = "lora", **settings: Any
                      ) -> "DataAwareModel":
        """One `method` adapter (lora/arena) per router group, named after the group, on `base` (in place)."""
        if method not in api.PEFT_METHODS:
            raise ValueError(f"per-group adapters on one base need a peft method {api.PEFT_METHODS}, got "
                             f"{method!r}; use DataAwareModel.with_models for {method}")
        for group in router.groups:
            api.apply(base, method, adapter_name=group, **settings)
        return cls(base, router)

    @classmethod
    def with_models(cls, base: nn.Module, router: Router, method: str = "full", **settings: Any
                    ) -> "DataAwareModel":
        """A copy of `base` per router group with `method` applied (the base itself stays the fallback)."""
        models = {}
        for group in router.groups:
            models[group] = api.apply(copy.deepcopy(base), method, **settings)
        return cls(base, router, models)

    @property
    def method(self) -> str:
        recs = [*api.records(self.base).values(), *(r for m in self.models.values() for r in api.records(m).values())]
        return recs[0].method if recs else "none"

    def route(self, name: str | Path, image: Any = None) -> str:
        return self.router.route(name, image)

    def select(self, group: str) -> nn.Module:
        """The module that runs `group` (its adapter switched on); unknown groups get the fallback base."""
        if group in self.models:
            return self.models[group]
        has_adapter = group in api.records(self.base)
        for module in self.base.modules():
            if hasattr(module, "enable_adapters") and module is not self.base:
                module.enable_adapters(has_adapter)
        if has_adapter:
            api.set_adapter(self.base, group)
        return self.base

    def encode(self, images: torch.Tensor, group: str) -> torch.Tensor:
        return self.select(group).encode(images)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor, group: str, multimask_output: bool = False):
        return self.select(group).decode(embeddings, boxes, multimask_output)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, group: str):
        return self.select(group)(images, boxes)

    def plain(self, group: str) -> nn.Module:
        """A plain `SamLite` for `group`: its adapter merged, its own model, or the base for the fallback."""
        if group in self.models:
            return api.unload(self.models[group])
        if group in api.records(self.base):
            return api.merge(self.base, group)
        return api.unload(self.base)

    def save(self, directory: str | Path) -> Path:
        """Base (safetensors + config), each group's adapter or model, and the router, in `directory`."""
        from ..checkpoints import save_model

        directory = Path(directory)
        save_model(api.unload(self.base), directory / "base")
        for group in api.records(self.base):
            api.save_adapter(self.base, directory / "adapters" / f"{group}.safetensors", group)
        for group, model in self.models.items():
            save_model(api.unload(model), directory / "models" / group)
        meta = {"format": FORMAT, "router": self.router.to_dict(), "adapters": sorted(api.records(self.base)),
                "models": sorted(self.models)}
        (directory / MANIFEST).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "DataAwareModel":
        """A model written by `save`."""
        from ..checkpoints import load_model

        directory = Path(directory)
        meta = read_manifest(directory)
        base = load_model(directory / "base")
        for group in meta.get("adapters", []):
            api.load_adapter(base, directory / "adapters" / f"{group}.safetensors", group)
        models = {g: load_model(directory / "models" / g) for g in meta.get("models", [])}
        return cls(base, Router.from_dict(meta["router"]), models)

    def export(self, directory: str | Path, backend: str = "openvino", precision: str = "f32",
               cache_dir: str | Path | None = None) -> Path:
        """One compiled folder per group (fallback included) and `daft.json`, for `RoutedPredictor.open`."""
        from ..export import export

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for group in self.router.names:
            export(self.plain(group), directory / group, backend=backend, precision=precision, cache_dir=cache_dir)
        meta = {"format": FORMAT, "router": self.router.to_dict(), "compiled": {g: g for g in self.router.names}}
        (directory / MANIFEST).write_text(json.dumps(meta, indent=2))
        return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The `daft.json` of a saved or exported data-aware model."""
    path = Path(directory) / MANIFEST
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a data-aware model manifest ({error})") from error
    if meta.get("format") != FORMAT or "router" not in meta:
        raise ValueError(f"{path}: key 'format' is {meta.get('format')!r} (expected {FORMAT!r}) or 'router' is missing")
    return meta


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
    from ..training.finetune import FinetuneConfig, finetune

    settings = settings or DaftSettings()
    finetune_config = finetune_config or FinetuneConfig()
    extra = dict(include_decoder=settings.include_decoder, train_decoder=settings.train_decoder, **settings.adapter)
    if settings.method in api.PEFT_METHODS:
        model = DataAwareModel.with_adapters(base, router, settings.method, **extra)
    else:
        model = DataAwareModel.with_models(base, router, settings.method, **extra)
    after_step = ProximalStep(settings.adapter.get("lam", 1e-3)) if settings.method == "arena" else None
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
        result = finetune(net, train, val, config, after_step=after_step, save=_saver(group))
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
    if group in api.records(net) and api.records(net)[group].method in api.PEFT_METHODS:
        from peft.functional import set_peft_model_state_dict

        set_peft_model_state_dict(net, tensors, adapter_name=group)
    else:
        net.load_state_dict(tensors, strict=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`medsamlite train daft` options."""
    parser.add_argument("data", help="folder of task .npz cases (imgs/ + gts/ or labelled files)")
    parser.add_argument("--model", default="litemedsam", help="registered model name")
    parser.add_argument("--input-size", type=int, help="encoder input side (default: the model's)")
    parser.add_argument("--checkpoint", help="weights to start from (any supported layout)")
    parser.add_argument("--pretrained", action="store_true", help="start from the packaged pretrained weights")
    parser.add_argument("--method", default="lora", choices=api.METHODS)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank / ARENA initial rank")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lam", type=float, default=1e-3, help="ARENA ℓ1 weight on the gate")
    parser.add_argument("--groups", help="e.g. '3D=CT,MR,PET;XRay=XRay;US=US' (default: DAFT's nine groups)")
    parser.add_argument("--fallback", default=FALLBACK, help="group for unknown names (the base model)")
    parser.add_argument("--include-decoder", action="store_true", help="adapt the decoder's attention/MLP too")
    parser.add_argument("--train-decoder", action="store_true", help="a trainable decoder copy per group")
    parser.add_argument("--output", default="runs/daft")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--patience", type=int, default=7, help="early-stopping patience in epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", metavar="BACKEND",
                        help="also export per-group compiled models (openvino, onnxruntime)")


def run(args: argparse.Namespace) -> int:
    """Train per-group adapters, save the data-aware model to OUTPUT/model (and OUTPUT/compiled)."""
    from ..data.datasets import find_cases
    from ..registry import create_model
    from ..training.finetune import FinetuneConfig

    overrides = {"input_size": args.input_size} if args.input_size else {}
    base = create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, **overrides)
    router = Router(parse_groups(args.groups) if args.groups else dict(DEFAULT_GROUPS), fallback=args.fallback)
    adapter = {} if args.method not in api.PEFT_METHODS else {"r": args.rank, "alpha": args.alpha}
    if args.method == "arena":
        adapter["lam"] = args.lam
    settings = DaftSettings(args.method, adapter, args.include_decoder, args.train_decoder, args.val_fraction)
    config = FinetuneConfig(output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps,
                            batch_size=args.batch_size, lr=args.lr, early_stopping_patience=args.patience,
                            device=args.device, seed=args.seed)
    model, results = train_daft(base, find_cases(args.data), router, settings, config)
    model.save(Path(args.output) / "model")
    for group, r in results.items():
        print(f"{group}: " + ", ".join(f"{k}={v}" for k, v in r.items()))
    if args.export:
        model.export(Path(args.output) / "compiled", backend=args.export)
    print(f"saved {Path(args.output) / 'model'}" + (f" and {Path(args.output) / 'compiled'}" if args.export else ""))
    return 0
