"""Distil lightweight students from the pretrained LiteMedSAM on synthetic cases, for a bounded time on CPU.

    python benchmarks/distill_demo.py                       # repvit_m0_6_medsam and efficientvit_sam_l0_256, 180 s each
    python benchmarks/distill_demo.py --seconds 600 --students repvit_m0_6_medsam

For each student: `distill` its image encoder from the frozen teacher's embeddings (the student starts
from random weights; the teacher's prompt encoder and mask decoder are copied in at the end), then
report its agreement with the teacher on held-out synthetic cases (mean Dice between the two models'
masks for the same box, and each model's DSC against the ground truth) and its encoder speed-up
(median torch encode time, teacher / student, measured side by side in this process).
Writes bench-results/distill_demo.{csv,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import REPO, machine_header, markdown_table, write_csv, write_markdown  # noqa: E402

import torch  # noqa: E402

from medsamlite import create_model  # noqa: E402
from medsamlite.data.datasets import NpzImageDataset, NpzSliceDataset  # noqa: E402
from medsamlite.data.synthetic import MODALITIES, write_dataset  # noqa: E402
from medsamlite.training.distill import DistillConfig, distill  # noqa: E402
from medsamlite.training.finetune import dice_scores  # noqa: E402

COLUMNS = ("student", "distill_s", "steps", "first_mse", "last_mse", "agreement_dice", "student_dsc",
           "teacher_dsc", "teacher_encode_ms", "student_encode_ms", "speedup")


@torch.no_grad()
def masks(model, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits of `model` for each item's box, and the items' target masks."""
    logits = [model(item["image"][None], item["box"][None])[0] for item in items]
    return torch.cat(logits), torch.stack([item["mask"] for item in items])


def held_out_items(root: Path, config) -> list[dict]:
    """Every labelled slice of the held-out cases with one label each, no augmentation, tight boxes."""
    data = NpzSliceDataset(root, config, slices="all", augment=False, box_shift=0, seed=0)
    return [data[i] for i in range(len(data))]


@torch.no_grad()
def encode_ms(model, size: int, repeats: int) -> float:
    """Median wall time (ms) of one (1, 3, S, S) encode."""
    x = torch.rand(1, 3, size, size)
    model.encode(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", default=["repvit_m0_6_medsam", "efficientvit_sam_l0_256"])
    parser.add_argument("--seconds", type=float, default=180.0, help="distillation time per student")
    parser.add_argument("--train-cases", type=int, default=4, help="synthetic training cases per modality")
    parser.add_argument("--val-cases", type=int, default=1, help="held-out synthetic cases per modality")
    parser.add_argument("--size", type=float, default=0.5, help="synthetic image scale (1.0 = realistic)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=5, help="encode timings per model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    header = machine_header()
    teacher = create_model("litemedsam", pretrained=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, val_dir = Path(tmp) / "train", Path(tmp) / "val"
        write_dataset(train_dir, MODALITIES, args.train_cases, size=args.size, seed=0)
        write_dataset(val_dir, MODALITIES, args.val_cases, size=args.size, seed=1)
        teacher_items = held_out_items(val_dir, teacher.config)
        teacher_logits, targets = masks(teacher, teacher_items)
        teacher_ms = encode_ms(teacher, teacher.config.input_size, args.repeats)
        for name in args.students:
            student = create_model(name)
            data = NpzImageDataset(train_dir, {"student": student.config, "teacher": teacher.config}, seed=0)
            config = DistillConfig(output_dir=str(Path(tmp) / name), epochs=10_000, max_seconds=args.seconds,
                                   batch_size=args.batch_size, lr=args.lr,
                                   device="cpu", progress=False)
            result = distill(student, teacher, data, config)
            student_logits, _ = masks(student, held_out_items(val_dir, student.config))
            student_ms = encode_ms(student, student.config.input_size, args.repeats)
            rows.append(dict(
                student=name, distill_s=round(result.seconds, 1), steps=result.steps,
                first_mse=result.losses[0], last_mse=statistics.mean(result.losses[-10:]),
                agreement_dice=float(dice_scores(student_logits, (teacher_logits > 0).float()).mean()),
                student_dsc=float(dice_scores(student_logits, targets).mean()),
                teacher_dsc=float(dice_scores(teacher_logits, targets).mean()),
                teacher_encode_ms=teacher_ms, student_encode_ms=student_ms, speedup=teacher_ms / student_ms))
            print(rows[-1], flush=True)
    header += [f"teacher: litemedsam (pretrained); {len(teacher_items)} held-out labelled slices/images from "
               f"{args.val_cases} synthetic case(s) per modality; training: {args.train_cases} per modality, "
               f"size {args.size}; {args.seconds:.0f} s of distillation per student, batch {args.batch_size}, "
               f"lr {args.lr}; torch {torch.__version__}, {torch.get_num_threads()} threads"]
    write_csv(rows, args.out / "distill_demo.csv")
    table = markdown_table(rows, COLUMNS)
    write_markdown(args.out / "distill_demo.md", "Distillation demo", header, table)
    print("\n".join(header) + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
