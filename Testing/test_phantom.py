"""Chest phantom generator, reports, dataset writer and analyzer (fast: small grids)."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from GenerateCTLib.phantom import (
    HELD_OUT_PAIRS,
    LABEL_NAMES,
    SUPPORTED_FINDINGS,
    Finding,
    PhantomSpec,
    add_phantom_command,
    generate_phantom,
    phrasing_counts,
    sample_case,
    write_dataset,
)
from GenerateCTLib.phantom_analysis import adherence, analyze_volume, degrade_volume
from GenerateCTLib.phantom_reports import TEMPLATES, impression, sample_spec

SHAPE = (33, 64, 64)
NORMAL = PhantomSpec(55, "male")


@pytest.fixture(scope="module")
def normal():
    return generate_phantom(NORMAL, (49, 96, 96), rng=3, noise_sigma_hu=0.0)


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def test_tissue_hu_ranges(normal):
    v, masks = normal.volume_hu, normal.masks
    assert v.dtype == np.float32 and v.min() >= -1000 and v.max() <= 1000
    assert np.all(v[:, :3, :3] == -1000)  # air outside the body
    assert -900 < np.median(v[masks["lungs"]]) < -780
    assert 35 < np.median(v[masks["heart"]]) < 60
    body_only = masks["body"] & ~masks["lungs"] & ~masks["heart"]
    assert np.percentile(v[body_only], 10) < -60  # fat is present
    bone = v > 300
    assert np.percentile(v[bone], 90) >= 500 and v.max() >= 600  # ribs 600, cortex 700 (partial volume below)
    trachea_slices = v[-8:]  # above the apices: the only air inside the body is the trachea
    assert (trachea_slices[:, 30:70, 40:56] < -900).any()


def test_orientation_heart_anterior_left_spine_posterior(normal):
    masks, geometry = normal.masks, normal.geometry
    body = centroid(masks["body"])
    heart = centroid(masks["heart"])
    spine_mask = (normal.volume_hu > 400) & (np.abs(np.arange(96) - 47.5) < 8)[None, None, :]
    spine = centroid(spine_mask)
    # array: y index grows posteriorly, x index grows to the patient's left
    assert heart[1] < body[1] < spine[1]
    assert heart[2] > body[2] + 2
    # the same in patient coordinates (LPS, and RAS as Slicer shows it)
    to_lps = geometry.ijk_to_lps()
    heart_lps = to_lps @ np.r_[heart, 1.0]
    spine_lps = to_lps @ np.r_[spine, 1.0]
    assert heart_lps[0] > 0  # L
    assert heart_lps[1] < spine_lps[1]  # anterior of the spine
    heart_ras = heart_lps[:3] * [-1, -1, 1]
    assert heart_ras[0] < 0 and heart_ras[1] > spine_lps[1] * -1  # R negative = left; A larger = anterior
    assert geometry.direction == ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def test_cardiomegaly_gives_a_larger_heart_on_the_same_seed():
    big = generate_phantom(PhantomSpec(55, "male", (Finding("Cardiomegaly", severity="moderate"),)), SHAPE, rng=4)
    small = generate_phantom(NORMAL, SHAPE, rng=4)
    assert big.measurements["ctr"] > 0.57 > 0.5 > small.measurements["ctr"]
    width = lambda m: np.ptp(np.nonzero(m.any(axis=(0, 1)))[0])  # noqa: E731
    assert width(big.masks["heart"]) > width(small.masks["heart"])
    assert big.labels["Cardiomegaly"] == 1 and small.labels["Cardiomegaly"] == 0


def test_left_effusion_is_left_and_dependent():
    spec = PhantomSpec(60, "female", (Finding("Pleural effusion", side="left", severity="moderate"),))
    p = generate_phantom(spec, SHAPE, rng=5)
    fluid = p.masks["pleural_fluid"]
    assert fluid.sum() > 50
    assert p.measurements["effusion_left_ml"] > 100 and p.measurements.get("effusion_right_ml", 0) == 0
    f, body = centroid(fluid), centroid(p.masks["body"])
    assert f[2] > body[2] and f[1] > body[1]  # patient's left, posterior
    assert np.median(p.volume_hu[fluid]) == pytest.approx(12, abs=25)


def test_nodules_count_and_size():
    spec = PhantomSpec(50, "male", (Finding("Lung nodule", lobe="RUL", size_mm=26, count=3),))
    p = generate_phantom(spec, SHAPE, rng=6)
    nodules = [les for les in p.measurements["lesions"] if les["kind"] == "nodule"]
    assert len(nodules) == 3 and p.measurements["nodule_count"] == 3
    assert nodules[0]["lobe"] == "RUL" and nodules[0]["centre_mm"][2] < 0  # right lung: X < 0
    assert max(2 * n["semi_axes_mm"][0] for n in nodules) <= 26


def test_deterministic_from_seed_and_grid_sizes():
    spec, _ = sample_case(11)
    a = generate_phantom(spec, SHAPE, rng=np.random.default_rng(8))
    b = generate_phantom(spec, SHAPE, rng=np.random.default_rng(8))
    c = generate_phantom(spec, SHAPE, rng=np.random.default_rng(9))
    assert np.array_equal(a.volume_hu, b.volume_hu) and not np.array_equal(a.volume_hu, c.volume_hu)
    tiny = generate_phantom(spec, (9, 32, 32), rng=8)
    assert tiny.volume_hu.shape == (9, 32, 32) and tiny.geometry.spacing_mm == (37.5, 12.0, 12.0)
    # same anatomy on another grid: the same findings geometry
    assert tiny.measurements["lesions"] == a.measurements["lesions"]


def test_reports_splits_and_held_out_pairs():
    counts = phrasing_counts()
    assert all(c["train"] >= 3 and c["eval"] >= 2 for label, c in counts.items() if label != "Lung nodules")
    for label, splits in TEMPLATES.items():
        assert not set(splits["train"]) & set(splits["eval"]), label
    rng = np.random.default_rng(0)
    held_out_in_eval = 0
    for _ in range(300):
        spec = sample_spec(rng, "train")
        labels = {f.label for f in spec.findings}
        assert not any(pair <= labels for pair in HELD_OUT_PAIRS)
        assert len(spec.findings) <= 3
        text = impression(spec, rng, "train")
        assert text and '"' not in text and "(" not in text
        eval_spec = sample_spec(rng, "eval")
        held_out_in_eval += any(pair <= {f.label for f in eval_spec.findings} for pair in HELD_OUT_PAIRS)
    assert held_out_in_eval > 100
    assert impression(PhantomSpec(40, "male"), rng, "train") in TEMPLATES["Normal"]["train"]
    vector = PhantomSpec(40, "male", (Finding("Emphysema", severity="mild"),)).label_vector()
    assert vector.shape == (18,) and vector[LABEL_NAMES.index("Emphysema")] == 1 and vector.sum() == 1


def test_analyzer_thoracic_width_is_the_internal_width():
    # the CTR's denominator: body width minus the thinnest lateral chest walls, against the phantom's inner rib
    # margin width (the lung field's own extent, used before, read 6 mm narrow on average: CTR 0.56 for normals)
    errors = []
    for i in range(24):
        rng = np.random.default_rng(2000 + i)
        spec, _ = sample_case(rng)
        p = generate_phantom(spec, SHAPE, rng=rng)
        measured = analyze_volume(p.volume_hu, p.geometry)["measurements"]["thoracic_width_mm"]
        errors.append(measured - p.measurements["thoracic_width_mm"])
    assert np.mean(np.abs(errors)) < 4.0, np.round(errors)  # 6 mm voxels; the lung field's extent: 6.2 mm


def test_analyzer_recovers_labels_clean_and_degraded():
    truths, clean, degraded = [], [], []
    for i in range(32):
        rng = np.random.default_rng(1000 + i)
        spec, _ = sample_case(rng)
        p = generate_phantom(spec, SHAPE, rng=rng)
        truths.append({k: bool(p.labels[k]) for k in SUPPORTED_FINDINGS})
        clean.append(analyze_volume(p.volume_hu, p.geometry))
        degraded.append(analyze_volume(degrade_volume(p.volume_hu, np.random.default_rng(i)), p.geometry))
    assert adherence(truths, clean)["agreement"] >= 0.95
    assert adherence(truths, degraded)["agreement"] >= 0.90


def test_adherence_statistics():
    truth = [{"Cardiomegaly": True}, {"Cardiomegaly": False}, {"Cardiomegaly": True}, {}]
    pred = [{"Cardiomegaly": True}, {"Cardiomegaly": True}, {"Cardiomegaly": False}, {}]
    result = adherence(truth, pred, labels=("Cardiomegaly",))
    row = result["per_finding"]["Cardiomegaly"]
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (1, 1, 1, 1)
    assert row["sensitivity"] == 0.5 and row["specificity"] == 0.5 and result["agreement"] == 0.5
    assert result["balanced_accuracy"] == 0.5
    # calling everything absent: high agreement when findings are rare, balanced accuracy 0.5
    rare = [{"Cardiomegaly": i == 0} for i in range(10)]
    absent = adherence(rare, [{}] * 10, labels=("Cardiomegaly",))
    assert absent["agreement"] == 0.9 and absent["balanced_accuracy"] == 0.5
    found = adherence(rare, rare, labels=("Cardiomegaly",))
    assert found["balanced_accuracy"] == 1.0
    arrays = adherence(np.eye(18, dtype=int)[:2], np.eye(18, dtype=int)[:2])
    assert arrays["agreement"] == 1.0 and arrays["n_cases"] == 2


def test_write_dataset_layout(tmp_path):
    from GenerateCTLib.io import read_volume

    out = write_dataset(tmp_path / "ds", 3, shape=(9, 32, 32), seed=1)
    with open(out / "reports.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["VolumeName", "age", "sex", "impression", *LABEL_NAMES]
    assert len(rows) == 3 and all(r["VolumeName"].endswith(".nii.gz") for r in rows)
    volume, geometry = read_volume(out / "volumes" / rows[0]["VolumeName"])
    assert volume.shape == (9, 32, 32) and volume.min() >= -1000 and volume.max() <= 1000
    assert np.allclose(geometry.spacing_mm, (37.5, 12.0, 12.0))
    assert (out / "phantoms.json").is_file()
    again = write_dataset(tmp_path / "again", 3, shape=(9, 32, 32), seed=1)
    assert (again / "reports.csv").read_text() == (out / "reports.csv").read_text()
    with pytest.raises(FileExistsError):
        write_dataset(out, 1, shape=(9, 32, 32))
    write_dataset(out, 1, shape=(9, 32, 32), overwrite=True)
    assert len(list((out / "volumes").iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_hook(tmp_path):
    parser = argparse.ArgumentParser(prog="generatect")
    add_phantom_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantoms", "--out", str(tmp_path / "p"), "--n", "1", "--shape", "9", "32", "32",
                              "--split", "eval"])
    assert args.func(args) == 0
    assert (tmp_path / "p" / "volumes" / "eval_1_a_1.nii.gz").is_file()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: generate_phantom(NORMAL, (3, 64, 64)), "shape"),
        (lambda: generate_phantom("normal", SHAPE), "spec"),
        (lambda: generate_phantom(NORMAL, SHAPE, rng="x"), "rng"),
        (lambda: write_dataset("/tmp/never", 0), "n"),
        (lambda: write_dataset("/tmp/never", 1, split="test"), "split"),
        (lambda: PhantomSpec(200, "male"), "age"),
        (lambda: PhantomSpec(20, "other"), "sex"),
        (lambda: Finding("Pleural effusion", side="middle"), "side"),
        (lambda: Finding("Fracture"), "label"),
        (lambda: sample_case(0, "test"), "split"),
        (lambda: analyze_volume(np.zeros((4, 4)), None), "volume_hu"),
        (lambda: adherence([{}], [{}, {}]), "same length"),
    ],
)
def test_bad_arguments_raise_value_error(call, name):
    with pytest.raises(ValueError, match=name):
        call()
