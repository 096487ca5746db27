"""`compile`: the one way a torch `SamLite` (adapted, merged, per-modality alike) reaches a CPU runtime.

Two cached stages, each an atomic folder under the cache dir:
1. `onnx/<key>/`: the image encoder (static (1, 3, S, S)) and the graphs of the entry's decoders, traced
   once with the TorchScript ONNX exporter and shared by every backend and precision: "dense", the prompt
   encoder + mask decoder (static, one box); "factorised", its two graphs (`prepare`: embedding ->
   per-image tensors; `factorised`: those + a static batch of `FACTORISED_BOXES` boxes). An entry holds
   the decoder it is compiled for (`export` writes both; `decoder=None`, the encoder alone, for benchmarks):
   tracing and converting a decoder it never runs would add a third to every first compile. "prompts" (points
   and mask prompts, what `Predictor.refine` sends) is traced where asked (`prompts=True`; `export` asks):
   the prompt encoder + mask decoder on one box, P >= 1 points (P dynamic) and a mask prompt or none.
2. `<key>/`: the backend's graphs at one precision plus `config.json`, opened by `load`.
The keys hash everything that changes the result (weights, config, input shape, torch/backend
versions, precision, int8 calibration set), so a changed model never meets a stale artefact.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..constants import CONFIG_FILE, DECODERS, FORMAT_COMPILED, PRECISIONS, RUNTIME_BACKENDS, __version__
from ..runtime.compiled import PROMPT_GRAPH, CompiledSam, decoder_graphs, held_graphs, load, read_meta
from ..runtime.decoders import check_mode, entry_decoders
from ..runtime.files import IntegrityError, check_recorded
from ..runtime.precision import check_precision
from . import convert
from .cache import building, default_cache_dir, digest, discard, entry_ready, source_digest, write_meta
from .quantize import Int8Refused, calibration_batches, calibration_digest, check_int8

if TYPE_CHECKING:
    import torch

    from ..models.sam import SamLite

OPSET = 17
ONNX_STAGE = "onnx"
# The decoder graph takes one box and is called once per box. Measured on 2 cores (litemedsam,
# OpenVINO f32): a static one-box call 35 ms, the same box through a dynamic-N graph 66 ms, 34 boxes in
# one dynamic call 1.51 s against 34 static calls 1.19 s; static batches of 2-17 gave nothing per box.
DECODER_BOXES = 1
# The factorised decoder's graph takes a static batch of this many boxes (padded): litemedsam OpenVINO f32
# per box, dense 42-68 ms vs batch-8 factorised 19-41 ms (bf16 52-54 vs 26-29 ms), loaded machine.
FACTORISED_BOXES = 8
LOGITS = ["low_res_logits", "iou"]
# the prompts graph's inputs; the point count P is its one dynamic dimension
PROMPT_INPUTS = ["embedding", "boxes", "points", "labels", "mask_input", "has_mask"]
PROMPT_AXES = {"points": {1: "points"}, "labels": {1: "points"}}


def _check_backend(name: str) -> str:
    if name not in RUNTIME_BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {', '.join(RUNTIME_BACKENDS)}")
    return name


def onnx_key(model: "SamLite", decoders: Sequence[str] = DECODERS, prompts: bool = False) -> str:
    """Key of the traced graphs: weights, config, modules and their code, input shape, decoders (and the prompts
    graph where asked), exporter versions."""
    import torch

    from ..checkpoints import state_dict_digest
    from ..models.factorised_decoder import FactorisedMaskDecoder

    config = model.config
    # the module tree's repr catches what the state_dict and config miss (e.g. wrapped adapters, norm eps);
    # the modules' source files, a change to what they compute (an upgrade of medsamlite or timm)
    code = source_digest([type(m) for m in model.modules()] + [FactorisedMaskDecoder])
    return digest({"weights": state_dict_digest(model.state_dict()), "config": config.to_dict(),
                   "structure": digest({"repr": repr(model)}), "code": code,
                   "input_shape": [1, 3, config.input_size, config.input_size], "torch": torch.__version__,
                   "decoder_boxes": DECODER_BOXES, "factorised_boxes": FACTORISED_BOXES,
                   "decoders": list(decoders), "opset": OPSET, "format": FORMAT_COMPILED,
                   # only where asked, so that entries without the graph keep their keys
                   **({"prompts": PROMPT_GRAPH} if prompts else {})})


def cache_key(model: "SamLite", backend: str, precision: str,
              calibration: Sequence[np.ndarray] | None = None, traced: str | None = None) -> str:
    """Key of a compiled entry: the traced graphs' key plus backend, its version and the precision."""
    return digest({"onnx": traced or onnx_key(model), "backend": backend,
                   "backend_version": convert.version(_check_backend(backend)), "precision": precision,
                   "calibration": calibration_digest(calibration)})


