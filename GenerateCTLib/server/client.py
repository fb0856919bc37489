"""Client of ``generatect serve`` on ``requests`` only (usable inside Slicer without FastAPI or pydantic).

>>> client = GenerateCTClient("https://gpu-host:8000", token)                       # doctest: +SKIP
>>> job = client.submit(age=65, sex="male", impression="Bilateral pleural effusion.")  # doctest: +SKIP
>>> job = client.wait(job["id"], callback=print)                                    # doctest: +SKIP
>>> client.download_result(job["id"], "ct.nii.gz")                                  # doctest: +SKIP

Statuses are the JSON objects of the API (``JobStatus`` in ``/openapi.json``). Connection failures and
429 / 503 answers are retried with exponential backoff (honouring ``Retry-After``); ``POST /v1/jobs`` is
retried only when the connection could not be opened, so a job is never submitted twice.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import requests

from GenerateCTLib.progress import GenerationCancelled, ProgressEvent

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (429, 503)


class RemoteError(RuntimeError):
    """The server answered with an error (``status`` is the HTTP code, 0 if it could not be reached)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AuthenticationError(RemoteError):
    """401: missing or wrong token."""


class JobFailed(RemoteError):
    """The job ended ``failed`` (or ``cancelled`` by someone else); ``job`` is its last status."""

    def __init__(self, message: str, job: dict[str, Any]):
        super().__init__(message)
        self.job = job


