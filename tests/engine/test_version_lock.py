"""One writer per cache version: `media.lock`, and two identical builds started together.

The lock is tried on its own (threads of this process, a dead owner, another host's owner with
an old or a fresh heartbeat); then two real `rna-engine build` processes of the same spec start
at the same moment: one fits, the other waits and reuses its result.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tiny_build import build_command

from rna_engine.errors import Cancelled
from rna_engine.media.cache import BuildPaths, choose_version, read_status, version_dirs
from rna_engine.media.lock import hold, lock_path, read_lock
from rna_engine.synthetic.shots import make_shot, write_shot


def _write_lock(root: Path, **owner: Any) -> Path:
    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nonce": "old", "build_hash": "h1", **owner}))
    return path


def test_a_second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    root = tmp_path / "shot" / "v001"
    order: list[str] = []
    seen: list[dict[str, Any]] = []
    first_in = threading.Event()
    release = threading.Event()

    def first() -> None:
        with hold(root, "h1"):
            order.append("first in")
            first_in.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        first_in.wait(10)
        with hold(root, "h1", waiting=seen.append, poll_s=0.02):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_in.wait(10)
    time.sleep(0.3)
    assert order == ["first in"]  # the second is still waiting
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["build_hash"] == "h1"
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first in", "first out", "second in"]
    assert read_lock(lock_path(root)) is None  # released: no lock left


def test_the_lock_names_its_owner_and_keeps_its_heartbeat(tmp_path: Path) -> None:
    root = tmp_path / "shot" / "v001"
    with hold(root, "abc", heartbeat_s=0.05) as lock:
        first = read_lock(lock_path(root))
        time.sleep(0.3)
        later = read_lock(lock_path(root))
        assert lock.held()
    assert first is not None and later is not None
    assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
    assert first["build_hash"] == "abc"
    assert later["heartbeat"] > first["heartbeat"]
    assert not root.exists()  # the lock sits beside the version folder, it does not create it


def test_a_dead_owners_lock_is_broken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = tmp_path / "shot" / "v001"
    _write_lock(root, pid=gone.pid, host=socket.gethostname(), heartbeat=time.time())
    caplog.set_level(logging.WARNING, logger="rna_engine.media.lock")
    start = time.monotonic()
    with hold(root, "h1") as lock:
        assert lock.held()
    assert time.monotonic() - start < 2.0
    assert any(f"process {gone.pid}" in r.getMessage() for r in caplog.records)


def test_another_hosts_lock_is_broken_only_once_its_heartbeat_is_old(tmp_path: Path) -> None:
    root = tmp_path / "shot" / "v001"
    _write_lock(root, pid=1, host="render-elsewhere", heartbeat=time.time() - 120)
    with hold(root, "h1") as lock:  # 120 s without a heartbeat: stale on any host
        assert lock.held()

    _write_lock(root, pid=1, host="render-elsewhere", heartbeat=time.time())
    polls: list[dict[str, Any]] = []

    def give_up() -> None:
        if len(polls) >= 3:
            raise Cancelled("test")

    with pytest.raises(Cancelled), hold(root, "h1", waiting=polls.append, check=give_up):
        pytest.fail("took a live lock")
    assert [p["host"] for p in polls] == ["render-elsewhere"] * 3
    assert read_lock(lock_path(root))["nonce"] == "old"  # the live owner's lock is untouched


def test_a_locked_version_without_a_folder_is_taken(tmp_path: Path) -> None:
    root = tmp_path / "shot" / "v001"
    _write_lock(root, pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time())
    assert choose_version(tmp_path, "shot", 0, "h1").root == root  # the same build: join it
    assert choose_version(tmp_path, "shot", 0, "h2").root.name == "v002"  # others: next number


# -- two real builds of one spec, started together ---------------------------------------------


def test_two_identical_builds_started_together_fit_once(tmp_path: Path) -> None:
    shot = make_shot("tiny", seed=2, frames=4)
    write_shot(shot, tmp_path / "shot", truth=False, srgb=False)
    command = build_command(tmp_path / "shot", shot.reference_frame, tmp_path / "cache")
    env = {**os.environ, "RNA_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    errs = [err for _, err in results]
    waited = [e for e in errs if "waiting for it" in e]
    fitted = [e for e in errs if "waiting for it" not in e]
    assert len(waited) == 1 and len(fitted) == 1, errs
    assert "already built" in waited[0]
    assert "fit " not in waited[0] and "fit " in fitted[0]  # the waiter shows no fit progress
    build_dir = tmp_path / "cache" / "tiny"
    assert [p.name for p in version_dirs(build_dir)] == ["v001"]
    assert not lock_path(build_dir / "v001").exists()
    paths = BuildPaths(build_dir / "v001")
    status = read_status(paths)
    assert status is not None and status["state"] == "done"
    passes = sorted(p.name for p in paths.passes_dir.iterdir())
    assert passes == [f"rna.{n:04d}.exr" for n in shot.frame_numbers]  # no temporary files
