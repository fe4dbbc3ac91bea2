"""rna-engine info / synth / doctor through `cli.main`: output and exit codes."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from rna_engine.cli import main
from rna_engine.media import io


def _sequence(folder: Path, frames: list[int]) -> str:
    for f in frames:
        io.write_exr(
            folder / f"plate.{f:04d}.exr",
            {"R": np.full((6, 8), 0.5), "G": np.zeros((6, 8)), "B": np.ones((6, 8))},
            compression="piz",
        )
    return str(folder / "plate.####.exr")


def test_info_json_reports_range_missing_frames_and_channels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = _sequence(tmp_path, [1001, 1002, 1004])
    assert main(["info", pattern, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == "1001-1002 1004" and info["missing"] == "1003"
    assert (info["width"], info["height"]) == (8, 6)
    assert {c["name"] for c in info["channels"]} == {"R", "G", "B"}
    assert info["compression"] == "piz"


def test_info_reports_nan_without_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.ones((4, 4), np.float32)
    data[1, 2] = np.nan
    io.write_exr(tmp_path / "n.exr", {"R": data}, pixel_types={"R": "float"})
    assert main(["info", str(tmp_path / "n.exr")]) == 0
    out = capsys.readouterr().out
    assert "1 NaN" in out


@pytest.mark.parametrize("kind", ["truncated", "missing", "size"])
def test_info_bad_input_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    pattern = _sequence(tmp_path, [1, 2, 3])
    culprit = tmp_path / "plate.0002.exr"
    if kind == "truncated":
        culprit.write_bytes(culprit.read_bytes()[:100])
    elif kind == "size":
        io.write_exr(culprit, {"R": np.ones((3, 3))})
    else:
        pattern = str(tmp_path / "nothing.####.exr")
    code = main(["info", pattern])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert ("nothing.####.exr" if kind == "missing" else "plate.0002.exr") in err[0]


def test_synth_command_writes_a_shot(tmp_path: Path) -> None:
    assert (
        main(["synth", "--out", str(tmp_path), "--preset", "tiny", "--frames", "3", "--edit"]) == 0
    )
    manifest = json.loads((tmp_path / "shot.json").read_text())
    assert sorted(io.find_frames(tmp_path / manifest["plate"])) == [1001, 1002, 1003]
    assert sorted(io.find_frames(tmp_path / manifest["edited"])) == [1001, 1002, 1003]
    assert (tmp_path / "roi.exr").exists() and (tmp_path / "truth" / "texture.exr").exists()


def test_doctor_reports_this_python(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    rows = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["python"]["ok"] and rows["python"]["detail"] == platform.python_version()
    assert rows["openimageio"]["ok"] and rows["ocio config"]["ok"]
    assert not rows["cuda"]["ok"] or rows["cuda"]["detail"]
    for name in ("tinycudann", "triton", "weights: raft"):
        assert name in rows
        assert rows[name]["ok"] or rows[name]["fix"]  # missing things say how to get them


def test_unknown_setting_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = _sequence(tmp_path, [1, 2])
    io.write_exr(tmp_path / "roi.exr", {"A": np.zeros((6, 8))})
    code = main(
        [
            "build",
            "--plate",
            pattern,
            "--roi",
            str(tmp_path / "roi.exr"),
            "--ref",
            "1",
            "--set",
            "fit.nope=1",
            "--out",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 2
    assert "setting fit.nope: unknown setting" in capsys.readouterr().err


def test_info_reads_bare_frame_numbers_from_zero_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = np.zeros((6, 8, 3), np.float32)
    (tmp_path / "frames").mkdir()
    for frame in (0, 1, 2, 4):
        io.write_png(tmp_path / "frames" / f"{frame:05d}.png", rgb)
    io.write_png(tmp_path / "frames" / "0003.png", rgb)  # other padding: not frame 3
    monkeypatch.chdir(tmp_path)
    assert main(["info", "frames/#####.png", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["count"], info["missing"]) == ("0-2 4", 4, "3")
    monkeypatch.chdir(tmp_path / "frames")
    assert main(["info", "%05d.png", "--frames", "0-1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["missing"], info["width"]) == ("0-2 4", "", 8)


def test_info_on_negative_frames_written_as_nuke_writes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for frame in (-2, -1, 0, 1):
        io.write_png(tmp_path / f"neg.{frame:04d}.png", np.zeros((6, 8, 3), np.float32))
    assert (tmp_path / "neg.-002.png").is_file()
    assert main(["info", str(tmp_path / "neg.####.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == "-2-1"


def test_build_set_takes_several_settings_at_once_and_repeats() -> None:
    from rna_engine.cli import build_parser
    from rna_engine.commands.build import parse_overrides

    args = build_parser().parse_args(
        ["build", "--set", "fit.iterations=20", "refine.iterations=5", "--set", "seed=3"]
    )
    assert parse_overrides(args.set) == {
        "fit": {"iterations": 20},
        "refine": {"iterations": 5},
        "seed": 3,
    }


def test_crash_log_is_bounded_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rna_engine import cli

    monkeypatch.setenv("RNA_HOME", str(tmp_path))
    logs = tmp_path / "logs"
    logs.mkdir()
    old = "old traceback\n" * (cli.CRASH_LOG_BYTES // 14 + 1)
    (logs / "crash.log").write_text(old)
    try:
        raise RuntimeError("the newest failure")
    except RuntimeError as err:
        assert cli._write_crash_log(err) == logs / "crash.log"
    assert (logs / "crash.log.1").read_text() == old
    text = (logs / "crash.log").read_text()
    assert "RuntimeError: the newest failure" in text and "old traceback" not in text
    try:
        raise ValueError("a small one")
    except ValueError as err:
        cli._write_crash_log(err)  # under the bound: appended, nothing moved
    assert "RuntimeError" in (logs / "crash.log").read_text()
    assert (logs / "crash.log.1").read_text() == old
