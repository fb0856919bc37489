"""DICOM export of synthetic CT volumes: a CT Image Storage series (one instance per slice) or one
Legacy Converted Enhanced CT instance, marked as synthetic in every layer a reader or de-identifier may keep.

Follows the tested recipe in the project's DICOM notes (pydicom 3 writer, highdicom conversion) and
DICOM PS3.3: SOP Common (C.12.1, ``SyntheticData`` since 2024b), Contributing Equipment with purpose
``(109100, DCM, "Synthesizing Equipment")``, CT Image (C.8.2.1), Image Plane (C.7.6.2), VOI LUT (C.11.2).

Geometry. The input follows :class:`GenerateCTLib.io.VolumeGeometry`: arrays ``(z, y, x)``, ``direction``
columns are the LPS directions of the array axes ``z, y, x``. In DICOM terms the row direction (increasing
column index) is ``direction[:, 2]``, the column direction is ``direction[:, 1]``, slice ``k`` sits at
``origin + k · spacing_z · direction[:, 0]`` and ``PixelSpacing = [spacing_y, spacing_x]`` (row spacing first).
Readers sort slices along ``row × column``; a left-handed direction (slice axis opposite to ``row × column``)
therefore reads back with the slice order and slice axis reversed — the same physical placement.

Pixels are ``int16`` from ``np.rint(volume_hu)`` with RescaleSlope 1, RescaleIntercept 0, RescaleType HU,
so integer HU round-trip exactly. Explicit VR Little Endian throughout (private tags keep their VR).

Synthetic marking, strongest first (the first three survive a PS3.15 Basic Profile de-identifier):
``SyntheticData = YES``; a Synthesizing Equipment item (manufacturer, model, software + model versions, seed);
``ImageType = DERIVED\\SECONDARY\\AXIAL``; ``ContentQualification = RESEARCH``; ``BurnedInAnnotation = NO``;
"SYNTHETIC" in study/series descriptions, ImageComments and PatientComments; ``SYNTHETIC^…`` / ``SYN-…``
patient identity; and the full provenance as JSON in the private block :data:`PRIVATE_CREATOR` of group 0011
(``1000`` prompt UT, ``1001`` model LO, ``1002`` model version LO, ``1003`` seed LO, ``1004`` provenance UT).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from GenerateCTLib import __version__
from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.windowing import LUNG, MEDIASTINAL

try:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    from pydicom.valuerep import DSfloat
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "DICOM support needs pydicom>=3 and highdicom: pip install 'GenerateCTLib[dicom]'"
    ) from exc

log = logging.getLogger(__name__)

__all__ = [
    "DicomExport",
    "PRIVATE_CREATOR",
    "export_generation",
    "parse_age_sex",
    "read_provenance",
    "register_private_dictionary",
    "write_dicom",
]

PRIVATE_CREATOR = "GENERATECT PROVENANCE 1"
PRIVATE_GROUP = 0x0011
MANUFACTURER = "GenerateCT project"
SYNTHESIZING_EQUIPMENT = ("109100", "DCM", "Synthesizing Equipment")
IMPLEMENTATION_VERSION = f"GENERATECT_{__version__.replace('.', '')}"[:16]
STUDY_DESCRIPTION = "SYNTHETIC CHEST CT (AI-GENERATED)"
SERIES_DESCRIPTION = "SYNTHETIC CT - AI GENERATED - GenerateCT"
PATIENT_COMMENTS = "SYNTHETIC DATA - NOT A REAL PATIENT"
NOT_CLINICAL = "SYNTHETIC IMAGE - AI-GENERATED - NOT A REAL PATIENT - NOT FOR CLINICAL USE."
OMITTED = "<omitted>"
_PRIVATE_ELEMENTS = {  # offset: (VR, keyword)
    0x00: ("UT", "GenerateCTPrompt"),
    0x01: ("LO", "GenerateCTModelName"),
    0x02: ("LO", "GenerateCTModelVersion"),
    0x03: ("LO", "GenerateCTSeed"),
    0x04: ("UT", "GenerateCTProvenanceJSON"),
}
_AGE_SEX_RE = re.compile(r"^\s*(\d{1,3})\s*(?:years?|yrs?|y)[\s-]*old\s+(male|female|man|woman)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class DicomExport:
    """What :func:`write_dicom` wrote.

    Attributes:
        folder: the output folder.
        files: the written files, in instance order.
        study_instance_uid / series_instance_uid: fresh for every export.
        sop_class_uid: CT Image Storage, or Legacy Converted Enhanced CT Image Storage (multi-frame).
        num_frames: number of slices written.
    """

    folder: Path
    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    num_frames: int


def register_private_dictionary() -> None:
    """Teach pydicom the names of our private elements (only needed to read implicit-VR copies by name)."""
    from pydicom.datadict import add_private_dict_entries

    add_private_dict_entries(PRIVATE_CREATOR, {
        (PRIVATE_GROUP << 16) | 0x1000 | offset: (vr, "1", keyword, keyword)
        for offset, (vr, keyword) in _PRIVATE_ELEMENTS.items()
    })


def parse_age_sex(prompt: str | None) -> tuple[str, str]:
    """PatientAge (``"065Y"``) and PatientSex (``"M"``/``"F"``) from ``"65 years old male: …"``; ``""`` if absent."""
    match = _AGE_SEX_RE.match(prompt or "")
    if match is None:
        return "", ""
    age = int(match.group(1))
    sex = "M" if match.group(2).lower() in ("male", "man") else "F"
    return (f"{age:03d}Y" if age <= 120 else ""), sex


def _ds(value: float) -> DSfloat:
    # DS holds at most 16 characters; auto_format keeps the most precision that fits
    return DSfloat(float(value), auto_format=True)


def _scrub(value: Any, secrets_: Sequence[str]) -> Any:
    """Replace every string that contains one of ``secrets_`` (the prompt, the impression) by ``<omitted>``."""
    if isinstance(value, Mapping):
        return {k: _scrub(v, secrets_) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, secrets_) for v in value]
    if isinstance(value, str) and any(s and s in value for s in secrets_):
        return OMITTED
    return value


def _check_inputs(volume_hu: Any, geometry: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    volume = np.asarray(volume_hu)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume_hu must be a non-empty 3-D (z, y, x) array, got shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.number) or np.iscomplexobj(volume):
        raise ValueError(f"volume_hu must hold real numbers, got dtype {volume.dtype}")
    bad = int(np.count_nonzero(~np.isfinite(volume)))
    if bad:
        raise ValueError(f"volume_hu contains {bad} NaN or infinite voxel(s); DICOM needs finite HU")
    rounded = np.rint(volume.astype(np.float64, copy=False))
    if rounded.min() < -32768 or rounded.max() > 32767:
        raise ValueError(f"volume_hu range [{rounded.min()}, {rounded.max()}] HU does not fit int16")
    spacing = np.asarray(getattr(geometry, "spacing_mm", None), dtype=float)
    origin = np.asarray(getattr(geometry, "origin_mm", None), dtype=float)
    direction = np.asarray(getattr(geometry, "direction", None), dtype=float)
    # VolumeGeometry validates itself, but re-check: the writer must never emit a sheared IOP
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"geometry.spacing_mm must be 3 positive numbers (z, y, x), got {spacing.tolist()}")
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ValueError(f"geometry.origin_mm must be 3 finite numbers (LPS), got {origin.tolist()}")
    if direction.shape != (3, 3) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise ValueError(f"geometry.direction must be an orthonormal 3x3 matrix (columns = LPS directions of "
                         f"z, y, x), got {direction.tolist()}")
    return rounded.astype(np.int16), spacing, origin, direction


def _prepare_target(out_dir: Path, overwrite: bool) -> Path:
    """Check the target and return a fresh temporary folder beside it (same file system, for the rename)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    parent = out_dir.parent
    ancestor = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise _os_error(f"cannot write DICOM output {out_dir}: {ancestor} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise _os_error(f"cannot write DICOM output {out_dir}: folder {parent} is not writable "
                        f"({exc.strerror or exc})", exc) from exc


