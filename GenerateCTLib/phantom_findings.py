"""Findings of the chest phantom: the label vocabulary, the finding/spec data model, placement and rendering.

Each supported finding has an analysable image signature (see :mod:`GenerateCTLib.phantom_analysis`):

* **Cardiomegaly**: heart X extent / internal thoracic width (CTR) 0.57–0.69 (normal 0.41–0.47).
* **Pericardial effusion**: a 17–26 mm rim of fluid (+8 HU) around the heart (myocardium 42, blood 52).
* **Pleural effusion**: fluid (+12 HU) replacing the DEPENDENT (posterior, high ``y`` index) lung with a
  horizontal level, 55 / 72 / 90 mm deep at the base for small / moderate / large; left, right or bilateral.
* **Lung nodule**: 1–3 spheres of 22–30 mm (+40 HU; ≥ 18 mm in children) enclosed by aerated lung
  (≥ 16 mm margin).
* **Consolidation**: a 44–60 mm ellipsoid (+35 HU) with air bronchograms, enclosed in one lobe (not the RML,
  too small to hold it on every body size).
* **Atelectasis**: a band elongated left-right (~72 × 26 × 36 mm, +45 HU) in a lower lobe near the base.
* **Emphysema**: low-attenuation (−990 HU) patches covering 32–55 % of the upper lungs, fewer below.
* **Lymphadenopathy**: 22–30 mm soft-tissue nodes (+38 HU) at mediastinal stations that are fat otherwise.

Lesions inside the lung are placed on a fixed 4 mm placement grid, so one seed gives the same anatomy
and findings on every output grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from GenerateCTLib.phantom_anatomy import (
    LOBES,
    Anatomy,
    ChestRender,
    Grid,
    ellipsoid_distance,
    lobe_map,
    lung_region,
    lymph_node_stations,
    occupancy,
    paint,
    render_tubes,
    smooth_field,
)

# CT-RATE's 18 abnormality labels, in the column order of its label CSV.
LABEL_NAMES = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
SUPPORTED_FINDINGS = (
    "Cardiomegaly",
    "Pericardial effusion",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Pleural effusion",
    "Consolidation",
)
SIDES = ("left", "right", "bilateral")
SEVERITIES = {
    "Cardiomegaly": ("mild", "moderate", "marked"),
    "Pericardial effusion": ("small", "moderate", "large"),
    "Pleural effusion": ("small", "moderate", "large"),
    "Emphysema": ("mild", "moderate", "severe"),
}
STATIONS = ("right paratracheal", "subcarinal", "prevascular")
SEXES = ("male", "female")

CTR_RANGES = {"mild": (0.57, 0.61), "moderate": (0.61, 0.65), "marked": (0.65, 0.69)}
PERICARDIAL_MM = {"small": 17.0, "moderate": 21.0, "large": 26.0}
EFFUSION_MM = {"small": (55.0, 110.0), "moderate": (72.0, 150.0), "large": (90.0, 190.0)}  # (base depth, height)
EMPHYSEMA_FRACTION = {"mild": 0.32, "moderate": 0.42, "severe": 0.55}
LESION_MARGIN_MM = 16.0
FINDING_HU = {"effusion": 12.0, "pericardial": 8.0, "nodule": 40.0, "consolidation": 35.0, "atelectasis": 45.0,
              "emphysema": -990.0, "node": 38.0}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding with its attributes (only those meaningful for ``label`` are set).

    Attributes:
        label: one of :data:`SUPPORTED_FINDINGS`.
        side: ``left``/``right``/``bilateral`` (pleural effusion, atelectasis).
        severity: see :data:`SEVERITIES` (cardiomegaly, pericardial/pleural effusion, emphysema).
        lobe: ``RUL``/``RML``/``RLL``/``LUL``/``LLL`` (consolidation; lung nodule: the largest one's lobe).
        size_mm: nodule diameter of the largest nodule, or node short axis (lymphadenopathy), in mm.
        count: number of nodules (1–3).
        stations: lymph node stations, from :data:`STATIONS`.
    """

    label: str
    side: str | None = None
    severity: str | None = None
    lobe: str | None = None
    size_mm: float | None = None
    count: int | None = None
    stations: tuple[str, ...] = ()

    def __post_init__(self):
        if self.label not in SUPPORTED_FINDINGS:
            raise ValueError(f"label must be one of {list(SUPPORTED_FINDINGS)}, got {self.label!r}")
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)} or None, got {self.side!r}")
        allowed = SEVERITIES.get(self.label, ())
        if self.severity is not None and self.severity not in allowed:
            raise ValueError(f"severity of {self.label} must be one of {list(allowed)}, got {self.severity!r}")
        if self.lobe is not None and self.lobe not in LOBES:
            raise ValueError(f"lobe must be one of {list(LOBES)} or None, got {self.lobe!r}")
        if self.size_mm is not None and not 5.0 <= float(self.size_mm) <= 40.0:
            raise ValueError(f"size_mm must be between 5 and 40 mm, got {self.size_mm!r}")
        if self.count is not None and not (isinstance(self.count, int) and 1 <= self.count <= 3):
            raise ValueError(f"count must be an integer from 1 to 3, got {self.count!r}")
        bad = [s for s in self.stations if s not in STATIONS]
        if bad:
            raise ValueError(f"stations must be taken from {list(STATIONS)}, got {bad!r}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if v not in (None, ())}


@dataclasses.dataclass(frozen=True)
class PhantomSpec:
    """What one phantom shows: patient age (years), sex and 0–3 findings (at most one per label)."""

    age: int
    sex: str
    findings: tuple[Finding, ...] = ()

    def __post_init__(self):
        if isinstance(self.age, bool) or not isinstance(self.age, (int, np.integer)) or not 0 <= self.age <= 120:
            raise ValueError(f"age must be an integer from 0 to 120, got {self.age!r}")
        if self.sex not in SEXES:
            raise ValueError(f"sex must be one of {list(SEXES)}, got {self.sex!r}")
        labels = [f.label for f in self.findings]
        if len(set(labels)) != len(labels):
            raise ValueError(f"findings must have distinct labels, got {labels!r}")

    def finding(self, label: str) -> Finding | None:
        return next((f for f in self.findings if f.label == label), None)

    def label_vector(self) -> np.ndarray:
        """0/1 int vector over :data:`LABEL_NAMES`."""
        present = {f.label for f in self.findings}
        return np.array([int(name in present) for name in LABEL_NAMES], dtype=np.int64)

    def label_dict(self) -> dict[str, int]:
        return dict(zip(LABEL_NAMES, self.label_vector().tolist(), strict=True))


# ---------------------------------------------------------------- placement (on a fixed 4 mm grid)

PLACEMENT_GRID = Grid((76, 96, 96), (4.0, 4.0, 4.0))


@dataclasses.dataclass(frozen=True)
class Lesion:
    """An ellipsoidal lesion inside the lung: ``kind``, centre ``(Z, Y, X)`` mm, semi-axes ``(c, b, a)`` mm."""

    kind: str  # nodule, consolidation, atelectasis
    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    lobe: str


def effusion_occupancy(anat: Anatomy, grid: Grid, lung: np.ndarray, side_map: np.ndarray, side: str,
                       severity: str) -> np.ndarray:
    """Pleural fluid occupancy: the lung of ``side`` below a horizontal (constant-Y) level, deepest at the base."""
    depth_base, height = (v * (anat.scale if i == 0 else 1.0) for i, v in enumerate(EFFUSION_MM[severity]))
    out = np.zeros(grid.shape, np.float32)
    for sign, name in ((-1, "right"), (1, "left")):
        if side not in (name, "bilateral"):
            continue
        dome = anat.dome_z[0 if sign < 0 else 1]
        rel = np.clip((grid.z - dome) / height, 0.0, 1.0)
        depth = depth_base * (1 - rel) ** 0.5 + np.clip(dome - grid.z, 0, None) * 1.2
        level = anat.cav_y + 0.97 * anat.cav_b - depth  # fluid where Y > level (posterior = dependent)
        occ = occupancy(level - grid.y, grid.voxel_mm) * (side_map == sign)
        np.maximum(out, occ * lung, out=out)
    return out


def _fits(available: np.ndarray, grid: Grid, centre, semi) -> bool:
    """True when the ellipsoid grown by the margin lies inside ``available`` (evaluated in its bounding box)."""
    grown = np.asarray(semi, float) + LESION_MARGIN_MM
    lo = np.floor(grid.index_of(np.asarray(centre) - grown)).astype(int)
    hi = np.ceil(grid.index_of(np.asarray(centre) + grown)).astype(int) + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(grid.shape)):
        return False
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    z, y, x = grid.z[box[0]], grid.y[:, box[1]], grid.x[:, :, box[2]]
    inside = ((z - centre[0]) / grown[0]) ** 2 + ((y - centre[1]) / grown[1]) ** 2 + ((x - centre[2]) / grown[2]) ** 2
    inside = inside <= 1
    return bool(inside.any() and np.all(available[box][inside]))


