"""rna_engine.stages.bake on a tiny synthetic shot: the pipelined bake (readers, device work, writers).

One short fit is shared by the module. The pass files do not depend on the number of I/O
workers (bit for bit, headers included); a write error stops the bake with its own type and
leaves no partial or temporary file; a cancel stops it the same way; progress counts files
already on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rna_engine.errors import Cancelled, InputError
from rna_engine.media import colour, io
from rna_engine.media.cache import PASS_CHANNELS, BuildPaths
from rna_engine.runtime.context import RunContext
from rna_engine.runtime.progress import CancelToken
from rna_engine.settings import build_settings
from rna_engine.stages.bake import PlateFormat, bake, shade_linear
from rna_engine.stages.correspondences import compute_correspondences
from rna_engine.stages.fit import FitResult, Fitter, ShotTensors
from rna_engine.synthetic import shots as synth

SHORT_FIT: dict[str, Any] = {
    "fit": {
        "pretrain_steps": 40,
        "iterations": 150,
        "batch_size": 1024,
        "log_every": 50,
        "checkpoint_every": 1000,
        "scale_with_shot": False,
        "mapping_width": 32,
        "hash_grid": {"n_levels": 6, "log2_hashmap_size": 10, "base_resolution": 8},
    },
    "refine": {"iterations": 30},
}


@dataclass
class Case:
    shot: synth.SynthShot
    result: FitResult
    space: colour.WorkingSpace
    settings: Any
    holdout: np.ndarray


@pytest.fixture(scope="module")
def case() -> Case:
    torch.set_num_threads(2)
    # Plate 2× the working size, so the bake really works at plate resolution.
    shot = synth.make_shot("tiny", seed=0)
    space = colour.working_space("scene_linear")
    frames = torch.from_numpy(space.encode(shot.plate_linear)).permute(0, 3, 1, 2).contiguous()
    small = torch.nn.functional.avg_pool2d(frames, 2)
    roi = torch.from_numpy(shot.roi[::2, ::2].copy())
    settings = build_settings("draft", SHORT_FIT)
    ctx = RunContext(device="cpu", seed=0)
    corr = compute_correspondences(small, roi, shot.reference_index, settings.flow, ctx)
    result = Fitter(
        ShotTensors(small, roi, shot.reference_index, corr), settings.fit, settings.refine, ctx
    ).run()
    holdout = np.zeros((shot.params.height, shot.params.width), np.float32)
    holdout[:, :20] = np.linspace(0, 1, 20, dtype=np.float32)
    return Case(shot, result, space, settings, holdout)


class Recorder:
    """A reporter that records (fraction, pass files on disk) at every bake event."""

    def __init__(
        self, paths: BuildPaths, cancel_after: int = 0, token: CancelToken | None = None
    ) -> None:
        self.paths = paths
        self.events: list[tuple[float, int]] = []
        self.cancel_after = cancel_after
        self.token = token

    def update(self, stage: str, progress: float, message: str = "", **metrics: Any) -> None:
        if stage != "bake":
            return
        on_disk = len(list(self.paths.passes_dir.glob("rna.*.exr")))
        self.events.append((progress, on_disk))
        if self.token is not None and len(self.events) > self.cancel_after:
            self.token.cancel()


def run_bake(
    case: Case,
    root: Path,
    workers: int,
    reporter: Recorder | None = None,
    cancel: CancelToken | None = None,
    read_plate: Callable[[int], np.ndarray] | None = None,
    result: FitResult | None = None,
) -> BuildPaths:
    paths = BuildPaths(root / "v001")
    shot = case.shot
    p = shot.params
    ctx = RunContext(device="cpu", seed=0, io_workers=workers, cancel=cancel or CancelToken())
    if reporter is not None:
        ctx.reporter = reporter

    def plate(number: int) -> np.ndarray:
        return shot.plate_linear[shot.frame_numbers.index(number)]

    bake(
        result or case.result,
        shot.frame_numbers,
        read_plate or plate,
        lambda number: case.holdout,
        shot.roi,
        PlateFormat(p.width, p.height, p.width // 2, p.height // 2),
        case.space,
        case.settings.bake,
        case.settings.matte,
        paths,
        {"rna/build_hash": "test"},
        ctx,
    )
    return paths


def leftovers(paths: BuildPaths) -> list[str]:
    """Temporary files of atomic writes still in the passes folder."""
    return sorted(p.name for p in paths.passes_dir.iterdir() if p.name.startswith("."))


def _header(image: io.ImageData) -> dict[str, Any]:
    """Header attributes less the write time OpenImageIO stamps on every file."""
    return {k: v for k, v in image.attributes.items() if k != "DateTime"}


def test_passes_do_not_depend_on_the_number_of_workers(case: Case, tmp_path: Path) -> None:
    one = run_bake(case, tmp_path / "one", workers=1)
    four = run_bake(case, tmp_path / "four", workers=4)
    names = sorted(p.name for p in one.passes_dir.iterdir())
    assert names == [f"rna.{n:04d}.exr" for n in case.shot.frame_numbers]
    assert sorted(p.name for p in four.passes_dir.iterdir()) == names
    for name in names:
        a, b = io.read_image(one.passes_dir / name), io.read_image(four.passes_dir / name)
        assert a.channels == b.channels and set(a.channels) == set(PASS_CHANNELS)
        assert a.data_window == b.data_window and a.channel_formats == b.channel_formats
        for channel in a.channels:
            assert a.channel(channel).tobytes() == b.channel(channel).tobytes(), (name, channel)
        assert _header(a) == _header(b)
    assert _header(io.read_image(one.atlas_exr)) == _header(io.read_image(four.atlas_exr))
    # Not a trivial cache: the matte has soft values.
    matte = io.read_image(one.pass_path(case.shot.frame_numbers[0])).channel("rna_matte.m")
    assert 0.0 < float(matte.mean()) < 1.0 and np.any((matte > 0.05) & (matte < 0.95))


def test_no_matte_where_the_camera_prior_cannot_put_the_roi(case: Case, tmp_path: Path) -> None:
    """`refine.camera_gate` in the bake: with a prior that puts every pixel away from the ROI
    (the ROI has left the frame, T has not), the tracked ROI and the matte are empty."""
    import dataclasses

    assert case.result.camera_region is not None
    away = dataclasses.replace(case.result, camera_region=(-1e4, -1e4, -9e3, -9e3))
    kept = run_bake(case, tmp_path / "kept", workers=1)
    dropped = run_bake(case, tmp_path / "dropped", workers=1, result=away)
    for number in case.shot.frame_numbers:
        before = io.read_image(kept.pass_path(number)).channel("rna_matte.m")
        after = io.read_image(dropped.pass_path(number)).channel("rna_matte.m")
        assert float(before.sum()) > 100.0 and float(after.max()) == 0.0, number


def test_progress_counts_files_written(case: Case, tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "v001")
    recorder = Recorder(paths)
    run_bake(case, tmp_path, workers=3, reporter=recorder)
    n = len(case.shot.frame_numbers)
    frames = [(p, k) for p, k in recorder.events if p > 0]
    assert [p for p, _ in frames] == [(i + 1) / n for i in range(n)]
    for progress, on_disk in frames:
        assert on_disk >= round(progress * n)


def test_write_error_stops_the_bake_with_its_type_and_no_partial_file(
    case: Case, tmp_path: Path
) -> None:
    paths = BuildPaths(tmp_path / "v001")
    blocked = paths.pass_path(case.shot.frame_numbers[2])
    blocked.mkdir(parents=True)  # a folder where the file goes: the rename fails
    with pytest.raises(OSError, match="Is a directory"):
        run_bake(case, tmp_path, workers=4)
    assert leftovers(paths) == []
    for path in paths.passes_dir.glob("rna.*.exr"):
        if path != blocked:
            assert set(io.read_image(path).channels) == set(PASS_CHANNELS)


def test_read_error_keeps_its_type(case: Case, tmp_path: Path) -> None:
    def plate(number: int) -> np.ndarray:
        if number == case.shot.frame_numbers[3]:
            raise InputError(f"plate.{number}.exr: truncated or corrupt")
        return case.shot.plate_linear[case.shot.frame_numbers.index(number)]

    with pytest.raises(InputError, match="truncated"):
        run_bake(case, tmp_path, workers=4, read_plate=plate)
    paths = BuildPaths(tmp_path / "v001")
    assert leftovers(paths) == []
    assert not paths.pass_path(case.shot.frame_numbers[3]).exists()


def test_cancel_stops_the_bake_and_leaves_only_whole_files(case: Case, tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "v001")
    token = CancelToken()
    recorder = Recorder(paths, cancel_after=1, token=token)
    with pytest.raises(Cancelled):
        run_bake(case, tmp_path, workers=2, reporter=recorder, cancel=token)
    written = sorted(paths.passes_dir.glob("rna.*.exr"))
    assert len(written) < len(case.shot.frame_numbers)
    assert leftovers(paths) == []
    for path in written:
        assert set(io.read_image(path).channels) == set(PASS_CHANNELS)


def with_detail(case: Case, frames: int) -> Case:
    """The case with `bake.reference_detail` = `frames`."""
    import dataclasses

    bake = dataclasses.replace(case.settings.bake, reference_detail=frames)
    return dataclasses.replace(case, settings=dataclasses.replace(case.settings, bake=bake))


def reference_recon(paths: BuildPaths, case: Case) -> np.ndarray:
    """(H, W, 3) shade × atlas(uv) of the reference frame, as the comp computes it."""
    from rna_engine.media.stmap import sample_stmap

    number = case.shot.frame_numbers[case.shot.reference_index]
    atlas = io.read_image(paths.atlas_exr).select(("R", "G", "B"))
    passes = io.read_image(paths.pass_path(number))
    uv = passes.select(("rna_uv.u", "rna_uv.v"))
    shade = passes.select(("rna_shade.red", "rna_shade.green", "rna_shade.blue"))
    return shade * sample_stmap(atlas, uv, "linear")


def test_the_reference_detail_gives_the_reference_plate_back_inside_the_roi_only(
    case: Case, tmp_path: Path
) -> None:
    """`bake.reference_detail` = 1: at the reference frame, shade × atlas(uv) is the plate
    itself on the ROI (the field alone only approximates it); outside the ROI the atlas is the
    field's, unchanged."""
    assert case.settings.bake.reference_detail == 0  # off by default
    on = run_bake(with_detail(case, 1), tmp_path / "on", workers=1)
    off = run_bake(case, tmp_path / "off", workers=1)
    shot = case.shot
    plate = shot.plate_linear[shot.reference_index]
    inside = synth_interior(shot.roi)
    errors = {}
    for label, paths in (("on", on), ("off", off)):
        rel = np.abs(reference_recon(paths, case) - plate).max(-1)
        errors[label] = (rel / np.maximum(np.abs(plate).max(-1), 1e-3))[inside]
    assert np.quantile(errors["on"], 0.9) < 5e-3, np.quantile(errors["on"], 0.9)
    assert np.median(errors["off"]) > 10 * np.median(errors["on"])
    a_on = io.read_image(on.atlas_exr).pixels
    a_off = io.read_image(off.atlas_exr).pixels
    outside = a_off[..., 3] == 0
    assert outside.any() and np.array_equal(a_on[outside], a_off[outside])
    assert np.array_equal(a_on[..., 3], a_off[..., 3])


