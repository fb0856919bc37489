"""Normal chest anatomy of the procedural phantom: a parametric model in millimetres and its HU rendering.

Patient coordinates used here (mm, origin at the volume centre): ``X`` to the patient's LEFT, ``Y``
POSTERIOR, ``Z`` SUPERIOR, i.e. LPS. With the default geometry the array axes ``(z, y, x)`` run along
``(Z, Y, X)`` (slice index increases towards the head, row index posteriorly, column index to the
patient's left: the standard radiological axial display).

Every structure is an analytic shape (ellipse, ellipsoid, tube along a polyline) rendered with a
partial-volume occupancy in [0, 1], so the same anatomy renders consistently on a 9×32×32 grid and on
a 201×128×128 grid. Sizes scale with a body factor ``scale`` (1 = adult male; children and women are
smaller). The thorax always spans the same ``Z`` range (±150 mm by default), as CT-RATE volumes are
resampled to a fixed slice count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

# Tissue values in HU.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "skin": 20.0,
    "lung": -850.0,
    "vessel": 40.0,
    "myocardium": 42.0,
    "blood": 52.0,
    "liver": 62.0,
    "spleen": 52.0,
    "abdomen": 45.0,
    "trabecular": 250.0,
    "cortical": 700.0,
    "rib": 600.0,
    "disc": 90.0,
    "canal": 15.0,
    "airway_wall": 40.0,
}
Z_HALF_MM = 150.0  # half height of the modelled thorax (201 slices × 1.5 mm)
FOV_MM = 384.0  # nominal in-plane field of view (the pipeline's 3.0 mm × 128)


@dataclasses.dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates in mm of a ``(z, y, x)`` grid centred on the origin (LPS, see module)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]

    @property
    def z(self) -> np.ndarray:  # (nz, 1, 1) superior
        return _axis(self.shape[0], self.spacing_mm[0])[:, None, None]

    @property
    def y(self) -> np.ndarray:  # (1, ny, 1) posterior
        return _axis(self.shape[1], self.spacing_mm[1])[None, :, None]

    @property
    def x(self) -> np.ndarray:  # (1, 1, nx) left
        return _axis(self.shape[2], self.spacing_mm[2])[None, None, :]

    @property
    def voxel_mm(self) -> float:
        """Edge of a cube with the voxel's volume: the partial-volume blur width."""
        return float(np.prod(self.spacing_mm) ** (1 / 3))

    def index_of(self, point_mm: tuple[float, float, float]) -> np.ndarray:
        """Fractional array index ``(kz, ky, kx)`` of an LPS point given as ``(Z, Y, X)`` mm."""
        shape, spacing = np.asarray(self.shape, float), np.asarray(self.spacing_mm, float)
        return np.asarray(point_mm, float) / spacing + (shape - 1) / 2


def _axis(n: int, spacing: float) -> np.ndarray:
    return ((np.arange(n) - (n - 1) / 2) * spacing).astype(np.float32)


def default_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """``(z, y, x)`` spacing in mm: the thorax height over the slices, the 384 mm field of view in-plane."""
    nz = shape[0]
    return (2 * Z_HALF_MM / max(nz - 1, 1), FOV_MM / shape[1], FOV_MM / shape[2])


