"""Export to OpenVINO and ONNX Runtime: parity with torch for every registered model, the cache, the torch-free path.

Each model is traced once per test session: compiled models live in one on-disk cache shared by the
tests (and by tests/test_precision.py), so later compiles of the same model only convert or load.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, cache_dir, golden_arrays, golden_case_for, torch_model  # noqa: F401
from medsamlite import create_model, list_models
from medsamlite.export import cache_key, compile, export
from medsamlite.export.cache import building, entry_ready
from medsamlite.export.compile import ONNX_STAGE, onnx_key
from medsamlite.runtime import Predictor
from medsamlite.runtime.compiled import load
from test_models import reference

MODELS = list_models()
# the cheapest registered model for the tests where any model will do
CHEAP = "repvit_m0_6_medsam" if "repvit_m0_6_medsam" in MODELS else MODELS[0]
BACKEND_NAMES = ["onnxruntime", "openvino"]


def golden_case_inputs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2D uint8 image and its three boxes from the golden fixture of the model's encoder."""
    arrays = golden_arrays(golden_case_for(name))
    return np.round(arrays["image"][0].transpose(1, 2, 0) * 255).astype(np.uint8), arrays["boxes3"]


def random_images(size: int, n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def test_decoder_graph_is_static_and_decode_takes_any_number_of_boxes(cache_dir: Path) -> None:
    from medsamlite.runtime.openvino import shared_core

    compiled = compile(torch_model(CHEAP), "openvino", cache_dir=cache_dir)
    graph = shared_core().read_model(str(compiled.path / compiled.meta["files"]["decoder"]))
    assert [tuple(i.get_partial_shape().to_shape()) for i in graph.inputs] == [(1, 256, 64, 64), (1, 4)]
    embedding = reference(CHEAP).embedding
    boxes = np.array([[10, 20, 120, 200], [60, 30, 250, 180], [0, 0, 255, 255], [5, 5, 50, 60]], np.float32)
    together, iou = compiled.decode(embedding, boxes)
    for i in (0, 3):
        one, one_iou = compiled.decode(embedding, boxes[i:i + 1])
        np.testing.assert_allclose(one[0], together[i], atol=1e-4)
        np.testing.assert_allclose(one_iou[0], iou[i], atol=1e-5)
    empty, empty_iou = compiled.decode(embedding, np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 1, 256, 256) and empty_iou.shape == (0, 1)


def test_read_ir_gives_what_convert_model_gives(cache_dir: Path, tmp_path: Path) -> None:
    """The compiled encoder (ONNX read by the Core) computes exactly what `ov.convert_model`'s IR computes."""
    import openvino as ov

    from medsamlite.runtime.openvino import shared_core

    compiled = compile(torch_model(CHEAP), "openvino", cache_dir=cache_dir, decoder=None)
    onnx = cache_dir / ONNX_STAGE / compiled.meta["onnx_key"] / "encoder.onnx"
    ov.save_model(ov.convert_model(str(onnx)), str(tmp_path / "encoder.xml"), compress_to_fp16=False)
    converted = shared_core().compile_model(str(tmp_path / "encoder.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    image = random_images(compiled.config.input_size)
    np.testing.assert_array_equal(compiled.encode(image), converted.create_infer_request().infer([image])[0])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_encoding_a_batch_equals_encoding_each_image(backend: str, cache_dir: Path) -> None:
    compiled = compile(torch_model(CHEAP), backend, cache_dir=cache_dir)
    images = np.concatenate([random_images(compiled.config.input_size, seed=s) for s in range(3)])
    together = compiled.encode(images)
    for i in range(3):
        np.testing.assert_allclose(together[i:i + 1], compiled.encode(images[i:i + 1]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_outputs_are_not_reused_buffers(backend: str, cache_dir: Path) -> None:
    compiled = compile(torch_model(CHEAP), backend, cache_dir=cache_dir)
    size = compiled.config.input_size
    a_images, b_images = random_images(size, seed=1), random_images(size, seed=2)
    first = compiled.encode(a_images)
    kept = first.copy()
    second = compiled.encode(b_images)
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
    both = compiled.encode(np.concatenate([a_images, b_images]))  # a batch runs image by image
    np.testing.assert_allclose(both, np.concatenate([first, second]), atol=1e-5)


def test_second_compile_loads_from_disk(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compile_module = sys.modules["medsamlite.export.compile"]  # the attribute `compile` is the function
    convert_module = sys.modules["medsamlite.export.convert"]
    model = torch_model(CHEAP)
    first = compile(model, "openvino", cache_dir=cache_dir)

    def no_export(*args, **kwargs):
        raise AssertionError("traced or converted again although the model is cached")

    monkeypatch.setattr(compile_module, "export_onnx", no_export)
    monkeypatch.setattr(convert_module, "convert", no_export)
    second = compile(model, "openvino", cache_dir=cache_dir)
    assert second.path == first.path and entry_ready(second.path)
    assert second.loaded_from_cache  # OpenVINO's own model cache (CACHE_DIR) inside the entry
    images = reference(CHEAP).images
    np.testing.assert_array_equal(second.encode(images), first.encode(images))


def test_changed_weight_or_config_misses(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compile_module = sys.modules["medsamlite.export.compile"]
    model = torch_model(CHEAP)
    key = cache_key(model, "openvino", "f32")
    compile(model, "openvino", cache_dir=cache_dir)
    changed = create_model(CHEAP, checkpoint=model.state_dict())
    assert cache_key(changed, "openvino", "f32") == key
    with torch.no_grad():
        changed.mask_decoder.iou_token.weight[0, 0] += 1e-3
    assert cache_key(changed, "openvino", "f32") != key
    for change in ({"input_size": 2 * model.config.input_size}, {"normalization": "imagenet"}):
        other = copy.copy(model)  # same weights, another config
        other.config = model.config.replace(**change)
        assert cache_key(other, "openvino", "f32") != key, change
    assert cache_key(model, "onnxruntime", "f32") != key

    class Traced(Exception):
        pass

    def tracing(*args, **kwargs):
        raise Traced

    monkeypatch.setattr(compile_module, "export_onnx", tracing)
    with pytest.raises(Traced):  # a miss: the changed model is traced, never served the stale entry
        compile(changed, "openvino", cache_dir=cache_dir)
    assert not any(p.name.endswith(".tmp") for p in cache_dir.rglob("*")), "a failed build left a temporary folder"


def test_building_is_atomic_and_first_writer_wins(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with building(final) as first:
        (first / "config.json").write_text('{"who": "first"}')
        with building(final) as second:  # a second process finishing first
            (second / "config.json").write_text('{"who": "second"}')
        assert entry_ready(final)
    assert json.loads((final / "config.json").read_text()) == {"who": "second"}
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    with pytest.raises(RuntimeError), building(tmp_path / "failed") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("export failed")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_concurrent_compiles_leave_one_valid_entry(tmp_path: Path) -> None:
    name = CHEAP
    script = textwrap.dedent(f"""
        import sys, torch
        from medsamlite import create_model
        from medsamlite.export import compile
        torch.manual_seed(0)
        model = create_model({name!r})
        compiled = compile(model, "onnxruntime", cache_dir=sys.argv[1])
        print(compiled.path)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert entries == sorted([Path(paths.pop()).name, "onnx"])
    assert len(list((tmp_path / "onnx").iterdir())) == 1
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
    # loaded in a fresh process: ONNX Runtime and OpenVINO sessions of earlier tests share this one
    entry = tmp_path / next(e for e in entries if e != "onnx")
    check = ("import sys, numpy as np; from medsamlite.runtime.compiled import load; c = load(sys.argv[1]); "
             "s = c.config.input_size; assert np.isfinite(c.encode(np.random.rand(1, 3, s, s).astype(np.float32))).all()")
    subprocess.run([sys.executable, "-c", check, str(entry)], cwd=REPO, env=_env(), check=True, timeout=600)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_exported_folder_predicts_without_torch(backend: str, cache_dir: Path, tmp_path: Path) -> None:
    folder = export(torch_model(CHEAP), tmp_path / "exported", backend=backend, cache_dir=cache_dir)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["backend"] == backend and meta["precision"] == "f32" and meta["config"]["name"] == CHEAP
    ref = reference(CHEAP)
    image, boxes = ref.image, ref.golden_boxes
    cases = tmp_path / "cases"
    cases.mkdir()
    np.savez(cases / "2DBox_golden.npz", imgs=image, boxes=boxes.astype(np.int64))
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from medsamlite.cli import main
        from medsamlite.runtime.compiled import load
        from medsamlite.runtime import Predictor
        compiled = load({str(folder)!r}, backend={backend!r})
        segs = Predictor(compiled).predict_2d(np.load({str(cases / '2DBox_golden.npz')!r})["imgs"],
                                              np.load({str(cases / '2DBox_golden.npz')!r})["boxes"])
        np.save({str(tmp_path / 'api.npy')!r}, segs)
        rc = main(["predict", "-i", {str(cases)!r}, "-o", {str(tmp_path / 'out')!r}, "--model", {str(folder)!r},
                   "--backend", {backend!r}])
        print("RC", rc, "IMPORTED", [m for m in ("torch", "scipy", "matplotlib") if m in sys.modules])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RC 0 IMPORTED []" in result.stdout, result.stdout + result.stderr[-3000:]
    for segs in (np.load(tmp_path / "api.npy"), np.load(tmp_path / "out" / "2DBox_golden.npz")["segs"]):
        assert segs.shape == ref.segs.shape and (segs == ref.segs).mean() >= 0.999


def test_export_cli_writes_a_loadable_folder(cache_dir: Path, tmp_path: Path) -> None:
    import argparse

    from medsamlite.cli import export as cli

    checkpoint = tmp_path / "weights.pth"
    torch.save(torch_model(CHEAP).state_dict(), checkpoint)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model", CHEAP, "--checkpoint", str(checkpoint), "--backend", "onnxruntime",
                              "--cache-dir", str(cache_dir), "-o", str(tmp_path / "out")])
    assert cli.run(args) == 0
    compiled = load(tmp_path / "out")
    assert compiled.backend == "onnxruntime" and compiled.config.name == CHEAP
    assert cli.run(args) == 1  # a second export into the same folder: a one-line error, nothing overwritten
    assert load(tmp_path / "out").config.name == CHEAP


def test_load_errors_name_the_folder(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)
    folder = compile(torch_model(CHEAP), "onnxruntime", cache_dir=cache_dir).path
    with pytest.raises(ValueError, match="backend 'onnxruntime', not 'openvino'"):
        load(folder, backend="openvino")
    with pytest.raises(ValueError, match="int8"):
        load(folder, precision="int8")
    with pytest.raises(ValueError, match="backend 'tensorrt'"):
        compile(torch_model(CHEAP), "tensorrt", cache_dir=cache_dir)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_close_releases_the_runtime_and_a_closed_engine_refuses_work(backend: str, cache_dir: Path) -> None:
    path = compile(torch_model(CHEAP), backend, cache_dir=cache_dir).path
    images = random_images(torch_model(CHEAP).config.input_size)
    with load(path) as engine:
        assert engine.encode(images).shape[0] == 1
    assert engine.closed and "closed" in repr(engine)
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="is closed"):
        engine.encode(images)
    with pytest.raises(RuntimeError, match="is closed"):
        engine.decode(np.zeros((1, *engine.config.embedding_shape), np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(RuntimeError, match="is closed"), engine:
        pass
    again = load(path)  # the runtime's shared state (OpenVINO's one Core) survives a close
    assert np.isfinite(again.encode(images)).all()
    again.close()


def test_torch_engine_closes_too() -> None:
    with torch_model(CHEAP).as_engine() as engine:
        pass
    with pytest.raises(RuntimeError, match="is closed"):
        engine.encode(random_images(engine.config.input_size))


def test_the_traced_graphs_key_follows_the_code_of_the_model_s_modules(tmp_path: Path, monkeypatch) -> None:
    """An upgrade that changes what a module computes (same weights, same repr) must not reuse old graphs."""
    source = tmp_path / "extra_block.py"
    source.write_text("import torch\n\n\nclass Extra(torch.nn.Identity):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import extra_block

    model = copy.deepcopy(torch_model(CHEAP))
    model.extra = extra_block.Extra()
    before = onnx_key(model)
    assert onnx_key(model) == before
    source.write_text("import torch\n\n\nclass Extra(torch.nn.Identity):\n    pass  # new code, same class\n")
    assert onnx_key(model) != before

