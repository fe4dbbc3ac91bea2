"""Bake: query the fitted fields at plate resolution and write the cache (docs/cache.md).

Per plate frame: `rna_uv.u/v` (FLOAT32, STMap convention), `rna_matte.m` (soft matte, holdout
applied), `rna_mask.m` (refined M), `rna_shade.red/green/blue` (linear-light ratio of the
reconstructed to the atlas colour, docs/cache.md). The data window is the frame's ROI bounding
box plus a margin; outside it Nuke sees zeros (matte 0, so RNAApply leaves the plate alone
there). The atlas is rendered in the plate's format (× `atlas_scale`), aligned with the reference
frame, scene-linear, with A = the ROI footprint; it extends past the ROI (the atlas field is
continuous), which pads filtered lookups at the ROI's edge with real texture instead of black.

Streaming, as a pipeline of bounded thread pools (`pool.py`): plates (and holdouts) are read a
few frames ahead, the device queries and the soft matte run in frame order in the calling thread
(the matte of frame t is frame t+1's temporal reference), and the shade decode and EXR writes run
in background threads. At most about `2 × workers` frames are in memory; the first write error
stops the bake with its own type, and every file is atomic. The output does not depend on the
number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rna_engine.errors import QualityError
from rna_engine.media.cache import MASK, MATTE, SHADE, UV_CONVENTION, UV_U, UV_V, BuildPaths
from rna_engine.media.colour import WorkingSpace
from rna_engine.media.io import resize_area, write_exr, write_rgba_exr
from rna_engine.model.stmap_torch import sample_stmap, uv_norm_to_stmap
from rna_engine.runtime.context import RunContext
from rna_engine.runtime.pool import background_writer, io_workers, ordered_map, thread_pool
from rna_engine.settings import BakeSettings, MatteSettings

from .fit import FitResult, query_fields
from .matte import load_backend, soft_matte

log = logging.getLogger(__name__)

SHADE_FLOOR = 1e-4
"""Smallest linear atlas value the shade ratio divides by (dark texels keep a finite ratio)."""
MASK_WINDOW_THRESHOLD = 0.02
"""Mask value above which a pixel counts for the data window."""


@dataclass(frozen=True)
class PlateFormat:
    """Plate and working resolutions and the map between them."""

    width: int
    height: int
    working_width: int
    working_height: int

    @property
    def scale(self) -> float:
        """Plate pixels per working pixel."""
        return self.width / self.working_width

    def working_xy(self, xp: Tensor, yp: Tensor) -> tuple[Tensor, Tensor]:
        """Plate pixel indices (centres at +0.5 in area terms) → working pixel positions."""
        x = (xp + 0.5) * self.working_width / self.width - 0.5
        y = (yp + 0.5) * self.working_height / self.height - 0.5
        return x, y


def data_window(mask_working: Tensor, fmt: PlateFormat, margin_px: int) -> tuple[int, ...]:
    """(x, y, w, h) in plate pixels: bounding box of mask > threshold at working res + margin."""
    rows, cols = torch.nonzero(mask_working > MASK_WINDOW_THRESHOLD, as_tuple=True)
    if rows.numel() == 0:
        return (0, 0, 1, 1)
    s = fmt.scale
    x0 = int(np.floor(cols.min().item() * s)) - margin_px
    x1 = int(np.ceil((cols.max().item() + 1) * s)) + margin_px
    y0 = int(np.floor(rows.min().item() * s)) - margin_px
    y1 = int(np.ceil((rows.max().item() + 1) * s)) + margin_px
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(fmt.width, x1), min(fmt.height, y1)
    return (x0, y0, x1 - x0, y1 - y0)


def shade_linear(shaded: np.ndarray, atlas: np.ndarray, space: WorkingSpace) -> np.ndarray:
    """Linear-light ratio decode(S·A) / decode(A), (P, 3) float32 (docs/method.md §6).

    Args:
        shaded: (P, 3) float32 clamp(S·A, 0, 1), working-encoded.
        atlas: (P, 3) float32 A(T(p)), working-encoded.
    """
    rec = space.decode(shaded)
    base = space.decode(atlas)
    return (rec / np.maximum(base, SHADE_FLOOR)).astype(np.float32)


def _pixel_grid(x0: int, y0: int, w: int, h: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(y0, y0 + h, device=device, dtype=torch.float32),
        torch.arange(x0, x0 + w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return xs.reshape(-1), ys.reshape(-1)


def render_atlas(
    result: FitResult,
    fmt: PlateFormat,
    roi_plate: np.ndarray,
    space: WorkingSpace,
    settings: BakeSettings,
    device: torch.device,
) -> np.ndarray:
    """The atlas raster (Ha, Wa, 4) scene-linear RGB + ROI footprint alpha.

    Atlas pixel (xa, row) sits at plate position ((xa + 0.5)/s − 0.5, …) of the reference frame,
    i.e. the same STMap coordinate as the plate pixel there: the atlas is aligned with it.
    """
    s = settings.atlas_scale
    wa, ha = max(1, round(fmt.width * s)), max(1, round(fmt.height * s))
    geo = result.geometry
    out = np.zeros((ha, wa, 4), np.float32)
    rows_per_tile = max(1, settings.tile_px * settings.tile_px // max(wa, 1))
    for r0 in range(0, ha, rows_per_tile):
        h = min(rows_per_tile, ha - r0)
        xa, ya = _pixel_grid(0, r0, wa, h, device)
        xw, yw = fmt.working_xy((xa + 0.5) / s - 0.5, (ya + 0.5) / s - 0.5)
        uv = torch.stack([xw / geo.half_rez - 1.0, yw / geo.half_rez - 1.0], -1)
        with torch.no_grad():
            colour = torch.cat([result.model.atlas(c) for c in uv.split(262_144)])
        out[r0 : r0 + h, :, :3] = space.decode(colour.cpu().numpy()).reshape(h, wa, 3)
    alpha = (
        roi_plate
        if (ha, wa) == roi_plate.shape
        else resize_area(roi_plate[..., None], wa, ha)[..., 0]
    )
    out[..., 3] = np.clip(alpha, 0, 1)
    return out


DETAIL_SHADE_FLOOR = 0.05
"""Smallest linear shade the reference detail divides by (a 20× brightening at most)."""
DETAIL_FULL_PX, DETAIL_NONE_PX = 0.5, 1.0
"""T's displacement of the reference frame onto itself (plate px) up to which its pixels have
full weight in the reference detail, and from which they have none (a linear ramp between)."""
DETAIL_MASK_FULL, DETAIL_MASK_NONE = 0.75, 0.25
"""The same ramp on a frame's M: visible (full weight) from 0.75, none under 0.25."""


