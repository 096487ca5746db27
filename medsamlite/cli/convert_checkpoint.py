"""`medsamlite convert-checkpoint SRC DST.safetensors --trust-checkpoint`: unpickle a trusted file once, keep tensors."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="a checkpoint that needs unpickling (e.g. a whole saved model)")
    parser.add_argument("destination", type=Path, help="the .safetensors file to write (a state_dict)")
    parser.add_argument("--trust-checkpoint", action="store_true", required=True,
                        help="required: reading SOURCE runs the Python code pickled in it")


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import CheckpointError, convert_checkpoint

    try:
        out = convert_checkpoint(args.source, args.destination)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}: a state_dict that loads without unpickling")
    return 0
