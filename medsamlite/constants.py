"""Names shared by every part of medsamlite (one place each) and the discovery of task cases (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__version__ = "0.1.0"

# runtimes a model runs on; "auto": OpenVINO where installed, else torch
BACKENDS = ("torch", "openvino", "onnxruntime")
RUNTIME_BACKENDS = ("openvino", "onnxruntime")
# "f32" exact everywhere; "bf16" where the CPU has it; "int8" NNCF-quantised encoder; "auto" the runtime's choice
PRECISIONS = ("f32", "bf16", "int8", "auto")
# training: "bf16" autocast on CPU and CUDA; "fp16" autocast with loss scaling, CUDA only
TRAIN_PRECISIONS = ("f32", "bf16", "fp16")
TORCH_PRECISIONS = ("f32", "bf16")  # what a torch model runs inference at (`TorchEngine`)
# mask decoders: "dense" (SAM's, every box from scratch); "factorised" (box-independent part once per image)
DECODERS = ("dense", "factorised")
# the phases a case's time is split into (timings.csv, benchmarks)
PHASES = ("read", "preprocess", "encode", "decode", "postprocess", "write")

# canonical imaging modalities (the training set's spellings)
MODALITIES = ("CT", "MR", "PET", "XRay", "US", "Endoscopy", "Dermoscopy", "Fundus", "Mammography",
              "Microscopy", "OCT")
MODALITIES_3D = ("CT", "MR", "PET")
# the task's test-case names spell two modalities differently: 2DBox_X-Ray_0053, 2DBox_Microscope_0016
TEST_NAME_TOKENS = {"XRay": "X-Ray", "Microscopy": "Microscope"}

# the `format` field that says what a folder holds, and the files that carry it
FORMAT_MODEL = "medsamlite"  # a torch model: model.safetensors + config.json (checkpoints.save_model)
FORMAT_COMPILED = "medsamlite-compiled"  # encoder + decoder graphs + config.json (export)
FORMAT_DAFT = "medsamlite-daft"  # per-group models behind a router: daft.json
FORMAT_ADAPTER = "medsamlite-adapter"
FORMAT_PREPARED = "medsamlite-prepared"  # training data as memory-mappable arrays + one index (data prepare)
CONFIG_FILE, WEIGHTS_FILE, DAFT_MANIFEST = "config.json", "model.safetensors", "daft.json"

CASE_SUFFIX = ".npz"


@dataclass
class Cases:
    """The case files found under a path and the entries that were passed over (with the reason)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _is_case_name(path: Path) -> bool:
    return path.name.lower().endswith(CASE_SUFFIX) and not path.name.startswith(".")


def find_cases(path: str | Path, recursive: bool = False) -> Cases:
    """Task `.npz` cases named by `path`: the file itself, `path/imgs/*.npz`, or `path/*.npz` (`**` if recursive).

    The suffix is matched case-insensitively. Entries that look like cases but are not readable regular
    files (a dangling symlink, a folder named `x.npz`) are listed in `skipped`; hidden files (temporary
    outputs start with a dot) are ignored. Raises FileNotFoundError when `path` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return Cases([path])
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    folder = path / "imgs" if (path / "imgs").is_dir() else path
    found = Cases()
    for entry in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if not _is_case_name(entry) or any(p.startswith(".") for p in entry.relative_to(folder).parts[:-1]):
            continue
        if entry.is_file():
            found.files.append(entry)
        elif entry.is_symlink() and not entry.exists():
            found.skipped.append(f"{entry}: a dangling symlink")
        elif not entry.is_dir() or not recursive:
            found.skipped.append(f"{entry}: not a regular file")
    return found
