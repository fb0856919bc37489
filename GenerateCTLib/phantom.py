"""Procedural chest CT phantoms in HU with findings and impressions, and a CT-RATE-style dataset writer.

A demonstration dataset for training small GenerateCT models (issue 4), not a medical simulator.

* :func:`generate_phantom` renders a :class:`PhantomSpec` (age, sex, findings) on any ``(z, y, x)`` grid in
  the package orientation (z → S, y → P, x → L; LPS geometry), deterministic from a NumPy generator.
* :func:`sample_case` draws a spec and its impression for the ``train`` or ``eval`` split (disjoint
  phrasings, held-out finding combinations; see :mod:`GenerateCTLib.phantom_reports`).
* :func:`write_dataset` writes ``volumes/<VolumeName>`` NIfTI files and ``reports.csv`` atomically.
* :func:`add_phantom_command` registers ``generatect phantoms`` on an argparse sub-parser set.

Anatomy lives in :mod:`GenerateCTLib.phantom_anatomy`, findings in :mod:`GenerateCTLib.phantom_findings`,
and the analyzer used by the adherence benchmark in :mod:`GenerateCTLib.phantom_analysis`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from GenerateCTLib._helpers import replace_directory
from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.phantom_anatomy import Grid, build_anatomy, default_spacing, heart_semi_axes, heart_x_extent
from GenerateCTLib.phantom_anatomy import render_chest as _render_chest
from GenerateCTLib.phantom_findings import (
    FINDING_HU,
    LABEL_NAMES,
    PERICARDIAL_MM,
    SUPPORTED_FINDINGS,
    Finding,
    PhantomSpec,
    ctr_for,
    place_lesions,
    render_findings,
)
from GenerateCTLib.phantom_reports import HELD_OUT_PAIRS, SPLITS, Split, impression, phrasing_counts, sample_spec

log = logging.getLogger(__name__)

__all__ = [
    "LABEL_NAMES",
    "SUPPORTED_FINDINGS",
    "HELD_OUT_PAIRS",
    "Finding",
    "Phantom",
    "PhantomSpec",
    "add_phantom_command",
    "generate_phantom",
    "phantom_geometry",
    "phrasing_counts",
    "sample_case",
    "write_dataset",
]

DIRECTION = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))  # columns: z → S, y → P, x → L
MIN_SHAPE = (5, 16, 16)
NOISE_SIGMA_HU = (10.0, 20.0)


@dataclasses.dataclass
class Phantom:
    """A rendered phantom.

    Attributes:
        volume_hu: ``(z, y, x)`` float32 HU in [-1000, 1000].
        geometry: LPS placement (z → S, y → P, x → L, centred on the origin).
        spec: the age, sex and findings it shows.
        labels: 0/1 per name of :data:`LABEL_NAMES`.
        masks: ``(z, y, x)`` bool masks: ``body``, ``lungs`` (aerated), ``heart``, ``pleural_fluid``,
            ``pericardial_fluid``, ``lesions`` (nodules, consolidation, atelectasis).
        measurements: ground truth such as ``ctr``, ``effusion_left_ml``, ``nodule_count``,
            ``lesions`` (list of ``{kind, lobe, centre_mm, semi_axes_mm}``).
    """

    volume_hu: np.ndarray
    geometry: VolumeGeometry
    spec: PhantomSpec
    labels: dict[str, int]
    masks: dict[str, np.ndarray]
    measurements: dict


def phantom_geometry(
    shape: tuple[int, int, int], spacing_mm: tuple[float, float, float] | None = None
) -> VolumeGeometry:
    """The phantom's geometry: default spacing (300 mm thorax, 384 mm field of view), centred on the origin."""
    shape = _check_shape(shape)
    spacing = default_spacing(shape) if spacing_mm is None else tuple(float(s) for s in spacing_mm)
    centre = (np.asarray(shape, float) - 1) / 2 * np.asarray(spacing, float)
    origin = -(np.asarray(DIRECTION, float) @ centre)
    return VolumeGeometry(spacing_mm=spacing, origin_mm=tuple(float(v) for v in origin), direction=DIRECTION)


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be 3 integers (z, y, x), got {shape!r}") from None
    if len(shape) != 3 or any(v < m for v, m in zip(shape, MIN_SHAPE, strict=True)):
        raise ValueError(f"shape must be 3 integers (z, y, x) of at least {MIN_SHAPE}, got {shape!r}")
    return shape


