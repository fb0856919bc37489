"""The bundled demo model: it loads, generates reproducibly, places anatomy correctly and follows the text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from GenerateCTLib.checkpoints import Bundle
from GenerateCTLib.models import demo_bundle_dir
from GenerateCTLib.phantom import generate_phantom
from GenerateCTLib.phantom_analysis import analyze_volume
from GenerateCTLib.phantom_findings import PhantomSpec
from GenerateCTLib.pipeline import GenerateCTPipeline
from GenerateCTLib.slicer_support import ijk_to_ras

DEMO = demo_bundle_dir()
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


def _heart_and_spine_ras(volume_hu, geometry):
    """RAS centres of the heart (the analyzer's cardiac blob) and of the spine (bone in the central slab)."""
    zyx = analyze_volume(volume_hu, geometry)["measurements"]["heart_centroid_index"]
    heart = (np.asarray(ijk_to_ras(geometry)) @ [zyx[2], zyx[1], zyx[0], 1.0])[:3]
    mid = volume_hu.shape[0] // 2
    slab = np.zeros_like(volume_hu)
    slab[mid - 4 : mid + 5] = volume_hu[mid - 4 : mid + 5]
    return heart, _centroid_ras(slab, geometry, 200, 1001)


def test_heart_anterior_left_and_spine_posterior_in_ras(pipe):
    out = pipe(age=55, sex="female", impression="No acute cardiopulmonary findings.", seed=3, super_resolve=False)
    heart, spine = _heart_and_spine_ras(out.volume_hu, out.geometry)
    assert heart[0] < spine[0] - 5  # RAS +x points to the patient's right: the left is smaller x
    assert heart[1] > spine[1] + 20  # A is +y: heart anterior to the spine


def test_heart_measurement_finds_the_phantom_heart():
    # the check above on phantoms (ground truth: the heart centre is 0.17 thoracic half-widths left of the midline)
    for seed in range(3):
        phantom = generate_phantom(PhantomSpec(age=55, sex="female"), (33, 64, 64), rng=seed)
        heart, spine = _heart_and_spine_ras(phantom.volume_hu, phantom.geometry)
        truth = _centroid_ras(phantom.masks["heart"].astype(np.float32), phantom.geometry, 0.5, 2.0)
        assert np.abs(heart - truth)[:2].max() < 8.0, (heart, truth)  # within ~1 voxel (6 mm) in-plane
        assert heart[0] < spine[0] - 10 and heart[1] > spine[1] + 20


def test_cardiomegaly_prompt_gives_a_larger_heart_than_a_normal_one(pipe):
    ctr = {}
    for label, impression in (("normal", "No acute cardiopulmonary findings."), ("cardiomegaly", "Cardiomegaly.")):
        values = []
        for seed in (1, 2, 3):
            out = pipe(age=65, sex="male", impression=impression, seed=seed, super_resolve=False)
            values.append(analyze_volume(out.volume_hu, out.geometry)["measurements"]["ctr"])
        ctr[label] = float(np.mean(values))
    assert ctr["cardiomegaly"] > ctr["normal"] + 0.03, json.dumps(ctr)


def test_super_resolution_is_as_close_to_the_phantom_as_trilinear_upsampling():
    # benchmarks/demo_superres.py in small: the SR stage on the CT-ViT reconstruction of a phantom (what MaskGIT
    # hands over at best) must not stray further from the phantom than plain upsampling (v0.3: 1.6× its error)
    import torch
    import torch.nn.functional as F

    from GenerateCTLib.training.data import preprocess_volume

    sr_pipe = GenerateCTPipeline.from_pretrained(DEMO)
    phantom = generate_phantom(PhantomSpec(age=60, sex="male"), (33, 128, 128), rng=3)
    target_hu = 1000.0 * preprocess_volume(phantom.volume_hu, num_slices=33, image_size=128)[0].numpy()
    x = preprocess_volume(phantom.volume_hu, num_slices=33, image_size=64)[None]
    with torch.no_grad():
        recon = sr_pipe.ctvit.decode_from_ids(sr_pipe.ctvit.encode_to_ids(x))
    upsampled = 1000.0 * F.interpolate(recon, size=(33, 128, 128), mode="trilinear")[0, 0].numpy()
    middle = slice(15, 18)
    sr_hu = sr_pipe.super_resolve(1000.0 * recon[0, 0, middle].numpy(), "60 years old male: Normal chest CT.", seed=1)
    error = {name: float(np.sqrt(np.mean((volume - target_hu[middle]) ** 2)))
             for name, volume in (("sr", sr_hu), ("trilinear", np.clip(upsampled[middle], -1000, 1000)))}
    assert error["sr"] < 1.1 * error["trilinear"], error  # v0.4: 1.01×