def place_lesions(anat: Anatomy, spec: PhantomSpec, rng: np.random.Generator, *,
                  heart_semi: tuple[float, float, float], pericardial_mm: float) -> list[Lesion]:
    """Choose centres for nodules, consolidation and atelectasis bands inside aerated lung, away from each other."""
    grid = PLACEMENT_GRID
    lung, side_map = lung_region(anat, grid, heart_semi, pericardial_mm)
    pleural = spec.finding("Pleural effusion")
    if pleural is not None:
        lung = lung * (1 - effusion_occupancy(anat, grid, lung, side_map, pleural.side, pleural.severity))
    available = lung > 0.5
    lobes = lobe_map(anat, grid)
    s = anat.scale
    wanted: list[tuple[str, tuple[float, float, float], str | None]] = []
    consolidation = spec.finding("Consolidation")
    if consolidation is not None:
        size = tuple(rng.uniform(22, 30, 3) * s)
        wanted.append(("consolidation", size, consolidation.lobe))
    atelectasis = spec.finding("Atelectasis")
    if atelectasis is not None:
        lobes_by_side = {"left": ("LLL",), "right": ("RLL",), "bilateral": ("RLL", "LLL")}
        for lobe in lobes_by_side[atelectasis.side or "bilateral"]:
            wanted.append(("atelectasis", (18.0 * s, 13.0 * s, 36.0 * s), lobe))
    nodule = spec.finding("Lung nodule")
    if nodule is not None:
        radius = nodule.size_mm / 2
        wanted.append(("nodule", (radius,) * 3, nodule.lobe))
        for _ in range((nodule.count or 1) - 1):
            r = rng.uniform(min(10.0 * s, radius), radius)
            wanted.append(("nodule", (r,) * 3, LOBES[int(rng.integers(len(LOBES)))]))
    placed = []
    for kind, size, lobe in wanted:
        lesion = _place_one(kind, size, lobe, anat, grid, available, lobes, rng)
        placed.append(lesion)
        d = ellipsoid_distance(grid, lesion.centre, tuple(a + LESION_MARGIN_MM for a in lesion.semi))
        available &= d > 0
    return placed


