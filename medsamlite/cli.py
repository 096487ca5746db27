"""The `medsamlite` command: `models | predict | export | bench | train`.

Each subcommand lives beside the code it drives, in a module exposing `add_arguments(parser)` and
`run(args) -> int`; this file only dispatches, so `medsamlite predict` imports no torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "models": ("medsamlite.models.cli", "list the registered models with their sizes"),
    "predict": ("medsamlite.inference.cli", "segment task-format .npz cases (a file or a folder)"),
    "export": ("medsamlite.export.cli", "export a model to OpenVINO / ONNX Runtime"),
    "bench": ("medsamlite.benchmark.cli", "compare models on DSC, NSD, runtime and memory"),
    "train": ("medsamlite.training.cli", "distil, fine-tune, or train per-modality adapters"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported (keeps `predict` light)."""
    parser = argparse.ArgumentParser(prog="medsamlite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if only in (None, name):
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
