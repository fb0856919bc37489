"""Per-word and per-phrase 3-D cross-attention heatmaps of MaskGIT decoding (GenerateCT, Fig. "attention").

GenerateCT (Hamamci et al., ECCV 2024) shows where the transformer looks for each part of the prompt by
upsampling its text cross-attention to the volume. This module follows the aggregation recipe of DAAM
(Tang et al., ACL 2023, "What the DAAM: Interpreting Stable Diffusion Using Cross Attention"): average
the attention probabilities over heads, layers and the last decoding steps, pick the text-token columns
of a word or phrase, and upsample that token-grid map smoothly to the output voxel grid.

Einstein letters: ``b`` batch (conditional prompts), ``heads`` attention heads, ``n = t*h*w`` MaskGIT
tokens in ``(t h w)`` row-major order, ``L`` text tokens (T5 ids incl. ``</s>`` and padding),
``(t, h, w)`` the token grid, ``(z, y, x)`` the output voxel grid.

Pipeline use::

    recorder = CrossAttentionRecorder(batch_size=b)
    ids = sample_token_ids(..., attention_steps=4, on_attention=recorder.add)
    attention = recorder.mean()                                   # (b, n, L)
    maps = build_attention_maps(attention[i], grid=grid, prompt=prompt, impression=impression,
                                tokenizer=encoder.tokenizer, token_ids=text.token_ids[i],
                                output_shape=volume_hu.shape)
    write_attention_maps(maps, out_dir / "attention", geometry, prompt=prompt)

Text units and labels. A map is keyed by its label ``"<kind>: <text>"``:

* ``"phrase: <text>"`` for each phrase of the impression: the impression split at commas, semicolons,
  periods (not decimal points) and the word "and", stripped, empty pieces dropped, original casing and
  wording kept (e.g. ``"phrase: no pleural effusion on the left"``).
* ``"word: <word>"`` for each distinct non-stop-word of the impression, lower-cased
  (e.g. ``"word: effusion"``); words without a letter (``"5"``) are skipped too.

Stop-words (:data:`STOP_WORDS`) are articles, prepositions, conjunctions, copulas and the negations
"no"/"not". Negations are skipped as heatmap words on purpose: they have no location of their own and
their attention is diffuse, so a radiologist learns nothing from their map; the phrase that contains
them keeps its full text in the label. A phrase's map averages the token columns of its content words
only (stop-word tokens, which often act as attention sinks, would flatten it); a phrase made only of
stop-words falls back to all of its tokens. Repeated words and phrases are merged (one map, all their
tokens).

Token grid to volume. Token frame 0 is slice 0, frame ``t >= 1`` is slices ``2t - 1`` and ``2t`` of the
low-resolution volume (``2T - 1`` slices), so frame centres sit at slice coordinates
``0, 1.5, 3.5, ...``; token ``(h, w)`` is the ``patch x patch`` pixel patch at rows ``patch*h...`` and
columns ``patch*w...``. The map is interpolated linearly between frame centres along ``z`` and
bilinearly in-plane with half-pixel alignment (patch centres on pixel centres, edges clamped), which
equals trilinear interpolation of the token grid. An output grid larger than the low-resolution one
(super-resolution, e.g. 201x512x512) is assumed to cover the same field of view. Each map is min-max
normalised to [0, 1]; a constant map becomes all zeros.

Memory: one float32 map is ``z*y*x*4`` bytes (about 210 MB at 201x512x512). :func:`build_attention_maps`
returns an :class:`AttentionMaps` mapping that keeps every map on the token grid and upsamples one when it
is looked up, so :func:`write_attention_maps` (and the pipeline, CLI and server) hold one map at a time;
:func:`iter_attention_maps` yields them one at a time too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from GenerateCTLib.io import VolumeGeometry, write_json, write_volume

logger = logging.getLogger(__name__)

STOP_WORDS = frozenset(
    "a an the of and or in on with without is are was were be been to at by for from as no not "
    "there this that these those it its".split()
)
"""Words that get no ``word:`` heatmap (see the module docstring for why "no"/"not" are included)."""

# words: letters/digits, joined by internal hyphens or apostrophes ("ground-glass", "patient's")
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
# phrase boundaries: , ; . (a period between digits is a decimal point, not a boundary) and the word "and"
_PHRASE_SPLIT_RE = re.compile(r"[,;]|(?<!\d)\.|\.(?!\d)|\band\b", re.IGNORECASE)
_LETTER_RE = re.compile(r"[^\W\d_]")
# relative range below which a token-grid map counts as constant (float noise of averaged probabilities)
_CONSTANT_RTOL = 1e-6

UnitKind = Literal["phrase", "word"]


# -- recording ----------------------------------------------------------------------------------------


class CrossAttentionRecorder:
    """Running mean of MaskGIT text cross-attention over decoding steps, reduced as it arrives.

    Each :meth:`add` takes the per-layer capture of ONE (guided) forward, keeps the conditional half,
    averages over heads and layers and adds the result to a running ``(b, n, L)`` float32 sum, so memory
    stays at one reduced map whatever the number of layers and steps. Which steps are recorded is the
    caller's choice (the last ``K``: ``sample_token_ids(attention_steps=K, on_attention=recorder.add)``).

    Args:
        batch_size: ``b``, the number of conditional prompts. A capture of batch ``2 b`` is a guided
            forward ``[cond; null]`` and its null half is ignored; a capture of batch ``b`` (guidance scale
            1) is used whole.
        num_null_kv: learned null keys prepended to the text keys (2 in the released model); their
            columns are dropped.
    """

    def __init__(self, batch_size: int, *, num_null_kv: int = 2):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: a positive int")
        if not isinstance(num_null_kv, int) or isinstance(num_null_kv, bool) or num_null_kv < 0:
            raise ValueError(f"num_null_kv={num_null_kv!r} is invalid; allowed: an int >= 0")
        self.batch_size = batch_size
        self.num_null_kv = num_null_kv
        self.num_steps = 0
        self._sum: torch.Tensor | None = None  # (b, n, L) float32

    @torch.no_grad()
    def add(self, probs_per_layer: Sequence[torch.Tensor]) -> None:
        """Accumulate one forward's capture.

        Args:
            probs_per_layer: ``probs[i]`` is layer ``i``'s ``(B, heads, n, num_null_kv + L)`` softmax
                probabilities, ``B`` = ``b`` or ``2 b`` (e.g. the object yielded by
                ``MaskGIT.capture_cross_attention()``).
        """
        num_layers = len(probs_per_layer)
        if num_layers == 0:
            raise ValueError("probs_per_layer is empty; allowed: one (B, heads, n, null+L) tensor per layer")
        b, k = self.batch_size, self.num_null_kv
        step_sum = None
        for i in range(num_layers):
            probs = probs_per_layer[i]
            if not isinstance(probs, torch.Tensor) or probs.ndim != 4:
                raise ValueError(f"probs_per_layer[{i}] must be a (B, heads, n, keys) tensor, got {_describe(probs)}")
            if probs.shape[0] not in (b, 2 * b) or probs.shape[3] <= k:
                raise ValueError(
                    f"probs_per_layer[{i}] shape {tuple(probs.shape)} is invalid; allowed: B in ({b}, {2 * b}) "
                    f"(batch_size={b}, guided batch [cond; null]) and more than num_null_kv={k} keys"
                )
            # reduce heads right away (in float32 even for half-precision captures): (b, n, L)
            layer = probs[:b, :, :, k:].mean(dim=1, dtype=torch.float32)
            if step_sum is not None and layer.shape != step_sum.shape:
                raise ValueError(
                    f"probs_per_layer[{i}] gives {tuple(layer.shape)} after reduction, layer 0 gave "
                    f"{tuple(step_sum.shape)}; allowed: the same (b, n, L) for every layer"
                )
            step_sum = layer if step_sum is None else step_sum.add_(layer)
        step_mean = step_sum.div_(num_layers)
        if self._sum is None:
            self._sum = step_mean
        elif self._sum.shape != step_mean.shape:
            raise ValueError(
                f"probs_per_layer reduces to {tuple(step_mean.shape)}, earlier steps to {tuple(self._sum.shape)}; "
                "allowed: the same (b, n, L) at every step"
            )
        else:
            self._sum.add_(step_mean.to(self._sum.device))
        self.num_steps += 1

    def mean(self) -> torch.Tensor:
        """Mean attention to the text tokens over heads, layers and recorded steps, ``(b, n, L)`` float32 CPU."""
        if self._sum is None:
            raise RuntimeError("no attention recorded yet: call add() with at least one capture first")
        return (self._sum / self.num_steps).cpu()


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else repr(type(value).__name__)


# -- text units ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextUnit:
    """A word or phrase of the impression and the text-token columns it covers.

    Attributes:
        kind: ``"phrase"`` or ``"word"``.
        text: the phrase as written (whitespace collapsed) or the lower-cased word.
        columns: indices into the ``L`` text-token axis whose attention is averaged for this unit.
    """

    kind: UnitKind
    text: str
    columns: tuple[int, ...]

    @property
    def label(self) -> str:
        """``"<kind>: <text>"``, the key of this unit's map."""
        return f"{self.kind}: {self.text}"


