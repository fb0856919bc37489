"""Building blocks of the super-resolution Unet.

Only the layouts used by the released GenerateCT SR model exist here. Submodule attribute names (and the
indices of the few ``nn.Sequential`` containers) follow the reference layer names, so that
``state_dict()`` keys are the official checkpoint keys without any renaming table.

Shape legend: ``b`` batch, ``c`` channels, ``h``/``w`` spatial size, ``n`` tokens, ``d`` token width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GainLayerNorm(nn.Module):
    """Layer norm over the last axis with a learned gain ``g`` and no bias.

    The epsilon depends on the input dtype (1e-5 for float32, 1e-3 otherwise), as in the reference.
    ``(..., d) -> (..., d)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        return F.layer_norm(x, (x.shape[-1],), weight=self.g.to(x.dtype), eps=eps)


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """Pre-norm MLP with a normalised hidden layer: ``(b, n, dim) -> (b, n, dim)``.

    Indices (0 norm, 1 linear, 2 GELU, 3 norm, 4 linear) are part of the checkpoint key names.
    """
    hidden = int(dim * mult)
    return nn.Sequential(
        GainLayerNorm(dim),
        nn.Linear(dim, hidden, bias=False),
        nn.GELU(),
        GainLayerNorm(hidden),
        nn.Linear(hidden, dim, bias=False),
    )


