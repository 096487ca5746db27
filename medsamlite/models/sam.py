"""`SamLite`: a registered image encoder composed with SAM's prompt encoder and mask decoder."""
from __future__ import annotations

import torch
from torch import nn

from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..constants import DECODERS
from .class_prompts import ClassPrompts
from .factorised_decoder import FactorisedMaskDecoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

if TYPE_CHECKING:
    from ..torch_engine import TorchEngine


def sam_heads(config: ModelConfig) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder at the sizes `config` gives."""
    grid = (config.embed_size, config.embed_size)
    prompt_encoder = PromptEncoder(config.embed_dim, grid, (config.box_frame, config.box_frame),
                                   mask_in_chans=config.mask_in_chans)
    transformer = TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.embed_dim,
                                    mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_heads,
                                    norm_eps=config.decoder_norm_eps)
    mask_decoder = MaskDecoder(transformer_dim=config.embed_dim, transformer=transformer,
                               num_multimask_outputs=config.num_multimask_outputs,
                               iou_head_depth=config.iou_head_depth, iou_head_hidden_dim=config.iou_head_hidden_dim)
    return prompt_encoder, mask_decoder


def class_prompts(config: ModelConfig) -> ClassPrompts | None:
    """The class-prompt tokens `config.num_classes` asks for; None for a box-only model."""
    return ClassPrompts(config.num_classes, config.embed_dim) if config.num_classes else None


class SamLite(nn.Module):
    """Image encoder + prompt encoder + mask decoder, callable as two halves (`encode`, `decode`).

    The parts come in built (`medsamlite.create_model` builds them from the registry); state-dict keys
    follow the reference layout: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`, and
    `class_prompts.*` for a model with class outputs (`config.num_classes` > 0, see `decode_classes`).
    """

    def __init__(self, config: ModelConfig, image_encoder: nn.Module, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, class_prompts: ClassPrompts | None = None) -> None:
        super().__init__()
        found = class_prompts.num_classes if class_prompts is not None else 0
        if found != config.num_classes:
            raise ValueError(f"config '{config.name}' has num_classes={config.num_classes}; "
                             f"the class prompts given have {found}")
        self.config = config
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.class_prompts = class_prompts

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) to image embeddings (B, 256, 64, 64)."""
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor | None = None, multimask_output: bool = False,
               decoder: str = "dense", *, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts on one shared (1, ...) or N paired embeddings to low-res logits and IoU.

        A prompt is any mix of a box (N, 4), points ((N, P, 2) as x, y; labels (N, P): 1 positive, 0 negative,
        -1 padding) and the previous low-res mask logits (N, 1, L, L), all in the S frame, as SAM's prompt
        encoder takes them. decoder="factorised" (one shared embedding, no mask prompt) gives the dense
        decoder's logits up to rounding by `prepare` + `decode_prepared`.
        """
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
        if decoder == "factorised":
            if embeddings.shape[0] != 1:
                raise ValueError(f"decoder='factorised' takes one shared embedding, got {embeddings.shape[0]}")
            if masks is not None:  # a mask prompt changes the image tokens per prompt: nothing is shared to prepare
                raise ValueError("decoder='factorised' takes boxes and points, not a mask prompt; use decoder='dense'")
            return self.decode_prepared(self.prepare(embeddings), boxes, multimask_output, points=points)
        sparse, dense = self.embed_prompts(boxes, points, masks)
        return self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

    def decode_classes(self, embeddings: torch.Tensor, boxes: torch.Tensor, decoder: str = "dense"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """N boxes on one shared or N paired embeddings to per-class logits (N, C, L, L) and IoU (N, C).

        Each box goes through SAM's decoder once per class, its sparse prompt extended by that class's token.
        """
        if self.class_prompts is None:
            raise ValueError(f"model '{self.config.name}' has no class outputs (num_classes 0); "
                             "expected one trained with --num-classes")
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
        c = self.class_prompts.num_classes
        sparse, dense = self.embed_prompts(boxes, None, None)
        sparse = self.class_prompts(sparse)
        if decoder == "factorised":
            if embeddings.shape[0] != 1:
                raise ValueError(f"decoder='factorised' takes one shared embedding, got {embeddings.shape[0]}")
            logits, iou = FactorisedMaskDecoder(self.mask_decoder)(self.prepare(embeddings),
                                                                   self.prompt_encoder.get_dense_pe(), sparse)
        else:
            paired = embeddings if embeddings.shape[0] == 1 else embeddings.repeat_interleave(c, 0)
            logits, iou = self.mask_decoder(paired, self.prompt_encoder.get_dense_pe(), sparse,
                                            dense.repeat_interleave(c, 0))
        return logits.reshape(-1, c, *logits.shape[-2:]), iou.reshape(-1, c)

    def embed_prompts(self, boxes: torch.Tensor | None, points: tuple[torch.Tensor, torch.Tensor] | None,
                      masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense prompt embeddings of boxes, points and masks (see `decode`); at least one is given."""
        if boxes is None and points is None and masks is None:
            raise ValueError("no prompt: expected boxes, points or masks")
        if points is not None:
            points = (points[0].float(), points[1])
        return self.prompt_encoder(points=points, boxes=None if boxes is None else boxes.reshape(-1, 1, 4).float(),
                                   masks=masks)

    def prepare(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """The factorised decoder's box-independent tensors of image embeddings (I, C, h, w)."""
        pe = self.prompt_encoder
        return FactorisedMaskDecoder(self.mask_decoder).prepare(embeddings, pe.get_dense_pe(), pe.no_mask_embed.weight)

    def decode_prepared(self, prepared: dict[str, torch.Tensor], boxes: torch.Tensor | None,
                        multimask_output: bool = False, *, points: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes and/or points (see `decode`) on one image's `prepare`d tensors to low-res logits and IoU."""
        sparse, _ = self.embed_prompts(boxes, points, None)
        return FactorisedMaskDecoder(self.mask_decoder)(prepared, self.prompt_encoder.get_dense_pe(), sparse,
                                                        multimask_output)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, multimask_output: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One box per image: (B, 3, S, S) and (B, 4) to logits (B, 1, 256, 256) and IoU (B, 1)."""
        return self.decode(self.encode(images), boxes, multimask_output)

    def as_engine(self, precision: str = "f32", decoder: str = "dense") -> "TorchEngine":
        """This model behind the runtime's numpy engine protocol (what `Predictor(model)` uses)."""
        from ..torch_engine import TorchEngine

        return TorchEngine(self, precision=precision, decoder=decoder)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of each part and in total."""
        names = ("image_encoder", "prompt_encoder", "mask_decoder")
        names += ("class_prompts",) if self.class_prompts is not None else ()
        parts = {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in names}
        return {**parts, "total": sum(parts.values())}
