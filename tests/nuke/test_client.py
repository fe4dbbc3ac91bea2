"""Tests of `rna_nuke/{protocol,client,launcher}.py`, driven against the real `rna_engine.service`.

The contract test of docs/protocol.md: the plugin's framing and the engine's are written separately;
here they meet. The engine runs in a thread with a fake pipeline, behind a TCP proxy the tests can
cut (dropped connection) or stop (engine gone); the launcher tests start real processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rna_engine.media.cache import BuildPaths, StatusFile, write_json_atomic
from rna_engine.service import Service
from rna_nuke import protocol
from rna_nuke.client import EngineClient, recover_status
from rna_nuke.launcher import find_engine, start_engine
from rna_nuke.protocol import EngineError, FrameReader

REPO = Path(__file__).resolve().parents[2]
STAGES = {"ingest": 1.0, "fit": 2.0, "bake": 1.0}


class FakePipeline:
    """Keeps `status.json` current and reports progress; `gate` holds it in `fit` (cancel works)."""

    def __init__(self, step_s: float = 0.02) -> None:
        self.step_s = step_s
        self.gate: threading.Event | None = None
        self.calls = 0

    def __call__(self, spec: Any, ctx: Any) -> BuildPaths:
        self.calls += 1
        paths = BuildPaths(Path(spec.out) / spec.name / "v001")
        status = StatusFile(paths, "fake-hash", min_interval_s=0.0)
        status.set(state="running", started=time.time())
        ctx.reporter.add_sink(status)
        for stage in STAGES:
            for i in range(4):
                ctx.cancel.check()
                ctx.reporter.update(stage, i / 4, f"{stage} {i}")
                while stage == "fit" and self.gate is not None and not self.gate.wait(0.02):
                    ctx.cancel.check()  # held at the start of `fit`
                time.sleep(self.step_s)
        status.set(state="done", progress=1.0, stage="bake", finished=time.time())
        return paths


class Proxy:
    """A TCP relay to the engine; `cut()` drops live connections, `close()` also stops listening.

    The first `drop_first` connections are read, then closed (reset, with `reset`) without a
    reply and never reach the engine.
    """

    def __init__(self, upstream_port: int, drop_first: int = 0, reset: bool = False) -> None:
        self.upstream_port = upstream_port
        self.drop_first = drop_first
        self.reset = reset
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                continue
            if self.dropped < self.drop_first:
                self.dropped += 1
                self._drop(down)
                continue
            with self._lock:
                if self._closed:
                    down.close()
                    break
                up = socket.create_connection(("127.0.0.1", self.upstream_port))
                self.accepted += 1
                self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _drop(self, sock: socket.socket) -> None:
        sock.settimeout(2.0)
        try:
            sock.recv(1 << 16)  # the request has arrived
        except OSError:
            pass
        if self.reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._socks.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()  # new connections are refused from now on
        self.cut()


@pytest.fixture
def engine(tmp_path: Path):
    """(service, runner, proxy, client through the proxy)."""
    runner = FakePipeline()
    svc = Service(
        tmp_path / "home", device="cpu", runner=runner, stage_weights=STAGES, heartbeat_s=0.2
    )
    svc.start()
    proxy = Proxy(svc.port)
    discovery = tmp_path / "proxied.json"
    write_json_atomic(discovery, {**svc.discovery(), "port": proxy.port})
    yield svc, runner, proxy, EngineClient(discovery, connect_timeout_s=0.5, retries=2)
    proxy.close()
    svc.stop(timeout_s=5.0)


def spec_for(tmp_path: Path, name: str = "shot") -> dict[str, Any]:
    return {
        "plate": str(tmp_path / "plate.####.exr"),
        "roi": str(tmp_path / "roi.exr"),
        "reference_frame": 1,
        "out": str(tmp_path / "cache"),
        "name": name,
        "device": "cpu",
    }


def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- protocol -----------------------------------------------------------------------------------


def test_frames_round_trip_and_are_capped() -> None:
    message = protocol.make_request("hello", "tok", {"a": [1, 2]}, request_id="r1")
    frame = protocol.encode_frame(message)
    assert frame[:4] == len(frame[4:]).to_bytes(4, "big")
    assert protocol.decode_payload(frame[4:]) == message
    with pytest.raises(EngineError) as err:
        protocol.encode_frame({"x": "y" * (1 << 20)})
    assert err.value.code == "too_large"
    with pytest.raises(EngineError) as err:
        protocol.decode_payload(b"[1]")
    assert err.value.code == "protocol"


def test_frame_reader_joins_split_frames_and_polls() -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = FrameReader(a)
        assert reader.read(0.05) is None  # nothing yet: returns, does not block
        frames = protocol.encode_frame({"n": 1}) + protocol.encode_frame({"n": 2})
        b.sendall(frames[:3])
        assert reader.read(0.05) is None
        b.sendall(frames[3:10])
        assert reader.read(0.05) is None
        b.sendall(frames[10:])
        assert reader.read(0.5) == {"n": 1}
        assert reader.read(0.5) == {"n": 2}
        b.close()
        with pytest.raises(ConnectionError):
            reader.read(0.5)


def test_error_reply_raises_engine_error() -> None:
    reply = {"v": 1, "id": "x", "ok": False, "error": {"code": "not_found", "message": "job z"}}
    with pytest.raises(EngineError) as err:
        protocol.reply_body(reply)
    assert (err.value.code, err.value.message) == ("not_found", "job z")
    with pytest.raises(EngineError) as err:
        protocol.reply_body({"v": 2, "id": "x", "ok": True, "body": {}})
    assert err.value.code == "version_mismatch"


# -- client against the engine ------------------------------------------------------------------


def test_no_engine_is_a_clear_error(tmp_path: Path) -> None:
    client = EngineClient(tmp_path / "engine.json", retries=1)
    with pytest.raises(EngineError) as err:
        client.hello()
    assert err.value.code == "no_engine" and "engine.json" in err.value.message
    assert find_engine(tmp_path) is None
    write_json_atomic(tmp_path / "engine.json", {"pid": 2**22 + 7, "port": 1, "token": "t"})
    assert find_engine(tmp_path) is None  # a stale discovery file (dead pid)


def test_submit_subscribe_done(engine, tmp_path: Path) -> None:
    svc, runner, _, client = engine
    hello = client.hello()
    assert hello["protocol"] == 1 and hello["device"] == "cpu"
    job_id = client.submit(spec_for(tmp_path))
    assert client.submit(spec_for(tmp_path)) == job_id  # identical spec: the same job
    events: list[dict] = []
    final = client.subscribe(job_id, events.append, lambda: False)
    assert final["state"] == "done" and final["progress"] == 1.0
    assert events[-1] == final and len(events) >= 3
    assert final["status_path"] == str(tmp_path / "cache" / "shot" / "v001" / "status.json")
    assert client.status(job_id)["state"] == "done"
    assert [j["job_id"] for j in client.jobs()] == [job_id]
    assert runner.calls == 1
    with pytest.raises(EngineError) as err:
        client.submit({"plate": "/p.exr"})
    assert err.value.code == "invalid_spec" and "roi" in err.value.message
    with pytest.raises(EngineError) as err:
        client.status("nope")
    assert err.value.code == "not_found"


def test_cancel_while_subscribed(engine, tmp_path: Path) -> None:
    svc, runner, _, client = engine
    runner.gate = threading.Event()
    job_id = client.submit(spec_for(tmp_path))
    result: dict[str, Any] = {}
    follower = threading.Thread(
        target=lambda: result.update(client.subscribe(job_id, lambda e: None, lambda: False))
    )
    follower.start()
    wait_for(lambda: client.status(job_id)["stage"] == "fit")
    t0 = time.monotonic()
    assert client.cancel(job_id)["cancel_requested"] is True
    follower.join(5.0)
    assert result["state"] == "cancelled" and time.monotonic() - t0 < 3.0
    assert recover_status(result["status_path"])["state"] == "cancelled"


def test_should_stop_returns_the_last_event(engine, tmp_path: Path) -> None:
    svc, runner, _, client = engine
    runner.gate = threading.Event()
    job_id = client.submit(spec_for(tmp_path))
    events: list[dict] = []
    last = client.subscribe(job_id, events.append, lambda: len(events) >= 2)
    assert last == events[-1] and last["state"] in ("queued", "running")
    client.cancel(job_id)


def test_dropped_connection_resubscribes(engine, tmp_path: Path) -> None:
    svc, runner, proxy, client = engine
    runner.gate = threading.Event()
    job_id = client.submit(spec_for(tmp_path))
    events: list[dict] = []
    result: dict[str, Any] = {}
    follower = threading.Thread(
        target=lambda: result.update(client.subscribe(job_id, events.append, lambda: False))
    )
    follower.start()
    wait_for(lambda: any(e["stage"] == "fit" for e in events))
    before = proxy.accepted
    proxy.cut()  # the connection drops mid-stream; the engine keeps running
    wait_for(lambda: proxy.accepted > before)  # the client came back
    runner.gate.set()
    follower.join(5.0)
    assert result["state"] == "done" and "recovered" not in result
    assert any(e["stage"] == "bake" for e in events)


def test_engine_gone_recovers_from_status_json(engine, tmp_path: Path) -> None:
    svc, runner, proxy, client = engine
    runner.gate = threading.Event()
    job_id = client.submit(spec_for(tmp_path))
    events: list[dict] = []
    result: dict[str, Any] = {}
    follower = threading.Thread(
        target=lambda: result.update(
            client.subscribe(job_id, events.append, lambda: False, reconnect_timeout_s=10.0)
        )
    )
    follower.start()
    wait_for(lambda: any(e["stage"] == "fit" for e in events))
    proxy.close()  # from the client's side the engine is gone...
    client.discovery_path.unlink()
    runner.gate.set()  # ...while the build finishes and says so in status.json
    follower.join(8.0)
    assert result["state"] == "done" and result["recovered"] is True
    assert result["status_path"] == str(tmp_path / "cache" / "shot" / "v001" / "status.json")


def test_engine_lost_with_an_unfinished_status_ends_failed(engine, tmp_path: Path) -> None:
    svc, runner, proxy, client = engine
    runner.gate = threading.Event()
    job_id = client.submit(spec_for(tmp_path))
    wait_for(lambda: client.status(job_id)["stage"] == "fit")
    proxy.close()
    t0 = time.monotonic()
    final = client.subscribe(
        job_id,
        lambda e: None,
        lambda: False,
        reconnect_timeout_s=1.0,
        status_path=tmp_path / "cache" / "shot" / "v001" / "status.json",
    )
    assert 1.0 <= time.monotonic() - t0 < 4.0
    assert final["state"] == "failed" and final["error"]["code"] == "engine_lost"
    assert final["stage"] == "fit"  # what status.json last said
    runner.gate.set()


def test_restarted_engine_that_forgot_the_job_falls_back_to_disk(engine, tmp_path: Path) -> None:
    svc, runner, proxy, client = engine
    status_path = tmp_path / "old" / "status.json"
    write_json_atomic(status_path, {"state": "done", "stage": "bake", "progress": 1.0})
    final = client.subscribe(
        "0123456789abcdef", lambda e: None, lambda: False, status_path=status_path
    )
    assert final["state"] == "done" and final["recovered"] is True
    final = client.subscribe("0123456789abcdef", lambda e: None, lambda: False)
    assert final["state"] == "failed" and final["error"]["code"] == "engine_lost"


@pytest.mark.parametrize("reset", [False, True])
def test_a_request_dropped_before_its_reply_is_sent_again(
    engine, tmp_path: Path, reset: bool
) -> None:
    svc, runner, _, _ = engine
    proxy = Proxy(svc.port, drop_first=2, reset=reset)
    discovery = tmp_path / "dropping.json"
    write_json_atomic(discovery, {**svc.discovery(), "port": proxy.port})
    client = EngineClient(discovery)
    try:
        t0 = time.monotonic()
        assert client.hello()["pid"] == os.getpid()  # third attempt, after 0.1 + 0.3 s
        assert 0.4 <= time.monotonic() - t0 < 2.0
        assert (proxy.dropped, proxy.accepted) == (2, 1)
        proxy.drop_first = proxy.dropped + 1  # a submit is not sent again
        with pytest.raises(EngineError) as err:
            client.submit(spec_for(tmp_path))
        assert err.value.code == "unreachable" and "build.submit" in err.value.message
        assert (proxy.dropped, proxy.accepted) == (3, 1)
        assert client.jobs() == [] and runner.calls == 0
        proxy.drop_first = proxy.dropped + 3  # three drops: out of attempts
        with pytest.raises(EngineError) as err:
            client.status("0123456789abcdef")
        assert err.value.code == "unreachable" and proxy.dropped == proxy.drop_first
    finally:
        proxy.close()


def test_idle_anonymous_connections_do_not_lock_out_the_plugin(tmp_path: Path) -> None:
    """Issue #35: 64 connections that send nothing filled every slot; `hello` failed."""
    svc = Service(tmp_path / "home", device="cpu", runner=FakePipeline(), stage_weights=STAGES)
    svc.start()
    idle: list[socket.socket] = []
    client = EngineClient(svc.discovery_path, resend_attempts=1)  # no help from resending
    try:
        for _ in range(3):
            idle += [socket.create_connection(("127.0.0.1", svc.port)) for _ in range(64)]
            t0 = time.monotonic()
            assert client.hello()["pid"] == os.getpid()
            assert time.monotonic() - t0 < 1.0
        job_id = client.submit(spec_for(tmp_path))
        assert client.subscribe(job_id, lambda e: None, lambda: False)["state"] == "done"
    finally:
        for sock in idle:
            sock.close()
        svc.stop(timeout_s=5.0)


