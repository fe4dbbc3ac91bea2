"""The wire format of docs/protocol.md, server side (written again, independently, in
`rna_nuke/protocol.py`).

Framing: 4-byte big-endian length + UTF-8 JSON; payloads over `MAX_FRAME_BYTES` (1 MiB) are
rejected. Request `{"v":1,"id":str,"type":str,"token":str,"body":{}}`; reply
`{"v":1,"id":str,"ok":true,"body":{}}` or `{"v":1,"id":str,"ok":false,"error":{"code","message"}}`.
Reply error codes: `bad_request`, `unauthorized`, `version_mismatch`, `not_found`, `too_large`,
`invalid_spec`, `busy`, `internal`; a `ProtocolError` carries one. A frame must arrive completely
within `frame_timeout_s` of its first byte; `read_frame` waits `idle_timeout_s` for that byte
(`FrameAssembler` is the same framing for a non-blocking socket).

Requests are decoded strictly (`parse_request`): UTF-8, one JSON object nested at most
`MAX_JSON_DEPTH` deep, no duplicate keys, no NaN/Infinity, integers within 64 bits, an `id` of at
most `MAX_ID_CHARS`; anything else is a `bad_request`. `token_matches` compares tokens as bytes.

Only the frame read/write helpers touch a socket; nothing here knows of jobs.
"""

from __future__ import annotations

import contextlib
import hmac
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
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a request may have (the envelope counts as 1)."""
MAX_ID_CHARS = 256
"""Longest request `id` (it is echoed in the reply and its events)."""
MAX_INT_DIGITS = 19
"""Integers beyond 64 bits (more digits than this) are rejected."""
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


class FrameAssembler:
    """The framing of `read_frame` for a non-blocking socket: feed it what `want()` asks for.

    It never asks for bytes past the current frame, so whatever follows stays in the socket.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._length: int | None = None

    @property
    def started(self) -> bool:
        """Whether part of a frame has arrived."""
        return self._length is not None or bool(self._buf)

    def want(self) -> int:
        """How many bytes to read next (at most 64 KiB)."""
        if self._length is None:
            return HEADER.size - len(self._buf)
        return min(self._length - len(self._buf), 1 << 16)

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes read; the payload once the frame is complete, else None.

        Raises `ProtocolError(too_large, fatal=True)` on an oversized header.
        """
        self._buf += data
        if self._length is None:
            if len(self._buf) < HEADER.size:
                return None
            (length,) = HEADER.unpack(self._buf)
            self._buf.clear()
            if length > MAX_FRAME_BYTES:
                raise ProtocolError(
                    "too_large", f"frame of {length} bytes exceeds 1 MiB", fatal=True
                )
            self._length = length
        if len(self._buf) < self._length:
            return None
        payload = bytes(self._buf)
        self._buf = bytearray()
        self._length = None
        return payload


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


def clip(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters (what a client sent may be long)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {clip(repr(key), 60)}")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {clip(text, 40)} is out of range")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects in `value` nest deeper than `limit` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def decode_json(payload: bytes) -> Any:
    """Strict JSON of a request payload; raises `ProtocolError(bad_request)`."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError("bad_request", f"not UTF-8: {err}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except RecursionError:
        value, deep = None, True
    except ValueError as err:
        raise ProtocolError("bad_request", f"not JSON: {clip(str(err))}") from None
    else:
        # a payload with few brackets cannot nest deeply: skip the walk
        brackets = payload.count(b"[") + payload.count(b"{")
        deep = brackets > MAX_JSON_DEPTH and isinstance(value, dict | list)
        deep = deep and _deeper_than(value, MAX_JSON_DEPTH)
    if deep:
        request_id = _request_id(value.get("id")) if isinstance(value, dict) else ""
        raise ProtocolError(
            "bad_request", f"JSON nested deeper than {MAX_JSON_DEPTH} levels", request_id
        )
    return value


def _request_id(value: object) -> str:
    """The request's id when it is a usable one, else ''."""
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    return ""


def _check_version(version: object, request_id: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int | None):
        raise ProtocolError("bad_request", "field v: expected the integer 1", request_id)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "version_mismatch",
            f"protocol version {version!r} is not supported (engine speaks "
            f"{PROTOCOL_VERSION}); update the RNA plugin or the engine",
            request_id,
        )


def parse_request(payload: bytes) -> dict[str, Any]:
    """Decode and check the envelope; the token is checked by the caller (`token_matches`)."""
    message = decode_json(payload)
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "a request must be a JSON object")
    request_id = _request_id(message.get("id"))
    _check_version(message.get("v"), request_id)
    if not request_id:
        raise ProtocolError(
            "bad_request", f"field id: expected a string of 1 to {MAX_ID_CHARS} characters"
        )
    if not isinstance(message.get("type"), str):
        raise ProtocolError("bad_request", "field type: expected a string", request_id)
    body = message.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("bad_request", "field body: expected an object", request_id)
    message["body"] = body
    return message


def token_matches(given: object, expected: str) -> bool:
    """Constant-time comparison of a request's token, as UTF-8 bytes; False for a non-string or
    a string that is not valid Unicode (a lone surrogate)."""
    if not isinstance(given, str):
        return False
    try:
        data = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(data, expected.encode("utf-8"))


def reply_ok(request_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "body": dict(body)}


def reply_error(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }
