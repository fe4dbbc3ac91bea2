"""Every way a build ends leaves `status.json` final, and bad paths exit 2 with one line.

A real `python -m rna_engine build` on a tiny synthetic shot is sent SIGINT, SIGTERM
(→ `cancelled`, exit 130) or SIGKILL (→ `rna-engine status --cache` says `lost`) mid-build.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rna_engine.cli import main
from rna_engine.media.cache import LOST_AFTER_S, status_lost
from rna_engine.synthetic.shots import make_shot, write_shot
from rna_nuke import knobs

# Small enough that ingest + correspondences take seconds on 2 cores; the pretraining alone
# (~0.05 s a step) is far longer than any test waits, so the signal always lands mid-build.
FAST_SETTINGS = [
    "ingest.working_long_side=32",
    "fit.pretrain_steps=2000",
    "fit.iterations=100000",
    "fit.batch_size=256",
    "fit.log_every=10",
    "fit.scale_with_shot=false",
    "fit.mapping_width=16",
    "fit.hash_grid.n_levels=4",
    "fit.hash_grid.log2_hashmap_size=10",
    "fit.hash_grid.base_resolution=8",
    "refine.iterations=20",
]


@pytest.fixture(scope="module")
def shot_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lifecycle")
    shot = make_shot("tiny", seed=0, frames=4)
    write_shot(shot, root / "shot", truth=False, srgb=False)
    return {"dir": root / "shot", "ref": shot.reference_frame}


def _build_args(shot: dict[str, Any], out: Path, extra: list[str] | None = None) -> list[str]:
    args = [
        "build",
        "--plate",
        str(shot["dir"] / "plate" / "plate.####.exr"),
        "--roi",
        str(shot["dir"] / "roi.exr"),
        "--ref",
        str(shot["ref"]),
        "--out",
        str(out),
        "--name",
        "tiny",
        "--preset",
        "draft",
        "--device",
        "cpu",
    ]
    for item in FAST_SETTINGS:
        args += ["--set", item]
    return args + (extra or [])


def _start(shot: dict[str, Any], tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    args = [sys.executable, "-m", "rna_engine", *_build_args(shot, tmp_path / "cache")]
    env = {**os.environ, "RNA_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, tmp_path / "cache" / "tiny" / "v001" / "status.json"


def _wait_for(proc: subprocess.Popen[str], path: Path, stage: str, timeout_s: float = 60.0) -> dict:
    """The first `status.json` in `stage`; fails if the build ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("state") == "running" and status.get("stage") == stage:
            return status
        if proc.poll() is not None:
            pytest.fail(f"the build ended ({proc.returncode}) first: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {stage} stage within {timeout_s} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_build_ends_cancelled_with_exit_130(
    shot_dir: dict[str, Any], tmp_path: Path, sig: signal.Signals
) -> None:
    stage = "correspondences"
    proc, status_path = _start(shot_dir, tmp_path)
    running = _wait_for(proc, status_path, stage)
    assert running["pid"] == proc.pid and running["host"] == socket.gethostname()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == f"rna-engine: cancelled ({sig.name})"
    final = json.loads(status_path.read_text())
    assert final["state"] == "cancelled" and final["message"] == f"cancelled ({sig.name})"
    assert final["stage"] == stage and final["finished"] >= final["started"]
    assert final["eta_s"] is None
    assert "Traceback" not in err


