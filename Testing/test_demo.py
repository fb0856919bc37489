"""The bundled demo model: it loads, generates reproducibly, places anatomy correctly and follows the text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from GenerateCTLib.checkpoints import Bundle
from GenerateCTLib.models import demo_bundle_dir
from GenerateCTLib.phantom_analysis import analyze_volume
from GenerateCTLib.pipeline import GenerateCTPipeline
from GenerateCTLib.slicer_support import ijk_to_ras

DEMO = demo_bundle_dir()
# demo v0.1 is undertrained (issue 4 stays open): it does not yet place the heart or follow "cardiomegaly"
# reliably. strict=True: once a retrained demo passes, these markers must go.
UNDERTRAINED = pytest.mark.xfail(strict=True, reason="demo v0.1 is undertrained; retraining is part of issue 4")


@pytest.fixture(scope="module")
def pipe():
    return GenerateCTPipeline.from_pretrained(DEMO, load_super_resolution=False)


def test_bundle_is_complete_small_and_documented():
    bundle = Bundle(DEMO)
    bundle.verify()
    size_mb = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file()) / 1e6
    assert size_mb <= 40
    assert "not a medical model" in bundle.metadata["description"]
    assert "not for diagnosis" in bundle.metadata["intended_use"]
    training = bundle.metadata["training"]
    assert training["wall_time_s"] > 0 and all("command" in step for step in training["steps"])
    assert bundle.text_encoder_source() == str(DEMO / "text_encoder")


def test_fixed_seed_generation_is_reproducible(pipe):
    a = pipe(age=60, sex="male", impression="No acute cardiopulmonary findings.", seed=11, super_resolve=False)
    b = pipe(age=60, sex="male", impression="No acute cardiopulmonary findings.", seed=11, super_resolve=False)
    assert a.volume_hu.shape == (33, 64, 64)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    # a chest: air outside, lungs, soft tissue and bone
    assert (a.volume_hu < -900).mean() > 0.2 and (a.volume_hu > 200).mean() > 0.002


def _centroid_ras(volume_hu, geometry, low, high):
    k, j, i = np.nonzero((volume_hu > low) & (volume_hu < high))
    # IJK in Slicer order (i = x, j = y, k = z), as the module places the volume
    ijk = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    return (np.asarray(ijk_to_ras(geometry)) @ ijk)[:3].mean(axis=1)


@UNDERTRAINED
def test_heart_anterior_left_and_spine_posterior_in_ras(pipe):
    out = pipe(age=55, sex="female", impression="No acute cardiopulmonary findings.", seed=3, super_resolve=False)
    volume, geometry = out.volume_hu, out.geometry
    mid = volume.shape[0] // 2
    centre = volume[mid - 4 : mid + 5]
    # restrict to the central slab: heart (soft tissue inside the chest) and spine (bone behind it)
    z0 = mid - 4
    shifted = geometry.__class__(
        spacing_mm=geometry.spacing_mm,
        origin_mm=tuple(np.asarray(geometry.ijk_to_lps() @ [z0, 0, 0, 1])[:3]),
        direction=geometry.direction,
    )
    ny, nx = centre.shape[1:]
    heart_region = np.zeros_like(centre)
    box = (slice(None), slice(ny // 4, 2 * ny // 3), slice(nx // 4, 3 * nx // 4))
    heart_region[box] = centre[box]
    heart = _centroid_ras(heart_region, shifted, 0, 150)
    spine = _centroid_ras(centre, shifted, 200, 1001)
    assert heart[0] > spine[0] + 5  # R of RAS is +x: larger = patient's left
    assert heart[1] > spine[1] + 20  # A is +y: heart anterior to the spine


@UNDERTRAINED
def test_cardiomegaly_prompt_gives_a_larger_heart_than_a_normal_one(pipe):
    ctr = {}
    for label, impression in (("normal", "No acute cardiopulmonary findings."), ("cardiomegaly", "Cardiomegaly.")):
        values = []
        for seed in (1, 2, 3):
            out = pipe(age=65, sex="male", impression=impression, seed=seed, super_resolve=False)
            values.append(analyze_volume(out.volume_hu, out.geometry)["measurements"]["ctr"])
        ctr[label] = float(np.mean(values))
    assert ctr["cardiomegaly"] > ctr["normal"] + 0.03, json.dumps(ctr)
