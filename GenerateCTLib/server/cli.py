"""``generatect serve`` and ``generatect generate --remote``: the command-line side of the server.

``GenerateCTLib.cli`` wires these in: ``add_serve_command(commands)`` in ``build_parser``, and
``_cmd_generate`` hands over to ``run_remote_generate(args)`` when ``args.remote`` is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("generatect")

EXAMPLES_SERVE = """examples:
  generatect serve --model models/official --token-file ~/.generatect-token
  generatect serve --model official --host 0.0.0.0 --port 8443 --token-file token.txt \\
      --ssl-certfile cert.pem --ssl-keyfile key.pem --device cuda --queue-size 4 --max-disk-gb 50
  generatect generate --remote https://gpu-host:8443 --token-file token.txt --age 65 --sex male \\
      --impression "Bilateral pleural effusion." --out ct.nii.gz

Every /v1 route but /v1/health/live needs 'Authorization: Bearer <token>'; the token comes from
--token-file or GENERATECT_TOKEN. Without a token the server only listens on loopback addresses.
API description: /docs and /openapi.json.
"""


def _default_work_dir() -> Path:
    base = os.environ.get("GENERATECT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "generatect"
    )
    return Path(base) / "server"


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``generatect`` subparsers; returns its parser."""
    serve = subparsers.add_parser(
        "serve",
        help="serve generation jobs over HTTP(S) to remote clients (Slicer, generate --remote)",
        epilog=EXAMPLES_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--model", default="demo", help="'demo' (default), 'official' or a bundle folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--token-file", help="file holding the bearer token (else $GENERATECT_TOKEN)")
    serve.add_argument("--ssl-certfile", help="TLS certificate (PEM); serve HTTPS with --ssl-keyfile")
    serve.add_argument("--ssl-keyfile", help="TLS private key (PEM)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    serve.add_argument("--work-dir", help="folder for results (default: <cache>/generatect/server)")
    serve.add_argument("--queue-size", type=int, default=8, help="jobs waiting besides the running one (default 8)")
    serve.add_argument("--job-timeout", type=float, default=3600.0, help="seconds a job may run (default 3600)")
    serve.add_argument("--result-ttl", type=float, default=86400.0,
                       help="seconds finished jobs and their files are kept (default 86400)")
    serve.add_argument("--max-disk-gb", type=float, default=20.0,
                       help="disk budget for results; the oldest are deleted first (default 20)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=_cmd_serve)
    return serve


def _cmd_serve(args: argparse.Namespace) -> int:
    from GenerateCTLib.cli import CLIError, resolve_device, resolve_model
    from GenerateCTLib.server.security import check_bind, load_token

    # checked before anything heavy is imported: a refused start is immediate
    token = load_token(args.token_file)
    check_bind(args.host, token)
    if token is None:
        log.warning("no token: authentication is off; any local user can submit jobs")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise CLIError("give both --ssl-certfile and --ssl-keyfile, or neither")
    for option, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path is not None and not Path(path).is_file():
            raise CLIError(f"{option}: file {path} not found")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port: {args.port} is not a TCP port")
    if not args.max_disk_gb > 0:
        raise CLIError(f"--max-disk-gb must be positive, got {args.max_disk_gb}")
    try:
        import uvicorn

        from GenerateCTLib.server.app import ServerSettings, create_app
    except ImportError as exc:
        raise CLIError(f"generatect serve needs fastapi and uvicorn ({exc}); pip install fastapi uvicorn") from exc
    model = resolve_model(args.model)
    device = resolve_device(args.device)
    settings = ServerSettings(
        model=model,
        work_dir=Path(args.work_dir) if args.work_dir else _default_work_dir(),
        device=str(device),
        token=token,
        queue_size=args.queue_size,
        job_timeout_s=args.job_timeout,
        result_ttl_s=args.result_ttl,
        max_disk_bytes=int(args.max_disk_gb * 2**30),
    )
    scheme = "https" if args.ssl_certfile else "http"
    log.info("serving %s on %s://%s:%d (work dir %s; API at /docs)", model, scheme, args.host, args.port,
             settings.work_dir)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level=args.log_level,
        timeout_graceful_shutdown=15,
    )
    return 0


def run_remote_generate(args: argparse.Namespace) -> int:
    """``generatect generate --remote URL``: the same files as a local ``generate``, made by a server.

    Uses ``args.remote``, ``args.token_file`` (else ``$GENERATECT_TOKEN``), optional ``args.ca_bundle``, and
    the ``generate`` options (prompt / age / sex / impression, slices, seed, steps, cond_scale, temperature,
    no_sr, sr_steps, out, format, dtype, attention, preview, progress, overwrite). Writes the volume, its
    ``<stem>.json`` provenance and, with ``--attention``, ``<stem>_attention/``. Ctrl-C cancels the job.
    """
    from GenerateCTLib.cli import CLIError, _ProgressPrinter
    from GenerateCTLib.io import volume_format, write_json
    from GenerateCTLib.server.client import GenerateCTClient, RemoteError
    from GenerateCTLib.server.security import load_token

    out = Path(args.out)
    if getattr(args, "format", None) == "dicom":
        raise CLIError("--remote writes .nii.gz or .nrrd; convert with 'generatect export-dicom' afterwards")
    if getattr(args, "no_prompt", False) or getattr(args, "multiframe", False):
        raise CLIError("--no-prompt and --multiframe need --format dicom, which --remote does not support")
    try:
        fmt = volume_format(out)
    except ValueError as exc:
        raise CLIError(f"--out: {exc}") from exc
    if fmt not in ("nii.gz", "nrrd"):
        raise CLIError(f"--out: with --remote the volume is .nii.gz or .nrrd, got {out}")
    if getattr(args, "format", None) not in (None, fmt):
        raise CLIError(f"--out: {out} does not end in .{args.format} (--format {args.format})")
    stem = out.name.split(".")[0]
    sidecar = out.with_name(stem + ".json")
    attention_dir = out.with_name(stem + "_attention")
    preview = getattr(args, "preview", None)
    targets = [out, sidecar] + ([Path(preview)] if preview else []) + ([attention_dir] if args.attention else [])
    for target in targets:
        if target.exists() and not args.overwrite:
            raise CLIError(f"{target} already exists; pass --overwrite to replace it")
    if args.prompt is None and (args.age is None or args.sex is None or args.impression is None):
        raise CLIError("give --prompt, or all of --age, --sex and --impression")
    try:
        token = load_token(getattr(args, "token_file", None))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    client = GenerateCTClient(args.remote, token, verify=getattr(args, "ca_bundle", None) or True)
    printer = _ProgressPrinter(args.progress)
    job_id = None
    try:
        job = client.submit(prompt=args.prompt, age=args.age, sex=args.sex, impression=args.impression,
                            seed=args.seed, num_slices=args.slices, steps=args.steps, cond_scale=args.cond_scale,
                            temperature=args.temperature, super_resolve=not args.no_sr, sr_steps=args.sr_steps,
                            attention=args.attention, format=fmt, dtype=args.dtype)
        job_id = job["id"]
        if args.progress == "json":
            print(json.dumps({"event": "submitted", "job_id": job_id, "server": client.url}), flush=True)
        else:
            log.info("job %s queued on %s", job_id, client.url)
        try:
            client.wait(job_id, callback=printer)
        except KeyboardInterrupt:
            client.cancel(job_id)
            raise
        finally:
            printer.close()
        client.download_result(job_id, out)
        provenance = client.provenance(job_id)
        write_json(sidecar, provenance, overwrite=args.overwrite)
        written = {"volume": str(out), "provenance": str(sidecar)}
        if args.attention:
            client.download_attention(job_id, attention_dir)
            written["attention"] = str(attention_dir)
    except RemoteError as exc:
        raise CLIError(str(exc)) from exc
    if preview:
        from GenerateCTLib.io import read_volume
        from GenerateCTLib.preview import render_preview

        volume, geometry = read_volume(out)
        render_preview(volume, geometry, preview, prompt=provenance.get("prompt"), overwrite=args.overwrite)
        written["preview"] = preview
    if args.progress == "json":
        print(json.dumps({"event": "done", "job_id": job_id, **written, "seeds": provenance.get("seeds")}), flush=True)
    else:
        print(f"wrote {', '.join(written.values())}")
    return 0
