"""Farm submission from Nuke (docs/farm.md); standard library only, Python 3.9+, no `nuke`.

`write_bundle` writes the node's build spec next to the saved Nuke script (paths relative to the
script's folder, so the shot folder is the job root the farm maps), then runs the engine's
`<engine python> -m rna_engine farm <kind> ...`, which pins the cache version in that spec and
writes the bundle. `submit` runs the studio's submit command (`$RNA_FARM_SUBMIT`, e.g.
`deadline bundle submit {bundle}`) on it. The script must be saved with its RNA nodes as Groups,
so a worker without the plug-in renders it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

KINDS = ("openjd", "deadline", "opencue")
SUBMIT_ENV = "RNA_FARM_SUBMIT"
ENGINE_PYTHON_ENV = "RNA_ENGINE_PYTHON"
BUNDLE_TOKEN = "{bundle}"
JOB_FILE = "job.json"
SPEC_SUFFIX = ".build.json"
PATH_KEYS = ("plate", "roi", "holdout", "out")
"""Build-spec fields holding paths; written relative to the script's folder."""

OPTION_FLAGS = (
    "nuke",
    "nuke_version",
    "nuke_path",
    "engine",
    "pool",
    "group",
    "gpu_pool",
    "gpu_group",
    "priority",
    "show",
    "shot",
)
"""Extra `write_bundle` keywords, passed on as `rna-engine farm --<name>` options."""

WRITE_TIMEOUT_S = 300.0
SUBMIT_TIMEOUT_S = 600.0
_STRIPPED_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE")
"""Nuke's own Python settings would break the engine's interpreter."""

Frames = Union[str, Sequence[int]]


class FarmError(Exception):
    """A farm step failed; the message is one line for the artist."""


def find_engine_python(python: str | None = None) -> str:
    """The engine's interpreter: the argument, else `$RNA_ENGINE_PYTHON`."""
    exe = python or os.environ.get(ENGINE_PYTHON_ENV, "")
    if not exe:
        raise FarmError(f"no engine Python: set {ENGINE_PYTHON_ENV} (the engine's interpreter)")
    return exe


def frames_text(frames: Frames) -> str:
    """`"1001-1100"` from a string or a (first, last) pair."""
    if isinstance(frames, str):
        return frames.strip()
    values = [int(f) for f in frames]
    if len(values) != 2:
        raise FarmError(f"frames {frames!r}: give 'first-last' or (first, last)")
    return f"{values[0]}-{values[1]}"


