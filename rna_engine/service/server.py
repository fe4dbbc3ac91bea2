"""The engine's socket server (docs/protocol.md): many clients, one `JobTable`, one `Worker`.

`Service` binds TCP on 127.0.0.1 (an ephemeral port), writes the discovery file, starts the
worker thread and the connection gate (`gate.Gate`: one thread holds every connection until it
sends a request with the right token, at most `max_unauthenticated` of them, each for at most
`auth_timeout_s`). An authenticated connection is served in its own thread, at most
`max_connections` of them: it reads a frame, checks the token and dispatches the request type
(`hello`, `build.submit`, `job.status`, `job.cancel`, `job.subscribe`, `jobs.list`, `shutdown`)
to the job table. `build.submit` is checked here, once, at the door (spec, device, absolute
paths). After the `job.subscribe` reply the connection pushes the job's events (a heartbeat
every `heartbeat_s`) until a final state, then takes requests again.

Robustness: a frame must arrive completely within `frame_timeout_s` of its first byte (slow-drip
clients are dropped), an idle connection is closed after `idle_timeout_s`, writes time out after
`write_timeout_s`. Every request gets a reply or a documented close: a bug answers `internal`
(its traceback logged once per kind, `logs.FailureLog`); rejected requests are logged through a
`logs.LogThrottle`. Nothing a client sends stops the server, except an authenticated
`shutdown`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rna_engine import __version__
from rna_engine.errors import InputError
from rna_engine.settings import PRESETS, absolute_paths, relative_paths, spec_from_dict

from .discovery import discovery_path, live_engine, read_discovery, write_discovery
from .gate import Gate
from .jobs import Job, JobTable, Runner, Worker
from .logs import FailureLog, LogThrottle
from .protocol import (
    FINAL_STATES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    PeerClosed,
    ProtocolError,
    clip,
    drain,
    encode_frame,
    parse_request,
    read_frame,
    reply_error,
    reply_ok,
    token_matches,
)

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Service:
    """The socket server over a `JobTable` and the `Worker` that runs its jobs.

    Args:
        rna_home: folder of the discovery file and logs (`rna_engine.runtime.context.rna_home()`).
        device: device jobs with `device: auto` run on (`cpu`, `cuda:0`).
        runner: `runner(spec, ctx)` runs one build; default `rna_engine.pipeline.run_build`.
        stage_weights: stage → relative cost for overall progress; default the pipeline's.
        frame_timeout_s: a frame must be complete this long after its first byte.
        idle_timeout_s: an idle connection (no request) is closed after this long.
        heartbeat_s: a subscriber gets an event at least this often.
        write_timeout_s: a client that does not read for this long is dropped.
        max_connections: authenticated connections at most; one more is answered `busy`.
        auth_timeout_s: a connection that has not sent a request with the right token this long
            after its connect is closed.
        max_unauthenticated: connections waiting to authenticate at most; a new one evicts the
            oldest.
    """

    def __init__(
        self,
        rna_home: Path,
        device: str = "cpu",
        runner: Runner | None = None,
        stage_weights: Mapping[str, float] | None = None,
        frame_timeout_s: float = 5.0,
        idle_timeout_s: float = 300.0,
        heartbeat_s: float = 2.0,
        write_timeout_s: float = 10.0,
        max_connections: int = 64,
        auth_timeout_s: float = 3.0,
        max_unauthenticated: int = 16,
    ) -> None:
        self.rna_home = Path(rna_home)
        self.device = device
        self.discovery_path = discovery_path(self.rna_home)
        self.token = secrets.token_urlsafe(32)
        self.port = 0
        self.frame_timeout_s = frame_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self.auth_timeout_s = auth_timeout_s
        self.max_unauthenticated = max_unauthenticated
        self._throttle = LogThrottle(log)
        self._failures = FailureLog(log, self._throttle)
        self._table = JobTable()
        self._worker = Worker(self._table, device, runner, stage_weights)
        self._lock = threading.Lock()
        """Guards `_conns`; the table's own lock guards the jobs."""
        self._conns: set[socket.socket] = set()
        """Authenticated connections (each has its thread)."""
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    @property
    def _stopping(self) -> bool:
        """Set once `stop()` begins: no new jobs, connections and the accept loop wind down."""
        return self._table.stopping

    @property
    def _jobs(self) -> dict[str, Job]:
        """The job table's jobs by id (guarded by its lock)."""
        return self._table.jobs

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, write the discovery file, start the worker and the accept loop."""
        existing = live_engine(self.discovery_path)
        if existing and existing.get("pid") != os.getpid():
            raise InputError(
                f"{self.discovery_path}: an engine is already running "
                f"(pid {existing['pid']}, port {existing['port']})"
            )
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(socket.SOMAXCONN)  # a flood of connects waits here, not in SYN retries
        self._listener = listener
        self.port = listener.getsockname()[1]
        gate = Gate(
            listener,
            self._admit,
            self._hand_off,
            max_waiting=self.max_unauthenticated,
            auth_timeout_s=self.auth_timeout_s,
            frame_timeout_s=self.frame_timeout_s,
            throttle=self._throttle,
            failures=self._failures,
        )
        write_discovery(self.discovery_path, self.discovery())

        def run_gate() -> None:
            gate.run(lambda: self._stopping)

        for target, name in ((self._worker.run, "rna-worker"), (run_gate, "rna-gate")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "engine %s listening on 127.0.0.1:%d (pid %d, device %s, discovery %s)",
            __version__,
            self.port,
            os.getpid(),
            self.device,
            self.discovery_path,
        )

    def discovery(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "port": self.port,
            "token": self.token,
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "device": self.device,
        }

    def serve_forever(self) -> None:
        """Start (if needed) and block until `stop()` (or a `shutdown` request) finishes."""
        if self._listener is None:
            self.start()
        while not self._stopped.wait(0.5):
            pass

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the service has stopped; False on timeout."""
        return self._stopped.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancel every job, wait for the worker, close sockets, remove the discovery file."""
        already = self._table.close("engine shutting down")
        if already:
            self._stopped.wait(timeout_s)
            return
        log.info("engine stopping")
        self._worker.stop()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._table.wait_unsubscribed(2.0)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        current = read_discovery(self.discovery_path)
        if current and current.get("token") == self.token:
            with contextlib.suppress(OSError):
                self.discovery_path.unlink()
        self._throttle.tick(force=True)
        log.info("engine stopped")
        self._stopped.set()

    # connections ----------------------------------------------------------------------------

    def _admit(self, payload: bytes) -> dict[str, Any]:
        """The gate's check of a connection's frame: a request with the right token."""
        request = parse_request(payload)
        self._check_token(request)
        return request

    def _check_token(self, request: dict[str, Any]) -> None:
        if not token_matches(request.get("token"), self.token):
            raise ProtocolError("unauthorized", "wrong or missing token", request["id"])

    def _hand_off(self, conn: socket.socket, request: dict[str, Any]) -> None:
        """Serve an authenticated connection in its own thread, `request` first."""
        with self._lock:
            if self._stopping:
                raise ProtocolError("internal", "the engine is shutting down", request["id"])
            if len(self._conns) >= self.max_connections:
                raise ProtocolError(
                    "busy",
                    f"{self.max_connections} connections are open; try again",
                    request["id"],
                )
            self._conns.add(conn)
        conn.setblocking(True)
        thread = threading.Thread(
            target=self._serve_connection, args=(conn, request), name="rna-conn", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as err:  # no more threads
            with self._lock:
                self._conns.discard(conn)
            conn.setblocking(False)
            raise ProtocolError("busy", f"cannot serve ({err})", request["id"]) from err

    def _send(self, conn: socket.socket, message: Mapping[str, Any]) -> None:
        try:
            frame = encode_frame(message)
        except ProtocolError as err:
            frame = encode_frame(reply_error(str(message.get("id", "")), "internal", err.message))
        conn.settimeout(self.write_timeout_s)
        conn.sendall(frame)

    def _serve_connection(self, conn: socket.socket, request: dict[str, Any]) -> None:
        try:
            self._serve_requests(conn, request)
        except TimeoutError:
            self._throttle.note(
                "frame_timeout",
                "connection dropped: frame not complete within %.1fs",
                self.frame_timeout_s,
            )
        except (PeerClosed, OSError):
            pass
        except Exception as err:  # a bug must not take the server down
            self._failures.log("connection handler", err)
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _serve_requests(self, conn: socket.socket, first: dict[str, Any]) -> None:
        """Answer `first`, then every request the connection sends, until it closes."""
        request: dict[str, Any] | None = first
        while not self._stopping:
            request_id = request["id"] if request else ""
            try:
                if request is None:
                    request = parse_request(
                        read_frame(conn, self.idle_timeout_s, self.frame_timeout_s)
                    )
                    request_id = request["id"]
                self._handle(conn, request)
            except ProtocolError as err:
                self._throttle.note(err.code, "request rejected: %s: %s", err.code, err.message)
                self._send(conn, reply_error(err.request_id or request_id, err.code, err.message))
                if err.fatal:
                    drain(conn)
                    return
            except (PeerClosed, OSError):
                raise
            except Exception as err:  # a bug: answer it, log it once, close
                self._failures.log("connection handler", err)
                message = f"the engine failed ({type(err).__name__}); see its log"
                with contextlib.suppress(OSError):
                    self._send(conn, reply_error(request_id, "internal", message))
                return
            request = None

    def _handle(self, conn: socket.socket, request: dict[str, Any]) -> None:
        request_id = request["id"]
        self._check_token(request)
        type_ = request["type"]
        body = request["body"]
        if type_ == "job.subscribe":
            self._subscribe(conn, request_id, body)
            return
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "hello": self._hello,
            "build.submit": self._submit,
            "job.status": self._status,
            "job.cancel": self._cancel,
            "jobs.list": self._list,
            "shutdown": self._shutdown,
        }
        handler = handlers.get(type_)
        if handler is None:
            raise ProtocolError(
                "bad_request",
                f"unknown type {clip(repr(type_), 80)} ({', '.join(REQUEST_TYPES)})",
                request_id,
            )
        try:
            result = handler(body)
        except ProtocolError as err:
            err.request_id = request_id
            raise
        except Exception as err:
            self._failures.log(type_, err)
            raise ProtocolError("internal", f"{type_}: {clip(str(err))}", request_id) from err
        try:
            self._send(conn, reply_ok(request_id, result))
        finally:
            if type_ == "shutdown":  # after the reply: stopping closes every connection
                threading.Thread(target=self.stop, name="rna-stop", daemon=True).start()

    # request handlers -----------------------------------------------------------------------

    def _hello(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "device": self.device,
            "pid": os.getpid(),
            "capabilities": {"types": list(REQUEST_TYPES), "presets": list(PRESETS)},
        }

    def _submit(self, body: dict[str, Any]) -> dict[str, Any]:
        where = _not_unicode(body)
        if where is not None:  # a lone surrogate: no file system path can hold it
            raise ProtocolError("invalid_spec", f"setting {where}: not valid Unicode")
        try:
            spec = spec_from_dict(body)
        except InputError as err:
            raise ProtocolError("invalid_spec", str(err)) from err
        if not _DEVICE_RE.match(spec.device):
            raise ProtocolError(
                "invalid_spec", f"setting device: {spec.device!r} is not auto, cpu or cuda:N"
            )
        if not spec.root:
            relative = relative_paths(spec)
            if relative:
                raise ProtocolError(
                    "invalid_spec",
                    f"setting {relative[0]}: relative path without root (the engine does not run "
                    "in your folder); send absolute paths or set root",
                )
        elif not Path(spec.root).expanduser().is_absolute():
            raise ProtocolError("invalid_spec", f"setting root: {spec.root!r} is not absolute")
        spec = absolute_paths(spec, Path(spec.root or "/"))  # the path rule, once, at the door
        return self._table.submit(spec)

    def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._table.status(body.get("job_id"))

    def _cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._table.cancel(body.get("job_id"))

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"jobs": self._table.list_jobs()}

    def _shutdown(self, body: dict[str, Any]) -> dict[str, Any]:
        log.info("shutdown requested")
        return {"stopping": True}  # `_handle` stops the service once this reply is sent

    def _subscribe(self, conn: socket.socket, request_id: str, body: dict[str, Any]) -> None:
        try:
            job, snapshot, seen = self._table.subscribe(body.get("job_id"))
        except ProtocolError as err:
            err.request_id = request_id
            raise
        try:
            self._send(conn, reply_ok(request_id, snapshot))
            while True:
                event, seen = self._table.next_event(job, seen, self.heartbeat_s)
                self._send(
                    conn, {"v": PROTOCOL_VERSION, "type": "event", "id": request_id, "body": event}
                )
                if event["state"] in FINAL_STATES:
                    return
        finally:
            self._table.unsubscribe()


def _not_unicode(value: Any, where: str = "") -> str | None:
    """The dotted key of the first string in `value` that UTF-8 cannot encode, else None
    (recursive: a request nests at most `MAX_JSON_DEPTH` deep)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(body)"
        return None
    if not isinstance(value, dict | list):
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        found = _not_unicode(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None
