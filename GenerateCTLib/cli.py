"""The ``generatect`` command line.

Every command prints one clear line and exits non-zero on a user error (no traceback); ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from GenerateCTLib import __version__

log = logging.getLogger("generatect")

EXAMPLES_CONVERT = """examples:
  generatect weights convert --ctvit ctvit_pretrained.pt --transformer transformer_pretrained.pt \\
      --superres superres_pretrained.pt --out models/official
  generatect weights convert --transformer t.pt --superres s.pt --out small \\
      --reference-config reference_kwargs.json --t5 ./my-t5
"""

EXAMPLES_INFO = """examples:
  generatect info
  generatect info --model models/official --verify
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_weights_convert(args: argparse.Namespace) -> int:
    from GenerateCTLib.checkpoints import convert_official

    reference_config = None
    if args.reference_config is not None:
        path = Path(args.reference_config)
        if not path.is_file():
            raise CLIError(f"--reference-config: file {path} not found")
        try:
            reference_config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CLIError(f"--reference-config: {path} is not valid JSON ({exc})") from exc
        if not isinstance(reference_config, dict):
            raise CLIError(f"--reference-config: {path} must hold an object with ctvit/maskgit/superres keys")
    out = convert_official(
        ctvit=args.ctvit,
        transformer=args.transformer,
        superres=args.superres,
        out_dir=args.out,
        reference_config=reference_config,
        text_encoder=args.t5,
        name=args.name,
        overwrite=args.overwrite,
    )
    print(f"wrote bundle {out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    info: dict[str, object] = {
        "generatect": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if args.model is not None:
        from GenerateCTLib.checkpoints import Bundle

        bundle = Bundle(args.model)
        if args.verify:
            bundle.verify()
        info["bundle"] = {
            key: bundle.metadata.get(key) for key in ("name", "version", "source", "intended_use", "text_encoder")
        }
        info["bundle"]["verified"] = bool(args.verify)
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generatect",
        description="Synthetic 3-D chest CT from radiology text (GenerateCT). Research use only.",
    )
    parser.add_argument("--version", action="version", version=f"generatect {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser(
        "info",
        help="versions, devices and (optionally) a bundle's metadata",
        epilog=EXAMPLES_INFO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("--model", help="a bundle folder to describe")
    info.add_argument("--verify", action="store_true", help="recompute the sha256 of every bundle file")
    info.set_defaults(func=_cmd_info)

    weights = commands.add_parser("weights", help="convert model weights")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    convert = weight_commands.add_parser(
        "convert",
        help="convert the official GenerateCT .pt checkpoints into a bundle",
        epilog=EXAMPLES_CONVERT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("--ctvit", help="ctvit_pretrained.pt (optional: the transformer file has a copy)")
    convert.add_argument("--transformer", required=True, help="transformer_pretrained.pt")
    convert.add_argument("--superres", required=True, help="superres_pretrained.pt")
    convert.add_argument("--out", required=True, help="bundle folder to write")
    convert.add_argument(
        "--reference-config",
        help="JSON with the reference constructor kwargs per component (ctvit, maskgit, superres); "
        "default: the released configuration",
    )
    convert.add_argument("--t5", default="google/t5-v1_1-base", help="T5 hub id or local folder to bundle")
    convert.add_argument("--name", default="generatect-official", help="bundle name for metadata.json")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    convert.set_defaults(func=_cmd_weights_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("generatect: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileExistsError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"generatect: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
