"""The engine socket protocol, client side (docs/protocol.md); standard library only, Python 3.9+.

Framing: 4-byte big-endian length + UTF-8 JSON, payloads up to 1 MiB. Request
`{"v":1,"id":str,"type":str,"token":str,"body":{}}`; reply `{"v":1,"id":str,"ok":true,"body":{}}`
or `{"v":1,"id":str,"ok":false,"error":{"code","message"}}`; pushed events
`{"v":1,"type":"event","id":<subscribe request id>,"body":{...}}`.

The engine writes its own copy of this framing (`rna_engine/service.py`): the two packages share
no code, only this contract, which a contract test drives end to end.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20
"""Largest JSON payload either side accepts, bytes (the 4-byte header not counted)."""
HEADER = struct.Struct(">I")
FINAL_STATES = ("done", "failed", "cancelled")


class EngineError(Exception):
    """An error the user sees: `code` is machine-readable, `message` is one line.

    Codes from the engine: bad_request, unauthorized, version_mismatch, not_found, too_large,
    invalid_spec, busy, internal. Codes from this side: no_engine, unreachable, timeout, protocol,
    engine_start, engine_lost.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def encode_frame(message: dict[str, Any]) -> bytes:
    """`message` as one frame; raises `EngineError("too_large")` past 1 MiB."""
    payload = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_FRAME_BYTES:
        raise EngineError("too_large", f"request of {len(payload)} bytes exceeds 1 MiB")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse one frame's payload; raises `EngineError("protocol")` when it is not a JSON object."""
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise EngineError("protocol", f"the engine sent a malformed frame ({err})") from err
    if not isinstance(message, dict):
        raise EngineError("protocol", "the engine sent a frame that is not a JSON object")
    return message


def make_request(
    type_: str, token: str, body: dict[str, Any] | None = None, request_id: str = ""
) -> dict[str, Any]:
    """A request envelope with a fresh id unless one is given."""
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id or uuid.uuid4().hex,
        "type": type_,
        "token": token,
        "body": dict(body or {}),
    }


def reply_body(reply: dict[str, Any]) -> dict[str, Any]:
    """The body of an ok reply; raises `EngineError(code, message)` for an error reply."""
    if reply.get("v") != PROTOCOL_VERSION:
        raise EngineError(
            "version_mismatch",
            f"the engine speaks protocol {reply.get('v')!r}, this plugin {PROTOCOL_VERSION}; "
            "update one of them",
        )
    if reply.get("ok") is True:
        body = reply.get("body")
        return body if isinstance(body, dict) else {}
    error = reply.get("error")
    if not isinstance(error, dict):
        raise EngineError("protocol", "the engine sent an error reply without an error")
    raise EngineError(str(error.get("code") or "internal"), str(error.get("message") or ""))


class FrameReader:
    """Reads frames from a socket in short waits, so the caller can poll a stop flag.

    Bytes of a frame that arrive across several waits are kept; `read` returns None when no whole
    frame arrived within `timeout_s`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _take(self) -> dict[str, Any] | None:
        if len(self._buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack(bytes(self._buf[: HEADER.size]))
        if length > MAX_FRAME_BYTES:
            raise EngineError("protocol", f"the engine sent a frame of {length} bytes")
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return decode_payload(payload)

    def read(self, timeout_s: float) -> dict[str, Any] | None:
        """The next frame, or None after `timeout_s` without a whole one.

        Raises:
            ConnectionError: the engine closed the connection.
            EngineError: a malformed frame.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._take()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionError("the engine closed the connection")
            self._buf += chunk
