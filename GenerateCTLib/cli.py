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
from GenerateCTLib.progress import GenerationCancelled

log = logging.getLogger("generatect")

FORMATS_BY_NAME = {"nii.gz": "nii.gz", "nrrd": "nrrd"}  # --format value -> io.volume_format() result

EXAMPLES_CONVERT = """examples:
  generatect weights convert --ctvit ctvit_pretrained.pt --transformer transformer_pretrained.pt \\
      --superres superres_pretrained.pt --out models/official
  generatect weights convert --transformer t.pt --superres s.pt --out small \\
      --reference-config reference_kwargs.json --t5 ./my-t5
"""

EXAMPLES_GENERATE = """examples:
  generatect generate --model models/official --age 65 --sex male \\
      --impression "Bilateral pleural effusion." --out ct.nii.gz --preview ct.png
  generatect generate --model PATH --prompt "40 years old female: Cardiomegaly." --no-sr --seed 7 \\
      --out ct.nrrd --progress json
  generatect generate --model official --prompt "65 years old male: Emphysema." --format dicom \\
      --no-prompt --out ct_dicom/
"""

EXAMPLES_EXPORT_DICOM = """examples:
  generatect export-dicom ct.nii.gz --out ct_dicom            # reads ct.json (provenance) when present
  generatect export-dicom ct.nrrd --out ct_mf --multiframe --no-prompt --overwrite

Every file is marked synthetic (SyntheticData=YES, a Synthesizing Equipment item, DERIVED image type,
SYNTHETIC^ patient name). --no-prompt keeps the free-text prompt out of the files.
"""

EXAMPLES_PUSH = """examples:
  generatect push ct_dicom --dicomweb http://127.0.0.1:8042/dicom-web
  generatect push ct_dicom --dimse 127.0.0.1:4242:ORTHANC --calling-aet GENERATECT

The series is queried back afterwards (QIDO-RS or C-FIND) to confirm the PACS lists it.
"""

EXAMPLES_DOWNLOAD = """examples:
  generatect weights download                      # into the user cache; then use --model official
  generatect weights download --from /media/usb/GenerateCT --t5 /media/usb/t5-v1_1-base
"""

