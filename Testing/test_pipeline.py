import numpy as np
import pytest

from GenerateCTLib.pipeline import GenerateCTPipeline, GenerationCancelled, build_prompt
from Testing.tiny_models import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "tiny")


@pytest.fixture(scope="module")
def pipe(bundle):
    return GenerateCTPipeline.from_pretrained(bundle)


def test_lowres_volume_shape_hu_range_and_geometry(pipe):
    out = pipe(age=60, sex="female", impression="Cardiomegaly.", num_slices=9, seed=3, steps=4,
               super_resolve=False)
    assert out.volume_hu.shape == (9, 32, 32) and out.volume_hu.dtype == np.float32
    assert out.volume_hu.min() >= -1000 and out.volume_hu.max() <= 1000
    assert out.prompt == "60 years old female: Cardiomegaly."
    assert out.spacing_mm == pytest.approx((1.5, 12.0, 12.0))
    # centred on the origin
    centre = out.geometry.ijk_to_lps() @ np.array([4, 15.5, 15.5, 1.0])
    assert np.allclose(centre[:3], 0, atol=1e-6)
    assert set(out.provenance["timings_s"]) == {"encode_prompt", "sample_tokens", "decode"}


def test_same_seed_same_volume_other_seed_differs(pipe):
    kw = dict(prompt="50 years old male: Pleural effusion.", num_slices=9, steps=3, super_resolve=False)
    a, b, c = pipe(seed=1, **kw), pipe(seed=1, **kw), pipe(seed=2, **kw)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert not np.array_equal(a.volume_hu, c.volume_hu)


def test_temperature_is_recorded_and_zero_is_greedy(pipe):
    kw = dict(prompt="50 years old male: Pleural effusion.", num_slices=9, steps=3, super_resolve=False,
              temperature=0.0)
    a, b = pipe(seed=1, **kw), pipe(seed=2, **kw)
    assert np.array_equal(a.volume_hu, b.volume_hu)  # no Gumbel noise: the seed does not matter
    assert a.provenance["temperature"] == 0.0
    hot = pipe(seed=1, **{**kw, "temperature": 5.0})
    assert not np.array_equal(a.volume_hu, hot.volume_hu)


def test_super_resolution_is_batch_size_independent(pipe):
    kw = dict(prompt="50 years old male: Nodule.", num_slices=3, steps=2, sr_steps=2, seed=5)
    a = pipe(sr_batch_size=1, **kw)
    b = pipe(sr_batch_size=3, **kw)
    assert a.volume_hu.shape == (3, 128, 128)
    assert np.allclose(a.volume_hu, b.volume_hu, atol=1e-2)
    assert a.spacing_mm == pytest.approx((1.5, 3.0, 3.0))


def test_super_resolve_alone_matches_the_full_cascade(pipe):
    kw = dict(prompt="50 years old male: Nodule.", num_slices=3, steps=2, seed=5)
    full = pipe(sr_steps=2, **kw)
    lowres = pipe(super_resolve=False, **kw)
    alone = pipe.super_resolve(lowres.volume_hu, kw["prompt"], seed=6, sr_steps=2)  # the cascade uses seed + 1
    assert alone.shape == (3, 128, 128)
    assert np.allclose(alone, full.volume_hu, atol=0.5)
    with pytest.raises(ValueError, match=r"volume_hu must be a finite \(z, 32, 32\)"):
        pipe.super_resolve(np.zeros((3, 16, 16)), kw["prompt"])
    with pytest.raises(ValueError, match="sr_steps"):
        pipe.super_resolve(lowres.volume_hu, kw["prompt"], sr_steps=0)


def test_progress_events_and_cancel(pipe):
    events = []
    pipe(prompt="40 years old male: Emphysema.", num_slices=3, steps=3, sr_steps=2, seed=0,
         callback=events.append)
    stages = [e.stage for e in events]
    assert stages[0] == "encode_prompt" and stages[-1] == "super_resolve"
    assert events[-1].step == events[-1].total
    assert all(e.eta_s is None or e.eta_s >= 0 for e in events)

    def stop_in_sampling(event):
        return event.stage != "sample_tokens" or event.step < 2

    with pytest.raises(GenerationCancelled, match="sample_tokens"):
        pipe(prompt="40 years old male: Emphysema.", num_slices=3, steps=3, seed=0, callback=stop_in_sampling)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(age=-1, sex="male", impression="x"), "age"),
        (dict(age=30, sex="x", impression="x"), "sex"),
        (dict(age=30, sex="male", impression="  "), "impression"),
        (dict(prompt="p", num_slices=8), "num_slices"),
        (dict(prompt="p", num_slices=301), "num_slices"),
        (dict(prompt="p", num_slices=9, steps=0), "steps"),
        (dict(prompt="p", num_slices=9, cond_scale=-1.0), "cond_scale"),
        (dict(prompt="p", num_slices=9, temperature=float("nan")), "temperature"),
        (dict(prompt="p", num_slices=9, seed=-4), "seed"),
        (dict(prompt="p", age=3), "not both"),
    ],
)
def test_bad_inputs_name_the_argument(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_build_prompt_strips_reference_characters():
    assert build_prompt(7, "male", ' "Nodule (left)." ') == "7 years old male: Nodule left."
    with pytest.raises(ValueError, match="1000"):
        build_prompt(7, "male", "x" * 1001)


def test_attention_maps_cover_each_phrase_on_the_volume_grid(pipe):
    out = pipe(age=55, sex="male", impression="Cardiomegaly, pleural effusion and nodule.", num_slices=9,
               steps=3, seed=1, super_resolve=False, return_attention=True)
    phrases = [label for label in out.attention if label.startswith("phrase: ")]
    assert phrases == ["phrase: Cardiomegaly", "phrase: pleural effusion", "phrase: nodule"]
    assert {"word: cardiomegaly", "word: pleural", "word: effusion", "word: nodule"} <= set(out.attention)
    for heatmap in out.attention.values():
        assert heatmap.shape == out.volume_hu.shape and heatmap.dtype == np.float32
        assert heatmap.min() >= 0 and heatmap.max() <= 1
    plain = pipe(age=55, sex="male", impression="Cardiomegaly, pleural effusion and nodule.", num_slices=9,
                 steps=3, seed=1, super_resolve=False)
    assert plain.attention is None
    # recording attention does not change the sampled volume
    assert np.allclose(plain.volume_hu, out.volume_hu, atol=1e-3)


def test_guidance_defaults_to_the_bundles(pipe):
    kw = dict(prompt="50 years old male: Pleural effusion.", num_slices=9, steps=3, super_resolve=False, seed=1)
    assert pipe.default_cond_scale == 5.0  # no defaults.cond_scale in its metadata: the released value
    released = pipe(**kw)
    assert released.provenance["cond_scale"] == 5.0
    saved = pipe.metadata.get("defaults")
    pipe.metadata["defaults"] = {"cond_scale": 2.0}
    try:
        tuned = pipe(**kw)
        assert tuned.provenance["cond_scale"] == 2.0 and pipe(**kw, cond_scale=5.0).provenance["cond_scale"] == 5.0
    finally:
        if saved is None:
            pipe.metadata.pop("defaults")
        else:
            pipe.metadata["defaults"] = saved
    assert np.array_equal(tuned.volume_hu, pipe(**kw, cond_scale=2.0).volume_hu)
    assert not np.array_equal(tuned.volume_hu, released.volume_hu)
