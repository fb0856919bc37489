"""The panel and scene half of the 3D Slicer module's Slicer-free helpers (``GenerateCT/GenerateCT.py``):
geometry, window presets, node names and attributes, panel inputs and their checks, models, progress text,
attention maps and CPU time estimates, all testable with plain pytest. The worker-process half (command
lines, requirements, output parsing, process trees, remote jobs) is :mod:`GenerateCTLib.slicer_worker`.

Nothing here imports ``slicer``, ``qt``, ``vtk`` or ``ctk`` (a test enforces it); the module calls these
helpers and keeps only the Slicer calls itself (style guide §5.10, Slicer anchors §2 layer A).

Geometry. Our arrays are ``(z, y, x)`` and :class:`GenerateCTLib.io.VolumeGeometry` maps the index
``(k_z, k_y, k_x)`` to LPS millimetres. Slicer's IJK is ``(i, j, k) = (x, y, z)`` (``i`` the fastest
array axis) and its world frame is RAS, while ``slicer.util.addVolumeFromArray`` /
``updateVolumeFromArray`` take the same ``(k, j, i) = (z, y, x)`` array unchanged. So the IJK→RAS
matrix is the IJK→LPS matrix with its index columns reversed, pre-multiplied by ``diag(-1, -1, 1)``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from GenerateCTLib._helpers import RELEASED_COND_SCALE, bundle_cond_scale
from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.slicer_worker import ProgressLine, finite_number
from GenerateCTLib.windowing import PRESETS, WindowPreset

__all__ = [
    "COMPUTE_CHOICES",
    "EXAMPLE_PROMPTS",
    "MODEL_CHOICES",
    "SETTINGS_KEYS",
    "CpuCosts",
    "GenerationRequest",
    "ProgressClock",
    "attention_entries",
    "check_request",
    "check_server",
    "cpu_warning",
    "cpu_warning_needed",
    "cuda_available",
    "estimate_cpu_seconds",
    "find_demo_model",
    "find_resource",
    "format_duration",
    "ijk_to_ras",
    "model_status",
    "node_attributes",
    "parse_seed",
    "read_bundle_metadata",
    "progress_display",
    "provenance_summary",
    "resolve_model",
    "server_info_text",
    "validate_request",
    "validate_server",
    "volume_node_name",
    "window_presets",
]

# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_to_ras(geometry: VolumeGeometry) -> np.ndarray:
    """4×4 Slicer IJK→RAS matrix of a ``(z, y, x)`` volume placed by ``geometry`` (LPS).

    Column ``i`` (Slicer's fastest axis) is our ``x`` axis, ``j`` is ``y`` and ``k`` is ``z``.
    """
    ijk_to_lps = geometry.ijk_to_lps()  # columns: z, y, x, translation
    matrix = np.eye(4)
    matrix[:, 0] = ijk_to_lps[:, 2]
    matrix[:, 1] = ijk_to_lps[:, 1]
    matrix[:, 2] = ijk_to_lps[:, 0]
    matrix[:, 3] = ijk_to_lps[:, 3]
    return LPS_TO_RAS @ matrix


def ras_of_index(matrix: np.ndarray, index_zyx: Sequence[float]) -> np.ndarray:
    """RAS position of array index ``(z, y, x)`` under a Slicer IJK→RAS ``matrix`` (for tests and probes)."""
    z, y, x = (float(v) for v in index_zyx)
    return (np.asarray(matrix, dtype=float) @ np.array([x, y, z, 1.0]))[:3]


# ----------------------------------------------------------------------------------------------------------
# Display: window presets, node names and attributes
# ----------------------------------------------------------------------------------------------------------


def window_presets() -> list[tuple[str, float, float]]:
    """``[(name, window_hu, level_hu), ...]`` for Full, Lung and Mediastinal, from :mod:`windowing`."""
    return [(p.name, p.width_hu, p.level_hu) for p in PRESETS.values()]


def window_preset(name: str) -> WindowPreset:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"window preset {name!r} is unknown; allowed: {[p.name for p in PRESETS.values()]}") from None


_PROMPT_RE = re.compile(r"^\s*(\d+)\s+years?\s+old\s+(male|female)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)


def volume_node_name(prompt: str, *, max_chars: int = 48) -> str:
    """A short node name from the prompt, e.g. ``"Synthetic CT 65M Cardiomegaly"``."""
    match = _PROMPT_RE.match(prompt or "")
    if match:
        age, sex, impression = match.groups()
        head = f"Synthetic CT {age}{sex[0].upper()}"
    else:
        head, impression = "Synthetic CT", prompt or ""
    words = re.sub(r"[^\w\s\-]", " ", impression).split()
    text = ""
    for word in words:
        if len(text) + len(word) + 1 > max_chars:
            text += "…"
            break
        text = f"{text} {word}".strip()
    return f"{head} {text}".strip()


def node_attributes(prompt: str, seeds: Mapping[str, int] | None, model: str,
                    file: str | os.PathLike | None = None) -> dict[str, str]:
    """Node attributes recording provenance; ``GenerateCT.synthetic`` is always ``"true"``. ``file`` (the
    generated file, which "Save to DICOM" exports) is recorded as ``GenerateCT.file`` when given."""
    seeds = dict(seeds or {})
    attributes = {
        "GenerateCT.prompt": prompt,
        "GenerateCT.seed": json.dumps(seeds, sort_keys=True),
        "GenerateCT.model": model,
        "GenerateCT.synthetic": "true",
    }
    return attributes | ({"GenerateCT.file": str(file)} if file is not None else {})


# ----------------------------------------------------------------------------------------------------------
# Panel inputs
# ----------------------------------------------------------------------------------------------------------

COMPUTE_CHOICES = ("Auto", "CUDA", "CPU", "Remote")
MODEL_CHOICES = ("Demo (bundled)", "Official", "Custom folder")
QUALITY_CHOICES = ("Preview", "Full")
SETTINGS_KEYS = {
    # QSettings (per user, outside the scene): the token is never written to a parameter node or scene file
    "serverUrl": "GenerateCT/ServerURL",
    "serverToken": "GenerateCT/ServerToken",
    "verifyTls": "GenerateCT/VerifyTLS",
    "pacsUrl": "GenerateCT/PacsDICOMwebURL",
    "customModelFolder": "GenerateCT/CustomModelFolder",
    "compute": "GenerateCT/Compute",
    "remoteNotice": "GenerateCT/ShowRemotePromptNotice",
}

EXAMPLE_PROMPTS = (
    (65, "male", "Cardiomegaly. Bilateral pleural effusion."),
    (58, "female", "Right upper lobe mass with mediastinal lymphadenopathy."),
    (72, "male", "Centrilobular emphysema in both upper lobes."),
    (45, "female", "Bilateral ground-glass opacities, consistent with viral pneumonia."),
    (61, "male", "Small left pleural effusion and basal atelectasis."),
    (39, "female", "No acute cardiopulmonary abnormality."),
)


MAX_SEED = 2**31 - 1
MAX_GUIDANCE = 20.0  # the server's limits (server.schemas), without importing it
MAX_TEMPERATURE = 10.0


def parse_seed(text: str | int | None) -> int | None:
    """``"random"``/empty → None; otherwise an integer in [0, 2**31 - 1] (the server's limit too)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "random")):
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"seed {text!r} is invalid; allowed: 'random' or a whole number 0 to {MAX_SEED}") from None
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed {value} is out of range; allowed: 0 to {MAX_SEED}")
    return value


RELEASED_SLICES = 201  # the official model's depth: its default and its maximum


@dataclasses.dataclass
class GenerationRequest:
    """What the panel asks for (units in names; ``quality`` ``"Preview"`` = base stage only, no SR)."""

    age: int
    sex: str
    impression: str
    seed: int | None = None
    slices: int = RELEASED_SLICES
    quality: str = "Full"
    steps: int = 18
    guidance: float = RELEASED_COND_SCALE
    temperature: float = 0.9
    sr_steps: int = 25
    compute: str = "Auto"

    @property
    def super_resolve(self) -> bool:
        return self.quality == "Full"

    @classmethod
    def from_panel(cls, panel: Any) -> GenerationRequest:
        """From the panel's parameter node: attributes ``age`` … ``compute`` (``srSteps`` for ``sr_steps``) and
        ``seed`` as typed text (:func:`parse_seed`: ValueError if it is not a seed)."""
        return cls(age=panel.age, sex=panel.sex, impression=panel.impression, seed=parse_seed(panel.seed),
                   slices=panel.slices, quality=panel.quality, steps=panel.steps, guidance=panel.guidance,
                   temperature=panel.temperature, sr_steps=panel.srSteps, compute=panel.compute)


def validate_request(request: GenerationRequest) -> list[str]:
    """Every problem with ``request`` as one clear sentence each; an empty list means it can run."""
    problems = []
    if isinstance(request.age, bool) or not isinstance(request.age, int) or not 0 <= request.age <= 120:
        problems.append(f"Age must be a whole number from 0 to 120 (got {request.age!r}).")
    if request.sex not in ("male", "female"):
        problems.append(f"Sex must be male or female (got {request.sex!r}).")
    if not request.impression or not request.impression.strip():
        problems.append("Write an impression, or pick one from the example prompts.")
    elif len(request.impression) > 1000:
        problems.append(f"The impression has {len(request.impression)} characters; at most 1000 are allowed.")
    if not isinstance(request.slices, int) or request.slices < 1 or request.slices % 2 == 0:
        problems.append(f"Slices must be an odd number such as {RELEASED_SLICES} (got {request.slices!r}).")
    elif request.slices > RELEASED_SLICES:
        problems.append(f"Slices must be at most {RELEASED_SLICES}, the model's training depth (got {request.slices}).")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        problems.append(f"Seed must be 'random' or 0 to {MAX_SEED} (got {request.seed}).")
    if request.quality not in QUALITY_CHOICES:
        problems.append(f"Quality must be one of {', '.join(QUALITY_CHOICES)} (got {request.quality!r}).")
    if not isinstance(request.steps, int) or not 1 <= request.steps <= 100:
        problems.append(f"Steps must be 1 to 100 (got {request.steps!r}).")
    if not math.isfinite(request.guidance) or not 0.0 <= request.guidance <= MAX_GUIDANCE:
        problems.append(f"Guidance must be 0 to {MAX_GUIDANCE:g} (got {request.guidance!r}).")
    if not math.isfinite(request.temperature) or not 0.0 <= request.temperature <= MAX_TEMPERATURE:
        problems.append(f"Temperature must be 0 to {MAX_TEMPERATURE:g} (got {request.temperature!r}).")
    if not isinstance(request.sr_steps, int) or not 1 <= request.sr_steps <= 1000:
        problems.append(f"Super-resolution steps must be 1 to 1000 (got {request.sr_steps!r}).")
    if request.compute not in COMPUTE_CHOICES:
        problems.append(f"Compute must be one of {', '.join(COMPUTE_CHOICES)} (got {request.compute!r}).")
    return problems


def check_request(request: GenerationRequest, server_url: str = "", token: str = "") -> None:
    """Raise ValueError listing every problem of ``request``, one a line (and of ``server_url`` and ``token``
    when it runs remotely: :func:`validate_server`); return if it can run."""
    problems = validate_request(request)
    if request.compute == "Remote":
        problems += validate_server(server_url, token)
    if problems:
        raise ValueError("\n".join(problems))


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_server(url: str, token: str) -> list[str]:
    """Problems with a remote-server URL and bearer token. Plain ``http://`` is allowed only on loopback,
    so a token never crosses a network unencrypted."""
    problems = []
    url = (url or "").strip()
    parts = urlsplit(url)
    if not url:
        problems.append("Enter the server URL, e.g. https://gpu-server.example.org:8000.")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"Server URL {url!r} must start with https:// (or http:// for this computer) and name a host.")
    elif parts.scheme == "http" and not _is_loopback(parts.hostname):
        problems.append(f"Server URL {url!r} uses plain http to another computer; use https:// to encrypt the token.")
    elif parts.query or parts.fragment:
        problems.append(f"Server URL {url!r} must not contain '?' or '#'.")
    if token and (any(c.isspace() for c in token) or not token.isprintable()):
        problems.append("The access token must not contain spaces, line breaks or control characters.")
    elif len(token or "") > 4096:
        problems.append("The access token is longer than 4096 characters; paste only the token itself.")
    return problems


