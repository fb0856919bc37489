"""Training losses of the three GenerateCT stages, kept out of the networks.

CT-ViT (reference ``ctvit.py`` ``forward`` L491-660, phenaki's C-ViViT losses):
    ``mse(volume, recon) + perceptual + commit + adaptive_weight · hinge_generator`` with a discriminator
    on random slices. Ours is a small PatchGAN-style 2-D conv net (:class:`SliceDiscriminator`), not the
    reference's StyleGAN-like one; the VGG16 perceptual loss is used only when torchvision and local
    VGG16 weights are available (:func:`build_perceptual_loss`). Optionally (not in the reference) an MSE
    in a display window (:func:`windowed_mse`, e.g. the lung window [−1000, −500] HU), so that density
    differences a radiologist reads inside the lungs weigh as much as the body/air contrast; and an MSE of
    the patch means (:func:`patch_mean_mse`), so that each token must carry its region's mean density
    (emphysema, fluid, nodes) and not only edges and texture.

MaskGIT (reference ``MaskGITTransformer.forward``):
    random step ``r ∈ [0, steps)``, mask probability ``cos(π/2 · r/steps)``, at least one token masked,
    cross-entropy on the masked tokens. Text dropout (``cond_drop_prob``, default 0.1) is the *inference*
    null pass — the text mask all False, so only the learned null key/values are attended. The reference
    zeroed ``cond_drop_prob`` by mistake and never trained that branch; here guidance has a real
    unconditional branch.

SR (imagen-pytorch 1.21.6 ``Imagen.p_losses`` with ``pred_objectives='v'``):
    ``t ~ U(0, 1)`` per sample, cosine log-SNR, target ``v = α·ε − σ·x0``, MSE. Optional min-SNR-γ
    weighting (Hang et al. 2023; imagen's ``min_snr_gamma``): for v-prediction the per-sample weight is
    ``min(SNR, γ) / (SNR + 1)``; off by default, as in the released training. The low-resolution image is
    noise-augmented exactly as at inference (:meth:`DiffusionScheduler.augment_lowres`); imagen trains with
    a *random* augmentation level ``t_aug ~ U(0, 1)`` (one per batch, ``per_sample_random_aug_noise_level=False``)
    under the linear schedule and samples at the fixed 0.1, which is the default here (``lowres_noise_level
    =None``); a fixed level can be given instead. Text dropout is ``encode_text(..., drop_text=...)``
    (released training: ``cond_drop_prob=0.1``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from GenerateCTLib.super_resolution.diffusion_scheduler import (
    DiffusionScheduler,
    alpha_sigma,
    cosine_log_snr,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# CT-ViT


class SliceDiscriminator(nn.Module):
    """PatchGAN-style discriminator on 2-D slices: ``(b, c, H, W)`` -> logits ``(b, 1, H/2^n, W/2^n)``.

    ``num_layers`` stride-2 convs (widths ``base_dim · 2^i`` capped at ``max_dim``) with LeakyReLU, then a
    3×3 conv to one logit per patch. GroupNorm keeps it stable at batch 1-4.
    """

    def __init__(self, channels: int = 1, *, base_dim: int = 16, num_layers: int = 3, max_dim: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        dim_in = channels
        for i in range(num_layers):
            dim_out = min(base_dim * 2**i, max_dim)
            layers += [nn.Conv2d(dim_in, dim_out, 4, stride=2, padding=1)]
            if i > 0:
                layers += [nn.GroupNorm(min(8, dim_out), dim_out)]
            layers += [nn.LeakyReLU(0.2)]
            dim_in = dim_out
        layers += [nn.Conv2d(dim_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def windowed_mse(recon: torch.Tensor, target: torch.Tensor, window_hu: tuple[float, float]) -> torch.Tensor:
    """MSE after mapping both volumes (model units, HU/1000) through the window ``(low, high)`` HU onto [0, 1].

    Differences outside the window do not count (the clamp has no gradient there); inside it they are scaled
    by ``1000 / (high - low)``: the lung window [−1000, −500] HU makes a 100 HU density change 0.2, not 0.1.
    """
    low, high = (float(v) / 1000.0 for v in window_hu)
    if not high > low:
        raise ValueError(f"window_hu={window_hu!r} is invalid; allowed: (low, high) HU with low < high")
    recon_w = (recon.float().clamp(low, high) - low) / (high - low)
    target_w = (target.float().clamp(low, high) - low) / (high - low)
    return F.mse_loss(recon_w, target_w)


def patch_mean_mse(recon: torch.Tensor, target: torch.Tensor, patch_size: int) -> torch.Tensor:
    """MSE between the per-slice ``patch_size²`` means of ``(b, c, z, y, x)`` volumes: zero for changes of
    texture that keep every patch's mean, the full squared shift for a uniform change of a patch's density."""
    if patch_size < 1 or recon.shape[-1] % patch_size or recon.shape[-2] % patch_size:
        raise ValueError(f"patch_size={patch_size!r} is invalid; allowed: a divisor of the in-plane size "
                         f"{tuple(recon.shape[-2:])}")
    kernel = (1, patch_size, patch_size)
    return F.mse_loss(F.avg_pool3d(recon.float(), kernel), F.avg_pool3d(target.float(), kernel))


def random_slices(volume: torch.Tensor, num: int = 1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num`` random axial slices per volume: ``(b, c, z, y, x)`` -> ``(b·num, c, y, x)``."""
    b, c, z, h, w = volume.shape
    index = torch.randint(0, z, (b, num), generator=generator).to(volume.device)
    gathered = volume.permute(0, 2, 1, 3, 4)[torch.arange(b, device=volume.device)[:, None], index]
    return gathered.reshape(b * num, c, h, w)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))``."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``−mean(D(fake))``."""
    return -fake_logits.mean()


