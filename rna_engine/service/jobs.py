"""The service's jobs: the record, the table and queue, and the single worker (docs/protocol.md).

A job's id is the first 16 hex digits of `spec_hash`: an identical spec that is queued, running
or done (its `status.json` still there) is the same job; a failed or cancelled one runs again as
the next attempt. `JobTable` holds the jobs and the queue under one lock; every change bumps the
job's `seq` and wakes the waiters of one condition, which is how subscribers learn of it.
`Worker` runs one job at a time with `rna_engine.pipeline.run_build` (imported on the first job,
so the service starts without torch) or the runner it was given. A failed job carries
`error = {code, message}` with code `input`, `quality` (a quality gate failed: the build
produced garbage) or `internal`; a done job carries `warnings`, the build's soft QC findings.

Nothing here knows of sockets; lookups raise `ProtocolError` with the reply's error code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rna_engine import __version__
from rna_engine.errors import Cancelled, InputError
from rna_engine.media.cache import BuildPaths, StatusFile, read_status, version_dirs
from rna_engine.runtime.context import RunContext
from rna_engine.runtime.progress import CancelToken, Event, ProgressTracker
from rna_engine.settings import BuildSpec, spec_to_dict

from .protocol import FINAL_STATES, ProtocolError

log = logging.getLogger(__name__)

Runner = Callable[[BuildSpec, RunContext], Any]


def spec_hash(spec: BuildSpec) -> str:
    """Content hash of the canonical spec JSON (defaults filled in) and the engine version."""
    canonical = json.dumps(
        {"spec": spec_to_dict(spec), "engine": __version__},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Job:
    """One build request and its live state (the table's lock guards every field)."""

    job_id: str
    spec: BuildSpec
    spec_hash: str
    state: str = "queued"
    stage: str = ""
    stage_progress: float = 0.0
    """Fraction of the current stage done, 0..1."""
    progress: float = 0.0
    """Fraction of the whole job done, 0..1."""
    eta_s: float | None = None
    message: str = ""
    error: dict[str, str] | None = None
    submitted: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cache_dir: str | None = None
    """The version folder (`<out>/<name>/v###`) once known."""
    warnings: list[str] = dataclasses.field(default_factory=list)
    """Soft QC findings of a done build (`status.json`'s `warnings`), for the node to show."""
    attempt: int = 1
    seq: int = 0
    """Bumped on every change; subscribers wait for it to move."""
    cancel: CancelToken = dataclasses.field(default_factory=CancelToken)

    def snapshot(self, heartbeat: bool = False) -> dict[str, Any]:
        status_path = str(Path(self.cache_dir) / "status.json") if self.cache_dir else None
        return {
            "job_id": self.job_id,
            "name": self.spec.name,
            "state": self.state,
            "stage": self.stage,
            "stage_progress": round(self.stage_progress, 4),
            "progress": round(self.progress, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "message": self.message,
            "error": self.error,
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
            "cache_dir": self.cache_dir,
            "status_path": status_path,
            "warnings": list(self.warnings),
            "cancel_requested": self.cancel.cancelled,
            "attempt": self.attempt,
            "heartbeat": heartbeat,
        }


def _find_cache_dir(spec: BuildSpec, since: float) -> str | None:
    """The version folder of `spec`: the one it names, else the one whose `status.json` was
    updated since `since` (epoch s).

    With `version: 0` the pipeline picks the version; the service learns it from the status
    file the pipeline keeps current.
    """
    build_dir = Path(spec.out) / spec.name  # absolute since `Service._submit`
    if spec.version > 0:
        return str(build_dir / f"v{spec.version:03d}")
    best: tuple[float, Path] | None = None
    try:
        folders = version_dirs(build_dir)
    except OSError:
        return None
    for folder in folders:
        status = read_status(BuildPaths(folder))
        updated = (status or {}).get("updated")
        if isinstance(updated, int | float) and updated >= since - 1.0:
            if best is None or updated > best[0]:
                best = (float(updated), folder)
    return str(best[1]) if best else None


class JobTable:
    """The jobs by id, the queue the worker takes them from, and the subscriber count.

    `lock` guards every field here and in each `Job`; `changed` (on `lock`) is notified on every
    change. After `close()` nothing more is queued.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.subscriptions = 0
        self.stopping = False

    def submit(self, spec: BuildSpec) -> dict[str, Any]:
        """Queue `spec` (checked, paths absolute) unless an identical job stands; the reply body.

        Raises:
            ProtocolError: `internal` once the table is closed.
        """
        digest = spec_hash(spec)
        job_id = digest[:16]
        with self.lock:
            if self.stopping:
                raise ProtocolError("internal", "the engine is shutting down")
            job = self.jobs.get(job_id)
            existing = job is not None and job.state in ("queued", "running", "done")
            if job is not None and job.state == "done" and job.cache_dir:
                if not (Path(job.cache_dir) / "status.json").is_file():
                    existing = False  # the cache was deleted: build again
            if existing:
                assert job is not None
                log.info("job %s: identical spec, existing job (%s)", job_id, job.state)
                return {"job_id": job_id, "state": job.state, "existing": True}
            attempt = 1 if job is None else job.attempt + 1  # failed or cancelled: run again
            job = Job(job_id=job_id, spec=spec, spec_hash=digest, attempt=attempt)
            if spec.version > 0:  # the client named the version: status.json is known now
                job.cache_dir = _find_cache_dir(spec, job.submitted)
            self.jobs[job_id] = job
            job.seq += 1
            self.changed.notify_all()
        log.info("job %s queued: %s -> %s/%s", job_id, spec.plate, spec.out, spec.name)
        self.queue.put(job)
        return {"job_id": job_id, "state": "queued", "existing": False}

    def _find(self, job_id: object) -> Job:
        """With the lock held: the job `job_id` (a request's `body.job_id`) names."""
        if not isinstance(job_id, str) or not job_id:
            raise ProtocolError("bad_request", "body.job_id: expected a string")
        job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolError("not_found", f"job {job_id}: not found")
        return job

    def status(self, job_id: object) -> dict[str, Any]:
        with self.lock:
            return self._find(job_id).snapshot()

    def cancel(self, job_id: object) -> dict[str, Any]:
        """Ask a job that has not ended to stop; its snapshot."""
        with self.lock:
            job = self._find(job_id)
            if job.state not in FINAL_STATES:
                job.cancel.cancel()
                job.message = "cancel requested"
                job.seq += 1
                self.changed.notify_all()
                log.info("job %s: cancel requested", job.job_id)
            return job.snapshot()

    def list_jobs(self) -> list[dict[str, Any]]:
        """Snapshots of every job, oldest first."""
        with self.lock:
            jobs = sorted(self.jobs.values(), key=lambda j: j.submitted)
            return [job.snapshot() for job in jobs]

    def update(self, job: Job, **fields: Any) -> None:
        with self.lock:
            for key, value in fields.items():
                setattr(job, key, value)
            job.seq += 1
            self.changed.notify_all()

    def wait_change(self, job: Job, seen: int, timeout_s: float) -> None:
        """With the lock held: wait until `job` changes or `timeout_s` (a heartbeat) passes."""
        self.changed.wait_for(lambda: job.seq != seen, timeout=timeout_s)

    def subscribe(self, job_id: object) -> tuple[Job, dict[str, Any], int]:
        """Count a subscriber of `job_id`: (job, snapshot, seq); pair with `unsubscribe`."""
        with self.lock:
            job = self._find(job_id)
            snapshot = job.snapshot()
            seen = job.seq
            self.subscriptions += 1
        return job, snapshot, seen

    def next_event(self, job: Job, seen: int, heartbeat_s: float) -> tuple[dict[str, Any], int]:
        """(snapshot, seq) once `job` moves past `seen`, or a heartbeat after `heartbeat_s`."""
        with self.lock:
            if job.state not in FINAL_STATES:
                self.wait_change(job, seen, heartbeat_s)
            heartbeat = job.seq == seen and job.state not in FINAL_STATES
            return job.snapshot(heartbeat=heartbeat), job.seq

    def unsubscribe(self) -> None:
        with self.lock:
            self.subscriptions -= 1
            self.changed.notify_all()

    def wait_unsubscribed(self, timeout_s: float) -> None:
        """Let subscribers push their final events: wait until none is left."""
        with self.lock:
            self.changed.wait_for(lambda: self.subscriptions == 0, timeout=timeout_s)

    def close(self, message: str) -> bool:
        """Refuse new jobs and cancel every job that has not ended; True if already closed."""
        with self.lock:
            if self.stopping:
                return True
            self.stopping = True
            for job in self.jobs.values():
                if job.state not in FINAL_STATES:
                    job.cancel.cancel()
                    job.message = message
                    job.seq += 1
            self.changed.notify_all()
        return False


class Worker:
    """Runs the queued jobs of `table` one at a time, in the thread that calls `run`.

    Args:
        table: where the jobs come from and their state goes.
        device: device jobs with `device: auto` run on (`cpu`, `cuda:0`).
        runner: `runner(spec, ctx)` runs one build; default `rna_engine.pipeline.run_build`.
        stage_weights: stage → relative cost for overall progress; default the pipeline's.
    """

    def __init__(
        self,
        table: JobTable,
        device: str,
        runner: Runner | None = None,
        stage_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.table = table
        self.device = device
        self._runner = runner
        self._stage_weights = dict(stage_weights) if stage_weights is not None else None

    def stop(self) -> None:
        """End `run` once the job it runs (already cancelled by `JobTable.close`) returns."""
        self.table.queue.put(None)

    def run(self) -> None:
        while True:
            job = self.table.queue.get()
            if job is None:
                return
            try:
                self._run_job(job)
            except Exception:  # the worker must survive anything a job does
                log.exception("job %s: worker error", job.job_id)
                self.table.update(
                    job,
                    state="failed",
                    finished=time.time(),
                    error={"code": "internal", "message": "worker error (see log)"},
                )

    def _resolve_runner(
        self,
    ) -> tuple[Runner, Mapping[str, float], Callable[[BuildSpec], Any] | None]:
        """(runner, stage weights, planner); the planner names a build's version folder."""
        if self._runner is not None:
            return self._runner, self._stage_weights or {}, None
        from rna_engine import pipeline  # torch and the stages load only when a job runs

        weights = self._stage_weights or dict(pipeline.STAGE_WEIGHTS)
        return pipeline.run_build, weights, pipeline.prepare

    def _run_job(self, job: Job) -> None:
        if job.cancel.cancelled:
            self.table.update(job, state="cancelled", finished=time.time(), message="cancelled")
            log.info("job %s cancelled before it started", job.job_id)
            return
        started = time.time()
        self.table.update(job, state="running", started=started, message="starting")
        log.info("job %s running (attempt %d)", job.job_id, job.attempt)
        last_probe = [0.0]

        def sink(event: Event) -> None:
            fields: dict[str, Any] = {
                "stage": event.stage,
                "stage_progress": event.stage_progress,
                "progress": event.progress,
                "eta_s": event.eta_s,
                "message": event.message,
            }
            now = time.monotonic()
            if job.cache_dir is None and now - last_probe[0] > 1.0:
                last_probe[0] = now
                fields["cache_dir"] = _find_cache_dir(job.spec, started)
            self.table.update(job, **fields)

        result: Any = None
        error: dict[str, str] | None = None
        state = "done"
        try:
            runner, weights, planner = self._resolve_runner()
            if planner is not None:
                # resolve and validate once; the folder run_build will use is known at once, so
                # clients learn status.json before progress
                plan = planner(job.spec)
                self.table.update(job, cache_dir=str(plan.paths.root))
                runner = functools.partial(runner, plan=plan)
            tracker = ProgressTracker(weights, sinks=[sink])
            ctx = RunContext(
                auto_device=self.device,  # run_build opens the device in this worker thread
                reporter=tracker,
                cancel=job.cancel,
                work_dir=None,
                seed=job.spec.settings.seed,
            )
            result = runner(job.spec, ctx)
        except Cancelled:
            state = "cancelled"
        except InputError as err:  # code `input`, or `quality` for a failed quality gate
            state, error = "failed", {"code": err.code, "message": str(err)}
        except Exception as err:  # the job runner reports every failure to its clients
            log.exception("job %s failed", job.job_id)
            state, error = "failed", {"code": "internal", "message": f"{type(err).__name__}: {err}"}
        cache_dir = job.cache_dir
        if isinstance(result, BuildPaths):
            cache_dir = str(result.root)
        elif cache_dir is None:
            cache_dir = _find_cache_dir(job.spec, started)
        finished = time.time()
        if state != "done" and cache_dir:
            self._finalise_status(Path(cache_dir), state, error, finished)
        message = {"done": "done", "cancelled": "cancelled"}.get(state) or (error or {}).get(
            "message", "failed"
        )
        fields: dict[str, Any] = {
            "state": state,
            "error": error,
            "finished": finished,
            "cache_dir": cache_dir,
            "message": message,
            "eta_s": None if state != "done" else 0.0,
        }
        if state == "done":
            fields["progress"] = 1.0
            if cache_dir:
                done = read_status(BuildPaths(Path(cache_dir))) or {}
                fields["warnings"] = list(done.get("warnings") or [])
        self.table.update(job, **fields)
        log.info(
            "job %s %s in %.1fs%s",
            job.job_id,
            state,
            finished - started,
            f": {error['message']}" if error else "",
        )

    def _finalise_status(
        self, root: Path, state: str, error: dict[str, str] | None, finished: float
    ) -> None:
        """Make sure `status.json` of a failed or cancelled build says so."""
        paths = BuildPaths(root)
        current = read_status(paths)
        if current is None or current.get("state") in FINAL_STATES:
            return  # nothing written yet (nothing to fix) or the pipeline already finished it
        try:
            status = StatusFile(paths, str(current.get("build_hash", "")))
            status.set(
                state=state,
                error=error,
                finished=finished,
                message=state if error is None else error["message"],
                eta_s=None,
            )
        except OSError:
            log.exception("%s: could not write the final state", paths.status_json)
