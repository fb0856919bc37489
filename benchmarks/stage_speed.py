"""Stage speed at the released sizes on this machine (random weights, float32 unless --dtype).

Times, in this order:

1. the low-resolution stage: one CT-ViT decode of 101×8×8 ids (→ 201×128×128) and one guided MaskGIT step
   (cond + null as one batch of 2, 6464 tokens, 64 text tokens, cond_scale 5, plus the scheduler step);
   the peak RSS is read right after it;
2. one super-resolution denoising step on a batch of 512² slices (seconds per slice);
3. unless ``--no-baseline``, the same work in the reference's form, measured in this run: the 3-D
   position-bias MLP evaluated over all 6464² pairs before every forward and the cond/null passes as two
   forwards; the SR Unet one slice at a time with the text conditioning recomputed per call.

It prints ratios against that baseline and against the reference code's own timings on a 2-core CPU
(guided step 127 s, CT-ViT decode 3.35 s, SR step 5.28 s per slice). Last line:
``RESULT maskgit_step_s=… ctvit_decode_s=… sr_step_per_slice_s=… peak_rss_gb=…``.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from GenerateCTLib.super_resolution.diffusion_scheduler import DiffusionScheduler
from GenerateCTLib.super_resolution.unet import SuperResolutionUnet, SuperResolutionUnetConfig
from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig
from GenerateCTLib.transformer.masking_scheduler import MaskGITScheduler

REFERENCE_SECONDS = {"maskgit_step": 127.0, "ctvit_decode": 3.35, "sr_step_per_slice": 5.28}
GRID = (101, 8, 8)
TEXT_LEN = 64


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` wall-clock runs (the first run is also the warm-up when repeats > 1)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def all_pairs_bias(model: MaskGIT, grid: tuple[int, int, int], chunk_rows: int = 256) -> torch.Tensor:
    """The 3-D position bias the way the reference computes it: the MLP on every (query, key) pair."""
    n = grid[0] * grid[1] * grid[2]
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).reshape(n, 3)
    out = torch.empty(model.config.heads, n, n)
    bias_module = model.continuous_pos_bias
    for start in range(0, n, chunk_rows):
        rel = (coords[start : start + chunk_rows, None, :] - coords[None, :, :]).float()
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        out[:, start : start + chunk_rows] = bias_module.mlp(rel).permute(2, 0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sr-batch", type=int, default=1, help="512² slices per SR step (default 1, fastest on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-run reference-form baseline")
    parser.add_argument("--repeats", type=int, default=2, help="runs per timing, best kept (default 2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")

    # 1. low-resolution stage ------------------------------------------------------------------------
    with torch.no_grad():
        ctvit = CTViT(CTViTConfig()).eval()
        ids = torch.randint(0, ctvit.config.codebook_size, (1, *GRID), generator=generator)
        ctvit_decode_s = timed(lambda: ctvit.decode_from_ids(ids), args.repeats)
        print(f"ctvit decode 101x8x8 -> 201x128x128: {ctvit_decode_s:.2f} s")

        maskgit = MaskGIT(MaskGITConfig()).eval()
        text = torch.randn(1, TEXT_LEN, maskgit.config.dim_context, generator=generator)
        text_mask = torch.ones(1, TEXT_LEN, dtype=torch.bool)
        scheduler = MaskGITScheduler()
        n = GRID[0] * GRID[1] * GRID[2]
        token_ids = torch.full((1, n), maskgit.mask_id)
        start = time.perf_counter()
        maskgit.continuous_pos_bias(*GRID)  # computed once per grid shape, then cached
        bias_s = time.perf_counter() - start
        print(f"maskgit 3-D position bias (once per run): {bias_s:.2f} s")

        def guided_step():
            logits = maskgit.forward_with_guidance(token_ids, text, text_mask, grid=GRID, cond_scale=5.0)
            scheduler.step(logits, 1, token_ids, mask_id=maskgit.mask_id, generator=generator)

        maskgit_step_s = timed(guided_step, args.repeats)
        print(f"maskgit guided step (cond + null, 6464 tokens): {maskgit_step_s:.2f} s")
        lowres_peak_gb = peak_rss_gb()
        print(f"peak RSS after the low-resolution stage: {lowres_peak_gb:.2f} GB")

        baseline: dict[str, float] = {}
        if not args.no_baseline:
            def reference_form_step():
                for mask in (text_mask, torch.zeros_like(text_mask)):
                    maskgit.continuous_pos_bias.clear_cache()
                    all_pairs_bias(maskgit, GRID)  # the reference recomputes it in every forward
                    maskgit(token_ids, text, mask, grid=GRID)

            baseline["maskgit_step"] = timed(reference_form_step, 1)
            print(f"baseline maskgit step (reference form): {baseline['maskgit_step']:.2f} s")
        maskgit.continuous_pos_bias.clear_cache()  # free the 1.3 GB bias before the SR stage

        # 2. super-resolution ----------------------------------------------------------------------
        unet = SuperResolutionUnet(SuperResolutionUnetConfig()).eval()
        sr_scheduler = DiffusionScheduler()
        text_sr = torch.randn(1, TEXT_LEN, unet.config.text_embed_dim, generator=generator)
        text_cond = unet.encode_text(text_sr, text_mask)
        b = args.sr_batch
        noisy = torch.randn(b, 1, 512, 512, generator=generator).contiguous(memory_format=torch.channels_last)
        lowres = torch.randn(b, 1, 512, 512, generator=generator).contiguous(memory_format=torch.channels_last)
        times = torch.full((b,), 0.5)
        lowres_times = torch.full((b,), 2.2511)

        def sr_step():
            v = unet.denoise(noisy, times, lowres, lowres_times, text_cond)
            sr_scheduler.step(v, 0, noisy, generator=generator)

        sr_scheduler.set_timesteps(25)
        sr_step_per_slice_s = timed(sr_step, args.repeats) / b
        print(f"sr step, batch {b} x 512^2: {sr_step_per_slice_s:.2f} s per slice")
        if not args.no_baseline:
            one = noisy[:1].contiguous()

            def reference_form_sr():
                unet(one, times[:1], lowres[:1].contiguous(), lowres_times[:1], text_sr, text_mask)

            baseline["sr_step_per_slice"] = timed(reference_form_sr, 1)
            print(f"baseline sr step (one slice, text re-encoded): {baseline['sr_step_per_slice']:.2f} s")

    measured = {
        "maskgit_step": maskgit_step_s,
        "ctvit_decode": ctvit_decode_s,
        "sr_step_per_slice": sr_step_per_slice_s,
    }
    for key, seconds in measured.items():
        line = f"{key}: {seconds:.2f} s, {REFERENCE_SECONDS[key] / seconds:.1f}x faster than the reference code"
        if key in baseline:
            line += f", {baseline[key] / seconds:.1f}x faster than the in-run baseline"
        print(line)
    print(
        f"RESULT maskgit_step_s={maskgit_step_s:.2f} ctvit_decode_s={ctvit_decode_s:.2f} "
        f"sr_step_per_slice_s={sr_step_per_slice_s:.2f} peak_rss_gb={lowres_peak_gb:.2f}"
    )


if __name__ == "__main__":
    main()
