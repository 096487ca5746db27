"""The `medsamlite` command: each subcommand is a module here with `add_arguments(parser)` and `run(args) -> int`.

Only the chosen subcommand's module is imported, so `medsamlite predict` on an exported folder imports no torch.
"""
# the module docstring is for developers; users read DESCRIPTION and EPILOG in `medsamlite --help`
from __future__ import annotations

import argparse
import importlib
import sys

from ..constants import __version__
from ..extras import MissingExtra
from ..runtime.allocator import keep_freed_memory

__all__ = ["main"]

DESCRIPTION = ("Segment medical images with lightweight Segment-Anything models on a CPU: box-prompted 2D and 3D "
               "task-format .npz cases, models to export, train and benchmark.")
EPILOG = ("Start with `medsamlite models`, then `medsamlite predict -i imgs/ -o segs/ --pretrained`. "
          "`medsamlite COMMAND --help` lists a command's options. Documentation: docs/ in the repository.")

COMMANDS = {
    "models": "list the registered models with their sizes",
    "predict": "segment task-format .npz cases (a file or a folder)",
    "evaluate": "score existing segmentations against ground truth (DSC, NSD) as the task does",
    "export": "export a model to OpenVINO / ONNX Runtime",
    "bench": "compare models on DSC, NSD, runtime and memory",
    "train": "fine-tune, distil, or train per-modality adapters",
    "data": "prepare training data once for fast memory-mapped reading",
    "convert-checkpoint": "rewrite a trusted pickled checkpoint as safetensors",
}


def _module(name: str) -> str:
    return f"{__name__}.{name.replace('-', '_')}"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported (keeps `predict` light)."""
    parser = argparse.ArgumentParser(prog="medsamlite", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"medsamlite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=_module(name))
        if only in (None, name):
            importlib.import_module(_module(name)).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    keep_freed_memory()  # torch passes 40% faster on a VM where page faults are dear (runtime/allocator.py)
    try:
        if only:  # a command may give a default to its own sub-command (`bench` runs `bench compare`)
            prepare = getattr(importlib.import_module(_module(only)), "prepare_argv", None)
            argv = [only, *prepare(argv[1:])] if prepare else argv
        args = build_parser(only).parse_args(argv)
        return int(importlib.import_module(args._module).run(args) or 0)
    except MissingExtra as error:  # a part whose extra is not installed: one line, no traceback
        print(f"medsamlite {only or ''}: {error}".replace("  ", " "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # SIGINT outside a command's own handling (loading a model, compiling)
        print(f"interrupted: medsamlite {only or ''} stopped".replace("  ", " "), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
