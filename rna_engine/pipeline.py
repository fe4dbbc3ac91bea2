"""The build: ingest → correspondences → fit → refine → matte + bake → QC (DESIGN.md §3).

`run_build(spec, ctx)` is what the CLI, the service and the farm run. It validates every input
before anything is written, picks the cache version (never overwriting a finished build of other
settings, resuming an unfinished one of the same), keeps `status.json` current, checkpoints the
fit under `work/`, and publishes every file atomically. A build whose `status.json` says `done`
with the same hash returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, io
from .cache import (
    UV_CONVENTION,
    BuildPaths,
    StatusFile,
    choose_version,
    ensure_writable,
    write_json_atomic,
)
from .colour import WorkingSpace, working_space
from .context import RunContext, open_device
from .errors import Cancelled, InputError
from .gpu_memory import StageMemory
from .pool import io_workers, ordered_map, thread_pool
from .progress import ProgressTracker, Sink
from .settings import BuildSpec, spec_to_dict

log = logging.getLogger(__name__)

STAGE_WEIGHTS = {
    "ingest": 0.04,
    "correspondences": 0.12,
    "fit": 0.62,
    "refine": 0.1,
    "bake": 0.1,
    "qc": 0.02,
}
"""Relative cost of each stage, for the overall progress and ETA."""


@dataclass
class Ingested:
    """The validated inputs of a build."""

    frames: dict[int, Path]
    frame_numbers: list[int]
    reference_index: int
    plate_width: int
    plate_height: int
    working_width: int
    working_height: int
    working: np.ndarray
    """(N, H, W, 3) float32 working-encoded plate at working resolution."""
    roi_plate: np.ndarray
    """(Hp, Wp) float32 ROI matte at plate resolution."""
    roi_working: np.ndarray
    """(H, W) float32 {0, 1} ROI at working resolution."""
    space: WorkingSpace
    holdout: dict[int, Path] | None


def _read_rgb(path: Path) -> tuple[np.ndarray, io.ImageData, int]:
    """A plate file's RGB with NaN/Inf replaced by 0, its image, and how many were replaced."""
    image = io.read_image(path)
    names = io.rgb_channel_names(image.channels)
    rgb = image.select(names)
    bad = 0
    if not np.isfinite(rgb).all():
        bad = int((~np.isfinite(rgb)).sum())
        rgb = np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0)
    return rgb, image, bad


def _warn_non_finite(path: Path, bad: int) -> None:
    if bad:
        log.warning("%s: %d NaN/Inf values replaced by 0", path, bad)


def _plate_rgb(path: Path) -> tuple[np.ndarray, io.ImageData]:
    rgb, image, bad = _read_rgb(path)
    _warn_non_finite(path, bad)
    return rgb, image


def read_matte(path: Path, channel: str, size: tuple[int, int], what: str) -> np.ndarray:
    """One matte channel (H, W) of an image, checked against the plate size (W, H)."""
    image = io.read_image(path)
    matte = image.channel(io.alpha_channel_name(image.channels, channel))
    if (image.width, image.height) != size:
        raise InputError(
            f"{path}: {what} is {image.width}x{image.height} but the plate is {size[0]}x{size[1]}"
        )
    return np.clip(np.nan_to_num(matte), 0.0, 1.0).astype(np.float32)


def _matte_path(spec: BuildSpec, pattern: str, frame: int) -> Path:
    resolved = spec.resolve(pattern)
    if io.parse_pattern(resolved) is None:
        return resolved
    return io.frame_path(resolved, frame)


def ingest(spec: BuildSpec, ctx: RunContext) -> Ingested:
    """Read the plate, ROI and holdout and encode the plate at working resolution.

    Expects `validate_inputs(spec)` to have passed (`run_build` calls it through `prepare`):
    frame count, reference frame and matte sizes are not checked again here.
    """
    settings = spec.settings.ingest
    frames = io.resolve_sequence(spec.resolve(spec.plate), spec.frames)
    numbers = sorted(frames)
    first, first_image = _plate_rgb(frames[numbers[0]])
    height, width = first.shape[:2]
    kind = settings.colour
    if kind == "auto":
        kind = "scene_linear" if io.is_scene_linear_file(first_image) else "display"
    space = working_space(kind, settings.ocio_config)
    ww, wh = io.working_size(width, height, settings.working_long_side)
    roi_path = _matte_path(spec, spec.roi, spec.reference_frame)
    roi_plate = read_matte(roi_path, spec.roi_channel, (width, height), "the ROI")
    roi_working = (io.resize_area(roi_plate[..., None], ww, wh)[..., 0] >= 0.5).astype(np.float32)
    holdout: dict[int, Path] | None = None
    if spec.holdout:
        holdout = io.resolve_sequence(spec.resolve(spec.holdout), io.format_frame_range(numbers))

    def load(number: int) -> tuple[int, tuple[int, ...], np.ndarray | None]:
        """NaN/Inf count, plate size and working frame (None when the size is wrong)."""
        if number == numbers[0]:
            rgb, bad = first, 0  # read (and warned about) above
        else:
            rgb, _, bad = _read_rgb(frames[number])
        if rgb.shape[:2] != (height, width):
            return bad, rgb.shape[:2], None
        # Display-referred files hold code values: decode to linear first, then re-encode.
        linear = rgb if kind == "scene_linear" else _display_to_linear(rgb)
        return bad, rgb.shape[:2], space.encode(io.resize_area(linear, ww, wh))

    working = np.empty((len(numbers), wh, ww, 3), np.float32)
    workers = io_workers(ctx.io_workers)
    # Frames load in threads; warnings, errors and progress stay in frame order, here.
    with (
        thread_pool(workers, "ingest") as pool,
        closing(ordered_map(pool, load, numbers, ahead=workers)) as loaded,
    ):
        for i, (number, (bad, size, frame)) in enumerate(zip(numbers, loaded, strict=True)):
            ctx.cancel.check()
            _warn_non_finite(frames[number], bad)
            if frame is None:
                raise InputError(
                    f"{frames[number]}: frame {number} is {size[1]}x{size[0]}"
                    f" but frame {numbers[0]} is {width}x{height}"
                )
            working[i] = frame
            ctx.reporter.update("ingest", (i + 1) / len(numbers), f"frame {number}")
    return Ingested(
        frames,
        numbers,
        numbers.index(spec.reference_frame),
        width,
        height,
        ww,
        wh,
        working,
        roi_plate,
        roi_working,
        space,
        holdout,
    )


