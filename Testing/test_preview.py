import numpy as np
import pytest

from GenerateCTLib.io import VolumeGeometry
from GenerateCTLib.preview import _to_canonical, render_preview

PROMPT = "65 years old male: left pleural effusion, mild cardiomegaly."
PANEL = 120


@pytest.fixture(scope="module")
def volume_hu() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(20), np.arange(32), np.arange(40), indexing="ij")
    volume = np.where(((y - 16) / 14) ** 2 + ((x - 20) / 18) ** 2 < 1, 40.0, -1000.0)
    volume[(z > 3) & (((y - 16) / 9) ** 2 + ((x - 11) / 5) ** 2 < 1)] = -850.0
    return volume.astype(np.float32)


def _read(path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_writes_png_with_expected_size(volume_hu, tmp_path):
    geometry = VolumeGeometry(spacing_mm=(3.0, 1.5, 1.5))
    plain = render_preview(volume_hu, geometry, tmp_path / "a.png", prompt=PROMPT, panel_px=PANEL)
    heat = np.zeros_like(volume_hu)
    heat[10, 16, 30] = 1.0
    attention = {"word: effusion": heat, "word: cardiomegaly": heat[::-1].copy()}
    with_maps = render_preview(
        volume_hu, geometry, tmp_path / "sub" / "b.png", prompt=PROMPT, attention=attention, panel_px=PANEL
    )
    one_map = render_preview(
        volume_hu,
        geometry,
        tmp_path / "c.png",
        prompt=PROMPT,
        attention=attention,
        panel_px=PANEL,
        max_attention_rows=1,
        overlay_window="mediastinal",
    )
    images = [_read(p) for p in (plain, with_maps, one_map)]
    assert all(p.stat().st_size > 1000 for p in (plain, with_maps, one_map))
    assert [im.shape[1] for im in images] == [3 * PANEL] * 3  # three plane columns
    header_and_footer = images[0].shape[0] - 2 * PANEL
    assert 0 < header_and_footer < PANEL
    # 2 window rows, plus one row per map (capped by max_attention_rows)
    assert [im.shape[0] - header_and_footer for im in images] == [2 * PANEL, 4 * PANEL, 3 * PANEL]
    assert images[0].std() > 0.05  # not blank
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_refuses_to_overwrite(volume_hu, tmp_path):
    geometry = VolumeGeometry(spacing_mm=(1.0, 1.0, 1.0))
    path = render_preview(volume_hu, geometry, tmp_path / "p.png", prompt=PROMPT, panel_px=64)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        render_preview(volume_hu, geometry, path, prompt="other", panel_px=64)
    assert path.read_bytes() == before
    render_preview(volume_hu, geometry, path, prompt="other", panel_px=64, overwrite=True)
    assert path.read_bytes() != before


def test_bad_inputs_name_the_argument(volume_hu, tmp_path):
    geometry = VolumeGeometry(spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="volume_hu"):
        render_preview(volume_hu[0], geometry, tmp_path / "p.png", prompt=PROMPT)
    with pytest.raises(ValueError, match=r"attention\['word: x'\]"):
        render_preview(volume_hu, geometry, tmp_path / "p.png", prompt=PROMPT, attention={"word: x": volume_hu[1:]})
    with pytest.raises(ValueError, match="path"):
        render_preview(volume_hu, geometry, tmp_path / "p.jpg", prompt=PROMPT)
    with pytest.raises(ValueError, match="overlay_window"):
        render_preview(volume_hu, geometry, tmp_path / "p.png", prompt=PROMPT, overlay_window="bone")
    assert not list(tmp_path.iterdir())


def test_display_orientation_follows_the_direction_cosines():
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    default = VolumeGeometry(spacing_mm=(3.0, 2.0, 1.0))
    canonical, spacing = _to_canonical(volume, default)  # default: z -> S, y -> P, x -> L
    np.testing.assert_array_equal(canonical, volume)
    np.testing.assert_allclose(spacing, (3.0, 2.0, 1.0))
    # the same patient stored with x running to the right and the axes permuted to (x, y, z)
    flipped = VolumeGeometry(spacing_mm=(1.0, 2.0, 3.0), direction=((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    other = np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[::-1])
    canonical, spacing = _to_canonical(other, flipped)
    np.testing.assert_array_equal(canonical, volume)
    np.testing.assert_allclose(spacing, (3.0, 2.0, 1.0))


def test_heatmap_titles_fit_their_panel():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from GenerateCTLib.preview import TITLE_POINTS, _heatmap_title

    label = "phrase: Moderate left pleural effusion with dependent layering"
    for panel_px, dpi in ((300, 100), (200, 100), (300, 150)):
        title = _heatmap_title(label, "Coronal", panel_px, dpi)
        assert title.startswith("phrase: Moderate left pleural") and title.endswith("\ncoronal through peak")
        figure = Figure(figsize=(3 * panel_px / dpi, 1), dpi=dpi)
        text = figure.text(0, 0, title, fontsize=TITLE_POINTS)
        width = text.get_window_extent(FigureCanvasAgg(figure).get_renderer()).width
        assert width <= panel_px, (title, width, panel_px)
    assert _heatmap_title("word: heart", "Axial", 300, 100) == "word: heart\naxial through peak"
