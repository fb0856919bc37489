"""Train the text-conditional SR diffusion Unet (reference ``train_superres.py``, imagen-pytorch 1.21.6).

Data preparation, once per run (as the paper): the low-resolution inputs are **CT-ViT reconstructions** of
the training volumes at the CT-ViT grid (``num_slices × s²``, ``s`` = the CT-ViT ``image_size``), mapped to
[0, 1] as the pipeline does (``(clamp(x, −1, 1) + 1)/2``); the targets are the same volumes resampled to
``num_slices × image_size²`` in [-1, 1]. Prompts are encoded once per distinct prompt. Per step a random
batch of (volume, slice) pairs goes through :func:`GenerateCTLib.training.losses.superres_loss`
(v-prediction, random low-res augmentation level, text dropout 0.1). Reference optimiser: Adam lr 5e-4
(imagen trainer betas (0.9, 0.99), eps 1e-8, no grad clipping by default, no warm-up); the reference samples
with EMA weights — ``ema_decay`` keeps an EMA copy that is saved as the final model when set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
from GenerateCTLib.text_encoder import T5TextEncoder
from GenerateCTLib.tokenizer.ctvit import CTViT
from GenerateCTLib.training import common
from GenerateCTLib.training.data import CTReportDataset
from GenerateCTLib.training.losses import superres_loss
from GenerateCTLib.training.train_transformer import _require_tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SuperResTrainConfig(common.TrainConfigBase):
    """SR training settings; ``model`` holds :class:`SuperResolutionUnetConfig` fields (``text_embed_dim``
    defaults to the text encoder's width).

    ``tokenizer_model``: trained CT-ViT folder (makes the low-res inputs); ``text_encoder``: T5 hub id or
    folder; ``num_slices``; ``image_size``: the high-resolution grid (512 released);
    ``cond_drop_prob`` (0.1); ``lowres_noise_level``: ``null`` = random per batch (imagen), or a fixed
    level in [0, 1); ``min_snr_gamma``: ``null`` = plain MSE (released), else min-SNR-γ weighting;
    ``ema_decay``: ``null`` = no EMA, else the EMA of the weights is the saved model.
    """

    model: dict = dataclasses.field(default_factory=dict)
    tokenizer_model: str = ""
    text_encoder: str = "google/t5-v1_1-base"
    num_slices: int = 201
    image_size: int = 512
    cond_drop_prob: float = 0.1
    lowres_noise_level: float | None = None
    min_snr_gamma: float | None = None
    ema_decay: float | None = None
    lr: float = 5e-4
    batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.cond_drop_prob <= 1:
            raise ValueError(f"cond_drop_prob={self.cond_drop_prob!r} is invalid; allowed: a float in [0, 1]")
        if self.lowres_noise_level is not None and not 0 <= self.lowres_noise_level < 1:
            raise ValueError(
                f"lowres_noise_level={self.lowres_noise_level!r} is invalid; allowed: null or a float in [0, 1)"
            )
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma={self.min_snr_gamma!r} is invalid; allowed: null or a positive float")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} is invalid; allowed: null or a float in (0, 1)")


class SuperResolutionTrainingModel(nn.Module):
    """``encode_text`` (with dropout) + ``denoise`` in one ``forward`` so accelerate/DDP sees one call."""

    def __init__(self, unet: SuperResolutionUnet):
        super().__init__()
        self.unet = unet

    def forward(self, noisy, times, lowres, lowres_times, text_embeds, text_mask, drop_text):
        """See :meth:`SuperResolutionUnet.forward`; ``drop_text`` ``(b,)`` bool selects the null text."""
        text = self.unet.encode_text(text_embeds, text_mask, drop_text=drop_text)
        return self.unet.denoise(noisy, times, lowres, lowres_times, text)


@torch.no_grad()
def precompute_lowres(
    ctvit: CTViT, dataset: CTReportDataset, *, batch_size: int = 2, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """CT-ViT reconstructions of every volume in [0, 1]: ``(N, z, s, s)`` float32 (CPU), dataset order."""
    ctvit = ctvit.eval().to(device)
    parts = []
    for start in range(0, len(dataset), batch_size):
        volumes = torch.stack([dataset.volume(i) for i in range(start, min(len(dataset), start + batch_size))])
        recon = ctvit(volumes.to(device))[:, 0].cpu()
        parts.append((recon.clamp(-1, 1) + 1) / 2)
    return torch.cat(parts)


def train_superres(
    data_dir: str | os.PathLike,
    config: SuperResTrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
) -> common.TrainResult:
    """Train the SR Unet on a CT-RATE-style folder; writes ``<out>/checkpoint`` and ``<out>/model``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    ctvit = CTViT.from_pretrained(_require_tokenizer(config))
    ctvit.token_grid(config.num_slices)
    common.seed_everything(config.seed)
    accelerator = common.make_accelerator(config)
    encoder = T5TextEncoder.from_pretrained(config.text_encoder)
    model_values = dict(config.model)
    model_values.setdefault("text_embed_dim", encoder.dim)
    mc = SuperResolutionUnetConfig.from_dict(model_values, source="model")
    if mc.text_embed_dim != encoder.dim:
        raise ValueError(
            f"model.text_embed_dim={mc.text_embed_dim} is invalid; allowed: {encoder.dim} "
            f"(d_model of {config.text_encoder!r})"
        )
    if config.image_size % 2**mc.num_levels or config.image_size < ctvit.config.image_size:
        raise ValueError(
            f"image_size={config.image_size} is invalid; allowed: a multiple of {2**mc.num_levels} that is >= "
            f"the CT-ViT image_size {ctvit.config.image_size}"
        )

    # 1. precompute low-res reconstructions, high-res targets and text embeddings
    lowres_set = CTReportDataset(
        data_dir, num_slices=config.num_slices, image_size=ctvit.config.image_size, stage="superres"
    )
    lowres = precompute_lowres(ctvit, lowres_set, device=accelerator.device)
    highres_set = CTReportDataset(
        data_dir,
        num_slices=config.num_slices,
        image_size=config.image_size,
        stage="superres",
        cache_size=config.cache_size,
    )
    prompts = highres_set.prompts
    text_cache = common.encode_prompts(encoder, prompts)
    del encoder, ctvit

    # 2. model, optimiser, EMA, resume
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)
    unet = SuperResolutionUnet(mc).train()
    resuming = resume and common.has_checkpoint(out_dir)
    if not resuming and common.init_from_pretrained(unet, config):  # before the EMA copies the weights
        logger.info("SR Unet weights from %s", config.init_from)
    optimizer = common.make_optimizer(unet.parameters(), config)
    scheduler = common.make_lr_scheduler(optimizer, config)
    ema = None
    modules = {}
    if config.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        modules["ema"] = ema
    step, history = 0, {"loss": []}
    if resuming:
        step, history = common.load_checkpoint(
            out_dir,
            unet,
            optimizers={"model": optimizer},
            schedulers={"model": scheduler},
            modules=modules,
            generator=generator,
        )
        logger.info("resuming SR training from step %d", step)
    wrapper, optimizer = accelerator.prepare(SuperResolutionTrainingModel(unet), optimizer)
    if ema is not None:
        ema.to(accelerator.device)

    # 3. loop over random (volume, slice) batches
    bar = common.progress_bar(config.steps, step, desc="SR", enabled=progress and accelerator.is_main_process)
    loop_start, loop_steps = time.perf_counter(), 0
    while step < config.steps:
        vol_index = torch.randint(0, len(highres_set), (config.batch_size,), generator=generator).tolist()
        slice_index = torch.randint(0, config.num_slices, (config.batch_size,), generator=generator).tolist()
        high = torch.stack([highres_set.volume(v)[:, s] for v, s in zip(vol_index, slice_index, strict=True)])
        low = torch.stack([lowres[v, s][None] for v, s in zip(vol_index, slice_index, strict=True)])
        embeds, mask = common.collate_text(text_cache, [prompts[v] for v in vol_index])
        device = accelerator.device
        with accelerator.autocast():
            loss, _ = superres_loss(
                wrapper,
                high.to(device),
                low.to(device),
                embeds.to(device),
                mask.to(device),
                cond_drop_prob=config.cond_drop_prob,
                lowres_noise_level=config.lowres_noise_level,
                min_snr_gamma=config.min_snr_gamma,
                generator=generator,
            )
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(wrapper.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unet)
        step += 1
        loop_steps += 1
        history["loss"].append(float(loss.detach()))
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
        common.checkpoint_if_due(
            accelerator, out_dir, config, unet, step=step, optimizers={"model": optimizer},
            schedulers={"model": scheduler}, modules=modules, generator=generator, history=history,
        )
    bar.close()
    return common.finish_training(
        accelerator, out_dir, config, unet if ema is None else ema.module, step=step, history=history,
        started=started, loop_start=loop_start, loop_steps=loop_steps,
    )


def load_config(path: str | os.PathLike | None, **overrides: Any) -> SuperResTrainConfig:
    """A :class:`SuperResTrainConfig` from JSON (or the defaults) with keyword overrides."""
    values = {} if path is None else SuperResTrainConfig.from_json(path).to_dict()
    values.update(overrides)
    return SuperResTrainConfig.from_dict(values)