class LearnedSinusoidalPosEmb(nn.Module):
    """Fourier features of a scalar with learned frequencies: ``(b,) -> (b, 1 + dim)``.

    The output is ``[x, sin(2π·x·w), cos(2π·x·w)]`` (the raw value first).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"LearnedSinusoidalPosEmb: dim={dim} must be even")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]
        # same multiplication order as the reference: ((x * w) * 2) * pi
        freqs = x * self.weights[None, :] * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1)


class CrossEmbedLayer(nn.Module):
    """Multi-scale stem: parallel same-padded convolutions concatenated along channels.

    Kernels are sorted ascending; the smallest gets ``dim_out/2`` channels, the next ``dim_out/4``, ...,
    and the largest takes the remainder. ``(b, dim_in, h, w) -> (b, dim_out, h, w)``.
    """

    def __init__(self, dim_in: int, dim_out: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        kernel_sizes = tuple(sorted(kernel_sizes))
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"CrossEmbedLayer: kernel_sizes={kernel_sizes} must all be odd")
        widths = [int(dim_out / 2**i) for i in range(1, len(kernel_sizes))]
        widths.append(dim_out - sum(widths))
        self.convs = nn.ModuleList(
            nn.Conv2d(dim_in, width, k, padding=(k - 1) // 2) for k, width in zip(kernel_sizes, widths, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class Downsample(nn.Sequential):
    """Space-to-depth by 2 followed by a 1×1 conv: ``(b, c, h, w) -> (b, dim_out, h/2, w/2)``.

    Index 0 is the (parameter-free) pixel unshuffle, index 1 the conv, as in the checkpoint keys.
    """

    def __init__(self, dim: int, dim_out: int):
        # channel order after unshuffle is (c, row offset, column offset), the reference order
        super().__init__(nn.PixelUnshuffle(2), nn.Conv2d(dim * 4, dim_out, 1))


class PixelShuffleUpsample(nn.Module):
    """1×1 conv to ``4·dim_out`` channels, SiLU, depth-to-space by 2.

    ``(b, c, h, w) -> (b, dim_out, 2h, 2w)``.
    """

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        conv = nn.Conv2d(dim, dim_out * 4, 1)
        # ICNR-style init: the four sub-pixel outputs of every channel start identical (no checkerboard)
        base = torch.empty(dim_out, dim, 1, 1)
        nn.init.kaiming_uniform_(base)
        with torch.no_grad():
            conv.weight.copy_(base.repeat_interleave(4, dim=0))
            conv.bias.zero_()
        self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GlobalContext(nn.Module):
    """Global-context channel gate: attention-pooled image summary → MLP → sigmoid.

    ``(b, c, h, w) -> (b, dim_out, 1, 1)`` gate in (0, 1).
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.to_k = nn.Conv2d(dim_in, 1, 1)
        hidden = max(3, dim_out // 2)
        self.net = nn.Sequential(nn.Conv2d(dim_in, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, dim_out, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weights = self.to_k(x).reshape(b, 1, -1).softmax(dim=-1)  # (b, 1, hw)
        if x.is_contiguous(memory_format=torch.channels_last):
            # (b, 1, hw) @ (b, hw, c): a view of channels-last memory, no copy of the feature map
            pooled = torch.bmm(weights, x.permute(0, 2, 3, 1).reshape(b, -1, c)).transpose(1, 2)
        else:
            pooled = torch.bmm(x.reshape(b, c, -1), weights.transpose(1, 2))  # (b, c, 1)
        return self.net(pooled[..., None])


class ConvBlock(nn.Module):
    """GroupNorm → optional FiLM ``x·(scale+1)+shift`` → SiLU → 3×3 conv.

    ``(b, dim, h, w) -> (b, dim_out, h, w)``.
    """

    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.groupnorm = nn.GroupNorm(groups, dim)
        self.project = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if scale_shift is None:
            x = self.groupnorm(x)
        else:
            # (x̂·γ + β)·(scale+1) + shift folded into one per-sample affine: saves two passes over the
            # feature map; equal to the reference up to float32 rounding
            scale, shift = scale_shift  # (b, c, 1, 1) each
            gn = self.groupnorm
            gain = gn.weight[:, None, None] * (scale + 1)
            offset = gn.bias[:, None, None] * (scale + 1) + shift
            if x.shape[0] == 1:
                # one sample: the per-sample affine is an ordinary GroupNorm affine (fused, one pass)
                x = F.group_norm(x, gn.num_groups, gain.reshape(-1), offset.reshape(-1), gn.eps)
            else:
                x = torch.addcmul(offset, F.group_norm(x, gn.num_groups, eps=gn.eps), gain)
        return self.project(F.silu(x, inplace=True))


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens to conditioning tokens plus one learned null key/value.

    The null key/value (``null_kv``, shared by all heads) is prepended to the context. No mask is used:
    the released model never masks the conditioning tokens (text padding is handled upstream by
    substituting learned null embeddings). ``x (b, n, dim)``, ``context (b, m, context_dim)`` →
    ``(b, n, dim)``.

    Computed in a re-associated form that is much cheaper when ``n`` (pixels) is large and ``m`` (≈ 41
    conditioning tokens) is small: the query projection is folded into the keys
    (``q·kᵀ = x̂·(W_qᵀ·kᵀ)``) and the output projection into the values (``Σ_h a_h·v_h·W_o,hᵀ``), so no
    ``(n, heads·dim_head)`` tensor is formed. Mathematically identical to the reference; float32 rounding
    differs at the 1e-6 level.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.norm = GainLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), GainLayerNorm(dim))

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(b, heads, 1 + m, dim_head)`` with the null pair first."""
        b, m = context.shape[:2]
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k = k.reshape(b, m, self.heads, -1).transpose(1, 2)
        v = v.reshape(b, m, self.heads, -1).transpose(1, 2)
        null_k, null_v = (t.to(k.dtype).expand(b, self.heads, 1, -1) for t in self.null_kv.unbind(0))
        return torch.cat((null_k, k), dim=2), torch.cat((null_v, v), dim=2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        h = self.heads
        k, v = self.context_kv(context)  # (b, h, m1, dh)
        m1, dh = k.shape[-2:]
        # logits: x̂ (b, n, dim) @ [W_q,hᵀ kᵀ·scale]_h (b, dim, h·m1)
        w_q = self.to_q.weight.to(x.dtype).reshape(h, dh, dim)
        q_to_logits = torch.einsum("hed,bhje->bdhj", w_q, k * self.scale).reshape(b, dim, h * m1)
        logits = torch.bmm(self.norm(x), q_to_logits).reshape(b, n, h, m1)
        attn = logits.softmax(dim=-1, dtype=torch.float32).to(x.dtype).reshape(b, n, h * m1)
        # values through the output projection: [v_h W_o,hᵀ]_h (b, h·m1, dim)
        w_o = self.to_out[0].weight.to(x.dtype).reshape(dim, h, dh)
        value_out = torch.einsum("bhje,dhe->bhjd", v, w_o).reshape(b, h * m1, dim)
        return self.to_out[1](torch.bmm(attn, value_out))


class ResnetBlock(nn.Module):
    """Two conv blocks with time FiLM, optional cross-attention between them and optional GC gate.

    ``x (b, dim, h, w)``, ``time_cond (b, time_cond_dim)``, ``context (b, m, cond_dim)`` (needed iff the
    block has cross-attention) → ``(b, dim_out, h, w)``. Order: block1 → cross-attention (residual,
    over the h·w positions) → block2 with scale/shift from ``time_cond`` → ``· gca(h)`` → + residual.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        time_cond_dim: int,
        groups: int,
        cond_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        use_gca: bool = False,
    ):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2))
        self.cross_attn = CrossAttention(dim_out, cond_dim, heads, dim_head) if cond_dim is not None else None
        self.block1 = ConvBlock(dim, dim_out, groups)
        self.block2 = ConvBlock(dim_out, dim_out, groups)
        self.gca = GlobalContext(dim_out, dim_out) if use_gca else None
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else None

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        film = self.time_mlp(time_cond)[:, :, None, None]
        scale_shift = film.chunk(2, dim=1)
        h = self.block1(x)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("ResnetBlock: this block cross-attends, so context must be given")
            b, c, hh, ww = h.shape
            # (b, c, h, w) -> (b, h·w, c); free when h is channels_last
            tokens = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
            tokens = self.cross_attn(tokens, context) + tokens
            h = tokens.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        h = self.block2(h, scale_shift)
        residual = self.res_conv(x) if self.res_conv is not None else x
        if self.gca is not None:
            return torch.addcmul(residual, h, self.gca(h))  # h·gate + residual in one pass
        return h + residual


