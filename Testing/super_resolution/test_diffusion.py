"""Diffusion scheduler facts and the full sampling trace of the reference SR stage."""

from __future__ import annotations

import math

import pytest
import torch

from GenerateCTLib.super_resolution.diffusion_scheduler import (
    DiffusionScheduler,
    alpha_sigma,
    cosine_log_snr,
    dynamic_threshold,
    linear_log_snr,
)
from GenerateCTLib.super_resolution.sampling import ReplayNoise, sample_super_resolution

STEPS = 25


@pytest.fixture()
def scheduler() -> DiffusionScheduler:
    return DiffusionScheduler(STEPS)


# ---------------------------------------------------------------------------------------------------
# schedule facts (bitwise: same float32 operations as the reference)


def test_times_and_cosine_schedule_are_bitwise_reference(scheduler, fact_tensors):
    assert torch.equal(scheduler.timesteps, fact_tensors["schedule.times_26"])
    assert torch.equal(scheduler.log_snrs, fact_tensors["schedule.log_snr_26"])
    alpha, sigma = alpha_sigma(scheduler.log_snrs)
    assert torch.equal(alpha, fact_tensors["schedule.alpha_26"])
    assert torch.equal(sigma, fact_tensors["schedule.sigma_26"])


def test_float32_log_snr_quirk_at_t_equal_1(scheduler, facts):
    """float32 gives −33.89 at t = 1 (float64: −74.66); the Unet receives the float32 value at step 0."""
    step0 = scheduler.model_time_input(0, 3)
    assert step0.dtype == torch.float32 and torch.all(step0 == facts["log_snr_26"][0])
    assert step0[0].item() == pytest.approx(-33.891315, abs=1e-5)
    assert cosine_log_snr(torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(-33.891315, abs=1e-5)
    assert facts["log_snr_26_float64"][0] == pytest.approx(-74.66, abs=0.01)


def test_model_time_inputs_are_the_reference_log_snrs(scheduler, fact_tensors):
    for i in range(STEPS):
        assert torch.equal(scheduler.model_time_input(i, 2), fact_tensors["schedule.log_snr_26"][i].expand(2))


def test_posterior_coefficients(scheduler, facts):
    ones, zeros = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    for fact in facts["sampling_steps"]:
        i = fact["step"]
        coef_x0, log_var = scheduler.q_posterior(ones, zeros, i)
        coef_xt, _ = scheduler.q_posterior(zeros, ones, i)
        assert coef_x0.item() == pytest.approx(fact["posterior_mean_coef_x_start(alpha_next*c)"], rel=1e-6, abs=1e-12)
        assert coef_xt.item() == pytest.approx(
            fact["posterior_mean_coef_x_t(alpha_next*(1-c)/alpha)"], rel=1e-6, abs=1e-12
        )
        assert log_var.item() == fact["posterior_log_variance_clipped(log(clamp(var,1e-20)))"]
        assert math.exp(log_var.item()) == pytest.approx(fact["posterior_variance(sigma_next^2*c)"], rel=1e-6)
        assert (scheduler.timesteps[i + 1].item() != 0) == fact["noise_added"]


def test_lowres_noise_facts(scheduler, fact_tensors, facts):
    log_snr = scheduler.lowres_log_snr(1)
    assert torch.equal(log_snr, fact_tensors["lowres.log_snr_t0.1"])
    assert torch.equal(linear_log_snr(torch.tensor([0.1])), fact_tensors["lowres.log_snr_t0.1"])
    alpha, sigma = alpha_sigma(log_snr)
    assert torch.equal(alpha, fact_tensors["lowres.alpha_t0.1"])
    assert torch.equal(sigma, fact_tensors["lowres.sigma_t0.1"])
    assert alpha.item() == pytest.approx(0.95118, abs=1e-5) and sigma.item() == pytest.approx(0.30863, abs=1e-5)
    assert log_snr.item() == pytest.approx(facts["lowres_noise_log_snr"], abs=0)


def test_lowres_augmentation_matches_reference(scheduler, unet_io):
    lowres, log_snr = scheduler.augment_lowres(
        unet_io["input.lowres_image_0_1"], 32, noise=unet_io["input.lowres_noise"]
    )
    assert torch.equal(log_snr, unet_io["intermediate.lowres_noise_times_log_snr"])
    clean, _ = DiffusionScheduler(STEPS, lowres_noise_level=0.0).augment_lowres(
        unet_io["input.lowres_image_0_1"], 32, noise=torch.zeros(2, 1, 32, 32)
    )
    assert torch.allclose(clean, unet_io["intermediate.lowres_upsampled_neg1_1"], atol=2e-4)  # alpha(0) < 1
    assert (lowres - unet_io["input.lowres_cond_img"]).abs().max().item() <= 1e-6


def test_dynamic_threshold(fact_tensors):
    out = dynamic_threshold(fact_tensors["dynthresh.x0_in"], 0.95)
    assert torch.equal(out, fact_tensors["dynthresh.x0_out"])


# ---------------------------------------------------------------------------------------------------
# sampling trace


def test_trace_teacher_forced_step_by_step(parity_unet, scheduler, sample_trace):
    tr = sample_trace
    with torch.no_grad():
        text = parity_unet.encode_text(tr["input.text_embeds"], tr["input.text_mask"])
        lowres, lowres_log_snr = scheduler.augment_lowres(
            tr["input.lowres_image_0_1"], 32, noise=tr["trace.lowres_noise"]
        )
        for i in range(STEPS):
            x = tr["trace.initial_noise"] if i == 0 else tr["trace.img_after_step"][i - 1]
            v = parity_unet.denoise(x, scheduler.model_time_input(i, 2), lowres, lowres_log_snr, text)
            assert (v - tr["trace.unet_out"][i]).abs().max().item() <= 1e-4, f"unet_out step {i}"
            out = scheduler.step(tr["trace.unet_out"][i], i, x, noise=tr["trace.step_noise"][i])
            assert (out.pred_original_sample - tr["trace.x_start"][i]).abs().max().item() <= 1e-6, f"x_start {i}"
            assert (out.posterior_mean - tr["trace.model_mean"][i]).abs().max().item() <= 1e-6, f"mean {i}"
            assert torch.allclose(out.posterior_log_variance, tr["trace.model_log_variance"][i], atol=1e-6, rtol=0)
            assert (out.prev_sample - tr["trace.img_after_step"][i]).abs().max().item() <= 1e-6, f"img {i}"


def test_full_run_with_replayed_noise(parity_unet, scheduler, sample_trace):
    tr = sample_trace
    noise = ReplayNoise(tr["trace.lowres_noise"], tr["trace.initial_noise"], tr["trace.step_noise"])
    progress = []
    out = sample_super_resolution(
        parity_unet,
        scheduler,
        tr["input.lowres_image_0_1"],
        tr["input.text_embeds"],
        tr["input.text_mask"],
        noise=noise,
        callback=lambda done, total: progress.append((done, total)),
    )
    assert (out - tr["expected.output_0_1"]).abs().max().item() <= 1e-4
    assert progress == [(i + 1, STEPS) for i in range(STEPS)]


def test_generator_reproduces_the_reference_draw_order(parity_unet, scheduler, sample_trace):
    """Seeded like the reference run (torch.manual_seed(31337)), a Generator gives the same noises."""
    tr = sample_trace
    out = sample_super_resolution(
        parity_unet,
        scheduler,
        tr["input.lowres_image_0_1"],
        tr["input.text_embeds"],
        tr["input.text_mask"],
        generator=torch.Generator().manual_seed(31337),
        channels_last=False,
    )
    assert (out - tr["expected.output_0_1"]).abs().max().item() <= 1e-4


def test_bf16_autocast_sampling_stays_close(parity_unet, scheduler, sample_trace):
    tr = sample_trace
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample_super_resolution(
            parity_unet,
            scheduler,
            tr["input.lowres_image_0_1"],
            tr["input.text_embeds"],
            tr["input.text_mask"],
            generator=torch.Generator().manual_seed(31337),
        )
    assert out.dtype == torch.float32
    assert (out - tr["expected.output_0_1"]).abs().max().item() <= 0.03


def test_callback_can_cancel(parity_unet, scheduler, sample_trace):
    class Stop(Exception):
        pass

    def cancel(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        sample_super_resolution(
            parity_unet,
            scheduler,
            sample_trace["input.lowres_image_0_1"],
            sample_trace["input.text_embeds"],
            generator=torch.Generator().manual_seed(0),
            callback=cancel,
        )


def test_training_helpers_invert_each_other(scheduler):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0.2, 0.5, 0.9])
    x_t = scheduler.add_noise(x0, noise, t)
    v = scheduler.get_velocity(x0, noise, t)
    alpha, sigma = alpha_sigma(cosine_log_snr(t))
    assert torch.allclose(alpha[:, None, None, None] * x_t - sigma[:, None, None, None] * v, x0, atol=1e-5)


def test_scheduler_rejects_bad_arguments(scheduler):
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="step_index"):
        scheduler.step(torch.zeros(1, 1, 4, 4), STEPS, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="dynamic_threshold_percentile"):
        DiffusionScheduler(dynamic_threshold_percentile=1.5)