def occupancy(signed_distance_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a shape from a signed distance (negative inside) in mm."""
    return np.clip(0.5 - signed_distance_mm / voxel_mm, 0.0, 1.0).astype(np.float32)


def ellipsoid_distance(grid: Grid, centre, semi_axes, angle_rad: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid ``centre=(Z, Y, X)``, ``semi_axes=(c, b, a)``.

    ``angle_rad`` rotates the in-plane axes (a along X, b along Y) towards +Y (posterior) from +X.
    """
    cz, cy, cx = centre
    c, b, a = semi_axes
    dz, dy, dx = grid.z - cz, grid.y - cy, grid.x - cx
    if angle_rad:
        cos, sin = np.cos(angle_rad), np.sin(angle_rad)
        dx, dy = dx * cos + dy * sin, -dx * sin + dy * cos
    radius = np.sqrt((dx / a) ** 2 + (dy / b) ** 2 + (dz / c) ** 2)
    return (radius - 1.0) * min(a, b, c)


def paint(volume: np.ndarray, occ: np.ndarray, value_hu: float | np.ndarray) -> None:
    """Blend ``value_hu`` into ``volume`` in place with weight ``occ`` (partial volume)."""
    volume += occ * (value_hu - volume)


def render_tubes(grid: Grid, polylines, radii_mm, *, peak_scale: bool = False) -> np.ndarray:
    """Occupancy (z, y, x) of tubes along polylines of ``(Z, Y, X)`` mm points, max-combined.

    Each segment is evaluated inside its bounding box only. With ``peak_scale`` a tube thinner than a
    voxel gets its cross-section fraction as peak occupancy (thin vessels fade instead of aliasing).
    """
    out = np.zeros(grid.shape, np.float32)
    spacing = np.asarray(grid.spacing_mm, float)
    h = grid.voxel_mm
    inplane = float(np.sqrt(spacing[1] * spacing[2]))
    axes = [_axis(n, s) for n, s in zip(grid.shape, grid.spacing_mm, strict=True)]
    for points, radius in zip(polylines, radii_mm, strict=True):
        points = np.asarray(points, float)
        peak = min(1.0, np.pi * radius**2 / inplane**2) if peak_scale else 1.0
        for p0, p1 in zip(points[:-1], points[1:], strict=True):
            lo = np.minimum(p0, p1) - radius - h
            hi = np.maximum(p0, p1) + radius + h
            sl = []
            for ax, a_lo, a_hi in zip(axes, lo, hi, strict=True):
                i0, i1 = np.searchsorted(ax, a_lo), np.searchsorted(ax, a_hi)
                sl.append(slice(i0, i1))
            if any(s.stop <= s.start for s in sl):
                continue
            zz, yy, xx = axes[0][sl[0]][:, None, None], axes[1][sl[1]][None, :, None], axes[2][sl[2]][None, None, :]
            d = p1 - p0
            length2 = float(d @ d) or 1e-9
            t = np.clip(((zz - p0[0]) * d[0] + (yy - p0[1]) * d[1] + (xx - p0[2]) * d[2]) / length2, 0, 1)
            dist = np.sqrt((zz - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 + (xx - p0[2] - t * d[2]) ** 2)
            occ = np.clip(0.5 + (radius - dist) / h, 0, 1) * peak
            region = out[tuple(sl)]
            np.maximum(region, occ, out=region)
    return out


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Parameters of one normal chest, all in mm (LPS, see the module docstring)."""

    scale: float  # body size factor, 1 = adult male
    body_a: float  # body half-width (X)
    body_b: float  # body half-depth (Y)
    fat_mm: float
    muscle_mm: float
    cav_a: float  # thoracic cavity half-width (inner rib margin)
    cav_b: float  # thoracic cavity half-depth
    cav_y: float  # cavity centre (Y)
    spine_y: float  # vertebral body centre (Y)
    spine_r: float
    trachea: tuple[float, float]  # (Y, X) of the trachea above the carina
    trachea_r: float
    carina_z: float
    apex_z: float
    dome_z: tuple[float, float]  # (right, left) diaphragm dome tops
    heart_centre: tuple[float, float, float]  # (Z, Y, X)
    heart_ctr: float  # cardiothoracic ratio of the normal heart
    heart_angle: float  # in-plane rotation (rad), long axis towards left-anterior

    @property
    def thoracic_width_mm(self) -> float:
        """Internal thoracic width (inner rib margin to inner rib margin) at the heart level."""
        return 2 * self.cav_a


def body_scale(age: int, sex: str) -> float:
    """Body size factor: 1 for an adult male, 0.9 for an adult female, smaller for children."""
    growth = 0.55 + 0.45 * min(max(age, 0), 18) / 18
    return growth * (1.0 if sex == "male" else 0.9)


def build_anatomy(age: int, sex: str, rng: np.random.Generator) -> Anatomy:
    """Draw one normal chest for ``age`` (years) and ``sex`` (``male``/``female``)."""
    s = body_scale(age, sex) * rng.uniform(0.95, 1.05)
    adult = age >= 18
    body_a = 165.0 * s * (1.0 if sex == "male" else 0.96)
    body_b = 112.0 * s * rng.uniform(0.96, 1.04)
    fat = (rng.uniform(10, 18) if sex == "male" else rng.uniform(14, 24)) * (1.0 if adult else 0.6) * s
    muscle = rng.uniform(8, 12) * s
    cav_a = body_a - fat - muscle - 6 * s
    cav_b = body_b - fat - muscle - 6 * s
    cav_y = 0.04 * body_b
    spine_r = 17.0 * s
    spine_y = cav_y + 0.52 * cav_b + spine_r
    trachea_r = 9.0 + 2.0 * s
    trachea = (spine_y - spine_r - 16.0 * s - trachea_r, -2.0 * s)
    heart = ((-36.0 + rng.uniform(-4, 4)), cav_y - 0.25 * cav_b, 0.17 * cav_a)
    return Anatomy(
        scale=s,
        body_a=body_a,
        body_b=body_b,
        fat_mm=fat,
        muscle_mm=muscle,
        cav_a=cav_a,
        cav_b=cav_b,
        cav_y=cav_y,
        spine_y=spine_y,
        spine_r=spine_r,
        trachea=trachea,
        trachea_r=trachea_r,
        carina_z=45.0,
        apex_z=135.0,
        dome_z=(-92.0 + rng.uniform(-4, 4), -104.0 + rng.uniform(-4, 4)),
        heart_centre=heart,
        heart_ctr=float(rng.uniform(0.41, 0.47)),
        heart_angle=np.deg2rad(rng.uniform(-18, -10)),
    )


def heart_semi_axes(anat: Anatomy, ctr: float | None = None) -> tuple[float, float, float]:
    """Heart ellipsoid ``(c, b, a)`` mm whose X extent gives cardiothoracic ratio ``ctr``.

    ``None`` gives the normal heart of ``anat``. An enlarged heart grows mostly transversely.
    """
    normal_ctr = anat.heart_ctr
    ctr = normal_ctr if ctr is None else ctr
    grow = 1 + 0.35 * (ctr / normal_ctr - 1)
    c, ratio = 48.0 * anat.scale**0.5 * grow, 0.62 * grow / (ctr / normal_ctr)
    a = ctr * anat.cav_a
    for _ in range(4):  # rescale so that the rotated ellipse spans exactly ctr * cavity width
        a *= ctr * anat.cav_a / heart_x_extent((c, ratio * a, a), anat.heart_angle)
    return c, ratio * a, a


def heart_x_extent(semi: tuple[float, float, float], angle: float) -> float:
    """Half extent along X of the rotated in-plane heart ellipse."""
    _, b, a = semi
    return float(np.sqrt((a * np.cos(angle)) ** 2 + (b * np.sin(angle)) ** 2))


def cavity_distance(anat: Anatomy, grid: Grid) -> np.ndarray:
    """Signed distance (mm) to the thoracic cavity: an elliptic cylinder tapering to the apices."""
    taper_z = anat.apex_z - 70.0
    g = np.sqrt(np.clip(1 - ((grid.z - taper_z) / (anat.apex_z - taper_z)) ** 2, 0.0, 1.0))
    g = np.where(grid.z < taper_z, 1.0, g)
    g = np.maximum(g, 1e-3)
    r = np.sqrt((grid.x / (anat.cav_a * g)) ** 2 + ((grid.y - anat.cav_y) / (anat.cav_b * (0.6 + 0.4 * g))) ** 2)
    return (r - 1.0) * anat.cav_a * g


def diaphragm_z(anat: Anatomy, grid: Grid) -> np.ndarray:
    """Height (Z mm) of the diaphragm under each (Y, X): two domes, lower posteriorly (recesses)."""
    ry = (grid.y - anat.cav_y) / anat.cav_b
    right = anat.dome_z[0] - 45.0 * ((grid.x + 0.45 * anat.cav_a) / anat.cav_a) ** 2
    left = anat.dome_z[1] - 45.0 * ((grid.x - 0.45 * anat.cav_a) / anat.cav_a) ** 2
    return np.maximum(right, left) - 30.0 * np.clip(ry + 0.1, 0, None) ** 2 - 10.0 * ry


def great_vessel_lines(anat: Anatomy) -> dict[str, tuple[list, float]]:
    """Mediastinal tubes as ``name -> (polyline of (Z, Y, X) mm, radius mm)``."""
    s = anat.scale
    ty, tx = anat.trachea
    hz, hy, hx = anat.heart_centre
    top = Z_HALF_MM + 10
    arch_z = anat.carina_z + 32.0
    desc_y, desc_x = anat.spine_y - anat.spine_r - 4.0 * s, 26.0 * s
    asc = (hy - 6 * s, hx - 30 * s)
    arch = [(arch_z - 12, asc[0], asc[1])]
    for t in np.linspace(0, 1, 7)[1:]:
        arch.append((arch_z + 10 * np.sin(np.pi * t), asc[0] + (desc_y - asc[0]) * t, asc[1] + (desc_x - asc[1]) * t))
    lines = {
        "ascending_aorta": ([(hz + 20, hy, hx - 20 * s), (arch_z - 12, *asc)], 14.0 * s),
        "aortic_arch": (arch, 12.5 * s),
        "descending_aorta": ([(arch_z, desc_y, desc_x), (-Z_HALF_MM - 10, desc_y, desc_x - 14 * s)], 12.0 * s),
        "svc": ([(top, ty - 27 * s, tx - 44 * s), (hz + 25, ty - 27 * s, tx - 40 * s)], 10.0 * s),
        "brachiocephalic": ([(arch_z, asc[0] + 12 * s, asc[1] + 6 * s), (top, ty - 12 * s, tx - 24 * s)], 6.0 * s),
        "left_carotid": ([(arch_z + 8, ty - 12 * s, tx + 10 * s), (top, ty - 14 * s, tx + 14 * s)], 4.5 * s),
        "left_subclavian": ([(arch_z + 6, desc_y - 6 * s, desc_x), (top, ty - 4 * s, tx + 40 * s)], 5.0 * s),
        "pulmonary_trunk": ([(hz + 25, hy - 10 * s, hx), (anat.carina_z - 8, ty - 24 * s, tx + 10 * s)], 12.0 * s),
        "right_pa": ([(anat.carina_z - 8, ty - 24 * s, tx + 10 * s), (anat.carina_z - 18, ty - 6 * s, -58 * s)],
                     9.0 * s),
        "left_pa": ([(anat.carina_z - 8, ty - 24 * s, tx + 10 * s), (anat.carina_z - 4, ty + 2 * s, 58 * s)], 9.0 * s),
        "esophagus": ([(top, ty + anat.trachea_r + 8 * s, tx + 6 * s), (-20, ty + anat.trachea_r + 10 * s, 10 * s),
                       (-Z_HALF_MM - 10, ty + anat.trachea_r + 4 * s, 30 * s)], 8.0 * s),
    }
    return lines


def airway_lines(anat: Anatomy) -> dict[str, tuple[list, float]]:
    """Trachea and main bronchi (air lumen) as ``name -> (polyline, radius mm)``."""
    s = anat.scale
    ty, tx = anat.trachea
    cz = anat.carina_z
    return {
        "trachea": ([(Z_HALF_MM + 10, ty, tx), (cz, ty, tx)], anat.trachea_r),
        "right_bronchus": ([(cz, ty, tx), (cz - 24, ty + 6 * s, -42 * s)], 0.7 * anat.trachea_r),
        "left_bronchus": ([(cz, ty, tx), (cz - 36, ty + 10 * s, 44 * s)], 0.65 * anat.trachea_r),
    }


def lymph_node_stations(trachea_yx: tuple[float, float], scale: float, carina_z: float = 45.0) -> dict:
    """Centres ``(Z, Y, X)`` mm of the mediastinal node stations, from the trachea position and body scale.

    Shared by the generator (where enlarged nodes go) and the analyzer (where it samples HU).
    """
    ty, tx = trachea_yx
    s = scale
    return {
        "right paratracheal": (carina_z + 28.0, ty - 8.0 * s, tx - 30.0 * s),
        "subcarinal": (carina_z - 14.0, ty + 2.0 * s, tx + 4.0 * s),
        "prevascular": (carina_z + 12.0, ty - 68.0 * s, tx - 2.0 * s),
    }


def mediastinum_distance(anat: Anatomy, grid: Grid, heart_semi, pericardial_mm: float) -> np.ndarray:
    """Signed distance (mm) to the mediastinum: a central band plus every structure with a fat margin."""
    s = anat.scale
    ty, tx = anat.trachea
    band_half = np.where(grid.z > anat.carina_z, 12.0, 15.0) * s
    dist = np.abs(grid.x - 4.0 * s) - band_half
    dist = np.broadcast_to(dist, grid.shape).copy()
    # only between the sternum and the spine
    heart = ellipsoid_distance(grid, anat.heart_centre, heart_semi, anat.heart_angle) - pericardial_mm - 2.0 * s
    np.minimum(dist, heart, out=dist)
    for name, (line, radius) in {**great_vessel_lines(anat), **airway_lines(anat)}.items():
        margin = 6.0 * s if name != "esophagus" else 4.0 * s
        occ_like = _polyline_distance(grid, line) - radius - margin
        np.minimum(dist, occ_like, out=dist)
    for centre in lymph_node_stations((ty, tx), s, anat.carina_z).values():
        ball = np.sqrt((grid.z - centre[0]) ** 2 + (grid.y - centre[1]) ** 2 + (grid.x - centre[2]) ** 2) - 21.0 * s
        np.minimum(dist, ball, out=dist)
    return dist


def _polyline_distance(grid: Grid, line) -> np.ndarray:
    """Unsigned distance (mm) to a polyline (evaluated on a coarse version of the grid, then upsampled)."""
    pts = np.asarray(line, float)
    best = None
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        d = p1 - p0
        length2 = float(d @ d) or 1e-9
        t = np.clip(((grid.z - p0[0]) * d[0] + (grid.y - p0[1]) * d[1] + (grid.x - p0[2]) * d[2]) / length2, 0, 1)
        dist = np.sqrt((grid.z - p0[0] - t * d[0]) ** 2 + (grid.y - p0[1] - t * d[1]) ** 2
                       + (grid.x - p0[2] - t * d[2]) ** 2)
        best = dist if best is None else np.minimum(best, dist)
    return best


def lung_region(anat: Anatomy, grid: Grid, heart_semi, pericardial_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Lung occupancy (z, y, x) in [0, 1] and the side map (-1 right, +1 left) of the normal chest."""
    h = grid.voxel_mm
    cav = cavity_distance(anat, grid)
    med = mediastinum_distance(anat, grid, heart_semi, pericardial_mm)
    spine = np.sqrt((grid.x / (anat.spine_r + 6 * anat.scale)) ** 2
                    + ((grid.y - anat.spine_y) / (anat.spine_r + 8 * anat.scale)) ** 2) - 1
    spine = spine * anat.spine_r
    below = diaphragm_z(anat, grid) - grid.z  # > 0 below the diaphragm
    apex = grid.z - anat.apex_z
    dist = np.maximum.reduce([np.broadcast_to(cav, grid.shape), -med, np.broadcast_to(-spine, grid.shape),
                              np.broadcast_to(below, grid.shape), np.broadcast_to(apex, grid.shape)])
    side = np.where(grid.x < 4.0 * anat.scale, -1, 1).astype(np.int8)
    return occupancy(dist, h), np.broadcast_to(side, grid.shape)


def lobe_map(anat: Anatomy, grid: Grid) -> np.ndarray:
    """Lobe index per voxel: 0 RUL, 1 RML, 2 RLL, 3 LUL, 4 LLL (meaningful inside the lungs only)."""
    fissure_z = -15.0 + 0.95 * (grid.y - anat.cav_y)  # oblique fissure: posterior-high, anterior-low
    lower = grid.z < fissure_z
    right = grid.x < 4.0 * anat.scale
    middle = grid.z < -5.0
    lobes = np.where(right, np.where(lower, 2, np.where(middle, 1, 0)), np.where(lower, 4, 3))
    return np.broadcast_to(lobes, grid.shape).astype(np.int8)


LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")


def smooth_field(shape, spacing_mm, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma_mm``."""
    field = rng.standard_normal(shape).astype(np.float32)
    sigma = [max(sigma_mm / s, 0.3) for s in spacing_mm]
    field = ndimage.gaussian_filter(field, sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def vessel_tree(anat: Anatomy, rng: np.random.Generator) -> tuple[list, list]:
    """Pulmonary vessels: branching segments from each hilum towards the lobes, as (polylines, radii).

    Branch ends are kept inside the lungs (checked on a coarse 8 mm mask of the normal chest).
    """
    s = anat.scale
    ty, _ = anat.trachea
    coarse = Grid((38, 48, 48), (8.0, 8.0, 8.0))
    inside_mask = lung_region(anat, coarse, heart_semi_axes(anat), 0.0)[0] > 0.5

    def inside(point) -> bool:
        k = np.rint(coarse.index_of(point)).astype(int)
        return bool(np.all((k >= 0) & (k < coarse.shape)) and inside_mask[tuple(k)])

    lines, radii = [], []
    for side in (-1.0, 1.0):
        hilum = np.array([anat.carina_z - 14.0, ty + 2 * s, side * 58.0 * s])
        targets = [
            (110.0, anat.cav_y, side * 0.55 * anat.cav_a),
            (-75.0, anat.cav_y + 0.45 * anat.cav_b, side * 0.6 * anat.cav_a),
            (-25.0, anat.cav_y - 0.5 * anat.cav_b, side * 0.65 * anat.cav_a),
            (40.0, anat.cav_y + 0.5 * anat.cav_b, side * 0.55 * anat.cav_a),
            (70.0, anat.cav_y - 0.45 * anat.cav_b, side * 0.5 * anat.cav_a),
            (-10.0, anat.cav_y + 0.1 * anat.cav_b, side * 0.85 * anat.cav_a),
            (-60.0, anat.cav_y - 0.2 * anat.cav_b, side * 0.6 * anat.cav_a),
        ]
        stack = [(hilum, np.asarray(t, float), 0) for t in targets]
        while stack:
            start, target, generation = stack.pop()
            length = (50.0, 40.0, 32.0, 25.0, 18.0, 13.0)[generation] * s * rng.uniform(0.8, 1.2)
            radius = (4.6, 3.4, 2.5, 1.9, 1.4, 1.0)[generation] * s**0.5
            for _ in range(4):
                aim = target + rng.normal(0, 30.0 * s, 3) - start
                end = start + aim / max(np.linalg.norm(aim), 1e-6) * length
                if generation == 0 or inside(end):
                    break
            else:
                continue
            lines.append([tuple(start), tuple(end)])
            radii.append(radius)
            if generation < 5:
                for _ in range(2):
                    stack.append((end, end + (target - start) * 0.5 + rng.normal(0, 40.0 * s, 3), generation + 1))
    return lines, radii


@dataclasses.dataclass
class ChestRender:
    """A rendered normal chest: ``volume_hu`` and the occupancies the findings need, all (z, y, x)."""

    volume_hu: np.ndarray
    lung: np.ndarray  # lung occupancy in [0, 1]
    side: np.ndarray  # -1 right, +1 left
    lobes: np.ndarray
    body: np.ndarray  # body occupancy
    heart: np.ndarray  # heart occupancy (myocardium + blood)
    pericardium: np.ndarray  # pericardial fluid occupancy (0 without effusion)


def render_chest(
    anat: Anatomy,
    grid: Grid,
    rng: np.random.Generator,
    *,
    heart_semi: tuple[float, float, float],
    pericardial_mm: float = 0.0,
    pericardial_hu: float = 8.0,
) -> ChestRender:
    """Render the normal chest in HU (before findings and noise), with an optional pericardial rim."""
    s, h = anat.scale, grid.voxel_mm
    shape = grid.shape
    vol = np.full(shape, HU["air"], np.float32)
    # 1. body wall: skin/fat, muscle
    superellipse = (np.abs(grid.x / anat.body_a) ** 2.3 + np.abs((grid.y - 0.03 * anat.body_b) / anat.body_b) ** 2.3)
    body_dist = (superellipse ** (1 / 2.3) - 1) * anat.body_b
    body = np.broadcast_to(occupancy(body_dist, h), shape)
    paint(vol, body, HU["fat"])
    inner_a, inner_b = anat.body_a - anat.fat_mm, anat.body_b - anat.fat_mm
    muscle_dist = (np.sqrt((grid.x / inner_a) ** 2 + ((grid.y - anat.cav_y) / inner_b) ** 2) - 1) * inner_b
    paint(vol, np.broadcast_to(occupancy(muscle_dist, h), shape), HU["muscle"])
    for side in (-1, 1):  # paraspinal muscles
        d = ellipsoid_distance(grid, (0.0, anat.spine_y + 38 * s, side * 32 * s), (1e4, 26 * s, 30 * s))
        paint(vol, occupancy(d, h), HU["muscle"])
    cav = cavity_distance(anat, grid)
    cavity = np.broadcast_to(occupancy(cav, h), shape)
    paint(vol, cavity, HU["fat"])
    # 2. abdomen below the diaphragm: liver (right), spleen (left posterior), soft tissue
    below = np.broadcast_to(occupancy(grid.z - diaphragm_z(anat, grid) + 4, h), shape) * cavity
    paint(vol, below, HU["abdomen"])
    liver = below * occupancy(grid.x - 0.2 * anat.cav_a, 3 * h)
    paint(vol, liver, HU["liver"])
    spleen = occupancy(ellipsoid_distance(grid, (-115.0, anat.cav_y + 0.45 * anat.cav_b, 0.65 * anat.cav_a),
                                          (45.0, 30 * s, 28 * s)), h) * below
    paint(vol, spleen, HU["spleen"])
    # 3. lungs with texture (parenchyma density rises posteriorly: gravity) and vessels
    lung, side = lung_region(anat, grid, heart_semi, pericardial_mm)
    texture = smooth_field(shape, grid.spacing_mm, 8.0, rng) * 10.0 + 15.0 * (grid.y - anat.cav_y) / anat.cav_b
    paint(vol, lung, HU["lung"] + texture)
    lines, radii = vessel_tree(anat, rng)
    vessels = render_tubes(grid, lines, radii, peak_scale=True) * lung
    paint(vol, vessels, HU["vessel"])
    # 4. mediastinum: great vessels, esophagus, heart (with optional pericardial fluid), airways
    tubes = great_vessel_lines(anat)
    occ = render_tubes(grid, [v[0] for v in tubes.values()], [v[1] for v in tubes.values()])
    paint(vol, occ, HU["blood"])
    heart_dist = ellipsoid_distance(grid, anat.heart_centre, heart_semi, anat.heart_angle)
    pericardium = np.zeros(shape, np.float32)
    if pericardial_mm > 0:
        c, b, a = heart_semi  # the rim is thinner above and below the heart
        rim_semi = (c + 0.4 * pericardial_mm, b + pericardial_mm, a + pericardial_mm)
        rim = ellipsoid_distance(grid, anat.heart_centre, rim_semi, anat.heart_angle)
        pericardium = occupancy(rim, h)
        paint(vol, pericardium, pericardial_hu)
    heart = occupancy(heart_dist, h)
    paint(vol, heart, HU["myocardium"])
    pool = ellipsoid_distance(grid, anat.heart_centre, tuple(0.72 * a for a in heart_semi), anat.heart_angle)
    paint(vol, occupancy(pool, h), HU["blood"])
    pericardium = np.clip(pericardium - heart, 0, 1)
    airways = airway_lines(anat)
    lines_a = [v[0] for v in airways.values()]
    paint(vol, render_tubes(grid, lines_a, [v[1] + 2.0 * s for v in airways.values()]), HU["airway_wall"])
    paint(vol, render_tubes(grid, lines_a, [v[1] for v in airways.values()]), HU["air"])
    # 5. bones: vertebral bodies with discs, posterior elements, ribs, sternum
    _render_bones(anat, grid, vol)
    return ChestRender(vol, lung, side, lobe_map(anat, grid), body, heart, pericardium)


def _render_bones(anat: Anatomy, grid: Grid, vol: np.ndarray) -> None:
    s, h, shape = anat.scale, grid.voxel_mm, grid.shape
    radial = np.sqrt(grid.x**2 + (grid.y - anat.spine_y) ** 2) - anat.spine_r
    level = np.mod(grid.z + 7.0, 27.0 * s**0.5)
    disc = np.broadcast_to(occupancy(np.abs(level - 2.5) - 2.5, h), shape)
    vertebra = np.broadcast_to(occupancy(radial, h), shape)
    paint(vol, vertebra, HU["cortical"])
    paint(vol, np.broadcast_to(occupancy(radial + 2.5 * s, h), shape), HU["trabecular"])
    paint(vol, vertebra * disc, HU["disc"])
    canal_y = anat.spine_y + anat.spine_r + 10 * s
    ring = np.sqrt(grid.x**2 + (grid.y - canal_y) ** 2)
    paint(vol, np.broadcast_to(occupancy(ring - 14 * s, h), shape), HU["rib"])
    spinous = np.maximum(np.abs(grid.x) - 5 * s, np.abs(grid.y - canal_y - 26 * s) - 16 * s)
    paint(vol, np.broadcast_to(occupancy(spinous, h), shape), HU["rib"])
    paint(vol, np.broadcast_to(occupancy(ring - 8 * s, h), shape), HU["canal"])
    # ribs: bands around the cavity, sloping down anteriorly, 12 per side
    ra, rb = anat.cav_a + 7 * s, anat.cav_b + 7 * s
    rho = np.sqrt((grid.x / ra) ** 2 + ((grid.y - anat.cav_y) / rb) ** 2)
    radial_d = np.abs(rho - 1) * rb - 4.5 * s
    theta = np.arctan2(np.abs(grid.x), grid.y - anat.cav_y) / np.pi  # 0 posterior, 1 anterior
    ribs = np.zeros(shape, np.float32)
    for k in range(12):
        z0 = anat.apex_z + 40.0 - 24.0 * k
        dz = np.abs(grid.z - (z0 - 100.0 * theta)) - 5.5 * s
        occ = occupancy(np.maximum(np.maximum(radial_d, dz), theta - 0.82), h)
        np.maximum(ribs, occ, out=ribs)
    paint(vol, ribs, HU["rib"])
    sternum_y = anat.cav_y - anat.cav_b - 7 * s
    sternum = np.maximum.reduce([np.broadcast_to(d, grid.shape) for d in (
        np.abs(grid.x) - 14 * s, np.abs(grid.y - sternum_y) - 6 * s, np.abs(grid.z - 10.0) - 100.0)])
    paint(vol, occupancy(sternum, h), 450.0)