def _place_one(kind, size, lobe, anat, grid, available, lobes, rng) -> Lesion:
    """Centre a lesion in ``lobe`` with a margin of aerated lung; shrink it (down to 0.6×) when it does not fit."""
    lobe_index = LOBES.index(lobe) if lobe is not None else None
    in_lobe = available & (lobes == lobe_index) if lobe_index is not None else available
    if kind == "atelectasis":  # near the base: 15-90 mm above the lowest aerated lung of the lobe
        zz = np.nonzero(in_lobe.any(axis=(1, 2)))[0]
        if zz.size:
            base = grid.z[zz.min(), 0, 0]
            in_lobe = in_lobe & (grid.z < base + 90.0) & (grid.z > base + 15.0)
    edt = ndimage.distance_transform_edt(available, sampling=grid.spacing_mm)
    for factor in (1.0, 0.92, 0.84, 0.76, 0.68, 0.6):
        semi = np.asarray(size, float) * factor
        candidates = np.argwhere(in_lobe & (edt >= float(semi.min()) + LESION_MARGIN_MM))
        for index in rng.permutation(len(candidates))[:40]:
            kz, ky, kx = candidates[index]
            centre = (float(grid.z[kz, 0, 0]), float(grid.y[0, ky, 0]), float(grid.x[0, 0, kx]))
            if _fits(available, grid, centre, tuple(semi)):
                return Lesion(kind, centre, tuple(float(v) for v in semi), lobe or LOBES[int(lobes[kz, ky, kx])])
    # last resort: the deepest point of the lobe's lung, shrunk to fit without the margin
    region = (lobes == lobe_index) & (edt > 0) if lobe_index is not None else edt > 0
    candidates = np.argwhere(region) if region.any() else np.argwhere(edt > 0)
    kz, ky, kx = candidates[np.argmax(edt[tuple(candidates.T)])]
    semi = np.asarray(size, float) * max(0.4, min(0.6, float(edt[kz, ky, kx]) / max(size)))
    centre = (float(grid.z[kz, 0, 0]), float(grid.y[0, ky, 0]), float(grid.x[0, 0, kx]))
    return Lesion(kind, centre, tuple(float(v) for v in semi), lobe or LOBES[int(lobes[kz, ky, kx])])


