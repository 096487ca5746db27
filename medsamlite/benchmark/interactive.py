"""`medsamlite bench interactive`: the CVPR 2025 interactive challenge's click protocol, per model and modality.

    medsamlite bench interactive                          # litemedsam(_clicks) on a synthetic set in OUT/data
    medsamlite bench interactive --models litemedsam repvit_m0_6_medsam --data CASES --out interactive-results
    medsamlite bench interactive --models litemedsam runs/finetune/model  # before and after a finetune

Each case starts from its boxes (click 0), then gets up to `--clicks` rounds: in each, every label whose mask
is still wrong gets one click at the interior point of its largest error region farthest from the region's
boundary, positive in a missed region and negative in a spurious one, and `Predictor.refine` re-decodes it
from its box, its clicks and its previous logits (no encoder call). DSC/NSD follow the task's scoring; DSC_AUC
and NSD_AUC are the challenge's (docs/benchmarks.md). Writes interactive.csv (one row per model, case and
click), interactive.md and interactive.png (DSC against clicks).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .report import machine_header, markdown_table, write_csv, write_markdown

CLICKS = 5  # the challenge's refinement rounds
MODELS = ("litemedsam", "litemedsam_clicks")  # the packaged model, and the same after an interactive finetune
SYNTHETIC = ("CT", "MR", "US", "X-Ray", "Endoscopy", "Dermoscopy")


def next_click(segs: np.ndarray, gts: np.ndarray, label: int) -> tuple[tuple[int, ...], bool] | None:
    """The challenge's simulated click on `label`: (index, positive), or None when its mask is right.

    The largest connected error region (8- / 26-connected), its Euclidean distance to the nearest voxel outside
    it (the image border counts as outside), a maximum picked as the challenge's script picks it (seed 42).
    """
    from scipy import ndimage

    error = (segs == label) != (gts == label)
    if not error.any():
        return None
    regions, _ = ndimage.label(error, structure=np.ones((3,) * error.ndim))
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    largest = np.pad(regions == sizes.argmax(), 1)
    distance = ndimage.distance_transform_edt(largest)[(slice(1, -1),) * error.ndim]
    peaks = np.argwhere(distance == distance.max())
    index = tuple(int(i) for i in peaks[np.random.RandomState(42).choice(len(peaks))])
    return index, bool(gts[index] == label)


def auc(values: list[float], clicks: int = CLICKS) -> float:
    """The challenge's DSC_AUC / NSD_AUC: the trapezoid area under the last `clicks` scores at unit spacing
    (the click rounds, not the box alone)."""
    from scipy.integrate import trapezoid

    return float(trapezoid(np.asarray(values[-clicks:], np.float64)))


def _ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as archive:
        if "gts" not in archive.files:
            raise ValueError(f"{path}: no key 'gts' (keys: {', '.join(archive.files) or 'none'})")
        return archive["gts"], archive["spacing"] if "spacing" in archive.files else None


def run_case(predictor, case, gts: np.ndarray, spacing, clicks: int = CLICKS) -> list[dict]:
    """Click 0 (the boxes) and `clicks` rounds on one case: rows of click, dsc, nsd, seconds."""
    from ..runtime.metrics import evaluate_case
    from ..runtime.predictor import Click

    def row(click: int, seconds: float) -> dict:
        score = evaluate_case(state.segs, gts, spacing)
        return {"click": click, "dsc": score.mean_dsc, "nsd": score.mean_nsd, "seconds": seconds}

    start = time.perf_counter()
    state = predictor.start(case.imgs, case.boxes)
    rows = [row(0, time.perf_counter() - start)]
    for k in range(1, clicks + 1):
        new = []
        for label in range(1, len(case.boxes) + 1):
            found = next_click(state.segs, gts, label)
            if found is None:
                continue
            index, positive = found
            z = index[0] if case.kind == "3D" else 0
            if case.kind == "3D" and not case.boxes[label - 1][2] <= z <= case.boxes[label - 1][5]:
                continue  # an error outside the object's box: its slices were never decoded
            new.append(Click(label, float(index[-1]), float(index[-2]), positive, z))
        start = time.perf_counter()
        if new:
            state = predictor.refine(state, new)
        rows.append(row(k, time.perf_counter() - start))
    return rows


def load(name: str) -> tuple[object, str]:
    """(model, its weights' kind): a saved model folder ("saved"), else the registered model `name` with its
    packaged weights ("trained") or seeded random ones ("random")."""
    from ..factory import create_model, has_pretrained, load_model
    from ..registry import get_model_config

    if Path(name).is_dir():
        return load_model(name), "saved"
    pretrained = has_pretrained(get_model_config(name))
    return create_model(name, pretrained=pretrained), "trained" if pretrained else "random"


def run_model(name: str, files: list[Path], gts_dir: Path, clicks: int, log: Callable[[str], None] = print
              ) -> tuple[list[dict], str]:
    """Every case with ground truth through the protocol on model `name` (`load`)."""
    from ..runtime import Predictor
    from ..runtime.modality import parse_modality
    from ..runtime.npz import read_case

    model, weights = load(name)
    predictor = Predictor(model)
    rows = []
    for path in files:
        try:
            gts, spacing = _ground_truth(gts_dir / path.name)
            case = read_case(path)
            case_rows = run_case(predictor, case, gts, spacing, clicks)
        except (OSError, ValueError) as error:  # one bad case never stops the others
            log(f"skipped {path}: {error}")
            continue
        modality = parse_modality(path.name)
        rows += [{"model": name, "case": path.name, "modality": modality, **r} for r in case_rows]
        log(f"{name} {path.name}: DSC " + " ".join(f"{r['dsc']:.3f}" for r in case_rows))
    return rows, weights


def summarise(rows: list[dict], clicks: int) -> list[dict]:
    """Per model and modality (and "all"): mean DSC per click, DSC_AUC, NSD_AUC, final DSC/NSD, seconds per click."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in rows:
        for modality in (r["modality"], "all"):
            groups.setdefault((r["model"], modality), {}).setdefault(r["case"], []).append(r)
    summary = []
    for (model, modality), cases in groups.items():
        curves = [sorted(c, key=lambda r: r["click"]) for c in cases.values()]
        out = {"model": model, "modality": modality, "cases": len(curves)}
        for k in range(clicks + 1):
            out[f"dsc_{k}"] = float(np.mean([c[k]["dsc"] for c in curves]))
        out["dsc_auc"] = float(np.mean([auc([r["dsc"] for r in c], clicks) for c in curves]))
        out["nsd_auc"] = float(np.mean([auc([r["nsd"] for r in c], clicks) for c in curves]))
        out["dsc_final"] = out[f"dsc_{clicks}"]
        out["nsd_final"] = float(np.mean([c[-1]["nsd"] for c in curves]))
        out["seconds_per_click"] = float(np.mean([r["seconds"] for c in curves for r in c[1:]])) if clicks else 0.0
        summary.append(out)
    return sorted(summary, key=lambda s: (s["model"], s["modality"] != "all", s["modality"]))


def plot(summary: list[dict], clicks: int, path: Path, title: str) -> Path:
    """Mean DSC against clicks (0 = the boxes alone), one line per model, over all cases."""
    from .plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in (s for s in summary if s["modality"] == "all"):
        ax.plot(range(clicks + 1), [s[f"dsc_{k}"] for k in range(clicks + 1)], marker="o", label=s["model"])
    ax.set_xticks(range(clicks + 1))
    ax.set_xlabel("clicks (0 = the boxes alone)")
    ax.set_ylabel("mean DSC")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registered models (packaged weights "
                        "where there are, else seeded random weights) or saved model folders (a finetune's model/)")
    parser.add_argument("--data", type=Path, help="a folder with imgs/*.npz and gts/*.npz (default: a synthetic set "
                        "written to OUT/data)")
    parser.add_argument("--clicks", type=int, default=CLICKS, help="click rounds after the boxes")
    parser.add_argument("--modalities", nargs="+", default=list(SYNTHETIC), help="synthetic modalities")
    parser.add_argument("--synthetic-cases", type=int, default=2, help="synthetic cases per modality")
    parser.add_argument("--size", type=float, default=0.35, help="synthetic image scale (1.0 = realistic)")
    parser.add_argument("--depth", type=float, default=0.25, help="synthetic 3D slice-count scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("interactive-results"))


def run(args: argparse.Namespace) -> int:
    """The protocol of `args` (see `add_arguments`); writes the reports and prints the table."""
    import torch

    from ..constants import find_cases
    from ..runtime.precision import cpu_summary

    if args.clicks < 0:
        raise SystemExit(f"--clicks {args.clicks}; expected 0 or more")
    if args.data is None:
        from ..data.synthetic import write_dataset

        root = args.out / "data"
        write_dataset(root, args.modalities, args.synthetic_cases, args.size, args.seed, args.depth)
        source = (f"synthetic set ({args.synthetic_cases} cases of {', '.join(args.modalities)} at size {args.size}, "
                  f"depth {args.depth}; not the challenge's data)")
    else:
        root = args.data
        source = f"{root}"
    files = find_cases(root / "imgs").files if (root / "imgs").is_dir() else []
    if not files:
        raise SystemExit(f"{root}: no imgs/*.npz cases; expected imgs/*.npz and gts/*.npz")
    rows, weights = [], {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model_rows, weights[name] = run_model(name, files, root / "gts", args.clicks)
        rows += model_rows
    if not rows:
        raise SystemExit(f"{root}: no case could be scored (see the lines above); expected gts/*.npz beside imgs/")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv([{k: r[k] for k in ("model", "case", "modality", "click", "dsc", "nsd", "seconds")} for r in rows],
              args.out / "interactive.csv")
    summary = summarise(rows, args.clicks)
    header = machine_header() + [
        f"models: {', '.join(f'{m} ({w} weights)' for m, w in weights.items())}; {source}",
        f"click 0 = the boxes; then {args.clicks} rounds of one simulated click per wrong label (the CVPR 2025 "
        "interactive challenge's protocol), previous logits fed back",
        f"dsc_k: mean DSC after k clicks; dsc_auc / nsd_auc: trapezoid area over the last {min(args.clicks, CLICKS)} "
        "rounds at unit spacing (the challenge's); seconds_per_click: mean wall time of one refine round"]
    columns = ["model", "modality", "cases", *(f"dsc_{k}" for k in range(args.clicks + 1)), "dsc_auc", "nsd_auc",
               "dsc_final", "nsd_final", "seconds_per_click"]
    table = markdown_table([{**s, **{c: f"{s[c]:.3f}" for c in columns[3:]}} for s in summary], columns)
    write_markdown(args.out / "interactive.md", "Interactive segmentation: DSC and NSD against clicks", header, table)
    plot(summary, args.clicks, args.out / "interactive.png", f"{', '.join(args.models)}; {cpu_summary()}")
    print((args.out / "interactive.md").read_text())
    return 0
