"""Find the running engine, or start one (docs/protocol.md); standard library only, Python 3.9+.

The engine runs in its own Python (torch, GPU): `$RNA_ENGINE_PYTHON`, a knob's value, or this
interpreter. It is started detached (`<python> -m rna_engine serve`), its output going to
`$RNA_HOME/logs/engine.stdout.log`, and is live once its discovery file exists, its process is
alive and it answers `hello`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .client import DISCOVERY_NAME, EngineClient, default_rna_home, read_discovery
from .protocol import EngineError

LAUNCH_LOG = "engine.stdout.log"
_STRIPPED_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")
"""Nuke's own Python settings would break another interpreter; the engine env is its own."""
_STARTED: list[subprocess.Popen] = []
"""Engines started by this process: holding them spares a 'still running' warning at collection."""


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would terminate the process on Windows; hello decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def find_engine(rna_home: str | Path | None = None) -> EngineClient | None:
    """A client of the live engine, or None.

    Live means: the discovery file exists, its process is alive and it answers `hello`.

    Raises:
        EngineError: `version_mismatch` when a live engine speaks another protocol.
    """
    path = Path(rna_home or default_rna_home()) / DISCOVERY_NAME
    data = read_discovery(path)
    if data is None or not isinstance(data.get("pid"), int) or not _pid_alive(data["pid"]):
        return None
    probe = EngineClient(path, connect_timeout_s=1.0, request_timeout_s=3.0, retries=1)
    try:
        probe.hello()
    except EngineError as err:
        if err.code == "version_mismatch":
            raise
        return None
    return EngineClient(path)


def engine_python(python: str | None = None) -> str:
    """The engine's interpreter: the argument, else `$RNA_ENGINE_PYTHON`, else this one."""
    return python or os.environ.get("RNA_ENGINE_PYTHON") or sys.executable


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def start_engine(
    python: str | None = None,
    timeout_s: float = 30.0,
    rna_home: str | Path | None = None,
    device: str = "auto",
) -> EngineClient:
    """Start `<python> -m rna_engine serve` detached and wait until it answers `hello`.

    Args:
        python: the engine's interpreter (see `engine_python`).
        timeout_s: how long to wait for the discovery file and `hello`.
        rna_home: the engine's `$RNA_HOME` (default: ours).
        device: `--device` of the engine (auto, cpu, cuda:N).

    Raises:
        EngineError: `engine_start`, naming the interpreter and the log file.
    """
    exe = engine_python(python)
    home = Path(rna_home or default_rna_home())
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / LAUNCH_LOG
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env["RNA_HOME"] = str(home)
    if os.environ.get("RNA_ENGINE_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["RNA_ENGINE_PYTHONPATH"]
    command = [exe, "-m", "rna_engine", "serve", "--device", device]
    windows = sys.platform == "win32"
    flags = 0
    if windows:
        flags = getattr(subprocess, "DETACHED_PROCESS", 0)
        flags |= getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    try:
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=str(home),
                env=env,
                close_fds=True,
                creationflags=flags,
                start_new_session=not windows,  # survives Nuke's process group and its signals
            )
    except OSError as err:
        raise EngineError(
            "engine_start",
            f"cannot run the engine interpreter {exe} ({err}); set RNA_ENGINE_PYTHON",
        ) from err

    _STARTED.append(process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = find_engine(home)
        if client is not None:
            return client
        code = process.poll()
        if code is not None:
            client = find_engine(home)  # another launcher may have won the race
            if client is not None:
                return client
            raise EngineError(
                "engine_start",
                f"the engine ({exe} -m rna_engine serve) exited with code {code}; "
                f"see {log_path}: {_tail(log_path)}",
            )
        time.sleep(0.1)
    process.kill()
    process.wait(5.0)
    raise EngineError(
        "engine_start",
        f"the engine ({exe} -m rna_engine serve) did not answer within {timeout_s:.0f}s; "
        f"see {log_path}: {_tail(log_path)}",
    )


def ensure_engine(python: str | None = None, timeout_s: float = 30.0) -> EngineClient:
    """The live engine's client, starting the engine when none answers."""
    client = find_engine()
    if client is not None:
        return client
    return start_engine(python, timeout_s=timeout_s)
