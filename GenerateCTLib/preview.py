"""PNG preview of a generated volume: three mid-planes in lung and mediastinal windows, plus heatmaps.

Layout (``3`` columns, ``panel_px`` pixels per panel): a header with the wrapped prompt; row 1 the lung
window [-1000, 150] HU and row 2 the mediastinal window [-125, 225] HU (the GenerateCT paper's
presets, :mod:`GenerateCTLib.windowing`), each as axial, coronal and sagittal mid-planes; then one row
per attention map (at most ``max_attention_rows``) with the map overlaid on the chosen window, through
the map's peak voxel. A footer reads "SYNTHETIC — research use only".

Display follows the radiological convention, whatever the array's direction cosines: axial viewed from
the feet (patient left on image right, anterior at top), coronal viewed from the front (patient left
on image right, superior at top), sagittal viewed from the patient's left (anterior on image left,
superior at top). Aspect ratios come from ``geometry.spacing_mm``. Oblique directions are displayed
along their nearest patient axes.

Matplotlib is imported lazily and used through its object-oriented API with an Agg canvas, so no
global backend or ``pyplot`` state is touched.
"""

from __future__ import annotations

import io
import itertools
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from GenerateCTLib._helpers import atomic_write_bytes
from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.windowing import LUNG, MEDIASTINAL, WindowPreset, apply_window

SYNTHETIC_NOTE = "SYNTHETIC — research use only"
_TITLE_CHARS_PER_PANEL = 32  # wrap width of the prompt, in characters per panel column
_MAX_TITLE_LINES = 4

# (plane name, canonical axis cut, row/column orientation letters: top, bottom, left, right)
_PLANES = (
    ("Axial", 0, ("A", "P", "R", "L")),
    ("Coronal", 1, ("S", "I", "R", "L")),
    ("Sagittal", 2, ("S", "I", "A", "P")),
)


def _to_canonical(volume: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, np.ndarray]:
    """View of ``volume`` with axes ordered (S, P, L), each increasing that way, and its spacing.

    ``geometry.direction``'s columns are the LPS directions of the array axes ``(z, y, x)``; the array
    axis closest to LPS component ``k`` (0 = L, 1 = P, 2 = S) becomes canonical axis ``2 - k``.
    """
    direction = np.asarray(geometry.direction, dtype=float)  # (LPS component, array axis)
    # the permutation array axis -> LPS component that best matches the direction cosines
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(direction[p[a], a]) for a in range(3)))
    canonical = [2 - best[a] for a in range(3)]  # array axis a -> canonical axis
    order = [canonical.index(c) for c in range(3)]  # canonical axis c <- array axis
    view = np.transpose(volume, order)
    for c, a in enumerate(order):
        if direction[best[a], a] < 0:
            view = np.flip(view, axis=c)
    spacing = np.asarray(geometry.spacing_mm, dtype=float)[order]
    return view, spacing


def _plane(canonical: np.ndarray, spacing: np.ndarray, cut: int, index: int) -> tuple[np.ndarray, float]:
    """Radiological-display 2-D image of canonical axis ``cut`` at ``index``, and its row/column aspect."""
    if cut == 0:  # axial (P, L): anterior at top, patient left on image right
        return canonical[index], spacing[1] / spacing[2]
    if cut == 1:  # coronal (S, L): superior at top
        return canonical[::-1, index, :], spacing[0] / spacing[2]
    return canonical[::-1, :, index], spacing[0] / spacing[1]  # sagittal (S, P): anterior on the left


