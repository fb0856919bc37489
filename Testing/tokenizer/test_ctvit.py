"""CT-ViT parity with the reference fixtures (Testing/Data/parity/ctvit) and checkpoint-layout checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from GenerateCTLib.modeling import CheckpointError
from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig

TOL = 1e-4


def load_fixture_model(parity_dir) -> CTViT:
    folder = parity_dir / "ctvit"
    kwargs = json.loads((folder / "config.json").read_text())["constructor_kwargs"]
    model = CTViT(CTViTConfig.from_reference_kwargs(kwargs)).eval()
    model.load_reference_state_dict(load_file(folder / "state.safetensors"), source="ctvit/state.safetensors")
    return model


@pytest.fixture(scope="module")
def model(parity_dir) -> CTViT:
    return load_fixture_model(parity_dir)


@pytest.fixture(scope="module")
def io(parity_dir) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "ctvit" / "io.safetensors")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= tol


def run_with_stage_hooks(model: CTViT, fn) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    names = (
        "enc_spatial_transformer",
        "enc_temporal_transformer",
        "dec_temporal_transformer",
        "dec_spatial_transformer",
    )
    handles = [
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name in names
    ]
    try:
        with torch.no_grad():
            fn()
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@torch.no_grad()
def test_patch_tokens(model, io):
    assert_close(model.embed_patches(io["input.video"]), io["intermediate.patch_tokens"])


@torch.no_grad()
def test_spatial_position_bias(model, io):
    h, w = model.spatial_grid
    assert_close(model.spatial_rel_pos_bias(h, w), io["intermediate.spatial_rel_pos_bias"])


@torch.no_grad()
def test_pre_quant_tokens(model, io):
    assert_close(model.encode(io["input.video"]), io["expected.pre_quant_tokens"])


def test_transformer_stage_outputs(model, io):
    ids = io["expected.codebook_ids"]
    outputs = run_with_stage_hooks(model, lambda: (model.encode(io["input.video"]), model.decode_from_ids(ids)))
    for name, out in outputs.items():
        assert_close(out, io[f"intermediate.{name}_out"])


@torch.no_grad()
def test_quantized_tokens_are_raw_codebook_rows(model, io):
    quantized, ids = model.quantize(io["expected.pre_quant_tokens"])
    b = quantized.shape[0]
    assert_close(quantized.reshape(b, -1, quantized.shape[-1]), io["expected.quantized_tokens"])
    assert torch.equal(quantized, model.vq.codebook[ids])
    flat = io["expected.pre_quant_tokens"].reshape(b, -1, quantized.shape[-1])
    assert_close(model.vq.cosine_similarity(flat), io["intermediate.cosine_sim"])


@torch.no_grad()
def test_codebook_ids_exact(model, io):
    ids = model.encode_to_ids(io["input.video"])
    assert ids.dtype == torch.int64
    assert torch.equal(ids, io["expected.codebook_ids"])


@torch.no_grad()
def test_decode_from_flat_and_4d_ids(model, io):
    ids = io["expected.codebook_ids"]
    flat = model.decode_from_ids(ids.reshape(ids.shape[0], -1))
    assert_close(flat, io["expected.decoded_from_ids"])
    assert_close(model.decode_from_ids(ids), io["intermediate.decoded_from_ids_4d"])
    assert_close(model.decode_from_ids(ids.reshape(ids.shape[0], -1), grid=tuple(ids.shape[1:])), flat, 0.0)


@torch.no_grad()
def test_reconstruction(model, io):
    assert_close(model(io["input.video"]), io["expected.reconstruction"])


def test_invalid_inputs_raise(model, io):
    video = io["input.video"]
    with pytest.raises(ValueError, match="num_slices"):
        model.encode(video[:, :, :8])
    with pytest.raises(ValueError, match="volume shape"):
        model.encode(video[:, :, :, :16])
    ids = io["expected.codebook_ids"].reshape(1, -1)
    with pytest.raises(ValueError, match="ids shape"):
        model.decode_from_ids(ids[:, :-1])
    with pytest.raises(ValueError, match="ids must lie"):
        model.decode_from_ids(ids + model.config.codebook_size)


def test_config_from_reference_kwargs():
    kwargs = dict(
        dim=64,
        codebook_size=64,
        image_size=32,
        patch_size=8,
        temporal_patch_size=2,
        spatial_depth=1,
        temporal_depth=1,
        use_vgg_and_gan=False,
        discr_base_dim=16,
    )
    config = CTViTConfig.from_reference_kwargs(kwargs)
    assert config.dim_head == 64 and config.heads == 8  # the reference constructor's defaults
    with pytest.raises(ValueError, match="unknown"):
        CTViTConfig.from_reference_kwargs({**kwargs, "bogus": 1})
    with pytest.raises(ValueError, match="missing"):
        CTViTConfig.from_reference_kwargs({"dim": 64})
    with pytest.raises(ValueError, match="image_size"):
        CTViTConfig(image_size=100, patch_size=16)


@torch.no_grad()
def test_save_pretrained_round_trip(model, io, tmp_path):
    model.save_pretrained(tmp_path)
    again = CTViT.from_pretrained(tmp_path)
    assert again.config == model.config
    video = io["input.video"]
    assert torch.equal(again(video), model(video))
    assert torch.equal(again.encode_to_ids(video), model.encode_to_ids(video))


def test_reference_state_dict_round_trip(model, parity_dir):
    state = load_file(parity_dir / "ctvit" / "state.safetensors")
    ours = model.reference_state_dict()
    assert set(ours) == set(state)
    for name, tensor in ours.items():
        assert tensor.shape == state[name].shape, name
        if ".1.context_norm." not in name:  # unused self-attention norm: not kept
            assert torch.equal(tensor, state[name]), name


def test_released_layout_matches_manifest():
    from Testing.conftest import load_manifest

    manifest = load_manifest("ctvit")["entries"]
    expected = {k: tuple(v["shape"]) for k, v in manifest.items() if not k.startswith(("vgg.", "discr."))}
    with torch.device("meta"):
        model = CTViT(CTViTConfig())
    ours = {k: tuple(v.shape) for k, v in model.reference_state_dict().items()}
    assert ours == expected


@pytest.mark.parametrize("problem", ["missing", "extra", "misshaped"])
def test_load_reference_rejects_bad_state(model, parity_dir, problem):
    state = dict(load_file(parity_dir / "ctvit" / "state.safetensors"))
    key = "enc_temporal_transformer.layers.1.1.to_q.weight"
    if problem == "missing":
        del state[key]
    elif problem == "extra":
        key = "vq._codebook.embed_avg"
        state[key] = torch.zeros(1, 64, 64)
    else:
        state[key] = state[key][:, :-1]
    fresh = CTViT(model.config)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        fresh.load_reference_state_dict(state, source="state.safetensors")


@torch.no_grad()
def test_bfloat16_autocast_decode_runs_close_to_float32(model, io):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        video = model.decode_from_ids(io["expected.codebook_ids"])
    assert (video.float() - io["expected.decoded_from_ids"]).abs().max().item() < 0.1


@torch.no_grad()
def test_patch_norm_off_keeps_the_density_of_a_uniform_region(tmp_path):
    small = dict(dim=32, codebook_size=16, image_size=16, patch_size=8, spatial_depth=1, temporal_depth=1,
                 dim_head=8, heads=2)
    lung = torch.full((1, 1, 5, 16, 16), -0.85)
    emphysema = lung - 0.07  # -850 HU and -920 HU
    torch.manual_seed(0)
    reference = CTViT(CTViTConfig(**small)).eval()
    # the reference normalises each patch: a uniform density change never reaches the tokens
    assert torch.allclose(reference.embed_patches(lung), reference.embed_patches(emphysema), atol=1e-5)
    torch.manual_seed(0)
    model = CTViT(CTViTConfig(**small, patch_norm=False)).eval()
    assert (model.embed_patches(lung) - model.embed_patches(emphysema)).abs().max() > 1e-3
    assert not any("norm_in" in name for name in model.state_dict())
    model.save_pretrained(tmp_path)
    again = CTViT.from_pretrained(tmp_path)
    assert again.config.patch_norm is False and torch.equal(again(lung), model(lung))
    with pytest.raises(ValueError, match="patch_norm=False has no reference layout"):
        model.reference_state_dict()
    with pytest.raises(ValueError, match="patch_norm='no'"):
        CTViTConfig(**small, patch_norm="no")
    with pytest.raises(ValueError, match="unknown.*patch_norm"):
        CTViTConfig.from_reference_kwargs({**small, "temporal_patch_size": 2, "patch_norm": False})


def test_fsq_ids_lookup_and_straight_through():
    from GenerateCTLib.tokenizer.quantizer import FiniteScalarQuantizer

    torch.manual_seed(0)
    fsq = FiniteScalarQuantizer(12, (8, 5, 3))
    assert fsq.codebook_size == 120
    # every id is a distinct grid point: the scalars of lookup's digits give the id back
    ids = torch.arange(120)
    digits = (ids[:, None] // fsq._basis) % fsq._levels
    assert torch.equal(fsq._ids_from_scalars((digits - fsq._levels // 2).float()), ids)
    # large encoder outputs reach the extreme levels, and nothing beyond them
    tokens = torch.randn(4000, 12) * 50
    seen = fsq.ids(tokens)
    assert seen.min() >= 0 and seen.max() < 120 and {0, 119} <= set(seen.tolist())
    tokens = torch.randn(64, 12, requires_grad=True)
    out = fsq.quantize_for_training(tokens)
    assert torch.allclose(out.quantized, fsq.lookup(out.ids), atol=1e-6) and out.commit_loss == 0
    out.quantized.sum().backward()
    assert tokens.grad.abs().sum() > 0  # straight-through rounding passes gradients to the encoder


@torch.no_grad()
def test_fsq_ctvit_round_trips_and_has_no_reference_layout(tmp_path):
    small = dict(dim=32, codebook_size=40, image_size=16, patch_size=8, spatial_depth=1, temporal_depth=1,
                 dim_head=8, heads=2)
    torch.manual_seed(0)
    model = CTViT(CTViTConfig(**small, fsq_levels=[5, 4, 2])).eval()
    assert model.config.fsq_levels == (5, 4, 2)
    volume = torch.randn(1, 1, 5, 16, 16) * 0.3
    ids = model.encode_to_ids(volume)
    assert ids.shape == (1, 3, 2, 2) and 0 <= ids.min() and ids.max() < 40
    assert torch.allclose(model.decode_from_ids(ids), model(volume), atol=1e-6)
    model.save_pretrained(tmp_path)
    again = CTViT.from_pretrained(tmp_path)
    assert again.config.fsq_levels == (5, 4, 2) and torch.equal(again(volume), model(volume))
    with pytest.raises(ValueError, match=r"fsq_levels=\(5, 4, 2\) has no reference layout"):
        model.reference_state_dict()
    with pytest.raises(ValueError, match=r"fsq_levels=\(5, 4\) is invalid.*codebook_size=40"):
        CTViTConfig(**small, fsq_levels=(5, 4))
    with pytest.raises(ValueError, match="unknown.*fsq_levels"):
        CTViTConfig.from_reference_kwargs({**small, "temporal_patch_size": 2, "fsq_levels": (5, 4, 2)})