def _as_generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator, an integer seed or None, got {type(rng).__name__}")


def generate_phantom(
    spec: PhantomSpec,
    shape: tuple[int, int, int] = (33, 64, 64),
    spacing_mm: tuple[float, float, float] | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    noise_sigma_hu: float | None = None,
) -> Phantom:
    """Render ``spec`` as a chest CT in HU on a ``(z, y, x)`` grid.

    Args:
        spec: age, sex and findings (see :class:`PhantomSpec`).
        shape: ``(z, y, x)`` voxels, at least ``(5, 16, 16)``.
        spacing_mm: ``(z, y, x)`` mm; default ``(300 / (z - 1), 384 / y, 384 / x)`` so anatomy scales with the grid.
        rng: numpy Generator or seed; the same seed gives the same anatomy, findings and noise.
        noise_sigma_hu: Gaussian noise σ in HU (default drawn in [10, 20]).
    """
    if not isinstance(spec, PhantomSpec):
        raise ValueError(f"spec must be a PhantomSpec, got {type(spec).__name__}")
    geometry = phantom_geometry(shape, spacing_mm)
    shape = _check_shape(shape)
    rng = _as_generator(rng)
    grid = Grid(shape, geometry.spacing_mm)
    # 1. anatomy and finding geometry (independent of the output grid)
    anat = build_anatomy(spec.age, spec.sex, rng)
    ctr = ctr_for(spec.finding("Cardiomegaly"), rng)
    semi = heart_semi_axes(anat, ctr)
    peri = spec.finding("Pericardial effusion")
    pericardial_mm = PERICARDIAL_MM[peri.severity or "moderate"] if peri else 0.0
    lesions = place_lesions(anat, spec, rng, heart_semi=semi, pericardial_mm=pericardial_mm)
    texture_rng = np.random.default_rng(rng.integers(2**63))
    # 2. normal chest with the heart of this spec, then the other findings
    chest = _render_chest(anat, grid, texture_rng, heart_semi=semi, pericardial_mm=pericardial_mm,
                          pericardial_hu=FINDING_HU["pericardial"])
    lung_before = chest.lung.copy()
    truth = render_findings(chest, anat, grid, spec, lesions, texture_rng)
    # 3. noise and clipping
    sigma = float(texture_rng.uniform(*NOISE_SIGMA_HU)) if noise_sigma_hu is None else float(noise_sigma_hu)
    if sigma < 0:
        raise ValueError(f"noise_sigma_hu must be >= 0, got {noise_sigma_hu!r}")
    volume = chest.volume_hu + sigma * texture_rng.standard_normal(shape).astype(np.float32)
    np.clip(volume, -1000.0, 1000.0, out=volume)
    measurements = {
        "ctr": float(heart_x_extent(semi, anat.heart_angle) / anat.cav_a),
        "thoracic_width_mm": anat.thoracic_width_mm,
        "body_scale": anat.scale,
        "noise_sigma_hu": sigma,
        "pericardial_mm": pericardial_mm,
        "lesions": [{"kind": les.kind, "lobe": les.lobe, "centre_mm": list(les.centre), "semi_axes_mm": list(les.semi)}
                    for les in lesions],
        **truth,
    }
    fluid = np.clip(lung_before - chest.lung, 0, 1)
    masks = {
        "body": chest.body > 0.5,
        "lungs": chest.lung > 0.5,
        "heart": chest.heart > 0.5,
        "pleural_fluid": fluid > 0.5,
        "pericardial_fluid": chest.pericardium > 0.5,
    }
    return Phantom(volume.astype(np.float32), geometry, spec, spec.label_dict(), masks, measurements)


