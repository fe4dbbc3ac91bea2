"""Tests of `rna_engine/service/`: the socket protocol of docs/protocol.md.

Most tests run the service in a thread with a fake pipeline (progress, `status.json`, cancel);
the subprocess tests run the real `rna-engine serve`. Raw frames are built here with `struct`,
not with the service's own framing, so a framing bug cannot hide behind itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import malformed_frames
import pytest

from rna_engine import __version__
from rna_engine.commands import status as status_command
from rna_engine.errors import InputError
from rna_engine.media.cache import BuildPaths, StatusFile, write_json_atomic
from rna_engine.service import Service, setup_logging
from rna_engine.service.logs import (
    ConsoleBound,
    FailureLog,
    LogThrottle,
    SessionLog,
    session_head,
    tail_paths,
)

STAGES = {"ingest": 1.0, "fit": 3.0, "bake": 1.0}


class FakePipeline:
    """Stands in for `pipeline.run_build`: keeps `status.json` current, reports progress through
    every stage, honours cancel between steps; `gate` (when given) holds it in `fit`."""

    def __init__(self, steps: int = 4, step_s: float = 0.01, fail: str = "") -> None:
        self.steps = steps
        self.step_s = step_s
        self.fail = fail
        self.gate: threading.Event | None = None
        self.calls: list[str] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, spec: Any, ctx: Any) -> BuildPaths:
        paths = BuildPaths(Path(spec.out) / spec.name / "v001")
        status = StatusFile(paths, "fake-hash")
        status.set(state="running", started=time.time())
        ctx.reporter.add_sink(status)
        with self._lock:
            self.calls.append(spec.name)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            for stage in STAGES:
                for i in range(self.steps):
                    ctx.cancel.check()
                    if stage == "fit" and self.gate is not None:
                        while not self.gate.wait(0.02):
                            ctx.cancel.check()
                    if self.fail and stage == "fit":
                        raise InputError(self.fail)
                    ctx.reporter.update(stage, i / self.steps, f"{stage} step {i}")
                    time.sleep(self.step_s)
                ctx.reporter.update(stage, 1.0, f"{stage} done")
            status.set(state="done", progress=1.0, finished=time.time())
            return paths
        finally:
            with self._lock:
                self.running -= 1


class Raw:
    """A bare protocol client: struct framing, one socket."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.token = token
        self.count = 0

    def send_bytes(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send(self, type_: str, body: Any = None, **envelope: Any) -> str:
        self.count += 1
        request = {
            "v": 1,
            "id": f"r{self.count}",
            "type": type_,
            "token": self.token,
            "body": body if body is not None else {},
        }
        request.update(envelope)
        self.send_bytes(json.dumps(request).encode())
        return request["id"]

    def recv(self) -> dict[str, Any]:
        header = self._exact(4)
        (length,) = struct.unpack(">I", header)
        return json.loads(self._exact(length))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def call(self, type_: str, body: Any = None, **envelope: Any) -> dict[str, Any]:
        request_id = self.send(type_, body, **envelope)
        reply = self.recv()
        assert reply["id"] == request_id
        return reply

    def close(self) -> None:
        self.sock.close()


def spec_for(tmp_path: Path, name: str = "shot", **extra: Any) -> dict[str, Any]:
    return {
        "plate": str(tmp_path / "plate.####.exr"),
        "roi": str(tmp_path / "roi.exr"),
        "reference_frame": 1001,
        "out": str(tmp_path / "cache"),
        "name": name,
        "device": "cpu",
        "settings": {"preset": "draft"},
        **extra,
    }


@pytest.fixture
def runner() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def service(tmp_path: Path, runner: FakePipeline):
    svc = Service(
        tmp_path / "home",
        device="cpu",
        runner=runner,
        stage_weights=STAGES,
        frame_timeout_s=0.5,
        idle_timeout_s=10.0,
        heartbeat_s=0.2,
    )
    svc.start()
    yield svc
    svc.stop(timeout_s=5.0)


def client(svc: Service, token: str | None = None) -> Raw:
    return Raw(svc.port, svc.token if token is None else token)


def wait_state(svc: Service, job_id: str, states: tuple[str, ...], timeout_s: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout_s
    c = client(svc)
    try:
        while True:
            body = c.call("job.status", {"job_id": job_id})["body"]
            if body["state"] in states or time.monotonic() > deadline:
                return body
            time.sleep(0.02)
    finally:
        c.close()


def subscribe_all(svc: Service, job_id: str) -> tuple[dict, list[dict]]:
    c = client(svc)
    try:
        request_id = c.send("job.subscribe", {"job_id": job_id})
        reply = c.recv()
        assert reply["ok"] and reply["id"] == request_id
        events = []
        while True:
            frame = c.recv()
            assert frame["type"] == "event" and frame["id"] == request_id
            events.append(frame["body"])
            if frame["body"]["state"] in ("done", "failed", "cancelled"):
                return reply["body"], events
    finally:
        c.close()


def test_discovery_file_is_private_and_hello_answers(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "home" / "engine.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data == {
        "pid": os.getpid(),
        "port": service.port,
        "token": service.token,
        "protocol": 1,
        "version": __version__,
        "device": "cpu",
    }
    assert len(data["token"]) >= 32
    reply = client(service).call("hello")
    assert reply["ok"] and reply["v"] == 1
    assert reply["body"]["version"] == __version__ and reply["body"]["protocol"] == 1
    assert "build.submit" in reply["body"]["capabilities"]["types"]


def test_wrong_or_missing_token_is_unauthorized_and_does_nothing(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    bad = client(service, token="not-the-token")
    reply = bad.call("build.submit", spec_for(tmp_path))
    assert reply["ok"] is False and reply["error"]["code"] == "unauthorized"
    missing = client(service)
    reply = missing.call("shutdown", token=None)
    assert reply["error"]["code"] == "unauthorized"
    time.sleep(0.1)
    jobs = client(service).call("jobs.list")["body"]["jobs"]
    assert jobs == [] and runner.calls == []
    assert client(service).call("hello")["ok"]  # shutdown was not obeyed


def test_submit_streams_progress_until_done(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    # 4 steps a stage, each over half the tracker's 0.2 s throttle: several events per stage,
    # also on a loaded machine (0.05 s gave 2 events on a fresh-clone CI run)
    runner.step_s = 0.12
    submitted = client(service).call("build.submit", spec_for(tmp_path))["body"]
    assert submitted["existing"] is False
    first, events = subscribe_all(service, submitted["job_id"])
    assert first["job_id"] == submitted["job_id"]
    final = events[-1]
    assert final["state"] == "done" and final["progress"] == 1.0
    running = [e for e in events if e["state"] == "running" and e["stage"] and not e["heartbeat"]]
    progress = [e["progress"] for e in running]
    assert progress == sorted(progress) and len(progress) >= 3 and progress[0] < 1
    assert {e["stage"] for e in running} >= {"fit", "bake"}  # ingest may end before we subscribe
    # overall = done stages + weight * stage fraction; weights 1:3:1 → offsets 0, 0.2, 0.8
    offset, weight = (
        {"ingest": 0.0, "fit": 0.2, "bake": 0.8},
        {"ingest": 0.2, "fit": 0.6, "bake": 0.2},
    )
    for e in running:
        expected = offset[e["stage"]] + weight[e["stage"]] * e["stage_progress"]
        assert e["progress"] == pytest.approx(expected, abs=1e-3)
    version = tmp_path / "cache" / "shot" / "v001"
    assert final["cache_dir"] == str(version)
    assert final["status_path"] == str(version / "status.json")
    assert json.loads((version / "status.json").read_text())["state"] == "done"


def test_identical_spec_returns_the_existing_job(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    c = client(service)
    a = c.call("build.submit", spec_for(tmp_path))["body"]
    # the same spec spelled differently (defaults written out) is the same job
    b = c.call("build.submit", spec_for(tmp_path, version=0, holdout=""))["body"]
    other = c.call("build.submit", spec_for(tmp_path, name="other"))["body"]
    assert a["job_id"] == b["job_id"] and b["existing"] is True
    assert other["job_id"] != a["job_id"]
    wait_state(service, a["job_id"], ("done",))
    wait_state(service, other["job_id"], ("done",))
    again = c.call("build.submit", spec_for(tmp_path))["body"]
    assert again == {"job_id": a["job_id"], "state": "done", "existing": True}
    assert sorted(runner.calls) == ["other", "shot"]


def test_cancel_stops_the_job_and_finalises_status_json(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    runner.gate = threading.Event()  # holds the job in `fit` until cancelled
    c = client(service)
    job_id = c.call("build.submit", spec_for(tmp_path, version=1))["body"]["job_id"]
    status_path = tmp_path / "cache" / "shot" / "v001" / "status.json"
    # the spec names its version, so the job knows its status.json from the start
    assert c.call("job.status", {"job_id": job_id})["body"]["status_path"] == str(status_path)
    assert wait_state(service, job_id, ("running",))["state"] == "running"
    t0 = time.monotonic()
    reply = c.call("job.cancel", {"job_id": job_id})["body"]
    assert reply["cancel_requested"] is True
    final = wait_state(service, job_id, ("cancelled", "failed", "done"), timeout_s=3.0)
    assert final["state"] == "cancelled" and time.monotonic() - t0 < 3.0
    on_disk = json.loads(status_path.read_text())
    assert on_disk["state"] == "cancelled" and on_disk["finished"] is not None
    # a cancelled job runs again when submitted again (same id, next attempt)
    runner.gate.set()
    again = c.call("build.submit", spec_for(tmp_path, version=1))["body"]
    assert again["job_id"] == job_id and again["existing"] is False
    assert wait_state(service, job_id, ("done",))["attempt"] == 2


def test_failed_job_reports_the_input_error(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    runner.fail = "plate.1003.exr: truncated, 12 of 48 rows"
    job_id = client(service).call("build.submit", spec_for(tmp_path))["body"]["job_id"]
    final = wait_state(service, job_id, ("failed", "done"))
    assert final["state"] == "failed"
    assert final["error"] == {"code": "input", "message": runner.fail}
    on_disk = json.loads((tmp_path / "cache" / "shot" / "v001" / "status.json").read_text())
    assert on_disk["state"] == "failed" and on_disk["error"]["message"] == runner.fail


def test_jobs_run_one_at_a_time_and_two_clients_follow_one_job(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    runner.gate = threading.Event()
    c = client(service)
    first = c.call("build.submit", spec_for(tmp_path, name="a"))["body"]["job_id"]
    second = c.call("build.submit", spec_for(tmp_path, name="b"))["body"]["job_id"]
    wait_state(service, first, ("running",))
    assert c.call("job.status", {"job_id": second})["body"]["state"] == "queued"
    finals: dict[int, str] = {}

    def follow(i: int) -> None:
        finals[i] = subscribe_all(service, second)[1][-1]["state"]

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    runner.gate.set()
    for t in threads:
        t.join(10)
    assert finals == {0: "done", 1: "done"}
    assert runner.max_running == 1 and runner.calls == ["a", "b"]
    listed = [j["job_id"] for j in c.call("jobs.list")["body"]["jobs"]]
    assert listed == [first, second]


def test_client_vanishing_mid_subscribe_leaves_the_job_running(
    service: Service, runner: FakePipeline, tmp_path: Path
) -> None:
    runner.gate = threading.Event()
    job_id = client(service).call("build.submit", spec_for(tmp_path))["body"]["job_id"]
    wait_state(service, job_id, ("running",))
    c = client(service)
    c.send("job.subscribe", {"job_id": job_id})
    assert c.recv()["ok"]
    assert c.recv()["type"] == "event"
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # reset, mid-stream
    runner.gate.set()
    assert wait_state(service, job_id, ("done", "failed"))["state"] == "done"
    assert client(service).call("hello")["ok"]


def test_malformed_json_gets_bad_request_and_the_connection_stays_usable(
    service: Service,
) -> None:
    c = client(service)
    c.send_bytes(b"{not json")
    reply = c.recv()
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    c.send_bytes(b"\xff\xfe")
    assert c.recv()["error"]["code"] == "bad_request"
    c.send_bytes(b"[1, 2]")
    assert c.recv()["error"]["code"] == "bad_request"
    assert c.call("hello")["ok"]
    assert client(service).call("hello")["ok"]


def test_oversized_frame_is_rejected_and_closed(service: Service) -> None:
    c = client(service)
    c.sock.sendall(struct.pack(">I", (1 << 20) + 1) + b"x" * 1000)
    reply = c.recv()
    assert reply["error"]["code"] == "too_large"
    c.sock.settimeout(3.0)
    with pytest.raises((ConnectionError, OSError)):
        c.recv()  # the server closed this connection
    assert client(service).call("hello")["ok"]


def test_slow_drip_frame_times_out_without_wedging_the_server(service: Service) -> None:
    payload = json.dumps({"v": 1, "id": "x", "type": "hello", "token": service.token}).encode()
    frame = struct.pack(">I", len(payload)) + payload
    c = client(service)
    t0 = time.monotonic()
    closed = False
    for byte in frame:
        try:
            c.sock.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        assert client(service).call("hello")["ok"]  # others are served meanwhile
        time.sleep(0.1)
        if time.monotonic() - t0 > 3.0:
            break
    if not closed:
        c.sock.settimeout(3.0)
        assert c.sock.recv(1024) == b""  # dropped after frame_timeout_s (0.5 s)
    assert time.monotonic() - t0 < 3.0
    assert client(service).call("hello")["ok"]


def test_protocol_errors_name_the_problem(service: Service, tmp_path: Path) -> None:
    c = client(service)
    reply = c.call("hello", v=2)
    assert reply["v"] == 1 and reply["id"] == f"r{c.count}"
    assert reply["error"]["code"] == "version_mismatch"
    assert c.call("frobnicate")["error"]["code"] == "bad_request"
    assert c.call("hello", body=[1])["error"]["code"] == "bad_request"
    assert c.call("job.status", {"job_id": "nope"})["error"]["code"] == "not_found"
    assert c.call("job.subscribe", {"job_id": "nope"})["error"]["code"] == "not_found"
    reply = c.call("build.submit", spec_for(tmp_path, settings={"fit": {"iterations": -1}}))
    assert reply["error"]["code"] == "invalid_spec"
    reply = c.call("build.submit", spec_for(tmp_path, colour="x"))
    assert reply["error"] == {"code": "invalid_spec", "message": "setting colour: unknown setting"}
    reply = c.call("build.submit", {**spec_for(tmp_path), "plate": "rel/plate.####.exr"})
    assert reply["error"]["code"] == "invalid_spec" and "plate" in reply["error"]["message"]
    assert c.call("jobs.list")["body"]["jobs"] == []


def test_stop_cancels_the_running_job_and_removes_discovery(tmp_path: Path) -> None:
    runner = FakePipeline()
    runner.gate = threading.Event()
    svc = Service(tmp_path / "home", runner=runner, stage_weights=STAGES, heartbeat_s=0.2)
    svc.start()
    job_id = client(svc).call("build.submit", spec_for(tmp_path))["body"]["job_id"]
    wait_state(svc, job_id, ("running",))
    c = client(svc)
    assert c.call("shutdown")["body"] == {"stopping": True}
    assert svc.wait(5.0)
    assert not (tmp_path / "home" / "engine.json").exists()
    on_disk = json.loads((tmp_path / "cache" / "shot" / "v001" / "status.json").read_text())
    assert on_disk["state"] == "cancelled"


def test_status_command_without_engine_and_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RNA_HOME", str(tmp_path / "home"))
    args = argparse.Namespace(job=None, cache=None, json=False)
    assert status_command.run(args) == 0
    assert capsys.readouterr().out == "no engine is running\n"
    version = tmp_path / "cache" / "shot" / "v002"
    write_json_atomic(tmp_path / "cache" / "shot" / "v001" / "status.json", {"state": "done"})
    write_json_atomic(
        version / "status.json",
        {"state": "running", "stage": "fit", "progress": 0.25, "eta_s": 65, "message": "x"},
    )
    for where in (version, tmp_path / "cache" / "shot"):  # a version, or the newest version
        args = argparse.Namespace(job=None, cache=str(where), json=False)
        assert status_command.run(args) == 0
        out = capsys.readouterr().out
        assert "running" in out and "fit" in out and "25.0%" in out and "1m05s" in out
    with pytest.raises(InputError, match="no status.json"):
        status_command.run(argparse.Namespace(job=None, cache=str(tmp_path), json=False))


# -- the real `rna-engine serve` in a subprocess ------------------------------------------------


def _start_engine(home: Path) -> tuple[subprocess.Popen, dict[str, Any]]:
    env = {**os.environ, "RNA_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rna_engine", "serve", "--device", "cpu", "--heartbeat-s", "0.5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    path = home / "engine.json"
    deadline = time.monotonic() + 20
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"engine did not start: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    return proc, json.loads(path.read_text())


def _cli(home: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rna_engine", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "RNA_HOME": str(home)},
        timeout=30,
    )


def test_serve_subprocess_discovery_cli_and_shutdown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, data = _start_engine(home)
    try:
        assert data["pid"] == proc.pid and data["protocol"] == 1 and data["device"] == "cpu"
        assert stat.S_IMODE((home / "engine.json").stat().st_mode) == 0o600
        hello = Raw(data["port"], data["token"]).call("hello")["body"]
        assert hello["pid"] == proc.pid and hello["version"] == __version__
        for _ in range(20):  # rejected requests: INFO lines of the log file, not of stderr
            assert Raw(data["port"], "guess").call("hello")["error"]["code"] == "unauthorized"
        status = _cli(home, "status")
        assert status.returncode == 0 and f"pid {proc.pid}" in status.stdout
        cancel = _cli(home, "cancel", "nosuchjob")
        assert cancel.returncode == 2 and "not_found" in cancel.stderr
        assert Raw(data["port"], data["token"]).call("shutdown")["ok"]
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (home / "engine.json").exists()
    (session,) = (home / "logs").glob(f"engine-*-{proc.pid}.log")  # this start's log
    lines = session.read_text().splitlines()
    assert "session start: rna-engine" in lines[0] and f"pid {proc.pid}" in lines[0]
    assert any("listening on 127.0.0.1" in line for line in lines)
    assert sum("request rejected: unauthorized" in line for line in lines) == 10  # then summed
    assert any("10 more not logged" in line and "unauthorized 10" in line for line in lines)
    assert proc.stderr is not None and proc.stderr.read() == b""  # console: warnings only
    assert _cli(home, "status").stdout == "no engine is running\n"


def test_serve_subprocess_runs_the_real_pipeline(tmp_path: Path) -> None:
    """A spec whose plate does not exist fails as bad input, through the real pipeline."""
    home = tmp_path / "home"
    proc, data = _start_engine(home)
    try:
        c = Raw(data["port"], data["token"])
        job_id = c.call("build.submit", spec_for(tmp_path))["body"]["job_id"]
        request_id = c.send("job.subscribe", {"job_id": job_id})
        assert c.recv()["id"] == request_id
        c.sock.settimeout(60)
        while (event := c.recv()["body"])["state"] not in ("done", "failed", "cancelled"):
            pass
        assert event["state"] == "failed" and event["error"]["code"] == "input"
        assert "plate" in event["error"]["message"]
        c.call("shutdown")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_subprocess_cancels_a_real_build(tmp_path: Path) -> None:
    """A real (tiny, CPU) build is cancelled mid-run; the cache says so."""
    from rna_engine.synthetic.shots import make_shot, write_shot

    shot = make_shot("tiny")
    write_shot(shot, tmp_path / "shot", truth=False, srgb=False)
    spec = {
        "plate": str(tmp_path / "shot" / "plate" / "plate.####.exr"),
        "roi": str(tmp_path / "shot" / "roi.exr"),
        "reference_frame": shot.reference_frame,
        "out": str(tmp_path / "cache"),
        "device": "cpu",
        "settings": {"preset": "draft"},
    }
    home = tmp_path / "home"
    proc, data = _start_engine(home)
    try:
        c = Raw(data["port"], data["token"])
        job_id = c.call("build.submit", spec)["body"]["job_id"]
        canceller = Raw(data["port"], data["token"])
        request_id = c.send("job.subscribe", {"job_id": job_id})
        assert c.recv()["id"] == request_id
        c.sock.settimeout(60)
        stages: list[str] = []
        cancelled_at = None
        while (event := c.recv()["body"])["state"] not in ("done", "failed", "cancelled"):
            stages.append(event["stage"])
            if cancelled_at is None and event["stage"] in ("correspondences", "fit"):
                canceller.call("job.cancel", {"job_id": job_id})
                cancelled_at = time.monotonic()
        assert event["state"] == "cancelled", event
        assert cancelled_at is not None and time.monotonic() - cancelled_at < 10.0
        assert "ingest" in stages
        status_path = Path(event["status_path"])
        assert status_path.parent == tmp_path / "cache" / "shot" / "v001"
        assert json.loads(status_path.read_text())["state"] == "cancelled"
        assert not list(status_path.parent.rglob("*.tmp*"))  # no half-written file left
        c.call("shutdown")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# -- hardening (issue #35): the door, malformed frames, the logs --------------------------------


def _closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) within `timeout_s`."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(1 << 16):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_unauthenticated_connection_is_closed_after_the_auth_deadline(tmp_path: Path) -> None:
    svc = Service(tmp_path / "home", runner=FakePipeline(), auth_timeout_s=0.3)
    svc.start()
    try:
        idle, wrong, good = client(svc), client(svc, token="guess"), client(svc)
        t0 = time.monotonic()
        assert wrong.call("hello")["error"]["code"] == "unauthorized"  # may try again, until...
        assert good.call("hello")["ok"]
        assert _closed_within(idle.sock, 2.0) and _closed_within(wrong.sock, 2.0)
        assert 0.25 <= time.monotonic() - t0 < 1.5
        time.sleep(0.3)
        assert good.call("hello")["ok"]  # an authenticated connection has no such deadline
    finally:
        svc.stop(timeout_s=5.0)


def test_a_full_unauthenticated_pool_evicts_its_oldest(tmp_path: Path) -> None:
    svc = Service(tmp_path / "home", runner=FakePipeline(), max_unauthenticated=4)
    svc.start()
    try:
        idle = [client(svc) for _ in range(10)]
        assert client(svc).call("hello")["ok"]  # a client that sends at once gets through
        closed = [_closed_within(c.sock, 0.15) for c in idle]
        assert closed[:7] == [True] * 7  # the oldest made room for the 3 newest and the hello
        assert closed[7:] == [False] * 3
    finally:
        svc.stop(timeout_s=5.0)


def test_deep_json_is_a_bad_request_and_the_connection_stays_usable(service: Service) -> None:
    c = client(service)
    assert c.call("hello")["ok"]
    deep = b"[" * 100_000 + b"]" * 100_000
    for payload in (
        deep,
        b'{"v": 1, "id": "d", "type": "hello", "body": {"x": ' + deep + b"}}",
    ):
        c.send_bytes(payload)
        reply = c.recv()
        assert (
            reply["error"]["code"] == "bad_request"
            and "nested deeper than 32" in reply["error"]["message"]
        )

    def nested(depth: int) -> Any:
        return [] if depth == 1 else [nested(depth - 1)]

    # the envelope is level 1 and the body level 2: 30 more levels are allowed, 31 are not
    assert c.call("hello", {"x": nested(30)})["ok"]
    assert c.call("hello", {"x": nested(31)})["error"]["code"] == "bad_request"
    assert c.call("hello")["ok"]


def test_a_token_that_is_not_unicode_is_unauthorized(service: Service) -> None:
    c = client(service)
    for token in ("\ud800", "\udfff" + service.token, 42, None, [service.token]):
        reply = c.call("hello", token=token)  # json.dumps writes the lone surrogate as \\ud800
        assert reply["error"]["code"] == "unauthorized", token
    assert c.call("hello")["ok"]
    assert c.call("build.submit", {"plate": "/a/\ud800.exr"})["error"] == {
        "code": "invalid_spec",
        "message": "setting plate: not valid Unicode",
    }


def test_every_malformed_frame_is_answered_or_closed(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A few hundred seeded probes of every kind (tests/engine/malformed_frames.py)."""
    threads = threading.active_count()
    outcomes: dict[str, set[str]] = {}
    with caplog.at_level("INFO", logger="rna_engine"):
        for probe in malformed_frames.probes(300, seed=35, token=service.token):
            outcome, detail = malformed_frames.run_probe(service.port, probe, timeout_s=3.0)
            assert outcome in (malformed_frames.REPLY, malformed_frames.CLOSED), (probe, detail)
            outcomes.setdefault(probe.kind, set()).add(outcome)
    assert set(outcomes) == set(malformed_frames.KINDS)
    assert outcomes["oversized"] == outcomes["truncated"] == {malformed_frames.CLOSED}
    assert client(service).call("hello")["ok"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no handler failed
    rejected = [r for r in caplog.records if "request rejected" in r.getMessage()]
    assert len(rejected) <= 10 * 6  # 10 a window per error code: the rest summed up
    deadline = time.monotonic() + 3.0
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)  # connection threads end once their client closes
    assert threading.active_count() <= threads


def test_session_log_keeps_its_head_and_bounds_its_tail(tmp_path: Path) -> None:
    head = session_head(tmp_path, pid=12345)
    handler = SessionLog(head, head_bytes=4096, tail_bytes=2048, max_record_bytes=512)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.write_line("session start: first line")
    logger = logging.getLogger("test_session_log")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(5000):
            logger.info("record %05d %s", i, "x" * (i % 50))
        logger.info("long %s end-of-long", "y" * 5000)
    finally:
        logger.removeHandler(handler)
        handler.close()
    tail, older = tail_paths(head, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([head.name, tail.name, older.name])
    assert head.stat().st_size <= 4096 and tail.stat().st_size <= 2048
    assert older.stat().st_size <= 2048
    lines = head.read_text().splitlines()
    assert lines[0] == "session start: first line" and lines[1].startswith("record 00000 ")
    assert tail.name in lines[-1]  # the head says where the rest went
    last = tail.read_text().splitlines()[-1]
    assert last.startswith("long y") and last.endswith("end-of-long") and "bytes cut" in last
    assert len(last.encode()) <= 512
    assert "record 04999" in older.read_text() + tail.read_text()


def test_setup_logging_prunes_old_sessions_but_not_a_live_one(tmp_path: Path) -> None:
    logs = tmp_path / "home" / "logs"
    logs.mkdir(parents=True)
    dead = 2**22 + 7  # above Linux's default pid_max
    for day in range(1, 7):
        stem = f"engine-202601{day:02d}-120000-{dead + day}"
        for name in (f"{stem}.log", f"{stem}.tail.log", f"{stem}.tail.1.log"):
            (logs / name).write_text("old\n")
    live = logs / f"engine-20250101-000000-{os.getppid()}.log"  # oldest, but its engine runs
    live.write_text("live\n")
    path = setup_logging(tmp_path / "home", keep_sessions=3, console_bytes=0)
    root = logging.getLogger("rna_engine")
    try:
        logging.getLogger("rna_engine.test").info("hello from the test")
    finally:
        for handler in [h for h in root.handlers if isinstance(h, SessionLog)]:
            root.removeHandler(handler)
            handler.close()
    heads = sorted(p.name for p in logs.glob("engine-*.log") if ".tail" not in p.name)
    assert heads == [
        live.name,
        f"engine-20260105-120000-{dead + 5}.log",
        f"engine-20260106-120000-{dead + 6}.log",
        path.name,
    ]
    assert not list(logs.glob("engine-20260104-*"))  # its tail files went with it
    lines = path.read_text().splitlines()
    assert "session start: rna-engine" in lines[0] and "hello from the test" in lines[1]


def test_console_bound_keeps_the_head_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "engine.stdout.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        bound = ConsoleBound(1000, fds=[fd], notice="see the log")
        assert bound.active
        os.write(fd, b"start-up line\n" + b"z" * 990)
        bound.check()  # 1004 bytes: over
        os.write(fd, b"dropped\n" * 1000)
        bound.check()
    finally:
        os.close(fd)
    text = path.read_text()
    assert text.startswith("start-up line\n") and "dropped" not in text
    assert text.endswith("output cut at 1000 bytes. see the log\n") and len(text) < 1100
    assert not ConsoleBound(1000, fds=[os.open(os.devnull, os.O_WRONLY)]).active  # not a file


def test_log_throttle_sums_up_repeats(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = LogThrottle(
        logging.getLogger("test_throttle"), burst=3, window_s=10.0, clock=lambda: now[0]
    )
    with caplog.at_level("INFO", logger="test_throttle"):
        for i in range(1000):
            throttle.note("bad_request", "rejected %d", i)
        throttle.note("unauthorized", "unauthorized", level=logging.WARNING)
        throttle.tick()  # the window has not ended
        now[0] = 10.0
        throttle.tick()
        throttle.note("bad_request", "rejected again")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "rejected 0",
        "rejected 1",
        "rejected 2",
        "unauthorized",
        "997 more not logged in the last 10s: bad_request 997",
        "rejected again",
    ]


def test_failure_log_writes_a_traceback_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_failures")
    failures = FailureLog(logger, LogThrottle(logger, burst=1))

    def fail(value: int) -> None:
        raise ValueError(f"bad {value}")

    with caplog.at_level("INFO", logger="test_failures"):
        for i in range(5):
            try:
                fail(i)
            except ValueError as err:
                failures.log("connection handler", err)
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert (
        len(with_traceback) == 1 and with_traceback[0].getMessage() == "connection handler failed"
    )
    assert len(caplog.records) == 2  # then one line; the other three wait for the summary
    assert "failed again: ValueError at test_service.py:" in caplog.records[1].getMessage()
