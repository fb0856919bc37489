"""Tiny CT-RATE-style datasets written on the fly (random/simple HU volumes + reports.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from GenerateCTLib.io import VolumeGeometry, write_volume

REPORTS = [
    ("065Y", "M", "No acute cardiopulmonary findings."),
    ("42", "female", "Cardiomegaly (moderate)."),
    ("071Y", "F", "Right pleural effusion."),
    ("55", "male", "Left lung nodule."),
]


def make_dataset(
    folder: Path,
    *,
    num: int = 4,
    shape: tuple[int, int, int] = (12, 40, 40),
    impression_column: str = "impression",
    seed: int = 0,
) -> Path:
    """``num`` simple phantoms (air, a body ellipse, a "heart" disc whose size depends on the report)."""
    rng = np.random.default_rng(seed)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    rows = []
    for i in range(num):
        age, sex, impression = REPORTS[i % len(REPORTS)]
        body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 < 1
        radius = (0.22 if "Cardiomegaly" in impression else 0.12) * x
        heart = (yy - y / 2) ** 2 + (xx - x / 2 + 0.1 * x) ** 2 < radius**2
        slice_hu = np.where(body, -800.0, -1000.0)
        slice_hu = np.where(heart, 40.0, slice_hu)
        volume = np.repeat(slice_hu[None], z, axis=0) + rng.normal(0, 20, (z, y, x))
        name = f"train_{i}_a_1.nii.gz"
        write_volume(folder / "volumes" / name, volume, VolumeGeometry(spacing_mm=(2.0, 1.0, 1.0)))
        rows.append(
            {
                "VolumeName": name,
                "age": age,
                "sex": sex,
                impression_column: impression,
                "Cardiomegaly": int("Cardiomegaly" in impression),
                "Extra": "x",
            }
        )
    with (folder / "reports.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder
