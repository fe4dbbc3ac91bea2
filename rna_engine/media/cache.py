"""Layout of the cache (docs/cache.md); every write is atomic.

```
<cache_root>/<build_name>/v001/
  build.json  status.json  atlas/atlas.exr  passes/rna.####.exr  qc/  work/
```
A reader never sees a half-written file: files are written to a temporary name in the same
folder and published with `os.replace`, with the permissions `open()` gives under the umask (caches
live on shared disks). A finished version is never overwritten.

While a build runs its `status.json` carries the writer's `pid`, `host` and a `heartbeat` time
refreshed every `HEARTBEAT_INTERVAL_S`; `status_lost` is THE rule that tells a dead build from a
running one (`rna_nuke.knobs.status_lost` applies the same rule on the Nuke side).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rna_engine.errors import InputError, OutputError

log = logging.getLogger(__name__)

UV_U = "rna_uv.u"
UV_V = "rna_uv.v"
MATTE = "rna_matte.m"
MASK = "rna_mask.m"
SHADE = ("rna_shade.red", "rna_shade.green", "rna_shade.blue")
PASS_CHANNELS = (UV_U, UV_V, MATTE, MASK, *SHADE)
UV_CONVENTION = "stmap;origin=bottom-left;pixel-centre=+0.5"
PASS_PATTERN = "rna.####.exr"
STATES = ("queued", "running", "done", "failed", "cancelled")
LIVE_STATES = ("queued", "running")
"""States a process is still working on; the others are final."""
HEARTBEAT_INTERVAL_S = 2.0
"""How often a running build refreshes `heartbeat` in its `status.json`, seconds."""
LOST_AFTER_S = 30.0
"""A live state whose `heartbeat` is older than this is `lost` (the writer died), seconds."""
_FILE_MODE = 0o666
"""Mode a published file is created with; the umask clears bits from it, as with `open()`."""
_VERSION_RE = re.compile(r"^v(\d{3,})$")
_LOCK_RE = re.compile(r"^v(\d{3,})\.lock$")


STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
"""Write failures that are the disk's, not the engine's: they become an `OutputError`."""
_LOW_SPACE_BYTES = 16 << 20
"""Free space below which a write that failed without an errno is blamed on a full disk."""


def storage_fault(folder: Path, err: BaseException) -> str | None:
    """Why writing in `folder` failed when the disk is to blame ("No space left on device"),
    else None.

    An `OSError` carries its errno; a writer that reports failure without one (OpenImageIO,
    torch's archive writer) is judged by the file system: read-only, or almost no space left.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno) if err.errno in STORAGE_ERRNOS else None
    if not isinstance(err, OSError | RuntimeError):
        return None
    for probe in (folder, *folder.parents):
        try:
            fs = os.statvfs(probe)
        except OSError:
            continue
        if fs.f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
        if fs.f_bavail * fs.f_frsize < _LOW_SPACE_BYTES:
            return f"{os.strerror(errno.ENOSPC)}: {fs.f_bavail * fs.f_frsize >> 10} KiB free"
        return None
    return None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success publish it with `os.replace`.

    On error the temporary file is removed and `path` is left as it was. A failure the disk is
    to blame for (`storage_fault`: full, read-only, quota) is raised as `OutputError` naming
    `path`, so a build ends with exit code 2 and one line instead of a traceback.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _create_temp(path)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as err:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink(missing_ok=True)
        reason = None if isinstance(err, InputError) else storage_fault(path.parent, err)
        if reason:
            raise OutputError(f"{path}: cannot write ({reason})") from err
        raise


def _create_temp(path: Path) -> Path:
    """A new empty file beside `path` with mode `0o666 & ~umask`.

    Not `tempfile.mkstemp`: its files are 0600, so a published cache would be private to its
    writer, and reading the umask to chmod afterwards is not thread-safe (`os.umask` sets it).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def ensure_writable(folder: Path) -> None:
    """Create `folder` and check a file can be written there; `InputError` naming it if not.

    Called before a build writes anything, so a bad `--out` is one line (exit 2), not a
    traceback from the first status write.
    """
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{folder}: cannot create the cache there, {parent} is a file")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = _create_temp(folder / "write-test")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise InputError(f"{folder}: cannot write the cache there ({reason})") from err


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file, raising `InputError` naming it when unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: not found") from err
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable JSON ({err})") from err


@dataclass(frozen=True)
class BuildPaths:
    """Paths of one cache version folder (`<cache_root>/<name>/v###`)."""

    root: Path

    @property
    def build_json(self) -> Path:
        return self.root / "build.json"

    @property
    def status_json(self) -> Path:
        return self.root / "status.json"

    @property
    def atlas_exr(self) -> Path:
        return self.root / "atlas" / "atlas.exr"

    @property
    def passes_dir(self) -> Path:
        return self.root / "passes"

    @property
    def passes_pattern(self) -> Path:
        return self.passes_dir / PASS_PATTERN

    def pass_path(self, frame_number: int) -> Path:
        return self.passes_dir / f"rna.{frame_number:04d}.exr"

    @property
    def qc_dir(self) -> Path:
        return self.root / "qc"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def version(self) -> int:
        m = _VERSION_RE.match(self.root.name)
        return int(m.group(1)) if m else 0


def version_dirs(build_dir: Path) -> list[Path]:
    """Existing `v###` folders of a build, oldest first."""
    if not build_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in build_dir.iterdir()
        if p.is_dir() and (m := _VERSION_RE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def read_status(paths: BuildPaths) -> dict[str, Any] | None:
    """The version's `status.json`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(paths.status_json.read_text())
    except (OSError, ValueError):
        return None


def choose_version(cache_root: Path, name: str, version: int, build_hash: str) -> BuildPaths:
    """Pick the folder a build writes to.

    `version > 0` asks for that version: allowed when it is new, unfinished, or a finished build
    of the same hash (a no-op rebuild). `version == 0` resumes the newest unfinished version with
    the same hash, else takes the next free number. A finished version of another build is never
    overwritten. A version is known by its folder or by its lock (`media.lock`: a build that
    holds a number before it creates the folder); without a `status.json` its hash is the lock's.
    """
    build_dir = Path(cache_root) / name
    if version > 0:
        paths = BuildPaths(build_dir / f"v{version:03d}")
        status = read_status(paths)
        if status and status.get("state") == "done" and status.get("build_hash") != build_hash:
            raise InputError(
                f"{paths.root}: version v{version:03d} is a finished build of other "
                "settings; choose another version"
            )
        return paths
    numbers = _version_numbers(build_dir)
    for number in reversed(numbers):
        paths = BuildPaths(build_dir / f"v{number:03d}")
        if _version_hash(paths) == build_hash:
            return paths
    return BuildPaths(build_dir / f"v{(numbers[-1] + 1) if numbers else 1:03d}")


def _version_numbers(build_dir: Path) -> list[int]:
    """Version numbers taken by a folder or a lock file, ascending."""
    found = {BuildPaths(p).version for p in version_dirs(build_dir)}
    with contextlib.suppress(OSError):
        for p in build_dir.iterdir():
            m = _LOCK_RE.match(p.name)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def _version_hash(paths: BuildPaths) -> str | None:
    """The build hash a version belongs to: its status's, else its lock's."""
    status = read_status(paths)
    if status is not None:
        return status.get("build_hash")
    from .lock import lock_path, read_lock  # lock.py builds on this module

    owner = read_lock(lock_path(paths.root)) or {}
    value = owner.get("build_hash")
    return value if isinstance(value, str) else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as alive until reaped)."""
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT; the heartbeat decides there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return True


def status_lost(
    status: dict[str, Any],
    now: float | None = None,
    lost_after_s: float = LOST_AFTER_S,
    host: str | None = None,
) -> str | None:
    """Why a `status.json` in a live state belongs to a build that is no longer running, or None.

    Lost when its writer's `pid` is gone on this host, or its `heartbeat` (epoch s) is more than
    `lost_after_s` old (any host). A final state is never lost; a status without `pid` and
    `heartbeat` (an older engine) cannot be judged and is taken as it says.
    `rna_nuke.knobs.status_lost` is the same rule; a test holds them together.
    """
    if status.get("state") not in LIVE_STATES:
        return None
    now = time.time() if now is None else now
    pid, where = status.get("pid"), status.get("host")
    if isinstance(pid, int) and where and where == (host or socket.gethostname()):
        if not pid_alive(pid):
            return f"process {pid} on {where} is gone"
    beat = status.get("heartbeat")
    if isinstance(beat, int | float) and now - beat > lost_after_s:
        return f"no heartbeat for {now - beat:.0f} s (process {pid} on {where})"
    return None


def new_status(build_hash: str, state: str = "queued") -> dict[str, Any]:
    """A fresh `status.json` body (docs/cache.md)."""
    return {
        "state": state,
        "stage": "",
        "progress": 0.0,
        "eta_s": None,
        "message": "",
        "error": None,
        "started": None,
        "finished": None,
        "timings": {},
        "build_hash": build_hash,
        "updated": time.time(),
    }


class StatusFile:
    """Keeps `status.json` current; writes are atomic and throttled.

    Usable as a progress sink: `status(event)`. While the state is live a daemon thread refreshes
    `heartbeat` every `heartbeat_interval_s`, also through long stages that report nothing; a
    final state (or `close`) stops it.
    """

    def __init__(
        self,
        paths: BuildPaths,
        build_hash: str,
        min_interval_s: float = 0.5,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.paths = paths
        self.data = read_status(paths) or new_status(build_hash)
        self.data["build_hash"] = build_hash
        self._min_interval_s = min_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._last = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, force: bool = True, **fields: Any) -> None:
        if fields.get("state") is not None and fields["state"] not in STATES:
            raise ValueError(f"unknown state {fields['state']!r}")
        with self._lock:
            self.data.update(fields)
            now_s = time.time()
            self.data["updated"] = now_s
            live = self.data.get("state") in LIVE_STATES
            if live:
                self.data.update(pid=os.getpid(), host=socket.gethostname(), heartbeat=now_s)
                self.data["heartbeat_interval_s"] = self._heartbeat_interval_s
            now = time.monotonic()
            if force or now - self._last >= self._min_interval_s:
                write_json_atomic(self.paths.status_json, self.data)
                self._last = now
        if live:
            self._start_heartbeat()
        else:
            self._stop.set()

    def close(self) -> None:
        """Stop the heartbeat thread (the state on disk is left as it is)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _start_heartbeat(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat {self.paths.root.name}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        failed = False  # warn of the first failed write only, not of every beat
        while not self._stop.wait(self._heartbeat_interval_s):
            with self._lock:
                if self._stop.is_set() or self.data.get("state") not in LIVE_STATES:
                    return
                self.data["heartbeat"] = time.time()
                try:
                    write_json_atomic(self.paths.status_json, self.data)
                except OSError as err:  # a full or vanished disk: the next beat tries again
                    level = logging.DEBUG if failed else logging.WARNING
                    log.log(level, "%s: heartbeat not written (%s)", self.paths.status_json, err)
                    failed = True

    def __call__(self, event: Any) -> None:
        self.set(
            force=event.stage != self.data.get("stage"),
            state="running",
            stage=event.stage,
            progress=round(event.progress, 4),
            eta_s=None if event.eta_s is None else round(event.eta_s, 1),
            message=event.message,
        )
