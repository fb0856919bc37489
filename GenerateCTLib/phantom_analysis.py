"""Phantom analyzer: detect the phantom findings back from a volume in HU, and adherence statistics.

Used by the demo adherence benchmark on GENERATED volumes, so every rule works on smoothed HU with wide
margins and on coarse grids (33×64×64). The volume is assumed to span the modelled thorax in ``z`` (as
phantoms and models trained on them do): slice ``k`` of ``n`` sits at ``Z = (k / (n - 1) - 0.5) · 300`` mm;
in-plane distances use the geometry's spacing. Rules (smoothed HU, Gaussian σ = max(0.5 voxel, 3 mm);
thresholds in :data:`THRESHOLDS`; ``s`` = body scale = half body width / 165 mm):

1. **Body**: the largest component above −400 HU, holes filled per slice. **Lungs**: the (at most two)
   large components below −500 HU inside the body. **Lung field**: lungs plus their enclosed holes per
   slice, except holes spanning the midline (the mediastinum when the lungs meet around it).
2. **Lung lesions**: components of the lung field at ≥ −550 HU that do not touch tissue outside the field
   (hilar vessels and the chest wall do). With volume ``V``, principal-axis elongation ``e`` (voxel size
   regularised) and peak HU: ``e ≥ 2`` with ``V ≥ 5 s³ mL``, centre below Z = −30 mm and peak ≥ −450 →
   **atelectasis**; else ``V ≥ 16 s³ mL`` → **consolidation**; else ``V ≥ 2.5 mL``, ``e < 2`` and peak
   ≥ −420 → **lung nodule** (counted; equivalent diameters reported).
3. **Pleural effusion** (per side): for columns 0.35–0.8 half-widths lateral on slices Z ∈ [−85, −30] mm,
   the median distance from the most posterior lung-field voxel to the skin minus the lateral chest-wall
   thickness ≥ 24 s mm (dependent fluid pushes the lung forward; a geometric rule, insensitive to blur).
4. **Heart**: soft tissue (> −300 HU) inside the convex hull of the lung fields, outside them, anterior
   to the spine and the body centre, Z ∈ [−70, 20] mm; the widest blob gives the heart width.
   **Pericardial effusion**: fraction of fluid-density voxels (−20…24 HU) in the heart blob (> −60 HU)
   eroded in-plane by ~10 mm, within 30 mm of the widest slice, > 0.15 (myocardium/blood 42–52 HU,
   pericardial fluid 8 HU). **Cardiomegaly**: heart width / internal thoracic width on that slice (the
   body's width minus the thinnest lateral chest walls over the slices with both lungs) (CTR) > 0.57, between
   the largest normal (0.559) and the smallest enlarged heart (0.579) measured on 200 training-split
   phantoms; with a pericardial effusion the heart is measured at > 26 HU (inside the fluid).
5. **Emphysema**: > 5 % of the upper (Z > 0) lung below −945 HU, or the upper lung's 15th HU percentile
   more than 40 HU below the lower lung's (upper-lobe predominant low attenuation, robust to blur).
6. **Lymphadenopathy**: mean HU > −55 in an 8 mm ball at any node station placed relative to the trachea
   (the darkest voxel of a midline band 20–60 mm above the carina) and ``s`` — fat (−100) when normal.

Measurements (CTR, widths, gaps, fractions, station HU, lung lesion components as
``(volume_ml, elongation, z_mm, peak_hu)``, the heart blob's centroid as a ``(z, y, x)`` index) are returned
with the decisions so thresholds can be audited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.phantom_anatomy import Z_HALF_MM, lymph_node_stations
from GenerateCTLib.phantom_findings import LABEL_NAMES, SUPPORTED_FINDINGS

THRESHOLDS = {
    "ctr": 0.57,
    "pericardial_fraction": 0.15,
    "effusion_gap_mm": 24.0,  # × s
    "laa_percent": 5.0,
    "laa_hu": -945.0,
    "upper_minus_lower_p15_hu": -40.0,
    "node_hu": -55.0,
    "elongation": 2.0,
    "consolidation_ml": 16.0,  # × s³
    "atelectasis_ml": 5.0,  # × s³
    "atelectasis_max_z_mm": -30.0,
    "atelectasis_peak_hu": -450.0,
    "nodule_ml": 2.5,
    "nodule_peak_hu": -420.0,
}


def _canonical(volume_hu: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Flip/transpose ``volume_hu`` so that axes run z → S, y → P, x → L; return it and its spacing."""
    direction = np.asarray(geometry.direction, float)
    if not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-3):
        raise ValueError(f"geometry.direction must be axis-aligned for the analyzer, got {geometry.direction!r}")
    # direction[:, j] is the LPS vector of array axis j; we want axes ordered (S, P, L)
    order = [int(np.argmax(np.abs(direction[lps_axis]))) for lps_axis in (2, 1, 0)]
    volume = np.transpose(volume_hu, order)
    spacing = tuple(float(geometry.spacing_mm[j]) for j in order)
    for new_axis, (j, lps_axis) in enumerate(zip(order, (2, 1, 0), strict=True)):
        if direction[lps_axis, j] < 0:
            volume = np.flip(volume, axis=new_axis)
    return np.ascontiguousarray(volume, dtype=np.float32), spacing


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_fill_holes(mask[k])
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def analyze_volume(volume_hu: np.ndarray, geometry: VolumeGeometry) -> dict:
    """Detect the phantom findings in a chest CT volume (rules in the module docstring).

    Args:
        volume_hu: ``(z, y, x)`` HU.
        geometry: its geometry (axis-aligned directions; the in-plane spacing is used).

    Returns:
        ``{"findings": {label: bool for each of SUPPORTED_FINDINGS}, "measurements": {name: float | str}}``.
    """
    volume_hu = np.asarray(volume_hu)
    if volume_hu.ndim != 3 or min(volume_hu.shape) < 4:
        raise ValueError(f"volume_hu must be a 3-D (z, y, x) array, at least 4 voxels per axis, got {volume_hu.shape}")
    if not isinstance(geometry, VolumeGeometry):
        raise ValueError(f"geometry must be a VolumeGeometry, got {type(geometry).__name__}")
    vol, spacing = _canonical(volume_hu, geometry)
    nz, ny, nx = vol.shape
    spacing = (2 * Z_HALF_MM / max(nz - 1, 1), spacing[1], spacing[2])
    sigma = [max(0.5, 3.0 / s) for s in spacing]
    sm = ndimage.gaussian_filter(np.clip(vol, -1000, 1000), sigma)
    zc = ((np.arange(nz) - (nz - 1) / 2) * spacing[0])[:, None, None]
    yc = ((np.arange(ny) - (ny - 1) / 2) * spacing[1])[None, :, None]
    xc = ((np.arange(nx) - (nx - 1) / 2) * spacing[2])[None, None, :]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    m: dict = {}
    found = dict.fromkeys(SUPPORTED_FINDINGS, False)

    # 1. body, lungs, lung field
    body = _fill_slices(_largest(sm > -400))
    mid = np.abs(zc[:, 0, 0]) < 40
    cols = np.nonzero(body[mid].any(axis=(0, 1)))[0]
    half_width = (cols.max() - cols.min() + 1) * spacing[2] / 2 if cols.size else 165.0
    s = float(np.clip(half_width / 165.0, 0.3, 1.5))
    cx = float(xc[0, 0, cols].mean()) if cols.size else 0.0
    rows = np.nonzero(body[mid].any(axis=(0, 2)))[0]
    cy = float(yc[0, rows, 0].mean()) if rows.size else 0.0
    m["body_scale"] = s
    air = (sm < -500) & body
    labels, n = ndimage.label(air)
    sizes = ndimage.sum_labels(air, labels, np.arange(1, n + 1)) if n else np.zeros(0)
    big = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] * voxel_ml >= 50.0 * s**3]
    lungs = np.isin(labels, big)
    left = lungs & (xc > cx)
    right = lungs & (xc <= cx)
    field = lungs.copy()
    ix = int(np.argmin(np.abs(xc[0, 0] - cx)))
    for k in range(nz):  # enclosed holes of the lungs, except the mediastinum (holes spanning the midline)
        holes, count = ndimage.label(ndimage.binary_fill_holes(lungs[k]) & ~lungs[k])
        for index, region in enumerate(ndimage.find_objects(holes), start=1):
            if region is not None and not region[1].start - 1 <= ix <= region[1].stop:
                field[k][region] |= holes[region] == index
    m["lung_volume_ml"] = float(lungs.sum() * voxel_ml)

    # 2. lung lesions
    lesion = field & (sm >= -550) & ~lungs
    lab, n = ndimage.label(lesion, np.ones((3, 3, 3), bool))
    outside = ~field
    touching = np.unique(lab[ndimage.binary_dilation(outside) & (lab > 0)])
    nodules, kinds = [], []
    for index, region in enumerate(ndimage.find_objects(lab), start=1):
        if region is None or index in touching:
            continue
        comp = lab[region] == index
        vol_ml = float(comp.sum() * voxel_ml)
        pts = np.argwhere(comp) * np.asarray(spacing) + [r.start * sp for r, sp in zip(region, spacing, strict=True)]
        cov = (np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))) + np.diag(np.square(spacing)) / 12
        eig = np.sqrt(np.linalg.eigvalsh(cov))
        elongation = float(eig[-1] / eig[0])
        z_mm = float(pts[:, 0].mean() - (nz - 1) / 2 * spacing[0])
        peak = float(sm[region][comp].max())
        m.setdefault("lesion_components", []).append((round(vol_ml, 2), round(elongation, 2), round(z_mm), round(peak)))
        if (elongation >= THRESHOLDS["elongation"] and vol_ml >= THRESHOLDS["atelectasis_ml"] * s**3
                and z_mm < THRESHOLDS["atelectasis_max_z_mm"] and peak >= THRESHOLDS["atelectasis_peak_hu"]):
            kinds.append("atelectasis")
        elif vol_ml >= THRESHOLDS["consolidation_ml"] * s**3:
            kinds.append("consolidation")
        elif (vol_ml >= THRESHOLDS["nodule_ml"] and elongation < THRESHOLDS["elongation"]
              and peak >= THRESHOLDS["nodule_peak_hu"]):
            kinds.append("nodule")
            nodules.append(2 * (3 * vol_ml * 1000 / (4 * np.pi)) ** (1 / 3))
    found["Atelectasis"] = "atelectasis" in kinds
    found["Consolidation"] = "consolidation" in kinds
    found["Lung nodule"] = bool(nodules)
    m["nodule_count"] = len(nodules)
    m["nodule_max_mm"] = float(max(nodules, default=0.0))

    # 3. pleural effusion: dependent fluid between lung and posterior chest wall
    sides = []
    rows_y = yc[0, :, 0]
    for name, sign in (("right", -1.0), ("left", 1.0)):
        gap = _posterior_gap_mm(field, body, zc[:, 0, 0], rows_y, xc[0, 0], cx, sign, half_width)
        m[f"effusion_{name}_gap_mm"] = gap
        if gap >= THRESHOLDS["effusion_gap_mm"] * s:
            sides.append(name)
    found["Pleural effusion"] = bool(sides)
    m["effusion_side"] = "bilateral" if len(sides) == 2 else (sides[0] if sides else "none")

    # 4. heart: soft tissue between the lungs
    bone = (sm > 250) & (np.abs(xc - cx) < 25 * s) & (yc > cy)
    spine_y = float(yc[0, np.nonzero(bone.any(axis=(0, 2)))[0].min(), 0]) if bone.any() else cy + 40 * s
    _analyze_heart(sm, left, right, field, body, zc, yc, xc, cx, spine_y, cy, spacing, m, found)

    # 5. emphysema: low attenuation area of the upper lungs
    upper = lungs & (zc > 0)
    laa = float(100 * (sm[upper] < THRESHOLDS["laa_hu"]).mean()) if upper.any() else 0.0
    m["laa_upper_percent"] = laa
    lower = lungs & (zc < 0)
    if upper.any() and lower.any():
        m["upper_lung_p15_hu"] = float(np.percentile(sm[upper], 15))
        m["upper_minus_lower_p15_hu"] = m["upper_lung_p15_hu"] - float(np.percentile(sm[lower], 15))
        m["upper_p5_minus_median_hu"] = float(np.percentile(sm[upper], 5) - np.median(sm[lungs]))
    found["Emphysema"] = laa > THRESHOLDS["laa_percent"] or (
        m.get("upper_minus_lower_p15_hu", 0.0) < THRESHOLDS["upper_minus_lower_p15_hu"])

    # 6. lymph node stations relative to the trachea
    _analyze_nodes(sm, body, zc, yc, xc, cx, cy, s, spacing, m, found)
    return {"findings": found, "measurements": m}