def detail_frames(n_frames: int, reference_index: int, count: int) -> list[int]:
    """The `count` frame indices nearest the reference, the reference first, then alternately
    before and after it (within the shot).

    >>> detail_frames(10, 0, 3), detail_frames(10, 5, 4), detail_frames(3, 1, 9)
    ([0, 1, 2], [5, 4, 6, 3], [1, 0, 2])
    """
    order = [reference_index]
    for d in range(1, n_frames):
        order += [t for t in (reference_index - d, reference_index + d) if 0 <= t < n_frames]
    return order[: max(count, 0)]


def reference_detail(
    atlas: np.ndarray,
    result: FitResult,
    fmt: PlateFormat,
    plates: Callable[[int], np.ndarray],
    frames: list[int],
    space: WorkingSpace,
    settings: BakeSettings,
    device: torch.device,
) -> tuple[np.ndarray, float]:
    """[ours] The atlas with the plate's own texture inside the ROI (docs/method.md §6.1).

    Every visible plate pixel of the frames `frames` (indices; the reference first) divided by
    its linear shade (the pass's `rna_shade`) is splatted bilinearly into the atlas at its UV;
    the mean D replaces the field inside the ROI: `A ← A + w · (D − A)`, w = ROI alpha × the
    splat weight a texel received (capped at 1). A pixel's weight is a ramp on its M (0.25 →
    0.75); on the reference frame also a ramp on |T(p, r) − p| (full under `DETAIL_FULL_PX`,
    none from `DETAIL_NONE_PX` plate px). With the reference alone, shade × atlas(uv) gives the
    reference plate back, its grain included; more frames average the grain out.

    Args:
        atlas: (Ha, Wa, 4) `render_atlas`'s raster (a modified copy is returned).
        plates: frame index → (Hp, Wp, 3) float32 scene-linear plate.
    Returns:
        The atlas, and the share of the ROI's alpha that took the detail.
    """
    geo = result.geometry
    hp, wp = fmt.height, fmt.width
    ha, wa = atlas.shape[:2]
    total = torch.zeros(ha * wa, 3, device=device, dtype=torch.float64)
    weight = torch.zeros(ha * wa, device=device, dtype=torch.float64)
    rows_per_tile = max(1, settings.tile_px * settings.tile_px // max(wp, 1))
    for t in frames:
        plate_t = plates(t)
        for r0 in range(0, hp, rows_per_tile):
            h = min(rows_per_tile, hp - r0)
            xp, yp = _pixel_grid(0, r0, wp, h, device)
            with torch.no_grad():
                q = query_fields(result, *fmt.working_xy(xp, yp), t)
            st = uv_norm_to_stmap(q["uv_norm"], geo.width, geo.height)
            visible = (q["mask"] - DETAIL_MASK_NONE) / (DETAIL_MASK_FULL - DETAIL_MASK_NONE)
            w = visible.clamp(0, 1).double() * q["in_view"]
            if t == result.reference_index:
                moved = torch.hypot(st[:, 0] * wp - 0.5 - xp, (1.0 - st[:, 1]) * hp - 0.5 - yp)
                w = w * ((DETAIL_NONE_PX - moved) / (DETAIL_NONE_PX - DETAIL_FULL_PX)).clamp(0, 1)
            shaded, base = q["shaded"].clamp(0, 1).cpu().numpy(), q["atlas"].cpu().numpy()
            shade = shade_linear(shaded, base, space)
            plate = plate_t[r0 : r0 + h].reshape(-1, 3)
            value = plate / np.maximum(shade, DETAIL_SHADE_FLOOR)
            ok = (shade.min(-1) >= DETAIL_SHADE_FLOOR) & np.isfinite(value).all(-1)
            w = w * torch.from_numpy(ok).to(device)
            value = torch.from_numpy(np.where(ok[:, None], value, 0.0)).to(device).double()
            _splat(
                total, weight, st[:, 0] * wa - 0.5, (1.0 - st[:, 1]) * ha - 0.5, value, w, wa, ha
            )
    detail = (total / weight.clamp_min(1e-12)[:, None]).reshape(ha, wa, 3).float().cpu().numpy()
    blend = weight.clamp(0, 1).reshape(ha, wa).float().cpu().numpy() * atlas[..., 3]
    out = atlas.copy()
    out[..., :3] += blend[..., None] * (detail - atlas[..., :3])
    roi = float(atlas[..., 3].sum())
    return out, (float(blend.sum()) / roi if roi > 0 else 0.0)


def _splat(
    total: Tensor,
    weight: Tensor,
    x: Tensor,
    y: Tensor,
    value: Tensor,
    w: Tensor,
    width: int,
    height: int,
) -> None:
    """Add `value` (P, 3) with weights `w` (P,) at continuous pixel positions (x, y) (centres
    at integers) into `total` (H·W, 3) and `weight` (H·W,), bilinearly (in place)."""
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    for dx, dy, k in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height) & (w > 0)
        idx = (yi * width + xi)[inside]
        kw = (k * w)[inside]
        total.index_add_(0, idx, value[inside] * kw[:, None])
        weight.index_add_(0, idx, kw)


