"""The package's only helper module: tiny functions used by several stages."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def exists(value: Any) -> bool:
    return value is not None


def default(value: T | None, fallback: T) -> T:
    return value if value is not None else fallback


def cast_tuple(value: Any, length: int = 1) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * length
