"""`medsamlite train distill | finetune | daft`: the one training loop from the command line (no torch at import).

    medsamlite train finetune DATA --model litemedsam --model-pretrained --output runs/ft --precision bf16
    medsamlite train distill DATA --student repvit_m0_6_medsam --teacher litemedsam --teacher-pretrained \\
        --teacher-cache runs/teacher-cache
    medsamlite train daft DATA --method lora ...
    accelerate launch --num_processes 2 -m medsamlite train finetune DATA ...   (or torchrun; gloo on CPU)

DATA is a folder of task `.npz` cases (imgs/ + gts/, or files holding both imgs and gts).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..constants import TRAIN_PRECISIONS
from ..training.config import DistillConfig, FinetuneConfig, TrainConfig


def _probabilities(pairs: list[str] | None) -> dict[str, float] | None:
    """["CT=0.4", "MR=0.1"] to {"CT": 0.4, "MR": 0.1}."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--modality-probabilities {pair!r}: expected MODALITY=P, e.g. CT=0.4")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--modality-probabilities {pair!r}: expected MODALITY=P, e.g. CT=0.4")
    return out


def _annotated(values: list[str] | None) -> dict[str, list[int]]:
    """--annotated: GLOB=IDS entries ('CT_AbdomenCT*=1,2,3') or one JSON file holding {glob: [ids]}; {} without."""
    if not values:
        return {}
    if len(values) == 1 and "=" not in values[0]:
        return _annotated_file(Path(values[0]))
    out = {}
    for value in values:
        pattern, sep, ids = value.partition("=")
        try:
            out[pattern] = [int(c) for c in ids.split(",")]
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise SystemExit(f"medsamlite train: --annotated {value!r}: expected GLOB=IDS, e.g. 'CT_AbdomenCT*=1,2,3' "
                             "(a glob over case names or a modality, then class ids), or a JSON file")
    return out


def _annotated_file(path: Path) -> dict[str, list[int]]:
    """The {glob: [class ids]} map of a JSON file, with a one-line error naming the file and the key."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"medsamlite train: --annotated {path}: cannot be read as JSON ({type(error).__name__}); "
                         "expected a file holding {\"GLOB\": [class ids]} or GLOB=IDS entries") from None
    if not isinstance(data, dict):
        raise SystemExit(f"medsamlite train: {path}: holds a {type(data).__name__}; expected an object "
                         "{\"GLOB\": [class ids]}")
    for key, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
            raise SystemExit(f"medsamlite train: {path}: key {key!r} is {json.dumps(ids)[:60]}; expected a list of "
                             "class ids (integers)")
    return data


def _loop_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The training loop's options, the same for every mode."""
    p.add_argument("data", help="folder of task .npz cases")
    p.add_argument("--output", default=defaults.output_dir, help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    p.add_argument("--max-steps", type=int, help="optimiser steps (also the length of the LR schedule)")
    p.add_argument("--max-seconds", type=float, help="stop after this much training time")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW peak learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="default: %(default)s")
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warmup, then cosine")
    p.add_argument("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per optimiser step")
    p.add_argument("--grad-clip", type=float, help="clip the gradient norm to this")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS,
                   help="bf16: autocast on CPU and CUDA; fp16: autocast + loss scaling, CUDA only (default: what "
                        "`accelerate launch --mixed_precision` or the accelerate config set, else f32)")
    p.add_argument("--save-every", type=int, default=defaults.save_every, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=defaults.keep, help="checkpoints kept (default: %(default)s)")
    p.add_argument("--resume", help="continue from OUTPUT (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--slices", choices=("random", "all"), default="random",
                   help="3D: one random slice per volume per epoch, or every slice (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=defaults.num_workers, help="DataLoader workers")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=defaults.sync_bn,
                   help="SyncBatchNorm across processes (CUDA; default: on where BatchNorm layers train under "
                        "more than one process)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device,
                   help="auto: CUDA when available (the launcher gives each process its GPU)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seeds model init, data order and augmentation")
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--log-every", type=int, default=defaults.log_every, help="steps between log rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--targets-per-image", type=int, default=default,
                   help="K boxes per image through the decoder after one encoder pass (0: one target per item, "
                        "default: %(default)s)")


