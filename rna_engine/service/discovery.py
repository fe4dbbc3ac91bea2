"""The discovery file and the engine's own client (docs/protocol.md).

A running engine announces itself in `$RNA_HOME/engine.json` = `{pid, port, token, protocol,
version, device}` (mode 0600, written atomically, removed on shutdown). `live_engine` tells
whether the engine it names still answers; `call_engine` sends it one request, as
`rna-engine status` and `rna-engine cancel` do.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rna_engine.errors import InputError
from rna_engine.media.cache import atomic_path, pid_alive

from .protocol import PROTOCOL_VERSION, PeerClosed, encode_frame, read_frame

DISCOVERY_NAME = "engine.json"


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


def live_engine(path: Path, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """The discovery data when its process is alive and its port accepts a connection."""
    data = read_discovery(path)
    if not data or not isinstance(data.get("pid"), int) or not pid_alive(data["pid"]):
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
    except (OSError, PeerClosed, ValueError) as err:
        raise InputError(
            f"{path}: the engine on port {data['port']} does not answer ({err})"
        ) from err
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise InputError(f"engine: {error.get('code', 'error')}: {error.get('message', '')}")
    return reply.get("body") or {}
