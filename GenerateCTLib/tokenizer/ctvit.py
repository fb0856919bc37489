"""CT-ViT: a VQ autoencoder over CT volumes (the GenerateCT tokenizer; phenaki's C-ViViT for CT).

Layout: volumes are ``(b, c, z, y, x)`` with ``z = 1 + k * temporal_patch_size`` slices. Slice 0 is
patched alone, the remaining slices in groups of ``temporal_patch_size``, giving a token grid
``(t, h, w) = (1 + k, y / patch, x / patch)``; the released model maps ``(201, 128, 128)`` to
``(101, 8, 8)`` = 6464 tokens.

Encoder: patch embedding -> spatial transformer (per slice group, with a 2-D continuous position
bias) -> temporal transformer (per (h, w) column) -> cosine-sim VQ. The decoder runs the same stages in
reverse and maps tokens back to pixels, unclamped.

Two reference quirks are reproduced on purpose, because the released weights were trained with them
(changing either moves the outputs by O(1)):

* the *spatial* transformer's PEG sees the ``(b, t, h, w)`` grid and convolves causally along ``t``, so the
  "spatial" stage mixes each slice group with the two before it;
* the *temporal* transformer's PEG reinterprets the ``((b h w), t, d)`` token tensor with a plain
  ``reshape(b, t, h, w, d)`` (not a rearrange), convolves that scrambled grid and reshapes back.

Two options depart from the reference, both off by default (the released model has neither):

* ``patch_norm=False`` drops the LayerNorm over each flattened patch before its projection. That LayerNorm
  removes each patch's mean and contrast, so the encoder cannot see the absolute density of a region (lung
  at -850 HU and emphysematous lung at -920 HU give the same tokens).
* ``fsq_levels`` replaces the cosine-similarity VQ with finite scalar quantisation
  (:class:`~GenerateCTLib.tokenizer.quantizer.FiniteScalarQuantizer`, ``codebook_size = prod(fsq_levels)``).
  The cosine VQ discards the norm of each token and assigns nearby directions to one code: with it, the
  demo's encoder tells emphysematous from normal lung before quantisation, and the codes do not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import nn

from GenerateCTLib.layers.position_bias import ContinuousPositionBias
from GenerateCTLib.layers.reference_layout import items_to_state_dict, load_reference_items, prefixed
from GenerateCTLib.layers.transformer import Transformer
from GenerateCTLib.modeling import ModelConfig, PretrainedModel
from GenerateCTLib.tokenizer.quantizer import CosineSimQuantizer, FiniteScalarQuantizer


@dataclasses.dataclass
class CTViTConfig(ModelConfig):
    """CT-ViT architecture; defaults are the released GenerateCT configuration."""

    dim: int = 512
    codebook_size: int = 8192
    image_size: int = 128
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    channels: int = 1
    patch_norm: bool = True  # LayerNorm over each flattened patch (reference); see the module docstring
    fsq_levels: tuple[int, ...] = ()  # empty: the reference cosine-sim VQ; see the module docstring

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "codebook_size",
            "image_size",
            "patch_size",
            "temporal_patch_size",
            "spatial_depth",
            "temporal_depth",
            "dim_head",
            "heads",
            "channels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; allowed: a positive int")
        if not isinstance(self.patch_norm, bool):
            raise ValueError(f"patch_norm={self.patch_norm!r} is invalid; allowed: true or false")
        levels = tuple(self.fsq_levels)
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 2 for v in levels) or (
                levels and int(torch.tensor(levels).prod()) != self.codebook_size):
            raise ValueError(
                f"fsq_levels={self.fsq_levels!r} is invalid; allowed: empty (cosine-sim VQ) or ints >= 2 whose "
                f"product is codebook_size={self.codebook_size}"
            )
        self.fsq_levels = levels
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is invalid; allowed: multiples of {self.patch_size}")

    # constructor arguments of the reference class that only matter for training (losses, dropout)
    _REFERENCE_TRAINING_ONLY = (
        "use_vgg_and_gan",
        "vgg",
        "discr_base_dim",
        "discr_attn_res_layers",
        "use_hinge_loss",
        "attn_dropout",
        "ff_dropout",
    )
    # the reference constructor's own defaults for the optional architecture arguments
    _REFERENCE_DEFAULTS = {"dim_head": 64, "heads": 8, "channels": 1}

    @classmethod
    def from_reference_kwargs(cls, kwargs: Mapping[str, Any]) -> CTViTConfig:
        """Config from the keyword arguments of the reference ``CTViT(...)`` constructor.

        Missing optional arguments take the *reference* defaults (e.g. ``dim_head=64``); training-only
        arguments are ignored; unknown ones raise ``ValueError``.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"patch_norm", "fsq_levels"}  # not reference arguments
        allowed = names | set(cls._REFERENCE_TRAINING_ONLY)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"kwargs: unknown reference CTViT argument(s) {unknown}; allowed: {sorted(allowed)}")
        values = dict(cls._REFERENCE_DEFAULTS)
        values.update({k: v for k, v in kwargs.items() if k in names})
        for key in ("image_size", "patch_size"):
            value = values.get(key)
            if isinstance(value, (tuple, list)):
                if len(value) != 2 or value[0] != value[1]:
                    raise ValueError(f"kwargs[{key!r}]={value!r} is not supported; allowed: an int or a square pair")
                values[key] = int(value[0])
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(f"kwargs: missing required reference CTViT argument(s) {missing}")
        return cls(**values)


