"""MaskGIT: a bidirectional transformer predicting CT-ViT codebook ids from T5 text embeddings.

Input: token ids ``(b, n)`` over a ``(t, h, w)`` grid flattened in ``(t h w)`` order, where id
``num_tokens`` is ``[MASK]``. Token + absolute position embeddings go through ``depth`` layers of
non-causal PEG -> self-attention with a 3-D continuous position bias -> cross-attention to the text
(with 2 learned null key/values) -> feed-forward, a final bias-less norm and ``to_logits``.

Classifier-free guidance ("null" pass) is the same network with the text mask all False, so only the
null key/values are attended; :meth:`MaskGIT.forward_with_guidance` runs both passes as one batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from GenerateCTLib.layers.position_bias import ContinuousPositionBias
from GenerateCTLib.layers.reference_layout import items_to_state_dict, load_reference_items, prefixed
from GenerateCTLib.layers.transformer import Transformer
from GenerateCTLib.modeling import ModelConfig, PretrainedModel


@dataclasses.dataclass
class MaskGITConfig(ModelConfig):
    """MaskGIT architecture; defaults are the released GenerateCT configuration."""

    num_tokens: int = 8192
    max_seq_len: int = 10000
    dim: int = 512
    dim_context: int = 768
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_null_kv: int = 2
    ff_mult: int = 4
    gradient_shrink_alpha: float = 0.1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "gradient_shrink_alpha":
                if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ValueError(f"gradient_shrink_alpha={value!r} is invalid; allowed: a float in [0, 1]")
            elif not isinstance(value, int) or isinstance(value, bool) or value < (0 if f.name == "num_null_kv" else 1):
                raise ValueError(f"{f.name}={value!r} is invalid; allowed: a positive int")

    # reference MaskGit(...) arguments: its own defaults, and those that only matter for training
    _REFERENCE_DEFAULTS = {"heads": 8, "dim_head": 64, "gradient_shrink_alpha": 0.1, "ff_mult": 4}
    _REFERENCE_TRAINING_ONLY = ("attn_dropout", "ff_dropout")
    # accepted only with the value the released model uses (other values change the architecture)
    _REFERENCE_FIXED = {"unconditional": False, "causal": False, "peg_causal": False}

    @classmethod
    def from_reference_kwargs(cls, kwargs: Mapping[str, Any]) -> MaskGITConfig:
        """Config from the keyword arguments of the reference ``MaskGit(...)`` constructor.

        Missing optional arguments take the reference defaults (``dim_context`` defaults to ``dim``, as
        in the reference ``Attention``); dropouts are ignored; unknown or unsupported ones raise.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"num_null_kv"}
        allowed = names | set(cls._REFERENCE_TRAINING_ONLY) | set(cls._REFERENCE_FIXED)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"kwargs: unknown reference MaskGit argument(s) {unknown}; allowed: {sorted(allowed)}")
        for key, fixed in cls._REFERENCE_FIXED.items():
            if key in kwargs and kwargs[key] != fixed:
                raise ValueError(f"kwargs[{key!r}]={kwargs[key]!r} is not supported; allowed: {fixed!r}")
        values = dict(cls._REFERENCE_DEFAULTS)
        values.update({k: v for k, v in kwargs.items() if k in names})
        if "dim" in values:
            values.setdefault("dim_context", values["dim"])
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(f"kwargs: missing required reference MaskGit argument(s) {missing}")
        return cls(**values)


class CapturedAttention:
    """Attention probabilities recorded per layer during a :meth:`MaskGIT.capture_cross_attention` block.

    ``captured[i]`` is layer ``i``'s ``(B, heads, n, keys)`` probabilities, concatenated along ``B`` over
    the forward calls made inside the block (for the cross-attention, keys = ``num_null_kv + L``, the null
    keys first).
    """

    def __init__(self, depth: int):
        self.per_layer: list[list[torch.Tensor]] = [[] for _ in range(depth)]

    def __len__(self) -> int:
        return len(self.per_layer)

    def __getitem__(self, layer: int) -> torch.Tensor:
        calls = self.per_layer[layer]
        if not calls:
            raise IndexError(f"layer {layer}: nothing captured yet")
        return calls[0] if len(calls) == 1 else torch.cat(calls, dim=0)


