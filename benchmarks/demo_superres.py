"""Quality of the super-resolution stage, against trilinear upsampling measured in the same run.

For ``--n`` phantoms of the eval split: the phantom on the SR grid (``num_slices × s·h²``) is the target; its
CT-ViT reconstruction on the base grid (encode, quantise, decode: what the transformer stage hands over at
best) is the low-resolution input. Both the SR stage (conditioned on the case's prompt) and trilinear
upsampling turn it into an SR-grid volume. Prints, for each, the RMSE in HU, the mean HU inside tissue classes
of the target (air, lung, fat, soft tissue, bone: the bias shows whether a tissue drifts), and the phantom
analyzer's agreement with the prompt labels. The last line is
``RESULT rmse_ratio=<SR RMSE / trilinear RMSE> n=…`` (below 1: the SR stage adds more than it invents).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from GenerateCTLib.models import demo_bundle_dir
from GenerateCTLib.phantom import generate_phantom
from GenerateCTLib.phantom_analysis import adherence, analyze_volume
from GenerateCTLib.phantom_reports import impression, sample_spec
from GenerateCTLib.pipeline import GenerateCTPipeline, build_prompt
from GenerateCTLib.training.data import preprocess_volume

TISSUES_HU = {"air": (-1001, -950), "lung": (-950, -600), "fat": (-150, -50), "soft tissue": (0, 100),
              "bone": (300, 1001)}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(demo_bundle_dir()), help="bundle folder (default: the demo)")
    parser.add_argument("--n", type=int, default=8, help="phantoms (default 8)")
    parser.add_argument("--seed", type=int, default=7, help="case sampling and SR seed")
    parser.add_argument("--sr-steps", type=int, default=25, help="SR sampling steps (default 25, the pipeline's)")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")

    pipe = GenerateCTPipeline.from_pretrained(args.model)
    num_slices = int(pipe.metadata.get("defaults", {}).get("num_slices", 201))
    base = pipe.ctvit.config.image_size
    size = base * int(pipe.geometry_settings["super_resolution_scale"])
    rng = np.random.default_rng(args.seed)
    errors = {"trilinear": [], "super-resolution": []}
    means = {name: {t: [] for t in TISSUES_HU} for name in ("target", *errors)}
    truth, found = [], {name: [] for name in errors}
    sr_seconds = 0.0
    for i in range(args.n):
        spec = sample_spec(rng, "eval")
        prompt = build_prompt(spec.age, spec.sex, impression(spec, rng, "eval"))
        phantom = generate_phantom(spec, (num_slices, size, size), rng=args.seed + i)
        target_hu = 1000.0 * preprocess_volume(phantom.volume_hu, num_slices=num_slices, image_size=size)[0].numpy()
        x = preprocess_volume(phantom.volume_hu, num_slices=num_slices, image_size=base)[None].to(pipe.device)
        recon = pipe.ctvit.decode_from_ids(pipe.ctvit.encode_to_ids(x.to(pipe.dtype))).float()
        upsampled = F.interpolate(recon, size=target_hu.shape, mode="trilinear", align_corners=False)
        outputs = {"trilinear": np.clip(1000.0 * upsampled[0, 0].cpu().numpy(), -1000, 1000)}
        start = time.perf_counter()
        outputs["super-resolution"] = pipe.super_resolve(1000.0 * recon[0, 0].cpu().numpy(), prompt,
                                                         seed=args.seed + i, sr_steps=args.sr_steps)
        sr_seconds += time.perf_counter() - start
        truth.append(spec.label_dict())
        for name, volume_hu in (("target", target_hu), *outputs.items()):
            for tissue, (low, high) in TISSUES_HU.items():
                inside = (target_hu > low) & (target_hu < high)
                means[name][tissue].append(float(volume_hu[inside].mean()) if inside.any() else np.nan)
        for name, volume_hu in outputs.items():
            errors[name].append(float(np.sqrt(np.mean((volume_hu - target_hu) ** 2))))
            found[name].append(analyze_volume(volume_hu, phantom.geometry)["findings"])
        print(f"[{i + 1}/{args.n}] RMSE trilinear {errors['trilinear'][-1]:.0f} HU, "
              f"super-resolution {errors['super-resolution'][-1]:.0f} HU", flush=True)

    print(f"\n{args.n} phantoms, {num_slices}×{base}² → {size}², SR {args.sr_steps} steps, "
          f"{sr_seconds / args.n:.1f} s per volume")
    print(f"{'mean HU in':14s}" + "".join(f"{t:>13s}" for t in TISSUES_HU) + f"{'RMSE':>8s}{'agreement':>11s}")
    for name in means:
        row = "".join(f"{np.nanmean(means[name][t]):13.0f}" for t in TISSUES_HU)
        extra = "" if name == "target" else (f"{np.mean(errors[name]):8.1f}"
                                             f"{adherence(truth, found[name])['agreement']:11.3f}")
        print(f"{name:14s}{row}{extra}")
    ratio = np.mean(errors["super-resolution"]) / np.mean(errors["trilinear"])
    print(f"RESULT rmse_ratio={ratio:.3f} n={args.n}")


if __name__ == "__main__":
    main()
