"""Shared training plumbing: JSON configs, optimiser and learning-rate schedule, accelerate, resumable
checkpoints, text-embedding cache.

Checkpoint layout (``<out>/checkpoint/``, rewritten every ``checkpoint_every`` steps and at the end)::

    checkpoint/model/{config.json, model.safetensors}     the network being trained (save_pretrained)
    checkpoint/training_state.pt                          step, optimiser(s), LR schedule, extra modules,
                                                          RNG states (torch, numpy, python, data generator)

A run finds ``<out>/checkpoint`` and continues from it (``resume=True``, the default); the result equals an
uninterrupted run on the same machine because every random draw comes from saved generators. A new run can
start from the weights of a trained model of the same architecture instead of a random initialisation
(``init_from``: fine-tuning, e.g. the released model on one's own data); a resume ignores it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from GenerateCTLib.modeling import ModelConfig, PretrainedModel

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
STATE_NAME = "training_state.pt"

T = TypeVar("T", bound="TrainConfigBase")


@dataclasses.dataclass
class TrainConfigBase(ModelConfig):
    """Fields every stage has (JSON round trip and strict field checking from :class:`ModelConfig`).
    Adam betas (0.9, 0.99) and eps 1e-8 are the optimiser helpers of phenaki /
    imagen-pytorch the reference trainers call."""

    lr: float = 3e-5
    batch_size: int = 1
    steps: int = 1000
    seed: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    checkpoint_every: int = 250
    log_every: int = 10
    mixed_precision: str = "no"
    cache_size: int = 64
    init_from: str = ""

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; allowed: a positive int")
        for name in ("warmup_steps", "cache_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 0")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} is invalid; allowed: a positive float")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is invalid; allowed: 'constant', 'cosine'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is invalid; allowed: 'no', 'fp16', 'bf16'")
        if not isinstance(self.init_from, str):
            raise ValueError(f"init_from={self.init_from!r} is invalid; allowed: a model folder path or ''")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} is invalid; allowed: a positive float or null")
        self.adam_betas = tuple(self.adam_betas)

    @classmethod
    def from_json(cls: type[T], path: str | os.PathLike) -> T:
        """Load a ``--config`` file (errors name the file as the user gave it)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config={str(path)!r} is invalid; allowed: an existing JSON file")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config={str(path)!r} is not valid JSON ({exc})") from exc
        if not isinstance(values, dict):
            raise ValueError(f"config={str(path)!r} is invalid; allowed: a JSON object of {cls.__name__} fields")
        return cls.from_dict(values, source=str(path))


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up, then constant or cosine decay to 0."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params, config: TrainConfigBase, *, lr: float | None = None) -> torch.optim.Adam:
    """Adam (``weight_decay`` as L2, 0 in the reference) with the config's betas and eps."""
    return torch.optim.Adam(
        [p for p in params if p.requires_grad],
        lr=config.lr if lr is None else lr,
        betas=config.adam_betas,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfigBase) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, warmup_steps=config.warmup_steps, total_steps=config.steps, schedule=config.lr_schedule
        ),
    )


