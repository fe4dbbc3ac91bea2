"""Issue 6 end to end: a Build from a fake-Nuke session runs the real engine; RNAApply reproduces it.

A tiny synthetic shot is written to tmp; in the fake Nuke (headless) a plate Read and an ROI Read
feed an RNAAtlasBuild made by `glue.create_node`; its Build button starts the REAL engine
(`python -m rna_engine serve` through `rna_nuke.launcher`) and the real pipeline builds the cache
on the CPU with tiny settings given through the `engine_settings` knob. The atlas is then painted
and the parsed RNAApply group, evaluated with numpy (nkeval) on an RNAApply pointed at that cache,
is compared with `rna_engine.apply.apply_frame` (what `rna-engine apply` writes) for every frame.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeval
import nkparse
import numpy as np
import pytest

from rna_engine.apply import ApplySettings, apply_frame, read_edited_atlas
from rna_engine.media import io
from rna_engine.media.cache import MASK, MATTE, SHADE, UV_U, UV_V
from rna_engine.synthetic.shots import make_shot, paint_pattern, write_shot

pytestmark = pytest.mark.slow

GIZMOS = Path(__file__).resolve().parents[2] / "gizmos"
TINY_SETTINGS = {
    "ingest": {"working_long_side": 64},
    "fit": {
        "pretrain_steps": 50,
        "iterations": 150,
        "batch_size": 1024,
        "log_every": 50,
        "scale_with_shot": False,
        "mapping_width": 64,
        "hash_grid": {
            "n_levels": 8,
            "log2_hashmap_size": 12,
            "base_resolution": 8,
            "per_level_scale": 1.5,
        },
    },
    "refine": {"iterations": 50},
}
"""CPU-sized fit (the build takes about a minute)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _shutdown_engine(home: Path) -> bool:
    """Ask the engine started under `home` to stop; kill it (by its pid) if it does not.

    Returns True when it stopped by itself (or none was running).
    """
    from rna_nuke import launcher
    from rna_nuke.client import read_discovery

    data = read_discovery(home / "engine.json") or {}
    pid = data.get("pid")
    try:
        client = launcher.find_engine(home)
        if client is not None:
            client.shutdown()
    except Exception:  # noqa: BLE001 - the finalizer must reach the kill below
        pass
    if not isinstance(pid, int):
        return True
    deadline = time.monotonic() + 30.0
    while _pid_alive(pid) and time.monotonic() < deadline:
        for process in launcher._STARTED:  # reap our child so it does not linger as a zombie
            if process.pid == pid:
                process.poll()
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, 9)
        return False
    return True


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shot, the Build through the real engine, and an RNAApply pointed at its cache."""
    import fake_nuke

    root = tmp_path_factory.mktemp("e2e")
    home = root / "rna_home"
    shot = make_shot("tiny", seed=0)
    write_shot(shot, root / "shot", truth=False, srgb=False)
    frames = shot.frame_numbers
    cache_dir = root / "cache" / "RNAAtlasBuild1"

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNA_HOME", str(home))
        mp.setenv("RNA_ENGINE_PYTHON", sys.executable)
        mp.delenv("RNA_ENGINE_PYTHONPATH", raising=False)
        mp.setitem(sys.modules, "nuke", fake_nuke)
        mp.setattr(sys, "path", list(sys.path))
        nuke = fake_nuke
        nuke.reset()
        try:
            from rna_nuke import glue

            nuke.GUI = False
            nuke.root()["name"].setValue(str(root / "comp.nk"))
            nuke.root()["first_frame"].setValue(frames[0])
            nuke.root()["last_frame"].setValue(frames[-1])
            plate = nuke.nodes.Read(
                file=str(root / "shot" / "plate" / "plate.####.exr"),
                first=frames[0],
                last=frames[-1],
            )
            roi = nuke.nodes.Read(file=str(root / "shot" / "roi.exr"), first=1, last=1)
            node = glue.create_node("RNAAtlasBuild")
            node.setInput(0, plate)
            node.setInput(1, roi)
            node["reference_frame"].setValue(shot.reference_frame)
            node["quality"].setValue("draft")
            node["device"].setValue("cpu")
            node["cache_dir"].setValue(str(cache_dir))
            node["engine_settings"].setValue(json.dumps(TINY_SETTINGS))

            job = glue.build(node)  # headless: the default factory starts the real engine
            assert job is not None, node["status"].value()
            engine = json.loads((home / "engine.json").read_text())

            apply_node = glue.create_node("RNAApply")
            apply_node.setInput(0, plate)
            apply_node["cache_dir"].setValue(glue.evaluated_cache_dir(node))
            apply_node["version"].setValue(int(node["version"].value()))
            yield {
                "root": root,
                "home": home,
                "shot": shot,
                "frames": frames,
                "version_dir": Path(glue.cache_path_of(node)),
                "status": node["status"].value(),
                "cache_ready": node["cache_ready"].value(),
                "cache_range": (node["cache_first"].value(), node["cache_last"].value()),
                "job_id": node["job_id"].value(),
                "engine_pid": engine["pid"],
                "plate_file": str(plate["file"].value()),
                "apply": {
                    "cache_dir": str(apply_node["cache_dir"].value()),
                    "version": int(apply_node["version"].value()),
                },
            }
        finally:
            stopped = _shutdown_engine(home)
            nuke.reset()
    assert stopped, "the engine did not stop on shutdown (killed)"
    assert not (home / "engine.json").exists()  # a clean exit removes its discovery file


def test_build_through_the_real_engine_writes_the_cache(built: dict[str, Any]) -> None:
    version_dir: Path = built["version_dir"]
    frames: list[int] = built["frames"]
    assert version_dir == built["root"] / "cache" / "RNAAtlasBuild1" / "v001"
    status = json.loads((version_dir / "status.json").read_text())
    assert status["state"] == "done", status
    assert built["status"].startswith("done"), built["status"]
    assert built["cache_ready"] is True
    assert built["cache_range"] == (frames[0], frames[-1])
    build = json.loads((version_dir / "build.json").read_text())
    assert build["settings"]["fit"]["iterations"] == 150  # the engine_settings knob arrived
    assert build["settings"]["preset"] == "draft" and build["device"] == "cpu"
    shot = built["shot"]
    for frame in frames:
        passes = io.read_image(version_dir / "passes" / f"rna.{frame:04d}.exr")
        assert (passes.width, passes.height) == (shot.params.width, shot.params.height)
        assert {UV_U, UV_V, MATTE, MASK, *SHADE} <= set(passes.channels)
    assert (version_dir / "atlas" / "atlas.exr").is_file()
    # the engine was a separate process started by the launcher, and served this job
    assert built["engine_pid"] != os.getpid()
    assert built["job_id"]
    assert (built["home"] / "logs" / "engine.stdout.log").is_file()


@pytest.fixture(scope="module")
def painted(built: dict[str, Any]) -> Path:
    """The cache's atlas with `paint_pattern` over it, as a float EXR."""
    atlas = io.read_image(built["version_dir"] / "atlas" / "atlas.exr")
    rgb = atlas.select(io.rgb_channel_names(atlas.channels))
    height, width = rgb.shape[:2]
    roi = built["shot"].roi if built["shot"].roi.shape == (height, width) else None
    paint = paint_pattern(width, height, roi)
    alpha = paint[..., 3:]
    out = np.concatenate([rgb * (1.0 - alpha) + paint[..., :3] * alpha, alpha], axis=-1)
    path = built["root"] / "painted" / "atlas_painted.exr"
    io.write_rgba_exr(path, out.astype(np.float32), pixel_type="float")
    return path


