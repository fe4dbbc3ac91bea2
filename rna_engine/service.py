"""The engine's local socket service (docs/protocol.md): one GPU job at a time, many clients.

Transport: TCP on 127.0.0.1, an ephemeral port, announced in a discovery file
`$RNA_HOME/engine.json` = `{pid, port, token, protocol, version, device}` (mode 0600, written
atomically, removed on shutdown). Framing: 4-byte big-endian length + UTF-8 JSON; frames over
1 MiB are rejected. Pixels never travel over the socket, only paths and states.

Request `{"v":1,"id":str,"type":str,"token":str,"body":{}}`; reply
`{"v":1,"id":str,"ok":true,"body":{}}` or `{"v":1,"id":str,"ok":false,"error":{"code","message"}}`.
Types: `hello`, `build.submit`, `job.status`, `job.cancel`, `job.subscribe`, `jobs.list`,
`shutdown`. After the `job.subscribe` reply the server pushes
`{"v":1,"type":"event","id":<request id>,"body":{job_id, state, stage, progress, eta_s, message,
heartbeat, ...}}` frames (a heartbeat every `heartbeat_s`) until the job ends; the last event has
a final state (`done`, `failed`, `cancelled`), then the connection takes requests again.

Reply error codes: `bad_request`, `unauthorized`, `version_mismatch`, `not_found`, `too_large`,
`invalid_spec`, `internal`. A failed job carries `error = {code, message}` with code `input`,
`quality` (a quality gate failed: the build produced garbage) or `internal`; a done job carries
`warnings`, the build's soft QC findings.

Robustness: one thread per connection; a frame must arrive completely within `frame_timeout_s`
of its first byte (slow-drip clients are dropped), an idle connection is closed after
`idle_timeout_s`, writes time out after `write_timeout_s`. Nothing a client sends stops the
server, except an authenticated `shutdown`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import queue
import re
import secrets
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .errors import Cancelled, InputError
from .media.cache import BuildPaths, StatusFile, atomic_path, read_status, version_dirs
from .runtime.context import RunContext
from .runtime.progress import CancelToken, Event, ProgressTracker
from .settings import (
    PRESETS,
    BuildSpec,
    absolute_paths,
    relative_paths,
    spec_from_dict,
    spec_to_dict,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20
"""Largest accepted JSON payload, bytes (the 4-byte header not counted)."""
HEADER = struct.Struct(">I")
DISCOVERY_NAME = "engine.json"
FINAL_STATES = ("done", "failed", "cancelled")
REQUEST_TYPES = (
    "hello",
    "build.submit",
    "job.status",
    "job.cancel",
    "job.subscribe",
    "jobs.list",
    "shutdown",
)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

Runner = Callable[[BuildSpec, RunContext], Any]


# -- framing (written again, independently, in rna_nuke/protocol.py) ---------------------------


class ProtocolError(Exception):
    """A request the server answers with an error reply; `fatal` closes the connection."""

    def __init__(self, code: str, message: str, request_id: str = "", fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal


class _Closed(Exception):
    """The peer closed the connection (or it timed out between frames)."""


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """Length-prefixed UTF-8 JSON; raises `ProtocolError(too_large)` past `MAX_FRAME_BYTES`."""
    payload = json.dumps(message, separators=(",", ":"), default=str).encode("utf-8")
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {len(payload)} bytes exceeds 1 MiB")
    return HEADER.pack(len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("frame timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise _Closed("peer closed mid-frame")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, idle_timeout_s: float, frame_timeout_s: float) -> bytes:
    """The next frame's payload.

    Waits up to `idle_timeout_s` for the first byte, then up to `frame_timeout_s` for the rest of
    the frame. Raises `_Closed` on EOF or idle timeout, `TimeoutError` on a slow frame,
    `ProtocolError(too_large)` on an oversized header (the payload is not read).
    """
    sock.settimeout(idle_timeout_s)
    try:
        first = sock.recv(1)
    except TimeoutError as err:
        raise _Closed("idle timeout") from err
    if not first:
        raise _Closed("peer closed")
    deadline = time.monotonic() + frame_timeout_s
    header = first + _recv_exact(sock, HEADER.size - 1, deadline)
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {length} bytes exceeds 1 MiB", fatal=True)
    return _recv_exact(sock, length, deadline)


def _drain(sock: socket.socket, limit_s: float = 1.0, limit_bytes: int = 4 << 20) -> None:
    """Read and drop what the peer still sends before closing.

    Closing with unread data makes the kernel send a reset, which can destroy the error reply
    before the client reads it.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + limit_s
    received = 0
    with contextlib.suppress(OSError):
        while received < limit_bytes and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(1 << 16)
            if not chunk:
                return
            received += len(chunk)