def test_sigkill_mid_build_is_reported_lost(
    shot_dir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, status_path = _start(shot_dir, tmp_path)
    running = _wait_for(proc, status_path, "fit")
    while not running["message"].startswith("pretrain step"):
        time.sleep(0.05)
        running = json.loads(status_path.read_text())
        assert proc.poll() is None
    # progress text counts steps (it was `step 0.05000000000000001/1`)
    assert re.fullmatch(r"pretrain step [1-9]\d*/2000", running["message"])
    assert main(["status", "--cache", str(status_path.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"  # alive: not lost
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped, as a farm or shell would: the pid is gone
    on_disk = json.loads(status_path.read_text())
    assert on_disk["state"] == "running"  # nobody could write the end
    assert main(["status", "--cache", str(status_path.parent), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "lost" and report["recorded_state"] == "running"
    assert f"process {proc.pid} on {socket.gethostname()} is gone" in report["lost_reason"]
    assert main(["status", "--cache", str(status_path.parent)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^state: +lost \(was running: process \d+ on .+ is gone\)$", text, re.M)
    assert re.search(r"^stage: +fit$", text, re.M)
    assert re.search(r"^message: +pretrain step \d+/2000$", text, re.M)
    # The Nuke side reads the same status.json and applies the same rule.
    info = knobs.cache_info(str(status_path.parent))
    assert info["state"] == "lost" and info["status"].startswith("lost at fit")


def test_stale_heartbeat_is_lost_after_the_stated_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "v001"
    folder.mkdir()
    beat = time.time() - 45.0
    status = {
        "state": "running",
        "stage": "fit",
        "progress": 0.5,
        "eta_s": 60.0,
        "message": "step 300/6000",
        "error": None,
        "started": beat - 100,
        "finished": None,
        "pid": 1,
        "host": "farm-node-7",  # another host: only the heartbeat can tell
        "heartbeat": beat,
    }
    (folder / "status.json").write_text(json.dumps(status))
    assert main(["status", "--cache", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "lost"
    assert main(["status", "--cache", str(folder), "--json", "--lost-after-s", "60"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"


def test_engine_and_nuke_apply_the_same_lost_rule() -> None:
    now = time.time()
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    cases = [
        {"state": "running", "pid": os.getpid(), "host": host, "heartbeat": now},
        {"state": "running", "pid": gone.pid, "host": host, "heartbeat": now},
        {"state": "queued", "pid": gone.pid, "host": host, "heartbeat": now},
        {"state": "running", "pid": 1, "host": "elsewhere", "heartbeat": now - 10},
        {"state": "running", "pid": 1, "host": "elsewhere", "heartbeat": now - 31},
        {"state": "done", "pid": gone.pid, "host": host, "heartbeat": now - 999},
        {"state": "failed", "pid": gone.pid, "host": host},
        {"state": "running"},
    ]
    engine = [status_lost(c, now) for c in cases]
    nuke = [knobs.status_lost(c, now) for c in cases]
    assert engine == nuke
    assert [reason is not None for reason in engine] == [
        False,
        True,
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert knobs.LOST_AFTER_S == LOST_AFTER_S


def test_status_cache_prints_labelled_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "shot" / "v002"
    folder.mkdir(parents=True)
    status = {
        "state": "failed",
        "stage": "bake",
        "progress": 0.8312,
        "eta_s": None,
        "message": "plate.1004.exr: truncated",
        "error": {"code": "input", "message": "plate.1004.exr: truncated"},
        "started": 1_700_000_000.0,
        "finished": 1_700_000_065.0,
    }
    (folder / "status.json").write_text(json.dumps(status))
    assert main(["status", "--cache", str(tmp_path / "shot")]) == 0  # newest version
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if ":" in line)
    assert {k: v.strip() for k, v in lines.items() if k != "file"} == {
        "state": "failed",
        "stage": "bake",
        "progress": "83.1%",
        "ETA": "-",
        "message": "plate.1004.exr: truncated",
        "error": "plate.1004.exr: truncated (input)",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000.0)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_065.0)),
    }


# -- bad paths: exit 2, one line, nothing written ------------------------------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_out_under_a_regular_file_exits_2(
    shot_dir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    assert main(_build_args(shot_dir, blocker / "cache")) == 2
    line = _one_error_line(capsys)
    assert "not_a_folder is a file" in line and "cache" in line
    assert blocker.read_text() == "x"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: permission bits do not stop root (the regular-file case covers it)",
)
def test_unwritable_out_exits_2(
    shot_dir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(_build_args(shot_dir, locked / "cache")) == 2
        assert "locked" in _one_error_line(capsys)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("kind", ["missing", "folder", "not json", "not an object"])
def test_bad_spec_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    spec = tmp_path / "build.json"
    if kind == "folder":
        spec.mkdir()
    elif kind == "not json":
        spec.write_text("{plate: ")
    elif kind == "not an object":
        spec.write_text("[1, 2]")
    assert main(["build", "--spec", str(spec)]) == 2
    assert "build.json" in _one_error_line(capsys)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: an unreadable folder is still readable by root",
)
def test_unreadable_plate_folder_exits_2(
    shot_dir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    plate = tmp_path / "plate"
    shutil.copytree(shot_dir["dir"] / "plate", plate)
    plate.chmod(0o000)
    try:
        args = _build_args({**shot_dir, "dir": tmp_path}, tmp_path / "cache")
        args[args.index("--roi") + 1] = str(shot_dir["dir"] / "roi.exr")
        assert main(args) == 2
        assert "plate" in _one_error_line(capsys)
    finally:
        plate.chmod(0o755)
    assert not (tmp_path / "cache").exists()


def test_plate_that_is_a_file_not_a_sequence_folder_exits_2(
    shot_dir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plate").write_text("not a folder")
    args = _build_args({**shot_dir, "dir": tmp_path}, tmp_path / "cache")
    args[args.index("--roi") + 1] = str(shot_dir["dir"] / "roi.exr")
    assert main(args) == 2
    assert "plate" in _one_error_line(capsys)
    assert not (tmp_path / "cache").exists()


def test_gpu_preset_on_cpu_warns_once_with_an_estimate(
    shot_dir: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # the build then stops at the --out check, after the warning
    args = _build_args(shot_dir, blocker / "cache")
    args[args.index("--preset") + 1] = "standard"
    args = args[: args.index("--set")]  # the preset's own step counts
    assert main(args) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    # 1000 + 6000 + 6000 steps x 32768 samples at CPU_FIT_SAMPLES_PER_S = 2.3e4: 5.1 h
    assert warning == (
        "rna-engine: preset standard on the CPU will take long: at least 5.1 h of fitting for a "
        "70-frame shot (13000 steps of 32768 samples); use --preset draft, or a GPU "
        "(--device cuda:0)"
    )
    assert "file is a file" in error
