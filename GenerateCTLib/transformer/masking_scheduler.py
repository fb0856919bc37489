"""Iterative MaskGIT decoding: cosine re-masking schedule, Gumbel sampling, confidence-based re-masking.

The schedule reproduces the reference ``MaskGITTransformer.sample`` loop exactly (default 18 steps):

* step 0 feeds all ``[MASK]``; step ``s > 0`` re-masks the ``k_s = round(n * cos(pi/2 * s / steps))``
  (at least 1) least confident tokens, computed in float32 torch as the reference does;
* ``temperature_s = starting_temperature * ((steps - (s + 1)) / steps)`` (Python float);
* ``pred = argmax(logits / max(T, 1e-10) + g)``, ``g = -log(-log(u + 1e-10) + 1e-10)``, ``u ~ U[0, 1)``;
  predictions are written at masked positions only;
* confidence ``scores = 1 - softmax(logits)[pred]`` at positions masked in this step, ``-1e4`` elsewhere;
  the next mask is the top-``k_{s+1}`` scores.

The network call lives outside the scheduler (:func:`sample_token_ids`), diffusers-style.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import torch


@dataclasses.dataclass
class MaskGITSchedulerOutput:
    """Result of one :meth:`MaskGITScheduler.step` (all ``(b, n)``).

    Attributes:
        token_ids: ids after writing the predictions at the positions masked in this step.
        pred_ids: Gumbel-argmax predictions at every position.
        next_mask: positions to re-mask before the next step (bool); ``None`` after the last step.
        next_input_ids: the network input of the next step (``token_ids`` with ``next_mask`` set to the
            mask id); equals ``token_ids`` after the last step.
    """

    token_ids: torch.Tensor
    pred_ids: torch.Tensor
    next_mask: torch.Tensor | None
    next_input_ids: torch.Tensor


def gumbel_noise_from_uniform(uniform: torch.Tensor) -> torch.Tensor:
    """``g = -log(-log(u + 1e-10) + 1e-10)`` (the reference's epsilons)."""
    return -torch.log(-torch.log(uniform + 1e-10) + 1e-10)


class MaskGITScheduler:
    """Masking/temperature schedule and per-step update of MaskGIT decoding.

    Args:
        num_inference_steps: number of unmasking steps (released: 18).
        starting_temperature: Gumbel temperature scale (released: 0.9).
    """

    def __init__(self, num_inference_steps: int = 18, starting_temperature: float = 0.9):
        self.starting_temperature = float(starting_temperature)
        self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set the number of steps; ``self.timesteps`` is ``arange(num_inference_steps)``."""
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} is invalid; allowed: an int >= 1")
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.num_inference_steps:
            raise ValueError(f"step={step!r} is invalid; allowed: 0 <= step < {self.num_inference_steps}")

    def num_masked(self, step: int, num_tokens: int) -> int:
        """Number of ``[MASK]`` tokens in the network input of ``step`` (all tokens at step 0)."""
        self._check_step(step)
        if step == 0:
            return num_tokens
        time = torch.full((1,), step / self.num_inference_steps)  # float32, as in the reference
        return int((num_tokens * torch.cos(time * math.pi * 0.5)).round().long().clamp(min=1).item())

    def temperature(self, step: int) -> float:
        """Gumbel temperature of ``step`` (0 at the last step, i.e. plain argmax)."""
        self._check_step(step)
        steps = self.num_inference_steps
        return self.starting_temperature * ((steps - (step + 1)) / steps)

    def step(
        self,
        logits: torch.Tensor,
        step: int,
        token_ids: torch.Tensor,
        *,
        mask_id: int,
        generator: torch.Generator | None = None,
        uniform_noise: torch.Tensor | None = None,
    ) -> MaskGITSchedulerOutput:
        """Sample the masked positions of ``token_ids`` and choose the next mask.

        Args:
            logits: ``(b, n, num_tokens)`` (guided) logits of this step's input ``token_ids``.
            step: step index in ``[0, num_inference_steps)``.
            token_ids: ``(b, n)`` network input of this step; positions equal to ``mask_id`` are masked.
            mask_id: the ``[MASK]`` id.
            generator: source of the uniform Gumbel noise (ignored when ``uniform_noise`` is given).
            uniform_noise: ``(b, n, num_tokens)`` values in ``[0, 1)`` to use instead of drawing.
        """
        self._check_step(step)
        if logits.ndim != 3 or logits.shape[:2] != token_ids.shape:
            raise ValueError(
                f"logits shape {tuple(logits.shape)} is invalid; allowed: (b, n, num_tokens) with (b, n) == "
                f"{tuple(token_ids.shape)}"
            )
        logits = logits.float()  # no-op for the float32 parity path; keeps sampling in float32 under autocast
        if uniform_noise is None:
            uniform_noise = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        elif uniform_noise.shape != logits.shape:
            raise ValueError(f"uniform_noise shape {tuple(uniform_noise.shape)} must equal {tuple(logits.shape)}")
        uniform_noise = uniform_noise.to(device=logits.device, dtype=logits.dtype)
        mask = token_ids == mask_id
        temperature = self.temperature(step)
        pred = (logits / max(temperature, 1e-10) + gumbel_noise_from_uniform(uniform_noise)).argmax(dim=-1)
        token_ids = torch.where(mask, pred, token_ids)
        if step == self.num_inference_steps - 1:
            return MaskGITSchedulerOutput(token_ids, pred, None, token_ids)
        probs = logits.softmax(dim=-1)
        scores = 1 - probs.gather(-1, pred[..., None])[..., 0]
        scores = torch.where(mask, scores, -1e4)
        k = self.num_masked(step + 1, token_ids.shape[1])
        indices = scores.topk(k, dim=-1).indices
        next_mask = torch.zeros_like(mask).scatter(1, indices, True)
        return MaskGITSchedulerOutput(token_ids, pred, next_mask, torch.where(next_mask, mask_id, token_ids))


@torch.no_grad()
def sample_token_ids(
    model,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor | None,
    *,
    grid: tuple[int, int, int],
    scheduler: MaskGITScheduler,
    cond_scale: float = 5.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int], None] | None = None,
    noise_fn: Callable[[int, tuple[int, ...]], torch.Tensor] | None = None,
    attention_steps: int = 0,
    on_attention: Callable[[object], None] | None = None,
) -> torch.Tensor:
    """Generate codebook ids with MaskGIT decoding.

    Args:
        model: a :class:`~GenerateCTLib.transformer.maskgit.MaskGIT`.
        text_embeds: ``(b, L, dim_context)``.
        text_mask: ``(b, L)`` bool (the reference uses ``any(text_embeds != 0, -1)``).
        grid: ``(t, h, w)`` token grid, e.g. ``(101, 8, 8)``.
        scheduler: the step schedule.
        cond_scale: classifier-free guidance scale (released: 5).
        generator: seeds the Gumbel noise.
        callback: ``callback(steps_done, total)`` called after each step (raise from it to cancel).
        noise_fn: ``noise_fn(step, shape)`` returning the uniform noise of a step (e.g. a recorded trace).
        attention_steps: capture the cross-attention of the last ``attention_steps`` steps (the explicit,
            slower attention path runs only then) and pass each step's capture to ``on_attention``.
        on_attention: receives the model's ``CapturedAttention`` of one guided forward (batch ``[cond; null]``
            when guidance runs).

    Returns:
        ``(b, t*h*w)`` int64 ids in ``(t h w)`` order.
    """
    b = text_embeds.shape[0]
    n = grid[0] * grid[1] * grid[2]
    mask_id = model.mask_id
    token_ids = torch.full((b, n), mask_id, dtype=torch.long, device=text_embeds.device)
    total = scheduler.num_inference_steps
    if attention_steps and on_attention is None:
        raise ValueError("attention_steps > 0 needs an on_attention callable")
    for step in range(total):
        capture = on_attention is not None and step >= total - attention_steps
        with model.capture_cross_attention() if capture else contextlib.nullcontext() as captured:
            logits = model.forward_with_guidance(token_ids, text_embeds, text_mask, grid=grid, cond_scale=cond_scale)
        if capture:
            on_attention(captured)
        noise = None if noise_fn is None else noise_fn(step, tuple(logits.shape))
        out = scheduler.step(logits, step, token_ids, mask_id=mask_id, generator=generator, uniform_noise=noise)
        token_ids = out.next_input_ids
        if callback is not None:
            callback(step + 1, total)
    return token_ids
