"""The package's only helper module: tiny functions used by several stages."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def exists(value: Any) -> bool:
    return value is not None


def default(value: T | None, fallback: T) -> T:
    return value if value is not None else fallback


def cast_tuple(value: Any, length: int = 1) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * length


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide outputs from other users
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``staging`` in place of ``target`` by renames (same file system): an existing
    ``target`` is moved aside into a fresh hidden folder first and deleted only after the swap."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


RELEASED_COND_SCALE = 5.0  # the guidance scale of the released GenerateCT sampling


def bundle_cond_scale(metadata: dict) -> float:
    """The guidance scale a bundle was tuned for (``metadata.json`` → ``defaults.cond_scale``), else the
    released 5 (read without loading a network, so the Slicer panel can show it)."""
    return float(metadata.get("defaults", {}).get("cond_scale", RELEASED_COND_SCALE))
