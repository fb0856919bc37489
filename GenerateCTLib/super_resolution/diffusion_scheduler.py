"""Continuous-time Gaussian diffusion of the GenerateCT super-resolution stage.

The released sampler (imagen-pytorch 1.21.6 ``GaussianDiffusionContinuousTimes`` inside ``Superres``):

* times ``t`` run over ``linspace(1, 0, n + 1)``; the noise level is a **cosine log-SNR** schedule,
  ``alpha = sqrt(sigmoid(log_snr))``, ``sigma = sqrt(sigmoid(-log_snr))``;
* the Unet predicts ``v``; ``x0 = alpha·x_t − sigma·v``, then dynamic thresholding (95th percentile);
* ancestral step from the posterior ``q(x_next | x_t, x0)``, noise added on every step but the last;
* the low-resolution conditioning image is noised with a **linear** log-SNR schedule at ``t = 0.1`` and the
  Unet is told that noise level.

All schedule arithmetic is float32 with the reference operation order (see :func:`cosine_log_snr`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


def cosine_log_snr(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """``-log(clamp(cos((t+s)/(1+s)·π/2)^-2 − 1, min=1e-5))`` evaluated in float32, reference op order.

    The float32 evaluation is deliberate: at ``t = 1``, ``(1+s)/(1+s)`` rounds to exactly 1 and float32
    ``π/2`` is slightly above π/2, so ``cos`` is −4.37e-8 instead of ~6e-17 and the log-SNR is −33.891315
    (float64 gives −74.66). The released Unet receives that float32 value as its time input on the first
    sampling step, so it is what the trained weights expect; a float64 schedule changes the step-0 output.
    ``(n,) -> (n,)`` float32.
    """
    t = t.to(torch.float32)
    snr_inv = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2 - 1
    return -torch.log(snr_inv.clamp(min=1e-5))


def linear_log_snr(t: torch.Tensor) -> torch.Tensor:
    """``-log(expm1(1e-4 + 10·t²))`` in float32 (the low-resolution augmentation schedule).

    ``(n,) -> (n,)``.
    """
    t = t.to(torch.float32)
    return -torch.log(torch.special.expm1(1e-4 + 10 * (t**2)))


def alpha_sigma(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales ``(sqrt(sigmoid(λ)), sqrt(sigmoid(−λ)))`` of a log-SNR ``λ``."""
    return torch.sqrt(torch.sigmoid(log_snr)), torch.sqrt(torch.sigmoid(-log_snr))


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast ``(b,)`` or scalar values against ``like`` ``(b, ...)``."""
    values = values.to(device=like.device)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.95) -> torch.Tensor:
    """Imagen dynamic thresholding: per sample ``s = max(1, quantile(|x0|, p))``, then ``clamp(x0, ±s)/s``.

    ``(b, ...) -> (b, ...)``; ``torch.quantile`` with linear interpolation, as in the reference.
    """
    s = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), percentile, dim=-1).clamp(min=1.0)
    s = _per_sample(s.to(x0.dtype), x0)
    return x0.clamp(-s, s) / s


@dataclasses.dataclass
class DiffusionStepOutput:
    """Result of :meth:`DiffusionScheduler.step`; all tensors ``(b, c, h, w)`` except the log variance.

    ``prev_sample``: ``x`` at the next (less noisy) time. ``pred_original_sample``: thresholded ``x0``.
    ``posterior_mean``; ``posterior_log_variance``: ``(b,)``, clipped at log(1e-20).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    posterior_mean: torch.Tensor
    posterior_log_variance: torch.Tensor


