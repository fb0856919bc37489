"""Volume files: NIfTI (.nii.gz) and NRRD writers/readers with explicit geometry, and JSON sidecars.

Geometry (:class:`VolumeGeometry`) follows the package conventions: arrays are ``(z, y, x)``;
``spacing_mm`` is given in that same axis order; ``origin_mm`` is the LPS position of voxel
``[0, 0, 0]``; ``direction`` is a 3×3 matrix whose columns are the LPS unit vectors of the array axes
``z, y, x``. SimpleITK stores LPS internally and converts to RAS when it writes the NIfTI affine, so
both formats carry the same physical placement.

Writes are atomic (a temporary file in the target folder, then a rename), and an existing file is
never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from GenerateCTLib._helpers import atomic_write_bytes

FORMATS = {".nii.gz": "nii.gz", ".nii": "nii", ".nrrd": "nrrd", ".nhdr": "nhdr"}


@dataclasses.dataclass(frozen=True)
class VolumeGeometry:
    """Physical placement of a ``(z, y, x)`` array (see the module docstring for axis conventions)."""

    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))

    def __post_init__(self):
        spacing = np.asarray(self.spacing_mm, dtype=float)
        if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"spacing_mm must be 3 positive numbers (z, y, x), got {self.spacing_mm!r}")
        origin = np.asarray(self.origin_mm, dtype=float)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"origin_mm must be 3 finite numbers (LPS), got {self.origin_mm!r}")
        direction = np.asarray(self.direction, dtype=float)
        if direction.shape != (3, 3) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
            raise ValueError(f"direction must be an orthonormal 3x3 matrix, got {self.direction!r}")

    def itk_spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in reversed(self.spacing_mm))

    def itk_direction(self) -> tuple[float, ...]:
        """Row-major 3×3 with columns for ITK's index axes (x, y, z) = our array axes reversed."""
        return tuple(float(v) for v in np.asarray(self.direction, dtype=float)[:, ::-1].reshape(-1))

    def ijk_to_lps(self) -> np.ndarray:
        """4×4 matrix mapping array indices ``(k_z, k_y, k_x, 1)`` to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction, dtype=float) * np.asarray(self.spacing_mm, dtype=float)
        matrix[:3, 3] = self.origin_mm
        return matrix

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": [list(row) for row in self.direction],
            "axes": "(z, y, x)",
            "frame": "LPS",
        }


def volume_format(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"unsupported volume file {str(path)!r}; allowed extensions: {sorted(FORMATS)}")


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a folder, expected a file path")


def write_volume(
    path: str | os.PathLike,
    volume: np.ndarray,
    geometry: VolumeGeometry,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a ``(z, y, x)`` volume with its geometry as NIfTI or NRRD (by extension), atomically.

    Args:
        dtype: ``float32``, or ``int16`` for HU volumes (values are rounded; they must fit in int16).
    """
    import SimpleITK as sitk

    path = Path(path)
    volume_format(path)  # validates the extension
    suffix = next(s for s in FORMATS if str(path).lower().endswith(s))
    _check_target(path, overwrite)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x), got shape {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume contains NaN or infinite values")
    if dtype == "float32":
        array = volume.astype(np.float32)
    elif dtype == "int16":
        rounded = np.rint(volume)
        if rounded.min() < np.iinfo(np.int16).min or rounded.max() > np.iinfo(np.int16).max:
            raise ValueError(f"volume range [{rounded.min()}, {rounded.max()}] does not fit int16")
        array = rounded.astype(np.int16)
    else:
        raise ValueError(f"dtype must be 'float32' or 'int16', got {dtype!r}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.itk_spacing())
    image.SetOrigin(tuple(float(v) for v in geometry.origin_mm))
    image.SetDirection(geometry.itk_direction())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide outputs from other users
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=suffix in (".nii.gz", ".nrrd"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, VolumeGeometry]:
    """Read a NIfTI or NRRD file as a ``(z, y, x)`` array and its LPS geometry."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: volume file not found")
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3-D image, found {image.GetDimension()}-D")
    itk_direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    geometry = VolumeGeometry(
        spacing_mm=tuple(reversed(image.GetSpacing())),
        origin_mm=tuple(image.GetOrigin()),
        direction=tuple(tuple(row) for row in itk_direction[:, ::-1]),
    )
    return sitk.GetArrayFromImage(image), geometry


def write_json(path: str | os.PathLike, payload: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Write a JSON sidecar (provenance, attention index) atomically."""
    path = Path(path)
    _check_target(path, overwrite)
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    return path
