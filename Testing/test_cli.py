import json
import subprocess
import sys

import numpy as np
import pytest

from GenerateCTLib.cli import main
from GenerateCTLib.io import read_volume
from Testing.tiny_models import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "tiny")


def test_generate_end_to_end_with_json_progress(bundle, tmp_path, capsys):
    out = tmp_path / "ct.nrrd"
    argv = ["generate", "--model", str(bundle), "--age", "70", "--sex", "male", "--impression", "Emphysema.",
            "--slices", "9", "--steps", "3", "--no-sr", "--seed", "4", "--device", "cpu", "--out", str(out),
            "--progress", "json"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["seeds"]["sample_tokens"] == 4
    progress = [e for e in lines if e["event"] == "progress"]
    assert {e["stage"] for e in progress} == {"encode_prompt", "sample_tokens", "decode"}
    volume, geometry = read_volume(out)
    assert volume.shape == (9, 32, 32) and volume.dtype == np.int16
    provenance = json.loads((tmp_path / "ct.json").read_text())
    assert provenance["prompt"] == "70 years old male: Emphysema." and provenance["seeds"]["sample_tokens"] == 4
    assert geometry.spacing_mm == pytest.approx(provenance["geometry"]["spacing_mm"])
    # existing outputs are kept unless --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_generate_with_super_resolution_attention_and_preview(bundle, tmp_path):
    out = tmp_path / "ct.nii.gz"
    argv = ["generate", "--model", str(bundle), "--prompt", "45 years old female: Left pleural effusion.",
            "--slices", "3", "--steps", "2", "--sr-steps", "2", "--seed", "1", "--device", "cpu",
            "--out", str(out), "--attention", "--preview", str(tmp_path / "ct.png"), "--progress", "none"]
    assert main(argv) == 0
    volume, _ = read_volume(out)
    assert volume.shape == (3, 128, 128)
    index = json.loads((tmp_path / "ct_attention" / "index.json").read_text())
    assert any("effusion" in str(entry) for entry in index.values() if isinstance(entry, (list, dict)))
    assert (tmp_path / "ct.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--age", "-1"], "age"),
        (["--sex", "x"], "sex"),
        (["--impression", ""], "impression"),
        (["--slices", "8"], "num_slices"),
        (["--steps", "0"], "steps"),
        (["--device", "tpu"], "--device"),
        (["--model", "no/such/folder"], "--model"),
        (["--out", "ct.png"], "--out"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(bundle, tmp_path, capsys, extra, message):
    base = {"--model": str(bundle), "--age": "50", "--sex": "female", "--impression": "Nodule.",
            "--slices": "9", "--steps": "2", "--device": "cpu", "--out": str(tmp_path / "ct.nii.gz")}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value
    argv = ["generate", "--no-sr", "--progress", "none", *[x for kv in base.items() for x in kv]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("generatect: error:") and message in err
    assert not any(tmp_path.iterdir())


def test_every_command_has_help_with_examples():
    commands = (["generate"], ["weights", "convert"], ["weights", "download"], ["info"], ["export-dicom"], ["push"],
                ["train", "tokenizer"], ["train", "transformer"], ["train", "superres"])
    for command in commands:
        out = subprocess.run([sys.executable, "-m", "GenerateCTLib.cli", *command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "examples:" in out


def test_interrupting_a_generation_leaves_no_files(bundle, tmp_path):
    import os
    import signal

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "GenerateCTLib.cli", "generate", "--model", str(bundle), "--prompt",
           "50 years old male: Nodule.", "--slices", "9", "--steps", "100000", "--device", "cpu", "--no-sr",
           "--out", str(out / "ct.nii.gz"), "--preview", str(out / "ct.png"), "--progress", "json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    # 100000 steps: the run cannot finish on its own before the signal arrives, however loaded the machine is
    # a shell without job control starts background jobs with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: give the child the default disposition so it raises KeyboardInterrupt as under a terminal
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("stage") == "sample_tokens" and event["step"] >= 2:
                proc.send_signal(signal.SIGINT)
                break
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert not out.exists() or not any(out.iterdir())
