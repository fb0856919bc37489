"""The job API through a real uvicorn server (subprocess, loopback, random port) and a tiny bundle."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time
import uuid

import numpy as np
import pytest
import requests

from GenerateCTLib.io import read_volume
from GenerateCTLib.server.client import GenerateCTClient, RemoteError
from Testing.server.serving import FAST_JOB, SLOW_JOB


def client_for(server, **kwargs) -> GenerateCTClient:
    return GenerateCTClient(server.url, server.token, timeout=10, **kwargs)


def wait_for(server, job_id, predicate, timeout_s=20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=5).json()
        if predicate(status):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the expected state; last: {status}")


def cancel_all(server, job_ids) -> None:
    for job_id in job_ids:
        requests.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=5)
    for job_id in job_ids:
        wait_for(server, job_id, lambda s: s["status"] != "running")


def test_job_lifecycle_through_the_client(server, tmp_path):
    client = client_for(server)
    assert client.live() and client.ready()
    info = client.info()
    assert info["ready"] and info["limits"]["max_slices"] == 31 and info["bundle"]["name"] == "tiny-random"
    events = []
    job = client.submit(**FAST_JOB, seed=3, attention=True, format="nrrd")
    assert job["status"] in ("queued", "running") and uuid.UUID(job["id"])
    done = client.wait(job["id"], callback=events.append, poll_interval_s=0.05)

    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    assert done["result"]["shape"] == [5, 128, 128] and done["result"]["attention"] is True
    assert events and {e.stage for e in events} <= {"encode_prompt", "sample_tokens", "decode", "super_resolve",
                                                    "succeeded"}
    volume_path = client.download_result(job["id"], tmp_path / "ct.nrrd")
    volume, geometry = read_volume(volume_path)
    assert volume.shape == (5, 128, 128) and volume.dtype == np.int16
    assert -1000 <= volume.min() <= volume.max() <= 1000
    np.testing.assert_allclose(geometry.spacing_mm, (1.5, 3.0, 3.0))  # nominal: 384 mm FOV / 128 px
    assert volume_path.read_bytes()[:4] == b"NRRD" and b"encoding: gzip" in volume_path.read_bytes()[:2000]
    provenance = client.provenance(job["id"])
    assert provenance["prompt"] == "50 years old female: cardiomegaly, small pleural effusion."
    assert provenance["seeds"]["sample_tokens"] == 3 and provenance["server"]["job_id"] == job["id"]
    index = json.loads(client.download_attention(job["id"], tmp_path / "attention").read_text())
    assert {m["label"] for m in index["maps"]} >= {"word: cardiomegaly", "phrase: small pleural effusion"}
    heatmap, _ = read_volume(tmp_path / "attention" / index["maps"][0]["file"])
    assert heatmap.shape == (5, 128, 128) and 0 <= heatmap.min() <= heatmap.max() <= 1

    # DELETE on a finished job frees its files; it is then gone
    assert client.cancel(job["id"])["status"] == "succeeded"
    assert not (server.work_dir / "jobs" / job["id"]).exists()
    with pytest.raises(RemoteError, match="404"):
        client.status(job["id"])


def test_three_concurrent_clients_all_get_their_results(server, tmp_path):
    """Queue of 2 + the running job: a burst of 3 fits or is retried after 429 + Retry-After."""

    def run(seed):
        client = client_for(server, backoff_s=0.2)
        job = client.submit(**FAST_JOB, seed=seed)
        client.wait(job["id"], poll_interval_s=0.1, timeout_s=60)
        return read_volume(client.download_result(job["id"], tmp_path / f"ct{seed}.nii.gz"))[0]

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        volumes = list(pool.map(run, (11, 12, 13)))
    print(f"3 concurrent clients: {time.monotonic() - start:.1f} s")
    assert all(v.shape == (5, 128, 128) for v in volumes)
    assert not np.array_equal(volumes[0], volumes[1]) and not np.array_equal(volumes[1], volumes[2])


def test_cancel_stops_a_running_job_at_its_next_step(server):
    job_id = requests.post(f"{server.url}/v1/jobs", json=SLOW_JOB, headers=server.headers, timeout=5).json()["id"]
    wait_for(server, job_id, lambda s: s["status"] == "running" and s["stage"] == "sample_tokens")
    start = time.monotonic()
    answer = requests.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=5)
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
    status = wait_for(server, job_id, lambda s: s["status"] != "running", timeout_s=10)
    print(f"cancel took {time.monotonic() - start:.2f} s")
    assert status["status"] == "cancelled" and status["result"] is None
    assert requests.get(f"{server.url}/v1/jobs/{job_id}/result", headers=server.headers, timeout=5).status_code == 409
    assert not list((server.work_dir / "jobs").glob(f"*{job_id}*"))


def test_full_queue_answers_429_with_retry_after(server):
    post = lambda: requests.post(f"{server.url}/v1/jobs", json=SLOW_JOB, headers=server.headers, timeout=5)  # noqa: E731
    running = post().json()["id"]
    wait_for(server, running, lambda s: s["status"] == "running")
    queued = [post().json()["id"] for _ in range(2)]
    try:
        full = post()
        assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
        assert "queue is full" in full.json()["detail"]
        status = requests.get(f"{server.url}/v1/jobs/{queued[1]}", headers=server.headers, timeout=5).json()
        assert status["status"] == "queued" and status["queue_position"] == 1
    finally:
        cancel_all(server, [*queued, running])
    assert requests.get(f"{server.url}/v1/jobs/{queued[0]}", headers=server.headers, timeout=5).json()["status"] \
        == "cancelled"


def test_every_protected_route_needs_the_token(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=5).json()  # the API description is public
    job_id = str(uuid.uuid4())
    routes = [(method.upper(), path.replace("{job_id}", job_id))
              for path, methods in schema["paths"].items() for method in methods]
    routes.append(("GET", "/v1/not-a-route"))
    protected = [(m, p) for m, p in routes if p != "/v1/health/live"]
    assert len(protected) == 9
    wrong = [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {server.token}"},
             {"Authorization": f"Bearer {server.token}x"}, {"Authorization": server.token}]
    for method, path in protected:
        for headers in wrong:
            answer = requests.request(method, server.url + path, headers=headers, json=FAST_JOB, timeout=5)
            assert answer.status_code == 401, (method, path, headers, answer.status_code)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{server.url}/v1/health/live", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v1/info", headers=server.headers, timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"age": 121, "sex": "male", "impression": "x"}, "age: Input should be less than or equal to 120"),
        ({"age": 50, "sex": "other", "impression": "x"}, "sex: Input should be 'male' or 'female'"),
        ({"age": 50, "sex": "male", "impression": "x" * 1001}, "impression: String should have at most 1000"),
        ({"age": 50, "sex": "male"}, "give prompt, or all of age, sex and impression (missing: impression)"),
        ({"prompt": "50 years old male: x", "age": 50}, "give either prompt, or age, sex and impression, not both"),
        ({"prompt": "x", "num_slices": 4}, "num_slices: must be odd"),
        ({"prompt": "x", "num_slices": 33}, "num_slices: 33 exceeds what the model allows (at most 31)"),
        ({"prompt": "x", "steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"prompt": "x", "sr_steps": 1001}, "sr_steps: Input should be less than or equal to 1000"),
        ({"prompt": "x", "cond_scale": 21}, "cond_scale: Input should be less than or equal to 20"),
        ({"prompt": "x", "temperature": -0.5}, "temperature: Input should be greater than or equal to 0"),
        ({"prompt": "x", "format": "dicom"}, "format: Input should be 'nii.gz' or 'nrrd'"),
        ({"prompt": "   "}, "prompt: must contain text, not only whitespace"),
        ({"prompt": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"prompt": "x", "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ],
)
def test_bad_payloads_get_422_with_a_readable_message(server, payload, message):
    answer = requests.post(f"{server.url}/v1/jobs", json=payload, headers=server.headers, timeout=5)
    assert answer.status_code == 422
    assert message in answer.json()["message"], answer.json()
    assert answer.json()["detail"][0]["loc"][0] == "body"


def test_malformed_oversized_and_bad_ids(server):
    post = lambda **kw: requests.post(f"{server.url}/v1/jobs", timeout=5, **kw)  # noqa: E731
    bad_json = post(data=b'{"prompt": ', headers={**server.headers, "Content-Type": "application/json"})
    assert bad_json.status_code == 422 and "JSON decode error" in bad_json.json()["message"]
    assert post(json={"prompt": "x" * 70_000}, headers=server.headers).status_code == 413
    chunked = (b"x" * 16_384 for _ in range(5))  # no Content-Length: counted while streaming
    assert post(data=chunked, headers={**server.headers, "Content-Type": "application/json"}).status_code == 413
    bad_id = requests.get(f"{server.url}/v1/jobs/..%2F..%2Fetc", headers=server.headers, timeout=5)
    assert bad_id.status_code in (404, 422)
    answer = requests.get(f"{server.url}/v1/jobs/not-a-uuid/result", headers=server.headers, timeout=5)
    assert answer.status_code == 422
    assert answer.json()["message"].startswith("path.job_id: Input should be a valid UUID")
    missing = requests.get(f"{server.url}/v1/jobs/{uuid.uuid4()}", headers=server.headers, timeout=5)
    assert missing.status_code == 404


def test_client_retries_with_backoff_then_gives_up_on_a_closed_port():
    from Testing.server.serving import free_port

    client = GenerateCTClient(f"http://127.0.0.1:{free_port()}", "t" * 20, retries=3, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="cannot reach"):
        client.status(uuid.uuid4())
    assert 0.05 * (1 + 2 + 4) * 0.8 <= time.monotonic() - start < 5


def test_remote_generate_writes_the_same_files_as_local_generate(server, tmp_path, capsys, monkeypatch):
    from GenerateCTLib.server.cli import run_remote_generate

    token_file = tmp_path / "token"
    token_file.write_text(server.token)
    out = tmp_path / "remote.nii.gz"
    args = argparse.Namespace(
        remote=server.url, token_file=str(token_file), prompt=None, age=40, sex="male", impression="emphysema.",
        slices=3, seed=5, steps=2, cond_scale=5.0, temperature=1.5, no_sr=True, sr_steps=25, sr_batch_size=None,
        device="auto", out=str(out), format=None, dtype="float32", attention=True, preview=None, progress="json",
        overwrite=False, no_prompt=False, multiframe=False, model=None,
    )
    assert run_remote_generate(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "submitted" and lines[-1]["event"] == "done"
    assert any(line["event"] == "progress" for line in lines)
    volume, _ = read_volume(out)
    assert volume.shape == (3, 32, 32) and volume.dtype == np.float32
    provenance = json.loads((tmp_path / "remote.json").read_text())
    assert provenance["seeds"]["sample_tokens"] == 5 and provenance["temperature"] == 1.5
    assert (tmp_path / "remote_attention" / "index.json").is_file()
