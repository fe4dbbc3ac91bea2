"""A build's output on a bad day: a bad plate frame, a full disk, a disk that turns read-only.

Each ends with exit code 2 and a last line naming the path, publishes nothing half-written, and
leaves nothing a later run trusts: the next run starts clean or resumes into the same version.
The full and read-only disks are real: a small tmpfs in a user and mount namespace
(`unshare`), skipped where the kernel does not allow one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_build import build_command

from rna_engine.errors import OutputError
from rna_engine.media.cache import atomic_path, version_dirs
from rna_engine.media.lock import lock_path
from rna_engine.synthetic.shots import make_shot, write_shot


@pytest.fixture(scope="module")
def shot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, list[int]]:
    root = tmp_path_factory.mktemp("faults")
    shot = make_shot("tiny", seed=2, frames=4)
    write_shot(shot, root / "shot", truth=False, srgb=False)
    return root / "shot", shot.reference_frame, shot.frame_numbers


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "RNA_HOME": str(tmp_path / "home")}


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_a_bad_frame_leaves_no_version_folder(
    shot: tuple[Path, int, list[int]], tmp_path: Path
) -> None:
    shot_dir, ref, numbers = shot
    bad_shot = tmp_path / "shot"
    shutil.copytree(shot_dir, bad_shot)
    culprit = bad_shot / "plate" / f"plate.{numbers[-1]:04d}.exr"
    good = culprit.read_bytes()
    culprit.write_bytes(good[: len(good) // 2])  # truncated: the header reads, the pixels do not
    command = build_command(bad_shot, ref, tmp_path / "cache")
    run = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr
    assert str(culprit) in _last_line(run.stderr)
    build_dir = tmp_path / "cache" / "tiny"
    assert version_dirs(build_dir) == [] and not lock_path(build_dir / "v001").exists()
    assert [p.name for p in build_dir.iterdir()] == []

    culprit.write_bytes(good)
    run = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in version_dirs(build_dir)] == ["v001"]  # not v002


def test_a_write_the_disk_refuses_is_an_output_error_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "atlas.exr"
    target.write_bytes(b"old")
    with pytest.raises(OutputError) as err, atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert str(err.value) == f"{target}: cannot write (No space left on device)"
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["atlas.exr"]  # the temporary file is gone

    with pytest.raises(ValueError), atomic_path(target):  # not the disk's fault: as it was
        raise ValueError("a bug")


# -- a real full and a real read-only disk ---------------------------------------------------

_SCRIPT = r"""
set -u
mnt=$1; shift
mount -t tmpfs -o size=$SIZE tmpfs "$mnt" || exit 99
listing() { (cd "$mnt" && find . -type f | sort) > "$1.files"; cp "$mnt"/tiny/v001/status.json "$1.status" 2>/dev/null; }
if [ "$MODE" = full ]; then
    "$@" > fault.out 2> fault.err; echo $? > fault.rc
    listing fault
    mount -o remount,size=64m "$mnt"
else
    "$@" > fault.out 2> fault.err & pid=$!
    for _ in $(seq 1200); do
        grep -qs '"stage": "fit"' "$mnt"/tiny/v001/status.json && break
        sleep 0.05
    done
    for _ in $(seq 200); do mount -o remount,ro "$mnt" 2>/dev/null && break; sleep 0.02; done
    wait $pid; echo $? > fault.rc
    listing fault
    mount -o remount,rw "$mnt"
fi
"$@" > again.out 2> again.err; echo $? > again.rc
listing again
"""


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d && rmdir $d"
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", probe]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_namespaces = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _namespaces_work(),
    reason="no user + mount namespace here (unshare) for a real small tmpfs",
)


def _run_on_tmpfs(
    shot: tuple[Path, int, list[int]], tmp_path: Path, mode: str, size: str
) -> dict[str, object]:
    shot_dir, ref, _ = shot
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fault.sh"
    script.write_text(_SCRIPT)
    command = build_command(shot_dir, ref, mnt)
    ns = ["unshare", "--user", "--map-root-user", "--mount", "bash", str(script), str(mnt)]
    env = {**_env(tmp_path), "MODE": mode, "SIZE": size}
    run = subprocess.run(
        ns + command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr
    out: dict[str, object] = {}
    for phase in ("fault", "again"):
        out[f"{phase}.rc"] = int((tmp_path / f"{phase}.rc").read_text())
        out[f"{phase}.err"] = (tmp_path / f"{phase}.err").read_text()
        out[f"{phase}.files"] = (tmp_path / f"{phase}.files").read_text().split()
        status = tmp_path / f"{phase}.status"
        out[f"{phase}.status"] = json.loads(status.read_text()) if status.exists() else None
    return out


def _check_fault(out: dict[str, object], reason: str) -> None:
    assert out["fault.rc"] == 2, out["fault.err"]
    assert "Traceback" not in str(out["fault.err"])  # no thread died on the failed writes
    line = _last_line(str(out["fault.err"]))
    assert f"cannot write ({reason}" in line and "/mnt/tiny/v001/" in line, line
    files = list(out["fault.files"])  # type: ignore[call-overload]
    assert not [f for f in files if ".tmp" in Path(f).name], files  # nothing half-published
    status = out["fault.status"]
    assert status is None or status["state"] != "done"  # type: ignore[index]
    assert out["again.rc"] == 0, out["again.err"]
    again = out["again.status"]
    assert again is not None and again["state"] == "done"  # type: ignore[index]
    names = list(out["again.files"])  # type: ignore[call-overload]
    assert not [f for f in names if f.startswith("./tiny/v002")]  # the same version, resumed
    assert sum(f.startswith("./tiny/v001/passes/rna.") for f in names) == 4


@needs_namespaces
def test_a_full_disk_exits_2_naming_the_path_and_the_next_run_completes(
    shot: tuple[Path, int, list[int]], tmp_path: Path
) -> None:
    # 400 KiB holds the build record and the correspondences, not the fit's checkpoint
    out = _run_on_tmpfs(shot, tmp_path, "full", "400k")
    _check_fault(out, "No space left on device")


@needs_namespaces
def test_a_disk_turned_read_only_mid_build_exits_2_and_the_next_run_completes(
    shot: tuple[Path, int, list[int]], tmp_path: Path
) -> None:
    out = _run_on_tmpfs(shot, tmp_path, "ro", "64m")
    _check_fault(out, "Read-only file system")
