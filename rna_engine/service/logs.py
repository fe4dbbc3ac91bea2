"""The engine's logs (docs/protocol.md, "Logs"): one bounded set of files per engine start.

`setup_logging` (called by `rna-engine serve`) adds a `SessionLog` to the `rna_engine` logger:
`$RNA_HOME/logs/engine-<YYYYmmdd-HHMMSS>-<pid>.log` keeps the first `HEAD_BYTES` of the session
(its first line names the engine, pid and time), then `….tail.log` and `….tail.1.log` keep the
latest records, `TAIL_BYTES` each; the `KEEP_SESSIONS` newest sessions are kept, older ones are
removed when an engine starts. Every record is cut to `MAX_RECORD_BYTES`.

The console (the stderr handler `cli.py` set up, which the plugin's launcher sends to
`$RNA_HOME/logs/engine.stdout.log`) gets warnings and errors only, unless it is a terminal; when
the engine's stdout/stderr is a regular file, `ConsoleBound` stops writing to it once it passes
`CONSOLE_BYTES`. `LogThrottle` summarises repeated messages (rejected requests) and
`FailureLog` writes a traceback once per kind of failure. Besides `cli.py`, the only place
handlers are set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from rna_engine import __version__
from rna_engine.media.cache import pid_alive

HEAD_BYTES = 1 << 20
"""The first MiB of a session's log is kept whatever follows."""
TAIL_BYTES = 1 << 20
"""Size of each of the two rotating tail files of a session."""
TAIL_BACKUPS = 1
KEEP_SESSIONS = 5
"""Sessions (engine starts) whose logs are kept, the current one included."""
CONSOLE_BYTES = 1 << 20
"""Past this size, output to a stdout/stderr that is a regular file is dropped."""
MAX_RECORD_BYTES = 16 << 10
"""A longer record keeps its first 4 KiB and its end (a traceback's last lines)."""
FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
_SESSION_HEAD = re.compile(r"^engine-\d{8}-\d{6}-(\d+)\.log$")