def check_server(url: str, token: str) -> None:
    """Raise ValueError listing every problem of the server URL and token (:func:`validate_server`)."""
    problems = validate_server(url, token)
    if problems:
        raise ValueError("\n".join(problems))


def server_info_text(info: Mapping[str, Any], *, max_chars: int = 1500) -> str:
    """A server's ``/v1/info`` answer as indented JSON for a message box, cut at ``max_chars``."""
    return json.dumps(info, indent=1, default=str)[:max_chars]


def find_resource(module_dir: str | os.PathLike, relative: str) -> Path:
    """A module resource wherever Slicer installed it: ``<module dir>/Resources/<relative>`` (installed
    extension and source tree), else ``<module dir>/../Resources/<relative>`` (repository-level resources)."""
    module_dir = Path(module_dir)
    candidates = [module_dir / "Resources" / relative, module_dir.parent / "Resources" / relative]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"resource {relative!r} not found in {', '.join(str(p.parent) for p in candidates)}")


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------

DEMO_MODEL_ENV = "GENERATECT_DEMO_MODEL"


def demo_model_candidates(module_dir: str | os.PathLike) -> list[Path]:
    """Where "Demo (bundled)" is looked for, in order:

    1. ``$GENERATECT_DEMO_MODEL`` (an override for developers and tests);
    2. ``<module dir>/Resources/Models/demo``: a copy installed beside ``GenerateCT.py``;
    3. ``<module dir>/../Resources/Models/demo``: the same in a source checkout;
    4. the bundle shipped inside the library (``GenerateCTLib/models/demo``), which CMake installs with the
       library and pip installs as package data.
    """
    from GenerateCTLib.models import demo_bundle_dir

    module_dir = Path(module_dir)
    candidates = [Path(os.environ[DEMO_MODEL_ENV])] if os.environ.get(DEMO_MODEL_ENV) else []
    return candidates + [
        module_dir / "Resources" / "Models" / "demo",
        module_dir.parent / "Resources/Models/demo",
        demo_bundle_dir(),
    ]


