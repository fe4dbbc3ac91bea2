"""Malformed requests of every kind docs/protocol.md ("Limits") promises an answer to, and a
runner that sends one and says what came back.

Used by `tests/engine/test_service.py` (a few hundred, seeded) and
`benchmarks/bench_service_fuzz.py` (10 000 against a real `rna-engine serve`). Frames are built
with `struct` and `json` here, not with the service's own helpers.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

REPLY = "reply"
"""The expected error reply came."""
CLOSED = "closed"
"""Closed by a documented limit (with its reply first where the limit has one)."""
NOTHING = "nothing"
"""No reply and no close within the timeout."""
WRONG = "wrong"
"""Something else: another code, a close where a reply was due, an ok reply."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """Bytes to send and what the server must do with them.

    `expect` is the error code of the reply; `too_large` is also followed by a close; '' means
    closed without a reply (a frame cut short by the client's half-close).
    """

    kind: str
    data: bytes
    expect: str
    chunk: int = 0
    """Send in writes of at most this many bytes (0: one write)."""
    half_close: bool = False


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def envelope(right_token: str, **fields: Any) -> bytes:
    """A hello request with the right token, `fields` replaced."""
    message: dict[str, Any] = {"v": 1, "id": "f1", "type": "hello", "token": right_token}
    message["body"] = {}
    message.update(fields)
    return json.dumps(message).encode()


def _not_object(rng: random.Random, token: str) -> Probe:
    payload = rng.choice([b"[1, 2]", b'"hello"', b"42", b"null", b"true", b"[]"])
    return Probe("not_object", frame(payload), "bad_request")


def _huge_int(rng: random.Random, token: str) -> Probe:
    digits = "9" * rng.randint(20, 5000)
    text = envelope(token, body={"n": 0}).replace(b'"n": 0', f'"n": {digits}'.encode())
    return Probe("huge_int", frame(text), "bad_request")


def _nan(rng: random.Random, token: str) -> Probe:
    literal = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
    text = envelope(token, body={"x": 0}).replace(b'"x": 0', f'"x": {literal}'.encode())
    return Probe("nan", frame(text), "bad_request")


def _bad_utf8(rng: random.Random, token: str) -> Probe:
    text = envelope(token)
    cut = rng.randrange(len(text))
    bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"])
    return Probe("bad_utf8", frame(text[:cut] + bad + text[cut:]), "bad_request")


_WRONG_TYPES: tuple[dict[str, Any], ...] = (
    {"id": 5},
    {"id": ""},
    {"id": ["a"]},
    {"id": None},
    {"type": 5},
    {"type": None},
    {"v": "1"},
    {"v": True},
    {"v": 1.0},
    {"body": [1]},
    {"body": "x"},
)


def _wrong_type(rng: random.Random, token: str) -> Probe:
    return Probe("wrong_type", frame(envelope(token, **rng.choice(_WRONG_TYPES))), "bad_request")


def _duplicate_key(rng: random.Random, token: str) -> Probe:
    key = rng.choice(["id", "token", "type", "v"])
    text = envelope(token)[:-1] + f', "{key}": "again"}}'.encode()
    return Probe("duplicate_key", frame(text), "bad_request")


def _deep(rng: random.Random, token: str) -> Probe:
    depth = rng.choice([33, 100, 999, 5000, rng.randint(33, 150_000)])
    if rng.random() < 0.5:
        nested = b"[" * depth + b"]" * depth
    else:
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    text = envelope(token, body={"x": 0}).replace(b'"x": 0', b'"x": ' + nested)
    return Probe("deep", frame(text if rng.random() < 0.5 else nested), "bad_request")


def _bad_token(rng: random.Random, token: str) -> Probe:
    choice = rng.choice(["\ud800", "\udfff" + token, token[:-1], "", 42, None, [token], "é"])
    text = envelope(token, token=choice)
    if rng.random() < 0.2:
        text = envelope(token)
        text = text.replace(b'"token": ', b'"tok": ')  # no token at all
    return Probe("bad_token", frame(text), "unauthorized")


def _unknown_type(rng: random.Random, token: str) -> Probe:
    name = rng.choice(["frobnicate", "", "x" * rng.randint(1, 5000), "HELLO"])
    return Probe("unknown_type", frame(envelope(token, type=name)), "bad_request")


def _long_id(rng: random.Random, token: str) -> Probe:
    return Probe("long_id", frame(envelope(token, id="i" * rng.randint(257, 20000))), "bad_request")


def _version(rng: random.Random, token: str) -> Probe:
    return Probe(
        "version", frame(envelope(token, v=rng.choice([0, 2, 99, -1]))), "version_mismatch"
    )


def _zero_length(rng: random.Random, token: str) -> Probe:
    return Probe("zero_length", frame(b""), "bad_request")


def _garbage(rng: random.Random, token: str) -> Probe:
    payload = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    return Probe("garbage", frame(b"\x00" + payload), "bad_request")  # NUL: never JSON


def _oversized(rng: random.Random, token: str) -> Probe:
    length = rng.choice([(1 << 20) + 1, 1 << 30, 0xFFFFFFFF])
    return Probe("oversized", struct.pack(">I", length) + b"x" * rng.randint(0, 2000), "too_large")


def _truncated(rng: random.Random, token: str) -> Probe:
    data = frame(envelope(token))
    return Probe("truncated", data[: rng.randint(1, len(data) - 1)], "", half_close=True)


KINDS: dict[str, Callable[[random.Random, str], Probe]] = {
    "not_object": _not_object,
    "huge_int": _huge_int,
    "nan": _nan,
    "bad_utf8": _bad_utf8,
    "wrong_type": _wrong_type,
    "duplicate_key": _duplicate_key,
    "deep": _deep,
    "bad_token": _bad_token,
    "unknown_type": _unknown_type,
    "long_id": _long_id,
    "version": _version,
    "zero_length": _zero_length,
    "garbage": _garbage,
    "oversized": _oversized,
    "truncated": _truncated,
}


def probes(count: int, seed: int, token: str) -> Iterator[Probe]:
    """`count` probes, every kind in turn; about one in four small ones split in tiny writes."""
    rng = random.Random(seed)
    makers = list(KINDS.values())
    for i in range(count):
        probe = makers[i % len(makers)](rng, token)
        if len(probe.data) <= 4096 and not probe.half_close and rng.random() < 0.25:
            probe = dataclasses.replace(probe, chunk=rng.randint(1, 7))
        yield probe


def _send(sock: socket.socket, probe: Probe) -> None:
    step = probe.chunk or len(probe.data) or 1
    for start in range(0, len(probe.data), step):
        sock.sendall(probe.data[start : start + step])
    if probe.half_close:
        sock.shutdown(socket.SHUT_WR)


def _read_frame(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame, or None when the server closed (or reset) first."""
    buf = b""
    try:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return None
            buf += chunk
    except ConnectionResetError:
        return None
    return json.loads(buf[4:])


def run_probe(port: int, probe: Probe, timeout_s: float = 5.0) -> tuple[str, str]:
    """Send `probe` on a new connection: (`REPLY` | `CLOSED` | `NOTHING` | `WRONG`, detail)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            _send(sock, probe)
            reply = _read_frame(sock)
            if reply is None:
                return (CLOSED, "") if probe.expect == "" else (WRONG, "closed without a reply")
            code = (reply.get("error") or {}).get("code") if reply.get("ok") is False else "ok"
            if code != probe.expect:
                return WRONG, f"{code} instead of {probe.expect or 'a close'}"
            if probe.expect == "too_large":
                return (CLOSED, code) if _read_frame(sock) is None else (WRONG, "not closed")
            return REPLY, code
        except TimeoutError:
            return NOTHING, "timed out"
        except (BrokenPipeError, ConnectionResetError):
            closes = probe.expect in ("", "too_large")
            return (CLOSED if closes else WRONG), "closed while sending"
