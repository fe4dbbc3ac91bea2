"""Bake: query the fitted fields at plate resolution and write the cache (DESIGN.md §4).

Per plate frame, streaming (one frame in memory at a time, queries in chunks on the device):
`rna_uv.u/v` (FLOAT32, STMap convention), `rna_matte.m` (soft matte, holdout applied),
`rna_mask.m` (refined M), `rna_shade.red/green/blue` (linear-light ratio of the reconstructed to
the atlas colour, DESIGN.md §7). The data window is the frame's ROI bounding box plus a margin;
outside it Nuke sees zeros (matte 0, so RNAApply leaves the plate alone there). The atlas is
rendered in the plate's format (× `atlas_scale`), aligned with the reference frame, scene-linear,
with A = the ROI footprint; it extends past the ROI (the atlas field is continuous), which pads
filtered lookups at the ROI's edge with real texture instead of black.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .cache import MASK, MATTE, SHADE, UV_CONVENTION, UV_U, UV_V, BuildPaths
from .colour import WorkingSpace
from .context import RunContext
from .fit import FitResult, query_fields
from .io import resize_area, write_exr, write_rgba_exr
from .matte import load_backend, soft_matte
from .settings import BakeSettings, MatteSettings
from .stmap import sample_stmap, uv_norm_to_stmap

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


def shade_linear(shade: Tensor, atlas: Tensor, space: WorkingSpace) -> np.ndarray:
    """Linear-light ratio decode(S·A) / decode(A), (P, 3) float32 (DESIGN.md §7)."""
    rec = space.decode((shade * atlas).clamp(0, 1).cpu().numpy())
    base = space.decode(atlas.cpu().numpy())
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


def bake_frame(
    result: FitResult,
    t: int,
    plate_linear: np.ndarray,
    fmt: PlateFormat,
    space: WorkingSpace,
    bake: BakeSettings,
    matte_settings: MatteSettings,
    matte_backend: Any,
    device: torch.device,
    roi_plate: np.ndarray,
    holdout: np.ndarray | None = None,
    previous_matte: Tensor | None = None,
) -> tuple[dict[str, np.ndarray], tuple[int, int, int, int], Tensor]:
    """Channels of one frame's pass inside its data window.

    Returns:
        channel name → (h, w) array, the data window (x, y, w, h), and the full-frame matte
        before the holdout (the next frame's temporal reference).
    """
    geo = result.geometry
    xs_w, ys_w = _pixel_grid(0, 0, geo.width, geo.height, device)
    coarse = query_fields(result, xs_w, ys_w, t)["mask"].reshape(geo.height, geo.width)
    x0, y0, w, h = data_window(coarse, fmt, bake.margin_px)
    xp, yp = _pixel_grid(x0, y0, w, h, device)
    xw, yw = fmt.working_xy(xp, yp)
    q = query_fields(result, xw, yw, t)
    uv = uv_norm_to_stmap(q["uv_norm"].cpu().numpy(), geo.width, geo.height).reshape(h, w, 2)
    mask = q["mask"].reshape(h, w)
    shade = shade_linear(q["shade"], q["atlas"], space).reshape(h, w, 3)
    guide = torch.from_numpy(
        np.ascontiguousarray(plate_linear[y0 : y0 + h, x0 : x0 + w].transpose(2, 0, 1))
    ).to(device)
    prev = None
    if previous_matte is not None:
        prev = previous_matte[y0 : y0 + h, x0 : x0 + w]
    # The ROI carried to this frame through the UVs: only occluder edges get matted, and the
    # ROI's own (artist-drawn) border stays as drawn.
    roi_tracked = torch.from_numpy(
        sample_stmap(roi_plate[..., None], uv.astype(np.float32), "linear")[..., 0]
    ).to(device)
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
    channels = {
        UV_U: uv[..., 0].astype(np.float32),
        UV_V: uv[..., 1].astype(np.float32),
        MATTE: matte.cpu().numpy(),
        MASK: mask.cpu().numpy(),
        SHADE[0]: shade[..., 0],
        SHADE[1]: shade[..., 1],
        SHADE[2]: shade[..., 2],
    }
    return channels, (x0, y0, w, h), full


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
) -> None:
    """Write `atlas/atlas.exr` and every `passes/rna.####.exr` of the build (atomic files)."""
    device = torch.device(ctx.device)
    ctx.reporter.update("bake", 0.0, "atlas")
    atlas = render_atlas(result, fmt, roi_plate, space, bake_settings, device)
    write_rgba_exr(
        paths.atlas_exr, atlas, attributes={**attributes, "rna/frame": -1}, compression="zip"
    )
    backend = load_backend(matte_settings, device)
    previous: Tensor | None = None
    n = len(frame_numbers)
    for t, number in enumerate(frame_numbers):
        ctx.cancel.check()
        holdout = read_holdout(number) if read_holdout else None
        channels, window, previous = bake_frame(
            result,
            t,
            read_plate(number),
            fmt,
            space,
            bake_settings,
            matte_settings,
            backend,
            device,
            roi_plate,
            holdout,
            previous,
        )
        write_exr(
            paths.pass_path(number),
            channels,
            pixel_types=PASS_PIXEL_TYPES,
            attributes={**attributes, "rna/frame": number, "rna/uv_convention": UV_CONVENTION},
            compression=bake_settings.compression,
            data_window=window,
            display_size=(fmt.width, fmt.height),
        )
        ctx.reporter.update("bake", (t + 1) / n, f"frame {number}")
