"""Unit tests of GenerateCTLib.slicer_worker (the worker-process half of the Slicer module's helpers).

Remote generation against a real server is in test_slicer_remote.py.
"""

import json
import subprocess
import sys
import time

import pytest

from GenerateCTLib import slicer_worker as w
from GenerateCTLib.cli import build_parser
from GenerateCTLib.slicer_support import GenerationRequest


def request(**overrides):
    values = dict(age=65, sex="male", impression="Cardiomegaly.", seed=7, slices=9, quality="Full", compute="CPU")
    return GenerationRequest(**{**values, **overrides})


def test_progress_lines_are_parsed_and_junk_is_log_text():
    line = json.dumps({"event": "progress", "stage": "sample_tokens", "step": 3, "total": 18, "eta_s": 40.0,
                       "elapsed_s": 12.5})
    assert w.parse_progress_line(line) == w.ProgressLine("sample_tokens", 3, 18, 40.0, 12.5)
    done = w.parse_progress_line('{"event": "done", "volume": "/t/ct.nrrd", "provenance": "/t/ct.json", '
                                 '"attention": "/t/ct_attention", "seeds": {"sample_tokens": 7}}')
    assert done == w.DoneLine("/t/ct.nrrd", "/t/ct.json", "/t/ct_attention", {"sample_tokens": 7})
    for junk in ("", "loading bundle", "{not json", "[1, 2]", '{"event": "progress", "stage": 3}',
                 '{"event": "progress", "stage": "decode", "step": 1, "total": 0}', '{"event": "done"}',
                 '{"event": "progress", "stage": "decode", "step": NaN, "total": 2}', "\x00\xff"):
        assert w.parse_progress_line(junk) is None


def test_line_buffer_joins_chunks_and_splits_carriage_returns():
    buffer = w.LineBuffer()
    assert buffer.feed(b'{"event": "prog') == []
    assert buffer.feed('ress"}\nhalf') == ['{"event": "progress"}']
    assert buffer.feed("\r 10%|##   \r 20%|####\r\n") == ["half", " 10%|##   ", " 20%|####"]
    assert buffer.feed("tail") == [] and buffer.flush() == ["tail"]
    assert w.parse_tqdm_percent(" 20%|####  | 2/10") == 20 and w.parse_tqdm_percent("no bar") is None


def test_generate_command_is_accepted_by_the_cli_parser(tmp_path):
    command = w.build_generate_command("python", request(quality="Preview", guidance=4.5, temperature=1.5),
                                       "models/demo",
                                       tmp_path / "ct.nrrd")
    assert command[:4] == ["python", "-m", "GenerateCTLib.cli", "generate"]
    args = build_parser().parse_args(command[3:])
    assert (args.age, args.sex, args.slices, args.seed, args.cond_scale) == (65, "male", 9, 7, 4.5)
    assert args.temperature == 1.5
    assert args.no_sr and args.attention and args.progress == "json" and args.device == "cpu"
    assert "--seed" not in w.build_generate_command("python", request(seed=None), "m", "o.nrrd")
    with pytest.raises(ValueError, match="locally"):
        w.build_generate_command("python", request(compute="Remote"), "m", "o.nrrd")
    export = build_parser().parse_args(w.build_export_command("py", "ct.nrrd", "out", include_prompt=False)[3:])
    assert export.no_prompt and export.out == "out"
    download = build_parser().parse_args(w.build_download_command("py")[3:])
    assert download.command == "weights" and download.out is None
    push = build_parser().parse_args(w.build_push_command("py", "out", "https://pacs/dicom-web")[3:])
    assert push.dicomweb == "https://pacs/dicom-web"


def test_subprocess_environment(tmp_path):
    env = w.subprocess_environment({"PYTHONPATH": "/a", "X": "1"}, tmp_path, "CPU", extra_paths=["/deps"])
    assert env["PYTHONPATH"].split(":" if sys.platform != "win32" else ";") == [str(tmp_path), "/deps", "/a"]
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONUNBUFFERED"] == "1" and env["X"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in w.subprocess_environment({}, tmp_path, "Auto")


