"""Engine client for the Nuke side (docs/protocol.md); standard library only, Python 3.9+.

Every request opens its own short connection (the engine's address and token are re-read from
the discovery file each time, so a restarted engine is found again), so one `EngineClient` can be
shared by the UI thread and a worker thread. A request that only reads or repeats (`hello`,
`job.status`, `jobs.list`, `job.cancel`) is sent again, after a short back-off, when its
connection closes before the reply or the engine answers `busy` (3 attempts within 2 s);
`build.submit` and `shutdown` are sent once. `subscribe` holds one connection open, reconnects
and resubscribes when it drops, and, when the engine is gone (or keeps closing the connection
before a reply), recovers the job's state from the cache's `status.json`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .protocol import (
    FINAL_STATES,
    PROTOCOL_VERSION,
    EngineError,
    FrameReader,
    encode_frame,
    make_request,
    reply_body,
)

DISCOVERY_NAME = "engine.json"
RESENT_TYPES = ("hello", "job.status", "jobs.list", "job.cancel")
"""Requests sent again when the connection drops before the reply: reads, and a cancel (a
second cancel of a job changes nothing). Not `build.submit`: a submit the engine took and
whose job failed at once would run a second attempt."""
RESEND_WINDOW_S = 2.0
"""No new attempt starts this long after the first."""
RESEND_BACKOFF_S = 0.1
"""Before the second attempt; tripled before each one after."""


def default_rna_home() -> Path:
    """`$RNA_HOME`, default `~/.rna` (the same rule as the engine's)."""
    return Path(os.environ.get("RNA_HOME") or Path.home() / ".rna")


def default_discovery_path() -> Path:
    return default_rna_home() / DISCOVERY_NAME


def read_discovery(path: Path) -> dict[str, Any] | None:
    """`{pid, port, token, protocol, version, device}`, or None when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("port"), int):
        return None
    return data


def recover_status(status_path: str | Path | None) -> dict[str, Any] | None:
    """The cache's `status.json` (docs/cache.md), or None when missing or unreadable."""
    if not status_path:
        return None
    try:
        data = json.loads(Path(status_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _event_from_status(job_id: str, status: dict[str, Any], status_path: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "state": status.get("state", "unknown"),
        "stage": status.get("stage", ""),
        "progress": float(status.get("progress") or 0.0),
        "eta_s": status.get("eta_s"),
        "message": status.get("message", ""),
        "error": status.get("error"),
        "status_path": status_path,
        "heartbeat": False,
        "recovered": True,
    }


class EngineClient:
    """Talks to the engine named by a discovery file.

    Args:
        discovery_path: the engine's discovery file; default `$RNA_HOME/engine.json`.
        connect_timeout_s: timeout of one connection attempt.
        request_timeout_s: time allowed for a reply.
        retries: connection attempts per request (a short back-off between them).
        resend_attempts: attempts of a `RESENT_TYPES` request whose connection closes before
            the reply (within `RESEND_WINDOW_S`).
    """

    def __init__(
        self,
        discovery_path: str | Path | None = None,
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 10.0,
        retries: int = 3,
        resend_attempts: int = 3,
    ) -> None:
        self.discovery_path = Path(discovery_path) if discovery_path else default_discovery_path()
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.retries = max(1, int(retries))
        self.resend_attempts = max(1, int(resend_attempts))

    def __repr__(self) -> str:
        return f"EngineClient({str(self.discovery_path)!r})"

    # transport ------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The discovery file's contents; `EngineError("no_engine")` when there is none."""
        data = read_discovery(self.discovery_path)
        if data is None:
            raise EngineError(
                "no_engine", f"no engine is running ({self.discovery_path} not found)"
            )
        return data

    def _connect(self) -> tuple[socket.socket, str]:
        error = EngineError("no_engine", "no engine is running")
        for attempt in range(self.retries):
            if attempt:
                time.sleep(0.25 * attempt)
            try:
                info = self.discovery()
            except EngineError as err:
                error = err
                continue
            try:
                sock = socket.create_connection(
                    ("127.0.0.1", info["port"]), timeout=self.connect_timeout_s
                )
            except OSError as err:
                error = EngineError(
                    "unreachable",
                    f"the engine (pid {info.get('pid')}) does not answer on 127.0.0.1:{info['port']}: {err}",
                )
                continue
            return sock, str(info.get("token", ""))
        raise error

    def request(
        self, type_: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send one request and return the reply's body (sent again as `RESENT_TYPES` says).

        Raises:
            EngineError: the engine's error code, or no_engine / unreachable / timeout / protocol.
        """
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        attempts = self.resend_attempts if type_ in RESENT_TYPES else 1
        started = time.monotonic()
        for attempt in range(attempts):
            delay = RESEND_BACKOFF_S * 3**attempt
            final = attempt + 1 >= attempts
            final = final or time.monotonic() + delay - started > RESEND_WINDOW_S
            try:
                return self._request_once(type_, body, timeout_s)
            except ConnectionError as err:  # closed or reset before the reply
                if final:
                    raise EngineError(
                        "unreachable", f"lost the engine during {type_}: {err}"
                    ) from err
            except EngineError as err:
                if final or err.code != "busy":
                    raise
            time.sleep(delay)
        raise AssertionError("not reached: the last attempt returns or raises")

    def _request_once(
        self, type_: str, body: dict[str, Any] | None, timeout_s: float
    ) -> dict[str, Any]:
        """One connection, one request; `ConnectionError` when it closes before the reply."""
        sock, token = self._connect()
        request = make_request(type_, token, body)
        try:
            with sock:
                sock.settimeout(timeout_s)
                sock.sendall(encode_frame(request))
                reader = FrameReader(sock)
                deadline = time.monotonic() + timeout_s
                while True:
                    remaining = deadline - time.monotonic()
                    message = reader.read(remaining) if remaining > 0 else None
                    if message is None:
                        raise EngineError(
                            "timeout",
                            f"the engine did not answer {type_} within {timeout_s:.0f}s",
                        )
                    if message.get("id") in (request["id"], "") and "ok" in message:
                        return reply_body(message)
        except ConnectionError:
            raise
        except OSError as err:
            raise EngineError("unreachable", f"lost the engine during {type_}: {err}") from err

    # requests -------------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """`{version, protocol, device, pid, capabilities}`; checks the protocol version."""
        body = self.request("hello")
        if body.get("protocol") != PROTOCOL_VERSION:
            raise EngineError(
                "version_mismatch",
                f"the engine speaks protocol {body.get('protocol')!r}, this plugin "
                f"{PROTOCOL_VERSION}; update one of them",
            )
        return body

    def submit(self, spec: dict[str, Any]) -> str:
        """Queue a build (a `build.json` mapping with absolute paths); returns the job id.

        An identical spec returns the existing job's id.
        """
        return str(self.request("build.submit", spec)["job_id"])

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("job.status", {"job_id": job_id})

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the engine to cancel; the job's state becomes `cancelled` within seconds."""
        return self.request("job.cancel", {"job_id": job_id})

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.request("jobs.list").get("jobs", []))

    def shutdown(self) -> dict[str, Any]:
        return self.request("shutdown")

    recover_status = staticmethod(recover_status)

    # subscription ---------------------------------------------------------------------------

    def subscribe(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        status_path: str | Path | None = None,
        heartbeat_timeout_s: float = 15.0,
        reconnect_timeout_s: float = 10.0,
        poll_s: float = 0.25,
    ) -> dict[str, Any]:
        """Follow a job until it ends; returns the final event.

        `on_event(event)` gets every event (`{job_id, state, stage, progress, eta_s, message,
        error, status_path, heartbeat}`) on the calling thread. A dropped connection, or
        `heartbeat_timeout_s` without a frame, reconnects and resubscribes. When no engine
        answers for `reconnect_timeout_s` (or the engine no longer knows the job) the state is
        read from `status_path` (default: the one the engine announced); a state that is not
        final there then ends as `failed` with error code `engine_lost`. An engine that keeps
        closing the connection before the first frame counts as not answering.

        `should_stop()` is polled every `poll_s`; when it returns True the last event seen is
        returned (its state may not be final).
        """
        last: dict[str, Any] = {"job_id": job_id, "state": "unknown", "progress": 0.0}
        lost_since: float | None = None
        delivered = 0

        def deliver(event: dict[str, Any]) -> None:
            nonlocal lost_since, delivered
            lost_since = None  # an engine answers
            delivered += 1
            on_event(event)

        def known_status_path() -> str:
            return str(status_path or last.get("status_path") or "")

        def engine_gone(reason: str, wait: bool) -> dict[str, Any] | None:
            """The final event recovered from disk; None while still waiting for the engine."""
            nonlocal lost_since
            path = known_status_path()
            status = recover_status(path)
            if status is not None and status.get("state") in FINAL_STATES:
                return _event_from_status(job_id, status, path)
            if lost_since is None:
                lost_since = time.monotonic()
            if wait and time.monotonic() - lost_since < reconnect_timeout_s:
                return None
            event = _event_from_status(job_id, status, path) if status else dict(last)
            event.update(
                state="failed",
                recovered=True,
                error={
                    "code": "engine_lost",
                    "message": f"the engine stopped while the job was {event.get('state', 'unknown')} ({reason})",
                },
            )
            return event

        while True:
            if should_stop():
                return last
            try:
                sock, token = self._connect()
            except EngineError as err:
                if err.code not in ("no_engine", "unreachable"):
                    raise
                final = engine_gone(err.message, wait=True)
                if final is not None:
                    on_event(final)
                    return final
                time.sleep(min(0.5, poll_s * 2))
                continue
            before = delivered
            try:
                with sock:
                    final = self._follow(
                        sock,
                        token,
                        job_id,
                        deliver,
                        should_stop,
                        heartbeat_timeout_s,
                        poll_s,
                        last,
                    )
            except EngineError as err:
                if err.code != "not_found":
                    raise
                # the engine restarted and forgot the job: the cache is the only witness left
                final = engine_gone(f"the engine no longer knows job {job_id}", wait=False)
                assert final is not None
                on_event(final)
                return final
            except (OSError, ConnectionError) as err:
                if delivered > before:
                    continue  # dropped while following: reconnect and resubscribe
                final = engine_gone(f"the engine closed the connection ({err})", wait=True)
                if final is not None:
                    on_event(final)
                    return final
                time.sleep(min(0.5, poll_s * 2))
                continue
            if final is not None:
                return final

    def _follow(
        self,
        sock: socket.socket,
        token: str,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        heartbeat_timeout_s: float,
        poll_s: float,
        last: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Read one subscription's frames; the final event, or None when stopped.

        `last` is updated in place with every event. Raises `ConnectionError` when the connection
        drops or goes quiet for `heartbeat_timeout_s`.
        """
        request = make_request("job.subscribe", token, {"job_id": job_id})
        sock.settimeout(self.request_timeout_s)
        sock.sendall(encode_frame(request))
        reader = FrameReader(sock)
        last_frame = time.monotonic()
        while not should_stop():
            message = reader.read(poll_s)
            now = time.monotonic()
            if message is None:
                if now - last_frame > heartbeat_timeout_s:
                    raise ConnectionError(f"no heartbeat for {heartbeat_timeout_s:.0f}s")
                continue
            last_frame = now
            if message.get("type") == "event":
                event = message.get("body")
                if not isinstance(event, dict):
                    continue
            elif message.get("id") == request["id"]:
                event = reply_body(message)  # the current state, or not_found
            else:
                continue
            last.clear()
            last.update(event)
            on_event(dict(event))
            if event.get("state") in FINAL_STATES:
                return dict(event)
        return None
