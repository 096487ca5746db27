"""`medsamlite models`: the registry as a table, from each entry's recorded facts (no model is built, no torch)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names")


def model_table(pattern: str = "*") -> list[dict]:
    """One row per registered model: sizes, the reference's parameter counts and whether weights are packaged."""
    from ..registry import get_model_spec, list_models

    rows = []
    for name in list_models(pattern):
        spec = get_model_spec(name)
        config = spec.config
        total, encoder = spec.reference_params or ("", "")
        rows.append({"name": name, "encoder": config.encoder, "input": config.input_size,
                     "embedding": "x".join(map(str, config.embedding_shape)),
                     "encoder_params": encoder, "total_params": total,
                     "pretrained": "yes" if spec.pretrained else "no", "description": spec.description})
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of `rows` (dicts with the same keys)."""
    if not rows:
        return "(no models)"
    keys = list(rows[0])
    cells = [[f"{r[k]:,}" if isinstance(r[k], int) and k.endswith("params") else str(r[k]) for k in keys]
             for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])


def run(args: argparse.Namespace) -> int:
    print(format_table(model_table(args.pattern)))
    return 0
