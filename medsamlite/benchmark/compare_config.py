"""What a `bench compare` run runs: its settings (`BenchConfig`), the main job's runs and its data set
(the given folder, or a synthetic one it generates)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..constants import find_cases
from ..extras import missing


@dataclass(frozen=True)
class DataSetting:
    """The synthetic set generated when no --data is given."""

    modalities: tuple[str, ...]
    size: float
    depth: float  # 3D slice-count scale: slices, not pixels, decide a 3D case's runtime
    per_modality: int = 1


# 4 images (one with 30 boxes) + a volume of 3 slices at 0.35 of the realistic size: the main job runs them
# three times, within 90 s with its compiles (`bench --models` on `--data` for every modality)
DEFAULT_DATA = DataSetting(("CT", "US", "X-Ray", "Endoscopy", "Microscope"), size=0.35, depth=0.125)
SMALL_DATA = DataSetting(("CT", "US", "Microscope"), size=0.15, depth=0.2)
MAIN_MODEL = "litemedsam"  # the one model with packaged trained weights
# (backend, precision) rows of the main job; "auto" is the runtime's default (bf16 where the CPU has it)
MAIN_RUNS = (("torch", "f32"), ("openvino", "f32"), ("openvino", "auto"))
SPEED_BACKEND, SPEED_PRECISION, SPEED_REPEATS = "openvino", "f32", 3


@dataclass
class BenchConfig:
    """What `medsamlite bench` runs; None fields take the default (or --small) setting."""

    out: Path = Path("bench-results")
    models: Sequence[str] | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    backend: str = "torch"
    data: Path | None = None
    small: bool = False
    precision: str = "f32"
    threads: int | None = None
    seed: int = 0
    size: float | None = None  # synthetic image scale (default: the setting's)
    depth: float | None = None  # synthetic slice-count scale (default: the setting's)

    @property
    def main_job(self) -> bool:
        """No --models: the trained model per backend plus the speed chart of every encoder."""
        return not self.models

    @property
    def data_setting(self) -> DataSetting:
        base = SMALL_DATA if self.small else DEFAULT_DATA
        return DataSetting(base.modalities, self.size or base.size, self.depth or base.depth, base.per_modality)

    def model_names(self) -> list[str]:
        """The models run over the cases (the main job: the trained one)."""
        return list(self.models) if self.models else [MAIN_MODEL]

    def runs(self) -> tuple[list[tuple[str, str, str]], list[str]]:
        """(model, backend, precision) per run, and a note for each run skipped (backend not installed)."""
        if not self.main_job:
            return [(m, self.backend, self.precision) for m in self.model_names()], []
        runs, notes = [], []
        for backend, precision in MAIN_RUNS:
            if backend == "openvino" and precision == "auto" and not missing(backend) and _auto_is_f32():
                notes.append("openvino auto: resolves to f32 on this CPU (no native bf16), so the openvino f32 "
                             "run stands for it")
            elif backend == "torch" or not missing(backend):
                runs.append((MAIN_MODEL, backend, precision))
            else:
                notes.append(f"{backend} {precision}: skipped, {backend} is not installed "
                             f"(pip install \"medsamlite[{backend}]\")")
        return runs, notes


def _auto_is_f32() -> bool:
    from ..runtime.openvino import default_precision

    return default_precision() == "f32"


class BenchError(RuntimeError):
    """The benchmark cannot start (data folder, model names); one line."""


def prepare_data(config: BenchConfig) -> tuple[Path, list[Path]]:
    """The data folder and its cases: the given one (`imgs/`, ground truth in `gts/` where there is some), or
    a freshly generated synthetic set. Cases without ground truth are run and timed, not scored."""
    if config.data is None:
        from ..data.synthetic import write_dataset

        root = config.out / "data"
        setting = config.data_setting
        write_dataset(root, setting.modalities, setting.per_modality, setting.size, config.seed, setting.depth)
    else:
        root = Path(config.data)
        if not (root / "imgs").is_dir():
            raise BenchError(f"{root}: no 'imgs/' folder; expected imgs/*.npz (imgs, boxes, spacing) and, "
                             "to score them, gts/*.npz (gts)")
    cases = find_cases(root / "imgs").files
    if not cases:
        raise BenchError(f"{root / 'imgs'}: no .npz cases")
    return root, cases
