"""CT display windows and the HU ↔ model-intensity maps, as pure NumPy functions.

Window presets are those of the GenerateCT paper's supplement: full [-1000, 1000] HU, lung
[-1000, 150] HU and mediastinal [-125, 225] HU.
"""

from __future__ import annotations

import dataclasses

import numpy as np

HU_MIN = -1000.0
HU_MAX = 1000.0


@dataclasses.dataclass(frozen=True)
class WindowPreset:
    """A display window given by its HU bounds."""

    name: str
    lower_hu: float
    upper_hu: float

    @property
    def width_hu(self) -> float:
        return self.upper_hu - self.lower_hu

    @property
    def level_hu(self) -> float:
        return (self.upper_hu + self.lower_hu) / 2


FULL = WindowPreset("Full", HU_MIN, HU_MAX)
LUNG = WindowPreset("Lung", -1000.0, 150.0)
MEDIASTINAL = WindowPreset("Mediastinal", -125.0, 225.0)
PRESETS = {preset.name.lower(): preset for preset in (FULL, LUNG, MEDIASTINAL)}


def get_preset(name: str) -> WindowPreset:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown window preset {name!r}; allowed: {sorted(PRESETS)}") from None


def apply_window(volume_hu: np.ndarray, lower_hu: float, upper_hu: float) -> np.ndarray:
    """Map HU to display values in [0, 1]: ``lower_hu`` → 0, ``upper_hu`` → 1, clipped outside.

    A zero-width window (``lower_hu == upper_hu``) is a threshold: values above it are 1, others 0.
    """
    if not np.isfinite(lower_hu) or not np.isfinite(upper_hu) or upper_hu < lower_hu:
        raise ValueError(f"window bounds must be finite with lower <= upper, got [{lower_hu}, {upper_hu}]")
    volume_hu = np.asarray(volume_hu, dtype=np.float32)
    if upper_hu == lower_hu:
        return (volume_hu > upper_hu).astype(np.float32)
    return np.clip((volume_hu - lower_hu) / (upper_hu - lower_hu), 0.0, 1.0).astype(np.float32)


def window_preset(volume_hu: np.ndarray, preset: str | WindowPreset) -> np.ndarray:
    """:func:`apply_window` with a named preset (``full``, ``lung``, ``mediastinal``)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return apply_window(volume_hu, preset.lower_hu, preset.upper_hu)


def base_output_to_hu(x: np.ndarray) -> np.ndarray:
    """CT-ViT / MaskGIT output (trained on HU/1000) to HU, clipped to [-1000, 1000]."""
    return np.clip(np.asarray(x, dtype=np.float32) * 1000.0, HU_MIN, HU_MAX)


def super_resolution_output_to_hu(x_0_1: np.ndarray) -> np.ndarray:
    """Super-resolution output in [0, 1] (trained on (HU/1000 + 1)/2) to HU, clipped to [-1000, 1000]."""
    return np.clip(np.asarray(x_0_1, dtype=np.float32) * 2000.0 - 1000.0, HU_MIN, HU_MAX)


def hu_to_model(volume_hu: np.ndarray) -> np.ndarray:
    """HU clipped to [-1000, 1000] and divided by 1000: the CT-ViT / MaskGIT training input in [-1, 1]."""
    return np.clip(np.asarray(volume_hu, dtype=np.float32), HU_MIN, HU_MAX) / 1000.0
