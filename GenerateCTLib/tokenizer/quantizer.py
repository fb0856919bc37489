"""Cosine-similarity vector quantiser, inference-only, laid out like vector-quantize-pytorch 1.1.2.

Buffers (reference names under ``vq._codebook.``):

* ``embed`` ``(1, K, D)``: the codebook rows, *not* unit-norm in general (EMA-updated during training);
* ``cluster_size`` ``(1, K)``: EMA cluster counts (training statistics, unused here);
* ``initted`` ``(1,)``: 1.0 once the codebook is initialised.

Lookup picks ``argmax_k <x / |x|, e_k / |e_k|>`` but returns the **raw** rows ``e_k`` (as the reference
does, so decoding a normalised row would be wrong for real checkpoints).

Training support (used by :mod:`GenerateCTLib.training`; inference numerics are untouched, ``forward``,
``ids`` and ``lookup`` never change the buffers):

* :meth:`CosineSimQuantizer.quantize_for_training`: straight-through quantisation ``x + (e - x).detach()``
  and the commitment loss ``mse(e.detach(), x)`` (vector-quantize-pytorch 1.1.2, ``commitment_weight=1``);
* :meth:`CosineSimQuantizer.ema_update`: the 1.1.2 ``CosineSimCodebook`` EMA — ``cluster_size`` and the rows
  are lerped (decay 0.8) towards the counts and the l2-normalised mean of the l2-normalised encoder outputs
  assigned to each row; rows without assignments in the batch keep their value;
* :meth:`CosineSimQuantizer.kmeans_init` (spherical k-means on a first batch) and
  :meth:`CosineSimQuantizer.replace_dead_codes` (rows whose EMA count fell below a threshold are re-seeded
  with random batch vectors), because tiny training sets otherwise collapse onto a few codes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class QuantizerTrainingOutput:
    """Result of :meth:`CosineSimQuantizer.quantize_for_training`.

    Attributes:
        quantized: ``(..., D)`` straight-through rows (value = raw codebook rows, gradient = identity to
            the encoder output).
        ids: ``(...)`` int64 codebook ids.
        commit_loss: scalar ``mse(rows.detach(), tokens)``.
    """

    quantized: torch.Tensor
    ids: torch.Tensor
    commit_loss: torch.Tensor


class CosineSimQuantizer(nn.Module):
    """Nearest codebook row by cosine similarity.

    Args:
        dim: token width ``D``.
        codebook_size: number of rows ``K``.
        chunk_size: tokens compared at once (bounds the ``(chunk, K)`` similarity matrix).
    """

    def __init__(self, dim: int, codebook_size: int, *, chunk_size: int = 4096):
        super().__init__()
        self.chunk_size = chunk_size
        self.register_buffer("embed", F.normalize(torch.randn(1, codebook_size, dim), dim=-1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("initted", torch.ones(1))

    @property
    def codebook(self) -> torch.Tensor:
        """Raw codebook ``(K, D)``."""
        return self.embed[0]

    def cosine_similarity(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> ``(..., K)`` cosine similarities to every codebook row."""
        return F.normalize(tokens, dim=-1) @ F.normalize(self.codebook, dim=-1).t()

    def ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> ``(...)`` int64 ids of the most similar rows (chunked over tokens)."""
        flat = tokens.reshape(-1, tokens.shape[-1])
        codebook = F.normalize(self.codebook, dim=-1).t()
        parts = [(F.normalize(chunk, dim=-1) @ codebook).argmax(dim=-1) for chunk in flat.split(self.chunk_size)]
        return torch.cat(parts).reshape(tokens.shape[:-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``(...)`` int64 ids -> ``(..., D)`` raw codebook rows."""
        return F.embedding(ids, self.codebook)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., D)`` -> (quantised ``(..., D)`` raw rows, ids ``(...)``)."""
        ids = self.ids(tokens)
        return self.lookup(ids), ids

    # -- training ------------------------------------------------------------------------------------

    def quantize_for_training(self, tokens: torch.Tensor) -> QuantizerTrainingOutput:
        """Straight-through quantisation with the commitment loss; does not touch the codebook."""
        with torch.no_grad():
            ids = self.ids(tokens)
            rows = self.lookup(ids).to(tokens.dtype)
        quantized = tokens + (rows - tokens).detach()
        commit_loss = F.mse_loss(rows, tokens)
        return QuantizerTrainingOutput(quantized=quantized, ids=ids, commit_loss=commit_loss)

    @torch.no_grad()
    def ema_update(self, tokens: torch.Tensor, ids: torch.Tensor, decay: float = 0.8) -> None:
        """EMA codebook update from a batch: ``tokens (..., D)`` and their ``ids (...)``.

        ``cluster_size ← lerp(cluster_size, counts, 1 − decay)``; for every row hit by the batch,
        ``e_k ← lerp(e_k, normalize(mean of normalize(x) assigned to k), 1 − decay)`` (not re-normalised,
        as in vector-quantize-pytorch 1.1.2).
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay!r} is invalid; allowed: a float in [0, 1)")
        flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
        onehot = F.one_hot(ids.reshape(-1), self.embed.shape[1]).to(flat.dtype)  # (N, K)
        bins = onehot.sum(dim=0)  # (K,)
        self.cluster_size.data.lerp_(bins[None].to(self.cluster_size.dtype), 1 - decay)
        embed_sum = onehot.t() @ flat  # (K, D)
        new_rows = F.normalize(embed_sum / bins.clamp(min=1)[:, None], dim=-1)
        hit = (bins > 0)[:, None]
        target = torch.where(hit, new_rows, self.codebook.float())
        self.embed.data[0].lerp_(target.to(self.embed.dtype), 1 - decay)

    @torch.no_grad()
    def kmeans_init(self, tokens: torch.Tensor, *, iterations: int = 10, generator: torch.Generator | None = None):
        """Spherical k-means of the l2-normalised ``tokens (..., D)``; the centroids become the codebook.

        Starting centroids are random batch vectors (drawn with replacement when the batch has fewer
        vectors than codes); empty clusters keep their previous centroid. Sets ``cluster_size`` to the
        final cluster counts and ``initted`` to 1.
        """
        flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
        k = self.embed.shape[1]
        pick = torch.randint(0, flat.shape[0], (k,), generator=generator, device="cpu").to(flat.device)
        centroids = flat[pick]
        bins = torch.zeros(k, device=flat.device)
        for _ in range(max(1, iterations)):
            assign = (flat @ centroids.t()).argmax(dim=-1)
            onehot = F.one_hot(assign, k).to(flat.dtype)
            bins = onehot.sum(dim=0)
            means = F.normalize(onehot.t() @ flat, dim=-1)
            centroids = torch.where((bins > 0)[:, None], means, centroids)
        self.embed.data[0].copy_(centroids.to(self.embed.dtype))
        self.cluster_size.data[0].copy_(bins.to(self.cluster_size.dtype))
        self.initted.data.fill_(1.0)

    @torch.no_grad()
    def replace_dead_codes(
        self, tokens: torch.Tensor, threshold: float, *, generator: torch.Generator | None = None
    ) -> int:
        """Re-seed rows whose EMA count is below ``threshold`` with random l2-normalised ``tokens``.

        The re-seeded rows get ``cluster_size = threshold`` so they are not replaced again at once.
        Returns the number of replaced rows.
        """
        dead = self.cluster_size[0] < threshold
        count = int(dead.sum())
        if count == 0:
            return 0
        flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
        pick = torch.randint(0, flat.shape[0], (count,), generator=generator, device="cpu").to(flat.device)
        self.embed.data[0][dead] = flat[pick].to(self.embed.dtype)
        self.cluster_size.data[0][dead] = threshold
        return count


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantisation (Mentzer et al., 2023), an alternative to the reference VQ (not released).

    A linear map takes each token to ``len(levels)`` scalars; each is bounded with a shifted ``tanh`` to
    ``levels[i]`` values and rounded (straight-through gradient). The implicit codebook is the grid of all
    combinations, ``prod(levels)`` codes; an id is the mixed-radix number of the per-scalar levels. Another
    linear map takes the quantised scalars back to the token width. Nothing to initialise or update: no
    codebook collapse, and a scalar such as a region's density can be kept as such.
    """

    def __init__(self, dim: int, levels: tuple[int, ...], *, eps: float = 1e-3):
        super().__init__()
        if not levels or any(not isinstance(v, int) or v < 2 for v in levels):
            raise ValueError(f"levels={levels!r} is invalid; allowed: a non-empty sequence of ints >= 2")
        self.levels = tuple(levels)
        self.eps = eps
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1])), dim=0)
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    @property
    def codebook_size(self) -> int:
        return int(torch.tensor(self.levels).prod())

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Scalars to ``[-(L-1)/2, (L-1)/2]`` (shifted by 1/2 for even ``L``, so rounding gives ``L`` values)."""
        levels = self._levels.to(z.dtype)
        half = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _scalars(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., len(levels))`` integer-valued levels centred on 0 (straight-through)."""
        bounded = self._bound(self.project_in(tokens).float())
        return bounded + (bounded.round() - bounded).detach()

    def _ids_from_scalars(self, scalars: torch.Tensor) -> torch.Tensor:
        digits = (scalars.round() + (self._levels // 2)).long()
        return (digits * self._basis).sum(dim=-1)

    def ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(...)`` int64 ids in ``[0, prod(levels))``."""
        return self._ids_from_scalars(self._scalars(tokens))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``(...)`` int64 ids -> ``(..., dim)`` tokens (the quantised scalars mapped back)."""
        digits = (ids[..., None] // self._basis) % self._levels
        scalars = (digits - self._levels // 2).to(self.project_out.weight.dtype)
        return self.project_out(scalars / (self._levels // 2))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., dim)`` -> (quantised ``(..., dim)``, ids ``(...)``)."""
        ids = self.ids(tokens)
        return self.lookup(ids), ids

    def quantize_for_training(self, tokens: torch.Tensor) -> QuantizerTrainingOutput:
        """Straight-through quantisation; FSQ has no commitment loss (it is returned as 0)."""
        scalars = self._scalars(tokens)
        quantized = self.project_out((scalars / (self._levels // 2)).to(tokens.dtype))
        return QuantizerTrainingOutput(quantized=quantized, ids=self._ids_from_scalars(scalars.detach()),
                                       commit_loss=tokens.new_zeros(()))