def _char_spans(text: str, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Spans of ``text`` between the matches of ``pattern``, whitespace-stripped, empty ones dropped."""
    spans, start = [], 0
    for match in [*pattern.finditer(text), None]:
        end = len(text) if match is None else match.start()
        piece = text[start:end]
        if piece.strip() and _WORD_RE.search(piece):
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
        if match is not None:
            start = match.end()
    return spans


def _token_offsets(prompt: str, tokenizer, length: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and whitespace-trimmed character offsets of ``prompt``'s tokens (special tokens get ``(0, 0)``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} is invalid; allowed: a fast (Rust) tokenizer, which reports "
            "character offsets"
        )
    encoded = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=length)
    offsets = []
    for start, end in encoded["offset_mapping"]:
        # SentencePiece pieces ("▁effusion") may include the preceding space; a bare "▁" becomes empty
        while start < end and prompt[start].isspace():
            start += 1
        while end > start and prompt[end - 1].isspace():
            end -= 1
        offsets.append((start, end))
    return list(encoded["input_ids"]), offsets


def find_text_units(prompt: str, impression: str, tokenizer, token_ids: torch.Tensor | np.ndarray) -> list[TextUnit]:
    """The phrases and non-stop-words of ``impression`` and their text-token columns.

    Args:
        prompt: the encoded prompt, ``"{age} years old {sex}: {impression}"``.
        impression: the impression text; it must occur in ``prompt`` (its last occurrence is used).
        tokenizer: the fast tokenizer that produced ``token_ids`` (T5's SentencePiece tokenizer, or any
            ``PreTrainedTokenizerFast``).
        token_ids: ``(L,)`` ids of this prompt as fed to the model (possibly padded to the batch's longest).

    Returns:
        Phrases in reading order, then words in order of first appearance; units whose tokens were all
        truncated away are left out (logged).
    """
    if not isinstance(prompt, str) or not isinstance(impression, str):
        raise ValueError(
            f"prompt and impression must be strings, got {type(prompt).__name__}, {type(impression).__name__}"
        )
    impression = impression.strip()
    offset = prompt.rfind(impression) if impression else -1
    if offset < 0:
        raise ValueError(f"impression={impression!r} is invalid; allowed: a non-empty part of prompt={prompt!r}")
    ids = torch.as_tensor(token_ids)
    if ids.ndim != 1 or ids.is_floating_point():
        raise ValueError(f"token_ids must be 1-D (L,) integer ids of one prompt, got {_describe(token_ids)}")
    ids = ids.tolist()
    encoded_ids, offsets = _token_offsets(prompt, tokenizer, len(ids))
    pad_id = getattr(tokenizer, "pad_token_id", None)
    tail = ids[len(encoded_ids) :]
    if encoded_ids != ids[: len(encoded_ids)] or (pad_id is not None and any(i != pad_id for i in tail)):
        raise ValueError(
            f"token_ids do not match the tokenization of prompt={prompt!r} ({encoded_ids} + padding); allowed: "
            "the ids the same tokenizer produced for this prompt"
        )

    def columns(spans: Iterable[tuple[int, int]]) -> set[int]:
        found = set()
        for a, b in spans:
            a, b = a + offset, b + offset
            found.update(i for i, (s, e) in enumerate(offsets) if s < e and s < b and e > a)
        return found

    words = [(m.start(), m.end(), m.group().lower()) for m in _WORD_RE.finditer(impression)]
    units: dict[tuple[str, str], set[int]] = {}
    for a, b in _char_spans(impression, _PHRASE_SPLIT_RE):
        text = " ".join(impression[a:b].split())
        inside = [(s, e) for s, e, w in words if a <= s and e <= b]
        content = [(s, e) for s, e, w in words if a <= s and e <= b and w not in STOP_WORDS]
        units.setdefault(("phrase", text), set()).update(columns(content) or columns(inside))
    for s, e, word in words:
        if word not in STOP_WORDS and _LETTER_RE.search(word):
            units.setdefault(("word", word), set()).update(columns([(s, e)]))
    result = []
    for (kind, text), cols in units.items():
        if cols:
            result.append(TextUnit(kind=kind, text=text, columns=tuple(sorted(cols))))
        else:
            logger.info("attention map %r skipped: its tokens were truncated away", f"{kind}: {text}")
    return result


# -- token grid -> volume -----------------------------------------------------------------------------


def _check_shape(name: str, value: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in value if int(v) == v)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or len(value) != 3 or min(shape) < 1:
        raise ValueError(f"{name}={value!r} is invalid; allowed: 3 positive ints")
    return shape


def frame_slice_centres(num_frames: int) -> np.ndarray:
    """Low-resolution slice coordinate of each token frame's centre: ``0, 1.5, 3.5, ..., 2T - 2.5``."""
    t = np.arange(num_frames, dtype=np.float64)
    return np.where(t == 0, 0.0, 2.0 * t - 0.5)


def upsample_token_grid(values: np.ndarray | torch.Tensor, output_shape: Sequence[int]) -> np.ndarray:
    """Smoothly upsample a ``(t, h, w)`` token-grid map to the ``(z, y, x)`` voxel grid (not normalised).

    Linear along ``z`` between frame centres (:func:`frame_slice_centres`) of the ``2t - 1``-slice
    low-resolution volume, bilinear in-plane with patch centres on pixel centres; values beyond the
    first/last centre are clamped. The output grid covers the same field of view as the low-resolution
    volume, whatever its size.

    Args:
        values: ``(t, h, w)`` map on the token grid.
        output_shape: ``(z, y, x)`` voxel grid.

    Returns:
        ``(z, y, x)`` float32.
    """
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if values.ndim != 3 or min(values.shape) < 1:
        raise ValueError(f"values must be a (t, h, w) token-grid map, got shape {values.shape}")
    z, y, x = _check_shape("output_shape", output_shape)
    frames = values.shape[0]
    # 1. z: output slice centres -> low-res slice coordinates (same field of view) -> frame weights
    low_slices = 2 * frames - 1
    coords = (np.arange(z) + 0.5) * low_slices / z - 0.5
    if frames == 1:
        along_z = np.repeat(values, z, axis=0)
    else:
        centres = frame_slice_centres(frames)
        lower = np.clip(np.searchsorted(centres, coords, side="right") - 1, 0, frames - 2)
        weight = np.clip((coords - centres[lower]) / (centres[lower + 1] - centres[lower]), 0.0, 1.0)
        along_z = values[lower] * (1 - weight)[:, None, None] + values[lower + 1] * weight[:, None, None]
    # 2. in-plane: bilinear, align_corners=False puts patch (h, w) centres on the matching pixel centres
    planes = torch.from_numpy(along_z.astype(np.float32))[None]  # (1, z, h, w)
    upsampled = torch.nn.functional.interpolate(planes, size=(y, x), mode="bilinear", align_corners=False)
    return upsampled[0].numpy()


def normalize_map(volume: np.ndarray, *, constant: bool = False) -> np.ndarray:
    """Min-max normalise ``volume`` to [0, 1] in place (float32); all zeros if ``constant`` or flat."""
    volume = np.asarray(volume, dtype=np.float32)
    low, high = float(volume.min()), float(volume.max())
    if constant or not high > low:
        volume[...] = 0.0
        return volume
    volume -= low
    volume *= np.float32(1.0 / (high - low))
    np.clip(volume, 0.0, 1.0, out=volume)
    return volume


def _check_attention(attention: Any, grid: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    if isinstance(attention, torch.Tensor):
        attention = attention.detach().float().cpu().numpy()
    attention = np.asarray(attention, dtype=np.float64)
    grid = _check_shape("grid", grid)
    n = grid[0] * grid[1] * grid[2]
    if attention.ndim != 2 or attention.shape[0] != n:
        raise ValueError(f"attention shape {attention.shape} is invalid; allowed: (n, L) with n = t*h*w = {n}")
    if not np.all(np.isfinite(attention)):
        raise ValueError("attention contains NaN or infinite values")
    return attention, grid


def _unit_attention(attention: np.ndarray, units: Iterable[TextUnit]) -> Iterator[tuple[str, np.ndarray]]:
    """``(label, (n,) mean attention over the unit's text columns)`` per unit; ``attention`` is ``(n, L)``."""
    for unit in units:
        if not unit.columns or max(unit.columns) >= attention.shape[1] or min(unit.columns) < 0:
            raise ValueError(
                f"units: {unit.label!r} has columns {unit.columns}; allowed: indices in [0, {attention.shape[1]})"
            )
        yield unit.label, attention[:, list(unit.columns)].mean(axis=1)


def _normalised_on_grid(values: np.ndarray, grid: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    on_grid = values.reshape(grid)  # (t, h, w)
    low, high = on_grid.min(), on_grid.max()
    flat = not high - low > _CONSTANT_RTOL * max(abs(high), abs(low))
    # normalise on the grid first (float64); the upsampled map is re-stretched exactly onto [0, 1]
    return (np.zeros_like(on_grid) if flat else (on_grid - low) / (high - low)), bool(flat)


class AttentionMaps(Mapping[str, np.ndarray]):
    """The heatmaps of one volume: a read-only mapping ``label -> (z, y, x) float32 map in [0, 1]``.

    Maps are kept on the token grid and upsampled when looked up (not cached): a 201×512×512 map is about
    0.2 GB, so iterating over :meth:`items` holds one map at a time however many words the prompt has.
    """

    def __init__(self, grid_maps: Mapping[str, tuple[np.ndarray, bool]], output_shape: Sequence[int]):
        self._grid_maps = dict(grid_maps)
        self.output_shape = _check_shape("output_shape", output_shape)

    def __getitem__(self, label: str) -> np.ndarray:
        on_grid, flat = self._grid_maps[label]
        return normalize_map(upsample_token_grid(on_grid, self.output_shape), constant=flat)

    def __iter__(self) -> Iterator[str]:
        return iter(self._grid_maps)

    def __len__(self) -> int:
        return len(self._grid_maps)

    def grid_map(self, label: str) -> np.ndarray:
        """The ``(t, h, w)`` token-grid map of ``label``, normalised to [0, 1]."""
        return self._grid_maps[label][0].copy()


def iter_attention_maps(
    attention: torch.Tensor | np.ndarray,
    *,
    grid: Sequence[int],
    units: Iterable[TextUnit],
    output_shape: Sequence[int],
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(label, map)`` per unit, one ``(z, y, x)`` float32 map in [0, 1] at a time.

    Args:
        attention: ``(n, L)`` mean attention of ONE sample (a row of :meth:`CrossAttentionRecorder.mean`).
        grid: ``(t, h, w)`` token grid, ``t*h*w == n``.
        units: from :func:`find_text_units`; their columns index ``L``.
        output_shape: ``(z, y, x)`` of the volume the maps belong to.
    """
    attention, grid = _check_attention(attention, grid)
    output_shape = _check_shape("output_shape", output_shape)
    for label, values in _unit_attention(attention, units):
        on_grid, flat = _normalised_on_grid(values, grid)
        yield label, normalize_map(upsample_token_grid(on_grid, output_shape), constant=flat)


def build_attention_maps(
    attention: torch.Tensor | np.ndarray,
    *,
    grid: Sequence[int],
    prompt: str,
    impression: str,
    tokenizer,
    token_ids: torch.Tensor | np.ndarray,
    output_shape: Sequence[int],
) -> AttentionMaps:
    """Per-phrase and per-word heatmaps of one generated volume.

    Args:
        attention: ``(n, L)`` mean text cross-attention of one sample (``CrossAttentionRecorder.mean()[i]``).
        grid: ``(t, h, w)`` MaskGIT token grid (``(101, 8, 8)`` in the released model).
        prompt: the prompt that was encoded, ``"{age} years old {sex}: {impression}"``.
        impression: the impression part of ``prompt``.
        tokenizer: the fast tokenizer of the text encoder (``T5TextEncoder.tokenizer``).
        token_ids: ``(L,)`` ids of this prompt (``TextEmbeddings.token_ids[i]``).
        output_shape: ``(z, y, x)`` of the output volume (e.g. 201x128x128, or 201x512x512 after
            super-resolution).

    Returns:
        :class:`AttentionMaps`, a mapping ``{label: (z, y, x) float32 in [0, 1]}`` upsampled on lookup, labels
        ``"phrase: <text>"`` (reading order) then ``"word: <word>"`` (see the module docstring).
    """
    attention, grid = _check_attention(attention, grid)
    units = find_text_units(prompt, impression, tokenizer, token_ids)
    if attention.shape[1] != len(token_ids):
        raise ValueError(
            f"attention shape {attention.shape} is invalid; allowed: (n, L) with L = len(token_ids) = {len(token_ids)}"
        )
    output_shape = _check_shape("output_shape", output_shape)
    grid_maps = {label: _normalised_on_grid(values, grid) for label, values in _unit_attention(attention, units)}
    return AttentionMaps(grid_maps, output_shape)


# -- files --------------------------------------------------------------------------------------------


def split_label(label: str) -> tuple[str, str]:
    """``"word: effusion"`` -> ``("word", "effusion")``; a label without a kind gets kind ``"map"``."""
    kind, sep, text = label.partition(": ")
    return (kind, text) if sep and kind and " " not in kind else ("map", label)


def _file_stem(index: int, label: str) -> str:
    kind, text = split_label(label)
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60].rstrip("_") or "map"
    return f"{index:02d}_{re.sub(r'[^a-z0-9]+', '_', kind.lower()) or 'map'}_{slug}"


def write_attention_maps(
    maps: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    out_dir: str | os.PathLike,
    geometry: VolumeGeometry,
    *,
    prompt: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one NIfTI per map plus ``index.json`` into ``out_dir``, atomically per file.

    Files are ``NN_<kind>_<slug>.nii.gz`` (``NN`` = position, the slug keeps ``[a-z0-9_]``). ``index.json``
    lists ``{"label", "kind", "text", "file"}`` per map, the shared ``shape`` and ``value_range`` [0, 1],
    and the ``prompt`` if given. Nothing is written if any target exists and ``overwrite`` is False.

    Args:
        maps: ``{label: (z, y, x) array in [0, 1]}`` or ``(label, array)`` pairs, e.g.
            :func:`iter_attention_maps` to write maps one at a time without holding them all.
        out_dir: target folder (created if missing).
        geometry: the volume's geometry; every map shares it.
        prompt: recorded in the index.
        overwrite: replace existing files.

    Returns:
        The path of ``index.json``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir={str(out_dir)!r} is invalid; allowed: a folder path")
    index_path = out_dir / "index.json"
    # a mapping is read one map at a time (AttentionMaps computes each on lookup)
    items = ((label, maps[label]) for label in maps) if isinstance(maps, Mapping) else maps
    if not overwrite:
        # refuse before writing anything; an iterator's files are checked one by one by write_volume
        known = list(maps) if isinstance(maps, Mapping) else []
        names = [_file_stem(i, label) + ".nii.gz" for i, label in enumerate(known)]
        existing = [p for p in (index_path, *(out_dir / name for name in names)) if p.exists()]
        if existing:
            raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True to replace it")
    entries, shape = [], None
    for label, array in items:
        if not isinstance(label, str) or not label:
            raise ValueError(f"maps: label {label!r} is invalid; allowed: a non-empty string")
        array = np.asarray(array)
        if array.ndim != 3 or (shape is not None and array.shape != shape):
            raise ValueError(f"maps[{label!r}] shape {array.shape} is invalid; allowed: (z, y, x) shared by all maps")
        shape = array.shape
        file_name = _file_stem(len(entries), label) + ".nii.gz"
        write_volume(out_dir / file_name, array.astype(np.float32, copy=False), geometry, overwrite=overwrite)
        kind, text = split_label(label)
        entries.append({"label": label, "kind": kind, "text": text, "file": file_name})
        del array  # released before the next map is computed
    payload = {
        "description": "cross-attention heatmaps of a SYNTHETIC volume (research use only, not for diagnosis)",
        "prompt": prompt,
        "shape": None if shape is None else list(shape),
        "axes": "(z, y, x)",
        "value_range": [0.0, 1.0],
        "maps": entries,
    }
    return write_json(index_path, payload, overwrite=overwrite)