def find_demo_model(module_dir: str | os.PathLike) -> Path | None:
    """The first candidate holding a bundle (``metadata.json``), or None."""
    for path in demo_model_candidates(module_dir):
        if (path / "metadata.json").is_file():
            return path
    return None


def resolve_model(choice: str, module_dir: str | os.PathLike, custom_folder: str = "") -> str:
    """The ``--model`` value for a panel choice; raises ValueError with what to do when it is missing."""
    if choice == "Demo (bundled)":
        path = find_demo_model(module_dir)
        if path is None:
            tried = ", ".join(str(p) for p in demo_model_candidates(module_dir))
            raise ValueError(f"The bundled demo model was not found (looked in {tried}). Choose Official or a folder.")
        return str(path)
    if choice == "Official":
        return "official"  # the CLI resolves the converted bundle in the user cache
    if choice == "Custom folder":
        path = Path(custom_folder or "")
        if not custom_folder or not (path / "metadata.json").is_file():
            raise ValueError(f"Model folder {custom_folder!r} is not a GenerateCT bundle (no metadata.json in it).")
        return str(path)
    raise ValueError(f"model choice {choice!r} is unknown; allowed: {', '.join(MODEL_CHOICES)}")


def model_slice_limits(model: str) -> tuple[int, int] | None:
    """``(default, maximum)`` slice counts of a ``--model`` value (``"official"`` or a bundle folder), read from
    the bundle's JSON files without loading a network; ``None`` when they cannot be read.

    The maximum is what the MaskGIT's position table holds: ``max_seq_len // (h · w)`` token frames of the
    CT-ViT, ``1 + (frames - 1) · temporal_patch_size`` slices (as ``GenerateCTPipeline.max_slices``).
    """
    if model == "official":
        return RELEASED_SLICES, RELEASED_SLICES
    folder = Path(model)
    try:
        metadata = json.loads((folder / "metadata.json").read_text())
        ctvit = json.loads((folder / "ctvit" / "config.json").read_text())
        maskgit = json.loads((folder / "maskgit" / "config.json").read_text())
        side = int(ctvit["image_size"]) // int(ctvit["patch_size"])
        frames = int(maskgit["max_seq_len"]) // (side * side)
        maximum = 1 + (frames - 1) * int(ctvit["temporal_patch_size"])
        default = int(metadata.get("defaults", {}).get("num_slices", RELEASED_SLICES))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    if maximum < 1:
        return None
    return min(default, maximum), maximum


