"""Losses: masking schedule, text dropout as the null pass, SR v-target, discriminator terms, VQ training."""

from __future__ import annotations

import math

import pytest
import torch

from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.training.losses import (
    SliceDiscriminator,
    build_perceptual_loss,
    cosine_training_mask,
    drop_text_mask,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
    maskgit_loss,
    random_slices,
    superres_loss,
    windowed_mse,
)
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig


def test_cosine_training_mask_counts():
    g = torch.Generator().manual_seed(0)
    mask = cosine_training_mask(2000, 64, steps=18, generator=g)
    counts = mask.sum(dim=1)
    allowed = {max(1, round(64 * math.cos(math.pi / 2 * r / 18))) for r in range(18)}
    assert set(counts.tolist()) <= allowed and counts.min() >= 1
    # r = 0 masks everything; the mean masked fraction is E[cos(π/2 · r/18)] ≈ 0.66
    assert counts.max() == 64
    assert abs(counts.float().mean().item() / 64 - 0.66) < 0.03


def test_text_dropout_rate_and_null_pass():
    g = torch.Generator().manual_seed(1)
    text_mask = torch.ones(20000, 5, dtype=torch.bool)
    dropped_mask, dropped = drop_text_mask(text_mask, 0.1, generator=g)
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    assert not dropped_mask[dropped].any() and dropped_mask[~dropped].all()


def test_maskgit_loss_uses_inference_null_pass():
    torch.manual_seed(0)
    model = MaskGIT(MaskGITConfig(num_tokens=16, max_seq_len=32, dim=16, dim_context=8, depth=1, heads=2, dim_head=8))
    grid = (2, 2, 2)
    ids = torch.randint(0, 16, (64, 8))
    embeds, text_mask = torch.randn(64, 3, 8), torch.ones(64, 3, dtype=torch.bool)
    seen = {}

    def spy(inputs, text_embeds, mask, *, grid):
        seen["mask"] = mask
        seen["inputs"] = inputs
        return model(inputs, text_embeds, mask, grid=grid)

    loss, info = maskgit_loss(
        spy,
        ids,
        embeds,
        text_mask,
        grid=grid,
        mask_id=16,
        cond_drop_prob=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert 10 < int(info["dropped"].sum()) < 54
    # dropped rows get an all-False text mask: exactly forward_with_guidance's null branch
    assert not seen["mask"][info["dropped"]].any() and seen["mask"][~info["dropped"]].all()
    assert torch.equal(seen["inputs"] == 16, info["mask"])
    null = model(ids[:1], embeds[:1], torch.zeros(1, 3, dtype=torch.bool), grid=grid)
    guided = model.forward_with_guidance(ids[:1], embeds[:1], grid=grid, cond_scale=0.0)
    assert torch.allclose(null, guided, atol=1e-5)


def test_superres_loss_target_and_dropout():
    calls = {}

    def fake_model(noisy, times, lowres, lowres_times, embeds, mask, drop):
        calls.update(noisy=noisy, times=times, lowres=lowres, lowres_times=lowres_times, drop=drop)
        return torch.zeros_like(noisy)

    high = torch.rand(1000, 1, 8, 8) * 2 - 1
    low = torch.rand(1000, 1, 4, 4)
    loss, info = superres_loss(
        fake_model,
        high,
        low,
        torch.randn(1000, 2, 4),
        torch.ones(1000, 2, dtype=torch.bool),
        generator=torch.Generator().manual_seed(0),
    )
    assert calls["lowres"].shape == high.shape and calls["lowres_times"].shape == (1000,)
    assert abs(info["dropped"].float().mean().item() - 0.1) < 0.03
    # with a zero prediction the loss is E|v|² = α² E ε² + σ² E x0² (≈ between the two second moments)
    assert 0.3 < loss.item() < 1.05
    fixed, info = superres_loss(
        fake_model,
        high,
        low,
        torch.randn(1000, 2, 4),
        torch.ones(1000, 2, dtype=torch.bool),
        lowres_noise_level=0.1,
        min_snr_gamma=5.0,
    )
    assert torch.allclose(calls["lowres_times"], torch.full((1000,), 2.2511179))
    assert fixed.item() < loss.item()  # min-SNR weights are <= 1


def test_discriminator_terms():
    torch.manual_seed(0)
    disc = SliceDiscriminator(1, base_dim=4, num_layers=2)
    volume = torch.randn(2, 1, 5, 16, 16)
    slices = random_slices(volume, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    assert slices.shape == (6, 1, 16, 16)
    logits = disc(slices)
    assert logits.shape == (6, 1, 4, 4)
    assert hinge_discriminator_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)) == 0
    assert hinge_generator_loss(torch.ones(3)) == -1
    assert gradient_penalty(slices, logits) >= 0


