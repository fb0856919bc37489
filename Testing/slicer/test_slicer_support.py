"""Unit tests of GenerateCTLib.slicer_support (the Slicer-free half of the Slicer module)."""

import json
import subprocess
import sys
import time

import pytest

from GenerateCTLib import slicer_support as s
from GenerateCTLib.cli import build_parser
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


def test_progress_lines_are_parsed_and_junk_is_log_text():
    line = json.dumps({"event": "progress", "stage": "sample_tokens", "step": 3, "total": 18, "eta_s": 40.0,
                       "elapsed_s": 12.5})
    assert s.parse_progress_line(line) == s.ProgressLine("sample_tokens", 3, 18, 40.0, 12.5)
    done = s.parse_progress_line('{"event": "done", "volume": "/t/ct.nrrd", "provenance": "/t/ct.json", '
                                 '"attention": "/t/ct_attention", "seeds": {"sample_tokens": 7}}')
    assert done == s.DoneLine("/t/ct.nrrd", "/t/ct.json", "/t/ct_attention", {"sample_tokens": 7})
    for junk in ("", "loading bundle", "{not json", "[1, 2]", '{"event": "progress", "stage": 3}',
                 '{"event": "progress", "stage": "decode", "step": 1, "total": 0}', '{"event": "done"}',
                 '{"event": "progress", "stage": "decode", "step": NaN, "total": 2}', "\x00\xff"):
        assert s.parse_progress_line(junk) is None


def test_line_buffer_joins_chunks_and_splits_carriage_returns():
    buffer = s.LineBuffer()
    assert buffer.feed(b'{"event": "prog') == []
    assert buffer.feed('ress"}\nhalf') == ['{"event": "progress"}']
    assert buffer.feed("\r 10%|##   \r 20%|####\r\n") == ["half", " 10%|##   ", " 20%|####"]
    assert buffer.feed("tail") == [] and buffer.flush() == ["tail"]
    assert s.parse_tqdm_percent(" 20%|####  | 2/10") == 20 and s.parse_tqdm_percent("no bar") is None


def test_progress_display_counts_down_between_lines():
    event = s.ProgressLine("sample_tokens", 9, 18, 600.0, 60.0)
    percent, text = s.progress_display(event, super_resolve=True)
    assert 15 < percent < 30 and text == "Sampling tokens 9/18 - about 10 min 00 s left"
    assert s.progress_display(event, since_event_s=30)[1].endswith("about 9 min 30 s left")
    assert s.progress_display(event, super_resolve=False)[0] > percent  # no SR: the base stages fill the bar
    assert s.progress_display(s.ProgressLine("super_resolve", 25, 25, 0.0, 1.0))[0] == 100
    assert s.format_duration(None) == "estimating…" and s.format_duration(7300) == "2 h 01 min"


def test_request_validation_messages():
    assert s.validate_request(request()) == []
    problems = s.validate_request(request(age=130, sex="x", impression=" ", slices=10, steps=0, guidance=99.0,
                                          compute="TPU"))
    text = " ".join(problems)
    for part in ("Age must", "Sex must", "Write an impression", "odd number", "Steps must", "Guidance must",
                 "Compute must"):
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


def test_generate_command_is_accepted_by_the_cli_parser(tmp_path):
    command = s.build_generate_command("python", request(quality="Preview", guidance=4.5), "models/demo",
                                       tmp_path / "ct.nrrd")
    assert command[:4] == ["python", "-m", "GenerateCTLib.cli", "generate"]
    args = build_parser().parse_args(command[3:])
    assert (args.age, args.sex, args.slices, args.seed, args.cond_scale) == (65, "male", 9, 7, 4.5)
    assert args.no_sr and args.attention and args.progress == "json" and args.device == "cpu"
    assert "--seed" not in s.build_generate_command("python", request(seed=None), "m", "o.nrrd")
    with pytest.raises(ValueError, match="locally"):
        s.build_generate_command("python", request(compute="Remote"), "m", "o.nrrd")
    export = build_parser().parse_args(s.build_export_command("py", "ct.nrrd", "out", include_prompt=False)[3:])
    assert export.no_prompt and export.out == "out"
    download = build_parser().parse_args(s.build_download_command("py")[3:])
    assert download.command == "weights" and download.out is None
    push = build_parser().parse_args(s.build_push_command("py", "out", "https://pacs/dicom-web")[3:])
    assert push.dicomweb == "https://pacs/dicom-web"


def test_subprocess_environment(tmp_path):
    env = s.subprocess_environment({"PYTHONPATH": "/a", "X": "1"}, tmp_path, "CPU", extra_paths=["/deps"])
    assert env["PYTHONPATH"].split(":" if sys.platform != "win32" else ";") == [str(tmp_path), "/deps", "/a"]
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONUNBUFFERED"] == "1" and env["X"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in s.subprocess_environment({}, tmp_path, "Auto")


def test_missing_requirements_never_touch_slicer_packages():
    reqs = {"numpy": "numpy>=2", "SimpleITK": "SimpleITK", "requests": "requests", "einops": "einops>=0.7"}
    assert s.missing_requirements(lambda name: False, reqs) == ["einops>=0.7"]
    assert not any(r.split(">")[0] in s.PROTECTED_PACKAGES for r in s.LOCAL_REQUIREMENTS.values())
    assert "--no-deps" in s.build_private_install_command("py", "/t") and "--target" in s.build_private_install_command(
        "py", "/t")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
@pytest.mark.parametrize("use_psutil", [True, False])
def test_kill_process_tree_stops_children(monkeypatch, use_psutil):
    if not use_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError: the killpg fallback
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            " print(c.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              **s.popen_new_group_kwargs())
    child = int(parent.stdout.readline())
    s.kill_process_tree(parent.pid, timeout_s=2.0)
    parent.wait(timeout=5)
    deadline = time.monotonic() + 5
    while s._alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not s._alive(child)
    assert s.kill_process_tree(parent.pid) == [] or use_psutil is False


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
    (tmp_path / "00_phrase_a.nii.gz").write_bytes(b"x")
    (tmp_path / "index.json").write_text(json.dumps({"maps": [
        {"label": "phrase: a", "file": "00_phrase_a.nii.gz"}, {"label": "gone", "file": "01_missing.nii.gz"},
        {"label": "escape", "file": "../index.json"}]}))
    assert s.attention_entries(tmp_path) == [("phrase: a", tmp_path / "00_phrase_a.nii.gz")]
    assert s.attention_entries(tmp_path / "nowhere") == []


def test_remote_status_accepts_the_server_json():
    state, progress, error = s.remote_status({"status": "running", "stage": "decode", "step": 1, "total": 2,
                                              "eta_s": 5.0, "elapsed_s": 3.0})
    assert state == "running" and progress == s.ProgressLine("decode", 1, 2, 5.0, 3.0) and error is None
    assert s.remote_status({"status": "failed", "error": "CUDA out of memory"}) == (
        "failed", None, "CUDA out of memory")