def panel_guidance(choice: str, module_dir: str | os.PathLike, custom_folder: str = "", *,
                   remote: bool = False) -> float:
    """The guidance scale the chosen model was tuned for (its bundle's ``defaults.cond_scale``; the demo: 3),
    or the released 5 when the run is remote or the model cannot be read."""
    if remote or choice == "Official":
        return RELEASED_COND_SCALE
    try:
        folder = Path(resolve_model(choice, module_dir, custom_folder))
        return bundle_cond_scale(json.loads((folder / "metadata.json").read_text()))
    except (OSError, ValueError, TypeError, AttributeError):  # no such model: the panel's model line says so
        return RELEASED_COND_SCALE


def panel_slice_limits(choice: str, module_dir: str | os.PathLike, custom_folder: str = "", *,
                       remote: bool = False) -> tuple[int, int]:
    """``(default, maximum)`` for the panel's slice box: the chosen model's limits, or the released model's when
    the run is remote (the server checks its own model) or the model cannot be read."""
    released = RELEASED_SLICES, RELEASED_SLICES
    if remote:
        return released
    try:
        return model_slice_limits(resolve_model(choice, module_dir, custom_folder)) or released
    except ValueError:  # no such model: the panel's model line says so
        return released


def model_status(choice: str, module_dir: str | os.PathLike, custom_folder: str = "", *, remote: bool = False) -> str:
    """The panel's model line: ``"Model: <bundle folder or official>"``, what is wrong with the choice, or
    nothing for a remote run (the server uses its own model)."""
    if remote:
        return ""
    try:
        return f"Model: {resolve_model(choice, module_dir, custom_folder)}"
    except ValueError as error:
        return str(error)


