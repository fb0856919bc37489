"""The low-resolution stage at the official size on this machine: prompt → 201×128×128 HU, 18 steps.

Random weights at the released sizes (CT-ViT, MaskGIT, a T5-v1.1-base-sized encoder with a word-level
tokenizer), float32, ``super_resolve=False``. Prints the total seconds, the per-stage timings and the peak
RSS, with the ratio against the reference's own estimate on a 2-core CPU (18 guided steps × 127 s ≈ 38 min).
Last line: ``RESULT lowres_total_s=… peak_rss_gb=…``.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from GenerateCTLib.pipeline import GenerateCTPipeline
from GenerateCTLib.text_encoder import T5TextEncoder, build_word_tokenizer
from GenerateCTLib.tokenizer.ctvit import CTViT, CTViTConfig
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig

REFERENCE_LOWRES_S = 18 * 127.0 + 3.35
PROMPT = "65 years old male: Bilateral pleural effusion and cardiomegaly, no pulmonary nodules."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--slices", type=int, default=201)
    args = parser.parse_args()
    torch.manual_seed(0)
    from transformers import T5Config, T5EncoderModel

    # google/t5-v1_1-base sizes (the hub is not reachable here; weights are random)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                                 feed_forward_proj="gated-gelu")).eval()
    tokenizer = build_word_tokenizer(PROMPT.replace(",", " ,").replace(".", " .").replace(":", " :").split())
    pipe = GenerateCTPipeline(
        ctvit=CTViT(CTViTConfig()).eval(),
        maskgit=MaskGIT(MaskGITConfig()).eval(),
        super_resolution=None,
        text_encoder=T5TextEncoder(t5, tokenizer, name="random t5-v1_1-base"),
        metadata={"name": "random-released-size"},
        bundle_id="none",
    )
    start = time.perf_counter()
    out = pipe(PROMPT, num_slices=args.slices, steps=args.steps, super_resolve=False, seed=0)
    total = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"volume {out.volume_hu.shape}, HU [{out.volume_hu.min():.0f}, {out.volume_hu.max():.0f}]")
    print(f"stage timings (s): {out.provenance['timings_s']}")
    print(f"low-res stage: {total:.1f} s ({REFERENCE_LOWRES_S / total:.1f}x faster than the reference estimate "
          f"of {REFERENCE_LOWRES_S / 60:.0f} min), peak RSS {peak_gb:.2f} GB")
    print(f"RESULT lowres_total_s={total:.1f} peak_rss_gb={peak_gb:.2f}")


if __name__ == "__main__":
    main()
