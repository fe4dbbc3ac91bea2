"""One writer per cache version folder: `<cache_root>/<name>/v001.lock` (docs/cache.md).

A build holds the lock of its version while it runs, so two identical builds started together
(two artists pressing Build, a farm retry while the first task still runs) never write into the
same folder: the second waits, then finds the first one's result `done` and reuses it.

The lock is a small JSON file beside the version folder, holding its owner (`pid`, `host`,
`build_hash`, `started`, and a `heartbeat` refreshed every `HEARTBEAT_INTERVAL_S`). It is taken
with `os.link` of a fully written temporary file, which fails when the lock exists, atomically,
also on NFS; a reader never sees a half-written lock. A lock whose owner died is stale by THE
rule of `cache.status_lost` (its pid gone on this host, or its heartbeat older than
`LOST_AFTER_S` on any host) and is broken by the next build that wants it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .cache import HEARTBEAT_INTERVAL_S, LOST_AFTER_S, atomic_path, status_lost

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
POLL_S = 0.5
"""How often a waiting build looks at the lock again, seconds."""


def lock_path(version_root: Path) -> Path:
    """`<name>/v001.lock` for the version folder `<name>/v001`."""
    return version_root.with_name(version_root.name + LOCK_SUFFIX)


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's owner, or None when there is no lock; `{}` when it is unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def lock_stale(owner: dict[str, Any], now: float | None = None) -> str | None:
    """Why a lock's owner is no longer running (`cache.status_lost`'s rule), or None."""
    return status_lost({**owner, "state": "running"}, now)


def describe(owner: dict[str, Any]) -> str:
    """`process 123 on render04 (since 14:02:11)`."""
    since = owner.get("started")
    when = time.strftime(" (since %H:%M:%S)", time.localtime(since)) if since else ""
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}{when}"


class VersionLock:
    """The held lock of one version folder; `release()` (or leaving `hold`) gives it back."""

    def __init__(self, path: Path, owner: dict[str, Any], heartbeat_s: float) -> None:
        self.path = path
        self.owner = owner
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lock {path.name}", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the file on disk is still this owner's (a stale-lock breaker may take it)."""
        current = read_lock(self.path)
        return bool(current) and current.get("nonce") == self.owner["nonce"]

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if self.held():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _beat(self) -> None:
        failed = False  # warn of the first failed write only
        while not self._stop.wait(self._heartbeat_s):
            if not self.held():
                log.warning("%s: the lock was taken over; this build no longer holds it", self.path)
                return
            self.owner["heartbeat"] = time.time()
            try:
                _write_owner(self.path, self.owner)
            except OSError as err:  # a full or vanished disk: the next beat tries again
                level = logging.DEBUG if failed else logging.WARNING
                log.log(level, "%s: lock heartbeat not written (%s)", self.path, err)
                failed = True


def _write_owner(path: Path, owner: dict[str, Any]) -> None:
    """Replace the lock's record with `owner` (its heartbeat), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(owner, sort_keys=True) + "\n")


def _try_take(path: Path, owner: dict[str, Any]) -> bool:
    """Create the lock if there is none; whether this call created it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(owner, sort_keys=True) + "\n")
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _break(path: Path, stale: dict[str, Any], why: str) -> None:
    """Remove a stale lock, unless another build replaced it meanwhile."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another build broke it first
    moved = read_lock(aside) or {}
    if moved.get("nonce") != stale.get("nonce"):  # a fresh lock, taken since we read it
        with contextlib.suppress(OSError):
            os.link(aside, path)
    else:
        log.warning("%s: removed the stale lock of %s: %s", path, describe(stale), why)
    aside.unlink(missing_ok=True)


@contextmanager
def hold(
    version_root: Path,
    build_hash: str,
    waiting: Callable[[dict[str, Any]], None] | None = None,
    check: Callable[[], None] | None = None,
    heartbeat_s: float = HEARTBEAT_INTERVAL_S,
    poll_s: float = POLL_S,
) -> Iterator[VersionLock]:
    """Hold the lock of `version_root`, waiting while another live build holds it.

    Args:
        waiting: called with the owner's record on each poll while another build holds it.
        check: called on each poll (e.g. `CancelToken.check`, which raises to stop waiting).
    """
    path = lock_path(Path(version_root))
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "build_hash": build_hash,
        "started": now,
        "heartbeat": now,
        "heartbeat_interval_s": heartbeat_s,
        "nonce": secrets.token_hex(8),
    }
    while not _try_take(path, owner):
        current = read_lock(path)
        if current is None:
            continue  # released between the two calls
        why = lock_stale(current) if current else _unreadable_stale(path)
        if why:
            _break(path, current, why)
            continue
        if waiting is not None:
            waiting(current)
        if check is not None:
            check()
        time.sleep(poll_s)
    lock = VersionLock(path, owner, heartbeat_s)
    try:
        yield lock
    finally:
        lock.release()


def _unreadable_stale(path: Path) -> str | None:
    """A lock that cannot be read is stale once it has not changed for `LOST_AFTER_S`."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    return f"unreadable and unchanged for {age:.0f} s" if age > LOST_AFTER_S else None


__all__ = [
    "LOCK_SUFFIX",
    "VersionLock",
    "describe",
    "hold",
    "lock_path",
    "lock_stale",
    "read_lock",
]
