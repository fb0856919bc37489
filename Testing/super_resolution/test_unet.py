"""SR Unet parity with the reference (fixture weights and inputs) and its config / weight handling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from GenerateCTLib.modeling import CheckpointError, reference_shapes
from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
from Testing.conftest import load_manifest

TOL = 1e-4  # README suggested tolerance for the SR Unet output (float32, different kernels)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def unet_args(io):
    return (
        io["input.x_noisy"],
        io["intermediate.time_cond_log_snr"],
        io["input.lowres_cond_img"],
        io["intermediate.lowres_noise_times_log_snr"],
    )


# ---------------------------------------------------------------------------------------------------
# numerical parity


def test_config_from_fixture_kwargs(reference_kwargs):
    config = SuperResolutionUnetConfig.from_reference_kwargs(reference_kwargs)
    assert (config.dim, config.dim_mults, config.num_resnet_blocks, config.cond_dim) == (16, (1, 2, 4), 2, 16)
    assert (config.attn_heads, config.attn_dim_head, config.max_text_len) == (2, 8, 8)
    assert (config.attn_pool_num_latents, config.text_embed_dim) == (4, 32)


def test_parity_unet_has_the_fixture_parameter_count(parity_unet):
    assert sum(p.numel() for p in parity_unet.parameters()) == 1_440_408


def test_unet_output_matches_reference(parity_unet, unet_io):
    with torch.no_grad():
        out = parity_unet(*unet_args(unet_io), unet_io["input.text_embeds"], unet_io["input.text_mask"])
    assert max_diff(out, unet_io["expected.unet_out"]) <= TOL


def test_unet_output_matches_reference_in_channels_last(parity_unet, unet_io):
    args = [a.contiguous(memory_format=torch.channels_last) if a.ndim == 4 else a for a in unet_args(unet_io)]
    with torch.no_grad():
        out = parity_unet(*args, unet_io["input.text_embeds"], unet_io["input.text_mask"])
    assert max_diff(out, unet_io["expected.unet_out"]) <= TOL


def test_unet_output_matches_reference_one_sample_at_a_time(parity_unet, unet_io):
    """Batch 1 takes the fused GroupNorm-affine path; it must agree with the batched one."""
    args = unet_args(unet_io)
    with torch.no_grad():
        for i in range(2):
            out = parity_unet(
                *(a[i : i + 1] for a in args),
                unet_io["input.text_embeds"][i : i + 1],
                unet_io["input.text_mask"][i : i + 1],
            )
            assert max_diff(out, unet_io["expected.unet_out"][i : i + 1]) <= TOL


def test_unet_intermediates_match_reference(parity_unet, unet_io):
    captured = {}
    hooks = [
        parity_unet.init_conv.register_forward_hook(lambda m, i, o: captured.__setitem__("init_conv", o)),
        parity_unet.final_res_block.register_forward_hook(lambda m, i, o: captured.__setitem__("final", o)),
    ]
    try:
        with torch.no_grad():
            text = parity_unet.encode_text(unet_io["input.text_embeds"], unet_io["input.text_mask"])
            t, context = parity_unet.conditioning(
                unet_io["intermediate.time_cond_log_snr"],
                unet_io["intermediate.lowres_noise_times_log_snr"],
                text,
            )
            parity_unet.denoise(*unet_args(unet_io), text)
    finally:
        for hook in hooks:
            hook.remove()
    assert max_diff(text.tokens, unet_io["intermediate.attn_pool_out"]) <= 1e-5
    assert max_diff(t, unet_io["intermediate.t_cond"]) <= 1e-5
    assert max_diff(context, unet_io["intermediate.cond_tokens_c"]) <= 1e-5
    assert max_diff(captured["init_conv"], unet_io["intermediate.init_conv_out"]) <= 1e-5
    assert max_diff(captured["final"], unet_io["intermediate.final_res_block_out"]) <= TOL


def test_null_text_conditioning_matches_reference_cond_drop(parity_unet, unet_io):
    with torch.no_grad():
        text = parity_unet.encode_text(
            unet_io["input.text_embeds"],
            unet_io["input.text_mask"],
            drop_text=torch.ones(2, dtype=torch.bool),
        )
        out = parity_unet.denoise(*unet_args(unet_io), text)
    assert max_diff(out, unet_io["expected.unet_out_null_cond_drop_prob1"]) <= TOL


def test_text_conditioning_is_per_sample_and_broadcastable(parity_unet, unet_io):
    """Encoding one prompt and broadcasting it equals encoding it for every sample."""
    embeds, mask = unet_io["input.text_embeds"][:1], unet_io["input.text_mask"][:1]
    with torch.no_grad():
        once = parity_unet.encode_text(embeds, mask)
        out_broadcast = parity_unet.denoise(*unet_args(unet_io), once)
        out_repeated = parity_unet(*unet_args(unet_io), embeds.expand(2, -1, -1), mask.expand(2, -1))
    assert max_diff(out_broadcast, out_repeated) <= 1e-5  # stride-0 inputs take other GEMM paths


def test_quirks_are_load_bearing(parity_unet, unet_io):
    """Feeding raw t instead of the log-SNR, or masking the Perceiver, would be clearly wrong."""
    x, log_snr, lowres, lowres_log_snr = unet_args(unet_io)
    with torch.no_grad():
        raw_t = parity_unet(
            x,
            unet_io["input.times"],
            lowres,
            lowres_log_snr,
            unet_io["input.text_embeds"],
            unet_io["input.text_mask"],
        )
    assert max_diff(raw_t, unet_io["expected.unet_out"]) > 0.1


# ---------------------------------------------------------------------------------------------------
# input validation


def test_forward_rejects_bad_shapes(parity_unet, unet_io):
    x, t, lowres, lt = unet_args(unet_io)
    text = (unet_io["input.text_embeds"], unet_io["input.text_mask"])
    with pytest.raises(ValueError, match="lowres"):
        parity_unet(x, t, lowres[..., :16, :16], lt, *text)
    with pytest.raises(ValueError, match="times"):
        parity_unet(x, t[:1], lowres, lt, *text)
    with pytest.raises(ValueError, match="text_mask"):
        parity_unet(x, t, lowres, lt, text[0], text[1].float())


# ---------------------------------------------------------------------------------------------------
# config


def test_config_rejects_unimplemented_reference_options(reference_kwargs):
    for key, value in [
        ("layer_attns", True),
        ("attend_at_middle", True),
        ("memory_efficient", False),
        ("use_linear_cross_attn", True),
        ("self_cond", True),
        ("lowres_cond", False),
    ]:
        with pytest.raises(ValueError, match=f"{key}={value!r}"):
            SuperResolutionUnetConfig.from_reference_kwargs({**reference_kwargs, key: value})
    with pytest.raises(ValueError, match="layer_cross_attns"):
        SuperResolutionUnetConfig.from_reference_kwargs({**reference_kwargs, "layer_cross_attns": [True, False, True]})
    with pytest.raises(ValueError, match="unknown"):
        SuperResolutionUnetConfig.from_reference_kwargs({**reference_kwargs, "flux_capacitor": 1})


def test_config_validates_values():
    with pytest.raises(ValueError, match="resnet_groups"):
        SuperResolutionUnetConfig(dim=20)
    with pytest.raises(ValueError, match="dim_mults"):
        SuperResolutionUnetConfig(dim_mults=())


def test_released_config_from_manifest_locals_is_the_default():
    """The manifest stores the yaml's OmegaConf ListConfig as a repr string: the cross-attention quirk."""
    locals_ = load_manifest("superres")["resolved_unet_locals_after_cast_model_parameters"]
    assert locals_["layer_cross_attns"] == "[False, False, False, True]"
    assert SuperResolutionUnetConfig.from_reference_kwargs(locals_) == SuperResolutionUnetConfig()