# -- launcher: real processes -------------------------------------------------------------------


def _engine_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("RNA_HOME", str(home))
    monkeypatch.setenv("RNA_ENGINE_PYTHONPATH", str(REPO))  # the launcher drops PYTHONPATH


def test_start_find_ensure_and_shutdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    _engine_env(monkeypatch, home)
    client = start_engine(sys.executable, timeout_s=30.0, device="cpu")
    try:
        info = client.hello()
        data = json.loads((home / "engine.json").read_text())
        assert info["pid"] == data["pid"] != os.getpid()
        assert stat.S_IMODE((home / "engine.json").stat().st_mode) == 0o600
        found = find_engine()
        assert found is not None and found.hello()["pid"] == info["pid"]
        from rna_nuke.launcher import ensure_engine

        assert ensure_engine().hello()["pid"] == info["pid"]  # found, not started again
    finally:
        client.shutdown()
    wait_for(lambda: not (home / "engine.json").exists(), timeout_s=10.0)
    assert find_engine() is None


def test_start_failures_name_the_interpreter_and_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    _engine_env(monkeypatch, home)
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(EngineError) as err:
        start_engine(missing, timeout_s=5.0)
    assert err.value.code == "engine_start" and missing in err.value.message
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'No module named rna_engine' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("RNA_ENGINE_PYTHON", str(broken))
    with pytest.raises(EngineError) as err:
        start_engine(timeout_s=5.0)
    message = err.value.message
    assert str(broken) in message and "code 3" in message
    assert str(home / "logs" / "engine.stdout.log") in message
    assert "No module named rna_engine" in message
    broken.write_text("#!/bin/sh\necho 'second start' >&2\nexit 3\n")
    with pytest.raises(EngineError) as err:
        start_engine(timeout_s=5.0)
    assert "second start" in err.value.message and "No module" not in err.value.message
    previous = home / "logs" / "engine.stdout.log.1"  # the start before, kept once
    assert previous.read_text() == "No module named rna_engine\n"


