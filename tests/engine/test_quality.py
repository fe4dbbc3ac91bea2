"""Tests of rna_engine/stages/quality.py: the quality gates and per-frame findings, and builds that
must fail them (an untrained fit), pass them (a converged fit, a flat wall, an ROI on the frame's
border) or pick their device in a fresh process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rna_engine.cli import main
from rna_engine.errors import QualityError
from rna_engine.media import io
from rna_engine.media.cache import BuildPaths
from rna_engine.media.metrics import uv_error_px
from rna_engine.settings import QCSettings
from rna_engine.stages.quality import check_bake, findings, flag_drops, worst
from rna_engine.synthetic.shots import make_shot, write_shot

REPO = Path(__file__).resolve().parents[2]
CONVERGED = [
    "ingest.working_long_side=64",
    "fit.pretrain_steps=100",
    "fit.iterations=150",
    "fit.batch_size=512",
    "fit.scale_with_shot=false",
    "refine.iterations=20",
    "matte.closed_form_iterations=0",
]
"""The fewest steps of a 64×48 fit that pass the gates (measured: reference atlas PSNR 37 dB,
ROI IoU 0.98, visible 100 %)."""
UNTRAINED = [
    "ingest.working_long_side=64",
    "fit.pretrain_steps=5",
    "fit.iterations=20",
    "refine.iterations=5",
]
"""The schedule a user reported ending `done` with a NaN matte: T is not trained."""


def _argv(folder: Path, manifest: dict[str, Any], sets: list[str], device: str = "cpu") -> list:
    argv = ["build", "--plate", str(folder / manifest["plate"]), "--roi", str(folder / "roi.exr")]
    argv += ["--ref", str(manifest["reference_frame"]), "--preset", "draft", "--device", device]
    argv += ["--out", str(folder / "cache"), "--name", "q"]
    return argv + [f"--set={s}" for s in sets]


def _version(folder: Path) -> BuildPaths:
    return BuildPaths(folder / "cache" / "q" / "v001")


def _uv_error_median(shot: Any, paths: BuildPaths) -> float:
    """Median UV error (reference pixels) over every frame's truly visible tracked ROI."""
    errors = []
    for t, number in enumerate(shot.frame_numbers):
        image = io.read_image(paths.pass_path(number))
        uv = np.stack([image.channel("rna_uv.u"), image.channel("rna_uv.v")], -1)
        visible = (shot.roi_tracked[t] > 0.99) & (shot.occlusion[t] < 0.01)
        inside = np.zeros_like(visible)  # UVs exist inside the pass's data window only
        x, y, w, h = image.data_window
        inside[y : y + h, x : x + w] = True
        errors.append(uv_error_px(uv, shot.true_ref_xy[t], visible & inside))
    return float(np.median(np.concatenate(errors)))


# -- pure findings ------------------------------------------------------------------------------


def test_flag_drops_finds_the_frame_far_below_its_neighbours() -> None:
    values = [1.0, 0.9, 1.0, 0.2, 1.0, 0.95, None, 1.0]
    assert flag_drops(values, ratio=0.6, radius=2) == [3]
    # a gradual fall is no drop; a frame out of view (None) is never flagged
    assert flag_drops([1.0, 0.8, 0.6, 0.45, 0.35, None], ratio=0.6, radius=1) == []


def test_worst_names_the_lowest_frame_and_skips_missing_values() -> None:
    assert worst([0.5, None, float("nan"), 0.1, 0.3], [1001, 1002, 1003, 1004, 1005]) == {
        "frame": 1004,
        "value": 0.1,
    }
    assert worst([None, None], [1, 2]) is None


