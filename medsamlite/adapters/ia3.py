"""IA3 through peft: learned vectors, initialised to ones, rescale the activations of the target layers.

A feed-forward layer (an MLP's second layer) has its input rescaled, the others their output (arXiv 2205.05638).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from peft import IA3Config

from .registry import Method, register_method
from .tuners import modules_to_save, peft_apply


@dataclass
class Ia3Settings:
    """Which targets count as feed-forward (input rescaled): a regex on the module name."""

    feedforward: str = r".*\.(fc2|lin2|point_conv\.conv|conv2\.c)"


def ia3_config(names: list[str], settings: Ia3Settings, train_decoder: bool) -> IA3Config:
    """peft's IA3 config on exactly `names`."""
    feedforward = [n for n in names if re.fullmatch(settings.feedforward, n)]
    return IA3Config(target_modules=names, feedforward_modules=feedforward, modules_to_save=modules_to_save(train_decoder))


METHOD = register_method(Method(
    "ia3", Ia3Settings, peft_apply(ia3_config), peft_layout=True,
    description="peft IA3: a scaling vector per target layer (input of feed-forward layers, else output)"))
