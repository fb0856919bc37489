"""slicer_worker.RemoteGeneration (what the Slicer panel polls) against a real ``generatect serve`` on loopback
with the tiny bundle: the same pattern as ``Testing/server`` (its ServerProcess helper, one server per module)."""

import json
import secrets
import time

import pytest
import requests

from GenerateCTLib import slicer_support as s
from GenerateCTLib import slicer_worker as w
from GenerateCTLib.io import read_volume
from GenerateCTLib.server.client import AuthenticationError
from Testing.server.serving import ServerProcess, free_port

FAST = dict(age=50, sex="female", impression="cardiomegaly, small pleural effusion.", slices=5, steps=2,
            sr_steps=2, seed=3, compute="Remote")
SLOW = dict(FAST, slices=9, steps=100, sr_steps=1000)  # minutes on the tiny bundle: still running when cancelled


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from Testing.tiny_models import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("remote-bundle") / "tiny")
    token = secrets.token_urlsafe(32)
    token_file = tmp_path_factory.mktemp("remote-token") / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    proc = ServerProcess(bundle, tmp_path_factory.mktemp("remote-server") / "work", token_file, token,
                         "--queue-size", "2", "--job-timeout", "120")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def poll_until_finished(generation, timeout_s=60.0):
    polls = [generation.poll()]
    deadline = time.monotonic() + timeout_s
    while not polls[-1].finished and time.monotonic() < deadline:
        time.sleep(0.05)
        polls.append(generation.poll())
    assert polls[-1].finished, f"job {generation.job_id} still {polls[-1].state} after {timeout_s} s"
    return polls


def server_status(server, job_id):
    return requests.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=5).json()


def test_remote_generation_downloads_the_files_of_a_local_run(server, tmp_path):
    generation = w.RemoteGeneration(s.GenerationRequest(**FAST), server.url, server.token, tmp_path / "out")
    polls = poll_until_finished(generation)
    result = polls[-1]
    assert result.state == "succeeded" and result.error is None and result.done is not None
    assert all(p.progress is None or p.progress.stage in s.STAGES for p in polls)
    assert any(p.progress is not None for p in polls)

    done = result.done
    assert done.volume == str(tmp_path / "out" / "ct.nrrd") and done.provenance == str(tmp_path / "out" / "ct.json")
    volume, _ = read_volume(done.volume)
    assert volume.shape == (5, 128, 128)
    provenance = json.loads((tmp_path / "out" / "ct.json").read_text())
    assert provenance["server"]["job_id"] == generation.job_id
    assert done.seeds == provenance["seeds"] and done.seeds["sample_tokens"] == 3  # recorded on the node
    prompt, _model = s.provenance_summary(done.provenance, "remote")
    assert prompt == "50 years old female: cardiomegaly, small pleural effusion."
    labels = [label for label, _path in s.attention_entries(done.attention)]
    assert "word: cardiomegaly" in labels
    assert generation.poll() is result and generation.cancel() is result  # finished: the server is not asked


def test_cancel_by_the_panel_or_on_the_server_ends_the_job(server, tmp_path):
    mine = w.RemoteGeneration(s.GenerationRequest(**SLOW), server.url, server.token, tmp_path / "mine")
    assert mine.poll().state in ("queued", "running") and not mine.poll().finished
    assert mine.cancel() == w.RemotePoll("cancelled")
    assert mine.poll() == w.RemotePoll("cancelled")
    deadline = time.monotonic() + 20
    while server_status(server, mine.job_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_status(server, mine.job_id)["status"] == "cancelled"

    theirs = w.RemoteGeneration(s.GenerationRequest(**SLOW), server.url, server.token, tmp_path / "theirs")
    requests.delete(f"{server.url}/v1/jobs/{theirs.job_id}", headers=server.headers, timeout=5)
    result = poll_until_finished(theirs, timeout_s=20)[-1]
    assert result.state == "cancelled" and result.done is None and "cancelled" in result.error


def test_network_and_server_errors_become_results(server, tmp_path):
    with pytest.raises(AuthenticationError):  # submitting fails loudly: nothing has started
        w.RemoteGeneration(s.GenerationRequest(**FAST), server.url, "wrong-token", tmp_path)
    polled, cancelled = (w.RemoteGeneration(s.GenerationRequest(**SLOW), server.url, server.token, tmp_path)
                         for _ in range(2))
    try:
        polled.client.url = cancelled.client.url = f"http://127.0.0.1:{free_port()}"  # the server has gone away
        result = polled.poll()
        assert result.state == "error" and result.finished and "cannot reach" in result.error
        assert polled.poll() is result and polled.cancel() is result
        result = cancelled.cancel()
        assert result.state == "error" and "could not be told to cancel" in result.error
        assert "cannot reach" in result.error and cancelled.poll() is result
    finally:
        for job_id in (polled.job_id, cancelled.job_id):
            requests.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=5)

    gone = w.RemoteGeneration(s.GenerationRequest(**SLOW), server.url, server.token, tmp_path)
    requests.delete(f"{server.url}/v1/jobs/{gone.job_id}", headers=server.headers, timeout=5)  # cancel it,
    deadline = time.monotonic() + 20
    while server_status(server, gone.job_id).get("status") == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    requests.delete(f"{server.url}/v1/jobs/{gone.job_id}", headers=server.headers, timeout=5)  # then delete it
    result = gone.poll()
    assert result.state == "error" and "404" in result.error and gone.poll() is result
