"""SAM's mask decoder split into a per-image part and a per-box part, exact in real arithmetic.

Box prompts touch the image tokens only through the image-to-token attention (a convex combination of
H x T token values added to each image token) and the LayerNorm after it (a per-token shift and scale). So
after every two-way layer the image tokens of B boxes are

    keys[b, n] = s[b, n] * X[n] + c[b, :, n] @ R[b] + e

with X (N, C) the same for every box, s a per-token scale, c (B, r, N) coefficients of r per-box vectors
R (B, r, C) (r grows by H*T + 1 per layer) and e a constant vector. Every later linear map (the next
layer's projections, the final attention's, the first ConvTranspose, a per-pixel linear map) is applied
to X once per image (`prepare`) and to the r vectors once per box (`forward`). The LayerNorm's products of
the centred X with the r vectors go through each head's 16-dim value space, also prepared once per image.
Only the LayerNorm2d, the GELUs, the second ConvTranspose and the mask product run densely per box.
docs/performance.md derives it.
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
    names = []
    for i in range(depth):
        names += [f"k{i}", f"q{i}", f"v{i}", f"xn{i}"]
        for j in range(i, -1, -1):  # layer i's centred tokens seen through layer j's value space
            names += [f"p{i}_{j}", f"kz{i}_{j}"] + ([f"gz{i}_{j}"] if j < i else [])
    return names + ["kf", "vf", "up"]


@dataclass
class _Tokens:
    """Image tokens of B boxes as s * X + c^T @ r + e (X lives in the prepared tensors); None = absent."""

    s: torch.Tensor | None = None  # (B, N)
    c: torch.Tensor | None = None  # (B, r, N): the coefficients, token axis last (contiguous in the graphs)
    r: torch.Tensor | None = None  # (B, r, C)
    e: torch.Tensor | None = None  # (C,)
    # per earlier layer: its token values (B, T, H, d) and the mean over C of its rows (B, r_j)
    history: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., D) to (..., H, D / H)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def _by_box(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, H, T, K) @ (B, K, M) as one (H*T, K) product per box, not H of (T, K): (B, H, T, M)."""
    b, h, t, _ = x.shape
    return (x.reshape(b, h * t, -1) @ y).reshape(b, h, t, -1)


