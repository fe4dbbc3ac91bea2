"""The build: ingest → correspondences → fit → refine → matte + bake → QC (docs/architecture.md).

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

from . import __version__
from .errors import Cancelled, InputError
from .media import io
from .media.cache import (
    UV_CONVENTION,
    BuildPaths,
    StatusFile,
    choose_version,
    ensure_writable,
    read_status,
    write_json_atomic,
)
from .media.colour import WorkingSpace, plate_to_linear, working_space
from .media.lock import describe, hold
from .runtime.context import RunContext, open_device
from .runtime.gpu_memory import StageMemory
from .runtime.pool import io_workers, ordered_map, thread_pool
from .runtime.progress import ProgressTracker, Sink
from .settings import PATH_FIELDS, BuildSpec, IngestSettings, spec_to_dict
from .stages.inputs import (
    MIN_ROI_WORKING_PX,
    ResolvedInputs,
    min_roi_side_px,
    resolve_inputs,
    roi_fault,
    roi_working,
)

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
    """The validated inputs of a build, read: the plate at working resolution and the ROI."""

    inputs: ResolvedInputs
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


def _read_rgb(path: Path, strict: bool = False) -> tuple[np.ndarray, io.ImageData, int]:
    """A plate file's RGB with NaN/Inf replaced by 0, its image, and how many were replaced.

    Decode damage (`ImageData.damage`) is refused when `strict`, else left for the caller to
    warn about, in frame order.
    """
    image = io.read_image(path, strict=strict, warn=False)
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


def _warn_damage(path: Path, damage: tuple[str, ...]) -> None:
    for text in damage:
        log.warning("%s: %s; read anyway (ingest.strict_decode refuses it)", path, text)


def _plate_rgb(path: Path, strict: bool = False) -> tuple[np.ndarray, io.ImageData]:
    rgb, image, bad = _read_rgb(path, strict)
    _warn_damage(path, image.damage)
    _warn_non_finite(path, bad)
    return rgb, image


def ingest(inputs: ResolvedInputs, settings: IngestSettings, ctx: RunContext) -> Ingested:
    """Read the plate and ROI and encode the plate at working resolution.

    Expects `validate_inputs(inputs, settings)` to have passed (`run_build` calls it through
    `prepare`): frame count, reference frame and matte sizes are not checked again here.
    """
    frames = inputs.plate
    numbers = inputs.frame_numbers
    strict = settings.strict_decode
    first, first_image = _plate_rgb(frames[numbers[0]], strict)
    height, width = first.shape[:2]
    kind = settings.colour
    to_linear = None
    if settings.colorspace:  # a named input colourspace wins over the file-type rule
        to_linear = plate_to_linear(settings.colorspace, settings.ocio_config)
        kind = "scene_linear"
    elif kind == "auto":
        kind = "scene_linear" if io.is_scene_linear_file(first_image) else "display"
    space = working_space(kind, settings.ocio_config)
    ww, wh = io.working_size(width, height, settings.working_long_side)
    roi_plate = inputs.read_roi()

    def load(number: int) -> tuple[int, tuple[str, ...], tuple[int, ...], np.ndarray | None]:
        """NaN/Inf count, decode damage, plate size and working frame (None: wrong size)."""
        if number == numbers[0]:
            rgb, bad, damage = first, 0, ()  # read (and warned about) above
        else:
            rgb, image, bad = _read_rgb(frames[number], strict)
            damage = image.damage
        if rgb.shape[:2] != (height, width):
            return bad, damage, rgb.shape[:2], None
        # Display-referred files hold code values: decode to linear first, then re-encode.
        if to_linear is not None:
            linear = to_linear(rgb)
        else:
            linear = rgb if kind == "scene_linear" else _display_to_linear(rgb)
        return bad, damage, rgb.shape[:2], space.encode(io.resize_area(linear, ww, wh))

    working = np.empty((len(numbers), wh, ww, 3), np.float32)
    workers = io_workers(ctx.io_workers)
    # Frames load in threads; warnings, errors and progress stay in frame order, here.
    with (
        thread_pool(workers, "ingest") as pool,
        closing(ordered_map(pool, load, numbers, ahead=workers)) as loaded,
    ):
        for i, (number, (bad, damage, size, frame)) in enumerate(zip(numbers, loaded, strict=True)):
            ctx.cancel.check()
            _warn_damage(frames[number], damage)
            _warn_non_finite(frames[number], bad)
            if frame is None:
                raise InputError(
                    f"{frames[number]}: frame {number} is {size[1]}x{size[0]}"
                    f" but frame {numbers[0]} is {width}x{height}"
                )
            working[i] = frame
            ctx.reporter.update("ingest", (i + 1) / len(numbers), f"frame {number}")
    return Ingested(
        inputs,
        numbers,
        inputs.reference_index,
        width,
        height,
        ww,
        wh,
        working,
        roi_plate,
        roi_working(roi_plate, ww, wh),
        space,
    )


def _display_to_linear(rgb: np.ndarray) -> np.ndarray:
    from .media.colour import srgb_to_linear

    return srgb_to_linear(np.clip(rgb, 0.0, 1.0))


def build_hash(inputs: ResolvedInputs) -> str:
    """Content hash of a build: its settings and input files, not where they lie.

    The spec less version, device, root, out and name and its paths, plus (role, frame, name, size,
    mtime) of every resolved input file: a shot moved with its cache, or a cache's `build.json`
    re-run from elsewhere, keeps its hash.
    """
    data = spec_to_dict(inputs.spec)
    for key in ("version", "device", "root", "out", "name", "spec_version", *PATH_FIELDS):
        data.pop(key, None)
    roles: list[tuple[str, dict[int, Path]]] = [
        ("plate", inputs.plate),
        ("roi", {inputs.reference_frame: inputs.roi}),
    ]
    if inputs.holdout is not None:
        roles.append(("holdout", inputs.holdout))
    files: list[Any] = []
    for role, paths in roles:
        for number, path in paths.items():
            st = path.stat()
            files.append([role, number, path.name, st.st_size, int(st.st_mtime)])
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


def validate_inputs(inputs: ResolvedInputs, settings: IngestSettings) -> None:
    """Cheap checks of the resolved inputs before anything is written (exit 2 with one line).

    The ROI (and the holdout) have the plate's size, and the ROI passes `inputs.roi_fault` at
    the working size the fit will see: not empty, at least `MIN_ROI_WORKING_PX` pixels once
    resampled, not the whole frame. (Frame count and reference frame: `resolve_inputs`.)
    """
    roi_path, ref = inputs.roi, inputs.reference_frame
    roi = inputs.read_roi()
    if not (roi >= 0.5).any():
        raise InputError(f"{roi_path}: the ROI is empty on reference frame {ref}")
    ww, wh = io.working_size(*inputs.plate_size, settings.working_long_side)
    working = roi_working(roi, ww, wh)
    inside = int(working.sum())
    fault = roi_fault(inside, working.size)
    if fault is not None and inside < MIN_ROI_WORKING_PX:
        side = min_roi_side_px(inputs.plate_size, (ww, wh))
        raise InputError(
            f"{roi_path}: the ROI keeps {inside} of the {MIN_ROI_WORKING_PX} pixels a fit needs"
            f" at the working size {ww}x{wh} on reference frame {ref}; make it at least"
            f" {side}x{side} plate pixels at this working size"
            f" (ingest.working_long_side={settings.working_long_side})"
        )
    if fault is not None:
        raise InputError(f"{roi_path}: {fault}")
    if inputs.holdout is not None:
        inputs.read_holdout(inputs.frame_numbers[0])


@dataclass(frozen=True)
class Plan:
    """A validated build: its resolved inputs, hash and version folder."""

    inputs: ResolvedInputs
    digest: str
    paths: BuildPaths


def prepare(spec: BuildSpec) -> Plan:
    """Resolve and validate the inputs; the hash and version folder of the build."""
    inputs = resolve_inputs(spec)
    validate_inputs(inputs, inputs.spec.settings.ingest)
    digest = build_hash(inputs)
    spec = inputs.spec
    paths = choose_version(Path(spec.out), spec.name, spec.version, digest)
    return Plan(inputs, digest, paths)


def run_build(
    spec: BuildSpec, ctx: RunContext, sinks: list[Sink] | None = None, plan: Plan | None = None
) -> BuildPaths:
    """Run (or resume) a whole build; returns the version folder it wrote.

    `plan`: `prepare(spec)` when the caller already made it (the service's planner). The build
    holds its version's lock (`media.lock`) from the start: an identical build already running
    is waited for, and its result reused. The plate is read before the version folder is
    created, so bad input leaves no folder behind.
    """
    started = time.time()
    plan = plan or prepare(spec)
    if _finished(plan):  # before any write: a finished cache may sit on a read-only share
        return plan.paths
    ensure_writable(plan.paths.root.parent)  # the build's folder; the version's comes later
    waited: list[str] = []

    def waiting(owner: dict[str, Any]) -> None:
        who = describe(owner)
        if who not in waited:
            waited.append(who)
            log.warning("%s: %s is building this version; waiting for it", plan.paths.root, who)
        ctx.reporter.update("ingest", 0.0, f"waiting for {who}")

    for _ in range(_MAX_VERSION_MOVES):
        with hold(plan.paths.root, plan.digest, waiting, ctx.cancel.check):
            spec = plan.inputs.spec
            paths = choose_version(Path(spec.out), spec.name, spec.version, plan.digest)
            if paths.root != plan.paths.root:  # taken by other settings while we waited
                plan = replace(plan, paths=paths)
                continue
            if _finished(plan):
                return plan.paths
            return _run_locked(plan, ctx, sinks or [], started)
    raise InputError(
        f"{plan.paths.root.parent}: no free cache version after "
        f"{_MAX_VERSION_MOVES} tries (builds of other settings keep taking them)"
    )


_MAX_VERSION_MOVES = 100


def _finished(plan: Plan) -> bool:
    """Whether the plan's version is a finished build of the same hash (nothing to do)."""
    status = read_status(plan.paths) or {}
    done = status.get("state") == "done" and status.get("build_hash") == plan.digest
    if done and plan.paths.atlas_exr.exists():
        log.info("%s: already built (hash %s)", plan.paths.root, plan.digest)
        return True
    return False


def _run_locked(plan: Plan, ctx: RunContext, sinks: list[Sink], started: float) -> BuildPaths:
    """The build itself, with the version's lock held."""
    spec, paths, digest = plan.inputs.spec, plan.paths, plan.digest  # paths now absolute
    device = open_device(ctx.auto_device if spec.device == "auto" else spec.device)
    memory = StageMemory(device)
    tracker = _tracker(ctx, [memory, *sinks])
    run = replace(
        ctx, reporter=tracker, device=device, work_dir=paths.work_dir, seed=spec.settings.seed
    )
    data = read_shot(plan.inputs, run)  # bad frames stop here, before the folder exists
    ensure_writable(paths.root)
    status = StatusFile(paths, digest)
    status.set(
        state="running",
        stage="ingest",
        progress=round(tracker.overall("ingest", 1.0), 4),
        error=None,
        started=started,
        finished=None,
        message="",
    )
    tracker.add_sink(status)
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
        result = _stages(data, run, paths, digest, tracker, memory)
    except (Cancelled, KeyboardInterrupt) as err:  # KeyboardInterrupt: SIGINT, or SIGTERM (CLI)
        reason = str(err) if isinstance(err, KeyboardInterrupt) else ""
        _final(
            status,
            state="cancelled",
            message=f"cancelled ({reason})" if reason else "cancelled",
            eta_s=None,
            finished=time.time(),
            timings=tracker.timings_s,
        )
        raise
    except Exception as err:
        code = err.code if isinstance(err, InputError) else "internal"
        _final(
            status,
            state="failed",
            error={"code": code, "message": str(err)},
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


def _final(status: StatusFile, **fields: Any) -> None:
    """Record a failed or cancelled end; a disk that cannot take it does not hide the cause (the
    status left live is then judged lost by its dead pid)."""
    try:
        status.set(**fields)
    except OSError as err:
        log.warning("%s: final state not written (%s)", status.paths.status_json, err)


def _cache_format() -> int:
    from . import CACHE_FORMAT_VERSION

    return CACHE_FORMAT_VERSION


def read_shot(inputs: ResolvedInputs, ctx: RunContext) -> Ingested:
    """Ingest the plate and check the shot the fit will see (`InputError` on bad input)."""
    from .stages.fit import validate_shot

    data = ingest(inputs, inputs.spec.settings.ingest, ctx)
    roi = torch.from_numpy(data.roi_working)
    validate_shot(roi, len(data.frame_numbers), data.reference_index, str(inputs.roi))
    return data


def _stages(
    data: Ingested,
    ctx: RunContext,
    paths: BuildPaths,
    digest: str,
    tracker: ProgressTracker,
    memory: StageMemory,
) -> dict[str, Any]:
    from .model.kernels import make_hash_grid
    from .stages.bake import PlateFormat, bake
    from .stages.correspondences import compute_correspondences
    from .stages.fit import Fitter, ShotTensors
    from .stages.qc import write_qc
    from .stages.quality import check_bake, check_fit

    inputs = data.inputs
    spec = inputs.spec
    settings = spec.settings
    device = torch.device(ctx.device)  # made ready by `open_device` in `run_build`
    frames = torch.from_numpy(data.working).permute(0, 3, 1, 2).contiguous().to(device)
    roi = torch.from_numpy(data.roi_working).to(device)
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
    # garbage stops here, before any pass is written (QualityError: failed, code `quality`)
    reference = check_fit(result, fitter.shot, settings.qc)
    log.info(
        "reference frame: atlas PSNR %.1f dB, ROI IoU %.2f, visible %.0f%%",
        reference["psnr_atlas"],
        reference["reference_iou"],
        100 * reference["reference_visible"],
    )
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
        rgb, _, bad = _read_rgb(inputs.plate[number])  # decode damage: warned at ingest
        _warn_non_finite(inputs.plate[number], bad)
        return rgb if data.space.kind == "scene_linear" else _display_to_linear(rgb)

    read_holdout = inputs.read_holdout if inputs.holdout is not None else None
    del frames
    coverage = bake(
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
    check_bake(coverage, data.reference_index, settings.qc)
    tracker.update("qc", 0.0, "report")
    report = write_qc(result, data, fitter.shot, paths, tracker, device, spec, memory, coverage)
    tracker.update("qc", 1.0, "report")
    for warning in report["warnings"]:
        log.warning("%s", warning)
    summary = ("psnr_roi_mean", "psnr_atlas_mean", "worst", "flagged_frames")
    return {"qc": {k: report[k] for k in summary}, "warnings": report["warnings"]}
