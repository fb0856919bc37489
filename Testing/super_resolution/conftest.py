"""Fixtures of the super-resolution tests: the parity model and tensors, loaded once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig


@pytest.fixture(scope="session")
def superres_dir(parity_dir: Path) -> Path:
    return parity_dir / "superres"


@pytest.fixture(scope="session")
def reference_kwargs(superres_dir: Path) -> dict:
    return json.loads((superres_dir / "config.json").read_text())["resolved_unet_kwargs(unet._locals)"]


@pytest.fixture(scope="session")
def parity_unet(superres_dir: Path, reference_kwargs: dict) -> SuperResolutionUnet:
    """The fixture-size Unet with the fixture weights, in eval mode (do not modify)."""
    unet = SuperResolutionUnet(SuperResolutionUnetConfig.from_reference_kwargs(reference_kwargs)).eval()
    state = load_file(superres_dir / "unet_state.safetensors")
    unet.load_reference_state_dict(state, source="unet_state.safetensors")
    return unet


@pytest.fixture(scope="session")
def unet_io(superres_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(superres_dir / "unet_io.safetensors")


@pytest.fixture(scope="session")
def sample_trace(superres_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(superres_dir / "sample_trace.safetensors")


@pytest.fixture(scope="session")
def facts(superres_dir: Path) -> dict:
    return json.loads((superres_dir / "diffusion_facts.json").read_text())


@pytest.fixture(scope="session")
def fact_tensors(superres_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(superres_dir / "diffusion_facts.safetensors")
