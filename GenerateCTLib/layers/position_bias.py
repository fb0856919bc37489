"""Continuous relative position bias (Swin-v2 style) over a 2-D or 3-D token grid.

An MLP maps each signed-log relative offset ``sign(d) * log(|d| + 1)`` between two grid positions to one
bias per head. The full bias is ``(heads, n, n)`` for ``n = prod(grid)`` tokens.

Computing the MLP on all ``n**2`` pairs is what made the reference need tens of GB (6464**2 rows for the
released 101x8x8 grid). The bias only depends on the offset, and a grid with sides ``g_i`` has just
``prod(2 * g_i - 1)`` distinct offsets (45,225 for 101x8x8), so the MLP runs once per distinct offset and
the ``(heads, n, n)`` result is gathered from that table in row chunks. The result is cached per grid
shape, device and dtype, and recomputed automatically when the MLP weights change.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def signed_log(offsets: torch.Tensor) -> torch.Tensor:
    """``sign(d) * log(|d| + 1)`` of integer offsets, as float32 (matches the reference arithmetic)."""
    return torch.sign(offsets) * torch.log(offsets.abs() + 1)


class ContinuousPositionBias(nn.Module):
    """MLP ``[Linear(num_dims, dim), LeakyReLU(0.1)] * layers -> Linear(dim, heads)`` over relative offsets.

    Parameter names follow the reference: ``net.0.0``, ..., ``net.{layers-1}.0`` and ``net.{layers}``.

    Args:
        dim: hidden width of the MLP.
        heads: number of attention heads (outputs).
        num_dims: 2 for an (h, w) grid, 3 for a (t, h, w) grid.
        layers: number of hidden layers.
        chunk_rows: query rows gathered per chunk when assembling the ``(heads, n, n)`` bias.
    """

    def __init__(self, *, dim: int, heads: int, num_dims: int, layers: int = 2, chunk_rows: int = 512):
        super().__init__()
        if num_dims not in (2, 3):
            raise ValueError(f"num_dims={num_dims!r} is not supported; allowed: 2, 3")
        self.num_dims = num_dims
        self.heads = heads
        self.chunk_rows = chunk_rows
        widths = [num_dims] + [dim] * layers
        self.net = nn.ModuleList(
            [nn.Sequential(nn.Linear(i, o), nn.LeakyReLU(0.1)) for i, o in itertools.pairwise(widths)]
        )
        self.net.append(nn.Linear(dim, heads))
        # (grid, device, dtype) -> (heads, n, n); only valid for the parameter versions in _cache_version
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_version: tuple[int, ...] | None = None

    def mlp(self, rel_pos: torch.Tensor) -> torch.Tensor:
        """``(..., num_dims)`` float offsets (already signed-log) -> ``(..., heads)``."""
        for layer in self.net:
            rel_pos = layer(rel_pos)
        return rel_pos

    def offset_table(self, grid: tuple[int, ...]) -> torch.Tensor:
        """Bias for every distinct offset: ``(heads, prod(2 * g - 1))``, offsets in row-major order of
        ``(d_0 + g_0 - 1, d_1 + g_1 - 1, ...)``."""
        weight = self.net[0][0].weight
        axes = [torch.arange(-(g - 1), g, device=weight.device) for g in grid]
        offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
        return self.mlp(signed_log(offsets).to(weight.dtype)).t()

    def compute(self, grid: tuple[int, ...], *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Uncached bias ``(heads, n, n)``; entry ``[h, i, j]`` is for query ``i`` and key ``j`` (row-major
        positions in ``grid``)."""
        table = self.offset_table(grid)
        device = table.device
        dtype = dtype or table.dtype
        n = 1
        for g in grid:
            n *= g
        coords = torch.stack(
            torch.meshgrid(*[torch.arange(g, device=device) for g in grid], indexing="ij"), dim=-1
        ).reshape(n, len(grid))
        # flat table index of offset (ci - cj) = sum_k (ci_k - cj_k + g_k - 1) * stride_k
        strides, stride = [], 1
        for g in reversed(grid):
            strides.insert(0, stride)
            stride *= 2 * g - 1
        strides = torch.tensor(strides, device=device)
        row_part = ((coords + torch.tensor(grid, device=device) - 1) * strides).sum(-1)  # (n,)
        col_part = (coords * strides).sum(-1)  # (n,)
        if torch.is_grad_enabled() and table.requires_grad:
            return table[:, row_part[:, None] - col_part[None, :]].to(dtype)
        out = torch.empty(self.heads, n, n, device=device, dtype=dtype)
        for start in range(0, n, self.chunk_rows):
            stop = min(start + self.chunk_rows, n)
            index = row_part[start:stop, None] - col_part[None, :]
            out[:, start:stop] = table[:, index].to(dtype)
        return out

    def forward(self, *grid: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Bias ``(heads, n, n)`` for ``grid`` (2 or 3 ints); cached unless gradients are needed."""
        grid = tuple(int(g) for g in grid)
        if len(grid) != self.num_dims or min(grid) < 1:
            raise ValueError(f"grid={grid!r} must be {self.num_dims} positive ints")
        params = list(self.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self.compute(grid, dtype=dtype)
        version = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        key = (grid, params[0].device, dtype or params[0].dtype)
        if key not in self._cache:
            self._cache[key] = self.compute(grid, dtype=key[2])
        return self._cache[key]

    def clear_cache(self) -> None:
        """Drop the cached biases (they are rebuilt on demand)."""
        self._cache.clear()
        self._cache_version = None

    def _apply(self, fn, recurse=True):
        self.clear_cache()
        return super()._apply(fn, recurse)