@dataclass
class FramePass:
    """One frame's pass inside its data window, on the host, before the shade decode."""

    window: tuple[int, int, int, int]
    """(x, y, w, h) in plate pixels."""
    uv_stmap: np.ndarray
    """(h, w, 2) float32, STMap convention."""
    matte: np.ndarray
    """(h, w) float32 soft matte, holdout applied."""
    mask: np.ndarray
    """(h, w) float32 refined M."""
    shaded: np.ndarray
    """(h·w, 3) float32 clamp(S·A, 0, 1), working-encoded."""
    atlas: np.ndarray
    """(h·w, 3) float32 A(T(p)), working-encoded."""
    tracked_px: float = 0.0
    """Area of the ROI carried to this frame (Σ roi_tracked), plate pixels."""
    covered_px: float = 0.0
    """Tracked-ROI pixels the soft matte (holdout applied) calls visible (> 0.5)."""

    @property
    def matte_coverage(self) -> float | None:
        """Share of the tracked ROI with matte > 0.5; None when the ROI is out of view."""
        return self.covered_px / self.tracked_px if self.tracked_px >= 1.0 else None

    def channels(self, space: WorkingSpace) -> dict[str, np.ndarray]:
        """Channel name → (h, w) float32 array of the pass file; decodes the shade (CPU)."""
        _, _, w, h = self.window
        # Stays on the CPU, in a writer thread: the decode is OCIO's (or numpy's pow for sRGB),
        # which torch does not reproduce bit for bit.
        shade = shade_linear(self.shaded, self.atlas, space).reshape(h, w, 3)
        return {
            UV_U: self.uv_stmap[..., 0],
            UV_V: self.uv_stmap[..., 1],
            MATTE: self.matte,
            MASK: self.mask,
            SHADE[0]: shade[..., 0],
            SHADE[1]: shade[..., 1],
            SHADE[2]: shade[..., 2],
        }