def _hull_mask(mask2d: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2-D mask (False when it has fewer than 3 non-collinear pixels)."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.argwhere(mask2d)
    if len(points) < 3:
        return np.zeros_like(mask2d)
    try:
        hull = ConvexHull(points)
    except QhullError:
        return np.zeros_like(mask2d)
    grid = np.stack(np.meshgrid(np.arange(mask2d.shape[0]), np.arange(mask2d.shape[1]), indexing="ij"), -1)
    inside = np.all(grid.reshape(-1, 2) @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5, axis=1)
    return inside.reshape(mask2d.shape)


def _posterior_gap_mm(field, body, z, rows_y, cols_x, cx, sign, half_width) -> float:
    """Median extra thickness (mm) of non-lung tissue behind the lung, over the lateral wall thickness.

    For columns of one side (0.35–0.8 of the body half width from the midline) on slices Z in [-85, -30]
    mm: distance from the most posterior lung-field voxel to the posterior skin, minus the lateral chest
    wall thickness (lateral lung edge to skin) of the same slice. Dependent pleural fluid pushes the
    lung forward, so this is ~0 without effusion and grows with its depth; it ignores HU, hence blur.
    """
    offset = sign * (cols_x - cx)
    columns = (offset > 0.35 * half_width) & (offset < 0.8 * half_width)
    extra = []
    for k in np.nonzero((z > -85) & (z < -30))[0]:
        lung_cols = field[k][:, columns]
        body_cols = body[k][:, columns]
        has = lung_cols.any(axis=0) & body_cols.any(axis=0)
        if has.sum() < 2:
            continue
        last_lung = lung_cols.shape[0] - 1 - np.argmax(lung_cols[::-1], axis=0)
        last_body = body_cols.shape[0] - 1 - np.argmax(body_cols[::-1], axis=0)
        posterior = (rows_y[last_body[has]] - rows_y[last_lung[has]])
        side_lung = field[k] & (sign * (cols_x - cx) > 0)[None, :]
        side_body = body[k] & (sign * (cols_x - cx) > 0)[None, :]
        lung_x = cols_x[side_lung.any(axis=0)]
        body_x = cols_x[side_body.any(axis=0)]
        if lung_x.size == 0 or body_x.size == 0:
            continue
        lateral = abs(np.abs(body_x - cx).max() - np.abs(lung_x - cx).max())
        extra.append(float(np.median(posterior)) - lateral)
    return float(np.median(extra)) if extra else 0.0


def _thoracic_width_mm(field, body, k, left, right, cols_x, cx, spacing_x) -> float:
    """Internal thoracic width on slice ``k``: the body's width there minus both lateral chest walls.

    Each wall is the thinnest lateral gap (lung-field edge to skin) over all slices with both lungs: the
    wall is as thick at the heart's level as wherever the lung reaches it, and fluid between the lung and
    the wall (a pleural effusion) does not count. The lung field's own extent, used before, read 6 mm narrow
    on average (partial volume at its edges) and narrower still beside fluid.
    """
    both = np.nonzero(left.any(axis=(1, 2)) & right.any(axis=(1, 2)))[0]
    walls = []
    for sign in (-1.0, 1.0):
        side = sign * (cols_x - cx) > 0
        gaps = []
        for kk in both:
            lung_x = cols_x[field[kk].any(axis=0) & side]
            body_x = cols_x[body[kk].any(axis=0) & side]
            if lung_x.size and body_x.size:
                gaps.append(float(np.abs(body_x - cx).max() - np.abs(lung_x - cx).max()))
        walls.append(min(gaps) if gaps else 0.0)
    cols = np.nonzero(body[k].any(axis=0))[0]
    return max(float((cols.max() - cols.min() + 1) * spacing_x - sum(walls)), 0.0) if cols.size else 0.0


def _analyze_heart(sm, left, right, field, body, zc, yc, xc, cx, spine_y, cy, spacing, m, found) -> None:
    nz = sm.shape[0]
    slices = [k for k in range(nz) if -70 < zc[k, 0, 0] < 20 and left[k].any() and right[k].any()]
    if not slices:
        m.update(ctr=0.0, heart_width_mm=0.0, thoracic_width_mm=0.0, pericardial_fluid_fraction=0.0)
        return
    # the mediastinum: inside the convex hull of both lung fields, outside them, anterior to the spine
    zone = np.zeros(sm.shape, bool)
    for k in slices:
        zone[k] = _hull_mask(field[k]) & ~field[k] & (yc[0] < min(spine_y - 4.0, cy))
    silhouette = zone & (sm > -300) & (sm < 200)
    widths = {}
    for k in slices:
        blob = _largest(silhouette[k])
        cols = np.nonzero(blob.any(axis=0))[0]
        widths[k] = (cols.max() - cols.min() + 1) * spacing[2] if cols.size else 0.0
    k = max(widths, key=widths.get)
    near = (np.abs(zc[:, 0, 0] - zc[k, 0, 0]) <= 30)[:, None, None]
    heart = _largest(silhouette & near & (sm > -60))
    if heart.any():  # (z, y, x) array index of the cardiac silhouette's centre, for placement checks in RAS
        m["heart_centroid_index"] = tuple(float(v) for v in np.argwhere(heart).mean(axis=0))
    core = np.zeros_like(heart)
    steps = max(1, int(round(10.0 / spacing[2])))
    for kk in range(nz):  # in-plane erosion by ~10 mm removes the partial-volume border
        core[kk] = ndimage.binary_erosion(heart[kk], iterations=steps)
    values = sm[core] if core.any() else sm[heart]
    fraction = float(((values > -20) & (values < 24)).mean()) if values.size else 0.0
    m["pericardial_fluid_fraction"] = fraction
    found["Pericardial effusion"] = fraction > THRESHOLDS["pericardial_fraction"]
    width = float(widths[k])
    if found["Pericardial effusion"]:  # measure the heart inside the fluid: the fluid/myocardium mid value
        width = 0.0
        for kk in np.nonzero(near[:, 0, 0])[0]:
            dense = _largest(zone[kk] & (sm[kk] > 26) & (sm[kk] < 200))
            cols = np.nonzero(dense.any(axis=0))[0]
            if cols.size:
                width = max(width, float((cols.max() - cols.min() + 1) * spacing[2]))
    thorax = _thoracic_width_mm(field, body, k, left, right, xc[0, 0], cx, spacing[2])
    m["heart_width_mm"] = width
    m["thoracic_width_mm"] = float(thorax)
    m["ctr"] = float(width / thorax) if thorax else 0.0
    found["Cardiomegaly"] = m["ctr"] > THRESHOLDS["ctr"]


def _analyze_nodes(sm, body, zc, yc, xc, cx, cy, s, spacing, m, found) -> None:
    z = zc[:, 0, 0]
    band = body & (np.abs(xc - cx) < 18 * s) & (yc > cy - 25 * s) & (yc < cy + 45 * s)
    band &= (z[:, None, None] > 65) & (z[:, None, None] < 105)
    points = []
    for k in np.nonzero(band.any(axis=(1, 2)))[0]:
        values = np.where(band[k], sm[k], np.inf)
        iy, ix = np.unravel_index(int(np.argmin(values)), values.shape)
        if values[iy, ix] < -300:
            points.append((yc[0, iy, 0], xc[0, 0, ix]))
    if not points:
        m["trachea_found"] = 0.0
        found["Lymphadenopathy"] = False
        return
    trachea = tuple(float(v) for v in np.median(np.asarray(points), axis=0))
    m["trachea_found"] = 1.0
    m["trachea_y_mm"], m["trachea_x_mm"] = trachea
    positive = []
    radius = 8.0
    for name, (sz, sy, sx) in lymph_node_stations(trachea, s).items():
        rz, rxy = max(radius, spacing[0] * 0.6), max(radius, spacing[1] * 0.6)
        ball = (zc - sz) ** 2 / rz**2 + ((yc - sy) ** 2 + (xc - sx) ** 2) / rxy**2 <= 1
        mean = float(sm[ball].mean()) if ball.any() else -1000.0
        m[f"station_{name.replace(' ', '_')}_hu"] = mean
        m[f"station_{name.replace(' ', '_')}_max_hu"] = float(sm[ball].max()) if ball.any() else -1000.0
        if mean > THRESHOLDS["node_hu"]:
            positive.append(name)
    found["Lymphadenopathy"] = bool(positive)
    m["node_stations"] = ",".join(positive)


def _as_matrix(labels, names: Sequence[str]) -> np.ndarray:
    if isinstance(labels, np.ndarray):
        if labels.ndim != 2 or labels.shape[1] != len(LABEL_NAMES):
            raise ValueError(f"label arrays must be (n, {len(LABEL_NAMES)}) over LABEL_NAMES, got {labels.shape}")
        return labels[:, [LABEL_NAMES.index(name) for name in names]].astype(bool)
    rows = []
    for item in labels:
        if not isinstance(item, Mapping):
            raise ValueError(f"labels must be mappings label -> bool or an (n, 18) array, got {type(item).__name__}")
        item = item.get("findings", item)
        rows.append([bool(item.get(name, False)) for name in names])
    return np.asarray(rows, dtype=bool).reshape(len(rows), len(names))


def adherence(labels_true, labels_pred, labels: Sequence[str] = SUPPORTED_FINDINGS) -> dict:
    """Per-finding sensitivity / specificity and overall agreement between true and predicted labels.

    Args:
        labels_true, labels_pred: sequences of mappings ``label -> bool`` (an :func:`analyze_volume` result
            is accepted), or ``(n, 18)`` 0/1 arrays over :data:`LABEL_NAMES`.
        labels: the findings to score (default: the supported ones).

    Returns:
        ``{"per_finding": {label: {tp, fp, tn, fn, sensitivity, specificity, agreement}},
        "agreement": fraction of (case, finding) pairs that agree, "balanced_accuracy": mean over the findings
        with positive and negative cases of (sensitivity + specificity) / 2, "exact_match": fraction of cases
        with every finding right, "n_cases": n}``. Undefined sensitivity/specificity are ``None``.

    Findings are rare, so ``agreement`` rewards calling everything absent (that scores ``1 - prevalence``);
    ``balanced_accuracy`` is 0.5 for any constant answer and 1 only when every finding is found.
    """
    unknown = [name for name in labels if name not in LABEL_NAMES]
    if unknown:
        raise ValueError(f"labels must be taken from LABEL_NAMES, got {unknown!r}")
    truth, pred = _as_matrix(labels_true, labels), _as_matrix(labels_pred, labels)
    if truth.shape != pred.shape:
        raise ValueError(f"labels_true and labels_pred must have the same length, got {len(truth)} and {len(pred)}")
    per = {}
    for j, name in enumerate(labels):
        t, p = truth[:, j], pred[:, j]
        tp, fn = int((t & p).sum()), int((t & ~p).sum())
        tn, fp = int((~t & ~p).sum()), int((~t & p).sum())
        per[name] = {
            "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "agreement": (tp + tn) / len(t) if len(t) else None,
        }
    agree = truth == pred
    balanced = [(row["sensitivity"] + row["specificity"]) / 2 for row in per.values()
                if row["sensitivity"] is not None and row["specificity"] is not None]
    return {
        "per_finding": per,
        "agreement": float(agree.mean()) if agree.size else float("nan"),
        "balanced_accuracy": float(np.mean(balanced)) if balanced else float("nan"),
        "exact_match": float(agree.all(axis=1).mean()) if len(agree) else float("nan"),
        "n_cases": int(len(truth)),
    }


def degrade_volume(volume_hu: np.ndarray, rng: np.random.Generator, *, blur_sigma_voxels: float = 1.0,
                   noise_hu: float = 30.0, factor: float = 1.5) -> np.ndarray:
    """A blurrier, noisier copy (Gaussian blur, noise, in-plane down/up-sampling) to test analyzer robustness."""
    out = ndimage.gaussian_filter(np.asarray(volume_hu, np.float32), blur_sigma_voxels)
    out = out + noise_hu * rng.standard_normal(out.shape).astype(np.float32)
    if factor > 1:
        small = ndimage.zoom(out, (1, 1 / factor, 1 / factor), order=1)
        out = ndimage.zoom(small, np.asarray(out.shape) / np.asarray(small.shape), order=1)
    return np.clip(out, -1000, 1000).astype(np.float32)
