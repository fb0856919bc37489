"""The worker-process half of the 3D Slicer module's Slicer-free helpers; the panel and scene half (geometry,
presets, panel inputs, models, progress text, time estimates) is :mod:`GenerateCTLib.slicer_support`.

Here: the worker's command lines (generate, DICOM export and push, weight download, private package
install), the packages it needs and its environment, parsing its output (progress lines, the final ``done``
line, tqdm bars), stopping its process tree, and remote generation on a ``generatect serve`` server driven
by short polls (:class:`RemoteGeneration`).

Nothing here imports ``slicer``, ``qt``, ``vtk`` or ``ctk`` (a test enforces it), nor ``slicer_support`` at
run time (that module imports this one); the module starts the processes and timers itself (style guide
§5.10, Slicer anchors §2 layer A).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from GenerateCTLib._helpers import atomic_write_bytes

if TYPE_CHECKING:  # annotations only: slicer_support imports this module
    from GenerateCTLib.server.client import GenerateCTClient
    from GenerateCTLib.slicer_support import GenerationRequest

__all__ = [
    "DoneLine",
    "LineBuffer",
    "ProgressLine",
    "RemoteGeneration",
    "RemotePoll",
    "WorkerRun",
    "build_dicom_commands",
    "build_download_command",
    "build_export_command",
    "build_generate_command",
    "build_private_install_command",
    "build_push_command",
    "finite_number",
    "is_importable",
    "kill_process_tree",
    "missing_requirements",
    "parse_progress_line",
    "parse_tqdm_percent",
    "popen_new_group_kwargs",
    "private_packages_dir",
    "remote_client",
    "remote_status",
    "subprocess_environment",
    "worker_python",
]

# ----------------------------------------------------------------------------------------------------------
# Command lines, requirements, environment
# ----------------------------------------------------------------------------------------------------------

DEVICE_BY_COMPUTE = {"Auto": "auto", "CUDA": "cuda", "CPU": "cpu"}


def build_generate_command(python: str, request: GenerationRequest, model: str, out_path: str | os.PathLike,
                           *, attention: bool = True) -> list[str]:
    """``[python, -m, GenerateCTLib.cli, generate, ...]`` for a local run with JSON progress lines."""
    if request.compute not in DEVICE_BY_COMPUTE:
        raise ValueError(f"compute {request.compute!r} does not run locally; allowed: {sorted(DEVICE_BY_COMPUTE)}")
    command = [
        python, "-m", "GenerateCTLib.cli", "generate",
        "--model", str(model),
        "--age", str(request.age), "--sex", request.sex, "--impression", request.impression.strip(),
        "--slices", str(request.slices), "--steps", str(request.steps), "--cond-scale", repr(float(request.guidance)),
        "--temperature", repr(float(request.temperature)), "--sr-steps", str(request.sr_steps),
        "--device", DEVICE_BY_COMPUTE[request.compute],
        "--out", str(out_path), "--progress", "json", "--overwrite",
    ]
    if request.seed is not None:
        command += ["--seed", str(request.seed)]
    if not request.super_resolve:
        command.append("--no-sr")
    if attention:
        command.append("--attention")
    return command


def build_export_command(python: str, volume: str | os.PathLike, out_dir: str | os.PathLike, *,
                         include_prompt: bool = True) -> list[str]:
    """``generatect export-dicom``: the library's synthetic-marked writer, reading the provenance sidecar."""
    command = [python, "-m", "GenerateCTLib.cli", "export-dicom", str(volume), "--out", str(out_dir), "--overwrite"]
    return command + ([] if include_prompt else ["--no-prompt"])


def build_push_command(python: str, folder: str | os.PathLike, dicomweb_url: str) -> list[str]:
    """``generatect push --dicomweb``: STOW-RS, then QIDO-RS to confirm the PACS lists the series."""
    return [python, "-m", "GenerateCTLib.cli", "push", str(folder), "--dicomweb", dicomweb_url]