def gradient_penalty(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``mean((‖∇_x D(x)‖₂ − 1)²)``; ``images`` must require grad and ``logits = D(images)``."""
    (grads,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    return ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def adaptive_weight(
    base_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor, *, max_weight: float = 1e4
) -> torch.Tensor:
    """``‖∇ base‖ / ‖∇ gen‖`` at ``last_layer`` (detached, clamped ≤ ``max_weight``), as the reference
    balances the adversarial term (it uses the perceptual loss as ``base``)."""
    (base_grad,) = torch.autograd.grad(base_loss, last_layer, retain_graph=True)
    (gen_grad,) = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)
    return (base_grad.norm() / gen_grad.norm().clamp(min=1e-8)).clamp(max=max_weight).detach()


class VGGPerceptualLoss(nn.Module):
    """MSE between VGG16 penultimate features (``classifier[:-2]``, 4096-d) of one slice repeated to RGB,
    without ImageNet normalisation (the reference's choice). Frozen."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """``(b, 1, H, W)`` slices in [-1, 1] -> scalar."""
        real3, fake3 = real.repeat(1, 3, 1, 1), fake.repeat(1, 3, 1, 1)
        return F.mse_loss(self.vgg(fake3), self.vgg(real3).detach())


def build_perceptual_loss(weights_path: str | os.PathLike | None) -> VGGPerceptualLoss | None:
    """The VGG16 perceptual loss from a *local* torchvision ``vgg16`` state dict, or ``None``.

    Returns ``None`` (and logs why) when no path is given, the file is missing or torchvision is not
    installed — training then runs without the perceptual term. Nothing is downloaded.
    """
    if weights_path is None:
        return None
    path = Path(weights_path)
    if not path.is_file():
        logger.warning("perceptual loss disabled: VGG16 weights %s not found", path)
        return None
    try:
        from torchvision.models import vgg16
    except ImportError:
        logger.warning("perceptual loss disabled: torchvision is not installed")
        return None
    vgg = vgg16(weights=None)
    vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    vgg.classifier = nn.Sequential(*list(vgg.classifier.children())[:-2])
    return VGGPerceptualLoss(vgg)


# ---------------------------------------------------------------------------------------------------
# MaskGIT


def cosine_training_mask(
    batch: int, num_tokens: int, *, steps: int = 18, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training mask ``(batch, num_tokens)`` bool: per sample ``r ~ U{0..steps−1}``, ``round(n · cos(π/2 · r/steps))``
    (≥ 1) random positions set."""
    if steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; allowed: an int >= 1")
    r = torch.randint(0, steps, (batch,), generator=generator)
    prob = torch.cos(r.float() * math.pi * 0.5 / steps)
    count = (num_tokens * prob).round().clamp(min=1)
    ranks = torch.rand((batch, num_tokens), generator=generator).argsort(dim=-1).argsort(dim=-1)
    return ranks < count[:, None]


def drop_text_mask(
    text_mask: torch.Tensor, cond_drop_prob: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free-guidance dropout as the inference null pass.

    Returns ``(text_mask with dropped rows all False, dropped (b,) bool)``.
    """
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob={cond_drop_prob!r} is invalid; allowed: a float in [0, 1]")
    dropped = (torch.rand(text_mask.shape[0], generator=generator) < cond_drop_prob).to(text_mask.device)
    return text_mask & ~dropped[:, None], dropped


def maskgit_loss(
    model: nn.Module,
    token_ids: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    grid: tuple[int, int, int],
    mask_id: int,
    steps: int = 18,
    cond_drop_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked-token cross-entropy of a MaskGIT (or a wrapper with the same call signature).

    Args:
        model: called as ``model(input_ids, text_embeds, text_mask, grid=grid)`` -> ``(b, n, K)`` logits.
        token_ids: ``(b, n)`` int64 CT-ViT ids of the training volumes.
        text_embeds / text_mask: ``(b, L, d)`` / ``(b, L)`` bool T5 embeddings.
        mask_id: the ``[MASK]`` id (``MaskGIT.mask_id``).

    Returns:
        ``(loss, {"mask": (b, n) bool, "dropped": (b,) bool, "accuracy": scalar})``.
    """
    b, n = token_ids.shape
    mask = cosine_training_mask(b, n, steps=steps, generator=generator).to(token_ids.device)
    text_mask, dropped = drop_text_mask(text_mask, cond_drop_prob, generator=generator)
    inputs = token_ids.masked_fill(mask, mask_id)
    logits = model(inputs, text_embeds, text_mask, grid=grid)
    loss = F.cross_entropy(logits[mask].float(), token_ids[mask])
    with torch.no_grad():
        accuracy = (logits[mask].argmax(dim=-1) == token_ids[mask]).float().mean()
    return loss, {"mask": mask, "dropped": dropped, "accuracy": accuracy}


# ---------------------------------------------------------------------------------------------------
# super-resolution


def superres_loss(
    model: nn.Module,
    highres: torch.Tensor,
    lowres_0_1: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    cond_drop_prob: float = 0.1,
    lowres_noise_level: float | None = None,
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """v-prediction loss of the SR Unet on a batch of slices.

    Args:
        model: called as ``model(noisy, times, lowres, lowres_times, text_embeds, text_mask, drop_text)``
            -> v ``(b, c, H, W)`` (see ``train_superres.SuperResolutionTrainingModel``).
        highres: ``(b, c, H, W)`` target slices in [-1, 1].
        lowres_0_1: ``(b, c, h, w)`` low-resolution slices in [0, 1] (CT-ViT reconstructions).
        lowres_noise_level: fixed augmentation time in [0, 1), or ``None`` for a random one per batch.
        min_snr_gamma: ``γ`` of min-SNR weighting, or ``None`` for plain MSE.

    Returns:
        ``(loss, {"times": (b,), "dropped": (b,) bool, "lowres_noise_level": scalar})``.
    """
    b = highres.shape[0]
    device = highres.device
    t = torch.rand(b, generator=generator).to(device)
    noise = torch.randn(highres.shape, generator=generator).to(device=device, dtype=highres.dtype)
    noisy = DiffusionScheduler.add_noise(highres, noise, t)
    target = DiffusionScheduler.get_velocity(highres, noise, t)
    level = float(torch.rand(1, generator=generator)) if lowres_noise_level is None else float(lowres_noise_level)
    aug = DiffusionScheduler(1, lowres_noise_level=level)
    lowres_noise = torch.randn(highres.shape, generator=generator).to(device=device, dtype=highres.dtype)
    lowres, lowres_times = aug.augment_lowres(lowres_0_1, tuple(highres.shape[-2:]), noise=lowres_noise)
    _, dropped = drop_text_mask(text_mask, cond_drop_prob, generator=generator)
    times = cosine_log_snr(t).to(device)
    pred = model(noisy, times, lowres, lowres_times, text_embeds, text_mask, dropped)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        alpha, sigma = alpha_sigma(times.float())
        snr = (alpha / sigma) ** 2
        per_sample = per_sample * snr.clamp(max=min_snr_gamma) / (snr + 1)
    return per_sample.mean(), {"times": t, "dropped": dropped, "lowres_noise_level": torch.tensor(level)}