def _retry_after_s(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _connection_not_opened(exc: requests.ConnectionError) -> bool:
    """True when the TCP/TLS connection was never established (the request cannot have arrived)."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    seen, pending = set(), [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, ConnectTimeoutError, requests.ConnectTimeout)):
            return True
        pending += [getattr(current, "reason", None), current.__cause__, current.__context__,
                    *(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))]
    return False


def _job_id(job_id: str | uuid.UUID) -> str:
    try:
        return str(uuid.UUID(str(job_id)))
    except ValueError as exc:
        raise ValueError(f"job_id {job_id!r} is not a job id (a UUID)") from exc


def status_event(status: dict[str, Any]) -> ProgressEvent:
    """A job status as the :class:`ProgressEvent` the local pipeline would have reported."""
    return ProgressEvent(
        stage=status.get("stage") or status["status"],
        step=status.get("step") or 0,
        total=status.get("total") or 1,
        eta_s=status.get("eta_s"),
        elapsed_s=status.get("elapsed_s") or 0.0,
    )


class GenerateCTClient:
    """Submit, poll, cancel and download jobs of a ``generatect serve`` server.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000`` (the ``/v1`` prefix is added).
        token: the server's bearer token (None for a loopback server started without one).
        verify: TLS verification: True, False, or the path of a CA bundle (self-signed servers).
        timeout: seconds to connect and to wait for each answer.
        retries: retries after a connection failure or a 429 / 503 answer.
        backoff_s, max_backoff_s: first retry delay, doubled each time (with jitter), and its cap; a
            ``Retry-After`` header replaces the computed delay (still capped).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        session: requests.Session | None = None,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout, self.retries = timeout, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.session = session or requests.Session()
        self.session.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # -- transport ---------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, stream: bool = False, **kwargs) -> requests.Response:
        url = f"{self.url}/v1/{path}"
        for attempt in range(self.retries + 1):
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.8, 1.2)
            try:
                response = self.session.request(method, url, timeout=self.timeout, stream=stream, **kwargs)
            except requests.ConnectionError as exc:
                # a POST whose connection was open may have been received: never send it twice
                if attempt == self.retries or (method == "POST" and not _connection_not_opened(exc)):
                    raise RemoteError(f"cannot reach {self.url}: {exc}") from exc
                log.info("cannot reach %s (%s); retrying in %.1f s", self.url, type(exc).__name__, delay)
            except requests.Timeout as exc:
                if attempt == self.retries or method == "POST":
                    raise RemoteError(f"{method} {url} timed out after {self.timeout} s") from exc
                log.info("%s %s timed out; retrying in %.1f s", method, url, delay)
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return self._check(response)
                retry_after = _retry_after_s(response)
                delay = min(self.max_backoff_s, retry_after) if retry_after is not None else delay
                log.info("%s answered %d; retrying in %.1f s", self.url, response.status_code, delay)
                response.close()
            time.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def _check(response: requests.Response) -> requests.Response:
        if response.ok:
            return response
        try:
            body = response.json()
            message = body.get("message") or body.get("detail") or response.text
        except ValueError:
            message = response.text[:500] or response.reason
        response.close()
        text = f"the server answered {response.status_code}: {message}"
        if response.status_code == 401:
            raise AuthenticationError(f"{text} (check --token-file / GENERATECT_TOKEN)", 401)
        raise RemoteError(text, response.status_code)

    # -- API -------------------------------------------------------------------------------------------

    def live(self) -> bool:
        """True if the server answers ``/v1/health/live``."""
        try:
            return self._request("GET", "health/live").ok
        except RemoteError:
            return False

    def ready(self) -> bool:
        """True once the server's model is loaded (no retries while it loads)."""
        try:
            return self.session.get(f"{self.url}/v1/health/ready", timeout=self.timeout).status_code == 200
        except requests.RequestException:
            return False

    def info(self) -> dict[str, Any]:
        """Bundle, device, versions, limits (``limits.max_slices``) and queue length."""
        return self._request("GET", "info").json()

    def submit(self, **request: Any) -> dict[str, Any]:
        """Queue a job: ``prompt`` or ``age``/``sex``/``impression``, plus ``seed``, ``num_slices``, ``steps``,
        ``cond_scale``, ``temperature``, ``super_resolve``, ``sr_steps``, ``attention``, ``format``
        (``nii.gz``/``nrrd``), ``dtype``. None values are left out (server defaults). Returns the job status
        (``id``, ``status``)."""
        body = {key: value for key, value in request.items() if value is not None}
        return self._request("POST", "jobs", json=body).json()

    def status(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        return self._request("GET", f"jobs/{_job_id(job_id)}").json()

    def cancel(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        """Cancel a queued or running job (a running one stops at its next step); for a finished job,
        delete its files on the server."""
        return self._request("DELETE", f"jobs/{_job_id(job_id)}").json()

    def wait(
        self,
        job_id: str | uuid.UUID,
        *,
        callback: Callable[[ProgressEvent], Any] | None = None,
        poll_interval_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job has finished; return its status if it succeeded.

        Args:
            callback: called with a :class:`ProgressEvent` whenever the status changes; returning False
                (or raising :class:`GenerationCancelled`) cancels the job on the server and raises
                :class:`GenerationCancelled` here, as the local pipeline does.
            poll_interval_s: seconds between polls.
            timeout_s: give up (without cancelling) after this many seconds (TimeoutError).

        Raises:
            JobFailed: the job failed or was cancelled.
        """
        job_id = _job_id(job_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            status = self.status(job_id)
            key = (status["status"], status.get("stage"), status.get("step"))
            if callback is not None and key != last and status["status"] != "queued":
                try:
                    keep_going = callback(status_event(status))
                except GenerationCancelled:
                    keep_going = False
                if keep_going is False:
                    self.cancel(job_id)
                    raise GenerationCancelled(f"job {job_id} cancelled")
            last = key
            if status["status"] == "succeeded":
                return status
            if status["status"] in FINISHED:
                raise JobFailed(f"job {job_id} {status['status']}: {status.get('error')}", status)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status['status']} after {timeout_s} s")
            time.sleep(poll_interval_s)

    def _download(self, path: str, target: Path, *, sha256: str | None = None) -> Path:
        """Stream ``path`` to ``target`` through a temporary file in the same folder, then rename."""
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle, self._request("GET", path, stream=True) as response:
                expected = sha256 or response.headers.get("X-Content-SHA256")
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
            if expected and digest.hexdigest() != expected:
                raise RemoteError(f"download of {path} is corrupt (sha256 {digest.hexdigest()} != {expected})")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def download_result(self, job_id: str | uuid.UUID, path: str | os.PathLike) -> Path:
        """Save the volume (its sha256 is checked) to ``path``; use the job's format as the extension."""
        return self._download(f"jobs/{_job_id(job_id)}/result", Path(path))

    def provenance(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        """The provenance JSON (prompt, seeds, settings, versions, timings, geometry)."""
        return self._request("GET", f"jobs/{_job_id(job_id)}/provenance").json()

    def download_attention(self, job_id: str | uuid.UUID, out_dir: str | os.PathLike) -> Path:
        """Unpack the attention maps (``index.json`` + NIfTI files) into ``out_dir``; return ``index.json``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".zip", dir=out_dir)
        os.close(fd)
        try:
            self._download(f"jobs/{_job_id(job_id)}/attention", Path(tmp))
            with zipfile.ZipFile(tmp) as archive:
                for member in archive.infolist():
                    name = PurePosixPath(member.filename)
                    # flat archive of plain names: refuse anything that could escape out_dir
                    unsafe = len(name.parts) != 1 or name.name in ("", ".", "..") or "\\" in member.filename
                    if member.is_dir() or unsafe:
                        raise RemoteError(f"attention archive has an unexpected entry {member.filename!r}")
                    with archive.open(member) as source:
                        data = source.read()
                    part = out_dir / f".{name.name}.part"
                    part.write_bytes(data)
                    os.replace(part, out_dir / name.name)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return out_dir / "index.json"