# ----------------------------------------------------------------------------------------------------------
# Progress and results
# ----------------------------------------------------------------------------------------------------------

STAGES = {  # stage -> (label, share of the progress bar for a full run)
    "encode_prompt": ("Encoding the prompt", 0.02),
    "sample_tokens": ("Sampling tokens", 0.38),
    "decode": ("Decoding the volume", 0.05),
    "super_resolve": ("Super-resolution", 0.55),
}


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "estimating…"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_display(event: ProgressLine, *, super_resolve: bool = True, since_event_s: float = 0.0) -> tuple[int, str]:
    """``(percent 0-100, "Sampling tokens 4/18 - about 3 min 10 s left")`` for the progress bar.

    A CPU MaskGIT step can take minutes, so the panel calls this every second with ``since_event_s`` (time
    since the last progress line): the ETA keeps counting down between lines."""
    stages = [s for s in STAGES if super_resolve or s != "super_resolve"]
    weights = {s: STAGES[s][1] for s in stages}
    scale = sum(weights.values())
    done = 0.0
    for stage in stages:
        if stage == event.stage:
            done += weights[stage] * min(event.step, event.total) / event.total
            break
        done += weights[stage]
    label = STAGES.get(event.stage, (event.stage.replace("_", " ").capitalize(), 0))[0]
    percent = int(round(100 * done / scale)) if event.stage in weights else 0
    eta = "" if event.eta_s is None else f" - about {format_duration(max(0.0, event.eta_s - since_event_s))} left"
    return max(0, min(100, percent)), f"{label} {event.step}/{event.total}{eta}"


class ProgressClock:
    """The progress bar and status text of a running task, refreshed every second by the panel: the elapsed
    time since the start, and (through :func:`progress_display`) the ETA counting down since the last
    progress line. ``clock`` returns seconds (``time.monotonic``; tests pass their own)."""

    def __init__(self, label: str, *, super_resolve: bool = True, clock: Callable[[], float] = time.monotonic):
        self.label, self.super_resolve, self._clock = label, super_resolve, clock
        self.start_s = self.event_s = clock()
        self.event: ProgressLine | None = None
        self.percent: int | None = None  # the last download percentage, while there is no progress line

    def update(self, event: ProgressLine | int) -> None:
        """Record a progress line, or a download percentage (0-100, from a tqdm bar)."""
        if isinstance(event, ProgressLine):
            self.event, self.event_s = event, self._clock()
        else:
            self.percent = max(0, min(100, int(event)))

    def display(self, waiting: str = "{task} {elapsed} elapsed") -> tuple[int | None, str]:
        """``(percent for the bar or None to leave it, status text)``. Until the first progress line the text is
        ``waiting`` with ``{task}`` (the label) and ``{elapsed}`` filled in (the panel passes it translated)."""
        elapsed = format_duration(self._clock() - self.start_s)
        if self.event is None:
            return self.percent, waiting.format(task=self.label, elapsed=elapsed)
        percent, text = progress_display(self.event, super_resolve=self.super_resolve,
                                         since_event_s=self._clock() - self.event_s)
        return percent, f"{text} ({elapsed} elapsed)"


