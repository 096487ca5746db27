"""SAM heads (prompt encoder, mask decoder) and `SamLite`, an encoder composed with them."""

from ..extras import require

require("torch", "medsamlite.models")

from .._lazy import lazy_exports

_LAZY = {
    "SamLite": "sam", "sam_heads": "sam", "PromptEncoder": "prompt_encoder", "MaskDecoder": "mask_decoder",
    "FactorisedMaskDecoder": "factorised_decoder", "TwoWayTransformer": "transformer", "ClassPrompts": "class_prompts",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
