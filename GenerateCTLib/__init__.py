"""GenerateCT: text-conditional synthesis of 3-D chest CT volumes.

A clean, weights-compatible implementation of GenerateCT (Hamamci et al., ECCV 2024): a CT-ViT VQ
tokenizer (:mod:`GenerateCTLib.tokenizer`), a MaskGIT transformer conditioned on T5 text embeddings
(:mod:`GenerateCTLib.transformer`) and a text-conditional diffusion super-resolution Unet
(:mod:`GenerateCTLib.super_resolution`).

Conventions used throughout the package:

* **Array axes.** Volumes are ``(z, y, x)`` = (slice, row, column). Model tensors are
  ``(b, c, z, y, x)``; token grids are ``(b, t, h, w)`` where ``t`` indexes slice groups (token 0 is
  slice 0 alone, token ``t >= 1`` is slices ``2t - 1`` and ``2t``) and ``(h, w)`` index in-plane patches.
* **Patient coordinates.** Geometry handed to files and DICOM is in LPS (DICOM convention); the Slicer
  module converts to RAS, Slicer's world frame. NIfTI writers convert LPS to RAS for the affine.
* **Units.** Names carry units: ``volume_hu`` (Hounsfield units), ``spacing_mm``, ``origin_mm``.
* **Devices.** Every model and pipeline takes ``device`` and ``dtype`` arguments; nothing in the package
  chooses a device silently, and nothing touches the network at import time.

``import GenerateCTLib`` is cheap: heavy modules (torch, transformers) load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names, resolved lazily so that importing the package does not import torch.
_LAZY = {
    "CTViT": "GenerateCTLib.tokenizer.ctvit",
    "CTViTConfig": "GenerateCTLib.tokenizer.ctvit",
    "MaskGIT": "GenerateCTLib.transformer.maskgit",
    "MaskGITConfig": "GenerateCTLib.transformer.maskgit",
    "MaskGITScheduler": "GenerateCTLib.transformer.masking_scheduler",
    "SuperResolutionUnet": "GenerateCTLib.super_resolution.unet",
    "SuperResolutionUnetConfig": "GenerateCTLib.super_resolution.unet",
    "DiffusionScheduler": "GenerateCTLib.super_resolution.diffusion_scheduler",
    "T5TextEncoder": "GenerateCTLib.text_encoder",
    "Bundle": "GenerateCTLib.checkpoints",
    "CheckpointError": "GenerateCTLib.modeling",
}

__all__ = [
    "__version__",
    "Bundle",
    "CTViT",
    "CTViTConfig",
    "CheckpointError",
    "DiffusionScheduler",
    "MaskGIT",
    "MaskGITConfig",
    "MaskGITScheduler",
    "SuperResolutionUnet",
    "SuperResolutionUnetConfig",
    "T5TextEncoder",
]

if TYPE_CHECKING:  # pragma: no cover
    from GenerateCTLib.checkpoints import Bundle
    from GenerateCTLib.modeling import CheckpointError
    from GenerateCTLib.super_resolution.diffusion_scheduler import DiffusionScheduler
    from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
    from GenerateCTLib.text_encoder import T5TextEncoder
    from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
    from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig
    from GenerateCTLib.transformer.masking_scheduler import MaskGITScheduler


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'GenerateCTLib' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