def bake_frame(
    result: FitResult,
    t: int,
    plate_linear: np.ndarray,
    fmt: PlateFormat,
    bake: BakeSettings,
    matte_settings: MatteSettings,
    matte_backend: Any,
    device: torch.device,
    roi_plate: Tensor,
    holdout: np.ndarray | None = None,
    previous_matte: Tensor | None = None,
) -> tuple[FramePass, Tensor]:
    """Device work of one frame's pass inside its data window.

    Args:
        plate_linear: (Hp, Wp, 3) float32 scene-linear plate.
        roi_plate: (Hp, Wp) float32 ROI matte on `device`.
        holdout: (Hp, Wp) float32 or None.
        previous_matte: (Hp, Wp) the previous frame's matte before the holdout, on `device`.

    Returns:
        The pass on the host, and the full-frame matte before the holdout (the next frame's
        temporal reference), on `device`.
    """
    geo = result.geometry
    xs_w, ys_w = _pixel_grid(0, 0, geo.width, geo.height, device)
    coarse = query_fields(result, xs_w, ys_w, t)["mask"].reshape(geo.height, geo.width)
    x0, y0, w, h = data_window(coarse, fmt, bake.margin_px)
    xp, yp = _pixel_grid(x0, y0, w, h, device)
    xw, yw = fmt.working_xy(xp, yp)
    q = query_fields(result, xw, yw, t)
    # float64 then float32, as the file stores: bit-identical to the numpy reference.
    uv = uv_norm_to_stmap(q["uv_norm"], geo.width, geo.height).float().reshape(h, w, 2)
    mask = q["mask"].reshape(h, w)
    guide = torch.from_numpy(
        np.ascontiguousarray(plate_linear[y0 : y0 + h, x0 : x0 + w].transpose(2, 0, 1))
    ).to(device)
    prev = None
    if previous_matte is not None:
        prev = previous_matte[y0 : y0 + h, x0 : x0 + w]
    # The ROI carried to this frame through the UVs: only occluder edges get matted, and the
    # ROI's own (artist-drawn) border stays as drawn. Where the camera prior cannot put the ROI
    # (`fit.camera_gate`), T has lost the surface: no ROI there.
    roi_tracked = sample_stmap(roi_plate[..., None], uv, "linear")[..., 0]
    roi_tracked = roi_tracked * q["in_view"].reshape(h, w)
    matte_free = soft_matte(
        guide,
        mask,
        matte_settings,
        fmt.scale,
        None,
        prev,
        None,
        roi_tracked=roi_tracked,
        backend=matte_backend,
    )
    full = torch.zeros(fmt.height, fmt.width, device=device)
    full[y0 : y0 + h, x0 : x0 + w] = matte_free
    matte = matte_free
    if holdout is not None:
        matte = matte * (
            1.0 - torch.from_numpy(holdout[y0 : y0 + h, x0 : x0 + w]).to(device).clamp(0, 1)
        )
    # one read of the device for both sums (the arrays below are read anyway)
    tracked_px, covered_px = torch.stack(
        (roi_tracked.sum(), ((matte > 0.5) & (roi_tracked >= 0.5)).sum().float())
    ).tolist()
    frame = FramePass(
        (x0, y0, w, h),
        uv.cpu().numpy(),
        matte.cpu().numpy(),
        mask.cpu().numpy(),
        q["shaded"].clamp(0, 1).cpu().numpy(),
        q["atlas"].cpu().numpy(),
        tracked_px,
        covered_px,
    )
    return frame, full


