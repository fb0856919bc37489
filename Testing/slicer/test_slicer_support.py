"""Unit tests of GenerateCTLib.slicer_support (the panel and scene half of the Slicer module's helpers)."""

import json

import pytest

from GenerateCTLib import slicer_support as s
from GenerateCTLib import slicer_worker as w
from GenerateCTLib.windowing import LUNG, MEDIASTINAL


def request(**overrides):
    values = dict(age=65, sex="male", impression="Cardiomegaly.", seed=7, slices=9, quality="Full", compute="CPU")
    return s.GenerationRequest(**{**values, **overrides})


def test_window_presets_come_from_windowing():
    presets = {name: (window, level) for name, window, level in s.window_presets()}
    assert presets == {"Full": (2000.0, 0.0), "Lung": (LUNG.width_hu, LUNG.level_hu),
                       "Mediastinal": (MEDIASTINAL.width_hu, MEDIASTINAL.level_hu)}
    assert presets["Lung"] == (1150.0, -425.0) and presets["Mediastinal"] == (350.0, 50.0)
    with pytest.raises(ValueError, match="unknown"):
        s.window_preset("bone")


def test_progress_display_counts_down_between_lines():
    event = w.ProgressLine("sample_tokens", 9, 18, 600.0, 60.0)
    percent, text = s.progress_display(event, super_resolve=True)
    assert 15 < percent < 30 and text == "Sampling tokens 9/18 - about 10 min 00 s left"
    assert s.progress_display(event, since_event_s=30)[1].endswith("about 9 min 30 s left")
    assert s.progress_display(event, super_resolve=False)[0] > percent  # no SR: the base stages fill the bar
    assert s.progress_display(w.ProgressLine("super_resolve", 25, 25, 0.0, 1.0))[0] == 100
    assert s.format_duration(None) == "estimating…" and s.format_duration(7300) == "2 h 01 min"


def test_panel_limits_are_the_servers():
    from GenerateCTLib.server import schemas

    assert (s.MAX_GUIDANCE, s.MAX_TEMPERATURE) == (schemas.MAX_COND_SCALE, schemas.MAX_TEMPERATURE)


def test_request_validation_messages():
    assert s.validate_request(request()) == []
    problems = s.validate_request(request(age=130, sex="x", impression=" ", slices=10, steps=0, guidance=99.0,
                                          temperature=-1.0, compute="TPU"))
    text = " ".join(problems)
    for part in ("Age must", "Sex must", "Write an impression", "odd number", "Steps must", "Guidance must",
                 "Temperature must", "Compute must"):
        assert part in text
    assert "at most 201" in s.validate_request(request(slices=203))[0]
    assert s.parse_seed("random") is None and s.parse_seed(" ") is None and s.parse_seed("42") == 42
    for bad in ("abc", "-1", str(2**31)):
        with pytest.raises(ValueError, match="seed"):
            s.parse_seed(bad)


@pytest.mark.parametrize(("url", "token", "expected"), [
    ("https://gpu.example.org:8000", "abc.def-123", None),
    ("http://127.0.0.1:8000", "tok", None),
    ("http://localhost:8000", "", None),
    ("", "", "Enter the server URL"),
    ("ftp://host", "", "must start with https://"),
    ("http://gpu.example.org", "tok", "plain http"),
    ("https://host/?a=1", "", "must not contain"),
    ("https://host", "two words", "must not contain spaces"),
    ("https://host", "x" * 5000, "longer than 4096"),
])
def test_server_validation(url, token, expected):
    problems = s.validate_server(url, token)
    assert (problems == []) if expected is None else any(expected in p for p in problems), problems


def test_cpu_estimate_and_warning():
    full = s.estimate_cpu_seconds(request(slices=201, steps=18, sr_steps=25))
    assert 7 * 3600 < full < 9 * 3600  # README: 127 s per MaskGIT step, 5.28 s per SR step and slice
    preview = s.estimate_cpu_seconds(request(slices=201, quality="Preview"))
    assert 30 * 60 < preview < 45 * 60
    costs = s.CpuCosts.from_metadata({"cpu_seconds": {"maskgit_step_201_slices": 1.0, "sr_step_per_slice": 0.01,
                                                      "bogus": 3}})
    assert s.estimate_cpu_seconds(request(slices=201), costs) < 100
    assert s.read_bundle_metadata("official") == {}
    assert s.cpu_warning_needed(request(compute="CPU"), cuda_available=True)
    assert s.cpu_warning_needed(request(compute="Auto"), cuda_available=False)
    assert not s.cpu_warning_needed(request(compute="Auto"), cuda_available=True)
    assert not s.cpu_warning_needed(request(compute="CPU", quality="Preview"), cuda_available=False)