def parse_request(payload: bytes) -> dict[str, Any]:
    """Decode and check the envelope; the token is checked by the caller."""
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError("bad_request", f"not UTF-8 JSON: {err}") from err
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "a request must be a JSON object")
    request_id = message.get("id")
    request_id = request_id if isinstance(request_id, str) else ""
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "version_mismatch",
            f"protocol version {message.get('v')!r} is not supported (engine speaks "
            f"{PROTOCOL_VERSION}); update the RNA plugin or the engine",
            request_id,
        )
    if not request_id:
        raise ProtocolError("bad_request", "field id: expected a non-empty string")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("bad_request", "field type: expected a string", request_id)
    body = message.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("bad_request", "field body: expected an object", request_id)
    message["body"] = body
    return message


def reply_ok(request_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "body": dict(body)}


def reply_error(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }


# -- discovery file -----------------------------------------------------------------------------


def discovery_path(rna_home: Path) -> Path:
    return Path(rna_home) / DISCOVERY_NAME


def read_discovery(path: Path) -> dict[str, Any] | None:
    """The discovery file's contents, or None when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("port"), int):
        return None
    return data


def write_discovery(path: Path, data: Mapping[str, Any]) -> None:
    """Write the discovery file atomically with mode 0600 (it holds the token)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)  # before the token is written
        tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n")


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows; the port probe decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def live_engine(path: Path, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The discovery data when its process is alive and its port accepts a connection."""
    data = read_discovery(path)
    if not data or not isinstance(data.get("pid"), int) or not _pid_alive(data["pid"]):
        return None
    try:
        with socket.create_connection(("127.0.0.1", data["port"]), timeout=timeout_s):
            return data
    except OSError:
        return None


def call_engine(
    rna_home: Path,
    type_: str,
    body: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One request to the running engine (used by `rna-engine status` / `cancel`).

    Raises:
        InputError: no engine is running, or it answered with an error.
    """
    path = discovery_path(rna_home)
    data = read_discovery(path)
    if data is None:
        raise InputError(f"{path}: no engine is running")
    request_id = uuid.uuid4().hex
    request = {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "type": type_,
        "token": data.get("token", ""),
        "body": dict(body or {}),
    }
    try:
        with socket.create_connection(("127.0.0.1", data["port"]), timeout=timeout_s) as sock:
            sock.sendall(encode_frame(request))
            reply = json.loads(read_frame(sock, timeout_s, timeout_s).decode("utf-8"))
    except (OSError, _Closed, ValueError) as err:
        raise InputError(
            f"{path}: the engine on port {data['port']} does not answer ({err})"
        ) from err
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise InputError(f"engine: {error.get('code', 'error')}: {error.get('message', '')}")
    return reply.get("body") or {}


# -- jobs ---------------------------------------------------------------------------------------


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
    """One build request and its live state (the service's lock guards every field)."""

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
    build_dir = Path(spec.out) / spec.name  # absolute since `_submit`
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


# -- the service --------------------------------------------------------------------------------


class Service:
    """The socket server, the job table and the single GPU worker.

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
        self._runner = runner
        self._stage_weights = dict(stage_weights) if stage_weights is not None else None
        self.frame_timeout_s = frame_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._conns: set[socket.socket] = set()
        self._subscriptions = 0
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._stopped = threading.Event()

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
        for target, name in ((self._work, "rna-worker"), (self._accept_loop, "rna-accept")):
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
        with self._lock:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
                for job in self._jobs.values():
                    if job.state not in FINAL_STATES:
                        job.cancel.cancel()
                        job.message = "engine shutting down"
                        job.seq += 1
                self._changed.notify_all()
        if already:
            self._stopped.wait(timeout_s)
            return
        log.info("engine stopping")
        self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:  # let subscribers push their final events
            self._changed.wait_for(lambda: self._subscriptions == 0, timeout=2.0)
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
                        _drain(conn)
                        return
        except TimeoutError:
            log.info("connection dropped: frame not complete within %.1fs", self.frame_timeout_s)
        except (_Closed, ConnectionError, OSError):
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

    def _job(self, body: dict[str, Any]) -> Job:
        job_id = body.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ProtocolError("bad_request", "body.job_id: expected a string")
        job = self._jobs.get(job_id)
        if job is None:
            raise ProtocolError("not_found", f"job {job_id}: not found")
        return job

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
        digest = spec_hash(spec)
        job_id = digest[:16]
        with self._lock:
            if self._stopping:
                raise ProtocolError("internal", "the engine is shutting down")
            job = self._jobs.get(job_id)
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
            self._jobs[job_id] = job
            job.seq += 1
            self._changed.notify_all()
        log.info("job %s queued: %s -> %s/%s", job_id, spec.plate, spec.out, spec.name)
        self._queue.put(job)
        return {"job_id": job_id, "state": "queued", "existing": False}

    def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._job(body).snapshot()

    def _cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            job = self._job(body)
            if job.state not in FINAL_STATES:
                job.cancel.cancel()
                job.message = "cancel requested"
                job.seq += 1
                self._changed.notify_all()
                log.info("job %s: cancel requested", job.job_id)
            return job.snapshot()

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.submitted)
            return {"jobs": [job.snapshot() for job in jobs]}

    def _shutdown(self, body: dict[str, Any]) -> dict[str, Any]:
        log.info("shutdown requested")
        return {"stopping": True}  # `_handle` stops the service once this reply is sent

    def _wait_change(self, job: Job, seen: int) -> None:
        """With the lock held: wait until `job` changes or a heartbeat is due."""
        self._changed.wait_for(lambda: job.seq != seen, timeout=self.heartbeat_s)

    def _subscribe(self, conn: socket.socket, request_id: str, body: dict[str, Any]) -> None:
        try:
            with self._lock:
                job = self._job(body)
                snapshot = job.snapshot()
                seen = job.seq
                self._subscriptions += 1
        except ProtocolError as err:
            err.request_id = request_id
            raise
        try:
            self._send(conn, reply_ok(request_id, snapshot))
            while True:
                with self._lock:
                    if job.state not in FINAL_STATES:
                        self._wait_change(job, seen)
                    heartbeat = job.seq == seen and job.state not in FINAL_STATES
                    seen = job.seq
                    event = job.snapshot(heartbeat=heartbeat)
                self._send(
                    conn, {"v": PROTOCOL_VERSION, "type": "event", "id": request_id, "body": event}
                )
                if event["state"] in FINAL_STATES:
                    return
        finally:
            with self._lock:
                self._subscriptions -= 1
                self._changed.notify_all()

    # the worker -----------------------------------------------------------------------------

    def _update(self, job: Job, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(job, key, value)
            job.seq += 1
            self._changed.notify_all()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run_job(job)
            except Exception:  # the worker must survive anything a job does
                log.exception("job %s: worker error", job.job_id)
                self._update(
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
        from . import pipeline  # torch and the stages load only when a job runs

        weights = self._stage_weights or dict(pipeline.STAGE_WEIGHTS)
        return pipeline.run_build, weights, pipeline.prepare

    def _run_job(self, job: Job) -> None:
        if job.cancel.cancelled:
            self._update(job, state="cancelled", finished=time.time(), message="cancelled")
            log.info("job %s cancelled before it started", job.job_id)
            return
        started = time.time()
        self._update(job, state="running", started=started, message="starting")
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
            self._update(job, **fields)

        result: Any = None
        error: dict[str, str] | None = None
        state = "done"
        try:
            runner, weights, planner = self._resolve_runner()
            if planner is not None:
                # resolve and validate once; the folder run_build will use is known at once, so
                # clients learn status.json before progress
                plan = planner(job.spec)
                self._update(job, cache_dir=str(plan.paths.root))
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
        self._update(job, **fields)
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


def setup_logging(rna_home: Path, verbose: bool = False) -> Path:
    """Add a rotating log file `$RNA_HOME/logs/engine.log` to the `rna_engine` logger."""
    logs = Path(rna_home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "engine.log"
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger("rna_engine")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return path
