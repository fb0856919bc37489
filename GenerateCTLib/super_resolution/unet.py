"""The text-conditional super-resolution Unet of GenerateCT (imagen-pytorch 1.21.6 SR Unet, as released).

Weights-compatible with the ``unets.1.*`` (or EMA ``1.ema_model.*``) entries of ``superres_pretrained.pt``:
``state_dict()`` keys are the reference Unet-local names. Only the released layout is implemented:
memory-efficient Unet (downsample before each level, upsample after each), multi-scale stem (3/7/15),
cross-attention in the first resnet block of every level and in both middle blocks, global-context gates,
scaled skip connections, a final resnet block, pixel-shuffle upsampling, low-resolution conditioning,
Perceiver text pooling, and no self-attention layers.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from GenerateCTLib.modeling import ModelConfig, PretrainedModel, check_state_dict
from GenerateCTLib.super_resolution.layers import (
    CrossEmbedLayer,
    Downsample,
    LearnedSinusoidalPosEmb,
    PerceiverResampler,
    PixelShuffleUpsample,
    ResnetBlock,
)


@dataclasses.dataclass
class SuperResolutionUnetConfig(ModelConfig):
    """Architecture numbers of the SR Unet; the defaults are the released GenerateCT model.

    ``cond_dim=None`` resolves to ``dim``. ``ff_mult`` is carried for the reference kwargs only: it sizes
    the self-attention feed-forwards, which the released layout does not have.

    ``mid_attn_heads``/``mid_attn_dim_head``: the reference builds the two middle blocks without passing
    ``attn_heads``/``attn_dim_head``, so their cross-attention always takes the library defaults 8 × 64
    (equal to the released ``attn_*`` values, but not for smaller test configs).
    """

    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4)
    num_resnet_blocks: int = 2
    cond_dim: int | None = None
    channels: int = 1
    text_embed_dim: int = 768
    max_text_len: int = 256
    attn_heads: int = 8
    attn_dim_head: int = 64
    ff_mult: float = 2.0
    attn_pool_num_latents: int = 32
    attn_pool_num_mean_pooled_latents: int = 4
    attn_pool_depth: int = 2
    attn_pool_ff_mult: float = 4.0
    attn_pool_max_seq_len: int = 512
    num_time_tokens: int = 2
    learned_sinu_pos_emb_dim: int = 16
    resnet_groups: int = 8
    init_cross_embed_kernel_sizes: tuple[int, ...] = (3, 7, 15)
    final_conv_kernel_size: int = 3
    mid_attn_heads: int = 8
    mid_attn_dim_head: int = 64

    def __post_init__(self) -> None:
        self.dim_mults = tuple(self.dim_mults)
        self.init_cross_embed_kernel_sizes = tuple(self.init_cross_embed_kernel_sizes)
        if self.cond_dim is None:
            self.cond_dim = self.dim
        for name in (
            "dim",
            "num_resnet_blocks",
            "cond_dim",
            "channels",
            "text_embed_dim",
            "max_text_len",
            "attn_heads",
            "attn_dim_head",
            "attn_pool_num_latents",
            "attn_pool_depth",
            "num_time_tokens",
            "learned_sinu_pos_emb_dim",
            "resnet_groups",
            "mid_attn_heads",
            "mid_attn_dim_head",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SuperResolutionUnetConfig: {name}={value!r} must be a positive int")
        if not self.dim_mults or any(not isinstance(m, int) or m < 1 for m in self.dim_mults):
            raise ValueError(
                f"SuperResolutionUnetConfig: dim_mults={self.dim_mults!r} must be a non-empty tuple of positive ints"
            )
        if self.learned_sinu_pos_emb_dim % 2:
            raise ValueError(
                f"SuperResolutionUnetConfig: learned_sinu_pos_emb_dim={self.learned_sinu_pos_emb_dim} must be even"
            )
        widths = [self.dim] + [self.dim * m for m in self.dim_mults]
        if any(w % self.resnet_groups for w in widths):
            raise ValueError(
                f"SuperResolutionUnetConfig: resnet_groups={self.resnet_groups} must divide every level width {widths}"
            )
        if self.max_text_len > self.attn_pool_max_seq_len:
            raise ValueError(
                f"SuperResolutionUnetConfig: max_text_len={self.max_text_len} must be <= "
                f"attn_pool_max_seq_len={self.attn_pool_max_seq_len}"
            )
        if self.final_conv_kernel_size % 2 == 0:
            raise ValueError(
                f"SuperResolutionUnetConfig: final_conv_kernel_size={self.final_conv_kernel_size} must be odd"
            )

    @property
    def time_cond_dim(self) -> int:
        """Width of the time-conditioning vector: ``4·dim`` doubled for the low-resolution noise level."""
        return self.dim * 4 * 2

    @property
    def num_levels(self) -> int:
        return len(self.dim_mults)

    @classmethod
    def from_reference_kwargs(cls, kwargs: Mapping[str, Any]) -> SuperResolutionUnetConfig:
        """Build a config from the reference ``Unet`` keyword arguments (``unet._locals``).

        Accepts the resolved kwargs of the reference SR Unet after ``Superres.cast_model_parameters`` (as
        stored in the parity fixture and in the state manifest, where non-JSON values are ``repr``
        strings). Options whose value selects a code path this implementation does not have raise
        ``ValueError``; options the reference Unet ignores are accepted with any value.

        ``layer_cross_attns``: ``True``, or one truthy entry per level. A *string* is the stored repr of
        the OmegaConf ``ListConfig`` the released yaml passed (``[False, False, False, True]``): not being
        a ``list``, the reference broadcast it to every level and it was truthy there, so cross-attention
        is on at every level — that quirk is reproduced.
        """
        values = dict(kwargs)
        quirk_listconfig = isinstance(values.get("layer_cross_attns"), str)
        for key, value in list(values.items()):
            if isinstance(value, str) and value[:1] in "[(":
                values[key] = ast.literal_eval(value)

        unknown = sorted(set(values) - _REFERENCE_MAPPED - set(_REFERENCE_REQUIRED) - _REFERENCE_IGNORED)
        if unknown:
            raise ValueError(f"from_reference_kwargs: unknown reference Unet option(s) {unknown}")
        if "dim" not in values:
            raise ValueError("from_reference_kwargs: kwargs must contain 'dim'")

        for key, allowed in _REFERENCE_REQUIRED.items():
            value = values.get(key, allowed[0])
            per_level = value if isinstance(value, (list, tuple)) else (value,)
            if not all(v in allowed for v in per_level):
                raise ValueError(
                    f"from_reference_kwargs: {key}={values[key]!r} is not supported; allowed: "
                    f"{' or '.join(repr(a) for a in allowed)} (the released GenerateCT layout)"
                )
        num_levels = len(values.get("dim_mults", cls.dim_mults))
        cross = values.get("layer_cross_attns", True)
        if not quirk_listconfig:
            per_level = tuple(cross) if isinstance(cross, (list, tuple)) else (cross,) * num_levels
            if len(per_level) != num_levels or not all(per_level):
                raise ValueError(
                    f"from_reference_kwargs: layer_cross_attns={cross!r} is not supported; allowed: True or "
                    f"{num_levels} True entries (cross-attention at every level, as released)"
                )
        if values.get("init_dim") not in (None, values["dim"]):
            raise ValueError(
                f"from_reference_kwargs: init_dim={values['init_dim']!r} is not supported; allowed: None or dim"
            )
        channels = values.get("channels", 1)
        if values.get("channels_out") not in (None, channels):
            raise ValueError(
                f"from_reference_kwargs: channels_out={values['channels_out']!r} is not supported; allowed: "
                f"None or channels ({channels})"
            )
        for key in ("num_resnet_blocks", "resnet_groups"):
            if isinstance(values.get(key), (list, tuple)):
                if len(set(values[key])) != 1:
                    raise ValueError(
                        f"from_reference_kwargs: {key}={values[key]!r} is not supported; allowed: one int "
                        "for all levels"
                    )
                values[key] = values[key][0]
        fields = {k: values[k] for k in _REFERENCE_MAPPED if k in values}
        return cls(**fields)


# reference Unet kwargs that map onto config fields of the same name
_REFERENCE_MAPPED = {
    "dim",
    "dim_mults",
    "num_resnet_blocks",
    "cond_dim",
    "channels",
    "text_embed_dim",
    "max_text_len",
    "attn_heads",
    "attn_dim_head",
    "ff_mult",
    "attn_pool_num_latents",
    "num_time_tokens",
    "learned_sinu_pos_emb_dim",
    "resnet_groups",
    "init_cross_embed_kernel_sizes",
    "final_conv_kernel_size",
}
# kwargs that select a code path: only the released value is implemented
_REFERENCE_REQUIRED: dict[str, tuple[Any, ...]] = {
    "lowres_cond": (True,),
    "cond_on_text": (True,),
    "attn_pool_text": (True,),
    "layer_attns": (False,),
    "attend_at_middle": (False,),
    "use_linear_attn": (False,),
    "use_linear_cross_attn": (False,),
    "memory_efficient": (True,),
    "init_cross_embed": (True,),
    "cross_embed_downsample": (False,),
    "use_global_context_attn": (True,),
    "scale_skip_connection": (True,),
    "final_resnet_block": (True,),
    "pixel_shuffle_upsample": (True,),
    "init_conv_to_final_conv_residual": (False,),
    "combine_upsample_fmaps": (False,),
    "cosine_sim_attn": (False,),
    "self_cond": (False,),
    "cond_images_channels": (0,),
    "resize_mode": ("nearest",),
}
# kwargs checked separately, or unused by the reference Unet in this layout
_REFERENCE_IGNORED = {
    "layer_cross_attns",
    "init_dim",
    "channels_out",
    "image_embed_dim",
    "num_image_tokens",
    "out_dim",
    "layer_attns_depth",
    "layer_mid_attns_depth",
    "layer_attns_add_text_cond",
    "init_conv_kernel_size",
    "cross_embed_downsample_kernel_sizes",
    "dropout",
}


@dataclasses.dataclass
class TextConditioning:
    """Text-only part of the Unet conditioning; constant across denoising steps.

    ``tokens``: ``(b, num_mean_pooled + num_latents, cond_dim)`` Perceiver output.
    ``hidden``: ``(b, time_cond_dim)`` the text term added to the time-conditioning vector.
    """

    tokens: torch.Tensor
    hidden: torch.Tensor

    def expand(self, batch: int) -> TextConditioning:
        """Broadcast a single-prompt conditioning to ``batch`` samples (no copy)."""
        if self.tokens.shape[0] == batch:
            return self
        if self.tokens.shape[0] != 1:
            raise ValueError(f"TextConditioning.expand: cannot broadcast batch {self.tokens.shape[0]} to {batch}")
        return TextConditioning(self.tokens.expand(batch, -1, -1), self.hidden.expand(batch, -1))


def _time_embedding(config: SuperResolutionUnetConfig) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """(hiddens, cond, tokens) projections of one scalar noise level; indices follow the checkpoint keys."""
    tc = config.time_cond_dim
    hiddens = nn.Sequential(
        LearnedSinusoidalPosEmb(config.learned_sinu_pos_emb_dim),
        nn.Linear(config.learned_sinu_pos_emb_dim + 1, tc),
        nn.SiLU(),
    )
    cond = nn.Sequential(nn.Linear(tc, tc))
    tokens = nn.Sequential(nn.Linear(tc, config.cond_dim * config.num_time_tokens))
    return hiddens, cond, tokens


class SuperResolutionUnet(PretrainedModel):
    """Text- and low-resolution-conditioned Unet predicting ``v`` for one diffusion step.

    Call :meth:`forward` (``noisy, times, lowres, lowres_times, text_embeds, text_mask``), or, to reuse
    the text conditioning over the denoising steps of a volume, :meth:`encode_text` once and
    :meth:`denoise` per step; both give the same numbers.
    """

    config_class: ClassVar[type[ModelConfig]] = SuperResolutionUnetConfig
    config: SuperResolutionUnetConfig

    def __init__(self, config: SuperResolutionUnetConfig):
        super().__init__(config)
        cfg = config
        dim, cond_dim, tc = cfg.dim, cfg.cond_dim, cfg.time_cond_dim
        groups = cfg.resnet_groups
        attn = dict(heads=cfg.attn_heads, dim_head=cfg.attn_dim_head)

        # null rows replace masked text positions (and all text when conditioning is dropped)
        self.null_text_embed = nn.Parameter(torch.randn(1, cfg.max_text_len, cond_dim))
        self.null_text_hidden = nn.Parameter(torch.randn(1, tc))

        # input = cat(noisy, lowres) -> 2·channels
        self.init_conv = CrossEmbedLayer(cfg.channels * 2, dim, cfg.init_cross_embed_kernel_sizes)

        self.to_time_hiddens, self.to_time_cond, self.to_time_tokens = _time_embedding(cfg)
        self.to_lowres_time_hiddens, self.to_lowres_time_cond, self.to_lowres_time_tokens = _time_embedding(cfg)

        self.norm_cond = nn.LayerNorm(cond_dim)
        self.text_to_cond = nn.Linear(cfg.text_embed_dim, cond_dim)
        self.attn_pool = PerceiverResampler(
            dim=cond_dim,
            depth=cfg.attn_pool_depth,
            num_latents=cfg.attn_pool_num_latents,
            num_mean_pooled=cfg.attn_pool_num_mean_pooled_latents,
            max_seq_len=cfg.attn_pool_max_seq_len,
            ff_mult=cfg.attn_pool_ff_mult,
            **attn,
        )
        self.to_text_non_attn_cond = nn.Sequential(
            nn.LayerNorm(cond_dim), nn.Linear(cond_dim, tc), nn.SiLU(), nn.Linear(tc, tc)
        )

        self.init_resnet_block = ResnetBlock(dim, dim, time_cond_dim=tc, groups=groups, use_gca=True)

        widths = [dim] + [dim * m for m in cfg.dim_mults]
        level_dims = list(zip(widths[:-1], widths[1:], strict=True))
        n_blocks = cfg.num_resnet_blocks

        # each down level: [downsample, cross-attending block, plain blocks]; the reference also had an
        # identity self-attention slot and an unused post-downsample slot, neither with weights
        self.downs = nn.ModuleList()
        for d_in, d_out in level_dims:
            self.downs.append(
                nn.ModuleList(
                    [
                        Downsample(d_in, d_out),
                        ResnetBlock(d_out, d_out, time_cond_dim=tc, groups=groups, cond_dim=cond_dim, **attn),
                        nn.ModuleList(
                            ResnetBlock(d_out, d_out, time_cond_dim=tc, groups=groups, use_gca=True)
                            for _ in range(n_blocks)
                        ),
                    ]
                )
            )

        mid = widths[-1]
        mid_attn = dict(heads=cfg.mid_attn_heads, dim_head=cfg.mid_attn_dim_head)
        self.mid_block1 = ResnetBlock(mid, mid, time_cond_dim=tc, groups=groups, cond_dim=cond_dim, **mid_attn)
        self.mid_block2 = ResnetBlock(mid, mid, time_cond_dim=tc, groups=groups, cond_dim=cond_dim, **mid_attn)

        # each up level: [cross-attending block, plain blocks, (identity self-attention slot), upsample];
        # the identity keeps the upsample at index 3 as in the checkpoint keys. Every block takes a skip.
        self.ups = nn.ModuleList()
        for d_in, d_out in reversed(level_dims):
            skip = d_out
            self.ups.append(
                nn.ModuleList(
                    [
                        ResnetBlock(d_out + skip, d_out, time_cond_dim=tc, groups=groups, cond_dim=cond_dim, **attn),
                        nn.ModuleList(
                            ResnetBlock(d_out + skip, d_out, time_cond_dim=tc, groups=groups, use_gca=True)
                            for _ in range(n_blocks)
                        ),
                        nn.Identity(),
                        PixelShuffleUpsample(d_out, d_in),
                    ]
                )
            )

        self.skip_connect_scale = 2**-0.5
        self.final_res_block = ResnetBlock(dim, dim, time_cond_dim=tc, groups=groups, use_gca=True)
        # the low-resolution image is concatenated again before the last conv
        k = cfg.final_conv_kernel_size
        self.final_conv = nn.Conv2d(dim + cfg.channels, cfg.channels, k, padding=k // 2)
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)

    # -- conditioning ---------------------------------------------------------------------------------

    def encode_text(
        self,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        drop_text: torch.Tensor | None = None,
    ) -> TextConditioning:
        """Text conditioning from T5 embeddings; depends on the text only (compute once per volume).

        Args:
            text_embeds: ``(b, L, text_embed_dim)`` encoder outputs; positions beyond ``max_text_len`` are
                cut off.
            text_mask: ``(b, L)`` bool, True at real tokens.
            drop_text: optional ``(b,)`` bool; True replaces that sample's text by the learned null
                conditioning (classifier-free-guidance dropout / the unconditional branch).

        Reference quirks reproduced: the projected tokens are padded to ``max_text_len``; masked and
        padded positions are replaced by the matching ``null_text_embed`` rows; the Perceiver is then run
        *without* a mask, so it attends to all ``max_text_len`` positions and its mean-pooled latents
        average over all of them, null rows included. The trained weights expect exactly this.
        """
        cfg = self.config
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != cfg.text_embed_dim:
            raise ValueError(
                f"encode_text: text_embeds shape {tuple(text_embeds.shape)} must be (b, L, {cfg.text_embed_dim})"
            )
        if text_mask.shape != text_embeds.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(
                f"encode_text: text_mask must be a bool tensor of shape {tuple(text_embeds.shape[:2])}, got "
                f"{text_mask.dtype} {tuple(text_mask.shape)}"
            )
        b = text_embeds.shape[0]
        tokens = self.text_to_cond(text_embeds[:, : cfg.max_text_len])
        keep = text_mask[:, : cfg.max_text_len]
        pad = cfg.max_text_len - tokens.shape[1]
        if pad > 0:
            tokens = F.pad(tokens, (0, 0, 0, pad))
            keep = F.pad(keep, (0, pad), value=False)
        if drop_text is not None:
            if drop_text.shape != (b,) or drop_text.dtype != torch.bool:
                raise ValueError(f"encode_text: drop_text must be a bool tensor of shape ({b},)")
            keep = keep & ~drop_text[:, None]
        tokens = torch.where(keep[..., None], tokens, self.null_text_embed.to(tokens.dtype))
        tokens = self.attn_pool(tokens)
        hidden = self.to_text_non_attn_cond(tokens.mean(dim=1))
        if drop_text is not None:
            hidden = torch.where(drop_text[:, None], self.null_text_hidden.to(hidden.dtype), hidden)
        return TextConditioning(tokens=tokens, hidden=hidden)

    def conditioning(
        self, times: torch.Tensor, lowres_times: torch.Tensor, text: TextConditioning
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Time-conditioning vector ``(b, time_cond_dim)`` and normalised cross-attention context
        ``(b, 2·num_time_tokens + pooled, cond_dim)`` (time tokens, low-res time tokens, text tokens)."""
        b, r = times.shape[0], self.config.num_time_tokens
        hid = self.to_time_hiddens(times)
        lowres_hid = self.to_lowres_time_hiddens(lowres_times)
        time_tokens = self.to_time_tokens(hid).reshape(b, r, -1)
        lowres_tokens = self.to_lowres_time_tokens(lowres_hid).reshape(b, r, -1)
        # same summation order as the reference: (time + lowres time) + text
        t = self.to_time_cond(hid) + self.to_lowres_time_cond(lowres_hid)
        t = t + text.hidden
        context = self.norm_cond(torch.cat((time_tokens, lowres_tokens, text.tokens.to(time_tokens.dtype)), dim=1))
        return t, context

    # -- network ---------------------------------------------------------------------------------------

    def denoise(
        self,
        noisy: torch.Tensor,
        times: torch.Tensor,
        lowres: torch.Tensor,
        lowres_times: torch.Tensor,
        text: TextConditioning,
    ) -> torch.Tensor:
        """One Unet evaluation with precomputed text conditioning; see :meth:`forward` for the arguments."""
        b = noisy.shape[0]
        self._check_inputs(noisy, times, lowres, lowres_times)
        text = text.expand(b)
        t, context = self.conditioning(times, lowres_times, text)

        x = self.init_conv(torch.cat((noisy, lowres), dim=1))
        x = self.init_resnet_block(x, t)

        skips: list[torch.Tensor] = []
        for downsample, cross_block, blocks in self.downs:
            x = cross_block(downsample(x), t, context)
            for block in blocks:
                x = block(x, t)
                skips.append(x)
            # the reference also stores the (identity) self-attention output: the last block's output twice
            skips.append(x)

        x = self.mid_block1(x, t, context)
        x = self.mid_block2(x, t, context)

        scale = self.skip_connect_scale
        for cross_block, blocks, _, upsample in self.ups:
            x = cross_block(torch.cat((x, skips.pop() * scale), dim=1), t, context)
            for block in blocks:
                x = block(torch.cat((x, skips.pop() * scale), dim=1), t)
            x = upsample(x)

        x = self.final_res_block(x, t)
        return self.final_conv(torch.cat((x, lowres.to(x.dtype)), dim=1))

    def forward(
        self,
        noisy: torch.Tensor,
        times: torch.Tensor,
        lowres: torch.Tensor,
        lowres_times: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predict ``v`` for a batch of noisy slices.

        Args:
            noisy: ``(b, channels, H, W)`` the current diffusion sample ``x_t`` (H, W divisible by
                ``2**num_levels``).
            times: ``(b,)`` the **log-SNR** of the current time under the cosine schedule (what the
                reference sampler passes, ``noise_scheduler.get_condition(t)``), not ``t`` itself.
            lowres: ``(b, channels, H, W)`` the low-resolution slice already upsampled to H×W, mapped to
                [-1, 1] and noise-augmented (see ``DiffusionScheduler.augment_lowres``).
            lowres_times: ``(b,)`` the **log-SNR** of that augmentation under the linear schedule
                (2.2511 for the released noise level t = 0.1).
            text_embeds: ``(b, L, text_embed_dim)``; text_mask: ``(b, L)`` bool.

        Returns:
            ``(b, channels, H, W)`` the v-prediction.
        """
        return self.denoise(noisy, times, lowres, lowres_times, self.encode_text(text_embeds, text_mask))

    def _check_inputs(
        self, noisy: torch.Tensor, times: torch.Tensor, lowres: torch.Tensor, lowres_times: torch.Tensor
    ) -> None:
        cfg = self.config
        factor = 2**cfg.num_levels
        if noisy.ndim != 4 or noisy.shape[1] != cfg.channels or noisy.shape[-1] % factor or noisy.shape[-2] % factor:
            raise ValueError(
                f"SuperResolutionUnet: noisy shape {tuple(noisy.shape)} must be (b, {cfg.channels}, H, W) "
                "with "
                f"H, W divisible by {factor}"
            )
        if lowres.shape != noisy.shape:
            raise ValueError(
                f"SuperResolutionUnet: lowres shape {tuple(lowres.shape)} must equal noisy shape "
                f"{tuple(noisy.shape)} (upsample it first)"
            )
        for name, value in (("times", times), ("lowres_times", lowres_times)):
            if value.shape != (noisy.shape[0],):
                raise ValueError(
                    f"SuperResolutionUnet: {name} shape {tuple(value.shape)} must be ({noisy.shape[0]},) log-SNRs"
                )

    # -- reference layout --------------------------------------------------------------------------------

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the reference Unet-local names (``unets.1.`` stripped); 447 keys when released."""
        return dict(self.state_dict())

    def load_reference_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Strictly load reference Unet-local weights.

        Raises ``CheckpointError`` naming ``source`` and the first missing / unexpected / misshaped key.
        """
        expected = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        check_state_dict(expected, state_dict, source=source)
        self.load_state_dict(dict(state_dict), strict=True)