def test_model_resolution(tmp_path, monkeypatch):
    import GenerateCTLib.models

    monkeypatch.delenv(s.DEMO_MODEL_ENV, raising=False)
    library_demo = GenerateCTLib.models.demo_bundle_dir()
    monkeypatch.setattr(GenerateCTLib.models, "demo_bundle_dir", lambda: tmp_path / "no-library-demo")
    module_dir = tmp_path / "repo" / "GenerateCT"
    module_dir.mkdir(parents=True)
    with pytest.raises(ValueError, match="demo model was not found"):
        s.resolve_model("Demo (bundled)", module_dir)
    monkeypatch.setattr(GenerateCTLib.models, "demo_bundle_dir", lambda: library_demo)
    assert s.resolve_model("Demo (bundled)", module_dir) == str(library_demo)  # shipped with the library
    source_demo = tmp_path / "repo" / "Resources" / "Models" / "demo"
    source_demo.mkdir(parents=True)
    (source_demo / "metadata.json").write_text("{}")
    assert s.resolve_model("Demo (bundled)", module_dir) == str(source_demo)
    installed_demo = module_dir / "Resources" / "Models" / "demo"
    installed_demo.mkdir(parents=True)
    (installed_demo / "metadata.json").write_text("{}")
    assert s.find_demo_model(module_dir) == installed_demo  # the installed copy wins
    monkeypatch.setenv(s.DEMO_MODEL_ENV, str(source_demo))
    assert s.find_demo_model(module_dir) == source_demo
    assert s.resolve_model("Official", module_dir) == "official"
    assert s.resolve_model("Custom folder", module_dir, str(source_demo)) == str(source_demo)
    with pytest.raises(ValueError, match="not a GenerateCT bundle"):
        s.resolve_model("Custom folder", module_dir, str(tmp_path))


def test_names_attributes_and_attention_index(tmp_path):
    assert s.volume_node_name("65 years old male: Cardiomegaly. Small effusion.") == \
        "Synthetic CT 65M Cardiomegaly Small effusion"
    assert len(s.volume_node_name("40 years old female: " + "word " * 40)) < 70
    attributes = s.node_attributes("p", {"sample_tokens": 3}, "demo")
    assert attributes["GenerateCT.synthetic"] == "true" and json.loads(attributes["GenerateCT.seed"]) == {
        "sample_tokens": 3}
    assert "GenerateCT.file" not in attributes
    volume = tmp_path / "ct.nrrd"
    assert s.node_attributes("p", None, "demo", file=volume)["GenerateCT.file"] == str(volume)
    (tmp_path / "00_phrase_a.nii.gz").write_bytes(b"x")
    (tmp_path / "index.json").write_text(json.dumps({"maps": [
        {"label": "phrase: a", "file": "00_phrase_a.nii.gz"}, {"label": "gone", "file": "01_missing.nii.gz"},
        {"label": "escape", "file": "../index.json"}]}))
    assert s.attention_entries(tmp_path) == [("phrase: a", tmp_path / "00_phrase_a.nii.gz")]
    assert s.attention_entries(tmp_path / "nowhere") == []


def test_request_from_the_panel_and_checks_that_raise():
    from types import SimpleNamespace

    panel = SimpleNamespace(age=58, sex="female", impression="Right upper lobe mass.", seed="42", slices=9,
                            quality="Preview", steps=4, guidance=3.5, temperature=2.0, srSteps=10,
                            compute="Remote")
    assert s.GenerationRequest.from_panel(panel) == request(age=58, sex="female", impression="Right upper lobe mass.",
                                                            seed=42, quality="Preview", steps=4, guidance=3.5,
                                                            temperature=2.0, sr_steps=10, compute="Remote")
    assert s.GenerationRequest.from_panel(SimpleNamespace(**{**vars(panel), "seed": "random"})).seed is None
    with pytest.raises(ValueError, match="seed"):
        s.GenerationRequest.from_panel(SimpleNamespace(**{**vars(panel), "seed": "x"}))
    s.check_request(request())  # local: the server fields are not looked at
    s.check_request(request(compute="Remote"), "http://127.0.0.1:8000", "tok")
    with pytest.raises(ValueError, match="Enter the server URL") as raised:
        s.check_request(request(age=130, compute="Remote"), "", "")
    assert str(raised.value).splitlines()[0].startswith("Age must")  # one problem a line, request first
    s.check_server("https://gpu.example.org", "tok")
    with pytest.raises(ValueError, match="plain http"):
        s.check_server("http://gpu.example.org", "tok")


def test_model_status_line(tmp_path):
    (tmp_path / "metadata.json").write_text("{}")
    assert s.model_status("Custom folder", tmp_path, str(tmp_path)) == f"Model: {tmp_path}"
    assert s.model_status("Official", tmp_path) == "Model: official"
    assert "not a GenerateCT bundle" in s.model_status("Custom folder", tmp_path, str(tmp_path / "nowhere"))
    assert s.model_status("Custom folder", tmp_path, "", remote=True) == ""  # the server uses its own model