def _check_path(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path={str(path)!r} is invalid; allowed: a file name ending in .png")
    if path.exists() and path.is_dir():
        raise ValueError(f"path={str(path)!r} is a folder; allowed: a .png file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    return path


def render_preview(
    volume_hu: np.ndarray,
    geometry: VolumeGeometry,
    path: str | os.PathLike,
    *,
    prompt: str,
    attention: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    overlay_window: Literal["lung", "mediastinal"] = "lung",
    max_attention_rows: int = 3,
    panel_px: int = 300,
    dpi: int = 100,
) -> Path:
    """Render a PNG preview of a synthetic volume, atomically.

    Args:
        volume_hu: ``(z, y, x)`` volume in Hounsfield units.
        geometry: its spacing and LPS direction (for aspect ratios and orientation).
        path: the ``.png`` file to write (parent folders are created).
        prompt: the generating prompt, shown (wrapped, at most 4 lines) as the title.
        attention: optional ``{label: (z, y, x) map in [0, 1]}`` (e.g. from
            :func:`GenerateCTLib.attention_maps.build_attention_maps`); the first ``max_attention_rows``
            maps in order each get a row of overlays.
        overwrite: replace an existing file; otherwise :class:`FileExistsError`.
        overlay_window: background window of the attention rows.
        max_attention_rows: cap on attention rows.
        panel_px: size of one square panel in pixels.
        dpi: PNG resolution (font sizes are in points, so it scales the text relative to the panels).

    Returns:
        ``path``. The image is ``3 * panel_px`` wide and ``rows * panel_px + header + footer`` high, with
        ``rows = 2 + min(len(attention), max_attention_rows)``.
    """
    volume_hu = np.asarray(volume_hu)
    if volume_hu.ndim != 3 or min(volume_hu.shape) < 1 or not np.issubdtype(volume_hu.dtype, np.number):
        raise ValueError(f"volume_hu shape {volume_hu.shape} is invalid; allowed: a non-empty numeric (z, y, x) array")
    if not isinstance(geometry, VolumeGeometry):
        raise ValueError(f"geometry={geometry!r} is invalid; allowed: a VolumeGeometry")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt={prompt!r} is invalid; allowed: a string")
    windows = {"lung": LUNG, "mediastinal": MEDIASTINAL}
    if overlay_window not in windows:
        raise ValueError(f"overlay_window={overlay_window!r} is invalid; allowed: {sorted(windows)}")
    for name, value, low in (
        ("max_attention_rows", max_attention_rows, 0),
        ("panel_px", panel_px, 32),
        ("dpi", dpi, 10),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= {low}")
    maps = [(label, attention[label]) for label in list(attention or {})[:max_attention_rows]]
    for label, array in maps:
        if np.shape(array) != volume_hu.shape:
            raise ValueError(
                f"attention[{label!r}] shape {np.shape(array)} is invalid; allowed: the volume's {volume_hu.shape}"
            )
    path = _check_path(path, overwrite)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    canonical, spacing = _to_canonical(volume_hu, geometry)
    title = textwrap.TextWrapper(width=3 * _TITLE_CHARS_PER_PANEL, max_lines=_MAX_TITLE_LINES, placeholder=" …")
    title_lines = title.wrap(" ".join(prompt.split())) or [""]
    line_px = 0.22 * dpi  # 12-pt lines with spacing, in pixels
    header_px, footer_px = round(line_px * (len(title_lines) + 0.8)), round(line_px * 1.3)
    rows = 2 + len(maps)
    width_px, height_px = 3 * panel_px, rows * panel_px + header_px + footer_px
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(figure)
    figure.text(
        0.5,
        1 - 0.4 * line_px / height_px,
        "\n".join(title_lines),
        color="white",
        fontsize=11,
        ha="center",
        va="top",
        wrap=False,
    )
    figure.text(
        0.5,
        0.5 * footer_px / height_px,
        SYNTHETIC_NOTE,
        color="#ff5050",
        fontsize=10,
        ha="center",
        va="center",
        weight="bold",
    )

    def panel(row: int, column: int):
        # axes in figure fractions: a square cell below the header, with a margin for the panel title
        left = column * panel_px / width_px
        bottom = (height_px - header_px - (row + 1) * panel_px) / height_px
        margin = 0.06
        return figure.add_axes(
            (
                left + margin * panel_px / width_px / 2,
                bottom + 0.02 * panel_px / height_px,
                (1 - margin) * panel_px / width_px,
                (1 - 2.5 * margin) * panel_px / height_px,
            )
        )

    def draw(ax, image: np.ndarray, aspect: float, letters: tuple[str, ...], title_text: str):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="antialiased")
        ax.set_title(title_text, color="white", fontsize=TITLE_POINTS, pad=2)
        ax.set_axis_off()
        for text, xy, align in zip(
            letters,
            ((0.5, 0.98), (0.5, 0.02), (0.02, 0.5), (0.98, 0.5)),
            (("center", "top"), ("center", "bottom"), ("left", "center"), ("right", "center")),
            strict=True,
        ):
            ax.text(
                *xy,
                text,
                transform=ax.transAxes,
                color="yellow",
                fontsize=7,
                ha=align[0],
                va=align[1],
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0},
            )

    def window_plane(cut: int, index: int, preset: WindowPreset) -> tuple[np.ndarray, float]:
        image, aspect = _plane(canonical, spacing, cut, index)
        return apply_window(image, preset.lower_hu, preset.upper_hu), aspect

    middle = [size // 2 for size in canonical.shape]
    for row, preset in enumerate((LUNG, MEDIASTINAL)):
        for column, (name, cut, letters) in enumerate(_PLANES):
            image, aspect = window_plane(cut, middle[cut], preset)
            draw(
                panel(row, column),
                image,
                aspect,
                letters,
                f"{name} · {preset.name} [{preset.lower_hu:g}, {preset.upper_hu:g}] HU",
            )
    background = windows[overlay_window]
    for row, (label, array) in enumerate(maps, start=2):
        heat, _ = _to_canonical(np.asarray(array, dtype=np.float32), geometry)
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        for column, (name, cut, letters) in enumerate(_PLANES):
            ax = panel(row, column)
            image, aspect = window_plane(cut, int(peak[cut]), background)
            draw(ax, image, aspect, letters, _heatmap_title(label, name, panel_px, dpi))
            overlay, _ = _plane(heat, spacing, cut, int(peak[cut]))
            # opacity grows with the map value, so unattended tissue stays readable
            alpha = np.clip(1.5 * overlay, 0.0, 1.0) * 0.6
            ax.imshow(overlay, cmap="jet", vmin=0.0, vmax=1.0, alpha=alpha, aspect=aspect, interpolation="bilinear")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor=figure.get_facecolor())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


TITLE_POINTS = 8  # panel title font size
_CHAR_EM = 0.6  # a generous average character width of the default sans-serif font, in ems


def _heatmap_title(label: str, plane: str, panel_px: int, dpi: int) -> str:
    """Two lines, ``"<label>"`` and ``"<plane> through peak"``; the label shortened with an ellipsis when it
    would not fit the panel's width (long phrases otherwise run into the neighbouring panels' titles)."""
    fits = max(int(panel_px / (TITLE_POINTS * dpi / 72 * _CHAR_EM)), 8)
    short = label if len(label) <= fits else label[: fits - 1].rstrip() + "…"
    return f"{short}\n{plane.lower()} through peak"