# Packages the worker needs beyond Slicer's own. torch comes from the PyTorch extension's installer; numpy,
# SimpleITK and requests are Slicer's and are never installed or upgraded by this module.
LOCAL_REQUIREMENTS = {
    "transformers": "transformers>=4.40",
    "sentencepiece": "sentencepiece",
    "einops": "einops>=0.7",
    "safetensors": "safetensors>=0.4",
    "huggingface_hub": "huggingface_hub>=0.20",
    "tqdm": "tqdm>=4.66",
}
PROTECTED_PACKAGES = frozenset({"numpy", "SimpleITK", "requests", "torch", "pydicom"})
# DICOM writing needs pydicom>=3 while Slicer ships pydicom 2.x for its own DICOM module: these go into a
# private folder (pip --target --no-deps) that only the worker process sees, on its PYTHONPATH.
PRIVATE_REQUIREMENTS = ("pydicom>=3.0", "pynetdicom>=3.0")


def is_importable(name: str) -> bool:
    """True if ``import name`` would find a module (looked up, not imported)."""
    return importlib.util.find_spec(name) is not None


def missing_requirements(is_installed: Callable[[str], bool] = is_importable,
                         requirements: Mapping[str, str] | None = None) -> list[str]:
    """Requirement strings whose import name ``is_installed(name)`` reports missing (protected ones never)."""
    requirements = LOCAL_REQUIREMENTS if requirements is None else requirements
    return [req for name, req in requirements.items() if name not in PROTECTED_PACKAGES and not is_installed(name)]


def private_packages_dir() -> Path:
    """``~/.GenerateCT/python-packages``: per-user, outside the install tree and Slicer's site-packages."""
    return Path.home() / ".GenerateCT" / "python-packages"


def build_private_install_command(python: str, target: str | os.PathLike) -> list[str]:
    return [python, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(target), *PRIVATE_REQUIREMENTS]


def build_dicom_commands(python: str, source: str | os.PathLike, series_dir: str | os.PathLike,
                         deps: str | os.PathLike, *, include_prompt: bool = True,
                         pacs_url: str = "") -> list[list[str]]:
    """The worker runs of "Save to DICOM", in order: install the private pydicom>=3 into ``deps`` unless it is
    there, export ``source`` into ``series_dir``, then push ``series_dir`` to ``pacs_url`` when one is given."""
    steps = [] if (Path(deps) / "pydicom").is_dir() else [build_private_install_command(python, deps)]
    steps.append(build_export_command(python, source, series_dir, include_prompt=include_prompt))
    return steps + ([build_push_command(python, series_dir, pacs_url)] if pacs_url else [])


def build_download_command(python: str) -> list[str]:
    """``generatect weights download``: fetch + convert the official weights into the user cache, where
    ``--model official`` finds them (tqdm progress bars, parsed by :func:`parse_tqdm_percent`)."""
    return [python, "-m", "GenerateCTLib.cli", "weights", "download"]


