"""Gated-GELU feed-forward block used by every transformer layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feedforward_inner_dim(dim: int, mult: float) -> int:
    """Hidden width ``int(mult * 2/3 * dim)`` (e.g. 1365 for dim 512, mult 4)."""
    return int(mult * (2 / 3) * dim)


class FeedForward(nn.Module):
    """``LayerNorm -> Linear(dim, 2*inner) -> GEGLU -> Linear(inner, dim)``, no biases in the linears.

    GEGLU splits the projection in two halves ``(x, gate)`` and returns ``gelu(gate) * x``: the gate is the
    *second* half. Input and output ``(..., dim)``.
    """

    def __init__(self, dim: int, mult: float = 4):
        super().__init__()
        inner = feedforward_inner_dim(dim, mult)
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(F.gelu(gate) * x)
