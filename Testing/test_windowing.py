import numpy as np
import pytest

from GenerateCTLib.windowing import (
    LUNG,
    MEDIASTINAL,
    apply_window,
    base_output_to_hu,
    get_preset,
    super_resolution_output_to_hu,
    window_preset,
)


def test_presets_are_the_papers():
    assert (LUNG.lower_hu, LUNG.upper_hu) == (-1000, 150)
    assert (MEDIASTINAL.lower_hu, MEDIASTINAL.upper_hu) == (-125, 225)
    assert (get_preset("full").lower_hu, get_preset("Full").upper_hu) == (-1000, 1000)
    assert MEDIASTINAL.level_hu == 50 and MEDIASTINAL.width_hu == 350
    with pytest.raises(ValueError, match="bone"):
        get_preset("bone")


def test_window_maps_bounds_and_clips():
    hu = np.array([-2000, -125, 50, 225, 3000], dtype=np.float32)
    assert np.allclose(window_preset(hu, "mediastinal"), [0, 0, 0.5, 1, 1])
    assert np.array_equal(apply_window(hu, 0, 0), [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="lower <= upper"):
        apply_window(hu, 10, -10)


def test_model_outputs_to_hu():
    assert np.allclose(base_output_to_hu(np.array([-1.2, -0.5, 0.04, 1.5])), [-1000, -500, 40, 1000])
    assert np.allclose(super_resolution_output_to_hu(np.array([0.0, 0.5, 0.52, 1.0])), [-1000, 0, 40, 1000])