def test_config_json_round_trip():
    config = SuperResolutionUnetConfig(dim=16, attn_heads=2)
    assert SuperResolutionUnetConfig.from_dict(config.to_dict()) == config
    assert SuperResolutionUnetConfig().cond_dim == 64


# ---------------------------------------------------------------------------------------------------
# weights


def test_save_pretrained_round_trip(parity_unet, unet_io, tmp_path):
    parity_unet.save_pretrained(tmp_path / "sr")
    loaded = SuperResolutionUnet.from_pretrained(tmp_path / "sr")
    assert loaded.config == parity_unet.config
    with torch.no_grad():
        a = parity_unet(*unet_args(unet_io), unet_io["input.text_embeds"], unet_io["input.text_mask"])
        b = loaded(*unet_args(unet_io), unet_io["input.text_embeds"], unet_io["input.text_mask"])
    assert torch.equal(a, b)


def test_released_size_matches_manifest_on_meta():
    manifest = load_manifest("superres")["entries"]
    expected = {k.removeprefix("unets.1."): tuple(e["shape"]) for k, e in manifest.items() if k.startswith("unets.1.")}
    assert len(expected) == 447
    with torch.device("meta"):
        unet = SuperResolutionUnet(SuperResolutionUnetConfig())
    assert reference_shapes(unet) == expected
    assert sum(p.numel() for p in unet.parameters()) == 22_190_440


@pytest.mark.parametrize("fault", ["missing", "extra", "misshaped"])
def test_load_reference_state_dict_rejects_faults_naming_the_key(fault):
    with torch.device("meta"):
        unet = SuperResolutionUnet(SuperResolutionUnetConfig())
    state = dict(unet.reference_state_dict())
    victim = "mid_block2.cross_attn.to_kv.weight"
    if fault == "missing":
        del state[victim]
    elif fault == "extra":
        victim = "mid_attn.surprise.weight"
        state[victim] = torch.empty(3, device="meta")
    else:
        state[victim] = torch.empty(7, 5, device="meta")
    with pytest.raises(CheckpointError) as excinfo:
        unet.load_reference_state_dict(state, source="superres_pretrained.pt")
    assert "superres_pretrained.pt" in str(excinfo.value) and victim in str(excinfo.value)


def test_config_is_a_dataclass_of_the_base():
    assert dataclasses.is_dataclass(SuperResolutionUnetConfig)
    assert SuperResolutionUnet.config_class is SuperResolutionUnetConfig