def _os_error(message: str, cause: OSError | None = None) -> OSError:
    """An OSError whose text is just ``message`` (no "[Errno N]" prefix), keeping the cause's errno."""
    error = OSError(message)
    error.errno = None if cause is None else cause.errno
    return error


def _commit(tmp: Path, out_dir: Path) -> None:
    """Move the finished temporary folder into place; an old folder is removed only after the new one is in."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old / "previous", out_dir)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _provenance_fields(provenance: Mapping[str, Any] | None) -> dict[str, str]:
    provenance = provenance or {}
    bundle = provenance.get("bundle") or {}
    seeds = provenance.get("seeds")
    if isinstance(seeds, Mapping):
        seed = ", ".join(f"{k}={v}" for k, v in seeds.items())
    else:
        seed = "" if seeds is None else str(seeds)
    return {
        "model": str(bundle.get("name") or "GenerateCT")[:64],
        "model_version": str(bundle.get("version") or "unknown")[:64],
        "software": f"GenerateCTLib {provenance.get('generatect_version') or __version__}"[:64],
        "seed": seed[:64] or "unknown",
    }


def _contributing_item(fields: Mapping[str, str], when: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = SYNTHESIZING_EQUIPMENT
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = fields["model"]
    item.SoftwareVersions = [fields["software"], f"model {fields['model_version']}"[:64]]
    item.ContributionDateTime = when
    item.ContributionDescription = (f"Synthesized from a text prompt by {fields['model']} "
                                    f"{fields['model_version']}; seed {fields['seed']}")[:1024]
    item.PurposeOfReferenceCodeSequence = DicomSequence([code])
    return item


def _add_private_block(ds: Dataset, fields: Mapping[str, str], prompt: str | None, provenance_json: str) -> None:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    if prompt is not None:
        block.add_new(0x00, "UT", prompt)
    block.add_new(0x01, "LO", fields["model"])
    block.add_new(0x02, "LO", fields["model_version"])
    block.add_new(0x03, "LO", fields["seed"])
    block.add_new(0x04, "UT", provenance_json)


def _series_datasets(stored: np.ndarray, spacing, origin, direction, *, prompt: str | None, include_prompt: bool,
                     provenance: Mapping[str, Any] | None) -> list[Dataset]:
    """One CT Image Storage dataset per slice, sharing fresh Study / Series / Frame of Reference UIDs."""
    now = datetime.datetime.now()
    date, time, when = now.strftime("%Y%m%d"), now.strftime("%H%M%S"), now.strftime("%Y%m%d%H%M%S")
    study_uid, series_uid, frame_uid = (generate_uid(prefix=None) for _ in range(3))
    short_id = secrets.token_hex(4).upper()
    fields = _provenance_fields(provenance)
    age, sex = parse_age_sex(prompt)
    record = dict(provenance or {})
    if prompt is not None:
        record.setdefault("prompt", prompt)
    if not include_prompt:  # the prompt, and the impression on its own, anywhere in the record
        hidden = [s for s in (prompt, (prompt or "").partition(": ")[2].strip()) if s]
        record = _scrub(record, hidden) | {"prompt": OMITTED, "prompt_omitted": True}
    provenance_json = json.dumps(record, default=str, ensure_ascii=False)
    comments = f"{NOT_CLINICAL} model={fields['model']} {fields['model_version']}; seed={fields['seed']}; "
    comments += f"prompt={prompt}" if include_prompt and prompt else "prompt omitted"

    sz, sy, sx = (float(s) for s in spacing)
    slice_dir, col_dir, row_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row_dir, col_dir)
    datasets = []
    for k in range(stored.shape[0]):
        sop_uid = generate_uid(prefix=None)
        position = origin + slice_dir * sz * k
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        # SOP Common
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.SyntheticData = "YES"
        ds.ContentQualification = "RESEARCH"
        ds.ContributingEquipmentSequence = DicomSequence([_contributing_item(fields, when)])
        # Patient: one synthetic patient per export, never a realistic name
        ds.PatientName = f"SYNTHETIC^{short_id}"
        ds.PatientID = f"SYN-{short_id}"
        ds.IssuerOfPatientID = "GENERATECT"
        ds.PatientBirthDate = ""
        ds.PatientSex = sex
        ds.PatientAge = age
        ds.PatientComments = PATIENT_COMMENTS
        # General Study / Series / Frame of Reference / Equipment
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, date, time
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "SYN1", ""
        ds.StudyDescription = STUDY_DESCRIPTION
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, 1
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.SeriesDescription = SERIES_DESCRIPTION
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "CHEST"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, fields["model"]
        ds.SoftwareVersions = [fields["software"], f"model {fields['model_version']}"[:64]]
        # General Image / General Reference
        ds.InstanceNumber, ds.ContentDate, ds.ContentTime = k + 1, date, time
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = f"AI-generated synthetic image ({fields['model']} {fields['model_version']})"
        ds.ImageComments = comments[:10240]
        ds.BurnedInAnnotation, ds.RecognizableVisualFeatures = "NO", "NO"
        ds.AcquisitionNumber = 1
        # Image Plane
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(sz)
        ds.SliceLocation = _ds(np.dot(position, normal))
        # CT Image + VOI LUT
        ds.KVP = ""
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.WindowCenter = [_ds(MEDIASTINAL.level_hu), _ds(LUNG.level_hu)]
        ds.WindowWidth = [_ds(MEDIASTINAL.width_hu), _ds(LUNG.width_hu)]
        ds.WindowCenterWidthExplanation = ["MEDIASTINAL", "LUNG"]
        ds.set_pixel_data(np.ascontiguousarray(stored[k]), "MONOCHROME2", 16, generate_instance_uid=False)
        _add_private_block(ds, fields, prompt if include_prompt else None, provenance_json)
        datasets.append(ds)
    return datasets


def _multiframe(datasets: list[Dataset]) -> Dataset:
    """One Legacy Converted Enhanced CT instance from the slices, with the synthetic marking re-added on top."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    first = datasets[0]
    item = first.ContributingEquipmentSequence[0]
    equipment = hd.ContributingEquipment(
        manufacturer=item.Manufacturer,
        purpose_of_reference=codes.DCM.SynthesizingEquipment,
        manufacturer_model_name=item.ManufacturerModelName,
        software_versions=list(item.SoftwareVersions),
        contribution_datetime=item.ContributionDateTime,
        contribution_description=item.ContributionDescription,
    )
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets,
        series_instance_uid=generate_uid(prefix=None),
        series_number=1,
        sop_instance_uid=generate_uid(prefix=None),
        instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        require_volume=True,
        skip_private_attributes=True,
        contributing_equipment=[equipment],
    )
    # highdicom moves these into UnassignedSharedConvertedAttributesSequence or drops them: put them back on top
    image.SyntheticData = "YES"
    image.ContentQualification = "RESEARCH"
    image.BurnedInAnnotation = "NO"
    image.ImageComments = first.ImageComments
    image.SeriesDescription = f"{SERIES_DESCRIPTION} (multi-frame)"[:64]
    image.StudyDescription = STUDY_DESCRIPTION
    image.PatientComments = PATIENT_COMMENTS
    source = first.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    block = image.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    for offset in _PRIVATE_ELEMENTS:
        if source.get_tag(offset) in first:
            element = source[offset]
            block.add_new(offset, element.VR, element.value)
    image.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return image


