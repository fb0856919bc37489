"""Train the CT-ViT VQ tokenizer (reference ``ctvit_trainer.py`` / ``train_ctvit.py``).

Per step: encode a batch of volumes, straight-through quantise (commitment loss), decode, and minimise
``mse + commitment_weight·commit + perceptual_weight·perceptual + adversarial_weight·w·hinge_gen`` with
Adam (reference: lr 3e-5, grad-norm clip 0.5, batch 4); every ``discriminator_every`` steps (reference: 3
generator steps per discriminator step) the slice discriminator takes a hinge step with a gradient penalty
(weight 10) every ``gradient_penalty_every`` discriminator steps. The codebook is *not* learned by
gradient: it follows the vector-quantize-pytorch 1.1.2 EMA (decay 0.8) of the l2-normalised encoder
outputs — fast and stable on tiny data — with an optional spherical k-means initialisation from the first
batch and dead-code replacement (see :mod:`GenerateCTLib.tokenizer.quantizer`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.tokenizer.quantizer import CosineSimQuantizer
from GenerateCTLib.training import common
from GenerateCTLib.training.data import CTReportDataset
from GenerateCTLib.training.losses import (
    SliceDiscriminator,
    adaptive_weight,
    build_perceptual_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
    patch_mean_mse,
    windowed_mse,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenizerTrainConfig(common.TrainConfigBase):
    """CT-ViT training settings; ``model`` holds :class:`CTViTConfig` fields (defaults: the released model).

    Loss settings: ``commitment_weight``; ``window_weight`` with ``window_hu`` (an extra MSE inside each HU
    window, :func:`windowed_mse`, summed; one ``[low, high]`` pair or a list of them, e.g. the lung and
    mediastinal windows; 0, the reference, disables it); ``patch_mean_weight`` (an extra MSE of the
    per-slice patch means, :func:`patch_mean_mse`; 0, the reference, disables it); ``perceptual_weight`` with
    ``vgg16_weights`` (a local torchvision
    VGG16 state dict; skipped when absent); ``adversarial_weight`` (0 disables the discriminator),
    ``adversarial_start_step``, ``discriminator_lr`` (reference 3e-7), ``discriminator_every``,
    ``gradient_penalty_weight`` / ``gradient_penalty_every``, ``discriminator_dim`` / ``discriminator_layers``.
    Codebook: ``codebook_decay`` (EMA), ``kmeans_init``, ``dead_code_threshold`` (EMA count under which a
    code is re-seeded; 0 disables).
    """

    model: dict = dataclasses.field(default_factory=dict)
    num_slices: int = 201
    lr: float = 3e-5
    batch_size: int = 4
    max_grad_norm: float | None = 0.5
    commitment_weight: float = 1.0
    window_weight: float = 0.0
    window_hu: tuple[tuple[float, float], ...] = ((-1000.0, -500.0),)
    patch_mean_weight: float = 0.0
    perceptual_weight: float = 1.0
    vgg16_weights: str | None = None
    adversarial_weight: float = 1.0
    adversarial_start_step: int = 0
    discriminator_lr: float = 3e-7
    discriminator_every: int = 3
    gradient_penalty_weight: float = 10.0
    gradient_penalty_every: int = 4
    discriminator_dim: int = 16
    discriminator_layers: int = 3
    codebook_decay: float = 0.8
    kmeans_init: bool = True
    dead_code_threshold: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model_config  # validates the model fields  # noqa: B018
        if self.discriminator_every < 1 or self.gradient_penalty_every < 1:
            raise ValueError(
                f"discriminator_every={self.discriminator_every!r}, gradient_penalty_every="
                f"{self.gradient_penalty_every!r} are invalid; allowed: ints >= 1"
            )
        windows = self.window_hu
        if len(windows) and not isinstance(windows[0], (list, tuple)):
            windows = (windows,)  # a single [low, high] pair
        if not windows or any(
            not isinstance(w, (list, tuple)) or len(w) != 2 or not -1000 <= w[0] < w[1] <= 1000 for w in windows
        ):
            raise ValueError(
                f"window_hu={self.window_hu!r} is invalid; allowed: a [low, high] HU pair or a list of them, "
                "-1000 <= low < high <= 1000"
            )
        self.window_hu = tuple((float(low), float(high)) for low, high in windows)
        for name in ("window_weight", "patch_mean_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; allowed: a float >= 0")
        if not 0 <= self.codebook_decay < 1:
            raise ValueError(f"codebook_decay={self.codebook_decay!r} is invalid; allowed: a float in [0, 1)")

    @property
    def model_config(self) -> CTViTConfig:
        return CTViTConfig.from_dict(self.model, source="model")


class CTViTTrainingModel(nn.Module):
    """Encode -> straight-through quantise (+ EMA codebook update, dead codes) -> decode, in one ``forward``
    so that accelerate/DDP sees a single module call."""

    def __init__(self, ctvit: CTViT, *, codebook_decay: float, dead_code_threshold: float):
        super().__init__()
        self.ctvit = ctvit
        self.codebook_decay = codebook_decay
        self.dead_code_threshold = dead_code_threshold

    def forward(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(b, c, z, y, x)`` -> ``{"recon": same shape, "commit_loss": scalar, "ids": (b, t, h, w)}``."""
        tokens = self.ctvit.encode(volume)
        out = self.ctvit.vq.quantize_for_training(tokens)
        if self.training and isinstance(self.ctvit.vq, CosineSimQuantizer):  # FSQ has no codebook to update
            self.ctvit.vq.ema_update(tokens.detach(), out.ids, decay=self.codebook_decay)
            if self.dead_code_threshold > 0:
                self.ctvit.vq.replace_dead_codes(tokens.detach(), self.dead_code_threshold)
        return {"recon": self.ctvit.decode(out.quantized), "commit_loss": out.commit_loss, "ids": out.ids}