def _model_options(p: argparse.ArgumentParser, role: str, default: str | None) -> None:
    flag = f"--{role}"
    p.add_argument(flag, default=default, required=default is None,
                   help=f"registered model name or a folder saved by save_model (default: {default})")
    p.add_argument(f"{flag}-checkpoint", help="weights to load (any supported layout)")
    p.add_argument(f"{flag}-pretrained", action="store_true", help="load the packaged pretrained weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_command", required=True)
    ft_defaults, ds_defaults = FinetuneConfig(), DistillConfig()

    ft = sub.add_parser("finetune", help="fine-tune a model on box-prompted items (LiteMedSAM recipe)")
    _loop_options(ft, ft_defaults)
    _model_options(ft, "model", "litemedsam")
    _targets_option(ft, 5)  # MedficientSAM's
    ft.add_argument("--input-size", type=int, help="encoder input side (default: the model's)")
    ft.add_argument("--val-data", help="validation cases (default: a split of DATA by case)")
    ft.add_argument("--val-fraction", type=float, default=0.2, help="case split when no --val-data")
    ft.add_argument("--loss", help=f"litemedsam, daft, dice_focal; partial_bce_dice, partial_bce, partial_dice "
                                   f"with --num-classes (default: {ft_defaults.loss}, partial_bce_dice with classes)")
    ft.add_argument("--num-classes", type=int, default=0, metavar="C",
                    help="train C class outputs (learned class prompts beside the box, labels 1..C of gts) with a "
                         "masked partial-label loss (docs/training.md)")
    ft.add_argument("--annotated", nargs="+", metavar="GLOB=IDS",
                    help="which classes each source data set labels, e.g. 'CT_AbdomenCT*=1,2,3' (a glob over case "
                         "names or a modality; the first match wins; unmatched cases: every class), or a JSON file "
                         "holding the same map; classes a case's source does not label get no gradient from it")
    ft.add_argument("--freeze", nargs="*", default=list(ft_defaults.freeze),
                    help="parts to freeze, e.g. image_encoder prompt_encoder (default: %(default)s)")
    ft.add_argument("--patience", type=int, default=ft_defaults.early_stopping_patience,
                    help="early stopping: epochs without a better validation loss (default: %(default)s; 0: off)")
    ft.add_argument("--box-shift", type=int, default=5, help="random box widening, px (default: %(default)s)")
    ft.add_argument("--no-flips", action="store_true",
                    help="train on the images as they are (no random flips): with the image encoder frozen, "
                         "every later epoch then reads its embeddings from the cache")
    ft.add_argument("--decoder", choices=("dense", "factorised"), default=ft_defaults.decoder,
                    help="factorised: each image's box-independent decoder part once, the same gradients to "
                         "rounding, about 1.9x less decoder work at 8 targets per image (default: %(default)s)")
    ft.add_argument("--interactive", type=int, default=ft_defaults.interactive, metavar="ROUNDS",
                    help="also train ROUNDS rounds of simulated clicks per step, each with the previous mask as "
                         "a prompt (SAM / micro-sam style; dense decoder); 0: boxes only (default: %(default)s)")
    ft.add_argument("--embedding-cache", type=int, default=ft_defaults.embedding_cache, metavar="IMAGES",
                    help="with the image encoder frozen, keep the embeddings of this many images (4 MiB each) so "
                         "a repeated image costs no encoder pass; 0: off (default: %(default)s)")
    ft.add_argument("--modality-probabilities", nargs="*", metavar="MODALITY=P",
                    help="modality-balanced sampling, e.g. CT=0.4 MR=0.1 (the rest share the remainder)")
    ft.add_argument("--temperature", type=float, help="modality sampling by frequency^(1/T) (inf: uniform)")
    ft.add_argument("--samples-per-epoch", type=int, help="items drawn per epoch by the modality sampler")

    ds = sub.add_parser("distill", help="distil a student's image encoder from a teacher's embeddings")
    _loop_options(ds, ds_defaults)
    _model_options(ds, "student", None)
    _model_options(ds, "teacher", "litemedsam")
    ds.add_argument("--input-size", type=int, help="student encoder input side (default: the model's)")
    ds.add_argument("--teacher-cache", help="folder of fp16 teacher embeddings (turns augmentation off: "
                                            "a flipped image has no cached embedding)")
    ds.add_argument("--no-copy-heads", action="store_true", help="keep the student's own prompt encoder/decoder")

    daft = sub.add_parser("daft", help="fine-tune one adapter per modality group")
    _daft_arguments(daft)

    student = sub.add_parser("student", help="distil a student by a reproducible recipe, in resumable pieces")
    _student_arguments(student)


