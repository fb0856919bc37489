"""The job queue: one worker thread owns the pipeline and runs jobs one at a time.

Life of a job: ``queued`` (in a bounded FIFO; a full queue raises :class:`QueueFull`, which the app turns
into 429 + ``Retry-After``) → ``running`` (progress from the pipeline callback) → ``succeeded`` /
``failed`` / ``cancelled``. Cancelling a running job sets a flag that the progress callback reads, so the
pipeline stops at its next step; the per-job timeout is checked there too (cooperative: a single step
that never returns is not interrupted).

Results on disk (``<work_dir>/jobs/``):

* a job writes into ``.tmp-<uuid>/`` (volume, ``provenance.json``, ``attention.zip``, then ``job.json``
  last), fsyncs the files and renames the folder to ``<uuid>/``. A folder named by a UUID with a
  consistent ``job.json`` is therefore complete; anything else is debris of a killed run and is deleted
  when the next server starts (:meth:`JobManager.recover`), which also re-registers the complete results.
* finished jobs are deleted ``result_ttl_s`` after they finish (a janitor thread); when results exceed
  ``max_disk_bytes`` the oldest are deleted first, and a result larger than the whole budget fails its job.
* only :class:`uuid.UUID` values become folder names (``str(uuid)``), never raw request text.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from GenerateCTLib.progress import GenerationCancelled, ProgressEvent

log = logging.getLogger(__name__)

JOB_RECORD = "job.json"
PROVENANCE = "provenance.json"
ATTENTION_ZIP = "attention.zip"
TMP_PREFIX = ".tmp-"
FINISHED = ("succeeded", "failed", "cancelled")


@dataclasses.dataclass
class ServerSettings:
    """Everything ``create_app`` needs; ``generatect serve`` fills it from its options.

    Attributes:
        model: bundle folder.
        work_dir: results live in ``work_dir/jobs/``; one server per work dir.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        token: bearer token, or None (loopback only, see :mod:`.security`).
        queue_size: jobs that may wait besides the running one; more get 429.
        job_timeout_s: a running job fails after this many seconds (checked at each step).
        result_ttl_s: finished jobs and their files are deleted this long after they finish.
        max_disk_bytes: bound on the result files kept in ``work_dir``.
        max_request_bytes: larger request bodies get 413.
        cleanup_interval_s: how often the janitor looks for expired jobs.
    """

    model: Path
    work_dir: Path
    device: str = "cpu"
    token: str | None = None
    queue_size: int = 8
    job_timeout_s: float = 3600.0
    result_ttl_s: float = 24 * 3600.0
    max_disk_bytes: int = 20 * 2**30
    max_request_bytes: int = 64 * 1024
    cleanup_interval_s: float = 30.0

    def __post_init__(self):
        self.model, self.work_dir = Path(self.model), Path(self.work_dir)
        for name in ("queue_size", "max_disk_bytes", "max_request_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("job_timeout_s", "result_ttl_s", "cleanup_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the job queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class NotReady(Exception):
    """The model is still loading (or failed to load)."""


class JobTimeout(Exception):
    pass


@dataclasses.dataclass
class Job:
    id: uuid.UUID
    request: dict[str, Any]
    created_at: float
    state: str = "queued"
    stage: str | None = None
    step: int | None = None
    total: int | None = None
    progress: float = 0.0
    eta_s: float | None = None
    elapsed_s: float | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    started_monotonic: float | None = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_loader(settings: ServerSettings):
    from GenerateCTLib.pipeline import GenerateCTPipeline

    return GenerateCTPipeline.from_pretrained(settings.model, device=settings.device)


class JobManager:
    """Bounded queue + one worker thread (owns the pipeline) + a janitor thread (TTL cleanup).

    Args:
        settings: limits and folders.
        loader: ``settings -> pipeline``; called once in the worker thread (default: the bundle in
            ``settings.model``), so the HTTP server answers ``/v1/health/live`` while the model loads.
    """

    def __init__(self, settings: ServerSettings, loader: Callable[[ServerSettings], Any] = default_loader):
        self.settings = settings
        self.loader = loader
        self.jobs_dir = settings.work_dir / "jobs"
        self.pipeline = None
        self.max_slices: int | None = None
        self.load_error: str | None = None
        self._jobs: dict[uuid.UUID, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=10)
        self._largest_result = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    def start(self) -> None:
        """Lock the work dir (one server per work dir), recover it, start the worker and the janitor."""
        import fcntl

        self.settings.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.settings.work_dir / "server.lock", "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise OSError(f"another server is using the work dir {self.settings.work_dir}") from exc
        self.recover()
        for target, name in ((self._work, "generatect-worker"), (self._janitor, "generatect-janitor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the running job at its next step and stop both threads."""
        self._stopping.set()
        with self._cond:
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()  # releases the flock

    def recover(self) -> None:
        """Delete debris of killed runs and re-register the complete results found in ``jobs/``."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.jobs_dir.iterdir()):
            job = self._load_complete(entry)
            if job is None:
                log.warning("removing incomplete job folder %s (left by an interrupted run)", entry)
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            else:
                self._jobs[job.id] = job
                self._largest_result = max(self._largest_result, job.result["size_bytes"])
        self._expire()
        self._make_room(0)

    def _load_complete(self, folder: Path) -> Job | None:
        try:
            job_id = uuid.UUID(folder.name)
        except ValueError:
            return None
        if not folder.is_dir() or str(job_id) != folder.name:
            return None
        try:
            record = json.loads((folder / JOB_RECORD).read_text())
            result = record["result"]
            volume = folder / f"volume.{result['format']}"
            if record["id"] != folder.name or volume.stat().st_size != result["size_bytes"]:
                return None
            if not (folder / PROVENANCE).is_file() or (result["attention"] and not (folder / ATTENTION_ZIP).is_file()):
                return None
            return Job(id=job_id, request=record["request"], created_at=record["created_at"], state="succeeded",
                       progress=1.0, started_at=record["started_at"], finished_at=record["finished_at"],
                       result=result)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- API used by the app --------------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> Job:
        with self._cond:
            if not self.ready:
                raise NotReady(self.load_error or "the model is still loading")
            if len(self._queue) >= self.settings.queue_size:
                raise QueueFull(self._retry_after())
            job = Job(id=uuid.uuid4(), request=dict(request), created_at=time.time())
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify_all()
            return job

    def snapshot(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        """The job's status as a ``JobStatus`` dict, or None if unknown."""
        with self._cond:
            job = self._jobs.get(job_id)
            return None if job is None else self._describe(job)

    def cancel(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        """Queued: cancelled now. Running: cancelled at its next step. Finished: its files are deleted."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.cancel.set()
            else:
                self._delete(job)
            return self._describe(job)

    def open_file(self, job_id: uuid.UUID, kind: str):
        """``(job status, open binary file or None)`` of ``kind`` ``volume``, ``provenance`` or ``attention``.

        The file is opened under the lock, so a concurrent TTL or disk cleanup cannot remove it between
        the check and the read (an open file stays readable after it is unlinked).
        """
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None, None
            if job.state != "succeeded" or (kind == "attention" and not job.result["attention"]):
                return self._describe(job), None
            name = {"volume": f"volume.{job.result['format']}", "provenance": PROVENANCE,
                    "attention": ATTENTION_ZIP}[kind]
            return self._describe(job), open(self.jobs_dir / str(job.id) / name, "rb")  # noqa: SIM115

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {"queued": len(self._queue), "running": int(self._running is not None)}

    # -- internals (call with the lock held) ------------------------------------------------------------

    def _describe(self, job: Job) -> dict[str, Any]:
        finished = job.state in FINISHED
        return {
            "id": job.id,
            "status": job.state,
            "stage": job.stage,
            "step": job.step,
            "total": job.total,
            "progress": job.progress,
            "eta_s": job.eta_s if job.state == "running" else None,
            "elapsed_s": job.elapsed_s,
            "queue_position": self._queue.index(job) if job.state == "queued" else None,
            "cancel_requested": job.cancel.is_set(),
            "error": job.error,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "expires_at": job.finished_at + self.settings.result_ttl_s if finished and job.finished_at else None,
            "result": job.result,
        }

    def _retry_after(self) -> int:
        mean = sum(self._durations) / len(self._durations) if self._durations else 30.0
        running = self._running.eta_s if self._running is not None and self._running.eta_s is not None else mean
        return int(min(3600, max(1, math.ceil(running))))

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        job.eta_s = None
        if state == "succeeded":
            job.progress = 1.0

    def _delete(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        shutil.rmtree(self.jobs_dir / str(job.id), ignore_errors=True)

    def _expire(self) -> None:
        oldest = time.time() - self.settings.result_ttl_s
        for job in list(self._jobs.values()):
            if job.state in FINISHED and job.finished_at is not None and job.finished_at < oldest:
                log.info("job %s expired; deleting it", job.id)
                self._delete(job)

    def _usage(self) -> int:
        return _folder_bytes(self.jobs_dir) if self.jobs_dir.exists() else 0

    def _make_room(self, needed: int, keep: uuid.UUID | None = None) -> bool:
        """Delete the oldest results until ``needed`` more bytes fit; False if they cannot."""
        usage = self._usage()
        stored = sorted((j for j in self._jobs.values() if j.state == "succeeded" and j.id != keep),
                        key=lambda j: j.finished_at or 0)
        while usage + needed > self.settings.max_disk_bytes and stored:
            victim = stored.pop(0)
            log.info("disk budget: deleting the result of job %s", victim.id)
            self._delete(victim)
            usage = self._usage()
        return usage + needed <= self.settings.max_disk_bytes

    # -- threads ----------------------------------------------------------------------------------------

    def _janitor(self) -> None:
        while not self._stopping.wait(self.settings.cleanup_interval_s):
            with self._cond:
                self._expire()

    def _work(self) -> None:
        try:
            pipeline = self.loader(self.settings)
            max_slices = pipeline.max_slices()
        except Exception as exc:  # reported by /v1/health/ready and POST /v1/jobs
            log.exception("could not load the model from %s", self.settings.model)
            self.load_error = f"could not load the model: {type(exc).__name__}: {exc}"
            return
        with self._cond:
            self.pipeline, self.max_slices = pipeline, max_slices
        log.info("model loaded from %s (max %d slices)", self.settings.model, max_slices)
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                job = self._queue.popleft()
                job.state, job.started_at, job.started_monotonic = "running", time.time(), time.monotonic()
                self._running = job
                self._make_room(self._largest_result)
            self._execute(job)
            with self._cond:
                self._running = None
                if job.state == "succeeded":
                    self._durations.append(job.finished_at - job.started_at)

    def _on_progress(self, job: Job, event: ProgressEvent) -> bool:
        if time.monotonic() - job.started_monotonic > self.settings.job_timeout_s:
            raise JobTimeout(f"timed out after {self.settings.job_timeout_s:g} s (the server's --job-timeout)")
        with self._cond:
            job.stage, job.step, job.total = event.stage, event.step, event.total
            job.elapsed_s = round(event.elapsed_s, 3)
            job.eta_s = None if event.eta_s is None else round(event.eta_s, 3)
            if event.eta_s is not None and event.elapsed_s + event.eta_s > 0:
                fraction = event.elapsed_s / (event.elapsed_s + event.eta_s)
                job.progress = round(min(0.99, max(job.progress, fraction)), 4)
        return not job.cancel.is_set()

    def _execute(self, job: Job) -> None:
        request = job.request
        tmp = self.jobs_dir / f"{TMP_PREFIX}{job.id}"
        state, error = "failed", None
        try:
            output = self.pipeline(
                request.get("prompt"),
                age=request.get("age"),
                sex=request.get("sex"),
                impression=request.get("impression"),
                num_slices=request.get("num_slices") or self.max_slices,
                seed=request.get("seed"),
                steps=request["steps"],
                cond_scale=request["cond_scale"],  # None: the bundle's default
                temperature=float(request["temperature"]),
                super_resolve=request["super_resolve"],
                sr_steps=request["sr_steps"],
                return_attention=request["attention"],
                callback=lambda event: self._on_progress(job, event),
            )
            if job.cancel.is_set():
                raise GenerationCancelled("cancelled after the last step")
            result = self._write_result(job, output, tmp)
            with self._cond:
                if job.cancel.is_set():  # cancelled while writing: drop the files
                    raise GenerationCancelled("cancelled while writing the result")
                final = self.jobs_dir / str(job.id)
                os.replace(tmp, final)
                job.result = result
                self._largest_result = max(self._largest_result, result["size_bytes"])
                if not self._make_room(0, keep=job.id):
                    shutil.rmtree(final, ignore_errors=True)
                    job.result = None
                    raise OSError(f"the result ({result['size_bytes'] / 1e6:.1f} MB) does not fit in the disk "
                                  f"budget of {self.settings.max_disk_bytes / 1e6:.1f} MB (--max-disk-gb)")
                self._finish(job, "succeeded")
                return
        except GenerationCancelled:
            state, error = "cancelled", "cancelled by request" if not self._stopping.is_set() else "server shut down"
        except JobTimeout as exc:
            error = str(exc)
        except (ValueError, OSError) as exc:
            error = str(exc)
        except Exception as exc:  # an unexpected pipeline error fails this job, not the worker
            log.exception("job %s failed", job.id)
            error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with self._cond:
            self._finish(job, state, error)
        log.info("job %s %s: %s", job.id, state, error)

    def _write_result(self, job: Job, output, tmp: Path) -> dict[str, Any]:
        """Write everything into ``tmp`` (``job.json`` last), fsync; the caller renames the folder."""
        from GenerateCTLib.io import write_json, write_volume

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fmt = job.request["format"]
        volume = write_volume(tmp / f"volume.{fmt}", output.volume_hu, output.geometry, dtype=job.request["dtype"])
        provenance = {**output.provenance, "server": {"job_id": str(job.id), "dtype": job.request["dtype"],
                                                      "format": fmt}}
        write_json(tmp / PROVENANCE, provenance)
        if output.attention is not None:
            from GenerateCTLib.attention_maps import write_attention_maps

            maps_dir = tmp / "attention"
            write_attention_maps(output.attention, maps_dir, output.geometry, prompt=output.prompt)
            with zipfile.ZipFile(tmp / ATTENTION_ZIP, "w", compression=zipfile.ZIP_STORED) as archive:
                for path in sorted(maps_dir.iterdir()):  # the maps are .nii.gz already
                    archive.write(path, arcname=path.name)
            shutil.rmtree(maps_dir)
        result = {
            "format": fmt,
            "filename": f"generatect_{job.id}.{fmt}",
            "size_bytes": volume.stat().st_size,
            "sha256": sha256_of(volume),
            "shape": list(output.volume_hu.shape),
            "attention": output.attention is not None,
        }
        record = {"id": str(job.id), "request": job.request, "created_at": job.created_at,
                  "started_at": job.started_at, "finished_at": time.time(), "result": result}
        write_json(tmp / JOB_RECORD, record)
        _fsync_tree(tmp)
        return result
