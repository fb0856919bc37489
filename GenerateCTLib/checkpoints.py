"""Model bundles and conversion of the official GenerateCT checkpoints.

A *bundle* is one folder:

```
<bundle>/
  metadata.json                 name, version, source, intended use, conventions, sha256 of every file
  ctvit/{config.json, model.safetensors}
  maskgit/{config.json, model.safetensors}
  super_resolution/{config.json, model.safetensors}
  text_encoder/                 optional: a T5 encoder + tokenizer in Hugging Face format
```

Without ``text_encoder/`` the T5 encoder named in ``metadata.json`` (``google/t5-v1_1-base`` for the
official model) is loaded from the Hugging Face hub or its cache.

The official files (Hugging Face ``generatect/GenerateCT``, ``pretrained_models/*.pt``) are read with
``torch.load(..., weights_only=True)`` (never unrestricted pickle) and mapped strictly:

* ``ctvit_pretrained.pt``: the CT-ViT state dict; ``vgg.*`` and ``discr.*`` (training only) are dropped.
* ``transformer_pretrained.pt``: ``maskgit.*`` plus a ``ctvit.*`` copy. The reference's text-to-CT
  script loads this file last, so its ``ctvit.*`` copy is the decoder the reference generates with; the
  bundle uses it and records whether it equals the standalone CT-ViT file.
* ``superres_pretrained.pt``: a trainer checkpoint. The EMA weights (``ema`` → ``1.ema_model.*``), which
  the reference samples with, are preferred; ``model`` → ``unets.1.*`` is the fallback. Optimiser, scaler
  and step entries are ignored.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from GenerateCTLib._helpers import replace_directory
from GenerateCTLib.modeling import CheckpointError, PretrainedModel, atomic_write_bytes

METADATA_NAME = "metadata.json"
TEXT_ENCODER_DIR = "text_encoder"
COMPONENTS = ("ctvit", "maskgit", "super_resolution")
INTENDED_USE = "Research only. Synthetic images; not for diagnosis or any clinical decision."
# Written into every bundle: how arrays and geometry are to be read (see GenerateCTLib.__init__).
CONVENTIONS = {
    "array_axes": "(z, y, x)",
    "patient_frame": "LPS",
    "orientation": "axial; the model has no physical spacing, the pipeline assigns a nominal one",
    "intensity": "base stage HU = 1000 * x; super-resolution HU = 2000 * x - 1000; clipped to [-1000, 1000]",
}


def _component_class(component: str) -> type[PretrainedModel]:
    if component == "ctvit":
        from GenerateCTLib.tokenizer.ctvit import CTViT

        return CTViT
    if component == "maskgit":
        from GenerateCTLib.transformer.maskgit import MaskGIT

        return MaskGIT
    if component == "super_resolution":
        from GenerateCTLib.super_resolution.unet import SuperResolutionUnet

        return SuperResolutionUnet
    raise ValueError(f"unknown component {component!r}; allowed: {list(COMPONENTS)}")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# bundles


class Bundle:
    """An on-disk model bundle; components are loaded on request."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: model bundle folder not found")
        metadata_path = self.path / METADATA_NAME
        if not metadata_path.is_file():
            raise CheckpointError(f"{metadata_path}: bundle metadata not found")
        try:
            self.metadata: dict[str, Any] = json.loads(metadata_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{metadata_path}: not valid JSON ({exc})") from exc
        for key in ("name", "version", "files", "intended_use", "text_encoder"):
            if key not in self.metadata:
                raise CheckpointError(f"{metadata_path}: missing field {key!r}")

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    def verify(self) -> None:
        """Recompute the sha256 of every file listed in the metadata; raise on the first mismatch."""
        for relpath, expected in self.metadata["files"].items():
            path = self.path / relpath
            if not path.is_file():
                raise CheckpointError(f"{path}: listed in {METADATA_NAME} but missing")
            actual = sha256_file(path)
            if actual != expected:
                raise CheckpointError(f"{path}: sha256 {actual} does not match {METADATA_NAME} ({expected})")

    def load(
        self,
        component: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> PretrainedModel:
        """Load ``component`` (one of ``ctvit``, ``maskgit``, ``super_resolution``)."""
        return _component_class(component).from_pretrained(self.path / component, device=device, dtype=dtype)

    def text_encoder_source(self) -> str:
        """The local ``text_encoder/`` folder if the bundle has one, else the hub id in the metadata."""
        local = self.path / TEXT_ENCODER_DIR
        if local.is_dir():
            return str(local)
        return str(self.metadata["text_encoder"])

    def load_text_encoder(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from GenerateCTLib.text_encoder import T5TextEncoder

        return T5TextEncoder.from_pretrained(self.text_encoder_source(), device=device, dtype=dtype)


def write_bundle(
    out_dir: str | os.PathLike,
    models: Mapping[str, PretrainedModel],
    *,
    name: str,
    version: str,
    source: str,
    text_encoder: str | os.PathLike,
    extra_metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``models`` (keys from :data:`COMPONENTS`) and ``metadata.json`` as a bundle, atomically.

    Args:
        text_encoder: a hub id recorded in the metadata, or a local folder (Hugging Face format) that is
            copied into ``<bundle>/text_encoder``.
        overwrite: replace an existing ``out_dir``; without it an existing folder is an error.
    """
    out_dir = Path(out_dir)
    missing = [c for c in COMPONENTS if c not in models]
    if missing:
        raise ValueError(f"models is missing component(s) {missing}; a bundle needs {list(COMPONENTS)}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for component in COMPONENTS:
            models[component].save_pretrained(staging / component)
        text_encoder_name = str(text_encoder)
        if Path(text_encoder).is_dir():
            shutil.copytree(text_encoder, staging / TEXT_ENCODER_DIR)
            text_encoder_name = TEXT_ENCODER_DIR
        files = {
            path.relative_to(staging).as_posix(): sha256_file(path)
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        metadata = {
            "name": name,
            "version": version,
            "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "intended_use": INTENDED_USE,
            "conventions": CONVENTIONS,
            "text_encoder": text_encoder_name,
            **(dict(extra_metadata) if extra_metadata else {}),
            "files": files,
        }
        atomic_write_bytes(staging / METADATA_NAME, (json.dumps(metadata, indent=2) + "\n").encode())
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------------------------------
# official checkpoints


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` an official ``.pt`` file safely (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means an unusable file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (mapping), found {type(obj).__name__}")
    return dict(obj)


def _with_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def official_ctvit_state(state_dict: Mapping[str, Any], *, source: str) -> dict[str, torch.Tensor]:
    """The CT-ViT entries of ``ctvit_pretrained.pt`` (``vgg.*``/``discr.*`` dropped)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(("vgg.", "discr."))}


def official_transformer_states(
    state_dict: Mapping[str, Any], *, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(maskgit, ctvit)`` entries of ``transformer_pretrained.pt``; anything else is an error."""
    other = [k for k in state_dict if not k.startswith(("maskgit.", "ctvit."))]
    if other:
        raise CheckpointError(f"{source}: unexpected key {other[0]!r} (expected only maskgit.* and ctvit.*)")
    maskgit = _with_prefix(state_dict, "maskgit.")
    if not maskgit:
        raise CheckpointError(f"{source}: no maskgit.* keys; is this transformer_pretrained.pt?")
    return maskgit, _with_prefix(state_dict, "ctvit.")


def official_superres_state(checkpoint: Mapping[str, Any], *, source: str) -> tuple[dict[str, Any], str]:
    """The SR Unet entries of ``superres_pretrained.pt`` and which copy they came from (``ema``/``model``)."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping):
        unet = _with_prefix(ema, "1.ema_model.")
        if unet:
            return unet, "ema"
    model = checkpoint.get("model")
    if isinstance(model, Mapping):
        unet = _with_prefix(model, "unets.1.")
        if unet:
            return unet, "model"
    raise CheckpointError(
        f"{source}: neither 'ema' (1.ema_model.*) nor 'model' (unets.1.*) holds the super-resolution Unet"
    )


def _states_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and (a[k].is_meta or torch.equal(a[k], b[k])) for k in a
    )


def convert_official(
    *,
    ctvit: str | os.PathLike | None,
    transformer: str | os.PathLike,
    superres: str | os.PathLike,
    out_dir: str | os.PathLike,
    reference_config: Mapping[str, Mapping[str, Any]] | None = None,
    text_encoder: str | os.PathLike = "google/t5-v1_1-base",
    name: str = "generatect-official",
    overwrite: bool = False,
) -> Path:
    """Convert the three official ``.pt`` files into a bundle.

    Args:
        ctvit: ``ctvit_pretrained.pt``; optional because the transformer file carries the CT-ViT copy
            the reference generates with. When given, it is compared with that copy.
        reference_config: reference constructor kwargs per component, ``{"ctvit": {...}, "maskgit":
            {...}, "superres": {...}}`` (as in the parity fixtures). Absent components use the
            released configuration.
    """
    from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
    from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
    from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig

    reference_config = dict(reference_config or {})
    unknown = sorted(set(reference_config) - {"ctvit", "maskgit", "superres"})
    if unknown:
        raise ValueError(f"reference_config has unknown component(s) {unknown}; allowed: ctvit, maskgit, superres")

    def config(cls, key):
        kwargs = reference_config.get(key)
        return cls.from_reference_kwargs(kwargs) if kwargs is not None else cls()

    transformer_state = read_official_checkpoint(transformer)
    maskgit_state, ctvit_copy = official_transformer_states(transformer_state, source=str(transformer))
    notes: dict[str, Any] = {}
    if ctvit is not None:
        standalone = official_ctvit_state(read_official_checkpoint(ctvit), source=str(ctvit))
        notes["ctvit_copy_equals_standalone"] = bool(ctvit_copy) and _states_equal(ctvit_copy, standalone)
        if not ctvit_copy:
            ctvit_copy = standalone
    if not ctvit_copy:
        raise CheckpointError(f"{transformer}: no ctvit.* keys and no --ctvit file given")
    superres_state, superres_copy = official_superres_state(read_official_checkpoint(superres), source=str(superres))
    notes["super_resolution_weights"] = superres_copy

    models: dict[str, PretrainedModel] = {
        "ctvit": CTViT(config(CTViTConfig, "ctvit")),
        "maskgit": MaskGIT(config(MaskGITConfig, "maskgit")),
        "super_resolution": SuperResolutionUnet(config(SuperResolutionUnetConfig, "superres")),
    }
    models["ctvit"].load_reference_state_dict(ctvit_copy, source=f"{transformer} (ctvit.*)")
    models["maskgit"].load_reference_state_dict(maskgit_state, source=f"{transformer} (maskgit.*)")
    models["super_resolution"].load_reference_state_dict(
        superres_state, source=f"{superres} ({'ema 1.ema_model' if superres_copy == 'ema' else 'model unets.1'}.*)"
    )
    return write_bundle(
        out_dir,
        models,
        name=name,
        version="1.0",
        source="converted from the official GenerateCT checkpoints (Hugging Face generatect/GenerateCT)",
        text_encoder=text_encoder,
        extra_metadata={
            "conversion": {
                "files": {
                    k: {"name": Path(v).name, "sha256": sha256_file(v)}
                    for k, v in (("ctvit", ctvit), ("transformer", transformer), ("superres", superres))
                    if v is not None
                },
                **notes,
            }
        },
        overwrite=overwrite,
    )
