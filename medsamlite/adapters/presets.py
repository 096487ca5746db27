"""Presets that choose parameters of the model itself: full fine-tuning and decoder-only fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .registry import PARAMS, Applied, Method, Request, register_method
from .targets import DECODER


@dataclass
class NoSettings:
    """A preset has no settings."""


def everything(model: nn.Module, settings: NoSettings, request: Request) -> Applied:
    names = [n for n, _ in model.named_parameters()]
    return Applied(names, names)


def decoder(model: nn.Module, settings: NoSettings, request: Request) -> Applied:
    """The mask decoder trains; the image and prompt encoders stay frozen."""
    names = [n for n, _ in model.named_parameters() if n.startswith(DECODER + ".")]
    return Applied([DECODER], names)


FULL = register_method(Method("full", NoSettings, everything, kind=PARAMS, takes_targets=False,
                              description="every parameter (the baseline)"))
DECODER_ONLY = register_method(Method("decoder", NoSettings, decoder, kind=PARAMS, takes_targets=False,
                                      description="the mask decoder only (image and prompt encoders frozen)"))
