"""Inference over a set of per-group compiled models, loaded lazily, each case routed by its name (torch-free)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.modality import UNKNOWN
from ..inference.npz import read_case
from ..inference.predictor import CaseResult, Predictor
from .router import Router

MANIFEST = "daft.json"  # what `DataAwareModel.export` writes beside its per-group folders


class RoutedPredictor:
    """A `Predictor` per router group, built on first use from `sources` (compiled folders or models)."""

    def __init__(self, router: Router, sources: dict[str, Any], **predictor_kwargs: Any) -> None:
        missing = [g for g in router.names if g not in sources]
        if missing:
            raise ValueError(f"no model for groups {missing}; sources has {sorted(sources)}")
        self.router, self.sources, self.kwargs = router, dict(sources), predictor_kwargs
        self._predictors: dict[str, Predictor] = {}

    @classmethod
    def open(cls, directory: str | Path, backend: str | None = None, threads: int | None = None,
             precision: str | None = None, **predictor_kwargs: Any) -> "RoutedPredictor":
        """The folder written by `DataAwareModel.export` (its `daft.json` and one compiled folder per group)."""
        import json

        from ..export.compiled import load

        directory = Path(directory)
        path = directory / MANIFEST
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a data-aware export ({error})") from error
        if "compiled" not in meta or "router" not in meta:
            raise ValueError(f"{path}: keys 'compiled' and 'router' expected, found {sorted(meta)}")
        sources = {g: _Lazy(lambda p=directory / sub: load(p, backend=backend, precision=precision, threads=threads))
                   for g, sub in meta["compiled"].items()}
        return cls(Router.from_dict(meta["router"]), sources, **predictor_kwargs)

    def with_options(self, **predictor_kwargs: Any) -> "RoutedPredictor":
        """The same groups and models with these `Predictor` options (for models not loaded yet)."""
        return RoutedPredictor(self.router, self.sources, **{**self.kwargs, **predictor_kwargs})

    @property
    def loaded(self) -> list[str]:
        """Groups whose model has been loaded so far."""
        return sorted(self._predictors)

    def predictor(self, group: str) -> Predictor:
        if group not in self._predictors:
            source = self.sources[group]
            self._predictors[group] = Predictor(source() if isinstance(source, _Lazy) else source, **self.kwargs)
        return self._predictors[group]

    def route(self, path: str | Path) -> str:
        """The group of a case file; its image is read only when a classifier must decide."""
        image = None
        if self.router.classifier is not None and self.router.modality(path) == UNKNOWN:
            image = read_case(Path(path)).imgs
        return self.router.route(path, image)

    def predict_file(self, in_path: str | Path, out_path: str | Path) -> CaseResult:
        return self.predictor(self.route(in_path)).predict_file(in_path, out_path)


class _Lazy:
    """A deferred model load."""

    def __init__(self, load: Any) -> None:
        self.load = load

    def __call__(self) -> Any:
        return self.load()
