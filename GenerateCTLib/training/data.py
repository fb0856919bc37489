"""CT-RATE-style training data: a folder of NIfTI volumes in HU and a CSV of reports.

Folder layout (what :mod:`GenerateCTLib.phantom` writes, and what CT-RATE provides after conversion)::

    <folder>/
      reports.csv            VolumeName, age, sex, impression (+ any other columns, e.g. labels)
      volumes/<VolumeName>   NIfTI/NRRD volumes in HU (``.nii.gz`` appended when the name has no extension)

Column aliases accepted (real CT-RATE spells them differently): ``VolumeName`` (``volume_name``, ``Volume``),
``age`` (``PatientAge``, ``Age``), ``sex`` (``PatientSex``, ``Sex``, ``gender``), ``impression``
(``Impressions_EN``, ``Impressions``, ``Impression``, ``impressions``). Ages may be integers or DICOM age
strings (``"065Y"``, as the reference parses them); sexes ``M``/``F``/``male``/``female``. Optional
``RescaleSlope`` / ``RescaleIntercept`` columns (CT-RATE's metadata) convert stored values to HU
(``hu = slope · raw + intercept``, as the reference does); without them the files are taken to be in HU.
Volumes not found at ``volumes/<VolumeName>`` are searched for by file name anywhere under the folder
(CT-RATE's nested ``train/train_1/train_1_a/...`` layout).

Preprocessing follows the reference ``videotextdataset.py`` / ``data.py``:

1. HU clipped to [-1000, 1000] and divided by 1000 (:func:`GenerateCTLib.windowing.hu_to_model`);
2. every axial slice resized *bilinearly* to ``image_size²`` (the reference's PIL ``Resize``);
3. depth resampled *trilinearly* to ``num_slices`` (``F.interpolate(..., align_corners=False)``), whatever
   the spacing;

giving a ``(1, z, y, x)`` float32 tensor in [-1, 1]. The prompt is
:func:`GenerateCTLib.pipeline.build_prompt` (``"65 years old male: ..."``, the characters ``" ' ( )``
stripped).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from GenerateCTLib.io import read_volume
from GenerateCTLib.pipeline import build_prompt
from GenerateCTLib.windowing import hu_to_model

REPORTS_NAME = "reports.csv"
VOLUMES_DIR = "volumes"
Stage = Literal["tokenizer", "transformer", "superres"]
STAGES = ("tokenizer", "transformer", "superres")

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "VolumeName": ("VolumeName", "volume_name", "Volume", "volume"),
    "age": ("age", "Age", "PatientAge", "patient_age"),
    "sex": ("sex", "Sex", "PatientSex", "patient_sex", "gender", "Gender"),
    "impression": ("impression", "Impressions_EN", "Impressions", "Impression", "impressions", "impression_en"),
}
_SEXES = {"m": "male", "male": "male", "f": "female", "female": "female"}


def parse_age(value: str | int) -> int:
    """An age in years from an int, ``"65"``, ``"65.0"`` or a DICOM age string ``"065Y"``."""
    text = str(value).strip()
    match = re.fullmatch(r"0*(\d{1,3})(?:\.0*)?\s*[Yy]?", text)
    if match is None:
        raise ValueError(f"age={value!r} is invalid; allowed: an integer or a DICOM age string like '065Y'")
    return int(match.group(1))


def parse_sex(value: str) -> str:
    """``"male"`` or ``"female"`` from ``M``/``F``/``male``/``female`` (any case)."""
    sex = _SEXES.get(str(value).strip().lower())
    if sex is None:
        raise ValueError(f"sex={value!r} is invalid; allowed: 'M', 'F', 'male', 'female'")
    return sex


@dataclasses.dataclass(frozen=True)
class ReportRecord:
    """One CSV row: the volume file, the prompt parts and every other column (e.g. labels) as text."""

    volume_name: str
    path: Path
    age: int
    sex: str
    impression: str
    extra: tuple[tuple[str, str], ...] = ()
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0

    @property
    def prompt(self) -> str:
        return build_prompt(self.age, self.sex, self.impression)


def _resolve_columns(fieldnames: list[str], source: Path) -> dict[str, str]:
    columns = {}
    for name, aliases in COLUMN_ALIASES.items():
        found = next((alias for alias in aliases if alias in fieldnames), None)
        if found is None:
            raise ValueError(f"{source}: no column for {name!r}; allowed names: {list(aliases)}; found {fieldnames}")
        columns[name] = found
    return columns


def _volume_path(folder: Path, name: str, index: dict[str, Path]) -> Path:
    has_extension = re.search(r"\.(nii(\.gz)?|nrrd|nhdr)$", name, re.IGNORECASE) is not None
    names = [name] if has_extension else [name + ".nii.gz", name]
    for candidate_name in names:
        for candidate in (folder / VOLUMES_DIR / candidate_name, folder / candidate_name):
            if candidate.is_file():
                return candidate
    if not index:  # nested layouts (CT-RATE): index every volume file under the folder once
        for path in folder.rglob("*"):
            if path.is_file() and re.search(r"\.(nii(\.gz)?|nrrd|nhdr)$", path.name, re.IGNORECASE):
                index.setdefault(path.name, path)
    for candidate_name in names:
        if candidate_name in index:
            return index[candidate_name]
    raise ValueError(f"VolumeName={name!r}: no file found under {folder}")


def _float_or(row: dict, column: str, fallback: float) -> float:
    value = (row.get(column) or "").strip()
    if not value:
        return fallback
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"{column}={value!r} is invalid; allowed: a number") from exc


def read_reports(folder: str | os.PathLike, *, csv_name: str = REPORTS_NAME) -> list[ReportRecord]:
    """Parse ``<folder>/reports.csv`` (column aliases, ages, sexes) and locate every volume file."""
    folder = Path(folder)
    path = folder / csv_name
    if not path.is_file():
        raise ValueError(f"folder={str(folder)!r} is invalid; allowed: a folder holding {csv_name} and {VOLUMES_DIR}/")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = _resolve_columns(list(reader.fieldnames or []), path)
        used = set(columns.values()) | {"RescaleSlope", "RescaleIntercept"}
        records = []
        index: dict[str, Path] = {}
        for row in reader:
            name = row[columns["VolumeName"]].strip()
            records.append(
                ReportRecord(
                    volume_name=name,
                    path=_volume_path(folder, name, index),
                    age=parse_age(row[columns["age"]]),
                    sex=parse_sex(row[columns["sex"]]),
                    impression=row[columns["impression"]].strip(),
                    extra=tuple((k, v) for k, v in row.items() if k not in used and k is not None),
                    rescale_slope=_float_or(row, "RescaleSlope", 1.0),
                    rescale_intercept=_float_or(row, "RescaleIntercept", 0.0),
                )
            )
    if not records:
        raise ValueError(f"{path}: no rows")
    return records


def preprocess_volume(volume_hu: np.ndarray, *, num_slices: int, image_size: int) -> torch.Tensor:
    """HU ``(z, y, x)`` -> ``(1, num_slices, image_size, image_size)`` float32 in [-1, 1] (module docstring)."""
    x = torch.from_numpy(hu_to_model(volume_hu))  # (z, y, x) in [-1, 1]
    if tuple(x.shape[1:]) != (image_size, image_size):
        # per-slice bilinear resize (PIL's bilinear without antialiasing on upsampling; antialias on shrink)
        x = F.interpolate(
            x[:, None],
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=x.shape[1] > image_size,
        )[:, 0]
    if x.shape[0] != num_slices:
        x = F.interpolate(
            x[None, None], size=(num_slices, image_size, image_size), mode="trilinear", align_corners=False
        )[0, 0]
    return x[None].contiguous().float()


class CTReportDataset(torch.utils.data.Dataset):
    """Volumes and prompts of a CT-RATE-style folder, resampled to one stage's grid.

    Args:
        folder: the dataset folder (module docstring).
        num_slices: output depth ``z`` (``1 + k * temporal_patch_size`` for the CT-ViT).
        image_size: output in-plane size (the CT-ViT grid, or the SR grid for the SR targets).
        stage: which training stage reads it (validated; recorded for error messages and caching).
        cache_size: number of preprocessed volumes kept in memory (LRU; 0 disables).

    ``dataset[i]`` is ``{"volume": (1, z, y, x) float32 in [-1, 1], "prompt": str, "name": str}``.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        num_slices: int,
        image_size: int,
        stage: Stage,
        cache_size: int = 0,
    ):
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is invalid; allowed: {list(STAGES)}")
        for name, value in (("num_slices", num_slices), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; allowed: a positive int")
        if cache_size < 0:
            raise ValueError(f"cache_size={cache_size!r} is invalid; allowed: an int >= 0")
        self.folder = Path(folder)
        self.records = read_reports(self.folder)
        self.num_slices = num_slices
        self.image_size = image_size
        self.stage = stage
        self.cache_size = cache_size
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def prompts(self) -> list[str]:
        return [record.prompt for record in self.records]

    def volume(self, index: int) -> torch.Tensor:
        """The preprocessed ``(1, z, y, x)`` volume of row ``index``."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        record = self.records[index]
        volume_hu, _ = read_volume(record.path)
        if record.rescale_slope != 1.0 or record.rescale_intercept != 0.0:
            volume_hu = volume_hu.astype(np.float32) * record.rescale_slope + record.rescale_intercept
        volume = preprocess_volume(volume_hu, num_slices=self.num_slices, image_size=self.image_size)
        if self.cache_size:
            self._cache[index] = volume
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return volume

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"volume": self.volume(index), "prompt": record.prompt, "name": record.volume_name}
