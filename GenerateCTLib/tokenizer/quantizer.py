"""Cosine-similarity vector quantiser, inference-only, laid out like vector-quantize-pytorch 1.1.2.

Buffers (reference names under ``vq._codebook.``):

* ``embed`` ``(1, K, D)``: the codebook rows, *not* unit-norm in general (EMA-updated during training);
* ``cluster_size`` ``(1, K)``: EMA cluster counts (training statistics, unused here);
* ``initted`` ``(1,)``: 1.0 once the codebook is initialised.

Lookup picks ``argmax_k <x / |x|, e_k / |e_k|>`` but returns the **raw** rows ``e_k`` (as the reference
does, so decoding a normalised row would be wrong for real checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