def _clip_line(data: bytes, limit: int) -> bytes:
    """`data` within `limit` bytes: its start and its end, the middle replaced by a note."""
    if len(data) <= limit:
        return data
    note = f" …[{len(data) - limit} bytes cut]… ".encode()
    keep = max(0, limit - len(note))
    head = data[: keep // 4].decode("utf-8", "ignore").encode("utf-8")
    tail = data[len(data) - (keep - keep // 4) :].decode("utf-8", "ignore").encode("utf-8")
    return head + note + tail


class ConsoleBound:
    """Sends fds 1 and 2 to the null device once the regular file they write passes a size.

    The head of that file (the engine's start-up, an import error, the first warnings) is what
    is kept; a notice says where the rest went.
    """

    def __init__(self, limit_bytes: int, fds: Iterable[int] = (1, 2), notice: str = "") -> None:
        self.limit_bytes = limit_bytes
        self.notice = notice
        self._fds = [fd for fd in fds if _regular_file(fd)]

    @property
    def active(self) -> bool:
        return bool(self._fds)

    def check(self) -> None:
        """Cut every watched fd whose file is over the limit (an fstat per fd)."""
        for fd in list(self._fds):
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size > self.limit_bytes:
                    self._cut(fd)

    def _cut(self, fd: int) -> None:
        target = os.fstat(fd)
        same = [f for f in self._fds if _same_file(f, target)]
        message = f"\nrna-engine: output cut at {self.limit_bytes} bytes. {self.notice}\n"
        with contextlib.suppress(OSError):
            os.write(fd, message.encode("utf-8", "backslashreplace"))
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for f in same:
                os.dup2(devnull, f)
                self._fds.remove(f)
        finally:
            os.close(devnull)


def _regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _same_file(fd: int, target: os.stat_result) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)


class SessionLog(logging.Handler):
    """One engine session's log: a head file that is never rotated, then a rotating tail.

    Args:
        head: the head file (`engine-<stamp>-<pid>.log`); the tail files sit beside it.
        head_bytes: size of the head file, the closing note included.
        tail_bytes: size of each tail file; `tail_backups` older tail files are kept.
        max_record_bytes: a record is cut to this (at most `tail_bytes`).
        console: checked after every record.
    """

    def __init__(
        self,
        head: Path,
        head_bytes: int = HEAD_BYTES,
        tail_bytes: int = TAIL_BYTES,
        tail_backups: int = TAIL_BACKUPS,
        max_record_bytes: int = MAX_RECORD_BYTES,
        console: ConsoleBound | None = None,
    ) -> None:
        super().__init__()
        self.head_path = Path(head)
        self.tail_paths = tail_paths(self.head_path, tail_backups)
        self.head_bytes = head_bytes
        self.tail_bytes = tail_bytes
        self.max_record_bytes = min(max_record_bytes, tail_bytes)
        self.console = console
        self._head: BinaryIO | None = open(self.head_path, "ab")
        self._head_size = self._head.tell()
        self._tail: BinaryIO | None = None
        self._tail_size = 0

    def write_line(self, text: str) -> None:
        """Write one line as it is (the session's first line), under the handler's lock."""
        with self.lock:
            self._write(_clip_line(text.encode("utf-8", "backslashreplace"), self.max_record_bytes))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode("utf-8", "backslashreplace")
            self._write(_clip_line(line, self.max_record_bytes))
            if self.console is not None:
                self.console.check()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:
            for stream in (self._head, self._tail):
                if stream is not None:
                    stream.close()
            self._head = self._tail = None
        super().close()

    def _write(self, data: bytes) -> None:
        data += b"\n"
        if self._head is not None:
            note = f"(the head of this session ends here; see {self.tail_paths[0].name})\n"
            if self._head_size + len(data) + len(note) <= self.head_bytes:
                self._head_size += self._put(self._head, data)
                return
            self._put(self._head, note.encode())
            self._head.close()
            self._head = None
        if self._tail is not None and self._tail_size + len(data) > self.tail_bytes:
            self._rotate()
        if self._tail is None:
            self._tail = open(self.tail_paths[0], "ab")
            self._tail_size = self._tail.tell()
        self._tail_size += self._put(self._tail, data)

    def _rotate(self) -> None:
        assert self._tail is not None
        self._tail.close()
        self._tail = None
        paths = self.tail_paths
        for i in range(len(paths) - 1, 0, -1):  # .tail.1.log -> .tail.2.log, .tail.log -> .1
            with contextlib.suppress(OSError):
                os.replace(paths[i - 1], paths[i])
        with contextlib.suppress(OSError):
            self.tail_paths[0].unlink()  # no backups kept: start again

    @staticmethod
    def _put(stream: BinaryIO, data: bytes) -> int:
        stream.write(data)
        stream.flush()
        return len(data)


def tail_paths(head: Path, backups: int) -> list[Path]:
    """`<stem>.tail.log`, then `<stem>.tail.1.log` … `<stem>.tail.<backups>.log`."""
    stem = head.name.removesuffix(".log")
    names = [f"{stem}.tail.log", *(f"{stem}.tail.{i}.log" for i in range(1, backups + 1))]
    return [head.with_name(name) for name in names]


def session_head(logs: Path, now: float | None = None, pid: int | None = None) -> Path:
    """`<logs>/engine-<YYYYmmdd-HHMMSS>-<pid>.log` for a session starting now."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return Path(logs) / f"engine-{stamp}-{os.getpid() if pid is None else pid}.log"


def prune_sessions(logs: Path, keep: int) -> list[Path]:
    """Remove the files of all but the `keep` newest sessions; a live engine's are kept.

    Returns the head files removed.
    """
    heads = sorted(p for p in Path(logs).glob("engine-*.log") if _SESSION_HEAD.match(p.name))
    removed = []
    for head in heads[: max(0, len(heads) - keep)]:
        match = _SESSION_HEAD.match(head.name)
        assert match is not None
        pid = int(match.group(1))
        if pid != os.getpid() and sys.platform != "win32" and pid_alive(pid):
            continue  # still running (its files would be unlinked under it)
        stem = head.name.removesuffix(".log")
        for path in [head, *head.parent.glob(f"{stem}.tail*.log")]:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(head)
    return removed


def _quiet_console(root: logging.Logger) -> None:
    """Console handlers (cli.py's stderr) show warnings and errors only, unless a terminal."""
    with contextlib.suppress(AttributeError, ValueError):
        if sys.stderr.isatty():
            return
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(max(handler.level, logging.WARNING))


def setup_logging(
    rna_home: Path,
    verbose: bool = False,
    *,
    head_bytes: int = HEAD_BYTES,
    tail_bytes: int = TAIL_BYTES,
    keep_sessions: int = KEEP_SESSIONS,
    console_bytes: int = CONSOLE_BYTES,
) -> Path:
    """Start this session's log (see the module); returns its head file.

    `console_bytes=0` leaves stdout/stderr unbounded (tests, whose capture files they are).
    """
    logs = Path(rna_home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prune_sessions(logs, max(0, keep_sessions - 1))
    head = session_head(logs)
    console = None
    if console_bytes > 0:
        console = ConsoleBound(console_bytes, notice=f"The engine's log: {head}")
    handler = SessionLog(head, head_bytes, tail_bytes, console=console)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.write_line(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} session start: rna-engine {__version__}, "
        f"pid {os.getpid()}, python {sys.version.split()[0]}, argv {sys.argv[1:]}"
    )
    root = logging.getLogger("rna_engine")
    _quiet_console(root)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return head


class LogThrottle:
    """Logs the first `burst` messages of each key per `window_s`; then one line with the count.

    Rejected requests go through it, so 10 000 bad requests write tens of lines, not 10 000.
    `tick()` (the connection gate calls it a few times a second) writes the summary of a window
    that has ended.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._counts: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self._level = logging.INFO

    def note(self, key: str, msg: str, *args: object, level: int = logging.INFO) -> None:
        with self._lock:
            summary = self._roll(force=False)
            count = self._counts[key] = self._counts.get(key, 0) + 1
            if count > self.burst:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                self._level = max(self._level, level)
        self._say(summary)
        if count <= self.burst:
            self._log.log(level, msg, *args)

    def tick(self, force: bool = False) -> None:
        """Write the summary of the last window if it has ended (or now, with `force`)."""
        with self._lock:
            summary = self._roll(force)
        self._say(summary)

    def _roll(self, force: bool) -> tuple[int, str] | None:
        """With the lock held: start a new window if due; the summary of the old one."""
        now = self._clock()
        if not force and now - self._start < self.window_s:
            return None
        summary = None
        if self._suppressed:
            counts = ", ".join(f"{k} {n}" for k, n in sorted(self._suppressed.items()))
            total = sum(self._suppressed.values())
            text = f"{total} more not logged in the last {now - self._start:.0f}s: {counts}"
            summary = (self._level, text)
        self._start = now
        self._counts.clear()
        self._suppressed.clear()
        self._level = logging.INFO
        return summary

    def _say(self, summary: tuple[int, str] | None) -> None:
        if summary is not None:
            self._log.log(summary[0], "%s", summary[1])


class FailureLog:
    """Logs the traceback of a failure the first time its kind (type and place) is seen; later
    ones of that kind as one counted line through `throttle`."""

    def __init__(self, logger: logging.Logger, throttle: LogThrottle, kinds: int = 256) -> None:
        self._log = logger
        self._throttle = throttle
        self._kinds = kinds
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def log(self, what: str, err: BaseException) -> None:
        """`<what> failed` with the traceback, or a short line if this kind was logged before."""
        frames = traceback.extract_tb(err.__traceback__)
        place = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        kind = f"{type(err).__name__} at {place}"
        with self._lock:
            first = kind not in self._seen and len(self._seen) < self._kinds
            if first:
                self._seen.add(kind)
        if first:
            self._log.error("%s failed", what, exc_info=err)
        else:
            text = str(err)[:200]
            self._throttle.note(
                "internal", "%s failed again: %s: %s", what, kind, text, level=logging.ERROR
            )
