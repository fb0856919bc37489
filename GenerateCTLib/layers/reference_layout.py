"""Helpers to expose a module's weights under the reference (official GenerateCT) names and back.

A model describes its reference layout as a list of ``(reference name, own name or None, tensor)``
items. Own name ``None`` marks entries that only exist in the reference checkpoints (unused tensors);
they are checked for shape on load and then dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from GenerateCTLib.modeling import check_state_dict

ReferenceItems = Sequence[tuple[str, "str | None", torch.Tensor]]


def prefixed(module: nn.Module, own_prefix: str, ref_prefix: str, renames: Mapping[str, str] | None = None):
    """Items for a submodule whose state-dict names equal the reference ones up to a prefix/rename table."""
    items = []
    for name, tensor in module.state_dict().items():
        ref = (renames or {}).get(name, name)
        items.append((f"{ref_prefix}{ref}", f"{own_prefix}{name}", tensor))
    return items


def items_to_state_dict(items: ReferenceItems) -> dict[str, torch.Tensor]:
    """The reference-named state dict."""
    return {ref: tensor for ref, _, tensor in items}


def load_reference_items(
    module: nn.Module, items: ReferenceItems, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Strictly check ``state_dict`` against the reference names/shapes of ``items`` and load it."""
    check_state_dict({ref: tuple(t.shape) for ref, _, t in items}, state_dict, source=source)
    own = {own_name: state_dict[ref] for ref, own_name, _ in items if own_name is not None}
    module.load_state_dict(own, strict=True)