def make_accelerator(config: TrainConfigBase):
    """An ``accelerate.Accelerator`` (device placement, DDP under ``accelerate launch``, mixed precision)."""
    try:
        from accelerate import Accelerator
    except ImportError as exc:  # pragma: no cover - accelerate is a dependency
        raise ValueError("training needs the 'accelerate' package; pip install accelerate") from exc
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def save_checkpoint(
    out_dir: str | os.PathLike,
    model: PretrainedModel,
    *,
    step: int,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] | None = None,
    modules: Mapping[str, torch.nn.Module] | None = None,
    generator: torch.Generator,
    history: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write ``<out>/checkpoint`` atomically (staging folder + rename)."""
    final = checkpoint_dir(out_dir)
    staging = final.with_name(f".{CHECKPOINT_DIR}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging / MODEL_DIR)
    state = {
        "step": int(step),
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in (schedulers or {}).items()},
        "modules": {k: v.state_dict() for k, v in (modules or {}).items()},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]),
            "python": json.dumps(random.getstate()),
            "generator": generator.get_state(),
        },
        "history": {k: [float(v) for v in vs] for k, vs in (history or {}).items()},
    }
    torch.save(state, staging / STATE_NAME)
    backup = final.with_name(f".{CHECKPOINT_DIR}.old")
    shutil.rmtree(backup, ignore_errors=True)
    if final.exists():
        os.replace(final, backup)
    os.replace(staging, final)
    shutil.rmtree(backup, ignore_errors=True)
    return final


def load_checkpoint(
    out_dir: str | os.PathLike,
    model: torch.nn.Module,
    *,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] | None = None,
    modules: Mapping[str, torch.nn.Module] | None = None,
    generator: torch.Generator,
) -> tuple[int, dict[str, list[float]]]:
    """Restore everything :func:`save_checkpoint` wrote; returns ``(step, loss history)``."""
    from safetensors.torch import load_file

    folder = checkpoint_dir(out_dir)
    try:
        model.load_state_dict(load_file(folder / MODEL_DIR / "model.safetensors"), strict=True)
        state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
        for key, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        for key, scheduler in (schedulers or {}).items():
            scheduler.load_state_dict(state["schedulers"][key])
        for key, module in (modules or {}).items():
            module.load_state_dict(state["modules"][key])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(
            f"checkpoint={str(folder)!r} does not match this configuration ({str(exc).splitlines()[0]}); "
            "allowed: a checkpoint of the same model, or --no-resume / another --out"
        ) from exc
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", np.asarray(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
    python_state = json.loads(rng["python"])
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    generator.set_state(rng["generator"])
    return int(state["step"]), {k: list(v) for k, v in state["history"].items()}


def init_from_pretrained(model: PretrainedModel, config: TrainConfigBase) -> bool:
    """Copy the weights of ``config.init_from`` (a ``save_pretrained`` folder) into ``model``; ``False`` when unset.

    The folder's architecture must equal ``model``'s: fine-tuning keeps the architecture, so a difference is
    an error naming the fields, never a partial load.
    """
    if not config.init_from:
        return False
    try:
        source = type(model).from_pretrained(config.init_from)
    except (ValueError, OSError) as exc:
        raise ValueError(
            f"init_from={config.init_from!r} is invalid ({exc}); allowed: a trained {type(model).__name__} folder "
            "with config.json and model.safetensors"
        ) from exc
    ours, theirs = model.config.to_dict(), source.config.to_dict()
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differing:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differing)
        raise ValueError(
            f"init_from={config.init_from!r} is invalid; allowed: a model of the configured architecture ({detail})"
        )
    model.load_state_dict(source.state_dict(), strict=True)
    return True


def has_checkpoint(out_dir: str | os.PathLike) -> bool:
    folder = checkpoint_dir(out_dir)
    return (folder / STATE_NAME).is_file() and (folder / MODEL_DIR / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------
# text embeddings


@torch.no_grad()
def encode_prompts(text_encoder, prompts: Sequence[str], *, batch_size: int = 16) -> dict[str, tuple]:
    """T5 embeddings of every distinct prompt, once: ``{prompt: (embeds (L, d) float32, mask (L,) bool)}``
    trimmed to the prompt's own length (CPU tensors)."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    unique = list(dict.fromkeys(prompts))
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        encoded = text_encoder.encode(chunk)
        for i, prompt in enumerate(chunk):
            length = int(encoded.mask[i].sum())
            cache[prompt] = (encoded.embeds[i, :length].float().cpu(), encoded.mask[i, :length].cpu())
    return cache


def collate_text(cache: Mapping[str, tuple], prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad cached embeddings to the longest prompt: ``(b, L, d)`` zeros at padding, ``(b, L)`` bool."""
    items = [cache[p] for p in prompts]
    length = max(1, max(e.shape[0] for e, _ in items))
    dim = items[0][0].shape[-1]
    embeds = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, (e, m) in enumerate(items):
        embeds[i, : e.shape[0]] = e
        mask[i, : m.shape[0]] = m
    return embeds, mask


@dataclasses.dataclass
class TrainResult:
    """What a training run returns.

    Attributes:
        model_dir: ``<out>/model`` (``save_pretrained`` of the trained network).
        step: the last completed step.
        history: per-step values of the logged losses (``{"loss": [...], ...}``), including steps done
            before a resume.
        seconds: wall time of this invocation (data preparation included).
        steps_per_second: optimisation steps per second of this invocation (training loop only).
    """

    model_dir: Path
    step: int
    history: dict[str, list[float]]
    seconds: float
    steps_per_second: float


def checkpoint_if_due(accelerator, out_dir: str | os.PathLike, config: TrainConfigBase, model, *, step: int,
                      **state: Any) -> None:
    """:func:`save_checkpoint` (main process, after a barrier) every ``checkpoint_every`` steps and at the end."""
    if step % config.checkpoint_every == 0 or step == config.steps:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(out_dir, model, step=step, **state)


def finish_training(
    accelerator, out_dir: str | os.PathLike, config: TrainConfigBase, model, *, step: int,
    history: dict[str, list[float]], started: float, loop_start: float, loop_steps: int,
) -> TrainResult:
    """Save the final ``model`` (eval mode) to ``<out>/model`` with ``train_config.json`` and summarise the run."""
    elapsed = time.perf_counter() - loop_start
    model_dir = Path(out_dir) / MODEL_DIR
    if accelerator.is_main_process:
        model.eval().save_pretrained(model_dir)
        config.save(Path(out_dir) / "train_config.json")
    accelerator.wait_for_everyone()
    return TrainResult(model_dir, step, history, time.perf_counter() - started,
                       loop_steps / elapsed if loop_steps else 0.0)


def progress_bar(total: int, initial: int, *, desc: str, enabled: bool):
    """A tqdm bar (stderr) or a no-op stand-in."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
