"""Train the MaskGIT transformer on CT-ViT ids of the training volumes (reference ``train_transformer.py``).

Data preparation, once per run: every volume is tokenised by the trained CT-ViT (``tokenizer_model``, a
``save_pretrained`` folder) and every distinct prompt is encoded by the T5 encoder (``text_encoder``, a hub
id or a local Hugging Face folder such as one written by :func:`GenerateCTLib.training.tiny_t5.build_text_encoder`).
Per step: :func:`GenerateCTLib.training.losses.maskgit_loss` (cosine masking, masked-token cross-entropy,
text dropout as the inference null pass). Reference optimiser: Adam, lr 3e-5, wd 0, linear warm-up
(10 000 steps) then cosine decay, grad-norm clip 2.0, batch 1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from GenerateCTLib.text_encoder import T5TextEncoder
from GenerateCTLib.tokenizer.ctvit import CTViT
from GenerateCTLib.training import common
from GenerateCTLib.training.data import CTReportDataset
from GenerateCTLib.training.losses import maskgit_loss
from GenerateCTLib.transformer.maskgit import MaskGIT, MaskGITConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TransformerTrainConfig(common.TrainConfigBase):
    """MaskGIT training settings; ``model`` holds :class:`MaskGITConfig` fields (``num_tokens`` defaults to
    the CT-ViT's codebook size and ``dim_context`` to the text encoder's width when left out).

    ``tokenizer_model``: the trained CT-ViT folder (required); ``text_encoder``: T5 hub id or folder;
    ``num_slices``: volume depth (the token grid is ``CTViT.token_grid(num_slices)``); ``mask_steps``: the
    ``steps`` of the cosine masking schedule (18); ``cond_drop_prob``: text dropout (0.1).
    """

    model: dict = dataclasses.field(default_factory=dict)
    tokenizer_model: str = ""
    text_encoder: str = "google/t5-v1_1-base"
    num_slices: int = 201
    mask_steps: int = 18
    cond_drop_prob: float = 0.1
    lr: float = 3e-5
    batch_size: int = 1
    max_grad_norm: float | None = 2.0
    warmup_steps: int = 10000
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.cond_drop_prob <= 1:
            raise ValueError(f"cond_drop_prob={self.cond_drop_prob!r} is invalid; allowed: a float in [0, 1]")
        if self.mask_steps < 1:
            raise ValueError(f"mask_steps={self.mask_steps!r} is invalid; allowed: an int >= 1")


def _require_tokenizer(config) -> Path:
    path = Path(config.tokenizer_model)
    if not config.tokenizer_model or not (path / "config.json").is_file():
        raise ValueError(
            f"tokenizer_model={config.tokenizer_model!r} is invalid; allowed: a trained CT-ViT folder "
            "(<tokenizer out>/model with config.json and model.safetensors)"
        )
    return path


@torch.no_grad()
def precompute_token_ids(
    ctvit: CTViT, dataset: CTReportDataset, *, batch_size: int = 2, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """CT-ViT ids of every volume: ``(N, t, h, w)`` int64 (CPU), in dataset order."""
    ctvit = ctvit.eval().to(device)
    parts = []
    for start in range(0, len(dataset), batch_size):
        volumes = torch.stack([dataset.volume(i) for i in range(start, min(len(dataset), start + batch_size))])
        parts.append(ctvit.encode_to_ids(volumes.to(device)).cpu())
    return torch.cat(parts)


def train_transformer(
    data_dir: str | os.PathLike,
    config: TransformerTrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
) -> common.TrainResult:
    """Train a MaskGIT on a CT-RATE-style folder; writes ``<out>/checkpoint`` and ``<out>/model``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    ctvit = CTViT.from_pretrained(_require_tokenizer(config))
    grid = ctvit.token_grid(config.num_slices)
    common.seed_everything(config.seed)
    accelerator = common.make_accelerator(config)
    dataset = CTReportDataset(
        data_dir, num_slices=config.num_slices, image_size=ctvit.config.image_size, stage="transformer"
    )
    model_values = dict(config.model)
    model_values.setdefault("num_tokens", ctvit.config.codebook_size)
    encoder = T5TextEncoder.from_pretrained(config.text_encoder)
    model_values.setdefault("dim_context", encoder.dim)
    mc = MaskGITConfig.from_dict(model_values, source="model")
    if mc.dim_context != encoder.dim:
        raise ValueError(
            f"model.dim_context={mc.dim_context} is invalid; allowed: {encoder.dim} "
            f"(d_model of {config.text_encoder!r})"
        )
    if mc.num_tokens != ctvit.config.codebook_size:
        raise ValueError(
            f"model.num_tokens={mc.num_tokens} is invalid; allowed: {ctvit.config.codebook_size} (the CT-ViT codebook)"
        )
    n = grid[0] * grid[1] * grid[2]
    if n > mc.max_seq_len:
        raise ValueError(f"model.max_seq_len={mc.max_seq_len} is invalid; allowed: >= {n} tokens of the grid {grid}")

    # 1. precompute the training targets and the text embeddings (deterministic, eval mode)
    token_ids = precompute_token_ids(ctvit, dataset, device=accelerator.device).reshape(len(dataset), n)
    prompts = dataset.prompts
    text_cache = common.encode_prompts(encoder, prompts)
    del encoder, ctvit

    # 2. model, optimiser, resume
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)
    model = MaskGIT(mc).train()
    optimizer = common.make_optimizer(model.parameters(), config)
    scheduler = common.make_lr_scheduler(optimizer, config)
    step, history = 0, {"loss": [], "accuracy": []}
    if resume and common.has_checkpoint(out_dir):
        step, history = common.load_checkpoint(
            out_dir, model, optimizers={"model": optimizer}, schedulers={"model": scheduler}, generator=generator
        )
        logger.info("resuming MaskGIT training from step %d", step)
    elif common.init_from_pretrained(model, config):
        logger.info("MaskGIT weights from %s", config.init_from)
    prepared, optimizer = accelerator.prepare(model, optimizer)

    # 3. loop
    bar = common.progress_bar(config.steps, step, desc="MaskGIT", enabled=progress and accelerator.is_main_process)
    loop_start, loop_steps = time.perf_counter(), 0
    while step < config.steps:
        index = torch.randint(0, len(dataset), (config.batch_size,), generator=generator).tolist()
        ids = token_ids[index].to(accelerator.device)
        embeds, mask = common.collate_text(text_cache, [prompts[i] for i in index])
        with accelerator.autocast():
            loss, info = maskgit_loss(
                prepared,
                ids,
                embeds.to(accelerator.device),
                mask.to(accelerator.device),
                grid=grid,
                mask_id=mc.num_tokens,
                steps=config.mask_steps,
                cond_drop_prob=config.cond_drop_prob,
                generator=generator,
            )
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(prepared.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        loop_steps += 1
        history["loss"].append(float(loss.detach()))
        history["accuracy"].append(float(info["accuracy"]))
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{history['accuracy'][-1]:.2f}")
        common.checkpoint_if_due(
            accelerator, out_dir, config, model, step=step, optimizers={"model": optimizer},
            schedulers={"model": scheduler}, generator=generator, history=history,
        )
    bar.close()
    return common.finish_training(
        accelerator, out_dir, config, model, step=step, history=history, started=started,
        loop_start=loop_start, loop_steps=loop_steps,
    )


def load_config(path: str | os.PathLike | None, **overrides: Any) -> TransformerTrainConfig:
    """A :class:`TransformerTrainConfig` from JSON (or the defaults) with keyword overrides."""
    values = {} if path is None else TransformerTrainConfig.from_json(path).to_dict()
    values.update(overrides)
    return TransformerTrainConfig.from_dict(values)