class PerceiverAttention(nn.Module):
    """Latents attend to ``cat(sequence, latents)``.

    ``x (b, n, d)``, ``latents (b, k, d)`` → ``(b, k, d)``.
    """

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b, k_lat = latents.shape[:2]
        x = self.norm(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        kv = self.to_kv(torch.cat((x, latents), dim=1))
        k, v = kv.chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, k_lat, -1))


class PerceiverResampler(nn.Module):
    """Pools a token sequence into ``num_mean_pooled + num_latents`` tokens.

    ``x (b, n, dim)`` with ``n <= max_seq_len`` → ``(b, num_mean_pooled + num_latents, dim)``. The first
    ``num_mean_pooled`` latents are projected from the plain mean of ``x`` over all ``n`` positions; learned
    position embeddings are added to ``x`` before attention (not before the mean). Unmasked: every
    position takes part (see :meth:`SuperResolutionUnet.encode_text`).
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        num_latents: int,
        num_mean_pooled: int,
        max_seq_len: int,
        ff_mult: float,
    ):
        super().__init__()
        self.num_mean_pooled = num_mean_pooled
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.to_latents_from_mean_pooled_seq = nn.Sequential(GainLayerNorm(dim), nn.Linear(dim, dim * num_mean_pooled))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        x_pos = x + self.pos_emb.weight[:n]
        pooled = self.to_latents_from_mean_pooled_seq(x.mean(dim=1)).reshape(b, self.num_mean_pooled, d)
        latents = torch.cat((pooled, self.latents.expand(b, -1, -1)), dim=1)
        for attn, ff in self.layers:
            latents = attn(x_pos, latents) + latents
            latents = ff(latents) + latents
        return latents
