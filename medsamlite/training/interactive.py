"""Interactive fine-tuning: clicks and the previous mask as prompts, simulated from the model's own errors.

As SAM and micro-sam train it: each step encodes the images once, decodes every target from its box, then
for a few sub-iterations adds one click per target, drawn uniformly from the error region between its
current mask and the ground truth (positive on a missed pixel, negative on a spurious one), and decodes again
with all its clicks so far, its box and its previous low-resolution logits as the mask prompt. The loss is
the mean over the iterations, so the model learns both to segment from the box and to correct itself.
The clicks come from torch's RNG, which the loop seeds per epoch and checkpoints: a resumed run draws the
same ones.
"""
from __future__ import annotations

import torch
from torch import nn


def sample_clicks(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per target (N, 1, m, m): its mask pixel (x, y) (N, 2) and its label (N,), 1 where the ground
    truth holds the pixel (a missed one), 0 where it does not (a spurious one).

    Drawn uniformly from the error region; a target without error gets a positive click inside its mask (or
    anywhere, when the mask is empty), so every target keeps the same number of points.
    """
    pred, truth = (logits > 0).flatten(1), (masks > 0.5).flatten(1)
    error = pred != truth
    weights = torch.where(error.any(1, keepdim=True), error, truth)
    weights = torch.where(weights.any(1, keepdim=True), weights, torch.ones_like(weights)).float()
    index = torch.multinomial(weights, 1)[:, 0]
    side = masks.shape[-1]
    xy = torch.stack([index % side, index // side], 1).float()
    return xy, truth.gather(1, index[:, None])[:, 0].long()


class InteractiveForward(nn.Module):
    """One encoder pass per image, the box pass, then `clicks` rounds of one more click per target with the
    previous logits as mask prompt (the dense decoder: a mask prompt changes the image tokens per target);
    returns the (logits, iou) of every round, the box pass first. `encoder` (a `CachedEncoder` of the model's
    frozen encoder) replaces `model.encode`."""

    def __init__(self, model: nn.Module, clicks: int, encoder: nn.Module | None = None) -> None:
        if clicks < 1:
            raise ValueError(f"interactive fine-tuning needs at least one click round, got {clicks}")
        super().__init__()
        self.model, self.clicks, self.encoder = model, clicks, encoder

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, masks: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        embeddings = self.model.encode(images) if self.encoder is None else self.encoder(images)
        paired = embeddings if len(images) == 1 else embeddings[owner]
        rounds = [self.model.decode(paired, boxes)]
        scale = self.model.config.input_size / masks.shape[-1]  # mask pixels to the model's input frame
        coords, labels = boxes.new_zeros((len(boxes), 0, 2)), torch.zeros((len(boxes), 0), dtype=torch.long,
                                                                           device=boxes.device)
        for _ in range(self.clicks):
            previous = rounds[-1][0].detach()
            xy, positive = sample_clicks(previous, masks)
            # pixel indices of the input frame, as clicks reach the prompt encoder (it adds the half pixel)
            coords = torch.cat([coords, ((xy + 0.5) * scale - 0.5)[:, None]], 1)
            labels = torch.cat([labels, positive[:, None]], 1)
            rounds.append(self.model.decode(paired, boxes, points=(coords, labels), masks=previous))
        return rounds


def interactive_loss(forward: nn.Module, loss_fn: nn.Module, batch: dict, boxes: torch.Tensor, masks: torch.Tensor,
                     owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over the rounds, the last round's logits); `forward` is an `InteractiveForward`, maybe wrapped."""
    rounds = forward(batch["image"], boxes, owner, masks)
    loss = sum(loss_fn(logits.float(), masks, iou.float()) for logits, iou in rounds) / len(rounds)
    return loss, rounds[-1][0]
