"""The engine's socket server (docs/protocol.md): many clients, one `JobTable`, one `Worker`.

`Service` binds TCP on 127.0.0.1 (an ephemeral port), writes the discovery file, starts the
worker thread and the accept loop, and serves each connection in its own thread: it reads a
frame, checks the token and dispatches the request type (`hello`, `build.submit`, `job.status`,
`job.cancel`, `job.subscribe`, `jobs.list`, `shutdown`) to the job table. `build.submit` is
checked here, once, at the door (spec, device, absolute paths). After the `job.subscribe` reply
the connection pushes the job's events (a heartbeat every `heartbeat_s`) until a final state,
then takes requests again.

Robustness: a frame must arrive completely within `frame_timeout_s` of its first byte (slow-drip
clients are dropped), an idle connection is closed after `idle_timeout_s`, writes time out after
`write_timeout_s`, connections beyond `max_connections` are closed at once. Nothing a client
sends stops the server, except an authenticated `shutdown`.
"""

from __future__ import annotations

import contextlib
import hmac
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
from .jobs import Job, JobTable, Runner, Worker
from .protocol import (
    FINAL_STATES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    PeerClosed,
    ProtocolError,
    drain,
    encode_frame,
    parse_request,
    read_frame,
    reply_error,
    reply_ok,
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
        max_connections: connections beyond this are closed at once.
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
        self._table = JobTable()
        self._worker = Worker(self._table, device, runner, stage_weights)
        self._lock = threading.Lock()
        """Guards `_conns`; the table's own lock guards the jobs."""
        self._conns: set[socket.socket] = set()
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
        listener.listen(16)
        listener.settimeout(0.25)  # the accept loop polls for stop
        self._listener = listener
        self.port = listener.getsockname()[1]
        write_discovery(self.discovery_path, self.discovery())
        for target, name in ((self._worker.run, "rna-worker"), (self._accept_loop, "rna-accept")):
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
        log.info("engine stopped")
        self._stopped.set()

    # connections ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                conn, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping:
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                log.warning("connection from %s refused: %d open", addr, self.max_connections)
                conn.close()
                continue
            threading.Thread(
                target=self._serve_connection, args=(conn,), name="rna-conn", daemon=True
            ).start()

    def _send(self, conn: socket.socket, message: Mapping[str, Any]) -> None:
        try:
            frame = encode_frame(message)
        except ProtocolError as err:
            frame = encode_frame(reply_error(str(message.get("id", "")), "internal", err.message))
        conn.settimeout(self.write_timeout_s)
        conn.sendall(frame)

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            while not self._stopping:
                request_id = ""
                try:
                    payload = read_frame(conn, self.idle_timeout_s, self.frame_timeout_s)
                    request = parse_request(payload)
                    request_id = request["id"]
                    self._handle(conn, request)
                except ProtocolError as err:
                    log.info("request rejected: %s: %s", err.code, err.message)
                    self._send(
                        conn, reply_error(err.request_id or request_id, err.code, err.message)
                    )
                    if err.fatal:
                        drain(conn)
                        return
        except TimeoutError:
            log.info("connection dropped: frame not complete within %.1fs", self.frame_timeout_s)
        except (PeerClosed, ConnectionError, OSError):
            pass
        except Exception:  # a bug must not take the server down
            log.exception("connection handler failed")
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _handle(self, conn: socket.socket, request: dict[str, Any]) -> None:
        request_id = request["id"]
        token = request.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode("utf-8"), self.token.encode("utf-8")
        ):
            raise ProtocolError("unauthorized", "wrong or missing token", request_id)
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
                "bad_request", f"unknown type {type_!r} ({', '.join(REQUEST_TYPES)})", request_id
            )
        try:
            result = handler(body)
        except ProtocolError as err:
            err.request_id = request_id
            raise
        except Exception as err:
            log.exception("%s failed", type_)
            raise ProtocolError("internal", f"{type_}: {err}", request_id) from err
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