def test_findings_warn_about_low_coverage_and_drops() -> None:
    cover = [0.95, 0.96, 0.94, 0.3, 0.95, 0.4, 0.35, None]
    records = [
        {"matte_coverage": c, "coverage": c, "psnr_atlas": 30.0, "roi_pixels": 100} for c in cover
    ]
    numbers = list(range(1001, 1009))
    found = findings(records, numbers, QCSettings(neighbour_frames=2))
    assert found["low_coverage_frames"] == [1004, 1006, 1007]
    assert found["worst"]["matte_coverage"] == {"frame": 1004, "value": 0.3}
    assert 1004 in found["flagged_frames"]
    assert found["warnings"][0].startswith("3 of 8 frames (1004 1006-1007)")
    assert "worst frame 1004: 30%" in found["warnings"][0]
    clean = findings(records[:3], numbers[:3], QCSettings())
    assert clean["warnings"] == [] and clean["flagged_frames"] == []
    assert found["low_confidence_frames"] == []


def test_findings_report_frames_the_camera_could_not_anchor() -> None:
    anchored = [True, True, False, False, True, False]
    roi = [100, 100, 100, 80, 100, 0]  # the last frame: the ROI is out of view
    records = [
        {
            "matte_coverage": 0.99,
            "coverage": 0.99,
            "psnr_atlas": 35.0,
            "roi_pixels": r,
            "camera_anchored": a,
        }
        for a, r in zip(anchored, roi, strict=True)
    ]
    found = findings(records, list(range(1, 7)), QCSettings())
    assert found["low_confidence_frames"] == [3, 4]
    assert any(w.startswith("2 of 6 frames (3-4): the camera") for w in found["warnings"])


def test_findings_report_frames_the_atlas_does_not_reconstruct() -> None:
    psnr = [31.0, 30.0, 12.5, 17.0, 29.0, 9.0]
    roi = [100, 100, 100, 100, 100, 0]  # the last frame: the ROI is out of view
    records = [
        {"matte_coverage": 0.99, "coverage": 0.99, "psnr_atlas": p, "roi_pixels": r}
        for p, r in zip(psnr, roi, strict=True)
    ]
    found = findings(records, list(range(11, 17)), QCSettings())
    assert found["low_confidence_frames"] == [13, 14]
    (lost,) = [w for w in found["warnings"] if "does not reconstruct" in w]
    assert lost.startswith("2 of 6 frames (13-14)") and "frame 13: 12.5 dB" in lost
    assert (
        findings(records, list(range(11, 17)), QCSettings(min_frame_psnr_db=10.0))[
            "low_confidence_frames"
        ]
        == []
    )


def test_check_bake_needs_a_matte_on_the_reference_frame() -> None:
    check_bake([0.1, 0.9, 0.2], 1, QCSettings())
    for value in (0.2, None, float("nan")):
        with pytest.raises(QualityError, match="reference frame"):
            check_bake([0.9, value, 0.9], 1, QCSettings())


# -- builds -------------------------------------------------------------------------------------