class DiffusionScheduler:
    """Sampler and training helpers for the SR diffusion (diffusers-scheduler style).

    Args:
        num_inference_steps: number of sampling steps (released: 25); change with :meth:`set_timesteps`.
        dynamic_threshold_percentile: quantile used by dynamic thresholding (released: 0.95).
        lowres_noise_level: the augmentation time ``t`` of the low-resolution image at sampling
            (released: 0.1).

    Sampling: ``scheduler.timesteps`` holds the ``n + 1`` times ``1 → 0``; step ``i`` goes from
    ``timesteps[i]`` to ``timesteps[i + 1]``; the Unet input for step ``i`` is :meth:`model_time_input`.
    """

    def __init__(
        self,
        num_inference_steps: int = 25,
        *,
        dynamic_threshold_percentile: float = 0.95,
        lowres_noise_level: float = 0.1,
    ):
        if not 0.0 < dynamic_threshold_percentile <= 1.0:
            raise ValueError(
                f"DiffusionScheduler: dynamic_threshold_percentile={dynamic_threshold_percentile} must be in (0, 1]"
            )
        if not 0.0 <= lowres_noise_level < 1.0:
            raise ValueError(f"DiffusionScheduler: lowres_noise_level={lowres_noise_level} must be in [0, 1)")
        self.dynamic_threshold_percentile = dynamic_threshold_percentile
        self.lowres_noise_level = lowres_noise_level
        self.set_timesteps(num_inference_steps)

    # -- schedule ------------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Use ``num_inference_steps`` steps: ``timesteps = linspace(1, 0, n + 1)`` (float32)."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(
                f"DiffusionScheduler.set_timesteps: num_inference_steps={num_inference_steps!r} must be an int >= 1"
            )
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.linspace(1.0, 0.0, num_inference_steps + 1)
        self.log_snrs = cosine_log_snr(self.timesteps)

    def _check_index(self, step_index: int) -> None:
        if not 0 <= step_index < self.num_inference_steps:
            raise ValueError(f"DiffusionScheduler: step_index={step_index} must be in [0, {self.num_inference_steps})")

    def model_time_input(self, step_index: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The Unet's ``times`` argument for step ``step_index``: the cosine log-SNR of ``t_i``, ``(batch,)``.

        At step 0 this is the float32 value −33.891315 (see :func:`cosine_log_snr`).
        """
        self._check_index(step_index)
        return cosine_log_snr(self.timesteps[step_index].expand(batch)).to(device)

    # -- sampling --------------------------------------------------------------------------------------------

    def step(
        self,
        model_output: torch.Tensor,
        step_index: int,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> DiffusionStepOutput:
        """One ancestral step from ``timesteps[step_index]`` to ``timesteps[step_index + 1]``.

        Args:
            model_output: ``(b, c, h, w)`` the Unet's v-prediction at ``sample``.
            step_index: 0-based step number.
            sample: ``(b, c, h, w)`` the current ``x_t``.
            generator: source of the step noise (one ``randn`` of the sample's shape per step, drawn even on
                the last step, where it is multiplied by 0 — the reference draw order).
            noise: the step noise itself, for replaying a recorded run (overrides ``generator``).
        """
        self._check_index(step_index)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"DiffusionScheduler.step: model_output shape {tuple(model_output.shape)} must equal sample "
                f"shape {tuple(sample.shape)}"
            )
        b = sample.shape[0]
        log_snr = _per_sample(cosine_log_snr(self.timesteps[step_index].expand(b)), sample)
        alpha, sigma = alpha_sigma(log_snr)
        x0 = alpha * sample - sigma * model_output
        x0 = dynamic_threshold(x0, self.dynamic_threshold_percentile)
        mean, log_variance = self.q_posterior(x0, sample, step_index)

        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)
        elif noise.shape != sample.shape:
            raise ValueError(
                f"DiffusionScheduler.step: noise shape {tuple(noise.shape)} must equal sample shape "
                f"{tuple(sample.shape)}"
            )
        # no noise on the last step (t_next == 0); multiply rather than skip, as the reference does
        keep = 1.0 - float(bool(self.timesteps[step_index + 1] == 0))
        prev = mean + keep * (0.5 * log_variance).exp() * noise
        return DiffusionStepOutput(
            prev_sample=prev,
            pred_original_sample=x0,
            posterior_mean=mean,
            posterior_log_variance=log_variance.reshape(b),
        )

    def q_posterior(self, x0: torch.Tensor, sample: torch.Tensor, step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(b, c, h, w)`` and clipped log variance ``(b, 1, 1, 1)`` of ``q(x_next | x_t, x0)``.

        ``c = −expm1(λ_t − λ_next)`` (i.e. ``1 − SNR(t)/SNR(t_next)``),
        ``mean = α_next·(x_t·(1 − c)/α + c·x0)``, ``variance = σ_next²·c``,
        ``log_variance = log(max(variance, 1e-20))`` — the reference operation order.
        """
        self._check_index(step_index)
        b = sample.shape[0]
        t, t_next = self.timesteps[step_index], self.timesteps[step_index + 1]
        log_snr = _per_sample(cosine_log_snr(t.expand(b)), sample)
        log_snr_next = _per_sample(cosine_log_snr(t_next.expand(b)), sample)
        alpha, _ = alpha_sigma(log_snr)
        alpha_next, sigma_next = alpha_sigma(log_snr_next)
        c = -torch.special.expm1(log_snr - log_snr_next)
        mean = alpha_next * (sample * (1 - c) / alpha + c * x0)
        log_variance = torch.log((sigma_next**2 * c).clamp(min=1e-20))
        return mean, log_variance

    @staticmethod
    def to_unit_range(sample: torch.Tensor) -> torch.Tensor:
        """Final output: ``clamp(x, −1, 1)`` then ``(x + 1)/2`` → [0, 1]."""
        return (sample.clamp(-1.0, 1.0) + 1) * 0.5

    # -- low-resolution conditioning ------------------------------------------------------------------

    def lowres_log_snr(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The Unet's ``lowres_times`` argument ``(batch,)``: linear log-SNR of ``lowres_noise_level``.

        2.2511179 for the released level 0.1.
        """
        return linear_log_snr(torch.full((batch,), self.lowres_noise_level, dtype=torch.float32)).to(device)

    def augment_lowres(
        self,
        lowres_0_1: torch.Tensor,
        size: int | tuple[int, int],
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare the low-resolution conditioning image.

        Nearest upsampling to ``size``, [0, 1] → [−1, 1], then ``alpha·x + sigma·noise`` with the linear
        schedule at ``lowres_noise_level``.
        ``lowres_0_1 (b, c, h, w)`` → ``(image (b, c, H, W), log_snr (b,))``; pass both to the Unet.
        ``noise`` (``(b, c, H, W)``) replays a recorded draw instead of drawing from ``generator``.

        The reference first resizes its input to the base size (128) and then to ``size``; the pipeline
        always passes 128² slices, where the two agree.
        """
        if lowres_0_1.ndim != 4:
            raise ValueError(f"augment_lowres: lowres_0_1 shape {tuple(lowres_0_1.shape)} must be (b, c, h, w)")
        size = (size, size) if isinstance(size, int) else tuple(size)
        image = lowres_0_1
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="nearest")
        image = image * 2 - 1
        b = image.shape[0]
        log_snr = self.lowres_log_snr(b, image.device)
        alpha, sigma = alpha_sigma(_per_sample(log_snr.to(image.dtype), image))
        if noise is None:
            noise = torch.randn(image.shape, generator=generator, dtype=image.dtype, device=image.device)
        elif noise.shape != image.shape:
            raise ValueError(
                f"augment_lowres: noise shape {tuple(noise.shape)} must equal the upsampled shape {tuple(image.shape)}"
            )
        return alpha * image + sigma * noise, log_snr

    # -- training -------------------------------------------------------------------------------------

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``alpha(t)·x0 + sigma(t)·noise`` (cosine schedule); ``t`` ``(b,)`` in [0, 1]."""
        alpha, sigma = alpha_sigma(_per_sample(cosine_log_snr(t).to(x0.dtype), x0))
        return alpha * x0 + sigma * noise

    @staticmethod
    def get_velocity(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Training target of the v-objective, ``alpha(t)·noise − sigma(t)·x0``; ``t`` ``(b,)``."""
        alpha, sigma = alpha_sigma(_per_sample(cosine_log_snr(t).to(x0.dtype), x0))
        return alpha * noise - sigma * x0