class PatchEmbedding(nn.Module):
    """``LayerNorm(patch_dim) -> Linear(patch_dim, dim) -> LayerNorm(dim)`` on flattened patches (without the
    first LayerNorm when ``normalize_patches`` is false)."""

    def __init__(self, patch_dim: int, dim: int, *, normalize_patches: bool = True):
        super().__init__()
        self.norm_in = nn.LayerNorm(patch_dim) if normalize_patches else nn.Identity()
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``(..., patch_dim)`` -> ``(..., dim)``."""
        return self.norm_out(self.proj(self.norm_in(patches)))


_PATCH_RENAMES = {
    "norm_in.weight": "1.weight",
    "norm_in.bias": "1.bias",
    "proj.weight": "2.weight",
    "proj.bias": "2.bias",
    "norm_out.weight": "3.weight",
    "norm_out.bias": "3.bias",
}
_PIXEL_RENAMES = {"weight": "0.weight", "bias": "0.bias"}


class CTViT(PretrainedModel):
    """The CT-ViT VQ tokenizer (encode volumes to codebook ids, decode ids to volumes)."""

    config_class = CTViTConfig

    def __init__(self, config: CTViTConfig):
        super().__init__(config)
        c = config
        pixels = c.channels * c.patch_size**2
        block = dict(dim_head=c.dim_head, heads=c.heads, ff_mult=4, peg_causal=True)

        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=c.dim, heads=c.heads, num_dims=2)
        self.patch_embed_first = PatchEmbedding(pixels, c.dim, normalize_patches=c.patch_norm)
        self.patch_embed = PatchEmbedding(pixels * c.temporal_patch_size, c.dim, normalize_patches=c.patch_norm)
        self.enc_spatial_transformer = Transformer(c.dim, depth=c.spatial_depth, **block)
        self.enc_temporal_transformer = Transformer(c.dim, depth=c.temporal_depth, **block)
        self.vq = FiniteScalarQuantizer(c.dim, c.fsq_levels) if c.fsq_levels else CosineSimQuantizer(
            c.dim, c.codebook_size)
        self.dec_spatial_transformer = Transformer(c.dim, depth=c.spatial_depth, **block)
        self.dec_temporal_transformer = Transformer(c.dim, depth=c.temporal_depth, **block)
        self.to_pixels_first_frame = nn.Linear(c.dim, pixels)
        self.to_pixels = nn.Linear(c.dim, pixels * c.temporal_patch_size)

    # -- geometry -----------------------------------------------------------------------------------

    @property
    def spatial_grid(self) -> tuple[int, int]:
        """Tokens per slice group ``(h, w)``."""
        side = self.config.image_size // self.config.patch_size
        return side, side

    def token_grid(self, num_slices: int) -> tuple[int, int, int]:
        """``(t, h, w)`` token grid of a volume with ``num_slices = 1 + k * temporal_patch_size`` slices."""
        pt = self.config.temporal_patch_size
        if not isinstance(num_slices, int) or num_slices < 1 or (num_slices - 1) % pt:
            raise ValueError(f"num_slices={num_slices!r} is invalid; allowed: 1 + k * {pt} for k >= 0")
        return (1 + (num_slices - 1) // pt, *self.spatial_grid)

    def num_slices(self, t: int) -> int:
        """Slices decoded from ``t`` token groups."""
        return 1 + (t - 1) * self.config.temporal_patch_size

    # -- encoder ------------------------------------------------------------------------------------

    def embed_patches(self, volume: torch.Tensor) -> torch.Tensor:
        """Patch embedding: ``(b, c, z, y, x)`` -> tokens ``(b, t, h, w, dim)``."""
        c = self.config
        if volume.ndim != 5 or volume.shape[1] != c.channels or tuple(volume.shape[-2:]) != (c.image_size,) * 2:
            raise ValueError(
                f"volume shape {tuple(volume.shape)} is invalid; allowed: (b, {c.channels}, z, "
                f"{c.image_size}, {c.image_size})"
            )
        self.token_grid(volume.shape[2])
        p, pt = c.patch_size, c.temporal_patch_size
        first = rearrange(volume[:, :, :1], "b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=p, p2=p)
        rest = rearrange(volume[:, :, 1:], "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", p1=p, p2=p, pt=pt)
        return torch.cat((self.patch_embed_first(first), self.patch_embed(rest)), dim=1)

    def _spatial(self, transformer: Transformer, tokens: torch.Tensor) -> torch.Tensor:
        """Attention within each slice group; ``(b, t, h, w, d)`` -> same."""
        b, t, h, w, _ = tokens.shape
        bias = self.spatial_rel_pos_bias(h, w, dtype=tokens.dtype)
        x = rearrange(tokens, "b t h w d -> (b t) (h w) d")
        # the PEG sees the true (b, t, h, w) grid and is causal along t (reference quirk, see module doc)
        x = transformer(x, peg_grid=(b, t, h, w), self_attn_bias=bias)
        return rearrange(x, "(b t) (h w) d -> b t h w d", b=b, h=h)

    def _temporal(self, transformer: Transformer, tokens: torch.Tensor) -> torch.Tensor:
        """Attention along each (h, w) column; ``(b, t, h, w, d)`` -> same."""
        b, t, h, w, _ = tokens.shape
        x = rearrange(tokens, "b t h w d -> (b h w) t d")
        # the PEG reshapes this ((b h w), t, d) tensor to (b, t, h, w, d) *by memory order*, not by axis
        # meaning; the released weights were trained that way, so it is kept (reference quirk)
        x = transformer(x, peg_grid=(b, t, h, w))
        return rearrange(x, "(b h w) t d -> b t h w d", b=b, h=h)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoder transformers: patch tokens ``(b, t, h, w, d)`` -> pre-quantisation tokens (same shape)."""
        tokens = self._spatial(self.enc_spatial_transformer, tokens)
        return self._temporal(self.enc_temporal_transformer, tokens)

    def encode(self, volume: torch.Tensor) -> torch.Tensor:
        """``(b, c, z, y, x)`` -> pre-quantisation tokens ``(b, t, h, w, dim)``."""
        return self.encode_tokens(self.embed_patches(volume))

    def quantize(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., dim)`` -> (raw codebook rows ``(..., dim)``, ids ``(...)`` int64)."""
        return self.vq(tokens)

    def encode_to_ids(self, volume: torch.Tensor) -> torch.Tensor:
        """``(b, c, z, y, x)`` -> codebook ids ``(b, t, h, w)`` int64."""
        return self.vq.ids(self.encode(volume))

    # -- decoder ------------------------------------------------------------------------------------

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Quantised tokens ``(b, t, h, w, dim)`` (or ``(b, t*h*w, dim)`` with the configured ``(h, w)``)
        -> volume ``(b, c, z, y, x)``, unclamped."""
        h, w = self.spatial_grid
        if tokens.ndim == 3:
            if tokens.shape[1] % (h * w):
                raise ValueError(f"tokens shape {tuple(tokens.shape)} is invalid; allowed: (b, t*{h}*{w}, d)")
            tokens = rearrange(tokens, "b (t h w) d -> b t h w d", h=h, w=w)
        if tokens.ndim != 5 or tuple(tokens.shape[2:4]) != (h, w) or tokens.shape[-1] != self.config.dim:
            raise ValueError(
                f"tokens shape {tuple(tokens.shape)} is invalid; allowed: (b, t, {h}, {w}, {self.config.dim})"
            )
        tokens = self._temporal(self.dec_temporal_transformer, tokens)
        tokens = self._spatial(self.dec_spatial_transformer, tokens)
        p, pt = self.config.patch_size, self.config.temporal_patch_size
        first = rearrange(
            self.to_pixels_first_frame(tokens[:, :1]), "b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", p1=p, p2=p
        )
        rest = rearrange(
            self.to_pixels(tokens[:, 1:]),
            "b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)",
            p1=p,
            p2=p,
            pt=pt,
        )
        return torch.cat((first, rest), dim=2)

    def decode_from_ids(self, ids: torch.Tensor, *, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Codebook ids -> volume ``(b, c, z, y, x)``.

        Args:
            ids: ``(b, t, h, w)``, or flat ``(b, n)`` in ``(t h w)`` order.
            grid: ``(t, h, w)`` of flat ids; by default ``t = n / (h * w)`` with the configured ``(h, w)``.
        """
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids dtype {ids.dtype} is invalid; allowed: torch.int64 or torch.int32")
        if ids.ndim == 2:
            h, w = self.spatial_grid
            if grid is None:
                if ids.shape[1] % (h * w):
                    raise ValueError(f"ids shape {tuple(ids.shape)} is invalid; allowed: (b, t*{h}*{w})")
                grid = (ids.shape[1] // (h * w), h, w)
            if tuple(grid[1:]) != (h, w) or grid[0] * h * w != ids.shape[1]:
                raise ValueError(f"grid={grid!r} is invalid for ids {tuple(ids.shape)}; allowed: (t, {h}, {w})")
            ids = ids.reshape(ids.shape[0], *grid)
        elif ids.ndim != 4:
            raise ValueError(f"ids shape {tuple(ids.shape)} is invalid; allowed: (b, t, h, w) or (b, n)")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.codebook_size):
            raise ValueError(f"ids must lie in [0, {self.config.codebook_size})")
        return self.decode(self.vq.lookup(ids.long()))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(b, c, z, y, x)`` -> ``(b, c, z, y, x)`` (encode, quantise, decode)."""
        quantized, _ = self.quantize(self.encode(volume))
        return self.decode(quantized)

    # -- reference layout ---------------------------------------------------------------------------

    def _reference_items(self):
        for option, off in (("patch_norm=False", not self.config.patch_norm),
                            (f"fsq_levels={self.config.fsq_levels}", bool(self.config.fsq_levels))):
            if off:
                raise ValueError(f"{option} has no reference layout; allowed: models with patch_norm=True and "
                                 "the cosine-sim VQ (fsq_levels empty)")
        items = prefixed(self.spatial_rel_pos_bias, "spatial_rel_pos_bias.", "spatial_rel_pos_bias.")
        items += prefixed(self.patch_embed_first, "patch_embed_first.", "to_patch_emb_first_frame.", _PATCH_RENAMES)
        items += prefixed(self.patch_embed, "patch_embed.", "to_patch_emb.", _PATCH_RENAMES)
        for name in (
            "enc_spatial_transformer",
            "enc_temporal_transformer",
            "dec_spatial_transformer",
            "dec_temporal_transformer",
        ):
            items += [
                (ref, f"{name}.{own}" if own else None, t)
                for ref, own, t in getattr(self, name).reference_items(f"{name}.")
            ]
        items += prefixed(self.vq, "vq.", "vq._codebook.")
        items += prefixed(
            self.to_pixels_first_frame, "to_pixels_first_frame.", "to_pixels_first_frame.", _PIXEL_RENAMES
        )
        items += prefixed(self.to_pixels, "to_pixels.", "to_pixels.", _PIXEL_RENAMES)
        return items

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the reference ``CTViT`` names (without the training-only ``vgg.*``/``discr.*``)."""
        return items_to_state_dict(self._reference_items())

    def load_reference_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Load a reference-named state dict strictly (drop ``vgg.*``/``discr.*`` beforehand)."""
        load_reference_items(self, self._reference_items(), state_dict, source=source)
