"""SAM's mask decoder split into a per-image part and a per-box part, exact in real arithmetic.

Box prompts touch the image tokens only through the image-to-token attention (a convex combination of
H x T token values added to each image token) and the LayerNorm after it (a per-token shift and scale). So
after every two-way layer the image tokens of B boxes are

    keys[b, n] = s[b, n] * X[n] + c[b, n] @ R[b] + e

with X (N, C) the same for every box, s a per-token scale, c (B, N, r) coefficients of r per-box vectors
R (B, r, C) (r grows by H*T + 1 per layer) and e a constant vector. Every later linear map (the next
layer's projections, the final attention's, the first ConvTranspose, a per-pixel linear map) is applied
to X once per image (`prepare`) and to the r vectors once per box (`forward`). Only the LayerNorm2d, the
GELUs, the second ConvTranspose and the mask product run densely per box. docs/performance.md derives it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .mask_decoder import MaskDecoder
from .transformer import Attention, TwoWayTransformer


def prepared_names(depth: int) -> list[str]:
    """Names of the per-image tensors, in the order graphs take and return them."""
    per_layer = [f"{kind}{layer}" for layer in range(depth) for kind in ("k", "q", "v", "xc", "xn")]
    return per_layer + ["kf", "vf", "up"]


@dataclass
class _Tokens:
    """Image tokens of B boxes as s * X + c @ r + e (X lives in the prepared tensors); None = absent."""

    s: torch.Tensor | None = None  # (B, N)
    c: torch.Tensor | None = None  # (B, N, r)
    r: torch.Tensor | None = None  # (B, r, C)
    e: torch.Tensor | None = None  # (C,)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., D) to (..., H, D / H)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


class FactorisedMaskDecoder(nn.Module):
    """A `MaskDecoder`'s own parameters (shared, not copied) run as `prepare(image)` once and `forward(boxes)`.

    One image embedding serves all B boxes of a call; the logits equal the dense decoder's up to rounding.
    """

    def __init__(self, decoder: MaskDecoder) -> None:
        super().__init__()
        if not isinstance(decoder.transformer, TwoWayTransformer):
            raise TypeError(f"{type(decoder.transformer).__name__}: the factorised decoder needs SAM's TwoWayTransformer")
        self.decoder = decoder

    @property
    def names(self) -> list[str]:
        return prepared_names(len(self.decoder.transformer.layers))

    # per image ---------------------------------------------------------------------------------

    def prepare(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, no_mask_embed: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Box-independent tensors of I images (I, C, h, w): the X-paths through every linear map."""
        transformer = self.decoder.transformer
        x = (image_embeddings + no_mask_embed.reshape(1, -1, 1, 1)).flatten(2).transpose(1, 2)  # (I, N, C)
        pos = image_pe.flatten(2).transpose(1, 2)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(transformer.layers):
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            if i == 0:  # layer 1 sees the image tokens themselves: bias and PE go in here
                out["k0"], out["q0"], out["v0"] = t2i.k_proj(x + pos), i2t.q_proj(x + pos), t2i.v_proj(x)
            else:
                out[f"k{i}"], out[f"q{i}"] = x @ t2i.k_proj.weight.T, x @ i2t.q_proj.weight.T
                out[f"v{i}"] = x @ t2i.v_proj.weight.T
            xc = x - x.mean(-1, keepdim=True)
            out[f"xc{i}"], out[f"xn{i}"] = xc, (xc * xc).sum(-1)
            x = layer.norm4.weight * xc
        final = transformer.final_attn_token_to_image
        out["kf"], out["vf"] = x @ final.k_proj.weight.T, x @ final.v_proj.weight.T
        out["up"] = x @ self._up_weight()
        return out

    def _up_weight(self) -> torch.Tensor:
        """The first ConvTranspose (kernel 2, stride 2) as a per-token map C -> (2, 2, C/4)."""
        weight = self.decoder.output_upscaling[0].weight  # (C, C/4, 2, 2)
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)

    # per box -----------------------------------------------------------------------------------

    def forward(self, prepared: dict[str, torch.Tensor], image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor, multimask_output: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, 1 or 3, 4h, 4w) and IoU (B, 1 or 3) of B prompts on one prepared image."""
        decoder, transformer = self.decoder, self.decoder.transformer
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        pos = image_pe.flatten(2).transpose(1, 2)[0]  # (N, C)
        p = {k: v[0] for k, v in prepared.items()}  # one image shared by the boxes
        queries, img = tokens, _Tokens()
        for i, layer in enumerate(transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            attn = layer.cross_attn_token_to_image
            queries = layer.norm2(queries + self._token_to_image(
                attn, queries + tokens, img, self._project(attn.k_proj, p[f"k{i}"], img, pos),
                self._project(attn.v_proj, p[f"v{i}"], img, None)))
            queries = layer.norm3(queries + layer.mlp(queries))
            img = self._image_to_token(layer, queries + tokens, queries, img, p, i, pos)
        final = transformer.final_attn_token_to_image
        queries = transformer.norm_final_attn(queries + self._token_to_image(
            final, queries + tokens, img, self._project(final.k_proj, p["kf"], img, pos),
            self._project(final.v_proj, p["vf"], img, None)))
        picked = range(1, decoder.num_mask_tokens) if multimask_output else range(1)
        hyper = torch.stack([decoder.output_hypernetworks_mlps[j](queries[:, 1 + j]) for j in picked], dim=1)
        masks = self._masks(p["up"], img, hyper)
        iou = decoder.iou_prediction_head(queries[:, 0])
        return masks, iou[:, 1:] if multimask_output else iou[:, :1]

    @staticmethod
    def _project(linear: nn.Linear, base: torch.Tensor, img: _Tokens, pos: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """linear(keys [+ pos]) as (base, s, r @ W^T, constant): s * base + c @ rW + constant."""
        if img.s is None:  # layer 1: base is the whole projection
            return base, None, None, None
        weight = linear.weight
        const = img.e @ weight.T + linear.bias
        if pos is not None:
            const = const + pos @ weight.T
        return base, img.s, img.r @ weight.T, const

    @staticmethod
    def _token_to_image(attn: Attention, q_in: torch.Tensor, img: _Tokens, k, v) -> torch.Tensor:
        """Tokens attend to the image tokens without forming the per-box keys or values."""
        heads = attn.num_heads
        q = _heads(attn.q_proj(q_in), heads).transpose(1, 2)  # (B, H, T, d)
        kb, ks, kr, kc = k
        scores = torch.einsum("bhtd,nhd->bhtn", q, _heads(kb, heads))
        if ks is not None:
            scores = scores * ks[:, None, None, :]
            qr = torch.einsum("bhtd,brhd->bhtr", q, _heads(kr, heads))
            scores = scores + torch.einsum("bhtr,bnr->bhtn", qr, img.c)
            scores = scores + torch.einsum("bhtd,nhd->bhtn", q, _heads(kc, heads))
        weights = torch.softmax(scores / math.sqrt(q.shape[-1]), dim=-1)
        vb, vs, vr, vc = v
        if vs is None:
            out = torch.einsum("bhtn,nhd->bhtd", weights, _heads(vb, heads))
        else:
            out = torch.einsum("bhtn,nhd->bhtd", weights * vs[:, None, None, :], _heads(vb, heads))
            wc = torch.einsum("bhtn,bnr->bhtr", weights, img.c)
            out = out + torch.einsum("bhtr,brhd->bhtd", wc, _heads(vr, heads)) + _heads(vc, heads)[None, :, None]
        out = out.transpose(1, 2)
        return attn.out_proj(out.reshape(*out.shape[:2], -1))

    def _image_to_token(self, layer, k_in: torch.Tensor, v_in: torch.Tensor, img: _Tokens,
                        p: dict[str, torch.Tensor], i: int, pos: torch.Tensor) -> _Tokens:
        """The image tokens attend to the tokens, then norm4: the result in low-rank form again."""
        attn, norm = layer.cross_attn_image_to_token, layer.norm4
        heads = attn.num_heads
        kt = _heads(attn.k_proj(k_in), heads)  # (B, T, H, d)
        vt = _heads(attn.v_proj(v_in), heads)
        qb, qs, qr, qc = self._project(attn.q_proj, p[f"q{i}"], img, pos)
        scores = torch.einsum("nhd,bthd->bnht", _heads(qb, heads), kt)
        if qs is not None:
            scores = scores * qs[:, :, None, None]
            rk = torch.einsum("brhd,bthd->brht", _heads(qr, heads), kt)
            scores = scores + torch.einsum("bnr,brht->bnht", img.c, rk)
            scores = scores + torch.einsum("nhd,bthd->bnht", _heads(qc, heads), kt)
        weights = torch.softmax(scores / math.sqrt(kt.shape[-1]), dim=-1)  # (B, N, H, T)
        # each head's token values through its slice of out_proj: H * T vectors of C per box
        wo = _heads(attn.out_proj.weight, heads)  # (C, H, d)
        values = torch.einsum("bthd,chd->bhtc", vt, wo).flatten(1, 2)  # (B, H*T, C)
        const = attn.out_proj.bias if img.e is None else img.e + attn.out_proj.bias
        b, n = weights.shape[:2]
        rows = [values, const.expand(b, 1, -1)]
        coeffs = [weights.flatten(2), weights.new_ones(b, n, 1)]
        if img.c is not None:
            rows.insert(0, img.r)
            coeffs.insert(0, img.c)
        rows_c = torch.cat(rows, 1)
        rows_c = rows_c - rows_c.mean(-1, keepdim=True)
        coeff = torch.cat(coeffs, -1)
        s = qs  # the scale of X (None: 1)
        # |s xc + coeff @ rows_c|^2 expanded: xc's norm and its products are per image or rank r
        cross = torch.einsum("nc,brc->bnr", p[f"xc{i}"], rows_c)
        gram = rows_c @ rows_c.transpose(1, 2)
        mixed = ((coeff @ gram) * coeff).sum(-1)
        if s is None:
            var = p[f"xn{i}"] + 2 * (coeff * cross).sum(-1) + mixed
        else:
            var = s * s * p[f"xn{i}"] + 2 * s * (coeff * cross).sum(-1) + mixed
        inv = torch.rsqrt(var / rows_c.shape[-1] + norm.eps)
        return _Tokens(s=inv if s is None else s * inv, c=coeff * inv[..., None], r=norm.weight * rows_c, e=norm.bias)

    def _masks(self, up: torch.Tensor, img: _Tokens, hyper: torch.Tensor) -> torch.Tensor:
        """Output upscaling and the hypernetwork product, pixel by pixel in token layout."""
        upscaling = self.decoder.output_upscaling
        conv1, norm, act1, conv2, act2 = upscaling
        w1 = self._up_weight()
        const = img.e @ w1 + conv1.bias.repeat(4)
        y = img.s[..., None] * up + img.c @ (img.r @ w1) + const  # (B, N, 4 * C/4)
        b, n = y.shape[:2]
        y = y.reshape(b, n, 4, -1)
        u = y.mean(-1, keepdim=True)
        var = (y - u).pow(2).mean(-1, keepdim=True)
        y = act1(norm.weight * ((y - u) / torch.sqrt(var + norm.eps)) + norm.bias)
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.weight.shape[0], -1)
        z = act2(y @ w2 + conv2.bias.repeat(4)).reshape(b, n, 4, 4, -1)  # (B, N, sub1, sub2, C/8)
        masks = torch.einsum("bnpqk,bmk->bmnpq", z, hyper)
        side = int(round(math.sqrt(n)))
        masks = masks.reshape(b, hyper.shape[1], side, side, 2, 2, 2, 2)  # (.., h, w, di, dj, ei, ej)
        return masks.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, hyper.shape[1], 4 * side, 4 * side)
