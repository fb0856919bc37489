"""Prompt → synthetic chest CT volume in HU with geometry: the GenerateCT cascade as one call.

Steps: 1. check inputs, 2. encode the prompt (T5), 3. sample CT-ViT tokens (MaskGIT with guidance),
4. decode to the low-resolution volume (CT-ViT), 5. super-resolve slice batches (diffusion).

Intensities are mapped back to calibrated HU (base stage ``1000·x``, super-resolution ``2000·x − 1000``,
clipped to [-1000, 1000]). The model has no physical spacing (training resampled every scan to 201 slices
of 128² whatever its spacing), so a nominal geometry is assigned: by default 3.0 mm in-plane at 128²,
0.75 mm at 512² (the same field of view) and 1.5 mm between slices, centred on the LPS origin, axial,
slice index increasing towards the head. A bundle's ``metadata.json`` may override these under
``"geometry"``; the caller may override the spacing and origin per call.

The model tensors are ``(b, c, f, h, w)``; this pipeline keeps ``(z, y, x) = (f, h, w)`` for both stages,
which removes the in-plane transposition between the reference's 128² and 512² output files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from GenerateCTLib import __version__
from GenerateCTLib._helpers import bundle_cond_scale
from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.progress import GenerationCancelled, ProgressCallback, ProgressEvent
from GenerateCTLib.windowing import base_output_to_hu, super_resolution_output_to_hu

log = logging.getLogger(__name__)

__all__ = ["GenerateCTPipeline", "GenerationOutput", "GenerationCancelled", "ProgressEvent", "build_prompt"]

SEXES = ("male", "female")
MAX_IMPRESSION_CHARS = 1000
DEFAULT_GEOMETRY = {
    "slice_spacing_mm": 1.5,
    "field_of_view_mm": 384.0,  # 3.0 mm × 128 = 0.75 mm × 512
    "super_resolution_scale": 4,  # 128² → 512²
    # columns: LPS unit vectors of the array axes (z, y, x): z → S, y → P, x → L
    "direction": [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
}


@dataclasses.dataclass
class GenerationOutput:
    """A generated volume.

    Attributes:
        volume_hu: ``(z, y, x)`` float32 HU in [-1000, 1000].
        spacing_mm: ``(z, y, x)`` voxel spacing in mm (nominal, see the module docstring).
        origin_mm: LPS position of voxel ``[0, 0, 0]``.
        direction: 3×3, columns are the LPS directions of the array axes ``z, y, x``.
        prompt: the full prompt ``"{age} years old {sex}: {impression}"``.
        seeds: the seed of each stage (``sample_tokens``, ``super_resolve``).
        attention: per-word / per-phrase maps on the volume grid (an ``AttentionMaps`` mapping that upsamples
            each map when it is looked up), or None.
        provenance: settings, versions, device and timings, for the JSON sidecar.
    """

    volume_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]
    prompt: str
    seeds: dict[str, int]
    attention: Mapping[str, np.ndarray] | None
    provenance: dict[str, Any]

    @property
    def geometry(self) -> VolumeGeometry:
        return VolumeGeometry(spacing_mm=self.spacing_mm, origin_mm=self.origin_mm, direction=self.direction)


def build_prompt(age: int, sex: str, impression: str) -> str:
    """``"{age} years old {sex}: {impression}"`` after validating each part (the reference's format)."""
    if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 120:
        raise ValueError(f"age must be an integer from 0 to 120, got {age!r}")
    if sex not in SEXES:
        raise ValueError(f"sex must be one of {list(SEXES)}, got {sex!r}")
    if not isinstance(impression, str) or not impression.strip():
        raise ValueError("impression must be non-empty text")
    if len(impression) > MAX_IMPRESSION_CHARS:
        raise ValueError(f"impression has {len(impression)} characters; at most {MAX_IMPRESSION_CHARS} are allowed")
    # the reference strips these characters from the reports it trained on
    impression = impression.translate(str.maketrans("", "", "\"'()")).strip()
    return f"{age} years old {sex}: {impression}"


def _nominal_geometry(
    shape: tuple[int, int, int],
    settings: Mapping[str, Any],
    spacing_mm: tuple[float, float, float] | None,
    origin_mm: tuple[float, float, float] | None,
) -> VolumeGeometry:
    if spacing_mm is None:
        fov = float(settings["field_of_view_mm"])
        spacing_mm = (float(settings["slice_spacing_mm"]), fov / shape[1], fov / shape[2])
    direction = np.asarray(settings["direction"], dtype=float)
    if origin_mm is None:  # centre the volume on the origin
        centre = (np.asarray(shape, dtype=float) - 1) / 2 * np.asarray(spacing_mm, dtype=float)
        origin_mm = tuple(float(v) for v in -(direction @ centre))
    return VolumeGeometry(
        spacing_mm=tuple(float(s) for s in spacing_mm),
        origin_mm=tuple(float(v) for v in origin_mm),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
    )


def _check_sr_settings(sr_steps: Any, sr_batch_size: Any) -> None:
    if isinstance(sr_steps, bool) or not isinstance(sr_steps, int) or sr_steps < 1:
        raise ValueError(f"sr_steps must be an integer >= 1, got {sr_steps!r}")
    if isinstance(sr_batch_size, bool) or not isinstance(sr_batch_size, int) or sr_batch_size < 1:
        raise ValueError(f"sr_batch_size must be an integer >= 1, got {sr_batch_size!r}")


class _Progress:
    """Feeds the one user callback with stage, step, total and an ETA based on measured step costs."""

    def __init__(self, callback: ProgressCallback | None, plan: dict[str, tuple[int, float]]):
        self.callback = callback
        self.plan = plan  # stage -> (steps, relative cost per step)
        self.start = time.perf_counter()
        self.done_cost = 0.0
        self.stage_start = self.start
        self.timings: dict[str, float] = {}

    def _remaining_cost(self, stage: str, step: int) -> float:
        names = list(self.plan)
        steps, cost = self.plan[stage]
        later = sum(n * c for s, (n, c) in self.plan.items() if names.index(s) > names.index(stage))
        return (steps - step) * cost + later

    def __call__(self, stage: str, step: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        steps, cost = self.plan[stage]
        done = self.done_cost + step * cost
        eta = elapsed / done * self._remaining_cost(stage, step) if done > 0 and step > 0 else None
        if self.callback is not None:
            if self.callback(ProgressEvent(stage, step, total, eta, elapsed)) is False:
                raise GenerationCancelled(f"cancelled during {stage}")
        if step == total:
            now = time.perf_counter()
            self.timings[stage] = round(now - self.stage_start, 3)
            self.stage_start = now
            self.done_cost += steps * cost


class GenerateCTPipeline:
    """The three GenerateCT stages and the T5 encoder on one device.

    >>> pipe = GenerateCTPipeline.from_pretrained("models/demo")          # doctest: +SKIP
    >>> out = pipe(age=60, sex="female", impression="Cardiomegaly.", seed=1, super_resolve=False)  # +SKIP
    >>> out.volume_hu.shape                                               # doctest: +SKIP
    (201, 128, 128)
    """

    def __init__(self, *, ctvit, maskgit, super_resolution, text_encoder, metadata: Mapping[str, Any], bundle_id: str):
        self.ctvit = ctvit
        self.maskgit = maskgit
        self.super_resolution = super_resolution
        self.text_encoder = text_encoder
        self.metadata = dict(metadata)
        self.bundle_id = bundle_id
        self.geometry_settings = {**DEFAULT_GEOMETRY, **self.metadata.get("geometry", {})}

    @classmethod
    def from_pretrained(
        cls,
        bundle_dir,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        load_super_resolution: bool = True,
        verify: bool = False,
    ) -> GenerateCTPipeline:
        """Load a bundle (see :mod:`GenerateCTLib.checkpoints`) onto ``device`` in ``dtype``.

        ``load_super_resolution=False`` skips the SR Unet (low-resolution previews only).
        """
        from GenerateCTLib.checkpoints import METADATA_NAME, Bundle, sha256_file

        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was requested but CUDA is not available; use 'cpu'")
        bundle = Bundle(bundle_dir)
        if verify:
            bundle.verify()
        return cls(
            ctvit=bundle.load("ctvit", device=device, dtype=dtype),
            maskgit=bundle.load("maskgit", device=device, dtype=dtype),
            super_resolution=bundle.load("super_resolution", device=device, dtype=dtype)
            if load_super_resolution
            else None,
            text_encoder=bundle.load_text_encoder(device=device, dtype=torch.float32),
            metadata=bundle.metadata,
            bundle_id=sha256_file(bundle.path / METADATA_NAME),
        )

    @property
    def device(self) -> torch.device:
        return next(self.maskgit.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.maskgit.parameters()).dtype

    @property
    def default_cond_scale(self) -> float:
        """The guidance scale a bundle was tuned for (``metadata.json`` → ``defaults.cond_scale``), else the
        released 5."""
        return bundle_cond_scale(self.metadata)

    def max_slices(self) -> int:
        """The most slices the MaskGIT absolute position embeddings allow."""
        h, w = self.ctvit.spatial_grid
        max_frames = self.maskgit.config.max_seq_len // (h * w)
        return self.ctvit.num_slices(max_frames)

    def check_inputs(self, *, num_slices, steps, cond_scale, temperature, super_resolve, sr_steps,
                     sr_batch_size) -> None:
        pt = self.ctvit.config.temporal_patch_size
        if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1 or (num_slices - 1) % pt:
            raise ValueError(f"num_slices must be an odd number of slices (1 + {pt}·k), got {num_slices!r}")
        if num_slices > self.max_slices():
            raise ValueError(f"num_slices={num_slices} exceeds what the model allows (at most {self.max_slices()})")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(cond_scale, (int, float)) or not math.isfinite(cond_scale) or cond_scale < 0:
            raise ValueError(f"cond_scale must be a finite number >= 0, got {cond_scale!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if super_resolve:
            if self.super_resolution is None:
                raise ValueError("super_resolve=True but the pipeline was loaded without the super-resolution Unet")
            _check_sr_settings(sr_steps, sr_batch_size)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        *,
        age: int | None = None,
        sex: str | None = None,
        impression: str | None = None,
        num_slices: int | None = None,
        seed: int | None = None,
        steps: int = 18,
        cond_scale: float | None = None,
        temperature: float = 0.9,
        super_resolve: bool = True,
        sr_steps: int = 25,
        sr_batch_size: int | None = None,
        return_attention: bool = False,
        attention_steps: int = 6,
        callback: ProgressCallback | None = None,
        spacing_mm: tuple[float, float, float] | None = None,
        origin_mm: tuple[float, float, float] | None = None,
    ) -> GenerationOutput:
        """Generate one volume.

        Args:
            prompt: the full prompt; or give ``age`` (0–120), ``sex`` (male/female) and ``impression``.
            num_slices: odd slice count (default: the bundle's ``defaults.num_slices``, else 201 as released).
            seed: seeds every random draw (None: a random seed, recorded in the output).
            steps, cond_scale: MaskGIT decoding steps and classifier-free guidance scale (default: the bundle's
                ``defaults.cond_scale``, else 5 as released; see :attr:`default_cond_scale`).
            temperature: the Gumbel sampling temperature of the first decoding step, annealed linearly to 0
                (released: 0.9). Higher values make volumes differ more between seeds; 0 is greedy.
            super_resolve, sr_steps, sr_batch_size: the diffusion SR stage, its steps and slices per batch
                (default 1 on the CPU, where larger batches outgrow the caches, and 8 on a GPU). Each slice
                draws its noise from its own generator, so the result does not depend on ``sr_batch_size``.
            return_attention: record the cross-attention of the last ``attention_steps`` decoding steps
                and return per-word / per-phrase maps on the output grid.
            callback: called with a :class:`ProgressEvent` after every step; returning ``False`` (or raising
                :class:`GenerationCancelled`) cancels the run.
            spacing_mm, origin_mm: override the nominal geometry.
        """
        # 1. check inputs
        if prompt is None:
            if impression is None or age is None or sex is None:
                raise ValueError("give either prompt, or age, sex and impression")
            prompt = build_prompt(age, sex, impression)
        elif not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_IMPRESSION_CHARS + 40:
            raise ValueError(f"prompt must be non-empty text of at most {MAX_IMPRESSION_CHARS + 40} characters")
        elif any(v is not None for v in (age, sex, impression)):
            raise ValueError("give either prompt, or age, sex and impression, not both")
        if num_slices is None:
            num_slices = int(self.metadata.get("defaults", {}).get("num_slices", 201))
        if cond_scale is None:
            cond_scale = self.default_cond_scale
        if sr_batch_size is None:
            sr_batch_size = 8 if self.device.type == "cuda" else 1
        self.check_inputs(
            num_slices=num_slices,
            steps=steps,
            cond_scale=cond_scale,
            temperature=temperature,
            super_resolve=super_resolve,
            sr_steps=sr_steps,
            sr_batch_size=sr_batch_size,
        )
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
        seeds = {"sample_tokens": seed, "super_resolve": seed + 1}
        grid = self.ctvit.token_grid(num_slices)
        # relative step costs: a guided MaskGIT step ≈ 1, an SR step ≈ 0.1 per slice (measured on CPU)
        plan = {"encode_prompt": (1, 0.05), "sample_tokens": (steps, 1.0), "decode": (1, 0.2)}
        if super_resolve:
            plan["super_resolve"] = (sr_steps * num_slices, 0.1)
        progress = _Progress(callback, plan)
        progress("encode_prompt", 0, 1)

        # 2. encode the prompt
        text = self.text_encoder.encode(prompt)
        text_embeds = text.embeds.to(self.device, self.dtype)
        text_mask = text.mask.to(self.device)
        progress("encode_prompt", 1, 1)

        # 3. sample tokens
        from GenerateCTLib.transformer.masking_scheduler import MaskGITScheduler, sample_token_ids

        recorder = None
        if return_attention:
            from GenerateCTLib.attention_maps import CrossAttentionRecorder

            recorder = CrossAttentionRecorder(batch_size=1)
        ids = sample_token_ids(
            self.maskgit,
            text_embeds,
            text_mask,
            grid=grid,
            scheduler=MaskGITScheduler(steps, starting_temperature=temperature),
            cond_scale=cond_scale,
            generator=torch.Generator(self.device).manual_seed(seeds["sample_tokens"]),
            callback=lambda done, total: progress("sample_tokens", done, total),
            attention_steps=min(attention_steps, steps) if recorder is not None else 0,
            on_attention=recorder.add if recorder is not None else None,
        )

        # 4. decode
        progress("decode", 0, 1)
        lowres = self.ctvit.decode_from_ids(ids, grid=grid).float()  # (1, 1, z, 128, 128), ≈ HU / 1000
        progress("decode", 1, 1)

        # 5. super-resolve
        if super_resolve:
            volume_01 = self._super_resolve(lowres[0, 0], text_embeds, text_mask, seeds["super_resolve"],
                                            sr_steps, sr_batch_size, progress)
            volume_hu = super_resolution_output_to_hu(volume_01)
        else:
            volume_hu = base_output_to_hu(lowres[0, 0].cpu().numpy())
        volume_hu = np.ascontiguousarray(volume_hu, dtype=np.float32)
        geometry = _nominal_geometry(volume_hu.shape, self.geometry_settings, spacing_mm, origin_mm)

        attention = None
        if recorder is not None:
            from GenerateCTLib.attention_maps import build_attention_maps

            attention = build_attention_maps(
                recorder.mean()[0],
                grid=grid,
                prompt=prompt,
                impression=prompt.split(": ", 1)[1] if ": " in prompt else prompt,
                tokenizer=self.text_encoder.tokenizer,
                token_ids=text.token_ids[0],
                output_shape=volume_hu.shape,
            )

        provenance = {
            "prompt": prompt,
            "seeds": seeds,
            "num_slices": num_slices,
            "steps": steps,
            "cond_scale": cond_scale,
            "temperature": temperature,
            "super_resolve": super_resolve,
            "sr_steps": sr_steps if super_resolve else None,
            "sr_batch_size": sr_batch_size if super_resolve else None,
            "bundle": {"name": self.metadata.get("name"), "version": self.metadata.get("version"),
                       "metadata_sha256": self.bundle_id},
            "generatect_version": __version__,
            "torch_version": torch.__version__,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "timings_s": progress.timings,
            "geometry": geometry.to_dict() | {"nominal": spacing_mm is None},
            "intended_use": self.metadata.get("intended_use"),
        }
        return GenerationOutput(
            volume_hu=volume_hu,
            spacing_mm=geometry.spacing_mm,
            origin_mm=geometry.origin_mm,
            direction=geometry.direction,
            prompt=prompt,
            seeds=seeds,
            attention=attention,
            provenance=provenance,
        )

    @torch.no_grad()
    def super_resolve(
        self,
        volume_hu: np.ndarray,
        prompt: str,
        *,
        seed: int = 0,
        sr_steps: int = 25,
        sr_batch_size: int | None = None,
        callback: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Only the SR stage: a base-grid ``(z, h, w)`` volume in HU (``h = w`` = the CT-ViT image size,
        e.g. a CT-ViT reconstruction) → ``(z, s·h, s·w)`` HU, conditioned on ``prompt``. Slice ``k`` draws
        the same noise as in a full generation with seed ``seed - 1``."""
        if self.super_resolution is None:
            raise ValueError("super_resolve needs the super-resolution Unet; the pipeline was loaded without it")
        volume_hu = np.asarray(volume_hu)
        size = self.ctvit.config.image_size
        if volume_hu.ndim != 3 or volume_hu.shape[1:] != (size, size) or not np.isfinite(volume_hu).all():
            raise ValueError(f"volume_hu must be a finite (z, {size}, {size}) array in HU, got shape {volume_hu.shape}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
        if sr_batch_size is None:
            sr_batch_size = 8 if self.device.type == "cuda" else 1
        _check_sr_settings(sr_steps, sr_batch_size)
        text = self.text_encoder.encode(prompt)
        lowres = torch.from_numpy(np.clip(volume_hu.astype(np.float32), -1000, 1000) / 1000.0).to(self.device)
        progress = _Progress(callback, {"super_resolve": (sr_steps * volume_hu.shape[0], 1.0)})
        volume_01 = self._super_resolve(lowres, text.embeds.to(self.device, self.dtype), text.mask.to(self.device),
                                        seed, sr_steps, sr_batch_size, progress)
        return super_resolution_output_to_hu(volume_01)

    def _super_resolve(self, lowres, text_embeds, text_mask, seed, sr_steps, batch_size, progress) -> np.ndarray:
        """``(z, h, w)`` base output ≈ HU/1000 → ``(z, s·h, s·w)`` in [0, 1] (s = the bundle's
        ``super_resolution_scale``, 4 for 128² → 512²), ``batch_size`` slices at a time."""
        from GenerateCTLib.super_resolution.diffusion_scheduler import DiffusionScheduler
        from GenerateCTLib.super_resolution.sampling import ReplayNoise, sample_super_resolution

        unet = self.super_resolution
        z, h, w = lowres.shape
        scale = int(self.geometry_settings["super_resolution_scale"])
        size = (scale * h, scale * w)
        scheduler = DiffusionScheduler()
        scheduler.set_timesteps(sr_steps)
        text_conditioning = unet.encode_text(text_embeds.to(self.dtype), text_mask)
        # the SR stage was trained on (HU/1000 + 1) / 2 in [0, 1]
        lowres_01 = ((lowres.clamp(-1, 1) + 1) / 2)[:, None]
        out = np.empty((z, *size), dtype=np.float32)
        total = sr_steps * z
        for start in range(0, z, batch_size):
            stop = min(start + batch_size, z)
            # per-slice generators: the same seed gives the same slice whatever the batch size
            draws = [self._slice_noise(seed, i, sr_steps, size) for i in range(start, stop)]
            noise = ReplayNoise(
                lowres=torch.stack([d[0] for d in draws]),
                initial=torch.stack([d[1] for d in draws]),
                steps=torch.stack([d[2] for d in draws], dim=1),
            )
            batch = sample_super_resolution(
                unet,
                scheduler,
                lowres_01[start:stop],
                text_conditioning=text_conditioning,
                output_size=size,
                noise=noise,
                callback=lambda done, _total, s=start, n=stop - start: progress(
                    "super_resolve", sr_steps * s + done * n, total
                ),
            )
            out[start:stop] = batch[:, 0].float().cpu().numpy()
        return out

    def _slice_noise(self, seed: int, index: int, sr_steps: int, size: tuple[int, int]):
        generator = torch.Generator(self.device).manual_seed(seed * 100_003 + index)
        kw = dict(generator=generator, device=self.device, dtype=self.dtype)
        lowres_noise = torch.randn((1, *size), **kw)
        initial = torch.randn((1, *size), **kw)
        steps = torch.randn((sr_steps, 1, *size), **kw)
        return lowres_noise, initial, steps
