"""Transformer stack ``[PEG, self-attention, optional cross-attention, feed-forward]`` + final norm.

All sub-blocks are pre-norm residuals. The state-dict layout of the reference code (layers stored as
``layers.N.0`` PEG, ``.1`` self-attention, ``.2`` cross-attention, ``.3`` feed-forward Sequential) is
produced by :meth:`Transformer.reference_items`.
"""

from __future__ import annotations

import torch
from torch import nn

from GenerateCTLib.layers.attention import Attention, BiaslessLayerNorm
from GenerateCTLib.layers.feedforward import FeedForward
from GenerateCTLib.layers.peg import PEG

# feed-forward names -> index in the reference Sequential(LayerNorm, Linear, GEGLU, Dropout, Linear)
_FF_REFERENCE = {
    "norm.weight": "0.weight",
    "norm.bias": "0.bias",
    "proj_in.weight": "1.weight",
    "proj_out.weight": "4.weight",
}


class TransformerLayer(nn.Module):
    """One residual layer; ``cross_attn`` is ``None`` for self-attention-only stacks."""

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int,
        heads: int,
        ff_mult: float,
        peg_causal: bool,
        dim_context: int | None,
        num_null_kv: int,
    ):
        super().__init__()
        self.peg = PEG(dim, causal=peg_causal)
        self.self_attn = Attention(dim, dim_head=dim_head, heads=heads)
        self.cross_attn = (
            Attention(dim, dim_head=dim_head, heads=heads, dim_context=dim_context, num_null_kv=num_null_kv)
            if dim_context is not None
            else None
        )
        self.ff = FeedForward(dim, mult=ff_mult)


class Transformer(nn.Module):
    """``depth`` layers of PEG -> self-attention -> (cross-attention) -> feed-forward, then a bias-less norm.

    Args:
        dim: token width.
        depth: number of layers.
        dim_head, heads: attention geometry (inner width ``heads * dim_head``).
        ff_mult: feed-forward multiplier (inner width ``int(ff_mult * 2/3 * dim)``).
        peg_causal: causal (2, 0) padding of the PEG along ``t``.
        dim_context: context width; ``None`` = no cross-attention.
        num_null_kv: learned null key/value pairs of the cross-attention.
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        dim_head: int,
        heads: int,
        ff_mult: float = 4,
        peg_causal: bool,
        dim_context: int | None = None,
        num_null_kv: int = 2,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                TransformerLayer(
                    dim,
                    dim_head=dim_head,
                    heads=heads,
                    ff_mult=ff_mult,
                    peg_causal=peg_causal,
                    dim_context=dim_context,
                    num_null_kv=num_null_kv,
                )
                for _ in range(depth)
            ]
        )
        self.norm_out = BiaslessLayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        peg_grid: tuple[int, int, int, int],
        self_attn_bias: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the stack.

        Args:
            x: ``(B, N, dim)``.
            peg_grid: ``(b, t, h, w)`` that ``x`` is reshaped to for the PEG (see :class:`PEG`).
            self_attn_bias: additive self-attention bias, e.g. ``(heads, N, N)``.
            context: ``(B, L, dim_context)`` for the cross-attention (skipped when ``None``).
            context_mask: ``(B, L)`` bool, True = valid context token.

        Returns:
            ``(B, N, dim)``.
        """
        for layer in self.layers:
            x = layer.peg(x, peg_grid) + x
            x = layer.self_attn(x, bias=self_attn_bias) + x
            if layer.cross_attn is not None and context is not None:
                x = layer.cross_attn(x, context=context, key_mask=context_mask) + x
            x = layer.ff(x) + x
        return self.norm_out(x)

    def attentions(self, kind: str) -> list[Attention]:
        """The per-layer ``'self'`` or ``'cross'`` attention modules."""
        if kind not in ("self", "cross"):
            raise ValueError(f"kind={kind!r} is not supported; allowed: 'self', 'cross'")
        mods = [layer.self_attn if kind == "self" else layer.cross_attn for layer in self.layers]
        return [m for m in mods if m is not None]

    def reference_items(self, prefix: str) -> list[tuple[str, str | None, torch.Tensor]]:
        """``(reference name, own name or None, tensor)`` for every entry of the reference layout.

        Own names are relative to this module. Entries with own name ``None`` exist only in the
        reference checkpoints (unused self-attention ``context_norm`` and zero-size ``null_kv``); they are
        produced with neutral values and ignored on load.
        """
        items: list[tuple[str, str | None, torch.Tensor]] = []
        for i, layer in enumerate(self.layers):
            ref, own = f"{prefix}layers.{i}.", f"layers.{i}."
            for name, t in layer.peg.state_dict().items():
                items.append((f"{ref}0.{name}", f"{own}peg.{name}", t))
            attn = layer.self_attn
            for name, t in attn.state_dict().items():
                items.append((f"{ref}1.{name}", f"{own}self_attn.{name}", t))
            like = attn.q_scale
            dim = attn.norm.gamma.shape[0]
            items += [
                (f"{ref}1.null_kv", None, like.new_zeros(attn.heads, 0, attn.dim_head)),
                (f"{ref}1.context_norm.gamma", None, like.new_ones(dim)),
                (f"{ref}1.context_norm.beta", None, like.new_zeros(dim)),
            ]
            if layer.cross_attn is not None:
                for name, t in layer.cross_attn.state_dict().items():
                    items.append((f"{ref}2.{name}", f"{own}cross_attn.{name}", t))
            for name, t in layer.ff.state_dict().items():
                items.append((f"{ref}3.{_FF_REFERENCE[name]}", f"{own}ff.{name}", t))
        for name, t in self.norm_out.state_dict().items():
            items.append((f"{prefix}norm_out.{name}", f"norm_out.{name}", t))
        return items