def _display_to_linear(rgb: np.ndarray) -> np.ndarray:
    from .colour import srgb_to_linear

    return srgb_to_linear(np.clip(rgb, 0.0, 1.0))


def build_hash(spec: BuildSpec) -> str:
    """Content hash of a build: the spec (less version/device/root) and its input files."""
    data = spec_to_dict(spec)
    for key in ("version", "device", "root", "out", "name"):
        data.pop(key, None)
    files: list[Any] = []
    for pattern in (spec.plate, spec.roi, spec.holdout):
        if not pattern:
            continue
        for number, path in sorted(io.find_frames(spec.resolve(pattern)).items()):
            st = path.stat()
            files.append([number, path.name, st.st_size, int(st.st_mtime)])
    blob = json.dumps({"spec": data, "files": files, "engine": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tracker(ctx: RunContext, sinks: list[Sink]) -> ProgressTracker:
    if isinstance(ctx.reporter, ProgressTracker):
        for sink in sinks:
            ctx.reporter.add_sink(sink)
        return ctx.reporter
    forward = ctx.reporter

    def relay(event: Any) -> None:
        forward.update(event.stage, event.stage_progress, event.message, **event.metrics)

    return ProgressTracker(STAGE_WEIGHTS, [*sinks, relay])


def validate_inputs(spec: BuildSpec) -> None:
    """Cheap checks of every input before anything is written (exit 2 with one line).

    Frames exist and are at least two, the reference frame is inside the range, the ROI (and
    holdout) exist with the plate's size, and the ROI is neither empty nor the whole frame.
    """
    frames = io.resolve_sequence(spec.resolve(spec.plate), spec.frames)
    numbers = sorted(frames)
    if len(numbers) < 2:
        raise InputError(
            f"{frames[numbers[0]]}: a build needs at least 2 frames (found {len(numbers)})"
        )
    if spec.reference_frame not in frames:
        raise InputError(
            f"reference frame {spec.reference_frame}: outside the plate's frames "
            f"{io.format_frame_range(numbers)}"
        )
    first = io.read_image(frames[numbers[0]])
    size = (first.width, first.height)
    roi_path = _matte_path(spec, spec.roi, spec.reference_frame)
    roi = read_matte(roi_path, spec.roi_channel, size, "the ROI")
    inside = float((roi >= 0.5).mean())
    if inside == 0.0:
        raise InputError(f"{roi_path}: the ROI is empty on reference frame {spec.reference_frame}")
    if inside > 0.98:
        raise InputError(f"{roi_path}: the ROI covers the whole frame; it must select a region")
    if spec.holdout:
        holdout = io.resolve_sequence(spec.resolve(spec.holdout), io.format_frame_range(numbers))
        read_matte(holdout[numbers[0]], spec.holdout_channel, size, "the holdout")


def prepare(spec: BuildSpec) -> tuple[BuildPaths, str]:
    """Validate the inputs; the version folder and hash of a build."""
    validate_inputs(spec)
    digest = build_hash(spec)
    paths = choose_version(spec.resolve(spec.out), spec.name, spec.version, digest)
    return paths, digest


def run_build(spec: BuildSpec, ctx: RunContext, sinks: list[Sink] | None = None) -> BuildPaths:
    """Run (or resume) a whole build; returns the version folder it wrote."""
    started = time.time()
    paths, digest = prepare(spec)
    ensure_writable(paths.root)
    status = StatusFile(paths, digest)
    if status.data.get("state") == "done" and paths.atlas_exr.exists():
        log.info("%s: already built (hash %s)", paths.root, digest)
        return paths
    device = open_device(ctx.auto_device if spec.device == "auto" else spec.device)
    memory = StageMemory(device)
    tracker = _tracker(ctx, [status, memory, *(sinks or [])])
    run = replace(
        ctx, reporter=tracker, device=device, work_dir=paths.work_dir, seed=spec.settings.seed
    )
    status.set(
        state="running",
        stage="ingest",
        progress=0.0,
        error=None,
        started=started,
        finished=None,
        message="",
    )
    try:
        spec_dict = spec_to_dict(spec)
        spec_dict["version"] = paths.version
        write_json_atomic(
            paths.build_json,
            {
                **spec_dict,
                "build_hash": digest,
                "engine_version": __version__,
                "cache_format_version": _cache_format(),
                "torch": torch.__version__,
                "device": device,
            },
        )
        result = _stages(spec, run, paths, digest, tracker, memory)
    except (Cancelled, KeyboardInterrupt) as err:  # KeyboardInterrupt: SIGINT, or SIGTERM (CLI)
        reason = str(err) if isinstance(err, KeyboardInterrupt) else ""
        status.set(
            state="cancelled",
            message=f"cancelled ({reason})" if reason else "cancelled",
            eta_s=None,
            finished=time.time(),
            timings=tracker.timings_s,
        )
        raise
    except InputError as err:
        status.set(
            state="failed",
            error={"code": "input", "message": str(err)},
            message=str(err),
            eta_s=None,
            finished=time.time(),
        )
        raise
    except Exception as err:
        status.set(
            state="failed",
            error={"code": "internal", "message": str(err)},
            message=str(err),
            eta_s=None,
            finished=time.time(),
        )
        raise
    finally:
        status.close()  # whatever ended the build, its heartbeat stops with it
    tracker.finish_stage()
    status.set(
        state="done",
        stage="done",
        progress=1.0,
        eta_s=0,
        message="done",
        finished=time.time(),
        timings={k: round(v, 3) for k, v in tracker.timings_s.items()},
        gpu_memory_mib=memory.finish(),
        **result,
    )
    return paths


def _cache_format() -> int:
    from . import CACHE_FORMAT_VERSION

    return CACHE_FORMAT_VERSION


def _stages(
    spec: BuildSpec,
    ctx: RunContext,
    paths: BuildPaths,
    digest: str,
    tracker: ProgressTracker,
    memory: StageMemory,
) -> dict[str, Any]:
    from .bake import PlateFormat, bake
    from .fit import Fitter, ShotTensors, validate_shot
    from .flow import compute_correspondences
    from .kernels import make_hash_grid
    from .qc import write_qc

    settings = spec.settings
    device = torch.device(ctx.device)  # made ready by `open_device` in `run_build`
    data = ingest(spec, ctx)
    roi = torch.from_numpy(data.roi_working)
    validate_shot(roi, len(data.frame_numbers), data.reference_index, spec.roi)
    frames = torch.from_numpy(data.working).permute(0, 3, 1, 2).contiguous().to(device)
    roi = roi.to(device)
    corr = compute_correspondences(frames, roi, data.reference_index, settings.flow, ctx)
    ctx.cancel.check()
    backend = settings.fit.encoding_backend

    def grid_factory(n_dims: int, grid_settings: Any) -> Any:
        return make_hash_grid(n_dims, grid_settings, backend, device)

    fitter = Fitter(
        ShotTensors(frames, roi, data.reference_index, corr),
        settings.fit,
        settings.refine,
        ctx,
        grid_factory,
    )
    result = fitter.run()
    fmt = PlateFormat(data.plate_width, data.plate_height, data.working_width, data.working_height)
    attributes = {
        "rna/version": _cache_format(),
        "rna/engine_version": __version__,
        "rna/build_hash": digest,
        "rna/reference_frame": spec.reference_frame,
        "rna/uv_convention": UV_CONVENTION,
        "rna/colorspace": "scene_linear"
        if data.space.kind == "scene_linear"
        else "linear (sRGB primaries, from display-referred input)",
        "rna/ocio_config": data.space.config_name,
    }

    def read_plate(number: int) -> np.ndarray:
        rgb = _plate_rgb(data.frames[number])[0]
        return rgb if data.space.kind == "scene_linear" else _display_to_linear(rgb)

    read_holdout = None
    if data.holdout is not None:
        holdout = data.holdout

        def read_holdout(number: int) -> np.ndarray:
            return read_matte(
                holdout[number],
                spec.holdout_channel,
                (data.plate_width, data.plate_height),
                "the holdout",
            )

    del frames
    bake(
        result,
        data.frame_numbers,
        read_plate,
        read_holdout,
        data.roi_plate,
        fmt,
        data.space,
        settings.bake,
        settings.matte,
        paths,
        attributes,
        ctx,
    )
    tracker.update("qc", 0.0, "report")
    report = write_qc(result, data, fitter.shot, paths, tracker, device, spec, memory)
    tracker.update("qc", 1.0, "report")
    return {"qc": {k: report[k] for k in ("psnr_roi_mean", "psnr_atlas_mean") if k in report}}