def _by_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-token (..., N, D) to (..., H, D / H, N), the right operand of a (B, H, T, D / H) product."""
    y = _heads(x, heads)  # (..., N, H, d); positive dims: the ONNX exporter mistraces movedim's negative ones
    lead = range(y.ndim - 3)
    return y.permute(*lead, y.ndim - 2, y.ndim - 1, y.ndim - 3).contiguous()


def _head_rows(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-token (..., N, D) to (..., H, N, D / H), the right operand of a (B, H, T, N) product."""
    return _heads(x, heads).transpose(-3, -2).contiguous()


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
                k, q, v = t2i.k_proj(x + pos), i2t.q_proj(x + pos), t2i.v_proj(x)
            else:
                k, q, v = x @ t2i.k_proj.weight.T, x @ i2t.q_proj.weight.T, x @ t2i.v_proj.weight.T
            # stored in the layouts the per-box products read, so no graph call transposes them again
            out[f"k{i}"], out[f"q{i}"] = _by_head(k, t2i.num_heads), _by_head(q, i2t.num_heads)
            out[f"v{i}"] = _head_rows(v, t2i.num_heads)
            xc = x - x.mean(-1, keepdim=True)
            out[f"xn{i}"] = (xc * xc).sum(-1)
            out.update(self._seen_through_values(xc, i))
            x = layer.norm4.weight * xc
        final = transformer.final_attn_token_to_image
        out["kf"] = _by_head(x @ final.k_proj.weight.T, final.num_heads)
        out["vf"] = _head_rows(x @ final.v_proj.weight.T, final.num_heads)
        out["up"] = x @ self._up_weight()
        return out

    def _seen_through_values(self, xc: torch.Tensor, i: int) -> dict[str, torch.Tensor]:
        """Layer i's centred tokens times the rows of layers j <= i, per image (see `_cross`).

        Z_i = xc, Z_{j-1} = Z_j * gamma_{j-1}: p = Z_j @ W_out_j (as H, d, N), kz = Z_j @ const_j, gz = sum(Z_j).
        """
        layers, out, z = self.decoder.transformer.layers, {}, xc
        for j in range(i, -1, -1):
            attn = layers[j].cross_attn_image_to_token
            # (z * const).sum, not z @ const: ONNX Runtime 1.32's transpose optimiser contracts the wrong axis of
            # a MatMul with a 1-D operand whose other input also feeds _by_head (kz off by 250% on the golden weights)
            out[f"p{i}_{j}"] = _by_head(z @ attn.out_proj.weight, attn.num_heads)
            out[f"kz{i}_{j}"] = (z * self._row_constant(j)).sum(-1)
            if j < i:
                out[f"gz{i}_{j}"] = z.sum(-1)
            if j > 0:
                z = z * layers[j - 1].norm4.weight
        return out

    def _row_constant(self, j: int) -> torch.Tensor:
        """Layer j's constant row after its image-to-token attention: the tokens' shift e_j (the previous norm4's
        bias; 0 in layer 1) plus out_proj's bias."""
        layers = self.decoder.transformer.layers
        bias = layers[j].cross_attn_image_to_token.out_proj.bias
        return bias if j == 0 else layers[j - 1].norm4.bias + bias

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
        scores = q @ kb  # (B, H, T, N)
        if ks is not None:
            scores = scores * ks[:, None, None, :] + q @ _by_head(kc, heads)
            scores = scores + _by_box(q @ _heads(kr, heads).permute(0, 2, 3, 1), img.c)
        weights = torch.softmax(scores / math.sqrt(q.shape[-1]), dim=-1)
        vb, vs, vr, vc = v
        if vs is None:
            out = weights @ vb
        else:
            out = (weights * vs[:, None, None, :]) @ vb + _heads(vc, heads)[None, :, None]
            out = out + _by_box(weights, img.c.transpose(1, 2)) @ _heads(vr, heads).transpose(1, 2)
        out = out.transpose(1, 2)
        return attn.out_proj(out.reshape(*out.shape[:2], -1))

    def _image_to_token(self, layer, k_in: torch.Tensor, v_in: torch.Tensor, img: _Tokens,
                        p: dict[str, torch.Tensor], i: int, pos: torch.Tensor) -> _Tokens:
        """The image tokens attend to the tokens, then norm4: the result in low-rank form again."""
        attn, norm = layer.cross_attn_image_to_token, layer.norm4
        heads = attn.num_heads
        kt = _heads(attn.k_proj(k_in), heads).transpose(1, 2)  # (B, H, T, d)
        vt = _heads(attn.v_proj(v_in), heads)  # (B, T, H, d)
        qb, qs, qr, qc = self._project(attn.q_proj, p[f"q{i}"], img, pos)
        scores = kt @ qb  # (B, H, T, N): N stays the contiguous axis throughout
        if qs is not None:
            scores = scores * qs[:, None, None, :] + kt @ _by_head(qc, heads)
            scores = scores + _by_box(kt @ _heads(qr, heads).permute(0, 2, 3, 1), img.c)
        weights = torch.softmax(scores / math.sqrt(kt.shape[-1]), dim=2)  # over the T tokens
        # each head's token values through its slice of out_proj: H * T vectors of C per box
        wo = _heads(attn.out_proj.weight, heads)  # (C, H, d)
        values = torch.einsum("bthd,chd->bhtc", vt, wo).flatten(1, 2)  # (B, H*T, C)
        b, n = weights.shape[0], weights.shape[-1]
        rows = [values, self._row_constant(i).expand(b, 1, -1)]
        coeffs = [weights.flatten(1, 2), weights.new_ones(b, 1, n)]
        if img.c is not None:
            rows.insert(0, img.r)
            coeffs.insert(0, img.c)
        rows = torch.cat(rows, 1)
        mean = rows.mean(-1)
        rows_c = rows - mean[..., None]
        coeff = torch.cat(coeffs, 1)  # (B, r, N)
        s = qs  # the scale of X (None: 1)
        history = (*img.history, (vt, mean))
        # |s xc + coeff^T @ rows_c|^2 expanded: xc's norm and its products are per image or rank r
        cross = self._cross(p, history, i, i)
        mixed = ((rows_c @ rows_c.transpose(1, 2) @ coeff) * coeff).sum(1)
        if s is None:
            var = p[f"xn{i}"] + 2 * (coeff * cross).sum(1) + mixed
        else:
            var = s * s * p[f"xn{i}"] + 2 * s * (coeff * cross).sum(1) + mixed
        inv = torch.rsqrt(var / rows_c.shape[-1] + norm.eps)
        return _Tokens(s=inv if s is None else s * inv, c=coeff * inv[:, None], r=norm.weight * rows_c, e=norm.bias,
                       history=history)

    def _cross(self, p: dict[str, torch.Tensor], history: tuple[tuple[torch.Tensor, torch.Tensor], ...],
               i: int, j: int) -> torch.Tensor:
        """rows_j @ Z_j^T (B, r_j, N) without (B, N, C) work: layer j's rows against xc_i (seen as Z_j).

        Layer j's rows are [R_j; U_j; const_j] with U_j[h, t] = W_out_j[:, head h] @ v_t,h, so U_j @ Z^T comes
        from Z @ W_out_j (prepared per head as (H, d, N)). R_j = gamma_{j-1} * (rows_{j-1} - their means), so
        R_j @ Z_j^T = rows_{j-1} @ Z_{j-1}^T - means x sum(Z_{j-1}) (recursively). Centring layer i's own rows
        changes nothing (xc_i sums to 0 over C).
        """
        values, _ = history[j]  # (B, T, H, d)
        b = values.shape[0]
        parts = [(values.transpose(1, 2) @ p[f"p{i}_{j}"]).flatten(1, 2),
                 p[f"kz{i}_{j}"].expand(b, 1, -1)]
        if j > 0:
            earlier = self._cross(p, history, i, j - 1) - history[j - 1][1][..., None] * p[f"gz{i}_{j - 1}"]
            parts.insert(0, earlier)
        return torch.cat(parts, 1)

    def _masks(self, up: torch.Tensor, img: _Tokens, hyper: torch.Tensor) -> torch.Tensor:
        """Output upscaling and the hypernetwork product, pixel by pixel in token layout."""
        upscaling = self.decoder.output_upscaling
        conv1, norm, act1, conv2, act2 = upscaling
        w1 = self._up_weight()
        const = img.e @ w1 + conv1.bias.repeat(4)
        y = img.s[..., None] * up + img.c.transpose(1, 2) @ (img.r @ w1) + const  # (B, N, 4 * C/4)
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
