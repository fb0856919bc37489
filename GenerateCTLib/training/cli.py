"""``generatect train tokenizer|transformer|superres``: the training command line.

The main CLI calls :func:`add_train_command` with its sub-parser collection; each handler returns an
exit code, and user errors are raised as ``ValueError`` (printed as one line by the main CLI).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

EXAMPLES = {
    "tokenizer": """examples:
  generatect train tokenizer --data phantoms/ --config configs/demo/tokenizer.json --out runs/ctvit
  accelerate launch -m GenerateCTLib.cli train tokenizer --data ct-rate/ --config ctvit.json --out runs/ctvit

The config is a JSON object of TokenizerTrainConfig fields, e.g.
  {"model": {"dim": 128, "codebook_size": 1024, "image_size": 64, "patch_size": 8},
   "num_slices": 33, "lr": 3e-4, "batch_size": 4, "steps": 20000}""",
    "transformer": """examples:
  generatect train transformer --data phantoms/ --config configs/demo/transformer.json --out runs/maskgit

The config names the trained tokenizer and the text encoder, e.g.
  {"tokenizer_model": "runs/ctvit/model", "text_encoder": "runs/t5", "num_slices": 33,
   "model": {"dim": 256, "depth": 4, "max_seq_len": 1088}, "lr": 3e-4, "warmup_steps": 500, "steps": 20000}""",
    "superres": """examples:
  generatect train superres --data phantoms/ --config configs/demo/superres.json --out runs/superres

The config names the trained tokenizer (its reconstructions are the low-res inputs) and the text encoder:
  {"tokenizer_model": "runs/ctvit/model", "text_encoder": "runs/t5", "num_slices": 33, "image_size": 128,
   "model": {"dim": 32, "max_text_len": 64}, "lr": 5e-4, "batch_size": 8, "steps": 20000}""",
}
RUNS = """\n
A run resumes from <out>/checkpoint when present (--no-resume starts over); the model is <out>/model.
"init_from": "<a trained model folder>" in the config starts a new run from those weights instead of a
random initialisation (fine-tuning, e.g. the released model on your own data; same architecture)."""
HELP = {
    "tokenizer": "train the CT-ViT VQ tokenizer",
    "transformer": "train the MaskGIT text-to-token transformer (needs a trained tokenizer)",
    "superres": "train the super-resolution diffusion Unet (needs a trained tokenizer)",
}


def _run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    if not data.is_dir():
        raise ValueError(f"--data={args.data!r} is invalid; allowed: a folder holding reports.csv and volumes/")
    if args.config is not None and not Path(args.config).is_file():
        raise ValueError(f"--config={args.config!r} is invalid; allowed: an existing JSON file")
    if args.stage == "tokenizer":
        from GenerateCTLib.training.train_tokenizer import load_config
        from GenerateCTLib.training.train_tokenizer import train_tokenizer as train
    elif args.stage == "transformer":
        from GenerateCTLib.training.train_transformer import load_config
        from GenerateCTLib.training.train_transformer import train_transformer as train
    else:
        from GenerateCTLib.training.train_superres import load_config
        from GenerateCTLib.training.train_superres import train_superres as train
    config = load_config(args.config)
    result = train(data, config, args.out, resume=args.resume, progress=not args.quiet)
    logger.info("trained %s for %d steps; model in %s", args.stage, result.step, result.model_dir)
    return 0


def add_train_command(subparsers) -> argparse.ArgumentParser:
    """Register ``train tokenizer|transformer|superres`` on the main CLI's ``subparsers``."""
    train = subparsers.add_parser(
        "train",
        help="train a model stage on a CT-RATE-style folder",
        description="Train one stage of the cascade: tokenizer, then transformer and superres.",
        epilog="examples:\n  generatect train tokenizer --data phantoms/ --config ctvit.json --out runs/ctvit\n"
        "  generatect train transformer --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = train.add_subparsers(dest="stage", metavar="{tokenizer,transformer,superres}", required=True)
    for stage in ("tokenizer", "transformer", "superres"):
        parser = stages.add_parser(
            stage,
            help=HELP[stage],
            description=HELP[stage],
            epilog=EXAMPLES[stage] + RUNS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--data", required=True, help="dataset folder (reports.csv + volumes/)")
        parser.add_argument("--config", help="JSON file of training settings (defaults: the reference's)")
        parser.add_argument("--out", required=True, help="output folder (checkpoint/ and model/)")
        parser.add_argument(
            "--resume",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="continue from <out>/checkpoint when present (default: yes)",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
        parser.set_defaults(func=_run, stage=stage)
    return train
