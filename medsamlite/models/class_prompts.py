"""`ClassPrompts`: C learned prompt tokens, one per class, added beside a box to SAM's sparse prompt embedding.

Why prompts and not a class head on the decoder: SAM's prompt encoder and mask decoder stay exactly as they
are (their weights, their checkpoints, the factorised decoder and every compiled graph of the box-only path),
and the same box gives one mask per class, each from the decoder SAM already trained to read a box. A head on
the decoder's output tokens would be cheaper (one decoder pass for all C classes instead of C), but it adds
outputs inside the decoder that every copy of it (dense, factorised, exported) would have to learn to carry.
"""
from __future__ import annotations

import torch
from torch import nn


class ClassPrompts(nn.Module):
    """`num_classes` learned tokens of width `embed_dim`; `forward` pairs every prompt with every class token."""

    def __init__(self, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.tokens = nn.Embedding(num_classes, embed_dim)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """Sparse prompt embeddings (N, n, D) to (N * C, n + 1, D): row i * C + c is prompt i with class token c."""
        n = sparse.shape[0]
        tokens = self.tokens.weight.to(sparse.dtype).repeat(n, 1).unsqueeze(1)
        return torch.cat([sparse.repeat_interleave(self.num_classes, 0), tokens], dim=1)
