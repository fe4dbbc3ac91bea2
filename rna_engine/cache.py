"""Layout of the cache (docs/cache.md); every write is atomic.

```
<cache_root>/<build_name>/v001/
  build.json  status.json  atlas/atlas.exr  passes/rna.####.exr  qc/  work/
```
A reader never sees a half-written file: files are written to a temporary name in the same
folder and published with `os.replace`. A finished version is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

UV_U = "rna_uv.u"
UV_V = "rna_uv.v"
MATTE = "rna_matte.m"
MASK = "rna_mask.m"
SHADE = ("rna_shade.red", "rna_shade.green", "rna_shade.blue")
PASS_CHANNELS = (UV_U, UV_V, MATTE, MASK, *SHADE)
UV_CONVENTION = "stmap;origin=bottom-left;pixel-centre=+0.5"
PASS_PATTERN = "rna.####.exr"
STATES = ("queued", "running", "done", "failed", "cancelled")
_VERSION_RE = re.compile(r"^v(\d{3,})$")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success publish it with `os.replace`.

    On error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
    overwritten.
    """
    build_dir = Path(cache_root) / name
    existing = version_dirs(build_dir)
    if version > 0:
        paths = BuildPaths(build_dir / f"v{version:03d}")
        status = read_status(paths)
        if status and status.get("state") == "done" and status.get("build_hash") != build_hash:
            raise InputError(
                f"{paths.root}: version v{version:03d} is a finished build of other "
                "settings; choose another version"
            )
        return paths
    for folder in reversed(existing):
        paths = BuildPaths(folder)
        status = read_status(paths) or {}
        if status.get("build_hash") == build_hash:
            return paths
    number = (BuildPaths(existing[-1]).version + 1) if existing else 1
    return BuildPaths(build_dir / f"v{number:03d}")


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

    Usable as a progress sink: `status(event)`.
    """

    def __init__(self, paths: BuildPaths, build_hash: str, min_interval_s: float = 0.5) -> None:
        self.paths = paths
        self.data = read_status(paths) or new_status(build_hash)
        self.data["build_hash"] = build_hash
        self._min_interval_s = min_interval_s
        self._last = 0.0

    def set(self, force: bool = True, **fields: Any) -> None:
        if fields.get("state") is not None and fields["state"] not in STATES:
            raise ValueError(f"unknown state {fields['state']!r}")
        self.data.update(fields)
        self.data["updated"] = time.time()
        now = time.monotonic()
        if force or now - self._last >= self._min_interval_s:
            write_json_atomic(self.paths.status_json, self.data)
            self._last = now

    def __call__(self, event: Any) -> None:
        self.set(
            force=event.stage != self.data.get("stage"),
            state="running",
            stage=event.stage,
            progress=round(event.progress, 4),
            eta_s=None if event.eta_s is None else round(event.eta_s, 1),
            message=event.message,
        )
