"""Placing a volume with the module's IJK→RAS (slicer_support.ijk_to_ras) puts the anatomy where it belongs."""

import numpy as np
import pytest

from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.slicer_support import ijk_to_ras, ras_of_index


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)  # (z, y, x) index


def test_phantom_heart_is_anterior_left_of_the_spine_in_ras():
    phantom_module = pytest.importorskip("GenerateCTLib.phantom")
    from GenerateCTLib.phantom_findings import PhantomSpec

    phantom = phantom_module.generate_phantom(PhantomSpec(65, "male"), shape=(17, 64, 64), rng=0, noise_sigma_hu=0)
    volume, matrix = phantom.volume_hu, ijk_to_ras(phantom.geometry)
    heart = ras_of_index(matrix, _centroid(phantom.masks["heart"]))
    # spine: bone near the midline, in the back half of the body (the sternum is in the front half)
    z, y, x = np.indices(volume.shape)
    body = np.argwhere(phantom.masks["body"])
    back = y > (body[:, 1].min() + body[:, 1].max()) / 2
    midline = np.abs(x - (volume.shape[2] - 1) / 2) < volume.shape[2] * 0.06
    spine = ras_of_index(matrix, _centroid((volume > 250) & back & midline))
    assert heart[1] > spine[1] + 20, (heart, spine)  # anterior: larger A
    assert heart[0] < spine[0], (heart, spine)  # left: smaller R


@pytest.mark.parametrize("direction", [
    ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # the pipeline's: z → S, y → P, x → L
    ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0)),  # flipped in-plane axes: z → S, y → A, x → R
])
def test_blob_placed_anterior_left_lands_anterior_left_in_ras(direction):
    shape, spacing = (9, 40, 40), (2.0, 1.0, 1.5)
    centre_mm = np.asarray(direction) @ ((np.asarray(shape) - 1) / 2 * np.asarray(spacing))
    geometry = VolumeGeometry(spacing_mm=spacing, origin_mm=tuple(-centre_mm + [3.0, -2.0, 5.0]), direction=direction)
    ijk_to_lps = geometry.ijk_to_lps()
    # choose array indices whose LPS positions are the heart (anterior-left) and spine (posterior-midline)
    centre = np.linalg.solve(ijk_to_lps[:3, :3], [3.0, -2.0, 5.0] - ijk_to_lps[:3, 3])  # index of the body centre
    lps_to_index = np.linalg.inv(ijk_to_lps[:3, :3])
    heart_index = centre + lps_to_index @ np.array([8.0, -6.0, 0.0])  # L 8 mm, A 6 mm (LPS y = -6)
    spine_index = centre + lps_to_index @ np.array([0.0, 8.0, 0.0])  # P 8 mm
    volume = np.zeros(shape, np.float32)
    for index, value in ((heart_index, 40.0), (spine_index, 700.0)):
        lo = np.floor(index).astype(int)
        volume[lo[0]:lo[0] + 2, lo[1]:lo[1] + 2, lo[2]:lo[2] + 2] = value
    matrix = ijk_to_ras(geometry)
    heart = ras_of_index(matrix, _centroid(volume == 40.0))
    spine = ras_of_index(matrix, _centroid(volume == 700.0))
    assert heart[1] > spine[1] and heart[0] < spine[0]


def test_ijk_to_ras_matches_lps_with_reversed_axes():
    geometry = VolumeGeometry(spacing_mm=(1.5, 0.75, 0.5), origin_mm=(-100.0, 50.0, 20.0))
    matrix = ijk_to_ras(geometry)
    for zyx in ((0, 0, 0), (3, 7, 11), (200, 511, 0)):
        lps = (geometry.ijk_to_lps() @ np.array([*zyx, 1.0]))[:3]
        np.testing.assert_allclose(ras_of_index(matrix, zyx), lps * [-1, -1, 1])
    np.testing.assert_allclose(np.linalg.norm(matrix[:3, :3], axis=0), [0.5, 0.75, 1.5])  # i=x, j=y, k=z spacing