EXAMPLES_INFO = """examples:
  generatect info
  generatect info --model official --verify
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


def default_model() -> str:
    """``$GENERATECT_MODEL`` when set, else the bundled demo model."""
    import os

    return os.environ.get("GENERATECT_MODEL") or "demo"


def resolve_model(model: str) -> Path:
    """``demo`` (bundled), ``official`` (the converted official weights in the user cache) or a bundle folder."""
    from GenerateCTLib.hub import official_bundle_dir
    from GenerateCTLib.models import demo_bundle_dir

    if model == "demo":
        path = demo_bundle_dir()
        if not (path / "metadata.json").is_file():
            raise CLIError(f"--model demo: the demo bundle is missing from this installation ({path})")
        return path
    if model == "official":
        path = official_bundle_dir()
        if not path.is_dir():
            raise CLIError(
                f"--model official: no official bundle in {path}; run 'generatect weights download' first "
                "(or 'generatect weights convert ... --out' that folder)"
            )
        return path
    path = Path(model)
    if not path.is_dir():
        raise CLIError(f"--model: folder {path} not found (give 'demo', 'official' or a bundle folder)")
    return path


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: {device!r} is not allowed; use auto, cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {device!r} was requested but CUDA is not available on this machine")
    return parsed


class _ProgressPrinter:
    """Renders pipeline progress events as a tqdm bar per stage or as one JSON object per line."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None
        self.stage = None

    def __call__(self, event) -> None:
        if self.mode == "json":
            print(json.dumps({"event": "progress", "stage": event.stage, "step": event.step, "total": event.total,
                              "eta_s": None if event.eta_s is None else round(event.eta_s, 1),
                              "elapsed_s": round(event.elapsed_s, 1)}), flush=True)
        elif self.mode == "bar":
            from tqdm import tqdm

            if event.stage != self.stage:
                self.close()
                self.stage = event.stage
                self.bar = tqdm(total=event.total, desc=event.stage, unit="step", leave=True, file=sys.stderr,
                                mininterval=1.0)
            self.bar.update(event.step - self.bar.n)  # tqdm throttles the redraws

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _import_dicom():
    try:
        from GenerateCTLib import dicom
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    return dicom


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.remote is not None:
        if args.model is not None:
            raise CLIError("--model and --remote exclude each other (the server chooses its model)")
        from GenerateCTLib.server.cli import run_remote_generate

        return run_remote_generate(args)
    if args.model is None:
        args.model = default_model()
    from GenerateCTLib.io import FORMATS, volume_format, write_json, write_volume
    from GenerateCTLib.pipeline import GenerateCTPipeline, build_prompt

    out = Path(args.out)
    if args.format == "dicom":
        if out.name.lower().endswith(tuple(FORMATS)):
            raise CLIError(f"--out: with --format dicom, give a folder name, not a volume file ({out})")
        dicom = _import_dicom()
    else:
        if args.no_prompt or args.multiframe:
            raise CLIError("--no-prompt and --multiframe need --format dicom")
        try:
            fmt = volume_format(out)
        except ValueError as exc:
            raise CLIError(f"--out: {exc}") from exc
        if args.format is not None and FORMATS_BY_NAME.get(args.format) != fmt:
            raise CLIError(f"--out: {out} does not end in .{args.format} (--format {args.format})")
    stem = out.name.split(".")[0]
    sidecar = out.with_name(stem + ".json")
    attention_dir = out.with_name(stem + "_attention")
    targets = [out, sidecar]
    targets += [Path(args.preview)] if args.preview else []
    targets += [attention_dir] if args.attention else []
    for target in targets:
        if target.exists() and not args.overwrite:
            raise CLIError(f"{target} already exists; pass --overwrite to replace it")
    if args.prompt is None and (args.age is None or args.sex is None or args.impression is None):
        raise CLIError("give --prompt, or all of --age, --sex and --impression")
    if args.prompt is None:
        build_prompt(args.age, args.sex, args.impression)  # fail fast, before loading the model
    model = resolve_model(args.model)
    device = resolve_device(args.device)
    printer = _ProgressPrinter(args.progress)
    try:
        pipe = GenerateCTPipeline.from_pretrained(model, device=device, load_super_resolution=not args.no_sr)
        result = pipe(
            args.prompt,
            age=args.age,
            sex=args.sex,
            impression=args.impression,
            num_slices=args.slices,
            seed=args.seed,
            steps=args.steps,
            cond_scale=args.cond_scale,
            temperature=args.temperature,
            super_resolve=not args.no_sr,
            sr_steps=args.sr_steps,
            sr_batch_size=args.sr_batch_size,
            return_attention=args.attention,
            callback=printer,
        )
    finally:
        printer.close()
    if args.format == "dicom":
        dicom.export_generation(out, result, include_prompt=not args.no_prompt, multiframe=args.multiframe,
                                overwrite=args.overwrite)
    else:
        write_volume(out, result.volume_hu, result.geometry, dtype=args.dtype, overwrite=args.overwrite)
    write_json(sidecar, result.provenance, overwrite=args.overwrite)
    written = {"volume": str(out), "provenance": str(sidecar)}
    if result.attention is not None:
        from GenerateCTLib.attention_maps import write_attention_maps

        write_attention_maps(result.attention, attention_dir, result.geometry, prompt=result.prompt,
                             overwrite=args.overwrite)
        written["attention"] = str(attention_dir)
    if args.preview:
        from GenerateCTLib.preview import render_preview

        render_preview(result.volume_hu, result.geometry, args.preview, prompt=result.prompt,
                       attention=result.attention, overwrite=args.overwrite)
        written["preview"] = args.preview
    if args.progress == "json":
        print(json.dumps({"event": "done", **written, "seeds": result.seeds}), flush=True)
    else:
        print(f"wrote {', '.join(written.values())}")
    return 0


def sidecar_path(volume: Path) -> Path:
    """The provenance sidecar ``generate`` writes beside a volume: ``<stem>.json``."""
    return volume.with_name(volume.name.split(".")[0] + ".json")