def test_an_untrained_fit_ends_failed_with_code_quality_and_writes_no_pass(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    manifest = write_shot(make_shot("tiny", seed=0), tmp_path, truth=False, srgb=False)
    code = main(_argv(tmp_path, manifest, UNTRAINED))
    err = [line for line in capfd.readouterr().err.splitlines() if "[" not in line]
    assert code == 2
    assert err[-1].startswith("rna-engine: fit: ") and "qc." in err[-1]
    status = json.loads(_version(tmp_path).status_json.read_text())
    assert status["state"] == "failed" and status["error"]["code"] == "quality"
    assert not list(_version(tmp_path).passes_dir.glob("*.exr"))


def test_a_fresh_process_build_on_device_auto_passes_the_gates_with_finite_passes(
    tmp_path: Path,
) -> None:
    manifest = write_shot(make_shot("tiny", seed=0), tmp_path, truth=False, srgb=False)
    run = subprocess.run(
        [sys.executable, "-m", "rna_engine", *_argv(tmp_path, manifest, CONVERGED, "auto")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    paths = _version(tmp_path)
    status = json.loads(paths.status_json.read_text())
    assert status["state"] == "done" and isinstance(status["warnings"], list)
    assert json.loads(paths.build_json.read_text())["device"] == "cpu"  # no CUDA here
    report = json.loads((paths.qc_dir / "report.json").read_text())
    assert report["worst"]["matte_coverage"]["frame"] in manifest_frames(manifest)
    passes = sorted(paths.passes_dir.glob("rna.*.exr"))
    assert len(passes) == 8
    for path in passes:
        image = io.read_image(path)
        for name in image.channels:
            assert np.isfinite(image.channel(name)).all(), f"{path.name}: {name}"
    ref = [f for f in report["frames"] if f["frame"] == manifest["reference_frame"]][0]
    assert ref["matte_coverage"] >= 0.5 and math.isfinite(ref["psnr_atlas"])
    assert report["reference_uv_error_px"]["p90"] <= QCSettings().max_reference_uv_px
    assert not any("UV mapping is off" in w for w in report["warnings"])


def manifest_frames(manifest: dict[str, Any]) -> list[int]:
    first, last = (int(x) for x in str(manifest["frames"]).split("-"))
    return list(range(first, last + 1))


def test_a_cuda_device_without_cuda_is_one_line_exit_2(tmp_path: Path) -> None:
    manifest = write_shot(make_shot("tiny", seed=0), tmp_path, truth=False, srgb=False)
    run = subprocess.run(
        [sys.executable, "-m", "rna_engine", *_argv(tmp_path, manifest, CONVERGED, "cuda:0")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    if "CUDA is not available" not in run.stderr:
        pytest.skip("this machine has CUDA")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["border", "flat"])
def test_a_border_roi_and_a_flat_wall_build_as_well_as_an_inner_textured_roi(
    tmp_path: Path, kind: str
) -> None:
    """An ROI that touches the frame's edge (a banner) builds as well as one inside it; an
    untextured wall is a valid shot and builds."""
    inner = make_shot("tiny", seed=1, roi_scale=0.6)
    other = {"border": {"roi_x": 0.12}, "flat": {"texture_contrast": 0.03}}[kind]
    shot = make_shot("tiny", seed=1, roi_scale=0.6, **other)
    if kind == "border":
        assert shot.roi[:, 0].max() >= 0.5 and inner.roi[:, 0].max() == 0.0
    errors = {}
    for name, s in (("inner", inner), (kind, shot)):
        folder = tmp_path / name
        manifest = write_shot(s, folder, truth=False, srgb=False)
        assert main(_argv(folder, manifest, CONVERGED)) == 0
        assert json.loads(_version(folder).status_json.read_text())["state"] == "done"
        errors[name] = _uv_error_median(s, _version(folder))
    if kind == "border":  # measured (px): inner 0.11, border 0.29
        assert errors[kind] <= max(2.0 * errors["inner"], errors["inner"] + 0.3), errors
    else:  # nothing to track on a flat wall, and nothing to see drift on: it must build
        assert errors[kind] < 1.5, errors  # measured 1.0 px


def test_a_plate_of_bare_frame_numbers_from_0_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`frames/#####.exr` over `00000.exr …` (DAVIS, camera dumps), relative to the cwd."""
    shot = make_shot("tiny", seed=0, first_frame=0)
    manifest = write_shot(shot, tmp_path / "shot", truth=False, srgb=False)
    frames = tmp_path / "frames"
    frames.mkdir()
    for number in shot.frame_numbers:
        src = tmp_path / "shot" / io.frame_path(manifest["plate"], number)
        src.rename(frames / f"{number:05d}.exr")
    monkeypatch.chdir(tmp_path)
    argv = ["build", "--plate", "frames/#####.exr", "--roi", "shot/roi.exr"]
    argv += ["--ref", str(manifest["reference_frame"]), "--preset", "draft", "--device", "cpu"]
    argv += ["--out", "cache", "--name", "q", *[f"--set={s}" for s in CONVERGED]]
    assert main(argv) == 0
    paths = _version(tmp_path)
    assert json.loads(paths.status_json.read_text())["state"] == "done"
    assert sorted(int(p.name.split(".")[1]) for p in paths.passes_dir.glob("rna.*.exr")) == (
        shot.frame_numbers
    )
