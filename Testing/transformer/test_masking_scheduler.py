"""MaskGIT decoding schedule and replay of the recorded reference sampling trace."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from GenerateCTLib.transformer.masking_scheduler import MaskGITScheduler, sample_token_ids
from Testing.tokenizer.test_ctvit import load_fixture_model as load_ctvit
from Testing.transformer.test_maskgit import fixture_config
from Testing.transformer.test_maskgit import load_fixture_model as load_maskgit


@pytest.fixture(scope="module")
def released(parity_dir) -> dict:
    return json.loads((parity_dir / "maskgit" / "sampling_schedule_released.json").read_text())


@pytest.fixture(scope="module")
def trace(parity_dir) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "maskgit" / "sample_trace.safetensors")


@pytest.fixture(scope="module")
def maskgit(parity_dir):
    return load_maskgit(parity_dir)


@pytest.fixture(scope="module")
def grid(parity_dir) -> tuple[int, int, int]:
    return tuple(fixture_config(parity_dir)["derived"]["video_patch_shape"])


def text_inputs(trace):
    embeds = trace["input.text_embeds"]
    return embeds, torch.any(embeds != 0, dim=-1)


def test_released_schedule(released):
    scheduler = MaskGITScheduler(released["steps"])
    n = released["num_tokens"]
    counts = [scheduler.num_masked(s, n) for s in range(released["steps"])]
    assert counts == released["num_masked_tokens_per_step"]
    temps = [scheduler.temperature(s) for s in range(released["steps"])]
    assert temps == released["temperature_per_step"]  # exact float64 equality
    assert torch.equal(
        torch.tensor(temps, dtype=torch.float32), torch.tensor(released["temperature_per_step_as_float32"])
    )


def test_scheduler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_inference_steps"):
        MaskGITScheduler(0)
    scheduler = MaskGITScheduler(4)
    with pytest.raises(ValueError, match="step"):
        scheduler.temperature(4)
    with pytest.raises(ValueError, match="logits shape"):
        scheduler.step(torch.zeros(1, 3, 5), 0, torch.zeros(1, 4, dtype=torch.long), mask_id=5)


def test_trace_teacher_forcing(maskgit, trace, grid):
    scheduler = MaskGITScheduler(trace["trace.input_ids"].shape[0])
    embeds, mask = text_inputs(trace)
    assert [scheduler.temperature(s) for s in range(scheduler.num_inference_steps)] == trace[
        "trace.temperature"
    ].tolist()
    for s in range(scheduler.num_inference_steps):
        input_ids = trace["trace.input_ids"][s]
        with torch.no_grad():
            logits = maskgit.forward_with_guidance(input_ids, embeds, mask, grid=grid, cond_scale=5.0)
        assert (logits - trace["trace.logits_guided"][s]).abs().max().item() <= 5e-4
        # step from the recorded logits so each step is checked independently of earlier rounding
        out = scheduler.step(
            trace["trace.logits_guided"][s],
            s,
            input_ids,
            mask_id=maskgit.mask_id,
            uniform_noise=trace["trace.uniform_noise"][s],
        )
        assert torch.equal(out.pred_ids, trace["trace.pred_ids"][s])
        if s + 1 < scheduler.num_inference_steps:
            assert torch.equal(out.next_input_ids, trace["trace.input_ids"][s + 1])
            assert int(out.next_mask.sum()) == scheduler.num_masked(s + 1, input_ids.shape[1])
        else:
            assert out.next_mask is None
            assert torch.equal(out.token_ids, trace["expected.final_ids"])


def test_trace_whole_run_and_decode(maskgit, trace, grid, parity_dir):
    scheduler = MaskGITScheduler(trace["trace.input_ids"].shape[0])
    embeds, mask = text_inputs(trace)
    seen = []
    ids = sample_token_ids(
        maskgit,
        embeds,
        mask,
        grid=grid,
        scheduler=scheduler,
        cond_scale=5.0,
        callback=lambda step, total: seen.append((step, total)),
        noise_fn=lambda step, shape: trace["trace.uniform_noise"][step],
    )
    assert seen == [(s + 1, scheduler.num_inference_steps) for s in range(scheduler.num_inference_steps)]
    assert torch.equal(ids, trace["expected.final_ids"])
    ctvit = load_ctvit(parity_dir)
    with torch.no_grad():
        video = ctvit.decode_from_ids(ids)
    assert (video - trace["expected.video"]).abs().max().item() <= 1e-4


def test_generator_sampling_is_reproducible_and_cancellable(maskgit, trace, grid):
    embeds, mask = text_inputs(trace)
    scheduler = MaskGITScheduler(4)
    run = [
        sample_token_ids(
            maskgit, embeds, mask, grid=grid, scheduler=scheduler, generator=torch.Generator().manual_seed(7)
        )
        for _ in range(2)
    ]
    assert torch.equal(run[0], run[1])
    assert run[0].shape == (1, grid[0] * grid[1] * grid[2]) and int(run[0].max()) < maskgit.mask_id

    class Cancelled(Exception):
        pass

    def cancel(step, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        sample_token_ids(maskgit, embeds, mask, grid=grid, scheduler=scheduler, callback=cancel)