def _cmd_export_dicom(args: argparse.Namespace) -> int:
    from GenerateCTLib.io import read_volume, volume_format

    dicom = _import_dicom()
    volume_path, out = Path(args.volume), Path(args.out)
    try:
        volume_format(volume_path)
    except ValueError as exc:
        raise CLIError(f"VOLUME: {exc}") from exc
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} already exists; pass --overwrite to replace it")
    volume, geometry = read_volume(volume_path)
    sidecar = sidecar_path(volume_path)
    provenance = None
    if sidecar.is_file():
        try:
            provenance = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CLIError(f"provenance sidecar {sidecar} is not valid JSON ({exc})") from exc
        if not isinstance(provenance, dict):
            raise CLIError(f"provenance sidecar {sidecar} must hold a JSON object")
    else:
        log.warning("no provenance sidecar %s: writing without prompt, model and seed", sidecar)
    export = dicom.write_dicom(out, volume, geometry, provenance=provenance, include_prompt=not args.no_prompt,
                               multiframe=args.multiframe, overwrite=args.overwrite)
    print(f"wrote {len(export.files)} DICOM file(s) to {out} (study {export.study_instance_uid}, "
          f"series {export.series_instance_uid})")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    try:
        from GenerateCTLib.pacs import push_folder
    except ImportError as exc:
        raise CLIError(str(exc)) from exc

    result = push_folder(args.folder, dicomweb=args.dicomweb, dimse=args.dimse, calling_aet=args.calling_aet,
                         timeout=args.timeout)
    method = "QIDO-RS" if args.dicomweb else "C-FIND"
    for series in result.series:
        count = "?" if series.num_instances is None else series.num_instances
        print(f"confirmed by {method}: series {series.series_instance_uid} ({series.series_description!r}, "
              f"{count} instance(s)) in study {series.study_instance_uid}")
    print(f"pushed {result.num_instances} instance(s) to {result.destination}")
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from GenerateCTLib.hub import download_official_bundle, official_bundle_dir

    tqdm_class = None
    if not args.quiet:
        from tqdm import tqdm as tqdm_class
    out = download_official_bundle(
        args.out or official_bundle_dir(),
        revision=args.revision,
        from_dir=args.from_dir,
        cache_dir=args.cache_dir,
        text_encoder=args.t5,
        overwrite=args.overwrite,
        tqdm_class=tqdm_class,
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

        bundle = Bundle(resolve_model(args.model))
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
    info.add_argument("--model", help="'demo', 'official' or a bundle folder to describe")
    info.add_argument("--verify", action="store_true", help="recompute the sha256 of every bundle file")
    info.set_defaults(func=_cmd_info)

    generate = commands.add_parser(
        "generate",
        help="generate a synthetic CT volume from a prompt",
        epilog=EXAMPLES_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument("--model", help="'demo' (default; or $GENERATECT_MODEL), 'official' or a bundle folder")
    generate.add_argument("--remote", help="generate on a GenerateCT server at this URL instead of locally")
    generate.add_argument("--token-file", help="bearer token for --remote (else $GENERATECT_TOKEN)")
    generate.add_argument("--ca-bundle", help="CA certificate file to verify an HTTPS --remote server")
    generate.add_argument("--prompt", help='full prompt, e.g. "65 years old male: Cardiomegaly."')
    generate.add_argument("--age", type=int, help="patient age in years (0-120)")
    generate.add_argument("--sex", help="male or female")
    generate.add_argument("--impression", help="radiology impression text")
    generate.add_argument("--slices", type=int, default=None,
                          help="odd number of slices (default: the model's, 201 for the official model)")
    generate.add_argument("--seed", type=int, help="random seed (default: random, recorded in the sidecar)")
    generate.add_argument("--steps", type=int, default=18, help="MaskGIT decoding steps (default 18)")
    generate.add_argument("--cond-scale", type=float, default=None,
                          help="guidance scale (default: the model's; 5 as released, 3 for the demo)")
    generate.add_argument("--temperature", type=float, default=0.9,
                          help="MaskGIT sampling temperature, annealed to 0 (default 0.9 as released; higher: "
                               "more variation between seeds)")
    generate.add_argument("--no-sr", action="store_true", help="skip super-resolution (fast low-res preview)")
    generate.add_argument("--sr-steps", type=int, default=25, help="diffusion steps (default 25)")
    generate.add_argument("--sr-batch-size", type=int, default=None,
                          help="slices per SR batch (default: 1 on the CPU, 8 on a GPU)")
    generate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    generate.add_argument("--out", required=True,
                          help="output volume (.nii.gz or .nrrd); a folder with --format dicom")
    generate.add_argument("--format", choices=tuple(FORMATS_BY_NAME) + ("dicom",),
                          help="output format (default: from the --out extension); dicom writes a CT series folder")
    generate.add_argument("--no-prompt", action="store_true", help="DICOM: leave the free-text prompt out of the files")
    generate.add_argument("--multiframe", action="store_true",
                          help="DICOM: one Legacy Converted Enhanced CT instance instead of one file per slice")
    generate.add_argument("--dtype", choices=("float32", "int16"), default="int16", help="voxel type (default int16)")
    generate.add_argument("--attention", action="store_true",
                          help="also write per-word/per-phrase cross-attention heatmaps (<out>_attention/)")
    generate.add_argument("--preview", help="also write a PNG preview (mid-planes, lung and mediastinal windows)")
    generate.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="progress output")
    generate.add_argument("--overwrite", action="store_true", help="replace existing output files")
    generate.set_defaults(func=_cmd_generate)

    export = commands.add_parser(
        "export-dicom",
        help="write a volume (+ its <stem>.json provenance) as a synthetic-marked DICOM CT series",
        epilog=EXAMPLES_EXPORT_DICOM,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("volume", metavar="VOLUME", help="a .nii.gz / .nrrd volume in HU")
    export.add_argument("--out", required=True, help="DICOM folder to create")
    export.add_argument("--no-prompt", action="store_true", help="leave the free-text prompt out of the files")
    export.add_argument("--multiframe", action="store_true",
                        help="one Legacy Converted Enhanced CT instance instead of one file per slice")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    export.set_defaults(func=_cmd_export_dicom)

    push = commands.add_parser(
        "push",
        help="send a DICOM folder to a PACS (STOW-RS or C-STORE) and confirm by querying it back",
        epilog=EXAMPLES_PUSH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("folder", metavar="DIR", help="folder of DICOM files")
    destination = push.add_mutually_exclusive_group(required=True)
    destination.add_argument("--dicomweb", metavar="URL", help="DICOMweb base URL (STOW-RS + QIDO-RS)")
    destination.add_argument("--dimse", metavar="HOST:PORT:AET", help="DICOM node (C-STORE + C-FIND)")
    push.add_argument("--calling-aet", default="GENERATECT", help="our AE title for --dimse (default GENERATECT)")
    push.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    push.set_defaults(func=_cmd_push)

    from GenerateCTLib.phantom import add_phantom_command
    from GenerateCTLib.server.cli import add_serve_command
    from GenerateCTLib.training.cli import add_train_command

    add_serve_command(commands)
    add_train_command(commands)
    add_phantom_command(commands)

    weights = commands.add_parser("weights", help="convert model weights")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    download = weight_commands.add_parser(
        "download",
        help="download the official checkpoints (Hugging Face generatect/GenerateCT) and convert them",
        epilog=EXAMPLES_DOWNLOAD,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("--out", help="bundle folder (default: the user cache, used by --model official)")
    download.add_argument("--from", dest="from_dir", help="take the .pt files from this folder (air-gapped copy)")
    download.add_argument("--revision", default="main", help="hub branch, tag or commit (default main)")
    download.add_argument("--cache-dir", help="hub download cache (default: <user cache>/generatect/hub)")
    download.add_argument("--t5", default="google/t5-v1_1-base", help="T5 hub id or local folder to bundle")
    download.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    download.add_argument("--quiet", action="store_true", help="no download progress bars")
    download.set_defaults(func=_cmd_weights_download)

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
    except GenerationCancelled:
        print("generatect: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("generatect: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as exc:  # OSError: unwritable folders, unreachable PACS
        if args.debug:
            raise
        print(f"generatect: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