def test_missing_requirements_never_touch_slicer_packages():
    reqs = {"numpy": "numpy>=2", "SimpleITK": "SimpleITK", "requests": "requests", "einops": "einops>=0.7"}
    assert w.missing_requirements(lambda name: False, reqs) == ["einops>=0.7"]
    assert not any(r.split(">")[0] in w.PROTECTED_PACKAGES for r in w.LOCAL_REQUIREMENTS.values())
    assert "--no-deps" in w.build_private_install_command("py", "/t") and "--target" in w.build_private_install_command(
        "py", "/t")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
@pytest.mark.parametrize("use_psutil", [True, False])
def test_kill_process_tree_stops_children(monkeypatch, use_psutil):
    if not use_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError: the killpg fallback
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            " print(c.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              **w.popen_new_group_kwargs())
    child = int(parent.stdout.readline())
    w.kill_process_tree(parent.pid, timeout_s=2.0)
    parent.wait(timeout=5)
    deadline = time.monotonic() + 5
    while w._alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not w._alive(child)
    assert w.kill_process_tree(parent.pid) == [] or use_psutil is False


def test_remote_status_accepts_the_server_json():
    state, progress, error = w.remote_status({"status": "running", "stage": "decode", "step": 1, "total": 2,
                                              "eta_s": 5.0, "elapsed_s": 3.0})
    assert state == "running" and progress == w.ProgressLine("decode", 1, 2, 5.0, 3.0) and error is None
    assert w.remote_status({"status": "failed", "error": "CUDA out of memory"}) == (
        "failed", None, "CUDA out of memory")



def test_worker_run_dispatches_progress_log_text_and_tqdm_percentages():
    logged, progress = [], []
    run = w.WorkerRun(logged.append, progress.append)
    assert run.done is None and run.cancelled is False
    run.feed(b'loading bundle\n{"event": "progress", "stage": "decode", "step": 1, "total": 2, "elapsed_s": 3.0}\n')
    run.feed(" 40%|####      | 4/10\r")
    run.feed('{"event": "done", "volume": "/t/ct.nrrd", "provenance": null, "attention": "/t/a", "seeds": {}}')
    assert logged == ["loading bundle", " 40%|####      | 4/10"]
    assert progress == [w.ProgressLine("decode", 1, 2, None, 3.0), 40]
    assert run.done is None  # the last line is not complete yet
    run.flush()
    assert run.done == w.DoneLine("/t/ct.nrrd", None, "/t/a", {}) and len(logged) == 2  # not logged


def test_dicom_commands_install_once_export_then_push(tmp_path):
    deps, series = tmp_path / "deps", tmp_path / "dicom" / "series"
    steps = w.build_dicom_commands("py", "ct.nrrd", series, deps, include_prompt=False)
    assert steps == [w.build_private_install_command("py", deps),
                     w.build_export_command("py", "ct.nrrd", series, include_prompt=False)]
    export = build_parser().parse_args(steps[1][3:])
    assert export.no_prompt and export.out == str(series)
    (deps / "pydicom").mkdir(parents=True)  # installed: the install step is left out
    steps = w.build_dicom_commands("py", "ct.nrrd", series, deps, pacs_url="https://pacs/dicom-web")
    assert [step[3] for step in steps] == ["export-dicom", "push"] and "--no-prompt" not in steps[0]
    assert build_parser().parse_args(steps[1][3:]).dicomweb == "https://pacs/dicom-web"


def test_missing_requirements_looks_modules_up_by_default():
    assert w.missing_requirements(requirements={"json": "json", "no_such_module_xyz": "no-such>=1"}) == ["no-such>=1"]
    assert w.is_importable("json") and not w.is_importable("no_such_module_xyz")
    assert w.worker_python()  # PythonSlicer inside Slicer, else this interpreter
