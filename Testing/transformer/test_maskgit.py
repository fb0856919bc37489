"""MaskGIT parity with the reference fixtures (Testing/Data/parity/maskgit) and checkpoint-layout checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from GenerateCTLib.modeling import CheckpointError
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig

LOGITS_TOL = 1e-4
GUIDED_TOL = 5e-4
PROBS_TOL = 1e-5


def fixture_config(parity_dir) -> dict:
    return json.loads((parity_dir / "maskgit" / "config.json").read_text())


def load_fixture_model(parity_dir) -> MaskGIT:
    config = MaskGITConfig.from_reference_kwargs(fixture_config(parity_dir)["constructor_kwargs"])
    model = MaskGIT(config).eval()
    state = load_file(parity_dir / "maskgit" / "state.safetensors")
    model.load_reference_state_dict(state, source="maskgit/state.safetensors")
    return model


@pytest.fixture(scope="module")
def model(parity_dir) -> MaskGIT:
    return load_fixture_model(parity_dir)


@pytest.fixture(scope="module")
def io(parity_dir) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "maskgit" / "io.safetensors")


@pytest.fixture(scope="module")
def grid(parity_dir) -> tuple[int, int, int]:
    return tuple(fixture_config(parity_dir)["derived"]["video_patch_shape"])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= tol


def inputs(io, null: bool = False):
    mask = io["input.text_mask"]
    return io["input.token_ids"], io["input.text_embeds"], torch.zeros_like(mask) if null else mask


@torch.no_grad()
def test_continuous_position_bias(model, io, grid):
    assert_close(model.continuous_pos_bias(*grid), io["intermediate.continuous_pos_bias"], LOGITS_TOL)


def test_position_bias_cache_and_chunks(model, grid):
    bias = model.continuous_pos_bias
    with torch.no_grad():
        first = bias(*grid)
        assert bias(*grid) is first  # cached per grid shape
        for chunk_rows in (1, 7, 10_000):
            bias.chunk_rows = chunk_rows
            assert torch.equal(bias.compute(grid), first)
        bias.chunk_rows = 512
        # naive MLP over all n*n pairs (what the reference does)
        coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, 3)
        rel = coords[:, None] - coords[None, :]
        naive = bias.mlp(torch.sign(rel) * torch.log(rel.abs() + 1)).permute(2, 0, 1)
        assert (naive - first).abs().max().item() <= 1e-5
    # gradients flow through the (uncached) bias when training
    out = bias(*grid)
    assert out.requires_grad
    out.sum().backward()
    assert bias.net[0][0].weight.grad is not None
    bias.zero_grad(set_to_none=True)


def test_position_bias_cache_invalidated_by_new_weights(parity_dir, grid):
    fresh = load_fixture_model(parity_dir)
    with torch.no_grad():
        before = fresh.continuous_pos_bias(*grid).clone()
        fresh.continuous_pos_bias.net[2].bias.add_(1.0)
        after = fresh.continuous_pos_bias(*grid)
    assert torch.allclose(after, before + 1.0, atol=1e-6)


@torch.no_grad()
def test_logits_cond_and_null(model, io, grid):
    assert_close(model(*inputs(io), grid=grid), io["expected.logits_cond"], LOGITS_TOL)
    assert_close(model(*inputs(io, null=True), grid=grid), io["expected.logits_null"], LOGITS_TOL)


@torch.no_grad()
def test_embeds(model, io, grid):
    assert_close(model.embed(*inputs(io), grid=grid), io["intermediate.embeds_cond"], LOGITS_TOL)


@torch.no_grad()
def test_guided_logits_one_batch(model, io, grid):
    guided = model.forward_with_guidance(*inputs(io), grid=grid, cond_scale=5.0)
    assert_close(guided, io["expected.logits_guided_cond_scale5"], GUIDED_TOL)
    cond = model.forward_with_guidance(*inputs(io), grid=grid, cond_scale=1.0)
    assert_close(cond, io["expected.logits_cond"], LOGITS_TOL)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["cond", "null"])
def test_cross_attention_probabilities(model, io, grid, kind):
    prefix = "expected" if kind == "cond" else "intermediate"
    with model.capture_cross_attention() as probs:
        logits = model(*inputs(io, null=kind == "null"), grid=grid)
    assert len(probs) == model.config.depth
    for layer in range(model.config.depth):
        assert_close(probs[layer], io[f"{prefix}.cross_attn_probs_{kind}.layer{layer}"], PROBS_TOL)
    # the explicit (capturing) path and the SDPA path agree
    assert_close(logits, io[f"expected.logits_{kind}"], LOGITS_TOL)
    assert all(attn.capture is None for attn in model.transformer.attentions("cross"))


@torch.no_grad()
def test_self_attention_probabilities(model, io, grid):
    with model.capture_attention("self") as probs:
        model(*inputs(io), grid=grid)
    for layer in range(model.config.depth):
        assert_close(probs[layer], io[f"intermediate.self_attn_probs_cond.layer{layer}"], PROBS_TOL)


def test_invalid_inputs_raise(model, io, grid):
    ids, embeds, mask = inputs(io)
    with pytest.raises(ValueError, match="grid"):
        model(ids, embeds, mask, grid=(4, 4, 4))
    with pytest.raises(ValueError, match="token_ids"):
        model(ids.float(), embeds, mask, grid=grid)
    with pytest.raises(ValueError, match="text_embeds"):
        model(ids, embeds[..., :-1], mask, grid=grid)
    with pytest.raises(ValueError, match="text_mask"):
        model(ids, embeds, mask.float(), grid=grid)
    with pytest.raises(ValueError, match="kind"):
        with model.capture_attention("both"):
            pass


def test_config_from_reference_kwargs():
    config = MaskGITConfig.from_reference_kwargs(
        dict(num_tokens=8192, max_seq_len=10000, dim=512, dim_context=768, depth=6)
    )
    assert config == MaskGITConfig()
    assert MaskGITConfig.from_reference_kwargs(dict(num_tokens=8, max_seq_len=8, dim=16, depth=1)).dim_context == 16
    with pytest.raises(ValueError, match="unknown"):
        MaskGITConfig.from_reference_kwargs(dict(num_tokens=8, max_seq_len=8, dim=16, depth=1, bogus=1))
    with pytest.raises(ValueError, match="unconditional"):
        MaskGITConfig.from_reference_kwargs(dict(num_tokens=8, max_seq_len=8, dim=16, depth=1, unconditional=True))
    with pytest.raises(ValueError, match="missing"):
        MaskGITConfig.from_reference_kwargs(dict(dim=16))


@torch.no_grad()
def test_save_pretrained_round_trip(model, io, grid, tmp_path):
    model.save_pretrained(tmp_path)
    again = MaskGIT.from_pretrained(tmp_path)
    assert again.config == model.config
    assert torch.equal(again(*inputs(io), grid=grid), model(*inputs(io), grid=grid))


def test_reference_state_dict_round_trip(model, parity_dir):
    state = load_file(parity_dir / "maskgit" / "state.safetensors")
    ours = model.reference_state_dict()
    assert set(ours) == set(state)
    for name, tensor in ours.items():
        assert tensor.shape == state[name].shape, name
        if ".1.context_norm." not in name:  # unused self-attention norm: not kept
            assert torch.equal(tensor, state[name]), name


def test_released_layout_matches_manifest():
    from Testing.conftest import load_manifest

    manifest = load_manifest("maskgit")["entries"]
    expected = {k[len("maskgit.") :]: tuple(v["shape"]) for k, v in manifest.items() if k.startswith("maskgit.")}
    with torch.device("meta"):
        model = MaskGIT(MaskGITConfig())
    ours = {k: tuple(v.shape) for k, v in model.reference_state_dict().items()}
    assert ours == expected


@pytest.mark.parametrize("problem", ["missing", "extra", "misshaped"])
def test_load_reference_rejects_bad_state(model, parity_dir, problem):
    state = dict(load_file(parity_dir / "maskgit" / "state.safetensors"))
    key = "transformer.layers.1.2.null_kv"
    if problem == "missing":
        del state[key]
    elif problem == "extra":
        key = "transformer.layers.1.2.attn_bias"
        state[key] = torch.zeros(1)
    else:
        state[key] = state[key][:, :2]
    fresh = MaskGIT(model.config)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        fresh.load_reference_state_dict(state, source="state.safetensors")


@torch.no_grad()
def test_bfloat16_autocast_runs_close_to_float32(model, io, grid):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guided = model.forward_with_guidance(*inputs(io), grid=grid, cond_scale=5.0)
    assert guided.dtype == torch.bfloat16
    # loose: bf16 is an opt-in speed mode, float32 is the parity path
    assert (guided.float() - io["expected.logits_guided_cond_scale5"]).abs().max().item() < 0.5
    assert guided.shape == io["expected.logits_guided_cond_scale5"].shape