def test_slice_limits_follow_the_chosen_model(tmp_path):
    from GenerateCTLib.models import demo_bundle_dir
    from GenerateCTLib.pipeline import GenerateCTPipeline

    demo = demo_bundle_dir()
    maximum = GenerateCTPipeline.from_pretrained(demo, load_super_resolution=False).max_slices()
    assert s.model_slice_limits(str(demo)) == (33, maximum) == (33, 33)  # read from JSON, as the pipeline computes
    assert s.model_slice_limits("official") == (201, 201)
    assert s.model_slice_limits(str(tmp_path)) is None  # not a bundle
    assert s.panel_slice_limits("Custom folder", tmp_path, str(demo)) == (33, 33)
    assert s.panel_slice_limits("Custom folder", tmp_path, str(demo), remote=True) == (201, 201)  # the server decides
    assert s.panel_slice_limits("Custom folder", tmp_path, str(tmp_path / "nowhere")) == (201, 201)


def test_guidance_follows_the_chosen_model(tmp_path):
    from GenerateCTLib.models import demo_bundle_dir
    from GenerateCTLib.pipeline import GenerateCTPipeline

    demo = demo_bundle_dir()
    tuned = GenerateCTPipeline.from_pretrained(demo, load_super_resolution=False).default_cond_scale
    assert s.panel_guidance("Custom folder", tmp_path, str(demo)) == tuned == 3.0  # read from JSON, as the pipeline
    assert s.panel_guidance("Official", tmp_path) == s.GenerationRequest.guidance == 5.0  # released
    assert s.panel_guidance("Custom folder", tmp_path, str(demo), remote=True) == 5.0  # the panel cannot read it
    assert s.panel_guidance("Custom folder", tmp_path, str(tmp_path / "nowhere")) == 5.0


def test_progress_clock_counts_elapsed_and_eta_between_events():
    now = [100.0]
    clock = s.ProgressClock("Starting…", super_resolve=False, clock=lambda: now[0])
    now[0] = 105.0
    assert clock.display() == (None, "Starting… 5 s elapsed")
    assert clock.display("{task} / {elapsed}") == (None, "Starting… / 5 s")  # the panel's translated template
    clock.update(42)  # a download percentage
    assert clock.display() == (42, "Starting… 5 s elapsed")
    event = w.ProgressLine("sample_tokens", 9, 18, 600.0, 60.0)
    clock.update(event)
    now[0] = 135.0
    percent, text = clock.display()
    assert (percent, text) == (s.progress_display(event, super_resolve=False, since_event_s=30)[0],
                               "Sampling tokens 9/18 - about 9 min 30 s left (35 s elapsed)")


def test_provenance_summary_cpu_warning_and_server_info(tmp_path):
    sidecar = tmp_path / "ct.json"
    # the pipeline's provenance records the bundle as {"name", "version", "metadata_sha256"}
    bundle = {"name": "generatect-demo", "version": "0.2", "metadata_sha256": "ab12"}
    sidecar.write_text(json.dumps({"prompt": "65 years old male: Cardiomegaly.", "bundle": bundle}))
    assert s.provenance_summary(sidecar, "remote") == ("65 years old male: Cardiomegaly.", "generatect-demo 0.2")
    assert s.provenance_summary(None, "remote") == ("", "remote")
    sidecar.write_text("{}")
    assert s.provenance_summary(sidecar, "demo") == ("", "demo")
    assert s.cpu_warning(request(quality="Preview"), "official", cuda_available=False) is None
    assert s.cpu_warning(request(compute="Auto"), "official", cuda_available=True) is None
    assert s.cpu_warning(request(slices=201), "official", cuda_available=None) == s.format_duration(
        s.estimate_cpu_seconds(request(slices=201)))
    (tmp_path / "metadata.json").write_text(json.dumps({"cpu_seconds": {"maskgit_step_201_slices": 0.1,
                                                                        "sr_step_per_slice": 0.01}}))
    own = s.CpuCosts(maskgit_step_201_slices=0.1, sr_step_per_slice=0.01)  # the bundle's own costs are used
    assert s.estimate_cpu_seconds(request(), own) < s.CPU_WARNING_MIN_SECONDS
    assert s.cpu_warning(request(), tmp_path, cuda_available=False) is None  # a short run starts without asking
    slow = request(slices=201, sr_steps=100)
    assert s.estimate_cpu_seconds(slow, own) > s.CPU_WARNING_MIN_SECONDS
    assert s.cpu_warning(slow, tmp_path, cuda_available=False) == s.format_duration(s.estimate_cpu_seconds(slow, own))
    assert isinstance(s.cuda_available(), bool)
    text = s.server_info_text({"ready": True, "bundle": {"name": "tiny"}, "blob": "x" * 5000})
    assert text.startswith('{\n "ready": true') and len(text) == 1500


def test_cuda_available_without_torch(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch -> ImportError
    assert s.cuda_available() is False