def _graph(model: "SamLite", forward: Callable[..., Any]) -> "torch.nn.Module":
    """A module whose forward is `forward(*inputs)` on `model`, traced as one graph (its weights stay registered)."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> Any:
            return forward(*inputs)

    return Graph()


def prompt_forward(model: "SamLite") -> Callable[..., Any]:
    """The prompts graph's forward: embedding (1, C, h, w), box (1, 4), points (1, P, 2), labels (1, P) float
    (1 positive, 0 negative, -1 padding), mask_input (1, 1, 4h, 4w), has_mask (1,) -> logits, IoU.

    What `model.decode(embedding, box, points=(points, labels), masks=mask_input or None)` computes: the sparse
    prompt is the points' tokens then the box's (no padding point: a box is always given). The dense prompt is
    `has_mask * mask_downscaling(mask_input) + (1 - has_mask) * no_mask_embed` (as Meta's SamOnnxModel), one
    graph for both cases and exact for has_mask 0 or 1 (x * 1 + 0 and 0 + y round to nothing).
    """
    import torch

    encoder = model.prompt_encoder

    def forward(embedding: "torch.Tensor", box: "torch.Tensor", points: "torch.Tensor", labels: "torch.Tensor",
                mask_input: "torch.Tensor", has_mask: "torch.Tensor") -> Any:
        sparse = torch.cat([encoder._embed_points(points, labels, pad=False), encoder._embed_boxes(box)], dim=1)
        has = has_mask.reshape(-1, 1, 1, 1)
        dense = has * encoder.mask_downscaling(mask_input) + (1 - has) * encoder.no_mask_embed.weight.reshape(
            1, -1, 1, 1)
        return model.mask_decoder(embedding, encoder.get_dense_pe(), sparse, dense)

    return forward


def export_onnx(model: "SamLite", dest: Path, decoders: Sequence[str] = DECODERS,
                prompts: bool = False) -> list[tuple[str, list[int]]]:
    """Trace the encoder, the graphs of `decoders` and (`prompts`) the prompts graph of `model` (in eval mode)
    into `dest`.

    Returns the per-image (prepared) tensors' (name, shape) in the order the graphs take them (config.json
    sorts its keys, so a list keeps the order); empty without the factorised decoder.
    """
    import torch

    config = model.config
    image = torch.rand(1, 3, config.input_size, config.input_size, generator=torch.Generator().manual_seed(0))
    embedding = torch.zeros(1, *config.embedding_shape)
    side = float(config.box_frame)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.7]]) * side
    batch = boxes.repeat(FACTORISED_BOXES, 1) * torch.linspace(0.5, 1, FACTORISED_BOXES)[:, None]
    # three points (P is dynamic: a count of 1 could be specialised away) and a mask prompt
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(1, 3, 2, generator=generator) * side
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    mask_input = torch.randn(1, 1, config.low_res_size, config.low_res_size, generator=generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the legacy exporter's deprecation notice and tracer notes on shape checks are expected here
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            prepared = model.prepare(embedding) if "factorised" in decoders else {}
            names = list(prepared)
            graphs = [
                ("encoder", model.encode, (image,), ["images"], ["embeddings"]),
                ("decoder", model.decode, (embedding, boxes[:DECODER_BOXES]), ["embedding", "boxes"], LOGITS),
                ("prepare", lambda e: tuple(model.prepare(e).values()), (embedding,), ["embedding"], names),
                ("factorised", lambda *t: model.decode_prepared(dict(zip(names, t[:-1])), t[-1]),
                 (*prepared.values(), batch), [*names, "boxes"], LOGITS),
                (PROMPT_GRAPH, prompt_forward(model), (embedding, boxes[:1], points, labels, mask_input,
                                                       torch.ones(1)), PROMPT_INPUTS, LOGITS),
            ]
            wanted = ["encoder", *decoder_graphs(decoders), *([PROMPT_GRAPH] if prompts else [])]
            for name, forward, inputs, input_names, output_names in (g for g in graphs if g[0] in wanted):
                torch.onnx.export(_graph(model, forward), inputs, str(dest / f"{name}.onnx"), dynamo=False,
                                  opset_version=OPSET, input_names=input_names, output_names=output_names,
                                  dynamic_axes=PROMPT_AXES if name == PROMPT_GRAPH else None)
    finally:
        model.train(was_training)
    return [(name, list(t.shape)) for name, t in prepared.items()]


def traced_graphs(model: "SamLite", cache_dir: Path, key: str | None = None,
                  decoders: Sequence[str] = DECODERS, prompts: bool = False) -> Path:
    """The cached ONNX stage of `model` with the graphs of `decoders` (and `prompts`), tracing it only on a miss."""
    key = key or onnx_key(model, decoders, prompts)
    entry = cache_dir / ONNX_STAGE / key
    if _sound(entry, lambda: check_recorded(entry, read_meta(entry))) is None:
        import torch

        with building(entry) as tmp:
            prepared = export_onnx(model, tmp, decoders, prompts)
            write_meta(tmp, {"format": FORMAT_COMPILED, "stage": ONNX_STAGE, "key": key, "config": model.config.to_dict(),
                             "decoders": list(decoders), PROMPT_GRAPH: bool(prompts),
                             "prepared": prepared, "factorised_boxes": FACTORISED_BOXES,
                             "versions": {"torch": torch.__version__, "medsamlite": __version__}})
    return entry


def _sound(entry: Path, open_entry: Callable[[], Any]) -> Any:
    """`open_entry()` for a complete cache entry whose files pass their check; else None, a broken entry removed.

    A broken entry (a file missing, truncated or changed; its config.json gone) is discarded with a warning
    so that the caller rebuilds it.
    """
    if not entry.exists():
        return None
    try:
        if not entry_ready(entry):
            raise IntegrityError(f"{entry / CONFIG_FILE}: missing; the cache entry is incomplete")
        return open_entry() or entry
    except (IntegrityError, FileNotFoundError) as error:
        warnings.warn(f"{error}; rebuilding this cache entry", RuntimeWarning, stacklevel=3)
        discard(entry)
        return None


def build_entry(model: "SamLite", entry: Path, backend: str, precision: str, cache_dir: Path,
                calibration: Sequence[np.ndarray] | None, traced: str, decoders: Sequence[str],
                prompts: bool = False) -> None:
    """Write the compiled folder `entry` (atomically) from the cached ONNX stage."""
    graphs = traced_graphs(model, cache_dir, traced, decoders, prompts)
    batches = calibration_batches(calibration, model.config.input_size) if precision == "int8" else None
    donor = None if precision == "int8" else _same_graphs(model, backend, precision, cache_dir, traced)
    with building(entry) as tmp:
        meta = read_meta(graphs)
        if donor is None:
            files = convert.convert(backend, graphs, tmp, held_graphs(meta)[1:], precision, batches)
        else:
            files = read_meta(donor)["files"]
            for file in donor.iterdir():
                if file.is_file() and file.name != CONFIG_FILE:
                    shutil.copyfile(file, tmp / file.name)
        meta.update(stage="compiled", key=entry.name, onnx_key=traced, backend=backend, precision=precision,
                    files=files, input_shape=[1, 3, model.config.input_size, model.config.input_size],
                    calibration_images=len(batches) if batches else 0)
        meta["versions"][backend] = convert.version(backend)
        write_meta(tmp, meta)


def _same_graphs(model: "SamLite", backend: str, precision: str, cache_dir: Path, traced: str) -> Path | None:
    """A sound entry of the same traced graphs and backend at another precision but int8, whose graph files
    this one's equal (the precision is applied when the runtime compiles them): copied, not converted again."""
    for other in PRECISIONS:
        entry = cache_dir / cache_key(model, backend, other, None, traced)
        if other not in (precision, "int8") and _sound(entry, lambda: check_recorded(entry, read_meta(entry))):
            return entry
    return None