def sample_case(rng: np.random.Generator | int | None = None, split: Split = "train") -> tuple[PhantomSpec, str]:
    """A random spec and its impression for ``split`` (``train`` or ``eval``)."""
    rng = _as_generator(rng)
    spec = sample_spec(rng, split)
    return spec, impression(spec, rng, split)


def _case_rngs(seed: int, split: str, n: int) -> list[np.random.Generator]:
    # one independent stream per case: case i is the same whatever n is; splits never share streams
    children = np.random.SeedSequence([int(seed), SPLITS.index(split)]).spawn(n)
    return [np.random.default_rng(child) for child in children]


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    *,
    shape: tuple[int, int, int] = (33, 64, 64),
    seed: int = 0,
    split: Split = "train",
    overwrite: bool = False,
) -> Path:
    """Write ``n`` phantoms as a CT-RATE-style folder, atomically (a temporary folder, then a rename).

    Layout: ``volumes/<split>_<i>_a_1.nii.gz`` (int16 HU, geometry of :func:`phantom_geometry`),
    ``reports.csv`` (columns ``VolumeName, age, sex, impression`` and one 0/1 column per name of
    :data:`LABEL_NAMES`) and ``phantoms.json`` (per volume: findings with attributes, ground-truth
    measurements, shape, seed, split).

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: bad ``n``, ``shape``, ``seed`` or ``split``.
    """
    from GenerateCTLib.io import write_volume

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    shape = _check_shape(shape)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (tmp / "volumes").mkdir()
        rows, sidecar = [], {}
        for i, rng in enumerate(_case_rngs(seed, split, int(n))):
            spec, text = sample_case(rng, split)
            phantom = generate_phantom(spec, shape, rng=rng)
            name = f"{split}_{i + 1}_a_1.nii.gz"
            write_volume(tmp / "volumes" / name, phantom.volume_hu, phantom.geometry, dtype="int16")
            rows.append({"VolumeName": name, "age": spec.age, "sex": spec.sex, "impression": text, **phantom.labels})
            sidecar[name] = {"findings": [f.to_dict() for f in spec.findings], "measurements": phantom.measurements}
            if (i + 1) % max(1, n // 10) == 0:
                log.info("phantoms: %d/%d", i + 1, n)
        with open(tmp / "reports.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["VolumeName", "age", "sex", "impression", *LABEL_NAMES])
            writer.writeheader()
            writer.writerows(rows)
        meta = {"n": int(n), "shape": list(shape), "seed": int(seed), "split": split, "volumes": sidecar,
                "label_names": list(LABEL_NAMES), "supported_findings": list(SUPPORTED_FINDINGS)}
        (tmp / "phantoms.json").write_text(json.dumps(meta, indent=1) + "\n")
        replace_directory(tmp, out_dir)  # an old folder (overwrite) is moved aside, deleted after the swap
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


EXAMPLES_PHANTOMS = """examples:
  generatect phantoms --out data/phantoms_train --n 2000 --shape 33 64 64 --seed 0
  generatect phantoms --out data/phantoms_eval --n 64 --shape 201 128 128 --seed 1 --split eval
"""


def _cmd_phantoms(args: argparse.Namespace) -> int:
    out = write_dataset(args.out, args.n, shape=tuple(args.shape), seed=args.seed, split=args.split,
                        overwrite=args.overwrite)
    print(f"wrote {args.n} phantoms to {out}")
    return 0


def add_phantom_command(subparsers) -> argparse.ArgumentParser:
    """Register ``generatect phantoms`` on ``subparsers`` (the object returned by ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "phantoms",
        help="write a CT-RATE-style dataset of synthetic chest phantoms (NIfTI in HU + reports.csv)",
        description="Procedural chest CT phantoms with findings and radiology-style impressions. "
        "A demonstration dataset, not medical data.",
        epilog=EXAMPLES_PHANTOMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--n", type=int, required=True, help="number of phantoms")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=[33, 64, 64],
                        help="volume shape in voxels (default 33 64 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="train or eval: disjoint phrasings and held-out finding pairs (default train)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.set_defaults(func=_cmd_phantoms)
    return parser