def ctr_for(cardio: Finding | None, rng: np.random.Generator) -> float | None:
    """Cardiothoracic ratio of a cardiomegaly finding, drawn in its severity's range (None without one)."""
    if cardio is None:
        return None
    low, high = CTR_RANGES[cardio.severity or "moderate"]
    return float(rng.uniform(low, high))


# ---------------------------------------------------------------- rendering of findings


def render_findings(chest: ChestRender, anat: Anatomy, grid: Grid, spec: PhantomSpec, lesions: list[Lesion],
                    rng: np.random.Generator) -> dict[str, float]:
    """Paint the lung, pleural and mediastinal findings of ``spec`` into ``chest`` in place.

    (Cardiomegaly and pericardial effusion are rendered with the heart by ``render_chest``.)
    Returns ground-truth measurements: effusion volumes (mL), LAA % of the upper lungs, ...
    """
    vol, h = chest.volume_hu, grid.voxel_mm
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    truth: dict[str, float] = {}
    pleural = spec.finding("Pleural effusion")
    if pleural is not None:
        fluid = effusion_occupancy(anat, grid, chest.lung, chest.side, pleural.side, pleural.severity)
        paint(vol, fluid, FINDING_HU["effusion"])
        chest.lung *= 1 - fluid
        truth["effusion_right_ml"] = float((fluid * (chest.side < 0)).sum() * voxel_ml)
        truth["effusion_left_ml"] = float((fluid * (chest.side > 0)).sum() * voxel_ml)
    emphysema = spec.finding("Emphysema")
    if emphysema is not None:
        field = smooth_field(grid.shape, grid.spacing_mm, 10.0, rng) + 1.6 * grid.z / 150.0
        upper = (chest.lung > 0.5) & (grid.z > 0)
        fraction = EMPHYSEMA_FRACTION[emphysema.severity or "moderate"]
        threshold = float(np.quantile(field[upper], 1 - fraction)) if upper.any() else np.inf
        occ = np.clip((field - threshold) / 0.25 + 0.5, 0, 1) * chest.lung
        paint(vol, occ, FINDING_HU["emphysema"] + 8.0 * rng.standard_normal(grid.shape).astype(np.float32))
        truth["laa_upper_percent"] = float(100 * (occ[upper] > 0.5).mean()) if upper.any() else 0.0
    for lesion in lesions:
        occ = occupancy(ellipsoid_distance(grid, lesion.centre, lesion.semi), h) * np.clip(chest.lung * 4, 0, 1)
        paint(vol, occ, FINDING_HU[lesion.kind])
        if lesion.kind == "consolidation":  # air bronchograms: branches running towards the hilum
            z, y, x = lesion.centre
            lines = [[(z + dz, y + dy, x + dx), (z - dz, y - dy, x - dx)]
                     for dz, dy, dx in rng.normal(0, 1, (3, 3)) * np.asarray(lesion.semi) * 0.45]
            inner = occupancy(ellipsoid_distance(grid, lesion.centre, tuple(0.8 * a for a in lesion.semi)), h)
            paint(vol, render_tubes(grid, lines, [2.2 * anat.scale**0.5] * 3) * inner, -880.0)
    nodules = [les for les in lesions if les.kind == "nodule"]
    if nodules:
        truth["nodule_count"] = float(len(nodules))
        truth["nodule_max_mm"] = float(max(2 * les.semi[0] for les in nodules))
    lymph = spec.finding("Lymphadenopathy")
    if lymph is not None:
        centres = lymph_node_stations(anat.trachea, anat.scale, anat.carina_z)
        for i, station in enumerate(lymph.stations):
            radius = lymph.size_mm / 2 if i == 0 else rng.uniform(0.8, 1.0) * lymph.size_mm / 2
            z, y, x = centres[station]
            jitter = rng.uniform(-2, 2, 3)
            occ = occupancy(ellipsoid_distance(grid, (z + jitter[0], y + jitter[1], x + jitter[2]),
                                               (radius * 1.2, radius, radius)), h)
            paint(vol, occ * (1 - chest.lung), FINDING_HU["node"])
    return truth
