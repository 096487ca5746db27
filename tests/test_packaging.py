"""The runtime extra alone: the wheel installed with `[openvino]` in a fresh venv runs exported models (plain and
data-aware) and scores segmentations without torch, with label maps identical to the full install's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from medsamlite.data.synthetic import write_dataset


def _env() -> dict[str, str]:
    """No PYTHONPATH: each interpreter imports its own install, not this checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(python: Path | str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Path:
    """The python of a new venv holding the wheel with `[openvino]`, installed as a user would."""
    root = tmp_path_factory.mktemp("runtime")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO), cwd=root)
    assert built.returncode == 0, built.stderr
    wheel = next((root / "dist").glob("medsamlite-*.whl"))
    assert run(sys.executable, "-m", "venv", str(root / "venv"), cwd=root).returncode == 0
    python = root / "venv" / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "-q", f"{wheel}[openvino]", cwd=root)
    assert installed.returncode == 0, installed.stderr
    return python


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """Task cases, an exported LiteMedSAM (packaged weights) and an exported data-aware model, from the full install."""
    import torch

    import medsamlite
    from medsamlite.adapters.daft import DataAwareModel
    from medsamlite.export import export
    from medsamlite.runtime.router import Router, parse_groups

    root = tmp_path_factory.mktemp("exported")
    write_dataset(root / "data", modalities=("US", "CT"), size=0.15, depth=0.05)
    model = medsamlite.create_model("litemedsam", pretrained=True)
    torch.manual_seed(0)
    daft = DataAwareModel.with_adapters(medsamlite.create_model("efficientvit_sam_l0", input_size=64),
                                        Router(parse_groups("US")), "lora", r=2)
    with torch.no_grad():  # a non-zero adapter, so the routed group differs from the base
        for name, p in daft.base.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    return {"data": root / "data", "litemedsam": export(model, root / "litemedsam_ov", "openvino", cache_dir=cache_dir),
            "daft": daft.export(root / "daft_ov", backend="openvino", cache_dir=cache_dir)}


def test_runtime_install_has_no_torch(runtime, tmp_path):
    probe = run(runtime, "-c", "import importlib.util as u; print([m for m in ('torch', 'timm', 'scipy', 'monai') "
                               "if u.find_spec(m)])", cwd=tmp_path)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


@pytest.mark.parametrize("model", ["litemedsam", "daft"])
def test_runtime_predicts_what_the_full_install_predicts(runtime, exported, model, tmp_path):
    for python, out in ((sys.executable, "full"), (runtime, "runtime")):
        done = run(python, "-m", "medsamlite", "predict", "-i", str(exported["data"]), "-o", str(tmp_path / out),
                   "--model", str(exported[model]), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (exported["data"] / "imgs").glob("*.npz"))
    segs = {name: [np.load(tmp_path / out / name)["segs"] for out in ("full", "runtime")] for name in names}
    assert all(np.array_equal(full, light) for full, light in segs.values())
    assert any(full.any() for full, _ in segs.values())  # not trivially equal (the daft model is untrained)


def test_runtime_scores_segmentations(runtime, exported, tmp_path):
    segs = tmp_path / "segs"
    assert run(runtime, "-m", "medsamlite", "predict", "-i", str(exported["data"]), "-o", str(segs),
               "--model", str(exported["litemedsam"]), cwd=tmp_path).returncode == 0
    done = run(runtime, "-m", "medsamlite", "evaluate", "--segs", str(segs), "--gts", str(exported["data"] / "gts"),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| all | 2 |" in (segs / "summary.md").read_text()


def test_a_part_without_its_extra_is_one_line(runtime, exported, tmp_path):
    case = next((exported["data"] / "imgs").glob("*US*.npz"))
    done = run(runtime, "-m", "medsamlite", "predict", "-i", str(case), "-o", str(tmp_path / "o"),
               "--model", "litemedsam", "--backend", "openvino", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'medsamlite[torch]'" in lines[0], done.stderr
    done = run(runtime, "-c", "import medsamlite; medsamlite.create_model('litemedsam')", cwd=tmp_path)
    assert "MissingExtra" in done.stderr and "medsamlite[torch]" in done.stderr.strip().splitlines()[-1]


def test_the_example_container_entry_runs_in_the_runtime_install(runtime, exported, tmp_path):
    """examples/predict.sh (what examples/Dockerfile runs) on the runtime venv: the same label maps."""
    env = {**_env(), "PATH": f"{runtime.parent}{os.pathsep}{os.environ['PATH']}", "INPUTS": str(exported["data"]),
           "OUTPUTS": str(tmp_path / "outputs"), "MODEL": str(exported["litemedsam"])}
    done = subprocess.run(["sh", str(REPO / "examples" / "predict.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    reference = run(sys.executable, "-m", "medsamlite", "predict", "-i", str(exported["data"]), "-o",
                    str(tmp_path / "full"), "--model", str(exported["litemedsam"]), cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    for case in (exported["data"] / "imgs").glob("*.npz"):
        assert np.array_equal(np.load(tmp_path / "outputs" / case.name)["segs"],
                              np.load(tmp_path / "full" / case.name)["segs"])