def test_more_detail_frames_average_the_grain_out(case: Case) -> None:
    """Plates made from the fit's own UVs and shade over a known texture, plus grain: the
    reference alone puts its grain in the atlas; the mean of five frames' pixels, splatted
    through T, is the texture with the grain averaged out."""
    from rna_engine.media.stmap import sample_stmap
    from rna_engine.model.stmap_torch import uv_norm_to_stmap
    from rna_engine.stages.bake import detail_frames, reference_detail
    from rna_engine.stages.fit import query_fields

    shot, result, space = case.shot, case.result, case.space
    p = shot.params
    fmt = PlateFormat(p.width, p.height, p.width // 2, p.height // 2)
    ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float32)
    texture = np.stack(
        [0.4 + 0.2 * np.sin(xs / 5.0), 0.4 + 0.2 * np.cos(ys / 4.0), 0.3 + 0.0 * xs], -1
    ).astype(np.float32)
    rng = np.random.default_rng(3)
    grain = 0.03
    plates = {}
    for t in range(shot.n_frames):
        q = query_fields(
            result, *fmt.working_xy(torch.from_numpy(xs.ravel()), torch.from_numpy(ys.ravel())), t
        )
        uv = uv_norm_to_stmap(q["uv_norm"], result.geometry.width, result.geometry.height)
        uv = uv.float().numpy().reshape(p.height, p.width, 2)
        shade = shade_linear(q["shaded"].clamp(0, 1).numpy(), q["atlas"].numpy(), space)
        clean = shade.reshape(p.height, p.width, 3) * sample_stmap(texture, uv, "linear")
        plates[t] = (clean + grain * rng.standard_normal(clean.shape)).astype(np.float32)
    field = np.zeros((p.height, p.width, 4), np.float32)
    field[..., 3] = shot.roi
    inside = synth_interior(shot.roi, 3)
    errors = {}
    for k in (1, 5):
        frames = detail_frames(shot.n_frames, shot.reference_index, k)
        atlas, share = reference_detail(
            field,
            result,
            fmt,
            plates.__getitem__,
            frames,
            space,
            case.settings.bake,
            torch.device("cpu"),
        )
        assert share > 0.9
        errors[k] = float(np.sqrt(((atlas[..., :3] - texture)[inside] ** 2).mean()))
    assert grain * 0.5 < errors[1] < grain * 2.5, errors
    assert errors[5] < 0.7 * errors[1], errors


def synth_interior(roi: np.ndarray, px: int = 2) -> np.ndarray:
    """ROI pixels at least `px` inside its border (bilinear lookups there see only the ROI)."""
    import cv2

    core = cv2.erode((roi > 0.5).astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8))
    return core > 0
