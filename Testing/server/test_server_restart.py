"""Crash safety: SIGKILL mid-job leaves no result that a restarted server would serve; refusal to bind."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import requests

from GenerateCTLib.server.client import GenerateCTClient
from Testing.server.serving import FAST_JOB, LAUNCHER, ROOT, SLOW_JOB, ServerProcess, server_env


def _jobs(work_dir):
    return sorted(p.name for p in (work_dir / "jobs").iterdir())


def test_sigkill_mid_job_then_restart_serves_new_jobs(tiny_bundle, token_file, tmp_path):
    path, token = token_file
    work = tmp_path / "work"
    first = ServerProcess(tiny_bundle, work, path, token, "--queue-size", "1").wait_ready()
    try:
        client = GenerateCTClient(first.url, token, timeout=10)
        kept = client.wait(client.submit(**FAST_JOB, seed=1)["id"], poll_interval_s=0.05)
        running = client.submit(**SLOW_JOB)["id"]
        deadline = time.monotonic() + 20
        while client.status(running)["stage"] != "super_resolve" and time.monotonic() < deadline:
            time.sleep(0.05)
        queued = client.submit(**FAST_JOB)["id"]
        first.kill()  # SIGKILL: no shutdown code runs
    finally:
        first.stop()
    assert first.process.returncode == -9
    assert _jobs(work) == [kept["id"]]  # no folder for the killed or the queued job

    # debris a kill during the result write could leave: a temp folder, a folder without job.json, a
    # folder whose volume is shorter than its record says
    debris = [f".tmp-{uuid.uuid4()}", str(uuid.uuid4()), str(uuid.uuid4())]
    (work / "jobs" / debris[0]).mkdir()
    (work / "jobs" / debris[0] / "volume.nii.gz").write_bytes(b"\x1f\x8b partial")
    (work / "jobs" / debris[1]).mkdir()
    (work / "jobs" / debris[1] / "volume.nii.gz").write_bytes(b"\x1f\x8b partial")
    truncated = work / "jobs" / debris[2]
    subprocess.run(["cp", "-r", str(work / "jobs" / kept["id"]), str(truncated)], check=True)
    (truncated / "job.json").write_text((truncated / "job.json").read_text().replace(kept["id"], debris[2]))
    with open(truncated / "volume.nii.gz", "r+b") as handle:
        handle.truncate(100)

    second = ServerProcess(tiny_bundle, work, path, token, "--queue-size", "1", "--job-timeout", "2").wait_ready()
    try:
        client = GenerateCTClient(second.url, token, timeout=10)
        assert _jobs(work) == [kept["id"]]  # debris removed at start
        for lost in (running, queued, debris[2]):
            assert requests.get(f"{second.url}/v1/jobs/{lost}", headers=second.headers, timeout=5).status_code == 404
        # the complete result of before the kill is still served, byte for byte
        assert client.status(kept["id"])["result"]["sha256"] == kept["result"]["sha256"]
        client.download_result(kept["id"], tmp_path / "kept.nii.gz")
        # and new jobs run: a short one succeeds, a long one hits --job-timeout 2
        new = client.wait(client.submit(**FAST_JOB, seed=2)["id"], poll_interval_s=0.05)
        assert new["status"] == "succeeded" and (work / "jobs" / new["id"] / "job.json").is_file()
        slow = client.submit(**SLOW_JOB)["id"]
        deadline = time.monotonic() + 20
        while client.status(slow)["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
        status = client.status(slow)
        assert status["status"] == "failed" and "timed out after 2 s" in status["error"]
        assert not (work / "jobs" / slow).exists()
    finally:
        second.stop()


def test_refuses_a_non_loopback_host_without_a_token(tiny_bundle, tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "serve", "--model", str(tiny_bundle), "--host", "0.0.0.0",
         "--work-dir", str(tmp_path / "work")],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.stderr
    assert not (tmp_path / "work").exists() and time.monotonic() - start < 30


def test_security_rules():
    from GenerateCTLib.server.security import check_bind, is_loopback, load_token, token_matches

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org", ""))
    check_bind("0.0.0.0", "t" * 16)  # with a token: allowed
    assert token_matches("Bearer " + "t" * 16, "t" * 16) and token_matches("bearer " + "t" * 16, "t" * 16)
    assert not token_matches("Basic " + "t" * 16, "t" * 16) and not token_matches(None, "t" * 16)
    assert load_token(None, environ={"GENERATECT_TOKEN": " " + "e" * 20 + "\n"}) == "e" * 20
    assert load_token(None, environ={}) is None
    try:
        load_token(None, environ={"GENERATECT_TOKEN": "short"})
    except ValueError as exc:
        assert "at least 16" in str(exc)
    else:
        raise AssertionError("a short token was accepted")