class MaskGIT(PretrainedModel):
    """Text-conditional masked token transformer (the GenerateCT ``MaskGit``)."""

    config_class = MaskGITConfig

    def __init__(self, config: MaskGITConfig):
        super().__init__(config)
        c = config
        self.token_emb = nn.Embedding(c.num_tokens + 1, c.dim)  # the last id is [MASK]
        self.pos_emb = nn.Embedding(c.max_seq_len, c.dim)
        self.continuous_pos_bias = ContinuousPositionBias(dim=c.dim_head, heads=c.heads, num_dims=3)
        self.transformer = Transformer(
            c.dim,
            depth=c.depth,
            dim_head=c.dim_head,
            heads=c.heads,
            ff_mult=c.ff_mult,
            peg_causal=False,
            dim_context=c.dim_context,
            num_null_kv=c.num_null_kv,
        )
        self.to_logits = nn.Linear(c.dim, c.num_tokens)

    @property
    def mask_id(self) -> int:
        """The ``[MASK]`` token id (= ``num_tokens``)."""
        return self.config.num_tokens

    def _check_inputs(self, token_ids, text_embeds, text_mask, grid) -> tuple[int, int, int]:
        c = self.config
        if token_ids.ndim != 2 or token_ids.dtype != torch.int64:
            raise ValueError(f"token_ids must be a (b, n) int64 tensor, got {tuple(token_ids.shape)} {token_ids.dtype}")
        grid = tuple(int(g) for g in grid)
        b, n = token_ids.shape
        if len(grid) != 3 or grid[0] * grid[1] * grid[2] != n:
            raise ValueError(f"grid={grid!r} is invalid; allowed: (t, h, w) with t*h*w == n == {n}")
        if n > c.max_seq_len:
            raise ValueError(f"token_ids length n={n} is invalid; allowed: n <= max_seq_len={c.max_seq_len}")
        if text_embeds is not None:
            if text_embeds.ndim != 3 or text_embeds.shape[0] != b or text_embeds.shape[2] != c.dim_context:
                raise ValueError(
                    f"text_embeds shape {tuple(text_embeds.shape)} is invalid; allowed: ({b}, L, {c.dim_context})"
                )
            if text_mask is not None and (text_mask.dtype != torch.bool or text_mask.shape != text_embeds.shape[:2]):
                raise ValueError(
                    f"text_mask must be a bool tensor of shape {tuple(text_embeds.shape[:2])}, got "
                    f"{tuple(text_mask.shape)} {text_mask.dtype}"
                )
        return grid

    def embed(
        self,
        token_ids: torch.Tensor,
        text_embeds: torch.Tensor | None,
        text_mask: torch.Tensor | None = None,
        *,
        grid: tuple[int, int, int],
    ) -> torch.Tensor:
        """Final hidden states (after the output norm), ``(b, n, dim)``; see :meth:`forward`."""
        grid = self._check_inputs(token_ids, text_embeds, text_mask, grid)
        b, n = token_ids.shape
        if text_embeds is not None and text_mask is None:
            text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
        x = self.token_emb(token_ids) + self.pos_emb(torch.arange(n, device=token_ids.device))
        # gradient shrink (value-preserving, but its rounding is part of bit-exact parity with the reference)
        alpha = self.config.gradient_shrink_alpha
        x = x * alpha + x.detach() * (1 - alpha)
        # the bias is cached in the dtype attention will run in (the autocast dtype under autocast)
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        bias_dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        bias = self.continuous_pos_bias(*grid, dtype=bias_dtype)
        return self.transformer(
            x,
            peg_grid=(b, *grid),
            self_attn_bias=bias,
            context=None if text_embeds is None else text_embeds.to(x.dtype),
            context_mask=text_mask,
        )

    def forward(
        self,
        token_ids: torch.Tensor,
        text_embeds: torch.Tensor | None,
        text_mask: torch.Tensor | None = None,
        *,
        grid: tuple[int, int, int],
    ) -> torch.Tensor:
        """Logits over the codebook.

        Args:
            token_ids: ``(b, n)`` int64 ids in ``[0, num_tokens]`` (``num_tokens`` = ``[MASK]``), ``(t h w)``
                order.
            text_embeds: ``(b, L, dim_context)`` T5 embeddings, or ``None`` to skip the cross-attention.
            text_mask: ``(b, L)`` bool, True = real token (default all True). All False = the null pass.
            grid: ``(t, h, w)`` token grid with ``t * h * w == n``.

        Returns:
            ``(b, n, num_tokens)``.
        """
        return self.to_logits(self.embed(token_ids, text_embeds, text_mask, grid=grid))

    def forward_with_guidance(
        self,
        token_ids: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        *,
        grid: tuple[int, int, int],
        cond_scale: float,
    ) -> torch.Tensor:
        """Classifier-free guided logits ``null + (cond - null) * cond_scale``, ``(b, n, num_tokens)``.

        The conditional and null passes (text mask all False) run as one batch of ``2 b``. With
        ``cond_scale == 1`` only the conditional pass runs.
        """
        if cond_scale == 1:
            return self.forward(token_ids, text_embeds, text_mask, grid=grid)
        b = token_ids.shape[0]
        if text_mask is None:
            text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
        logits = self.forward(
            torch.cat((token_ids, token_ids)),
            torch.cat((text_embeds, text_embeds)),
            torch.cat((text_mask, torch.zeros_like(text_mask))),
            grid=grid,
        )
        cond, null = logits[:b], logits[b:]
        return null + (cond - null) * cond_scale

    @contextlib.contextmanager
    def capture_attention(self, kind: str = "cross") -> Iterator[CapturedAttention]:
        """Record per-layer attention probabilities (``kind`` = ``'cross'`` or ``'self'``).

        Inside the block the affected attentions run the explicit (non-SDPA) path. Self-attention
        probabilities are ``(B, heads, n, n)``: only use that on small grids.
        """
        modules = self.transformer.attentions(kind)
        captured = CapturedAttention(len(modules))
        for module, store in zip(modules, captured.per_layer, strict=True):
            module.capture = store
        try:
            yield captured
        finally:
            for module in modules:
                module.capture = None

    def capture_cross_attention(self) -> contextlib.AbstractContextManager[CapturedAttention]:
        """``with model.capture_cross_attention() as probs:`` -> ``probs[i]`` is ``(B, heads, n, null+L)``."""
        return self.capture_attention("cross")

    # -- reference layout ---------------------------------------------------------------------------

    def _reference_items(self):
        items = prefixed(self.token_emb, "token_emb.", "token_emb.")
        items += prefixed(self.pos_emb, "pos_emb.", "pos_emb.")
        items += prefixed(self.continuous_pos_bias, "continuous_pos_bias.", "continuous_pos_bias.")
        items += [
            (ref, f"transformer.{own}" if own else None, t)
            for ref, own, t in self.transformer.reference_items("transformer.")
        ]
        items += prefixed(self.to_logits, "to_logits.", "to_logits.")
        return items

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the reference ``MaskGit`` names (``maskgit.*`` of the transformer checkpoint,
        prefix stripped)."""
        return items_to_state_dict(self._reference_items())

    def load_reference_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Load a reference-named ``MaskGit`` state dict strictly (prefix ``maskgit.`` already stripped)."""
        load_reference_items(self, self._reference_items(), state_dict, source=source)
