"""PEG: a depthwise 3-D convolution over the token grid, used as a position-generating residual."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class PEG(nn.Module):
    """Depthwise ``Conv3d(dim, dim, 3, groups=dim)`` over a ``(t, h, w)`` token grid.

    Padding is 1 in ``h`` and ``w``; in ``t`` it is ``(2, 0)`` when ``causal`` (a token only sees its own
    and earlier slices) and ``(1, 1)`` otherwise.
    """

    def __init__(self, dim: int, *, causal: bool):
        super().__init__()
        self.causal = causal
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        """Convolve tokens laid out as a grid.

        Args:
            x: ``(B, N, d)`` token sequences whose elements, read in row-major order, are reinterpreted as
                ``grid = (b, t, h, w)`` (``B * N == b * t * h * w``). The reinterpretation is a plain
                ``reshape``; callers decide whether that is the true spatial layout (see the CT-ViT
                temporal transformer, where on purpose it is not).

        Returns:
            ``(B, N, d)``, same layout as ``x``.
        """
        shape = x.shape
        x = rearrange(x.reshape(*grid, shape[-1]), "b t h w d -> b d t h w")
        time_pad = (2, 0) if self.causal else (1, 1)
        x = self.dsconv(F.pad(x, (1, 1, 1, 1, *time_pad)))
        return rearrange(x, "b d t h w -> b t h w d").reshape(shape)