def write_dicom(
    out_dir: str | os.PathLike,
    volume_hu: np.ndarray,
    geometry: VolumeGeometry,
    *,
    prompt: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    include_prompt: bool = True,
    multiframe: bool = False,
    overwrite: bool = False,
) -> DicomExport:
    """Write a synthetic CT volume as a DICOM series folder, atomically (temporary folder, then rename).

    Args:
        out_dir: the folder to create (``CT0001.dcm``, … or ``CT_ENHANCED.dcm``); its parent is created.
        volume_hu: ``(z, y, x)`` HU; rounded to int16, must be finite.
        geometry: LPS placement (see the module docstring).
        prompt: the generation prompt; PatientAge / PatientSex come from its ``"{age} years old {sex}:"`` part.
        provenance: the pipeline's provenance dict (``GenerationOutput.provenance`` or the JSON sidecar).
        include_prompt: False leaves the free-text prompt (and the impression) out of every element, the
            provenance JSON included; PatientAge / PatientSex are still written.
        multiframe: write one Legacy Converted Enhanced CT instance instead of one instance per slice.
        overwrite: replace an existing ``out_dir`` (only once the new folder is complete).

    Returns:
        A :class:`DicomExport` with the files and the fresh UIDs.

    Raises:
        ValueError: NaN/infinite or out-of-range HU, a non-3-D array, a non-orthonormal direction.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        OSError: the folder cannot be written. Nothing is left behind on any error.
    """
    out_dir = Path(out_dir)
    if prompt is None and provenance is not None and isinstance(provenance.get("prompt"), str):
        prompt = provenance["prompt"]
    stored, spacing, origin, direction = _check_inputs(volume_hu, geometry)
    datasets = _series_datasets(stored, spacing, origin, direction, prompt=prompt, include_prompt=include_prompt,
                                provenance=provenance)
    if multiframe:
        datasets = [_multiframe(datasets)]
        names = ["CT_ENHANCED.dcm"]
    else:
        names = [f"CT{k + 1:04d}.dcm" for k in range(len(datasets))]
    tmp = _prepare_target(out_dir, overwrite)
    try:
        for ds, name in zip(datasets, names, strict=True):
            ds.save_as(tmp / name, enforce_file_format=True)
        _commit(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(f"cannot write DICOM output {out_dir}: {exc.strerror or exc}", exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d DICOM file(s) to %s", len(names), out_dir)
    return DicomExport(
        folder=out_dir,
        files=tuple(out_dir / name for name in names),
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        series_instance_uid=str(datasets[0].SeriesInstanceUID),
        sop_class_uid=str(datasets[0].SOPClassUID),
        num_frames=int(stored.shape[0]),
    )


def export_generation(out_dir: str | os.PathLike, output: Any, **kwargs: Any) -> DicomExport:
    """:func:`write_dicom` for a :class:`GenerateCTLib.pipeline.GenerationOutput`."""
    return write_dicom(out_dir, output.volume_hu, output.geometry, prompt=output.prompt,
                       provenance=output.provenance, **kwargs)


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance JSON of a file written by :func:`write_dicom`, or None if it has no GenerateCT block."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        return json.loads(block[0x04].value)
    except KeyError:
        return None
