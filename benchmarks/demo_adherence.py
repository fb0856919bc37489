"""Text adherence of the bundled demo model, measured with the phantom analyzer.

Draws ``--n`` cases from the phantom generator's *eval* split (phrasing templates never used in training, and
finding pairs held out of the training set), generates a volume for each prompt with the demo bundle, runs
:func:`GenerateCTLib.phantom_analysis.analyze_volume` on it and compares the findings it detects with the
prompt's ground-truth labels. Two baselines are measured in the same run on the phantoms of the same cases:
the analyzer on the phantoms themselves (what a perfect generator would score), and on their CT-ViT
reconstructions (encode, quantise, decode: what a perfect transformer would score with this tokenizer).
A third reference needs no volume: calling every finding absent. Findings are rare (about 1 in 5 labels),
so that alone reaches an agreement near 0.8; balanced accuracy (the mean of sensitivity and specificity over
the findings) is 0.5 for it and shows what the volumes carry. Prints per-finding sensitivity and specificity,
overall agreement and balanced accuracy, and last
``RESULT agreement=… n_prompts=… balanced_accuracy=… all_absent_agreement=…``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from GenerateCTLib.models import demo_bundle_dir
from GenerateCTLib.phantom import generate_phantom, phantom_geometry
from GenerateCTLib.phantom_analysis import adherence, analyze_volume
from GenerateCTLib.phantom_findings import SUPPORTED_FINDINGS
from GenerateCTLib.phantom_reports import impression, sample_spec
from GenerateCTLib.pipeline import GenerateCTPipeline, build_prompt
from GenerateCTLib.training.data import preprocess_volume


def table(result: dict) -> str:
    lines = [f"{'finding':24s} {'n+':>4s} {'sens':>6s} {'spec':>6s} {'agree':>6s}"]
    for name, row in result["per_finding"].items():
        fmt = lambda v: "  n/a" if v is None else f"{v:6.2f}"  # noqa: E731
        lines.append(f"{name:24s} {row['tp'] + row['fn']:4d} {fmt(row['sensitivity'])} {fmt(row['specificity'])} "
                     f"{fmt(row['agreement'])}")
    return "\n".join(lines)


@torch.no_grad()
def tokenizer_reconstruction_hu(pipe: GenerateCTPipeline, volume_hu: np.ndarray, num_slices: int) -> np.ndarray:
    """A phantom through the CT-ViT (resampled to its grid, encoded to ids, decoded), in HU."""
    x = preprocess_volume(volume_hu, num_slices=num_slices, image_size=pipe.ctvit.config.image_size)
    ids = pipe.ctvit.encode_to_ids(x[None].to(pipe.device, pipe.dtype))
    return 1000.0 * pipe.ctvit.decode_from_ids(ids)[0, 0].float().cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(demo_bundle_dir()), help="bundle folder (default: the demo)")
    parser.add_argument("--n", type=int, default=48, help="prompts (default 48)")
    parser.add_argument("--seed", type=int, default=2024, help="case sampling and generation seed")
    parser.add_argument("--no-sr", action="store_true", help="analyse the low-resolution stage only")
    parser.add_argument("--cond-scale", type=float, default=None, help="guidance (default: the bundle's)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="MaskGIT sampling temperature (default: the pipeline's, 0.9 as released)")
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="prompt phrasings and finding pairs: held out (eval, the measurement) or the training "
                             "ones (train, for tuning sampling settings without touching the held-out prompts)")
    args = parser.parse_args()

    pipe = GenerateCTPipeline.from_pretrained(args.model, load_super_resolution=not args.no_sr)
    rng = np.random.default_rng(args.seed)
    truth, generated, reference, tokenized = [], [], [], []
    start = time.perf_counter()
    for i in range(args.n):
        spec = sample_spec(rng, args.split)
        prompt = build_prompt(spec.age, spec.sex, impression(spec, rng, args.split))
        options = {name: value for name, value in (("cond_scale", args.cond_scale),
                                                    ("temperature", args.temperature)) if value is not None}
        out = pipe(prompt, seed=args.seed + i, super_resolve=not args.no_sr, **options)
        found = analyze_volume(out.volume_hu, out.geometry)["findings"]
        phantom = generate_phantom(spec, out.volume_hu.shape, rng=args.seed + i)
        truth.append(spec.label_dict())
        generated.append(found)
        reference.append(analyze_volume(phantom.volume_hu, phantom.geometry)["findings"])
        recon_hu = tokenizer_reconstruction_hu(pipe, phantom.volume_hu, out.volume_hu.shape[0])
        tokenized.append(analyze_volume(recon_hu, phantom_geometry(recon_hu.shape))["findings"])
        wrong = [name for name in SUPPORTED_FINDINGS if bool(found.get(name)) != bool(spec.label_dict()[name])]
        print(f"[{i + 1:2d}/{args.n}] {prompt}  ->  {'ok' if not wrong else 'wrong: ' + ', '.join(wrong)}",
              flush=True)
    seconds = time.perf_counter() - start
    result = adherence(truth, generated)
    baseline = adherence(truth, reference)
    ceiling = adherence(truth, tokenized)
    absent = adherence(truth, [{}] * len(truth))
    print(f"\ngenerated volumes ({'low-res' if args.no_sr else 'super-resolved'}), "
          f"{seconds / args.n:.1f} s per prompt:\n{table(result)}")
    print(f"overall agreement {result['agreement']:.3f}, balanced accuracy {result['balanced_accuracy']:.3f}, "
          f"exact match {result['exact_match']:.3f}")
    print(f"every finding called absent: agreement {absent['agreement']:.3f}, balanced accuracy 0.5")
    print(f"baseline (analyzer on the phantoms of the same cases): agreement {baseline['agreement']:.3f}, "
          f"balanced accuracy {baseline['balanced_accuracy']:.3f}")
    print(f"tokenizer ceiling (analyzer on CT-ViT reconstructions of those phantoms): agreement "
          f"{ceiling['agreement']:.3f}, balanced accuracy {ceiling['balanced_accuracy']:.3f}\n{table(ceiling)}")
    print(f"RESULT agreement={result['agreement']:.3f} n_prompts={args.n} "
          f"balanced_accuracy={result['balanced_accuracy']:.3f} all_absent_agreement={absent['agreement']:.3f}")


if __name__ == "__main__":
    main()