DELTA_THRESHOLD = 0.0
"""The knob's default: both sides flag exactly the same texels as edited."""


def _frame_inputs(
    built: dict[str, Any], frame: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(plate RGBA as the plate Read gives it, plate RGB, passes) of `frame`."""
    plate = io.read_image(built["plate_file"].replace("####", f"{frame:04d}"))
    passes = io.read_image(built["version_dir"] / "passes" / f"rna.{frame:04d}.exr")
    return (
        plate.pixels,
        plate.select(io.rgb_channel_names(plate.channels)),
        {c: passes.channel(c) for c in passes.channels},
    )


def _gizmo_comp(
    built: dict[str, Any], painted: Path, frame: int, plate: np.ndarray, knobs: dict[str, Any]
) -> np.ndarray:
    """RNAApply's output for `frame`, the group evaluated by nkeval with the node's knobs."""
    gizmo = nkparse.parse_file(GIZMOS / "RNAApply.gizmo").groups()[0]
    frames: list[int] = built["frames"]
    shot = built["shot"]
    evaluator = nkeval.GizmoEvaluator(
        gizmo,
        {
            0: nkeval.Image.from_rgba(plate),
            1: nkeval.Image.from_rgba(io.read_image(painted).pixels),
        },
        {**built["apply"], **knobs},
        frame,
        {"first_frame": frames[0], "last_frame": frames[-1]},
        (shot.params.width, shot.params.height),
    )
    got = evaluator.output().rows()
    version_dir: Path = built["version_dir"]
    assert sorted(p.relative_to(version_dir).as_posix() for p in evaluator.reads) == [
        "atlas/atlas.exr",
        f"passes/rna.{frame:04d}.exr",
    ]
    return got


def _atlases(built: dict[str, Any], painted: Path) -> tuple[np.ndarray, np.ndarray]:
    orig_image = io.read_image(built["version_dir"] / "atlas" / "atlas.exr")
    atlas_orig = orig_image.select(io.rgb_channel_names(orig_image.channels))
    return atlas_orig, read_edited_atlas(painted, atlas_orig.shape[:2])


@pytest.mark.parametrize("mode", ["delta", "replace"])
def test_rnaapply_gizmo_reproduces_rna_engine_apply(
    built: dict[str, Any], painted: Path, mode: str
) -> None:
    frames: list[int] = built["frames"]
    shot = built["shot"]
    atlas_orig, atlas_edit = _atlases(built, painted)
    settings = ApplySettings(mode=mode, output="comp", delta_threshold=DELTA_THRESHOLD)  # type: ignore[arg-type]
    knobs = {"mode": mode, "output": "comp", "delta_threshold": DELTA_THRESHOLD}
    changed_frames = 0
    for frame in frames:
        plate, plate_rgb, passes = _frame_inputs(built, frame)
        outputs = apply_frame(plate_rgb, atlas_orig, atlas_edit, passes, settings)
        want = outputs["comp"]
        got = _gizmo_comp(built, painted, frame, plate, knobs)
        assert got.shape == want.shape == (shot.params.height, shot.params.width, 4)
        diff = np.abs(got - want)
        # A UV within ~10⁻⁴ texel of the edge of a painted texel's filter support weighs it by
        # ~10⁻⁸ on one side and exactly 0 on the other: "edited" flips on such a tie (and with
        # it mode replace's choice). Only there, where the engine's delta is nil, may they differ.
        alpha_off = diff[..., 3] > 1e-5
        tie = alpha_off & (np.abs(outputs["delta"][..., :3]).max(-1) < 1e-4)
        assert not (alpha_off & ~tie).any(), (mode, frame)
        # How many UVs land on such an edge depends on the fit (0.1 % of the frame at most
        # before the evidence-based matte of issue #15, 4 of 3 072 pixels after): a bound on
        # ties, not on real differences, which the assertion above keeps at zero.
        assert tie.sum() <= max(1, tie.size // 200), (mode, frame)
        assert diff[~tie].max() < 1e-5, (mode, frame)

        matte = passes[MATTE]
        outside = matte == 0
        assert outside.any() and (~outside).any()
        # where the matte is 0 the comp is the plate, exactly, and its alpha is 0
        np.testing.assert_array_equal(got[..., :3][outside], plate_rgb[outside])
        assert not got[..., 3][outside].any()
        # inside the ROI (carried by the matte) the paint is really there
        difference = np.abs(got[..., :3] - plate_rgb).max(axis=-1)
        assert difference[~outside].max() > 0.1, (mode, frame)
        changed_frames += int(np.count_nonzero(difference > 0.05) > 20)
    assert changed_frames == len(frames)


def test_rnaapply_default_threshold_matches_in_colour(built: dict[str, Any], painted: Path) -> None:
    """At the knobs' defaults (threshold 0) mode delta's colour matches too (alpha: see above)."""
    atlas_orig, atlas_edit = _atlases(built, painted)
    for frame in built["frames"]:
        plate, plate_rgb, passes = _frame_inputs(built, frame)
        want = apply_frame(plate_rgb, atlas_orig, atlas_edit, passes, ApplySettings())["comp"]
        got = _gizmo_comp(built, painted, frame, plate, {})
        assert np.abs(got[..., :3] - want[..., :3]).max() < 1e-5, frame
