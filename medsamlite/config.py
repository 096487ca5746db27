"""Model configuration: the single source of each registry entry's constants (torch-free)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# fields of folders saved by earlier versions that now live in the registry's ModelSpec
_RETIRED = ("pretrained", "description")


@dataclass(frozen=True)
class ModelConfig:
    """What code needs to know about a model without building it.

    `input_size` is the square encoder input S; boxes are given to the prompt encoder in the
    same S frame (`box_frame`). `normalization` is "minmax" (per image to [0, 1], the task's
    convention) or "imagenet" (min-max, then ImageNet mean/std, EfficientViT-SAM upstream).
    """

    name: str
    encoder: str
    input_size: int = 256
    embed_dim: int = 256
    embed_size: int = 64
    normalization: str = "minmax"
    # EfficientViT-SAM sets every LayerNorm of the model, the decoder's included, to eps 1e-6
    decoder_norm_eps: float = 1e-5
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    # SAM's heads, the same for every registered model
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # learned class-prompt tokens (`models.class_prompts`) for partial-label training; 0: box outputs only
    num_classes: int = 0

    @property
    def box_frame(self) -> int:
        return self.input_size

    @property
    def low_res_size(self) -> int:
        """Side of the mask decoder's logits (4x the embedding grid)."""
        return 4 * self.embed_size

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        return (self.embed_dim, self.embed_size, self.embed_size)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in _RETIRED}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**d)