def test_perceptual_loss_skips_cleanly(tmp_path):
    assert build_perceptual_loss(None) is None
    assert build_perceptual_loss(tmp_path / "missing_vgg16.pth") is None


def _tiny_ctvit() -> CTViT:
    torch.manual_seed(0)
    return CTViT(
        CTViTConfig(
            dim=16, codebook_size=8, image_size=16, patch_size=8, spatial_depth=1, temporal_depth=1, dim_head=8, heads=2
        )
    )


def test_vq_training_keeps_inference_numerics():
    ctvit = _tiny_ctvit().eval()
    volume = torch.randn(2, 1, 5, 16, 16)
    tokens = ctvit.encode(volume)
    vq = ctvit.vq
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    rows, ids = vq(tokens)
    out = vq.quantize_for_training(tokens)
    # same ids, forward value = raw rows, identity gradient, buffers untouched
    assert torch.equal(out.ids, ids) and torch.allclose(out.quantized, rows, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    assert torch.allclose(out.commit_loss, torch.nn.functional.mse_loss(rows, tokens))
    leaf = tokens.detach().requires_grad_(True)
    vq.quantize_for_training(leaf).quantized.sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(leaf))
    # after EMA / k-means / dead-code updates the inference path is still "argmax cosine, raw rows"
    vq.kmeans_init(tokens, generator=torch.Generator().manual_seed(0))
    vq.ema_update(tokens, vq.ids(tokens), decay=0.8)
    vq.cluster_size.fill_(10.0)
    vq.cluster_size[0, :2] = 0
    assert vq.replace_dead_codes(tokens, 0.5, generator=torch.Generator().manual_seed(0)) == 2
    rows, ids = vq(tokens)
    expected = torch.nn.functional.normalize(tokens, dim=-1) @ torch.nn.functional.normalize(vq.codebook, dim=-1).t()
    assert torch.equal(ids, expected.argmax(dim=-1))
    assert torch.equal(rows, vq.codebook[ids])
    assert set(vq.state_dict()) == {"embed", "cluster_size", "initted"}


def test_ema_update_moves_rows_towards_assigned_means():
    vq = _tiny_ctvit().vq
    tokens = torch.randn(100, 16)
    ids = torch.zeros(100, dtype=torch.long)
    old = vq.codebook.clone()
    vq.ema_update(tokens, ids, decay=0.8)
    target = torch.nn.functional.normalize(torch.nn.functional.normalize(tokens, dim=-1).mean(0), dim=-0)
    assert torch.allclose(vq.codebook[0], 0.8 * old[0] + 0.2 * target, atol=1e-6)
    assert torch.equal(vq.codebook[1:], old[1:])
    assert vq.cluster_size[0, 0] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="decay="):
        vq.ema_update(tokens, ids, decay=1.0)


def test_windowed_mse_counts_only_differences_inside_the_window():
    target = torch.full((1, 1, 2, 4, 4), -0.85)  # lung, model units (HU / 1000)
    darker = target - 0.1  # -950 HU: 0.2 of the [-1000, -500] window
    assert torch.isclose(windowed_mse(darker, target, (-1000, -500)), torch.tensor(0.04))
    assert windowed_mse(target, target, (-1000, -500)) == 0
    soft = torch.full_like(target, 0.04)  # soft tissue 40 vs 80 HU: both above the window
    assert windowed_mse(soft + 0.04, soft, (-1000, -500)) == 0
    recon = darker.clone().requires_grad_(True)
    windowed_mse(recon, target, (-1000, -500)).backward()
    assert recon.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="window_hu"):
        windowed_mse(target, target, (-500, -1000))


def test_patch_mean_mse_sees_density_not_texture():
    from GenerateCTLib.training.losses import patch_mean_mse

    target = torch.full((1, 1, 3, 8, 8), -0.85)
    texture = target.clone()
    texture[..., ::2, :] += 0.1  # stripes: every 4×4 patch keeps its mean
    texture[..., 1::2, :] -= 0.1
    assert patch_mean_mse(texture, target, 4) < 1e-12
    assert torch.isclose(patch_mean_mse(target - 0.07, target, 4), torch.tensor(0.0049))  # -920 vs -850 HU
    with pytest.raises(ValueError, match="patch_size=3"):
        patch_mean_mse(target, target, 3)
