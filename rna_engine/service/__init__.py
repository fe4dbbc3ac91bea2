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

The parts:

- `protocol` — the wire format: framing, request parsing, replies, error codes, `ProtocolError`;
- `discovery` — the discovery file, `live_engine` and `call_engine` (`rna-engine status`/`cancel`);
- `jobs` — `Job`, the `JobTable` (submit with its dedupe, status, cancel, list, subscriptions)
  and the `Worker` that runs one job at a time;
- `gate` — `Gate`: the one thread where connections wait until they authenticate;
- `server` — `Service`: the socket, the connection threads, dispatch to the job table;
- `logs` — `setup_logging`, the engine's bounded per-session logs, `LogThrottle`, `FailureLog`.

The limits on what a client may send and how long it may wait are in docs/protocol.md
("Limits").
"""

from __future__ import annotations

from .discovery import (
    DISCOVERY_NAME,
    call_engine,
    discovery_path,
    live_engine,
    read_discovery,
    write_discovery,
)
from .jobs import Job, JobTable, Runner, Worker, spec_hash
from .logs import setup_logging
from .protocol import (
    FINAL_STATES,
    HEADER,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    ProtocolError,
    encode_frame,
    parse_request,
    read_frame,
    reply_error,
    reply_ok,
)
from .server import Service

__all__ = [
    "DISCOVERY_NAME",
    "FINAL_STATES",
    "HEADER",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "Job",
    "JobTable",
    "ProtocolError",
    "Runner",
    "Service",
    "Worker",
    "call_engine",
    "discovery_path",
    "encode_frame",
    "live_engine",
    "parse_request",
    "read_discovery",
    "read_frame",
    "reply_error",
    "reply_ok",
    "setup_logging",
    "spec_hash",
    "write_discovery",
]