def worker_python() -> str:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` launcher (it sets up Slicer's Python
    environment) when it is on PATH, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def subprocess_environment(base: Mapping[str, str], library_root: str | os.PathLike, compute: str,
                           extra_paths: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """The child's environment: ``GenerateCTLib`` (and ``extra_paths``) importable, unbuffered output, CUDA
    hidden for CPU runs."""
    env = dict(base)
    paths = [str(library_root), *map(str, extra_paths)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    if compute == "CPU":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


# ----------------------------------------------------------------------------------------------------------
# Worker output
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProgressLine:
    """A stage's progress: a worker's ``progress`` line or a remote job's status."""

    stage: str
    step: int
    total: int
    eta_s: float | None
    elapsed_s: float


@dataclasses.dataclass(frozen=True)
class DoneLine:
    """The files of a finished generation: the volume, its provenance sidecar and its attention folder."""

    volume: str
    provenance: str | None
    attention: str | None
    seeds: dict[str, int]


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_progress_line(line: str) -> ProgressLine | DoneLine | None:
    """One line of ``generatect generate --progress json`` output; None for anything else (log text,
    warnings, half lines, malformed JSON), which the caller shows in the log instead."""
    line = (line or "").strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("event") == "progress":
        step, total = finite_number(data.get("step")), finite_number(data.get("total"))
        elapsed = finite_number(data.get("elapsed_s"))
        if not isinstance(data.get("stage"), str) or step is None or total is None or total <= 0:
            return None
        return ProgressLine(data["stage"], int(step), int(total), finite_number(data.get("eta_s")), elapsed or 0.0)
    if data.get("event") == "done" and isinstance(data.get("volume"), str):
        seeds = data.get("seeds") if isinstance(data.get("seeds"), dict) else {}
        provenance = data.get("provenance") if isinstance(data.get("provenance"), str) else None
        attention = data.get("attention") if isinstance(data.get("attention"), str) else None
        return DoneLine(data["volume"], provenance, attention, {str(k): v for k, v in seeds.items()})
    return None


_TQDM_RE = re.compile(r"(\d{1,3})%\|")


def parse_tqdm_percent(line: str) -> int | None:
    """The last percentage of a tqdm bar in ``line`` (download progress), or None."""
    found = _TQDM_RE.findall(line or "")
    return min(int(found[-1]), 100) if found else None


class LineBuffer:
    """Splits arbitrary output chunks (QProcess ``readAll``) into complete lines; ``\\r`` counts as a break
    so tqdm redraws become lines."""

    def __init__(self):
        self._pending = ""

    def feed(self, chunk: str | bytes) -> list[str]:
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", errors="replace")
        parts = re.split(r"\r\n|\r|\n", self._pending + chunk)
        self._pending = parts.pop()
        return [p for p in parts if p.strip()]

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest.strip() else []


class WorkerRun:
    """One worker process as the panel sees it. Its merged output, fed chunk by chunk, is dispatched line by
    line: a progress line to ``on_progress`` (a :class:`ProgressLine`); any other line to ``on_log``, then
    its tqdm percentage (an ``int``) to ``on_progress`` when it draws a bar. The ``done`` line is kept in
    :attr:`done`. :attr:`cancelled` records that the panel stopped the process (its exit code then means
    nothing)."""

    def __init__(self, on_log: Callable[[str], Any], on_progress: Callable[[ProgressLine | int], Any]):
        self.on_log, self.on_progress = on_log, on_progress
        self._buffer = LineBuffer()
        self.done: DoneLine | None = None
        self.cancelled = False

    def feed(self, chunk: str | bytes) -> None:
        self._dispatch(self._buffer.feed(chunk))

    def flush(self) -> None:
        """Dispatch the last, unterminated line (call it once the process has ended)."""
        self._dispatch(self._buffer.flush())

    def _dispatch(self, lines: list[str]) -> None:
        for line in lines:
            parsed = parse_progress_line(line)
            if isinstance(parsed, DoneLine):
                self.done = parsed
            elif parsed is not None:
                self.on_progress(parsed)
            else:
                self.on_log(line)
                percent = parse_tqdm_percent(line)
                if percent is not None:
                    self.on_progress(percent)


# ----------------------------------------------------------------------------------------------------------
# Process trees
# ----------------------------------------------------------------------------------------------------------


def popen_new_group_kwargs() -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that make the child lead its own process group/session."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _alive(pid: int) -> bool:
    try:
        import psutil

        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except Exception:  # psutil.NoSuchProcess and friends
        return False


def kill_process_tree(pid: int, *, timeout_s: float = 3.0) -> list[int]:
    """Stop ``pid`` and all its descendants: terminate, wait up to ``timeout_s``, then kill what is left.

    Uses psutil when it is installed (children first, recursively: a launcher such as PythonSlicer
    would otherwise die alone and leave the worker running). Without psutil, POSIX falls back to
    signalling the process group (start the child with :func:`popen_new_group_kwargs`), Windows to
    ``taskkill /T /F``. Returns the pids that were signalled.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            processes = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            return []
        for process in processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=timeout_s)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=timeout_s)
        return [p.pid for p in processes]
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
        return [pid]
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return []
    target = (lambda sig: os.killpg(group, sig)) if group == pid else (lambda sig: os.kill(pid, sig))
    try:
        target(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid) or group == pid:
            target(signal.SIGKILL)
    except ProcessLookupError:
        pass
    return [pid]



# ----------------------------------------------------------------------------------------------------------
# Remote generation
# ----------------------------------------------------------------------------------------------------------


def remote_status(status: Any) -> tuple[str, ProgressLine | None, str | None]:
    """``(state, progress, error)`` from a server job status (``JobStatus`` object or its JSON dict)."""
    get = status.get if isinstance(status, Mapping) else (lambda key, default=None: getattr(status, key, default))
    state = str(getattr(get("status"), "value", get("status")) or "unknown")
    progress, step, total = None, finite_number(get("step")), finite_number(get("total"))
    if isinstance(get("stage"), str) and step is not None and (total or 0) > 0:
        progress = ProgressLine(get("stage"), int(step), int(total), finite_number(get("eta_s")),
                                finite_number(get("elapsed_s")) or 0.0)
    return state, progress, get("error")


REMOTE_FINISHED = ("succeeded", "failed", "cancelled")


def remote_client(url: str, token: str | None, verify: bool | str = True) -> GenerateCTClient:
    """The library client with a 10 s timeout and one retry: the panel calls it on Slicer's GUI thread."""
    from GenerateCTLib.server.client import GenerateCTClient

    return GenerateCTClient(url, token, verify=verify, timeout=10, retries=1)


@dataclasses.dataclass(frozen=True)
class RemotePoll:
    """What one poll of a remote job found.

    ``state`` is the server's job status (``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``)
    or ``error`` when the server could not be reached or answered with an error. ``progress`` is the job's
    latest progress, if any; ``done`` holds the downloaded files once the job has succeeded; ``error`` says
    why a job failed or what went wrong (including a cancel the server could not be told of).
    """

    state: str
    progress: ProgressLine | None = None
    done: DoneLine | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in (*REMOTE_FINISHED, "error")


class RemoteGeneration:
    """One generation on a ``generatect serve`` server, driven by short calls (the Slicer module polls every
    2 s from a QTimer on the GUI thread): each :meth:`poll` is one status request, plus the downloads once the
    job has succeeded. Network and server errors end the job as a :class:`RemotePoll`; they are not raised.

    Creating it submits the job (an error raises: nothing has started). Once the job has succeeded,
    :meth:`poll` downloads the files a local run writes into ``out_dir``: the volume ``ct.nrrd``, its
    provenance ``ct.json`` and the attention maps ``ct_attention/``.
    """

    def __init__(self, request: GenerationRequest, url: str, token: str | None, out_dir: str | os.PathLike, *,
                 verify: bool | str = True):
        self.out_dir = Path(out_dir)
        self.client = remote_client(url, token, verify)
        self.job_id: str = self.client.submit(
            age=request.age, sex=request.sex, impression=request.impression, seed=request.seed,
            num_slices=request.slices, steps=request.steps, cond_scale=request.guidance,
            temperature=request.temperature, super_resolve=request.super_resolve, sr_steps=request.sr_steps,
            attention=True, format="nrrd")["id"]
        self.result: RemotePoll | None = None  # the last poll, once the job has finished

    def poll(self) -> RemotePoll:
        """The job's state now; once it has finished, always that final poll (without asking the server)."""
        if self.result is not None:
            return self.result
        try:
            state, progress, error = remote_status(self.client.status(self.job_id))
            if state == "succeeded":
                return self._finish(RemotePoll(state, progress, done=self._download()))
            if state in REMOTE_FINISHED:
                return self._finish(RemotePoll(state, progress, error=error))
            return RemotePoll(state, progress)
        except Exception as exc:  # the connection, the server or a download: a message, not a traceback
            return self._finish(RemotePoll("error", error=str(exc)))

    def cancel(self) -> RemotePoll:
        """Cancel the job on the server (a running job stops at its next step); a finished job is left alone.
        Returns the final poll: ``cancelled``, or ``error`` if the server could not be told."""
        if self.result is not None:
            return self.result
        try:
            self.client.cancel(self.job_id)
        except Exception as exc:  # the job may still run on the server: say so
            return self._finish(RemotePoll("error", error=f"the server could not be told to cancel: {exc}"))
        return self._finish(RemotePoll("cancelled"))

    def _finish(self, result: RemotePoll) -> RemotePoll:
        self.result = result
        return result

    def _download(self) -> DoneLine:
        volume = self.client.download_result(self.job_id, self.out_dir / "ct.nrrd")
        provenance = self.client.provenance(self.job_id)
        provenance_path = self.out_dir / "ct.json"
        atomic_write_bytes(provenance_path, json.dumps(provenance).encode())
        attention = self.client.download_attention(self.job_id, self.out_dir / "ct_attention").parent
        seeds = provenance.get("seeds") if isinstance(provenance.get("seeds"), dict) else {}
        return DoneLine(str(volume), str(provenance_path), str(attention), {str(k): v for k, v in seeds.items()})
