"""Shared fixtures: paths to the reference data copied into ``Testing/Data``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "Data"
PARITY_DIR = DATA_DIR / "parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY_DIR


def load_manifest(component: str) -> dict:
    """The full-size reference state-dict manifest of ``component`` (ctvit, maskgit or superres)."""
    return json.loads((DATA_DIR / f"{component}_state_manifest.json").read_text())
