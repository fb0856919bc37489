"""Bundles and the conversion of the official checkpoints.

Full-size checks run on the ``meta`` device from the reference manifests (names → shapes), so they
cost no memory; the end-to-end conversion runs on real ``.pt`` files made from the parity fixtures.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from GenerateCTLib.checkpoints import (
    Bundle,
    convert_official,
    official_ctvit_state,
    official_superres_state,
    official_transformer_states,
    read_official_checkpoint,
)
from GenerateCTLib.cli import main
from GenerateCTLib.modeling import CheckpointError
from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig
from Testing.conftest import PARITY_DIR, load_manifest
from Testing.tiny_models import reference_kwargs, write_small_official_checkpoints


def meta_state(entries: dict) -> dict[str, torch.Tensor]:
    dtypes = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}
    return {
        name: torch.empty(e["shape"], dtype=dtypes[e["dtype"]], device="meta") for name, e in entries.items()
    }


def released_models_on_meta():
    with torch.device("meta"):
        return (
            CTViT(CTViTConfig()),
            MaskGIT(MaskGITConfig()),
            SuperResolutionUnet(SuperResolutionUnetConfig()),
        )


# ---------------------------------------------------------------------------------------------------
# full size, from the manifests


def test_released_models_export_exactly_the_manifest_names_and_shapes():
    ctvit, maskgit, unet = released_models_on_meta()

    def shapes(state, prefix=""):
        return {prefix + k: tuple(v.shape) for k, v in state.items()}

    ctvit_manifest = load_manifest("ctvit")["entries"]
    expected = {k: tuple(e["shape"]) for k, e in ctvit_manifest.items() if not k.startswith(("vgg.", "discr."))}
    assert shapes(ctvit.reference_state_dict()) == expected

    maskgit_manifest = load_manifest("maskgit")["entries"]
    exported = {**shapes(maskgit.reference_state_dict(), "maskgit."), **shapes(ctvit.reference_state_dict(), "ctvit.")}
    assert exported == {k: tuple(e["shape"]) for k, e in maskgit_manifest.items()}

    superres_manifest = load_manifest("superres")["entries"]
    exported = {**shapes(unet.reference_state_dict(), "unets.1."), "unets.0.dummy_parameter": (1,)}
    assert exported == {k: tuple(e["shape"]) for k, e in superres_manifest.items()}


def test_loader_accepts_the_released_layouts():
    ctvit, maskgit, unet = released_models_on_meta()
    ctvit_file = meta_state(load_manifest("ctvit")["entries"])
    ctvit.load_reference_state_dict(official_ctvit_state(ctvit_file, source="ctvit.pt"), source="ctvit.pt")

    maskgit_part, ctvit_copy = official_transformer_states(
        meta_state(load_manifest("maskgit")["entries"]), source="transformer.pt"
    )
    maskgit.load_reference_state_dict(maskgit_part, source="transformer.pt")
    ctvit.load_reference_state_dict(ctvit_copy, source="transformer.pt")

    manifest = load_manifest("superres")
    checkpoint = {
        "model": meta_state(manifest["entries"]),
        "ema": meta_state(manifest["ema_state_dict_manifest(ema_pytorch version dependent)"]["entries"]),
    }
    state, copy = official_superres_state(checkpoint, source="superres.pt")
    assert copy == "ema"
    unet.load_reference_state_dict(state, source="superres.pt")
    del checkpoint["ema"]
    state, copy = official_superres_state(checkpoint, source="superres.pt")
    assert copy == "model"
    unet.load_reference_state_dict(state, source="superres.pt")


@pytest.mark.parametrize("component", ["ctvit", "maskgit", "superres"])
@pytest.mark.parametrize("fault", ["missing", "extra", "misshaped"])
def test_loader_rejects_a_faulty_state_dict_naming_file_and_key(component, fault):
    ctvit, maskgit, unet = released_models_on_meta()
    model = {"ctvit": ctvit, "maskgit": maskgit, "superres": unet}[component]
    state = dict(model.reference_state_dict())
    victim = sorted(k for k, v in state.items() if v.dim() >= 2)[3]
    if fault == "missing":
        del state[victim]
    elif fault == "extra":
        victim = "layers.99.surprise.weight"
        state[victim] = torch.empty(3, device="meta")
    else:
        state[victim] = torch.empty(7, 5, device="meta")
    with pytest.raises(CheckpointError) as excinfo:
        model.load_reference_state_dict(state, source="some_file.pt")
    message = str(excinfo.value)
    word = {"missing": "missing", "extra": "unexpected", "misshaped": "shape"}[fault]
    assert "some_file.pt" in message and victim in message and word in message


# ---------------------------------------------------------------------------------------------------
# end to end on small reference weights


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    return write_small_official_checkpoints(tmp_path_factory.mktemp("official"))


def test_convert_cli_writes_a_bundle_that_reproduces_the_reference(official_files, tmp_path):
    out = tmp_path / "bundle"
    argv = [
        "weights", "convert",
        "--ctvit", str(official_files / "ctvit_pretrained.pt"),
        "--transformer", str(official_files / "transformer_pretrained.pt"),
        "--superres", str(official_files / "superres_pretrained.pt"),
        "--reference-config", str(official_files / "reference.json"),
        "--t5", str(official_files / "t5"),
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    bundle = Bundle(out)
    bundle.verify()
    assert bundle.metadata["conversion"]["ctvit_copy_equals_standalone"] is True
    assert bundle.metadata["conversion"]["super_resolution_weights"] == "ema"
    assert "not for diagnosis" in bundle.metadata["intended_use"]
    assert bundle.text_encoder_source() == str(out / "text_encoder")

    io = load_file(PARITY_DIR / "ctvit/io.safetensors")
    ctvit = bundle.load("ctvit")
    decoded = ctvit.decode_from_ids(io["expected.codebook_ids"])
    assert (decoded - io["expected.decoded_from_ids"]).abs().max() <= 1e-4

    io = load_file(PARITY_DIR / "superres/unet_io.safetensors")
    unet = bundle.load("super_resolution")
    with torch.no_grad():
        v = unet(
            io["input.x_noisy"],
            io["intermediate.time_cond_log_snr"],
            io["input.lowres_cond_img"],
            io["intermediate.lowres_noise_times_log_snr"],
            io["input.text_embeds"],
            io["input.text_mask"],
        )
    assert (v - io["expected.unet_out"]).abs().max() <= 1e-4

    # an existing bundle is never replaced silently
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0


def test_convert_without_standalone_ctvit_uses_the_transformer_copy(official_files, tmp_path):
    out = convert_official(
        ctvit=None,
        transformer=official_files / "transformer_pretrained.pt",
        superres=official_files / "superres_pretrained.pt",
        out_dir=tmp_path / "b",
        reference_config=reference_kwargs(),
        text_encoder="google/t5-v1_1-base",
    )
    bundle = Bundle(out)
    assert bundle.text_encoder_source() == "google/t5-v1_1-base"
    assert not (out / "text_encoder").exists()


def test_unreadable_files_give_one_clear_error(official_files, tmp_path):
    good = (official_files / "transformer_pretrained.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    for path in (truncated, garbage, evil, tmp_path / "absent.pt"):
        with pytest.raises(CheckpointError, match=path.name):
            read_official_checkpoint(path)


def test_mismatched_reference_config_names_the_first_offending_key(official_files, tmp_path):
    config = reference_kwargs()
    config["maskgit"] = {**config["maskgit"], "depth": 3}
    with pytest.raises(CheckpointError, match=r"transformer_pretrained\.pt.*missing key 'transformer\.layers\.2"):
        convert_official(
            ctvit=None,
            transformer=official_files / "transformer_pretrained.pt",
            superres=official_files / "superres_pretrained.pt",
            out_dir=tmp_path / "b",
            reference_config=config,
        )
    assert not (tmp_path / "b").exists()