def _load(name: str, checkpoint: str | None, pretrained: bool, input_size: int | None = None):
    from ..factory import create_model, load_model

    if Path(name).is_dir():
        if checkpoint or pretrained or input_size:
            raise SystemExit(f"{name} is a saved model folder; --*-checkpoint/--*-pretrained/--input-size do not apply")
        return load_model(name)
    return create_model(name, checkpoint=checkpoint, pretrained=pretrained,
                        **({"input_size": input_size} if input_size else {}))


def _loop_config(cls: type, args: argparse.Namespace, **extra):
    """A config dataclass from the loop options (and `extra`)."""
    return cls(output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps, max_seconds=args.max_seconds,
               batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
               warmup_steps=args.warmup_steps, grad_accum=args.grad_accum, grad_clip=args.grad_clip,
               precision=args.precision, device=args.device, seed=args.seed, save_every=args.save_every,
               keep=args.keep, resume=args.resume, num_workers=args.num_workers, sync_bn=args.sync_bn,
               log_every=args.log_every,
               progress=not args.no_progress, **extra)


def _start(args: argparse.Namespace) -> dict:
    """Threads and the seed, before any model is built (the seed decides its initialisation); run.json's args."""
    import torch
    from accelerate.utils import set_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def _targets(k: int) -> dict:
    return {"targets_per_image": k} if k else {}


def _finetune(args: argparse.Namespace) -> int:
    from ..data.datasets import NpzSliceDataset, case_files, split_cases
    from ..data.samplers import ModalityBalancedSampler
    from ..training.finetune import finetune

    info = _start(args)
    model = _load(args.model, args.model_checkpoint, args.model_pretrained, args.input_size)
    classes, loss = _classes(args)
    if classes:
        from ..factory import with_classes

        try:
            model = with_classes(model, args.num_classes)
        except ValueError as error:
            raise SystemExit(f"medsamlite train: {args.model}: {error}") from None
    if args.val_data:
        train_files, val_files = case_files(args.data), case_files(args.val_data)
    else:
        train_files, val_files = split_cases(case_files(args.data), args.val_fraction, args.seed)
    k = _targets(args.targets_per_image)
    train = NpzSliceDataset(train_files, model.config, slices=args.slices, augment=not args.no_flips,
                            box_shift=args.box_shift, seed=args.seed, **k, **classes)
    val = (NpzSliceDataset(val_files, model.config, slices="all", augment=False, seed=args.seed, **k, **classes)
           if val_files else None)
    sampler = None
    if args.modality_probabilities or args.temperature or args.samples_per_epoch:
        sampler = ModalityBalancedSampler(train.modalities, _probabilities(args.modality_probabilities),
                                          args.temperature, args.samples_per_epoch, args.seed)
    config = _loop_config(FinetuneConfig, args, loss=loss, freeze=tuple(args.freeze),
                          early_stopping_patience=args.patience or None, decoder=args.decoder,
                          interactive=args.interactive, embedding_cache=args.embedding_cache)
    result = finetune(model, train, val, config, sampler=sampler, run_info=info)
    if result.rank:
        return 0
    print(f"{result.epochs} epochs, {result.steps} steps on {result.world_size} process(es); best validation loss "
          f"{result.best_val_loss:.4f} (epoch {result.best_epoch}){'; stopped early' if result.stopped_early else ''}; "
          f"model in {result.output_dir / 'model'}, log in {result.output_dir / 'log.csv'}")
    if sampler is not None:
        print(sampler.report())
    return 0


