"""The wire format of docs/protocol.md, server side (written again, independently, in
`rna_nuke/protocol.py`).

Framing: 4-byte big-endian length + UTF-8 JSON; payloads over `MAX_FRAME_BYTES` (1 MiB) are
rejected. Request `{"v":1,"id":str,"type":str,"token":str,"body":{}}`; reply
`{"v":1,"id":str,"ok":true,"body":{}}` or `{"v":1,"id":str,"ok":false,"error":{"code","message"}}`.
Reply error codes: `bad_request`, `unauthorized`, `version_mismatch`, `not_found`, `too_large`,
`invalid_spec`, `internal`; a `ProtocolError` carries one. A frame must arrive completely within
`frame_timeout_s` of its first byte; `read_frame` waits `idle_timeout_s` for that byte.

Only the frame read/write helpers touch a socket; nothing here knows of jobs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20
"""Largest accepted JSON payload, bytes (the 4-byte header not counted)."""
HEADER = struct.Struct(">I")
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


class ProtocolError(Exception):
    """A request the server answers with an error reply; `fatal` closes the connection."""

    def __init__(self, code: str, message: str, request_id: str = "", fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal


class PeerClosed(Exception):
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
            raise PeerClosed("peer closed mid-frame")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, idle_timeout_s: float, frame_timeout_s: float) -> bytes:
    """The next frame's payload.

    Waits up to `idle_timeout_s` for the first byte, then up to `frame_timeout_s` for the rest of
    the frame. Raises `PeerClosed` on EOF or idle timeout, `TimeoutError` on a slow frame,
    `ProtocolError(too_large)` on an oversized header (the payload is not read).
    """
    sock.settimeout(idle_timeout_s)
    try:
        first = sock.recv(1)
    except TimeoutError as err:
        raise PeerClosed("idle timeout") from err
    if not first:
        raise PeerClosed("peer closed")
    deadline = time.monotonic() + frame_timeout_s
    header = first + _recv_exact(sock, HEADER.size - 1, deadline)
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {length} bytes exceeds 1 MiB", fatal=True)
    return _recv_exact(sock, length, deadline)


def drain(sock: socket.socket, limit_s: float = 1.0, limit_bytes: int = 4 << 20) -> None:
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