PASS_PIXEL_TYPES = {
    UV_U: "float",
    UV_V: "float",
    MATTE: "half",
    MASK: "half",
    SHADE[0]: "half",
    SHADE[1]: "half",
    SHADE[2]: "half",
}


def bake(
    result: FitResult,
    frame_numbers: list[int],
    read_plate: Callable[[int], np.ndarray],
    read_holdout: Callable[[int], np.ndarray] | None,
    roi_plate: np.ndarray,
    fmt: PlateFormat,
    space: WorkingSpace,
    bake_settings: BakeSettings,
    matte_settings: MatteSettings,
    paths: BuildPaths,
    attributes: dict[str, Any],
    ctx: RunContext,
) -> list[float | None]:
    """Write `atlas/atlas.exr` and every `passes/rna.####.exr` of the build (atomic files).

    `read_plate` and `read_holdout` run in `ctx.io_workers` reader threads; progress counts the
    pass files written. A pass with a NaN/Inf value is never written: `QualityError` names the
    frame and the channel.

    Returns:
        Per frame index, the share of the tracked ROI the soft matte covers
        (`FramePass.matte_coverage`).
    """
    device = torch.device(ctx.device)
    workers = io_workers(ctx.io_workers)
    n = len(frame_numbers)
    ctx.reporter.update("bake", 0.0, "atlas")
    atlas = render_atlas(result, fmt, roi_plate, space, bake_settings, device)
    if bake_settings.reference_detail:
        frames = detail_frames(n, result.reference_index, bake_settings.reference_detail)
        atlas, share = reference_detail(
            atlas,
            result,
            fmt,
            lambda t: read_plate(frame_numbers[t]),
            frames,
            space,
            bake_settings,
            device,
        )
        log.info(
            "bake: the plate's texture on %.1f %% of the ROI (%d frames)", 100 * share, len(frames)
        )
    backend = load_backend(matte_settings, device)
    roi = torch.from_numpy(roi_plate).to(device)
    written = 0

    def on_written(number: int | None) -> None:
        nonlocal written
        if number is not None:
            written += 1
            ctx.reporter.update("bake", written / n, f"frame {number}")

    def read(number: int) -> tuple[np.ndarray, np.ndarray | None]:
        return read_plate(number), read_holdout(number) if read_holdout else None

    def write_atlas() -> None:
        write_rgba_exr(
            paths.atlas_exr, atlas, attributes={**attributes, "rna/frame": -1}, compression="zip"
        )

    def write_pass(number: int, frame: FramePass) -> int:
        channels = frame.channels(space)
        for name, values in channels.items():
            if not np.isfinite(values).all():
                raise QualityError(f"bake: frame {number}: {name} has NaN/Inf values")
        write_exr(
            paths.pass_path(number),
            channels,
            pixel_types=PASS_PIXEL_TYPES,
            attributes={**attributes, "rna/frame": number, "rna/uv_convention": UV_CONVENTION},
            compression=bake_settings.compression,
            data_window=frame.window,
            display_size=(fmt.width, fmt.height),
        )
        return number

    previous: Tensor | None = None
    coverage: list[float | None] = []
    with (
        thread_pool(workers, "read") as readers,
        background_writer(workers, on_written, ctx.cancel.check) as writer,
        closing(ordered_map(readers, read, frame_numbers, ahead=workers)) as inputs,
    ):
        writer.submit(write_atlas)
        for t, (number, (plate, holdout)) in enumerate(zip(frame_numbers, inputs, strict=True)):
            ctx.cancel.check()
            frame, previous = bake_frame(
                result,
                t,
                plate,
                fmt,
                bake_settings,
                matte_settings,
                backend,
                device,
                roi,
                holdout,
                previous,
            )
            coverage.append(frame.matte_coverage)
            writer.submit(partial(write_pass, number, frame))
    return coverage
