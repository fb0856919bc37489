"""CT-RATE-style loader: column aliases, age/sex parsing, prompt, HU scaling and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from GenerateCTLib.io import read_volume
from GenerateCTLib.training.data import CTReportDataset, parse_age, parse_sex, preprocess_volume, read_reports
from Testing.training.helpers import make_dataset


@pytest.mark.parametrize(("value", "age"), [("065Y", 65), ("42", 42), (7, 7), ("71.0", 71), ("100Y", 100)])
def test_parse_age(value, age):
    assert parse_age(value) == age


@pytest.mark.parametrize("value", ["", "old", "-3", "abcY"])
def test_parse_age_rejects(value):
    with pytest.raises(ValueError, match="age="):
        parse_age(value)


def test_parse_sex():
    assert [parse_sex(s) for s in ("M", "f", "male", "FEMALE")] == ["male", "female", "male", "female"]
    with pytest.raises(ValueError, match="sex='X'"):
        parse_sex("X")


def test_preprocess_clips_scales_and_resizes():
    volume_hu = np.full((5, 20, 20), 2000.0, dtype=np.float32)
    volume_hu[:, :10] = -3000.0
    out = preprocess_volume(volume_hu, num_slices=9, image_size=16)
    assert out.shape == (1, 9, 16, 16) and out.dtype == torch.float32
    assert out.min() == -1.0 and out.max() == 1.0
    constant = preprocess_volume(np.full((3, 8, 8), 500.0), num_slices=7, image_size=32)
    assert torch.allclose(constant, torch.full((1, 7, 32, 32), 0.5))
    # a depth ramp stays a ramp after trilinear resampling (what the reference does to 201 slices)
    ramp = np.broadcast_to(np.linspace(-1000, 1000, 5)[:, None, None], (5, 4, 4)).copy()
    column = preprocess_volume(ramp, num_slices=9, image_size=4)[0, :, 0, 0]
    assert torch.all(column[1:] >= column[:-1]) and column[0] == -1 and column[-1] == 1


def test_dataset_items_and_prompts(tmp_path):
    make_dataset(tmp_path, num=4, shape=(6, 24, 24))
    dataset = CTReportDataset(tmp_path, num_slices=9, image_size=16, stage="tokenizer", cache_size=2)
    assert len(dataset) == 4
    item = dataset[0]
    assert item["volume"].shape == (1, 9, 16, 16) and item["volume"].dtype == torch.float32
    assert item["volume"].min() >= -1 and item["volume"].max() <= 1
    assert item["prompt"] == "65 years old male: No acute cardiopulmonary findings."
    # build_prompt strips the reference's characters " ' ( )
    assert dataset[1]["prompt"] == "42 years old female: Cardiomegaly moderate."
    assert torch.equal(dataset[0]["volume"], dataset[0]["volume"])  # deterministic (and cached)
    assert dict(dataset.records[1].extra)["Cardiomegaly"] == "1"


def test_ct_rate_column_alias(tmp_path):
    make_dataset(tmp_path, num=2, shape=(4, 16, 16), impression_column="Impressions_EN")
    records = read_reports(tmp_path)
    assert records[1].impression == "Cardiomegaly (moderate)."


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="folder="):
        CTReportDataset(tmp_path, num_slices=9, image_size=16, stage="tokenizer")
    make_dataset(tmp_path, num=1, shape=(4, 16, 16))
    with pytest.raises(ValueError, match="stage='vae'"):
        CTReportDataset(tmp_path, num_slices=9, image_size=16, stage="vae")
    (tmp_path / "reports.csv").write_text("VolumeName,age,sex\nx,1,M\n")
    with pytest.raises(ValueError, match="impression"):
        read_reports(tmp_path)


def test_rescale_columns_and_nested_layout(tmp_path):
    import csv
    import shutil

    make_dataset(tmp_path, num=1, shape=(4, 16, 16))
    # CT-RATE keeps volumes in nested folders and stores raw values with slope/intercept in its metadata
    nested = tmp_path / "train" / "train_0" / "train_0_a"
    nested.mkdir(parents=True)
    shutil.move(tmp_path / "volumes" / "train_0_a_1.nii.gz", nested / "train_0_a_1.nii.gz")
    with (tmp_path / "reports.csv").open() as handle:
        row = next(csv.DictReader(handle))
    row.update(RescaleSlope="1", RescaleIntercept="-1024")
    with (tmp_path / "reports.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    plain = preprocess_volume(
        read_volume(nested / "train_0_a_1.nii.gz")[0] - 1024,
        num_slices=5,
        image_size=16,
    )
    dataset = CTReportDataset(tmp_path, num_slices=5, image_size=16, stage="superres")
    assert dataset.records[0].path == nested / "train_0_a_1.nii.gz"
    assert torch.allclose(dataset.volume(0), plain)
    assert "RescaleSlope" not in dict(dataset.records[0].extra)
