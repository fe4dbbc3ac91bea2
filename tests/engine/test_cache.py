"""rna_engine.media.cache: versions, status, atomic publication."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rna_engine.errors import InputError
from rna_engine.media import io
from rna_engine.media.cache import (
    LOST_AFTER_S,
    BuildPaths,
    StatusFile,
    atomic_path,
    choose_version,
    ensure_writable,
    read_status,
    status_lost,
    write_json_atomic,
)


def _finish(paths: BuildPaths, digest: str) -> None:
    StatusFile(paths, digest).set(state="done")


def test_versions_never_overwrite_a_finished_build(tmp_path: Path) -> None:
    first = choose_version(tmp_path, "shot", 0, "aaa")
    assert first.root.name == "v001"
    _finish(first, "aaa")
    assert choose_version(tmp_path, "shot", 0, "aaa").root == first.root  # same build: reuse
    second = choose_version(tmp_path, "shot", 0, "bbb")
    assert second.root.name == "v002"
    with pytest.raises(InputError, match="v001 is a finished build"):
        choose_version(tmp_path, "shot", 1, "bbb")


def test_unfinished_build_of_same_hash_is_resumed(tmp_path: Path) -> None:
    v1 = choose_version(tmp_path, "s", 0, "h1")
    StatusFile(v1, "h1").set(state="running")
    _finish(choose_version(tmp_path, "s", 0, "h2"), "h2")
    assert choose_version(tmp_path, "s", 0, "h1").root == v1.root


def test_status_file_fields(tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "v003")
    status = StatusFile(paths, "abc")
    status.set(state="running", stage="fit", progress=0.5)
    data = read_status(paths)
    assert data is not None
    assert (data["state"], data["stage"], data["progress"], data["build_hash"]) == (
        "running",
        "fit",
        0.5,
        "abc",
    )
    assert paths.version == 3
    with pytest.raises(ValueError):
        status.set(state="sleeping")


def test_atomic_path_leaves_target_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.fixture
def umask() -> Iterator[object]:
    """Set the process umask for one test (`umask(0o002)`), restoring it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_published_files_get_the_umask_permissions(
    tmp_path: Path, umask: object, mask: int
) -> None:
    os.umask(mask)
    write_json_atomic(tmp_path / "status.json", {"state": "done"})
    io.write_exr(tmp_path / "atlas.exr", {"R": np.zeros((4, 6), np.float32)})
    status = BuildPaths(tmp_path / "v001")
    StatusFile(status, "h").set(state="done")
    expected = 0o666 & ~mask  # what open() gives: 0o644 under 022, 0o664 under 002
    assert _mode(tmp_path / "status.json") == expected
    assert _mode(tmp_path / "atlas.exr") == expected
    assert _mode(status.status_json) == expected
    assert _mode(status.root) == 0o777 & ~mask
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_discovery_file_stays_private(tmp_path: Path, umask: object) -> None:
    from rna_engine.service import write_discovery

    os.umask(0o002)
    write_discovery(tmp_path / "engine.json", {"port": 1, "token": "secret"})
    assert _mode(tmp_path / "engine.json") == 0o600


def test_status_file_carries_pid_host_and_a_live_heartbeat(tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "v001")
    status = StatusFile(paths, "h", heartbeat_interval_s=0.1)
    status.set(state="running", stage="fit", started=time.time())
    first = json.loads(paths.status_json.read_text())
    assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
    time.sleep(0.5)  # no progress reported: the heartbeat thread alone refreshes the file
    later = json.loads(paths.status_json.read_text())
    assert later["heartbeat"] > first["heartbeat"] and later["state"] == "running"
    status.set(state="cancelled", message="cancelled")
    final = json.loads(paths.status_json.read_text())
    time.sleep(0.3)
    assert json.loads(paths.status_json.read_text()) == final  # a final state stops the beat
    status.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free (a zombie would still count as alive)
    return proc.pid


def test_status_lost_rule() -> None:
    now = 1000.0
    host = socket.gethostname()
    alive = {"state": "running", "pid": os.getpid(), "host": host, "heartbeat": now - 1}
    assert status_lost(alive, now) is None
    dead = {**alive, "pid": _dead_pid()}
    assert "is gone" in (status_lost(dead, now) or "")
    assert status_lost({**dead, "state": "done"}, now) is None  # final states are never lost
    stale = {**alive, "host": "another-host", "heartbeat": now - LOST_AFTER_S - 1}
    assert "no heartbeat for 31 s" in (status_lost(stale, now) or "")
    assert status_lost({**stale, "heartbeat": now - 5}, now) is None  # other host, fresh beat
    assert status_lost(stale, now, lost_after_s=60.0) is None
    assert status_lost({"state": "running"}, now) is None  # an older engine: cannot tell


def test_ensure_writable_names_the_blocking_file(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(InputError, match=r"plain\.txt is a file"):
        ensure_writable(tmp_path / "plain.txt" / "cache" / "shot" / "v001")
    ensure_writable(tmp_path / "ok" / "v001")
    assert (tmp_path / "ok" / "v001").is_dir() and not list((tmp_path / "ok" / "v001").iterdir())