def relative_spec(spec: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of `spec` whose path fields are relative to `folder` (with `/`), `root` dropped.

    A path on another drive stays absolute; an already relative path is kept as it is.
    """
    out = {k: v for k, v in spec.items() if k != "root"}
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value or not os.path.isabs(value):
            continue
        try:
            rel = os.path.relpath(value, str(folder))
        except ValueError:  # another Windows drive
            continue
        out[key] = rel.replace(os.sep, "/")
    return out


def spec_path_for(script_path: Path, spec: Mapping[str, Any]) -> Path:
    """Where the node's spec goes: `<script folder>/<build name>.build.json`.

    One file per build name, so two RNA nodes of one script never share a spec.
    """
    name = str(spec.get("name") or "shot")
    return Path(script_path).parent / f"{name}{SPEC_SUFFIX}"


def default_bundle_dir(script_path: Path, spec: Mapping[str, Any], kind: str) -> Path:
    """`<script folder>/rna_farm/<script stem>.<build name>.<kind>`."""
    script_path = Path(script_path)
    name = str(spec.get("name") or "shot")
    return script_path.parent / "rna_farm" / f"{script_path.stem}.{name}.{kind}"


def _engine_env() -> dict[str, str]:
    """Our environment without Nuke's Python settings (the engine and submit tools are other
    interpreters); `$RNA_ENGINE_PYTHONPATH` becomes their `PYTHONPATH`."""
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    if os.environ.get("RNA_ENGINE_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["RNA_ENGINE_PYTHONPATH"]
    return env


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(str(tmp), str(path))
    except OSError as err:
        if tmp.exists():
            tmp.unlink()
        raise FarmError(f"{path}: cannot write the build spec ({err.strerror})") from err


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line[len("rna-engine: ") :] if line.startswith("rna-engine: ") else line


def write_bundle(
    kind: str,
    spec: Mapping[str, Any],
    script_path: str | Path,
    write_node: str,
    frames: Frames,
    chunk: int,
    out_dir: str | Path | None = None,
    engine_python: str | None = None,
    **options: Any,
) -> Path:
    """Write the build spec beside the script and a farm bundle; returns the bundle folder.

    Args:
        kind: `openjd`, `deadline` or `opencue`.
        spec: the node's build spec (docs/cache.md `build.json` keys; paths may be absolute).
        script_path: the saved `.nk` script (RNA nodes saved as Groups).
        write_node: the Write node the farm executes.
        frames: `"1001-1100"` or `(1001, 1100)`.
        chunk: frames per render task.
        out_dir: bundle folder (default `default_bundle_dir`).
        engine_python: the engine's interpreter (default `$RNA_ENGINE_PYTHON`).
        options: `nuke`, `nuke_version`, `nuke_path`, `engine`, `pool`, `group`, `gpu_pool`,
            `gpu_group`, `priority`, `show`, `shot` (see `rna-engine farm --help`).

    Raises:
        FarmError: no engine Python, an unwritable spec, or the engine refused (its message).
    """
    if kind not in KINDS:
        raise FarmError(f"farm {kind!r}: not one of {', '.join(KINDS)}")
    unknown = sorted(set(options) - set(OPTION_FLAGS))
    if unknown:
        raise FarmError(f"farm option {unknown[0]!r}: not one of {', '.join(OPTION_FLAGS)}")
    exe = find_engine_python(engine_python)
    script = Path(os.path.abspath(str(script_path)))
    if not script.is_file():
        raise FarmError(f"{script}: save the Nuke script before submitting")
    spec_file = spec_path_for(script, spec)
    _write_json(spec_file, relative_spec(spec, script.parent))
    bundle = Path(out_dir) if out_dir else default_bundle_dir(script, spec, kind)
    command = [exe, "-m", "rna_engine", "farm", kind, "--spec", str(spec_file)]
    command += ["--script", str(script), "--write", write_node]
    command += ["--frames", frames_text(frames), "--chunk", str(int(chunk)), "--out", str(bundle)]
    for key in OPTION_FLAGS:
        if options.get(key) not in (None, ""):
            command += ["--" + key.replace("_", "-"), str(options[key])]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_engine_env(),
            timeout=WRITE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FarmError(f"cannot run the engine ({exe} -m rna_engine farm): {err}") from err
    if done.returncode != 0:
        why = _last_line(done.stderr) or _last_line(done.stdout) or "no message"
        raise FarmError(f"rna-engine farm {kind} failed (exit {done.returncode}): {why}")
    printed = _last_line(done.stdout)
    return Path(printed) if printed else bundle


def read_job(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's `job.json`: name, pinned `version`, `build_dir`, frames, chunk, files."""
    path = Path(bundle_dir) / JOB_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FarmError(f"{path}: unreadable bundle description ({err})") from err
    if not isinstance(data, dict):
        raise FarmError(f"{path}: not a bundle description")
    return data


def submit_command(bundle_dir: str | Path, command: str) -> list[str]:
    """The argument list of `command` with `{bundle}` replaced (appended when absent)."""
    words = shlex.split(command, posix=os.name != "nt")
    if os.name == "nt":
        words = [w[1:-1] if len(w) > 1 and w[0] == w[-1] == '"' else w for w in words]
    bundle = str(bundle_dir)
    if not any(BUNDLE_TOKEN in w for w in words):
        return [*words, bundle]
    return [w.replace(BUNDLE_TOKEN, bundle) for w in words]


def submit(bundle_dir: str | Path, command: str | None = None) -> str | None:
    """Run the submit command on the bundle; returns its output, or None when none is set.

    Args:
        bundle_dir: a folder written by `write_bundle`.
        command: e.g. `deadline bundle submit {bundle}`; default `$RNA_FARM_SUBMIT`.

    Raises:
        FarmError: the command is missing or fails (its last output line).
    """
    command = command or os.environ.get(SUBMIT_ENV, "")
    if not command.strip():
        return None
    argv = submit_command(bundle_dir, command)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_engine_env(),
            timeout=SUBMIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FarmError(f"farm submit ({argv[0]}): {err}") from err
    output = done.stdout + done.stderr
    if done.returncode != 0:
        why = _last_line(done.stderr) or _last_line(done.stdout) or "no message"
        raise FarmError(f"farm submit ({argv[0]}) failed (exit {done.returncode}): {why}")
    return output
