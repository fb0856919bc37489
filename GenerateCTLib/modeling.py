"""Shared model plumbing: config dataclasses saved as ``config.json``, weights as ``model.safetensors``.

Every network of the cascade is a :class:`PretrainedModel` with a ``config_class`` dataclass. The
architecture numbers live in that dataclass only; ``save_pretrained(dir)`` writes them beside the
weights and ``from_pretrained(dir)`` rebuilds the network from them.

Each network also knows the *reference* state-dict layout of the official GenerateCT code
(``reference_state_dict`` / ``load_reference_state_dict``); :mod:`GenerateCTLib.checkpoints` uses those
to convert the released ``.pt`` files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from GenerateCTLib._helpers import atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A weights file or folder cannot be used: names the file and the first offending key."""


# ---------------------------------------------------------------------------------------------------
# configs

C = TypeVar("C", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    """Base for the per-component config dataclasses (JSON round trip with strict field checking)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any], *, source: str = "config") -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"{source}: unknown {cls.__name__} field(s) {unknown}; allowed: {sorted(names)}"
            )
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                # JSON has no tuples; fields declared as tuples get them back
                if isinstance(value, list) and isinstance(f.default, tuple):
                    value = tuple(value)
                kwargs[f.name] = value
        return cls(**kwargs)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config file not found")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(values, source=str(path))


# ---------------------------------------------------------------------------------------------------
# files


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the expected names and shapes.

    The message names ``source`` (usually a file) and the first missing, unexpected or misshaped key.
    """
    missing = [name for name in expected if name not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    extra = [name for name in state_dict if name not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all)")
    for name, shape in expected.items():
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: key {name!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"{source}: key {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: key {name!r} holds NaN or infinite values")


# ---------------------------------------------------------------------------------------------------
# models

M = TypeVar("M", bound="PretrainedModel")


class PretrainedModel(nn.Module):
    """A network rebuilt from ``<dir>/config.json`` with weights in ``<dir>/model.safetensors``."""

    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {config!r}")
        self.config = config

    # -- our own format -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (float32, contiguous) into ``directory``."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else None)
            .contiguous()
            .clone()
            for name, tensor in self.state_dict().items()
        }
        atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
        self.config.save(directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(
        cls: type[M],
        directory: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> M:
        """Rebuild the network from ``directory`` and load its weights strictly, in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: model folder not found")
        config = cls.config_class.load(directory / CONFIG_NAME)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file not found")
        try:
            state_dict = load_file(weights)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
        model = cls(config)
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        check_state_dict(expected, state_dict, source=str(weights))
        model.load_state_dict(state_dict, strict=True)
        model.eval()
        return model.to(device=device, dtype=dtype)

    # -- the reference layout (official GenerateCT code) --------------------------------------------

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """This network's weights under the official GenerateCT names and shapes."""
        raise NotImplementedError

    def load_reference_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Load weights given under the official names; strict, with a clear error naming ``source``."""
        raise NotImplementedError


def reference_shapes(model: PretrainedModel) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``model.reference_state_dict()`` (works on the ``meta`` device)."""
    return {name: tuple(t.shape) for name, t in model.reference_state_dict().items()}
