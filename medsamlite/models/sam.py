"""`SamLite`: a registered image encoder composed with SAM's prompt encoder and mask decoder."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..registry import get_encoder_spec
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer


class SamLite(nn.Module):
    """Image encoder + prompt encoder + mask decoder, callable as two halves (`encode`, `decode`).

    State-dict keys follow the reference layout: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        spec = get_encoder_spec(config.encoder)
        self.image_encoder = spec.build(input_size=config.input_size, **config.encoder_kwargs)
        grid = (config.embed_size, config.embed_size)
        self.prompt_encoder = PromptEncoder(config.embed_dim, grid, (config.box_frame, config.box_frame),
                                            mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            transformer_dim=config.embed_dim, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=config.embed_dim, mlp_dim=2048, num_heads=8,
                                           norm_eps=config.decoder_norm_eps))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) to image embeddings (B, 256, 64, 64)."""
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor, multimask_output: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (N, 4) in the S frame on one shared (1, ...) or N paired embeddings to low-res logits and IoU."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes.reshape(-1, 1, 4).float(), masks=None)
        return self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, multimask_output: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One box per image: (B, 3, S, S) and (B, 4) to logits (B, 1, 256, 256) and IoU (B, 1)."""
        return self.decode(self.encode(images), boxes, multimask_output)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of each part and in total."""
        parts = {name: sum(p.numel() for p in getattr(self, name).parameters())
                 for name in ("image_encoder", "prompt_encoder", "mask_decoder")}
        return {**parts, "total": sum(parts.values())}