def _classes(args: argparse.Namespace) -> tuple[dict, str]:
    """The datasets' class options (empty without --num-classes) and the loss: --loss, else the mode's default."""
    if args.num_classes < 0 or (args.annotated and not args.num_classes):
        raise SystemExit("medsamlite train: --annotated needs --num-classes C > 0" if args.annotated else
                         f"medsamlite train: --num-classes {args.num_classes}; expected C > 0 (or 0: no classes)")
    if not args.num_classes:
        if (args.loss or "").startswith("partial_"):
            raise SystemExit(f"medsamlite train: --loss {args.loss} trains class outputs; expected --num-classes C")
        return {}, args.loss or FinetuneConfig.loss
    annotated = _annotated(args.annotated)
    for pattern, ids in annotated.items():
        bad = [c for c in ids if not 1 <= c <= args.num_classes]
        if bad:
            raise SystemExit(f"medsamlite train: --annotated {pattern!r} has class ids {bad}; "
                             f"expected 1..{args.num_classes}")
    return {"num_classes": args.num_classes, "annotated_classes": annotated}, args.loss or "partial_bce_dice"


def _distill(args: argparse.Namespace) -> int:
    from ..data.datasets import NpzImageDataset
    from ..training.distill import distill

    info = _start(args)
    student = _load(args.student, args.student_checkpoint, args.student_pretrained, args.input_size)
    teacher = _load(args.teacher, args.teacher_checkpoint, args.teacher_pretrained)
    data = NpzImageDataset(args.data, {"student": student.config, "teacher": teacher.config}, slices=args.slices,
                           augment=not args.teacher_cache, seed=args.seed)
    config = _loop_config(DistillConfig, args, copy_heads=not args.no_copy_heads, teacher_cache=args.teacher_cache)
    result = distill(student, teacher, data, config, run_info=info)
    if result.rank:
        return 0
    last = sum(result.losses[-10:]) / max(len(result.losses[-10:]), 1)
    print(f"{result.steps} steps in {result.seconds:.0f} s on {result.world_size} process(es); embedding MSE "
          f"{result.losses[0]:.4g} -> {last:.4g}; student saved to {args.output}")
    return 0


def _daft_arguments(parser: argparse.ArgumentParser) -> None:
    """`medsamlite train daft` options."""
    _loop_options(parser, dataclasses.replace(FinetuneConfig(), output_dir="runs/daft", lr=1e-4))
    _targets_option(parser, 0)  # DAFT's recipe: one target per item
    parser.add_argument("--model", default="litemedsam", help="registered model name or a folder saved by save_model")
    parser.add_argument("--input-size", type=int, help="encoder input side (default: the model's)")
    parser.add_argument("--checkpoint", help="weights to start from (any supported layout)")
    parser.add_argument("--pretrained", action="store_true", help="start from the packaged pretrained weights")
    parser.add_argument("--method", default="lora", help="adaptation method: lora, arena, adalora, ia3, vera, bitfit, norm, full, decoder, adaptformer, "
                        "probe, spatial (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank / ARENA initial rank")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lam", type=float, default=1e-3, help="ARENA ℓ1 weight on the gate")
    parser.add_argument("--groups", help="e.g. '3D=CT@3D,MR@3D,PET@3D;XRay;US' (MODALITY@3D / @2D: that dimension "
                        "only; default: DAFT's nine groups, docs/adapters.md)")
    parser.add_argument("--fallback", default="general", help="group for unknown names (the base model)")
    parser.add_argument("--include-decoder", action="store_true", help="adapt the decoder's attention/MLP too")
    parser.add_argument("--train-decoder", action="store_true", help="a trainable decoder copy per group")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--patience", type=int, default=7, help="early-stopping patience in epochs")
    parser.add_argument("--export", metavar="BACKEND",
                        help="also export per-group compiled models (openvino, onnxruntime)")


def _daft(args: argparse.Namespace) -> int:
    """Train per-group adapters, save the data-aware model to OUTPUT/model (and OUTPUT/compiled; rank 0)."""
    from accelerate import PartialState

    from ..adapters import api
    from ..data.datasets import case_files
    from ..runtime.router import DEFAULT_GROUPS, Router, parse_groups
    from ..training.daft import DaftSettings, train_daft

    _start(args)
    base = _load(args.model, args.checkpoint, args.pretrained, args.input_size)
    router = Router(parse_groups(args.groups) if args.groups else dict(DEFAULT_GROUPS), fallback=args.fallback)
    accepted = api.get_method(args.method).settings.__dataclass_fields__  # each method takes its own settings
    adapter = {k: v for k, v in {"r": args.rank, "alpha": args.alpha, "lam": args.lam}.items() if k in accepted}
    settings = DaftSettings(args.method, adapter, args.include_decoder, args.train_decoder, args.val_fraction,
                            args.targets_per_image or None)
    config = _loop_config(FinetuneConfig, args, early_stopping_patience=args.patience)
    model, results = train_daft(base, case_files(args.data), router, settings, config)
    if PartialState().is_main_process:  # every rank holds the same weights (the loop checked their digests)
        model.save(Path(args.output) / "model")
        for group, r in results.items():
            print(f"{group}: " + ", ".join(f"{k}={v}" for k, v in r.items()))
        if args.export:
            model.export(Path(args.output) / "compiled", backend=args.export)
        print(f"saved {Path(args.output) / 'model'}" + (f" and {Path(args.output) / 'compiled'}" if args.export else ""))
    return 0


