"""Find the running engine, or start one (docs/protocol.md); standard library only, Python 3.9+.

The engine runs in its own Python (torch, GPU), found in this order: the node's `engine python`
knob, `$RNA_ENGINE_PYTHON`, `engine_python` in `$RNA_HOME/config.json` (default
`~/.rna/config.json`), an `rna-engine` executable on `PATH`. Never this interpreter: inside Nuke
it is Nuke's own Python, which has no torch; with none configured the error names what to set.
The engine is started detached (`<python> -m rna_engine serve` or `rna-engine serve`), its output
going to `$RNA_HOME/logs/engine.stdout.log` (the previous start's output moved to
`engine.stdout.log.1`; the engine itself stops writing there past 1 MiB), and is live once its
discovery file exists, its process is alive and it answers `hello`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .client import DISCOVERY_NAME, EngineClient, default_rna_home, read_discovery
from .knobs import pid_alive
from .protocol import EngineError

LAUNCH_LOG = "engine.stdout.log"
CONFIG_NAME = "config.json"
"""`$RNA_HOME/config.json`: `{"engine_python": "/path/to/engine/env/bin/python"}`."""
ENGINE_PYTHON_ENV = "RNA_ENGINE_PYTHON"
ENGINE_EXECUTABLE = "rna-engine"
_STRIPPED_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")
"""Nuke's own Python settings would break another interpreter; the engine env is its own."""
_STARTED: list[subprocess.Popen] = []
"""Engines started by this process: holding them spares a 'still running' warning at collection."""


def find_engine(rna_home: str | Path | None = None) -> EngineClient | None:
    """A client of the live engine, or None.

    Live means: the discovery file exists, its process is alive and it answers `hello`.

    Raises:
        EngineError: `version_mismatch` when a live engine speaks another protocol.
    """
    path = Path(rna_home or default_rna_home()) / DISCOVERY_NAME
    data = read_discovery(path)
    if data is None or not isinstance(data.get("pid"), int) or not pid_alive(data["pid"]):
        return None
    probe = EngineClient(path, connect_timeout_s=1.0, request_timeout_s=3.0, retries=1)
    try:
        probe.hello()
    except EngineError as err:
        if err.code == "version_mismatch":
            raise
        return None
    return EngineClient(path)


def configured_python(rna_home: str | Path | None = None) -> str:
    """`engine_python` of `$RNA_HOME/config.json`, '' when the file is absent.

    Raises:
        EngineError: `engine_start` when the file exists but is not a JSON object of strings.
    """
    path = Path(rna_home or default_rna_home()) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as err:
        raise EngineError("engine_start", f"{path}: cannot read ({err.strerror})") from err
    try:
        data = json.loads(text)
    except ValueError as err:
        raise EngineError("engine_start", f"{path}: not valid JSON ({err})") from err
    value = data.get("engine_python", "") if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise EngineError("engine_start", f'{path}: expected {{"engine_python": "<path>"}}')
    return value.strip()


def engine_command(python: str | None = None, rna_home: str | Path | None = None) -> list[str]:
    """argv that runs the engine CLI: `<python> -m rna_engine`, or `rna-engine` from `PATH`.

    Args:
        python: the node's `engine python` knob ('' or None: not set).
        rna_home: where `config.json` is looked for (default `$RNA_HOME`, else `~/.rna`).

    Raises:
        EngineError: `engine_start` naming what to set when no engine is configured.
    """
    exe = (python or "").strip() or os.environ.get(ENGINE_PYTHON_ENV, "").strip()
    exe = exe or configured_python(rna_home)
    if exe:
        return [exe, "-m", "rna_engine"]
    found = shutil.which(ENGINE_EXECUTABLE)
    if found:
        return [found]
    config = Path(rna_home or default_rna_home()) / CONFIG_NAME
    raise EngineError(
        "engine_start",
        f"no RNA engine configured: set {ENGINE_PYTHON_ENV} (or the node's engine python knob, "
        f'or "engine_python" in {config}) to the Python of the engine environment, '
        f"or put {ENGINE_EXECUTABLE} on PATH",
    )


def _keep_previous(path: Path) -> None:
    """Move the last start's output to `<name>.1` (replacing the one before it)."""
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(path.name + ".1"))


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
        python: the engine's interpreter (the knob; see `engine_command` for the rest).
        timeout_s: how long to wait for the discovery file and `hello`.
        rna_home: the engine's `$RNA_HOME` (default: ours).
        device: `--device` of the engine (auto, cpu, cuda:N).

    Raises:
        EngineError: `engine_start`, naming the interpreter and the log file.
    """
    home = Path(rna_home or default_rna_home())
    prefix = engine_command(python, home)
    exe = " ".join(prefix)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / LAUNCH_LOG
    _keep_previous(log_path)
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env["RNA_HOME"] = str(home)
    if os.environ.get("RNA_ENGINE_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["RNA_ENGINE_PYTHONPATH"]
    command = [*prefix, "serve", "--device", device]
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
            f"cannot run the engine {exe} ({err}); set {ENGINE_PYTHON_ENV}",
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
                f"the engine ({exe} serve) exited with code {code}; "
                f"see {log_path}: {_tail(log_path)}",
            )
        time.sleep(0.1)
    process.kill()
    process.wait(5.0)
    raise EngineError(
        "engine_start",
        f"the engine ({exe} serve) did not answer within {timeout_s:.0f}s; "
        f"see {log_path}: {_tail(log_path)}",
    )


def ensure_engine(python: str | None = None, timeout_s: float = 30.0) -> EngineClient:
    """The live engine's client, starting the engine when none answers."""
    client = find_engine()
    if client is not None:
        return client
    return start_engine(python, timeout_s=timeout_s)
