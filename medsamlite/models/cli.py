"""`medsamlite models`: the registry as a table."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names")


def model_table(pattern: str = "*") -> list[dict]:
    """One row per registered model: sizes and parameter counts of each part."""
    from ..checkpoints import PRETRAINED
    from ..registry import create_model, get_model_config, list_models

    rows = []
    for name in list_models(pattern):
        config = get_model_config(name)
        counts = create_model(name).parameter_counts()
        rows.append({"name": name, "encoder": config.encoder, "input": config.input_size,
                     "embedding": "x".join(map(str, config.embedding_shape)),
                     "encoder_params": counts["image_encoder"], "prompt_params": counts["prompt_encoder"],
                     "decoder_params": counts["mask_decoder"], "total_params": counts["total"],
                     "pretrained": "yes" if config.pretrained in PRETRAINED else "no"})
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