def compile(model: "SamLite", backend: str = "openvino", cache_dir: str | Path | None = None,
            precision: str = "f32", threads: int | None = None,
            calibration: Sequence[np.ndarray] | None = None,
            on_compile: Callable[[str], None] | None = None, decoder: str | None = "dense",
            decoders: Sequence[str] | None = None, prompts: bool = False) -> CompiledSam:
    """`model` on a CPU runtime, built once and loaded from the cache afterwards.

    precision: "f32" (exact, default), "bf16" (where the CPU has it, else f32 with a warning),
    "int8" (NNCF quantisation of the encoder; needs `calibration`, a list of preprocessed images),
    "auto" (the runtime's own default, reported back in `.precision`). `on_compile(message)` is called
    before a model that is not in the cache yet is compiled. `decoder`: "dense" or "factorised", the one
    the returned engine runs, "auto" (both, picked per image from the box count) or None (the encoder alone);
    `decoders`: those the entry holds (default: `entry_decoders(decoder)`; `export` asks for every one).
    `prompts`: the entry also holds the prompts graph, so that `decode` takes points and mask prompts
    (`Predictor.refine`); off by default, since tracing it adds to every first compile (`export` writes it).
    """
    _check_backend(backend)
    check_mode(decoder, allow_none=True)
    decoders = tuple(decoders if decoders is not None else entry_decoders(decoder))
    if not set(entry_decoders(decoder)) <= set(decoders) or not set(decoders) <= set(DECODERS):
        raise ValueError(f"decoder {decoder!r} with decoders {list(decoders)}: expected decoders among "
                         f"{', '.join(DECODERS)}, holding the decoder run")
    check_precision(precision)
    if precision == "int8" and not calibration:
        raise ValueError("precision='int8' needs calibration=[preprocessed images]; it is never chosen silently")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    traced = onnx_key(model, decoders, prompts)
    entry = cache_dir / cache_key(model, backend, precision, calibration if precision == "int8" else None, traced)
    compiled = _sound(entry, lambda: load(entry, precision=precision, threads=threads, decoder=decoder))
    if compiled is not None:
        return compiled
    if on_compile is not None:
        on_compile(f"compiling {model.config.name} for {backend} at {precision} (once; cached in {cache_dir})")
    build_entry(model, entry, backend, precision, cache_dir, calibration, traced, decoders, prompts)
    compiled = load(entry, precision=precision, threads=threads, decoder=decoder)
    if precision == "int8":
        _checked_int8(model, compiled, calibration, backend)
    return compiled