def _batch(dataset: CTReportDataset, generator: torch.Generator, batch_size: int) -> torch.Tensor:
    index = torch.randint(0, len(dataset), (batch_size,), generator=generator).tolist()
    return torch.stack([dataset.volume(i) for i in index])


def train_tokenizer(
    data_dir: str | os.PathLike,
    config: TokenizerTrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
) -> common.TrainResult:
    """Train a CT-ViT on a CT-RATE-style folder; writes ``<out>/checkpoint`` and ``<out>/model``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    common.seed_everything(config.seed)
    accelerator = common.make_accelerator(config)
    mc = config.model_config
    dataset = CTReportDataset(
        data_dir,
        num_slices=config.num_slices,
        image_size=mc.image_size,
        stage="tokenizer",
        cache_size=config.cache_size,
    )
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)

    ctvit = CTViT(mc)
    ctvit.token_grid(config.num_slices)
    ctvit.train()
    wrapper = CTViTTrainingModel(
        ctvit, codebook_decay=config.codebook_decay, dead_code_threshold=config.dead_code_threshold
    )
    optimizer = common.make_optimizer(ctvit.parameters(), config)
    scheduler = common.make_lr_scheduler(optimizer, config)
    use_adversarial = config.adversarial_weight > 0
    discriminator = SliceDiscriminator(
        mc.channels, base_dim=config.discriminator_dim, num_layers=config.discriminator_layers
    )
    d_optimizer = common.make_optimizer(discriminator.parameters(), config, lr=config.discriminator_lr)
    perceptual = build_perceptual_loss(config.vgg16_weights) if config.perceptual_weight > 0 else None

    names = ("loss", "mse", "window", "patch_mean", "commit", "generator", "discriminator")
    step, history = 0, {name: [] for name in names}
    if resume and common.has_checkpoint(out_dir):
        step, history = common.load_checkpoint(
            out_dir,
            ctvit,
            optimizers={"model": optimizer, "discriminator": d_optimizer},
            schedulers={"model": scheduler},
            modules={"discriminator": discriminator},
            generator=generator,
        )
        logger.info("resuming CT-ViT training from step %d", step)
    elif common.init_from_pretrained(ctvit, config):
        logger.info("CT-ViT weights and codebook from %s", config.init_from)
    elif config.kmeans_init and isinstance(ctvit.vq, CosineSimQuantizer):
        with torch.no_grad():
            first = torch.stack([dataset.volume(i) for i in range(min(len(dataset), config.batch_size))])
            ctvit.vq.kmeans_init(ctvit.encode(first), generator=generator)

    wrapper, discriminator, optimizer, d_optimizer = accelerator.prepare(wrapper, discriminator, optimizer, d_optimizer)
    if perceptual is not None:
        perceptual = perceptual.to(accelerator.device)
    last_layer = ctvit.to_pixels.weight
    bar = common.progress_bar(config.steps, step, desc="CT-ViT", enabled=progress and accelerator.is_main_process)
    loop_start, loop_steps = time.perf_counter(), 0
    while step < config.steps:
        volume = _batch(dataset, generator, config.batch_size).to(accelerator.device)
        slice_index = torch.randint(0, config.num_slices, (1,), generator=generator).item()
        adversarial = use_adversarial and step >= config.adversarial_start_step
        with accelerator.autocast():
            out = wrapper(volume)
            recon = out["recon"]
            mse = F.mse_loss(recon.float(), volume)
            loss = mse + config.commitment_weight * out["commit_loss"]
            window = mse.new_zeros(())
            if config.window_weight > 0:
                window = sum(windowed_mse(recon, volume, w) for w in config.window_hu)
            loss = loss + config.window_weight * window
            patch_mean = mse.new_zeros(())
            if config.patch_mean_weight > 0:
                patch_mean = patch_mean_mse(recon, volume, mc.patch_size)
            loss = loss + config.patch_mean_weight * patch_mean
            base = mse
            real_slice, fake_slice = volume[:, :, slice_index], recon[:, :, slice_index]
            if perceptual is not None:
                base = perceptual(real_slice, fake_slice)
                loss = loss + config.perceptual_weight * base
            gen = torch.zeros((), device=volume.device)
            if adversarial:
                gen = hinge_generator_loss(discriminator(fake_slice))
                weight = adaptive_weight(base, gen, last_layer)
                loss = loss + config.adversarial_weight * weight * gen
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(ctvit.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()

        d_value = 0.0
        if adversarial and step % config.discriminator_every == 0:
            d_optimizer.zero_grad(set_to_none=True)
            real = real_slice.detach().float().requires_grad_(True)
            with accelerator.autocast():
                real_logits = discriminator(real)
                d_loss = hinge_discriminator_loss(real_logits, discriminator(fake_slice.detach().float()))
                d_round = step // config.discriminator_every
                if config.gradient_penalty_weight > 0 and d_round % config.gradient_penalty_every == 0:
                    d_loss = d_loss + config.gradient_penalty_weight * gradient_penalty(real, real_logits)
            accelerator.backward(d_loss)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(discriminator.parameters(), config.max_grad_norm)
            d_optimizer.step()
            d_value = float(d_loss.detach())

        step += 1
        loop_steps += 1
        values = {
            "loss": float(loss.detach()),
            "mse": float(mse.detach()),
            "window": float(window.detach()),
            "patch_mean": float(patch_mean.detach()),
            "commit": float(out["commit_loss"].detach()),
            "generator": float(gen.detach()),
            "discriminator": d_value,
        }
        for key, value in values.items():
            history.setdefault(key, []).append(value)  # checkpoints from before a key was logged
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(mse=f"{values['mse']:.4f}", commit=f"{values['commit']:.4f}")
        common.checkpoint_if_due(
            accelerator, out_dir, config, ctvit, step=step,
            optimizers={"model": optimizer, "discriminator": d_optimizer}, schedulers={"model": scheduler},
            modules={"discriminator": accelerator.unwrap_model(discriminator)}, generator=generator, history=history,
        )
    bar.close()
    return common.finish_training(
        accelerator, out_dir, config, ctvit, step=step, history=history, started=started,
        loop_start=loop_start, loop_steps=loop_steps,
    )


def load_config(path: str | os.PathLike | None, **overrides: Any) -> TokenizerTrainConfig:
    """A :class:`TokenizerTrainConfig` from JSON (or the defaults) with keyword overrides."""
    values = {} if path is None else TokenizerTrainConfig.from_json(path).to_dict()
    values.update(overrides)
    return TokenizerTrainConfig.from_dict(values)
