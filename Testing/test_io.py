import numpy as np
import pytest

from GenerateCTLib.io import VolumeGeometry, read_volume, write_json, write_volume

ROTATED = VolumeGeometry(
    spacing_mm=(1.5, 0.7, 0.9),
    origin_mm=(-120.0, 35.5, 210.0),
    # z -> S tilted, y -> P, x -> L, rotated 30 degrees about P
    direction=(
        (np.sin(np.pi / 6), 0.0, np.cos(np.pi / 6)),
        (0.0, 1.0, 0.0),
        (np.cos(np.pi / 6), 0.0, -np.sin(np.pi / 6)),
    ),
)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nrrd"])
@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_round_trip_keeps_array_spacing_and_direction(tmp_path, name, dtype):
    rng = np.random.default_rng(0)
    volume = rng.uniform(-1000, 1000, size=(5, 7, 9)).astype(np.float32)
    write_volume(tmp_path / name, volume, ROTATED, dtype=dtype)
    array, geometry = read_volume(tmp_path / name)
    expected = np.rint(volume).astype(np.int16) if dtype == "int16" else volume
    assert array.dtype == expected.dtype and np.array_equal(array, expected)
    assert np.allclose(geometry.spacing_mm, ROTATED.spacing_mm)
    assert np.allclose(geometry.origin_mm, ROTATED.origin_mm, atol=1e-4)
    assert np.allclose(geometry.direction, ROTATED.direction, atol=1e-6)


def test_nifti_affine_is_ras(tmp_path):
    import SimpleITK as sitk

    geometry = VolumeGeometry(spacing_mm=(2.0, 1.0, 1.0), origin_mm=(10.0, 20.0, 30.0))
    write_volume(tmp_path / "v.nii.gz", np.zeros((2, 3, 4), np.float32), geometry)
    # the NIfTI header holds RAS: x and y negated relative to ITK's LPS
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp_path / "v.nii.gz"))
    reader.ReadImageInformation()
    assert float(reader.GetMetaData("qoffset_x")) == pytest.approx(-10.0)
    assert float(reader.GetMetaData("qoffset_y")) == pytest.approx(-20.0)
    assert float(reader.GetMetaData("qoffset_z")) == pytest.approx(30.0)


def test_never_overwrites_silently_and_rejects_bad_input(tmp_path):
    geometry = VolumeGeometry(spacing_mm=(1.0, 1.0, 1.0))
    target = tmp_path / "v.nrrd"
    write_volume(target, np.zeros((1, 2, 2)), geometry)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_volume(target, np.ones((1, 2, 2)), geometry)
    write_volume(target, np.ones((1, 2, 2)), geometry, overwrite=True)
    assert read_volume(target)[0].max() == 1
    with pytest.raises(ValueError, match="NaN"):
        write_volume(tmp_path / "nan.nrrd", np.full((1, 2, 2), np.nan), geometry)
    with pytest.raises(ValueError, match="extension"):
        write_volume(tmp_path / "v.png", np.zeros((1, 2, 2)), geometry)
    with pytest.raises(ValueError, match="orthonormal"):
        VolumeGeometry(spacing_mm=(1, 1, 1), direction=((1, 0, 0), (1, 0, 0), (0, 0, 1)))
    with pytest.raises(ValueError, match="spacing_mm"):
        VolumeGeometry(spacing_mm=(1, 0, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nrrd"]  # nothing half-written
    write_json(tmp_path / "p.json", {"a": 1})
    with pytest.raises(FileExistsError):
        write_json(tmp_path / "p.json", {"a": 2})
