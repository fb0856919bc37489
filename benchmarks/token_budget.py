"""What finer tokens would cost the demo model: training-step time per token grid, on this machine.

The demo's CT-ViT codes each 8×8×2 patch of its 33×64×64 volume (48×48×19 mm) with one of 512 ids, and
the phantom analyzer's agreement on its reconstructions (the ceiling for any transformer over those ids)
is at most 0.83 whatever the tokenizer's losses (see the README model card). Finer patches give each
finding more tokens, but the MaskGIT trains on every token of the grid with full self-attention (and a
3-D position bias over all pairs), so its cost grows faster than the token count.

For each tokenisation of the demo volume this times, with the bundle's architectures (random weights,
float32) and the demo recipe's batch sizes, one training step of the CT-ViT (encode, quantise, decode,
MSE, backward, Adam) and of the MaskGIT (masked-token cross-entropy with text, backward, Adam), and prints
each as a ratio to the demo's own tokenisation measured in the same run, and the wall time the demo
recipe's step counts (``configs/demo/*.json``) would take at that speed. Last line:
``RESULT tokens=… maskgit_step_ratio=… ctvit_step_ratio=… recipe_hours=…`` for the finest grid.

    python benchmarks/token_budget.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from GenerateCTLib.models import demo_bundle_dir
from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.training.losses import maskgit_loss
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
# (patch_size, temporal_patch_size): the demo's own first, then finer ones
TOKENISATIONS = ((8, 2), (8, 1), (4, 4), (4, 2))
TEXT_LEN = 24


def best_of(fn, repeats: int) -> float:
    """Best wall-clock time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ctvit_step(config: CTViTConfig, num_slices: int, batch_size: int):
    model = CTViT(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    volume = torch.rand(batch_size, 1, num_slices, config.image_size, config.image_size) * 2 - 1

    def step() -> None:
        tokens = model.encode(volume)
        out = model.vq.quantize_for_training(tokens)
        loss = torch.nn.functional.mse_loss(model.decode(out.quantized), volume) + out.commit_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model.token_grid(num_slices)


def maskgit_step(config: MaskGITConfig, grid: tuple[int, int, int], batch_size: int):
    model = MaskGIT(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    n = grid[0] * grid[1] * grid[2]
    ids = torch.randint(0, config.num_tokens, (batch_size, n))
    embeds = torch.randn(batch_size, TEXT_LEN, config.dim_context)
    mask = torch.ones(batch_size, TEXT_LEN, dtype=torch.bool)

    def step() -> None:
        loss, _ = maskgit_loss(model, ids, embeds, mask, grid=grid, mask_id=model.mask_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(demo_bundle_dir()), help="bundle whose architectures are timed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement, best kept")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit(f"--threads={args.threads} and --repeats={args.repeats} must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bundle = Path(args.model)
    ctvit_base = CTViTConfig.load(bundle / "ctvit" / "config.json")
    maskgit_base = MaskGITConfig.load(bundle / "maskgit" / "config.json")
    recipe = {stage: json.loads((CONFIGS / f"{stage}.json").read_text()) for stage in ("tokenizer", "transformer")}
    num_slices = int(recipe["tokenizer"]["num_slices"])

    rows = []
    for patch, temporal in TOKENISATIONS:
        ctvit_config = CTViTConfig.from_dict({**ctvit_base.to_dict(), "patch_size": patch,
                                              "temporal_patch_size": temporal}, source="tokenisation")
        step, grid = ctvit_step(ctvit_config, num_slices, int(recipe["tokenizer"]["batch_size"]))
        ctvit_s = best_of(step, args.repeats)
        n = grid[0] * grid[1] * grid[2]
        maskgit_config = MaskGITConfig.from_dict({**maskgit_base.to_dict(), "max_seq_len": n}, source="tokenisation")
        maskgit_s = best_of(maskgit_step(maskgit_config, grid, int(recipe["transformer"]["batch_size"])), args.repeats)
        hours = (ctvit_s * recipe["tokenizer"]["steps"] + maskgit_s * recipe["transformer"]["steps"]) / 3600
        rows.append((patch, temporal, grid, n, ctvit_s, maskgit_s, hours))
        print(f"patch {patch}x{patch}x{temporal}: grid {grid} = {n} tokens, CT-ViT step {ctvit_s:.3f} s, "
              f"MaskGIT step {maskgit_s:.3f} s", flush=True)

    base = rows[0]
    print(f"\nratios to the demo's tokenisation (patch {base[0]}x{base[0]}x{base[1]}, {base[3]} tokens), this run, "
          f"{args.threads} threads; recipe = {recipe['tokenizer']['steps']} CT-ViT + "
          f"{recipe['transformer']['steps']} MaskGIT steps")
    print(f"{'patch':>8s} {'tokens':>7s} {'voxels/token':>12s} {'CT-ViT x':>9s} {'MaskGIT x':>10s} {'recipe h':>9s}")
    for patch, temporal, _, n, ctvit_s, maskgit_s, hours in rows:
        print(f"{patch}x{patch}x{temporal:<4d} {n:7d} {patch * patch * temporal:12d} {ctvit_s / base[4]:9.2f} "
              f"{maskgit_s / base[5]:10.2f} {hours:9.2f}")
    finest = max(rows, key=lambda row: row[3])
    print(f"RESULT tokens={finest[3]} maskgit_step_ratio={finest[5] / base[5]:.2f} "
          f"ctvit_step_ratio={finest[4] / base[4]:.2f} recipe_hours={finest[6]:.2f}")


if __name__ == "__main__":
    main()
