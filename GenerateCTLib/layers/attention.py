"""Cosine-similarity multi-head attention (self- or cross-) with optional learned null key/values.

Attention logits are ``8 * <q_hat * q_scale, k_hat * k_scale>`` where ``q_hat``/``k_hat`` are the
l2-normalised per-head queries and keys, ``q_scale``/``k_scale`` are learned per-channel gains and 8 is a
fixed temperature. An additive bias (e.g. a relative position bias) is added after the scaling.

Two execution paths give the same result up to float rounding:

* the fast path hands the (already normalised and scaled) q, k to
  :func:`torch.nn.functional.scaled_dot_product_attention`, so no ``(b, h, n, n)`` probability tensor is
  materialised by this module;
* the explicit path (used only while a caller captures the probabilities, see ``capture``) computes
  the similarity matrix and its softmax in the open.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


class BiaslessLayerNorm(nn.Module):
    """LayerNorm with a learned gain ``gamma`` and a fixed zero ``beta`` buffer.

    ``beta`` is a (persistent) buffer only because the reference checkpoints store it; it is never trained.
    Input ``(..., dim)`` -> output ``(..., dim)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class Attention(nn.Module):
    """Pre-norm cosine-sim attention.

    Args:
        dim: width of the queries' input ``x``.
        dim_head: per-head width.
        heads: number of heads; the inner width is ``heads * dim_head``.
        dim_context: width of the cross-attention context; ``None`` makes this a self-attention.
        num_null_kv: number of learned null key/value pairs prepended to the keys (cross-attention).
        scale: fixed logit scale applied after the l2 normalisation.

    Only the queries are pre-normalised with ``norm``; self-attention keys/values use the raw input.

    Parameters keep the reference names: ``norm``, ``context_norm`` (cross only), ``null_kv``
    ``(heads, 2 * num_null_kv, dim_head)`` interleaved as k, v, k, v, ... (only when ``num_null_kv > 0``),
    ``to_q``, ``to_kv``, ``q_scale``, ``k_scale``, ``to_out``.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int,
        heads: int,
        dim_context: int | None = None,
        num_null_kv: int = 0,
        scale: float = 8.0,
    ):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = scale
        self.num_null_kv = num_null_kv
        self.is_cross = dim_context is not None
        inner = heads * dim_head

        self.norm = BiaslessLayerNorm(dim)
        if self.is_cross:
            self.context_norm = BiaslessLayerNorm(dim_context)
        if num_null_kv > 0:
            self.null_kv = nn.Parameter(torch.randn(heads, 2 * num_null_kv, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_context if self.is_cross else dim, 2 * inner, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

        # when a list, the explicit path runs and appends the (b, heads, n, j) probabilities to it
        self.capture: list[torch.Tensor] | None = None

    def forward(
        self,
        x: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to itself or to ``context``.

        Args:
            x: ``(b, n, dim)`` queries' input.
            context: ``(b, m, dim_context)`` for cross-attention (required iff built with ``dim_context``).
            key_mask: ``(b, m)`` bool, True = attend; the null keys are always attended.
            bias: additive logit bias broadcastable to ``(b, heads, n, num_null_kv + m)`` (e.g.
                ``(heads, n, n)``), added after the ``scale``.

        Returns:
            ``(b, n, dim)``.
        """
        if self.is_cross != (context is not None):
            raise ValueError(
                f"context: {'required' if self.is_cross else 'not accepted'} by this "
                f"{'cross' if self.is_cross else 'self'}-attention"
            )
        batch = x.shape[0]
        # reference quirk kept for weights compatibility: a self-attention's keys/values come from the
        # *un-normalised* input; only the queries see ``norm`` (cross-attention uses ``context_norm``)
        kv_input = self.context_norm(context) if self.is_cross else x
        x = self.norm(x)

        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.to_kv(kv_input).chunk(2, -1))

        if self.num_null_kv > 0:
            null_k, null_v = repeat(self.null_kv, "h (n r) d -> b h n r d", b=batch, r=2).unbind(dim=-2)
            k = torch.cat((null_k, k), dim=-2)
            v = torch.cat((null_v, v), dim=-2)
            if key_mask is not None:
                key_mask = F.pad(key_mask, (self.num_null_kv, 0), value=True)
            if bias is not None:
                bias = F.pad(bias, (self.num_null_kv, 0), value=0.0)

        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        mask = None if key_mask is None else rearrange(key_mask, "b j -> b 1 1 j")

        if self.capture is not None:
            out = self._explicit(q, k, v, mask, bias)
        else:
            device_type = q.device.type
            if torch.is_autocast_enabled(device_type):
                # q, k were promoted by the fp32 scales; run the kernel (and the cached bias) in autocast dtype
                dtype = torch.get_autocast_dtype(device_type)
                q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            if bias is not None:
                # a 4-D mask keeps torch's fused CPU kernel; a 3-D one falls back to a materialising path
                bias = bias.to(q.dtype)
                bias = bias.unsqueeze(0) if bias.ndim == 3 else bias
            if mask is not None and bias is not None:
                attn_mask = bias.masked_fill(~mask, float("-inf"))
            else:
                attn_mask = mask if bias is None else bias
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def _explicit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Softmax attention in the open; records the ``(b, h, n, j)`` probabilities in ``self.capture``."""
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        if bias is not None:
            sim = sim + bias
        if mask is not None:
            sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
        probs = sim.softmax(dim=-1)
        self.capture.append(probs)
        return torch.einsum("b h i j, b h j d -> b h i d", probs, v)
