"""Train the bundled demo model from scratch on chest phantoms and assemble it as a bundle.

Every step is a ``generatect`` command (printed and recorded in the bundle's metadata with its wall time),
except the tiny T5 text encoder, which is built with ``GenerateCTLib.training.tiny_t5``. The transformer and
super-resolution stages run in parallel (one CPU thread each) once the tokenizer is trained.

    python scripts/train_demo.py [--runs runs/demo] [--out GenerateCTLib/models/demo] [--n 500]

Seeds are fixed (phantoms 0, every stage's config ``seed``), so a rerun on the same machine and library
version reproduces the bundle.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "demo"


def run(cmd: list[str], log: list[dict], *, threads: int | None = None, wait: bool = True):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    entry = {"command": shlex.join(cmd), "threads": threads}
    log.append(entry)
    if not wait:
        return proc, entry, start
    if proc.wait() != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}")
    entry["wall_time_s"] = round(time.perf_counter() - start, 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/demo", help="work folder for data and checkpoints")
    parser.add_argument("--out", default="GenerateCTLib/models/demo", help="bundle folder to write")
    parser.add_argument("--n", type=int, default=500, help="training phantoms (default 500)")
    args = parser.parse_args()
    runs = Path(args.runs)
    generatect = [sys.executable, "-m", "GenerateCTLib.cli"]
    log: list[dict] = []
    started = time.perf_counter()

    # 1. phantoms (CT-RATE-style folder) at the super-resolution grid; loaders resample for each stage
    data = runs / "data"
    if not (data / "reports.csv").is_file():
        run([*generatect, "phantoms", "--out", str(data), "--n", str(args.n), "--shape", "33", "128", "128",
             "--seed", "0", "--split", "train"], log)

    # 2. a tiny T5 over the report vocabulary (random weights; the stages learn to read it)
    text_encoder = runs / "text_encoder"
    if not (text_encoder / "config.json").is_file():
        from GenerateCTLib.pipeline import build_prompt
        from GenerateCTLib.training.tiny_t5 import build_text_encoder, vocabulary_from_texts

        with open(data / "reports.csv", newline="") as handle:
            prompts = [build_prompt(int(r["age"]), r["sex"], r["impression"]) for r in csv.DictReader(handle)]
        build_text_encoder(vocabulary_from_texts(prompts), text_encoder, d_model=64, layers=2, heads=4, seed=0)
        log.append({"command": "build_text_encoder(vocabulary_from_texts(train prompts), d_model=64, layers=2, "
                               "heads=4, seed=0)"})

    # 3. tokenizer, then transformer and super-resolution side by side
    def train(stage: str, out: str, **kw):
        return run([*generatect, "train", stage, "--data", str(data), "--config", str(CONFIGS / f"{stage}.json"),
                    "--out", str(runs / out), "--quiet"], log, **kw)

    if not (runs / "tokenizer" / "model" / "config.json").is_file():
        train("tokenizer", "tokenizer")
    jobs = []
    for stage in ("transformer", "superres"):
        if not (runs / stage / "model" / "config.json").is_file():
            jobs.append(train(stage, stage, threads=1, wait=False))
    for proc, entry, start in jobs:
        if proc.wait() != 0:
            raise SystemExit(f"failed: {entry['command']}")
        entry["wall_time_s"] = round(time.perf_counter() - start, 1)

    # 4. the bundle
    from GenerateCTLib.checkpoints import write_bundle
    from GenerateCTLib.super_resolution.unet import SuperResolutionUnet
    from GenerateCTLib.tokenizer.ctvit import CTViT
    from GenerateCTLib.transformer.maskgit import MaskGIT

    models = {
        "ctvit": CTViT.from_pretrained(runs / "tokenizer" / "model"),
        "maskgit": MaskGIT.from_pretrained(runs / "transformer" / "model"),
        "super_resolution": SuperResolutionUnet.from_pretrained(runs / "superres" / "model"),
    }
    write_bundle(
        args.out,
        models,
        name="generatect-demo",
        version="0.1",
        source="trained by scripts/train_demo.py on procedurally generated chest phantoms (GenerateCTLib.phantom)",
        text_encoder=text_encoder,
        overwrite=True,
        extra_metadata={
            "description": "A demonstration model trained on synthetic phantoms; not a medical model. 33 slices "
                           "of 64x64 (CT-ViT 8x8 patches, MaskGIT over 17x8x8 tokens), super-resolved to 128x128.",
            # phantoms span a 300 mm thorax over 33 slices and a 384 mm field of view in-plane
            "geometry": {"slice_spacing_mm": 300.0 / 32, "field_of_view_mm": 384.0, "super_resolution_scale": 2},
            "defaults": {"num_slices": 33},
            "training": {
                "steps": log,
                "configs": {p.stem: json.loads(p.read_text()) for p in sorted(CONFIGS.glob("*.json"))},
                "phantoms": {"n": args.n, "seed": 0, "split": "train", "shape": [33, 128, 128]},
                "wall_time_s": round(time.perf_counter() - started, 1),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
            },
        },
    )
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