# -- the plugin stays standard-library only -----------------------------------------------------


def _python39() -> list[str] | None:
    """A working Python 3.9, if one is installed (PATH, or a pyenv version)."""
    candidates = [shutil.which("python3.9")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(str(p) for p in pyenv_root.glob("versions/3.9*/bin/python3.9"))
    for exe in filter(None, candidates):
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return [exe, "-I"]
    return None


def test_rna_nuke_imports_with_the_standard_library_only() -> None:
    python = _python39() or [sys.executable, "-I", "-S"]
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "before = set(sys.modules)\n"
        "import rna_nuke.client, rna_nuke.launcher, rna_nuke.protocol\n"
        "new = sorted(set(sys.modules) - before)\n"
        "files = {m: getattr(sys.modules[m], '__file__', None) for m in new}\n"
        "print(json.dumps({'version': sys.version_info[:2], 'modules': files}))\n"
    )
    out = subprocess.run(
        [*python, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    modules: dict[str, str | None] = result["modules"]
    assert "rna_nuke.client" in modules  # the check below sees what was imported
    # this interpreter's list (3.10+) also names every 3.9 standard module
    foreign = sorted(
        m
        for m in modules
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "rna_nuke"
    )
    assert foreign == []
    assert not [f for f in modules.values() if f and "site-packages" in f]
    if python[0] != sys.executable:
        assert result["version"] == [3, 9]