def _student_arguments(parser: argparse.ArgumentParser) -> None:
    """`medsamlite train student` options (the recipe fixes the rest)."""
    from ..training.recipe_names import RECIPE_NAMES

    parser.add_argument("--recipe", default=RECIPE_NAMES[0], choices=RECIPE_NAMES, help="default: %(default)s")
    parser.add_argument("--output", required=True, help="the run's folder (plan, checkpoints, student, agreement)")
    parser.add_argument("--budget-minutes", type=float, help="CPU minutes for the whole run, every piece counted "
                        "(sets the number of steps once, in the first piece)")
    parser.add_argument("--steps", type=int, help="plan this many optimiser steps instead of a budget")
    parser.add_argument("--piece-minutes", type=float, help="stop this piece after this many minutes (resume later)")
    parser.add_argument("--resume", action="store_true", help="continue the run planned in OUTPUT")
    parser.add_argument("--data-dir", help="images, teacher cache and teacher masks (default: OUTPUT); runs of "
                        "recipes with the same data settings may share one")
    parser.add_argument("--curve", action="store_true", help="also measure every checkpoint's agreement "
                        "(OUTPUT/curve.json, curve.png)")
    parser.add_argument("--ship", metavar="FILE", help="when the run is finished, write its student to FILE "
                        "(.safetensors, fp16 where agreement holds) and print the sha256 for its registry entry")
    parser.add_argument("--threads", type=int, help="torch threads")


def _student(args: argparse.Namespace) -> int:
    import torch

    from ..training.recipe import PLAN_FILE, RECIPES, agreement_curve, run_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    planned = (Path(args.output).expanduser() / PLAN_FILE).exists()
    if planned != args.resume:
        raise SystemExit(f"medsamlite train student: {args.output} " + (
            "holds a planned run; pass --resume to continue it" if planned else "has no planned run to --resume"))
    if not planned and (args.budget_minutes is None) == (args.steps is None):
        raise SystemExit("medsamlite train student: a new run needs --budget-minutes or --steps (one of them)")
    recipe = RECIPES[args.recipe]
    plan = run_recipe(recipe, args.output, args.budget_minutes, args.piece_minutes, args.steps, args.data_dir,
                      progress=True)
    print(f"{args.recipe}: {plan['steps_done']} of {plan['steps']} steps, {plan['cpu_minutes']} CPU minutes so far")
    for part, result in plan.get("agreement", {}).items():
        if result["mean"] is not None:  # a part without images (a recipe without real ones) has no agreement
            print(f"  agreement on {part}: mean {result['mean']:.4f}, worst {result['worst']:.4f}")
    if args.curve:
        from ..benchmark.plots import agreement_curves

        points = agreement_curve(recipe, args.output, args.data_dir)
        print(f"curve: {agreement_curves({args.recipe: points}, Path(args.output).expanduser() / 'curve.png')}")
    if args.ship and "agreement" in plan:
        from ..training.recipe import ship_student

        shipped = ship_student(args.output, args.ship, args.data_dir)
        print(f"shipped {args.ship}: {shipped['precision']}, sha256 {shipped['sha256']}")
    return 0 if plan["steps_done"] >= plan["steps"] else 3


def run(args: argparse.Namespace) -> int:
    from ..training.loop import check_settings, resolve_precision

    if args.train_command == "student":
        return _student(args)

    try:
        check_settings(resolve_precision(args.precision)[0], args.device)
    except ValueError as error:
        raise SystemExit(f"medsamlite train: {error}") from None
    return {"finetune": _finetune, "distill": _distill, "daft": _daft}[args.train_command](args)
