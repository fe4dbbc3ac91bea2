"""End to end on a tiny synthetic shot: build (CLI) → paint → apply, against exact ground truth.

Also: the bad inputs of a build exit 2 with one line naming the culprit and leave no cache, and
a build killed with SIGKILL mid-fit resumes from its checkpoint when rerun.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rna_engine.apply import ApplySettings, apply_sequence
from rna_engine.cli import main
from rna_engine.errors import InputError
from rna_engine.media import io
from rna_engine.media.cache import MATTE, PASS_CHANNELS, UV_U, BuildPaths
from rna_engine.media.colour import working_space
from rna_engine.media.metrics import encoded_error
from rna_engine.pipeline import Ingested, ingest
from rna_engine.runtime.context import RunContext
from rna_engine.settings import spec_from_dict
from rna_engine.stages.inputs import resolve_inputs
from rna_engine.synthetic.shots import make_shot, paint_pattern, write_shot

TINY_SETTINGS = [
    "ingest.working_long_side=64",
    "fit.pretrain_steps=100",
    "fit.iterations=1000",
    "fit.batch_size=1536",
    "fit.log_every=50",
    "fit.checkpoint_every=100",
    "fit.scale_with_shot=false",
    "fit.mapping_width=64",
    "fit.hash_grid.n_levels=8",
    "fit.hash_grid.log2_hashmap_size=12",
    "fit.hash_grid.base_resolution=8",
    "fit.hash_grid.per_level_scale=1.5",
    "refine.iterations=400",
]


def _build_args(shot_dir: Path, out: Path, ref: int, extra: list[str] | None = None) -> list[str]:
    args = [
        "build",
        "--plate",
        str(shot_dir / "plate" / "plate.####.exr"),
        "--roi",
        str(shot_dir / "roi.exr"),
        "--ref",
        str(ref),
        "--out",
        str(out),
        "--name",
        "tiny",
        "--preset",
        "draft",
        "--device",
        "cpu",
    ]
    for item in TINY_SETTINGS:
        args += ["--set", item]
    return args + (extra or [])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    shot = make_shot("tiny", seed=0)
    write_shot(shot, root / "shot", truth=False, srgb=False)
    assert main(_build_args(root / "shot", root / "cache", shot.reference_frame)) == 0
    paths = BuildPaths(root / "cache" / "tiny" / "v001")
    return {"root": root, "shot": shot, "paths": paths}


def test_cache_layout_and_headers(built: dict) -> None:
    paths: BuildPaths = built["paths"]
    shot = built["shot"]
    status = json.loads(paths.status_json.read_text())
    assert status["state"] == "done" and status["progress"] == 1.0
    assert set(status["timings"]) >= {"ingest", "correspondences", "fit", "refine", "bake"}
    assert status["gpu_memory_mib"] == {}  # a CPU build has no GPU memory to report
    atlas = io.read_image(paths.atlas_exr)
    assert (atlas.width, atlas.height) == (64, 48) and atlas.channels == ("R", "G", "B", "A")
    np.testing.assert_array_equal(atlas.channel("A") > 0.5, shot.roi > 0.5)
    for number in shot.frame_numbers:
        p = io.read_image(paths.pass_path(number))
        assert set(PASS_CHANNELS) <= set(p.channels)
        assert dict(zip(p.channels, p.channel_formats, strict=True))[UV_U] == "float"
        assert p.attributes["rna/frame"] == number
        assert p.attributes["rna/reference_frame"] == shot.reference_frame
        assert p.compression == "zips"
        assert p.display_window == (0, 0, 64, 48)
    report = json.loads((paths.qc_dir / "report.json").read_text())
    assert len(report["frames"]) == shot.n_frames and report["psnr_atlas_mean"] > 28
    ref = report["frames"][shot.reference_index]
    assert ref["occluder_evidence"] == 0.0 and ref["mask_joint"] > 0.9
    assert ref["surface_unsure"] is not None and ref["surface_unsure"] <= 0.05
    assert all(
        f["surface_unsure"] + f["occluder_evidence"] <= 1.0001
        for f in report["frames"]
        if f["surface_unsure"] is not None
    )
    assert all(
        0 <= f["surface_tied"] <= 1 for f in report["frames"] if f["surface_tied"] is not None
    )
    assert all(
        0 <= f["occluder_landing"] <= f["occluder_evidence"]
        for f in report["frames"]
        if f["occluder_evidence"] is not None
    )
    assert report["peak_gpu_memory_mib"] is None and report["peak_gpu_mib_by_stage"] == {}
    assert (paths.qc_dir / "contact.png").stat().st_size > 1000
    build = json.loads(paths.build_json.read_text())
    assert build["settings"]["fit"]["iterations"] == 1000 and build["version"] == 1


def test_reference_frame_uv_is_identity_stmap(built: dict) -> None:
    paths: BuildPaths = built["paths"]
    shot = built["shot"]
    p = io.read_image(paths.pass_path(shot.reference_frame))
    ys, xs = np.mgrid[0:48, 0:64]
    inside = shot.roi > 0.5
    u_err = (p.channel("rna_uv.u") - (xs + 0.5) / 64) * 64
    v_err = (p.channel("rna_uv.v") - (1 - (ys + 0.5) / 48)) * 48
    assert np.hypot(u_err, v_err)[inside].mean() < 1.0


def test_unpainted_atlas_gives_the_plate_bit_identical(built: dict, tmp_path: Path) -> None:
    paths, root = built["paths"], built["root"]
    out = apply_sequence(
        paths.root,
        paths.atlas_exr,
        root / "shot/plate/plate.####.exr",
        tmp_path / "comp.####.exr",
        ApplySettings(),
    )
    for number, path in zip(built["shot"].frame_numbers, out, strict=True):
        comp = io.read_image(path).pixels[..., :3]
        plate = io.read_image(io.frame_path(root / "shot/plate/plate.####.exr", number))
        np.testing.assert_array_equal(comp, plate.pixels[..., :3])


def test_edit_matches_ground_truth(built: dict, tmp_path: Path) -> None:
    paths, root, shot = built["paths"], built["root"], built["shot"]
    atlas = io.read_image(paths.atlas_exr).select(("R", "G", "B", "A"))
    edit = paint_pattern(64, 48, shot.roi)
    edit[..., 3] *= shot.roi  # paint inside the ROI only, as an artist on the atlas would
    painted = atlas.copy()
    a = edit[..., 3:4]
    painted[..., :3] = atlas[..., :3] * (1 - a) + edit[..., :3] * a
    io.write_rgba_exr(tmp_path / "painted.exr", painted, pixel_type="float")
    out = apply_sequence(
        paths.root,
        tmp_path / "painted.exr",
        root / "shot/plate/plate.####.exr",
        tmp_path / "comp.####.exr",
        ApplySettings(filter="linear"),
    )
    comps = np.stack([io.read_image(p).pixels[..., :3] for p in out])
    expected = shot.render_edit(edit)
    roi = shot.roi_tracked > 0.5
    err, count = encoded_error(comps, expected, roi, working_space("scene_linear").encode)
    psnr = -10 * np.log10(err / count)
    assert psnr >= 35.0, psnr
    paint = np.abs(comps - shot.plate_linear).sum(-1)
    on_occluders = paint[shot.occlusion > 0.5].sum() / paint.sum()
    assert on_occluders < 0.01, on_occluders


def test_rebuild_same_settings_is_a_noop_and_other_settings_get_v002(built: dict) -> None:
    root, shot = built["root"], built["shot"]
    before = built["paths"].atlas_exr.stat().st_mtime_ns
    assert main(_build_args(root / "shot", root / "cache", shot.reference_frame)) == 0
    assert built["paths"].atlas_exr.stat().st_mtime_ns == before
    assert not (root / "cache" / "tiny" / "v002").exists()


def _bad_shot(tmp_path: Path, frames: int = 3) -> Path:
    shot = make_shot("tiny", seed=1, frames=frames)
    write_shot(shot, tmp_path, truth=False, srgb=False)
    return tmp_path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_roi", "roi.exr: the ROI is empty"),
        ("full_roi", "roi.exr: the ROI covers the whole frame"),
        ("ref_outside", "reference frame 2000: outside"),
        ("single_frame", "at least 2 frames"),
        ("roi_size", "roi.exr: the ROI is 32x32 but the plate is 64x48"),
    ],
)
def test_bad_build_inputs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    shot_dir = _bad_shot(tmp_path / "shot", frames=2 if case == "single_frame" else 3)
    ref = 1001
    if case == "single_frame":
        (shot_dir / "plate" / "plate.1002.exr").unlink()
    if case == "empty_roi":
        io.write_exr(shot_dir / "roi.exr", {"A": np.zeros((48, 64))})
    elif case == "full_roi":
        io.write_exr(shot_dir / "roi.exr", {"A": np.ones((48, 64))})
    elif case == "ref_outside":
        ref = 2000
    elif case == "roi_size":
        io.write_exr(shot_dir / "roi.exr", {"A": np.ones((32, 32))})
    code = main(_build_args(shot_dir, tmp_path / "cache", ref))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "cache").exists()  # nothing written


def _ingest(shot_dir: Path, workers: int) -> Ingested:
    spec = spec_from_dict(
        {
            "plate": str(shot_dir / "plate" / "plate.####.exr"),
            "roi": str(shot_dir / "roi.exr"),
            "reference_frame": 1001,
            "settings": {"preset": "draft", "ingest": {"working_long_side": 32}},
        }
    )
    return ingest(resolve_inputs(spec), spec.settings.ingest, RunContext(io_workers=workers))


def test_ingest_names_the_first_wrong_sized_frame_in_the_middle(tmp_path: Path) -> None:
    shot_dir = _bad_shot(tmp_path, frames=8)
    culprit = shot_dir / "plate" / "plate.1005.exr"
    io.write_exr(culprit, {c: np.ones((24, 32)) for c in "RGB"})
    io.write_exr(shot_dir / "plate" / "plate.1007.exr", {c: np.ones((8, 8)) for c in "RGB"})
    with pytest.raises(InputError) as err:
        _ingest(shot_dir, workers=4)
    assert str(err.value) == f"{culprit}: frame 1005 is 32x24 but frame 1001 is 64x48"


def test_ingest_warns_of_nan_in_frame_order_and_does_not_depend_on_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shot_dir = _bad_shot(tmp_path, frames=6)
    expected = []
    for number, count in ((1002, 2), (1005, 1)):
        path = shot_dir / "plate" / f"plate.{number:04d}.exr"
        rgb = io.read_image(path).select(("R", "G", "B"))
        rgb[0, :count, 1] = np.nan
        io.write_exr(path, {c: rgb[..., i] for i, c in enumerate("RGB")})
        expected.append(f"{path}: {count} NaN/Inf values replaced by 0")
    caplog.set_level(logging.WARNING, logger="rna_engine.pipeline")
    runs = []
    for workers in (1, 4):
        caplog.clear()
        runs.append(_ingest(shot_dir, workers))
        assert [r.getMessage() for r in caplog.records] == expected
    assert np.isfinite(runs[0].working).all()
    assert runs[0].working.tobytes() == runs[1].working.tobytes()


def test_sigkill_mid_fit_resumes_from_checkpoint(tmp_path: Path) -> None:
    shot = make_shot("tiny", seed=2, frames=4)
    write_shot(shot, tmp_path / "shot", truth=False, srgb=False)
    args = [sys.executable, "-m", "rna_engine"] + _build_args(
        tmp_path / "shot",
        tmp_path / "cache",
        shot.reference_frame,
        [
            "--set",
            "fit.iterations=300",
            "--set",
            "fit.checkpoint_every=50",
            "--set",
            "refine.iterations=20",
        ],
    )
    env = {**os.environ, "RNA_HOME": str(tmp_path / "home")}
    work = tmp_path / "cache" / "tiny" / "v001" / "work"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ckpt = work / "fit.ckpt"
        if ckpt.exists():
            import torch

            state = torch.load(ckpt, weights_only=False)
            if state["stage"] == "fit" and state["step"] >= 50:
                break
        if proc.poll() is not None:
            pytest.fail("the build ended before it could be killed")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((work.parent / "status.json").read_text())
    assert status["state"] == "running"  # killed: nothing claims it finished
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming fit from fit step" in rerun.stderr
    status = json.loads((work.parent / "status.json").read_text())
    assert status["state"] == "done"
    assert status["qc"]["psnr_atlas_mean"] > 25
    assert sorted(io.find_frames(work.parent / "passes" / "rna.####.exr")) == shot.frame_numbers
    matte = io.read_image(work.parent / "passes" / f"rna.{shot.reference_frame}.exr")
    assert matte.channel(MATTE).max() > 0.9
