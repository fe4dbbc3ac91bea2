"""The build job controller: submit a spec to the engine, follow it, cancel it. No `nuke` here.

`BuildJob.run()` is the whole job, blocking: client factory → `submit` → `subscribe` until a
final event. Progress reaches the caller as `Progress` (percent 0..100, status-line text);
`is_cancelled()` is polled while subscribed and, once true, sends `client.cancel(job_id)` and
waits (bounded) for the engine to confirm. Any failure (engine error, no engine, lost
connection) ends as a `JobResult` with one clear message, never an exception.

`BuildJob.start()` runs the same in a daemon thread (Nuke's GUI); `run_headless` runs it
synchronously and prints one line per progress step (`nuke -t`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from . import knobs

Event = Mapping[str, Any]


class EngineClientLike(Protocol):
    """What `rna_nuke.client.EngineClient` offers the job controller."""

    def submit(self, spec: dict[str, Any]) -> str: ...

    def subscribe(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        status_path: str | None = None,
    ) -> dict[str, Any]: ...

    def cancel(self, job_id: str) -> Any: ...

    def status(self, job_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Progress:
    """One progress step as the UI shows it."""

    percent: int
    """0..100."""
    state: str
    stage: str
    message: str
    """Status-line text (`knobs.status_line`)."""
    event: Event = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """How a job ended."""

    state: str
    """done, failed, cancelled, or lost (the engine stopped answering mid-job)."""
    job_id: str
    message: str
    """One line for the artist."""
    event: Event = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "done"


def describe_error(err: BaseException) -> str:
    """One line for any failure of the client side (engine errors carry `.code`/`.message`)."""
    code = getattr(err, "code", None)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    if code:
        return f"RNA engine error ({code}): {message}"
    if isinstance(err, (ConnectionError, TimeoutError)):
        return f"cannot reach the RNA engine: {message}"
    if isinstance(err, OSError):
        return f"RNA engine: {message}"
    return f"RNA build failed: {type(err).__name__}: {message}"


class BuildJob:
    """One build, from submit to a final state.

    Args:
        spec: the engine build spec (`knobs.build_spec`).
        client_factory: returns a connected engine client (may start the engine: slow).
        on_progress: called with each new `Progress` (percent, stage or state changed).
        is_cancelled: polled while the job runs; True cancels it.
        on_submitted: called with the job id once the engine accepted the spec.
        status_path: the version folder's `status.json`, for recovery by the client.
        cancel_wait_s: how long to wait for the engine to confirm a cancel.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        client_factory: Callable[[], EngineClientLike],
        on_progress: Callable[[Progress], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        on_submitted: Callable[[str], None] | None = None,
        status_path: str | None = None,
        cancel_wait_s: float = 10.0,
        poll_s: float = 0.2,
    ) -> None:
        self.spec = spec
        self.client_factory = client_factory
        self.on_progress = on_progress
        self.is_cancelled = is_cancelled
        self.on_submitted = on_submitted
        self.status_path = status_path
        self.cancel_wait_s = cancel_wait_s
        self.poll_s = poll_s
        self.job_id = ""
        self.device = ""
        self.thread: threading.Thread | None = None
        self.result: JobResult | None = None
        self._cancel = threading.Event()
        self._last_key: tuple[int, str, str] | None = None

    # -- control ----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the job to stop (thread-safe; the worker sends `job.cancel`)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def _should_stop(self) -> bool:
        if not self._cancel.is_set() and self.is_cancelled is not None and self.is_cancelled():
            self._cancel.set()
        return self._cancel.is_set()

    # -- events -----------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        state = str(event.get("state") or "running")
        stage = str(event.get("stage") or "")
        pct = 100 if state == "done" else knobs.percent(event.get("progress"))
        key = (pct, stage, state)
        if key == self._last_key:
            return
        self._last_key = key
        if self.on_progress is not None:
            text = knobs.status_line(event, self.device)
            self.on_progress(Progress(pct, state, stage, text, dict(event)))

    # -- the job ----------------------------------------------------------------------------

    def run(self) -> JobResult:
        """Submit, follow and finish the job; never raises."""
        try:
            result = self._run()
        except Exception as err:  # the job runner reports every failure as one line
            result = JobResult("failed", self.job_id, describe_error(err))
        self.result = result
        if result.state == "done":
            self._on_event({"state": "done", "progress": 1.0, **dict(result.event)})
        return result

    def _run(self) -> JobResult:
        client = self.client_factory()
        hello = getattr(client, "hello", None)
        if callable(hello):  # checks the protocol version; names the engine's device
            self.device = str((hello() or {}).get("device") or "")
        if self._should_stop():
            return JobResult("cancelled", "", "cancelled before the engine started the job")
        self.job_id = str(client.submit(self.spec))
        if self.on_submitted is not None:
            self.on_submitted(self.job_id)
        final: dict[str, Any] = {}
        if not self._should_stop():
            final = dict(
                client.subscribe(self.job_id, self._on_event, self._should_stop, self.status_path)
                or {}
            )
        state = str(final.get("state") or "")
        if state not in knobs.TERMINAL_STATES and self._cancel.is_set():
            client.cancel(self.job_id)
            final = self._wait_final(client)
            state = str(final.get("state") or "")
            if state not in knobs.TERMINAL_STATES:
                return JobResult(
                    "cancelled",
                    self.job_id,
                    f"cancel sent; the engine did not confirm within {self.cancel_wait_s:g} s",
                    final,
                )
        elif state not in knobs.TERMINAL_STATES:
            final = self._wait_final(client, timeout_s=0.0)
            state = str(final.get("state") or "")
            if state not in knobs.TERMINAL_STATES:
                return JobResult(
                    "lost",
                    self.job_id,
                    f"lost the RNA engine during job {self.job_id} ({state or 'no state'}); "
                    "press Reload later to read the cache's status",
                    final,
                )
        return self._result(final)

    def _wait_final(
        self, client: EngineClientLike, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Poll `job.status` until a final state or the timeout; the last status seen."""
        deadline = time.monotonic() + (self.cancel_wait_s if timeout_s is None else timeout_s)
        last: dict[str, Any] = {}
        while True:
            last = dict(client.status(self.job_id) or {})
            if str(last.get("state")) in knobs.TERMINAL_STATES or time.monotonic() >= deadline:
                return last
            time.sleep(self.poll_s)

    def _result(self, final: dict[str, Any]) -> JobResult:
        state = str(final.get("state"))
        if state == "done":
            return JobResult("done", self.job_id, knobs.status_line(final, self.device), final)
        if state == "cancelled":
            return JobResult("cancelled", self.job_id, "build cancelled", final)
        error = final.get("error")
        if isinstance(error, Mapping) and error.get("code"):
            message = f"RNA engine error ({error.get('code')}): {error.get('message') or ''}"
        else:
            message = "RNA build failed: " + (
                knobs.error_text(error) or str(final.get("message") or "") or "unknown error"
            )
        return JobResult("failed", self.job_id, message.rstrip(": "), final)

    def start(
        self,
        on_done: Callable[[JobResult], None],
        on_thread_start: Callable[[BuildJob], None] | None = None,
    ) -> threading.Thread:
        """Run the job in a daemon thread; `on_thread_start(job)` runs first in that thread."""

        def worker() -> None:
            if on_thread_start is not None:
                on_thread_start(self)
            on_done(self.run())

        self.thread = threading.Thread(target=worker, name="rna-build", daemon=True)
        self.thread.start()
        return self.thread


def run_headless(job: BuildJob, stream: TextIO | None = None) -> JobResult:
    """Run `job` synchronously (`nuke -t`), writing one line per progress step to `stream`."""
    out = stream or sys.stdout
    forward = job.on_progress

    def show(progress: Progress) -> None:
        out.write(f"RNA build {progress.percent:3d}% {progress.message}\n")
        out.flush()
        if forward is not None:
            forward(progress)

    job.on_progress = show
    result = job.run()
    out.write(f"RNA build {result.state}: {result.message}\n")
    out.flush()
    return result
