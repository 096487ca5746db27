"""Data-aware models (DAFT): per-modality-group adapters (or models) behind a file-name router.

`DataAwareModel` holds one shared base `SamLite` with a named adapter per group (`lora`, `arena`),
or a whole model per group (`full`, `bitfit`, `norm`), and a `Router`. Cases of unknown modality go to
the router's fallback group: the shared base without adapters. Each call runs one group, so a batch
holds one modality (per-sample adapter routing fails on windowed backbones). `export` writes one compiled
model per group plus `daft.json`, which `RoutedPredictor.open` reads and loads lazily. Training:
`medsamlite.training.daft.train_daft`; command line: `medsamlite train daft`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import DAFT_MANIFEST, FORMAT_DAFT
from ..runtime.files import atomic_dir
from ..runtime.routed import read_manifest
from ..runtime.router import Router
from . import api


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
        """Base (safetensors + config), each group's adapter or model, and the router, in `directory` (atomically)."""
        from ..checkpoints import save_model

        with atomic_dir(directory) as tmp:
            save_model(api.unload(self.base), tmp / "base")
            for group in api.records(self.base):
                api.save_adapter(self.base, tmp / "adapters" / f"{group}.safetensors", group)
            for group, model in self.models.items():
                save_model(api.unload(model), tmp / "models" / group)
            meta = {"format": FORMAT_DAFT, "router": self.router.to_dict(),
                    "adapters": sorted(api.records(self.base)), "models": sorted(self.models)}
            (tmp / DAFT_MANIFEST).write_text(json.dumps(meta, indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "DataAwareModel":
        """A model written by `save`."""
        from ..factory import load_model

        directory = Path(directory)
        meta = read_manifest(directory)
        base = load_model(directory / "base")
        for group in meta.get("adapters", []):
            api.load_adapter(base, directory / "adapters" / f"{group}.safetensors", group)
        models = {g: load_model(directory / "models" / g) for g in meta.get("models", [])}
        return cls(base, Router.from_dict(meta["router"]), models)

    def export(self, directory: str | Path, backend: str = "openvino", precision: str = "f32",
               cache_dir: str | Path | None = None) -> Path:
        """One compiled folder per group (fallback included) and `daft.json`, for `RoutedPredictor.open` (atomically)."""
        from ..export import export

        with atomic_dir(directory) as tmp:
            for group in self.router.names:
                export(self.plain(group), tmp / group, backend=backend, precision=precision, cache_dir=cache_dir)
            meta = {"format": FORMAT_DAFT, "router": self.router.to_dict(),
                    "compiled": {g: g for g in self.router.names}}
            (tmp / DAFT_MANIFEST).write_text(json.dumps(meta, indent=2))
        return Path(directory)