def provenance_summary(path: str | os.PathLike | None, default_model: str) -> tuple[str, str]:
    """``(prompt, model)`` from a provenance sidecar (its ``bundle`` name and version, as the pipeline records
    them, e.g. ``"generatect-demo 0.2"``), ``("", default_model)`` without one; OSError or ValueError if it
    cannot be read."""
    provenance = json.loads(Path(path).read_text()) if path else {}
    bundle = provenance.get("bundle") or {}
    model = " ".join(str(bundle[key]) for key in ("name", "version") if bundle.get(key)) or default_model
    return provenance.get("prompt", ""), model


def attention_entries(attention_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """``[(label, nifti path), ...]`` from an ``index.json`` written by :func:`write_attention_maps`;
    entries whose file is missing or whose name escapes the folder are skipped."""
    folder = Path(attention_dir)
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return []
    entries = []
    for item in index.get("maps", []) if isinstance(index, dict) else []:
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            continue
        path = folder / item["file"]
        if Path(item["file"]).name != item["file"] or not path.is_file():
            continue
        entries.append((str(item.get("label") or item["file"]), path))
    return entries


# ----------------------------------------------------------------------------------------------------------
# CPU time estimate
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpuCosts:
    """Seconds per unit of work at the released model size on a 2-core CPU (README "Speed", measured by
    the reference on that kind of machine). A bundle may carry its own under ``metadata["cpu_seconds"]``."""

    maskgit_step_201_slices: float = 127.0  # one guided MaskGIT step for the full 201-slice token grid
    decode_201_slices: float = 3.35
    sr_step_per_slice: float = 5.28  # one diffusion step for one 512² slice

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> CpuCosts:
        values = (metadata or {}).get("cpu_seconds")
        if not isinstance(values, Mapping):
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in values.items() if k in known and finite_number(v) is not None})


def read_bundle_metadata(model: str | os.PathLike) -> dict[str, Any]:
    """A bundle folder's ``metadata.json`` as a dict; ``{}`` for ``"official"``, a missing or a bad file."""
    try:
        data = json.loads((Path(model) / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def estimate_cpu_seconds(request: GenerationRequest, costs: CpuCosts | None = None) -> float:
    """Rough CPU wall time of a run: MaskGIT steps scale with the token frames, SR with slices × steps."""
    costs = costs or CpuCosts()
    frames = (request.slices + 1) / 2 / 101  # 201 slices = 101 token frames
    seconds = request.steps * costs.maskgit_step_201_slices * frames + costs.decode_201_slices * request.slices / 201
    if request.super_resolve:
        seconds += request.sr_steps * costs.sr_step_per_slice * request.slices
    return seconds


def cpu_warning_needed(request: GenerationRequest, cuda_available: bool | None) -> bool:
    """Warn before a full-resolution run that will land on the CPU (CPU chosen, or Auto without CUDA)."""
    if not request.super_resolve:
        return False
    return request.compute == "CPU" or (request.compute == "Auto" and not cuda_available)


CPU_WARNING_MIN_SECONDS = 120.0  # shorter runs (the demo: about half a minute) start without asking


def cpu_warning(request: GenerationRequest, model: str | os.PathLike, cuda_available: bool | None) -> str | None:
    """The rough duration (:func:`format_duration`) of a run that needs the warning of
    :func:`cpu_warning_needed`, with the costs of the ``model`` bundle when it records them; None: no warning
    (not needed, or the estimate is under :data:`CPU_WARNING_MIN_SECONDS`)."""
    if not cpu_warning_needed(request, cuda_available):
        return None
    seconds = estimate_cpu_seconds(request, CpuCosts.from_metadata(read_bundle_metadata(model)))
    return None if seconds < CPU_WARNING_MIN_SECONDS else format_duration(seconds)


def cuda_available() -> bool:
    """True if torch is installed, built with CUDA and sees a GPU (imports torch; False without it)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.backends.cuda.is_built() and torch.cuda.is_available())