def _checked_int8(model: "SamLite", compiled: CompiledSam, calibration: Sequence[np.ndarray], backend: str) -> None:
    """Refuse (and remove from the cache) an int8 entry that is not its f32 network on this CPU."""
    batches = calibration_batches(calibration, model.config.input_size)
    try:
        compiled.meta.update(check_int8(model, compiled.encode, batches, backend))
    except Int8Refused:
        compiled.close()
        discard(compiled.path)
        raise


def check_export_directory(directory: Path) -> None:
    """A FileExistsError unless `directory` is new (or an empty folder) and its parent can be written."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory}: exists and is a file; expected a new folder for the export")
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: exists and is not empty; choose a new folder for the export")
    parent = next((p for p in directory.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{directory}: cannot be created ({parent} is not a writable folder)")


def export(model: "SamLite", directory: str | Path, backend: str = "openvino", precision: str = "f32",
           cache_dir: str | Path | None = None, calibration: Sequence[np.ndarray] | None = None) -> Path:
    """Write a self-describing compiled folder to `directory` (what `predict --model DIR` opens): the encoder,
    every decoder's graphs and the prompts graph (clicks: `Predictor.refine`)."""
    directory = Path(directory)
    check_export_directory(directory)
    if model.config.num_classes:  # the graphs are the box decoder's; the class prompts stay in torch
        warnings.warn(f"{model.config.name}: its {model.config.num_classes} class outputs are not exported; "
                      f"{directory} decodes boxes only (class maps need the torch model: `predict --classes`)",
                      UserWarning, stacklevel=2)
    compiled = compile(model, backend, cache_dir, precision, calibration=calibration, decoders=DECODERS,
                       prompts=True)
    with building(directory) as tmp:
        shutil.copytree(compiled.path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("ov_cache"))
    return directory
