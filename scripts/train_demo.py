"""Train the bundled demo model from scratch on chest phantoms and assemble it as a bundle.

Every step is a ``generatect`` command (printed and recorded in the bundle's metadata with its wall time),
except the tiny T5 text encoder, which is built with ``GenerateCTLib.training.tiny_t5``. Two phantom
folders: ``--n`` phantoms for the tokenizer, the T5 vocabulary and super-resolution, and ``--n-transformer``
(a superset: phantom ``i`` is the same in both) for the transformer, which is the stage that learns the text.
Two rounds: first the tokenizer, then the transformer and super-resolution in parallel (two threads and
one), from ``configs/demo/*.json``; then each stage with a config in ``configs/demo/finetune/``
again, starting from the first round's weights (``init_from``): super-resolution, trained at the low-res
noise level it samples with, with min-SNR weighting and an EMA. The bundle takes each stage from the last
round that trained it.

    python scripts/train_demo.py [--runs runs/demo] [--out GenerateCTLib/models/demo] [--n 500] [--n-transformer 2000]

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
FINETUNE = CONFIGS / "finetune"


GENERATECT = [sys.executable, "-m", "GenerateCTLib.cli"]


def run(args: list[str], log: list[dict], *, threads: int | None = None, wait: bool = True):
    """Run ``generatect ARGS`` from the repository root; record it (as typed by a user) and its wall time."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    shown = shlex.join(["generatect", *args])
    print("$", shown, flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen([*GENERATECT, *args], cwd=ROOT, env=env)
    entry = {"command": shown, "threads": threads}
    log.append(entry)
    if not wait:
        return proc, entry, start
    if proc.wait() != 0:
        raise SystemExit(f"failed: {shown}")
    entry["wall_time_s"] = round(time.perf_counter() - start, 1)
    return None


def elapsed_s(log: list[dict]) -> float:
    """Sequential steps plus, per round, the longest of the steps run side by side."""
    sequential = sum(step.get("wall_time_s", 0.0) for step in log if not step.get("parallel"))
    rounds: dict[str, float] = {}
    for step in log:
        if step.get("parallel"):
            key = str(step.get("round", ""))
            rounds[key] = max(rounds.get(key, 0.0), step.get("wall_time_s", 0.0))
    return round(sequential + sum(rounds.values()), 1)


def save_log(path: Path, log: list[dict]) -> None:
    path.write_text(json.dumps(log, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/demo", help="work folder for data and checkpoints")
    parser.add_argument("--out", default="GenerateCTLib/models/demo", help="bundle folder to write")
    parser.add_argument("--n", type=int, default=500, help="training phantoms of the tokenizer and SR (default 500)")
    parser.add_argument("--n-transformer", type=int, default=2000,
                        help="training phantoms of the transformer, the first --n of them shared (default 2000)")
    args = parser.parse_args()
    if not 1 <= args.n <= args.n_transformer:
        raise SystemExit(f"--n={args.n} and --n-transformer={args.n_transformer}: need 1 <= --n <= --n-transformer")
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    # the step log survives interruptions: a rerun skips finished steps and keeps their records
    log_path = runs / "train_log.json"
    log: list[dict] = json.loads(log_path.read_text()) if log_path.is_file() else []

    # 1. phantoms (CT-RATE-style folder) at the super-resolution grid; loaders resample for each stage
    data, transformer_data = runs / "data", runs / f"data-{args.n_transformer}"
    for folder, n in ((data, args.n), (transformer_data, args.n_transformer)):
        if not (folder / "reports.csv").is_file():
            run(["phantoms", "--out", str(folder), "--n", str(n), "--shape", "33", "128", "128",
                 "--seed", "0", "--split", "train"], log)
            save_log(log_path, log)

    # 2. a tiny T5 over the report vocabulary (random weights; the stages learn to read it)
    text_encoder = runs / "text_encoder"
    if not (text_encoder / "config.json").is_file():
        from GenerateCTLib.pipeline import build_prompt
        from GenerateCTLib.training.tiny_t5 import build_text_encoder, vocabulary_from_texts

        with open(data / "reports.csv", newline="") as handle:
            prompts = [build_prompt(int(r["age"]), r["sex"], r["impression"]) for r in csv.DictReader(handle)]
        start = time.perf_counter()
        build_text_encoder(vocabulary_from_texts(prompts), text_encoder, d_model=64, layers=2, heads=4, seed=0)
        log.append({"command": "python: GenerateCTLib.training.tiny_t5.build_text_encoder(vocabulary_from_texts("
                               "train prompts), out, d_model=64, layers=2, heads=4, seed=0)",
                    "wall_time_s": round(time.perf_counter() - start, 1)})
        save_log(log_path, log)

    # 3. two rounds: the tokenizer, then the transformer and super-resolution side by side; then the stages
    #    that have a fine-tuning config
    def train(stage: str, out: str, configs: Path, **kw):
        config = (configs / f"{stage}.json").relative_to(ROOT)
        folder = transformer_data if stage == "transformer" else data
        return run(["train", stage, "--data", str(folder), "--config", str(config), "--out", str(runs / out),
                    "--quiet"], log, **kw)

    for configs, suffix in ((CONFIGS, ""), (FINETUNE, "-ft")):
        if not suffix and not (runs / "tokenizer" / "model" / "config.json").is_file():
            train("tokenizer", "tokenizer", configs)
            save_log(log_path, log)
        todo = [stage for stage in ("transformer", "superres") if (configs / f"{stage}.json").is_file()
                and not (runs / f"{stage}{suffix}" / "model" / "config.json").is_file()]
        # the transformer is the long stage: it keeps both cores once the shorter super-resolution run is done
        jobs = [train(stage, f"{stage}{suffix}", configs, threads=2 if stage == "transformer" or len(todo) == 1 else 1,
                      wait=False) for stage in todo]
        while jobs:  # record each parallel job's own wall time, in completion order
            for job in list(jobs):
                proc, entry, start = job
                if proc.poll() is None:
                    continue
                if proc.returncode != 0:
                    raise SystemExit(f"failed: {entry['command']}")
                entry["wall_time_s"] = round(time.perf_counter() - start, 1)
                entry["parallel"] = True
                entry["round"] = "finetune" if suffix else "scratch"
                jobs.remove(job)
            time.sleep(1)
        save_log(log_path, log)

    # 4. the bundle, 5. what a generation with it costs on this machine
    phantoms = {"n": args.n, "n_transformer": args.n_transformer, "seed": 0, "split": "train",
                "shape": [33, 128, 128]}
    assemble_bundle(runs, Path(args.out), log, phantoms)


def assemble_bundle(runs: Path, out: Path, log: list[dict], phantoms: dict) -> None:
    """Write the demo bundle from the trained stages in ``runs`` (each from the last round that trained it),
    with the step log and the phantom settings in its metadata, then measure its CPU costs into it."""
    def last_round(stage: str) -> Path:
        return runs / (f"{stage}-ft" if (FINETUNE / f"{stage}.json").is_file() else stage) / "model"

    from GenerateCTLib.checkpoints import write_bundle
    from GenerateCTLib.super_resolution.unet import SuperResolutionUnet
    from GenerateCTLib.tokenizer.ctvit import CTViT
    from GenerateCTLib.transformer.maskgit import MaskGIT

    models = {
        "ctvit": CTViT.from_pretrained(runs / "tokenizer" / "model"),
        "maskgit": MaskGIT.from_pretrained(last_round("transformer")),
        "super_resolution": SuperResolutionUnet.from_pretrained(last_round("superres")),
    }
    metadata = {
        "description": "A demonstration model trained on synthetic phantoms; not a medical model. 33 slices "
                       "of 64x64 (CT-ViT 8x8 patches, MaskGIT over 17x8x8 tokens), super-resolved to 128x128.",
        # phantoms span a 300 mm thorax over 33 slices and a 384 mm field of view in-plane
        "geometry": {"slice_spacing_mm": 300.0 / 32, "field_of_view_mm": 384.0, "super_resolution_scale": 2},
        # guidance chosen on training-split prompts (benchmarks/demo_adherence.py --no-sr --split train, v0.5):
        # cond_scale 2 / 3 / 5 gave agreement 0.836 / 0.833 / 0.771, balanced accuracy 0.597 / 0.606 / 0.549
        "defaults": {"num_slices": 33, "cond_scale": 3.0},
        "training": {
            "steps": log,
            "configs": {p.stem: json.loads(p.read_text()) for p in sorted(CONFIGS.glob("*.json"))},
            "finetune_configs": {p.stem: json.loads(p.read_text()) for p in sorted(FINETUNE.glob("*.json"))},
            "phantoms": phantoms,
            # elapsed: sequential steps plus the longest of the steps run side by side
            "wall_time_s": elapsed_s(log),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        },
    }

    def write(extra: dict) -> None:
        write_bundle(
            out,
            models,
            name="generatect-demo",
            version="0.5",
            source="trained by scripts/train_demo.py on procedurally generated chest phantoms (GenerateCTLib.phantom)",
            text_encoder=runs / "text_encoder",
            overwrite=True,
            extra_metadata={**metadata, **extra},
        )

    write({})
    write({"cpu_seconds": measure_cpu_seconds(out)})
    print(f"wrote {out}; training took {elapsed_s(log):.0f} s", flush=True)


def measure_cpu_seconds(bundle: Path) -> dict[str, float]:
    """Time one full generation with the bundle on the CPU and express the stages as ``CpuCosts`` fields
    (a guided MaskGIT step and the decode scaled to the released 201-slice grid, an SR step per slice)."""
    import torch

    from GenerateCTLib.pipeline import GenerateCTPipeline
    from GenerateCTLib.slicer_support import RELEASED_SLICES

    torch.set_num_threads(os.cpu_count() or 1)
    pipe = GenerateCTPipeline.from_pretrained(bundle, device="cpu")
    ends: dict[str, float] = {}
    slices = int(pipe.metadata["defaults"]["num_slices"])
    steps, sr_steps = 18, 25  # the pipeline's defaults
    run = dict(age=60, sex="male", impression="No acute cardiopulmonary findings.", num_slices=slices, steps=steps,
               sr_steps=sr_steps)
    pipe(**run, seed=0)  # warm-up
    pipe(**run, seed=1, callback=lambda e: ends.__setitem__(e.stage, e.elapsed_s) if e.step == e.total else None)
    frames, released_frames = pipe.ctvit.token_grid(slices)[0], pipe.ctvit.token_grid(RELEASED_SLICES)[0]
    sample = ends["sample_tokens"] - ends["encode_prompt"]
    decode = ends["decode"] - ends["sample_tokens"]
    sr = ends["super_resolve"] - ends["decode"]
    return {
        "maskgit_step_201_slices": round(sample / steps * released_frames / frames, 4),
        "decode_201_slices": round(decode * RELEASED_SLICES / slices, 4),
        "sr_step_per_slice": round(sr / (sr_steps * slices), 5),
    }


if __name__ == "__main__":
    main()
