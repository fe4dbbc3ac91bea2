"""Pure per-frame quality metrics shared by the benchmarks and the engine's QC.

Numpy in, numbers out: no file access, no device, no settings. Conventions:

- `ref_xy`: reference-frame pixels, pixel centres at **integers** (the synthetic ground truth's
  `true_ref_xy`); the atlas raster is aligned with the reference frame (docs/cache.md).
- `uv_stmap`: the cache's STMap coordinates (origin bottom-left, centres at +0.5), see
  `rna_engine.media.stmap`.
- A *region* is a (H, W) bool array; a metric over an empty region is None, never 0 or NaN, so
  a frame where the ROI is out of view is reported as such.
- Shares are 0..1; `*_pct` names in reports multiply by 100.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .stmap import sample_stmap, stmap_to_pixel


def psnr(err2_mean: float) -> float:
    """PSNR in dB of a mean squared error on 0..1 data (∞ capped at 99; NaN stays NaN).

    The one PSNR of the engine: QC, the quality gates, the demo's score and the benchmarks.

    >>> psnr(0.01)
    20.0
    """
    if not math.isfinite(err2_mean):
        return float("nan")
    return 99.0 if err2_mean <= 1e-12 else float(-10.0 * math.log10(err2_mean))


def stmap_to_ref_xy(uv_stmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """STMap coordinates of the cache → reference-frame pixels with centres at integers.

    Convention:
        `x = u·width − 0.5`, `row = (1 − v)·height − 0.5`, for an atlas aligned with a
        `width`×`height` reference frame (any atlas scale: UVs are normalised).

    Args:
        uv_stmap: (..., 2) float.

    Returns:
        (..., 2) float64 `(x, row)`.

    >>> stmap_to_ref_xy(np.array([0.125, 0.75]), 4, 2).tolist()
    [0.0, 0.0]
    """
    x, row = stmap_to_pixel(uv_stmap, width, height)
    return np.stack([x - 0.5, row - 0.5], -1)


def uv_error_px(uv_stmap: np.ndarray, true_ref_xy: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per-pixel UV error in reference pixels (Euclidean) over `region`.

    Args:
        uv_stmap: (H, W, 2) the cache's UVs.
        true_ref_xy: (H, W, 2) where each pixel's surface point truly lies in the reference frame.
        region: (H, W) bool.

    Returns:
        (K,) float64 errors, K = region.sum().
    """
    h, w = region.shape
    ref = stmap_to_ref_xy(uv_stmap[region], w, h)
    return np.sqrt(((ref - true_ref_xy[region]) ** 2).sum(-1))


def quantiles(values: np.ndarray, qs: Sequence[float] = (0.5, 0.9)) -> list[float | None]:
    """Quantiles of `values` (None for each when empty)."""
    if values.size == 0:
        return [None] * len(qs)
    return [float(v) for v in np.quantile(values, qs)]


def encoded_error(
    a_linear: np.ndarray, b_linear: np.ndarray, region: np.ndarray, encode: Callable[..., Any]
) -> tuple[float, int]:
    """Sum of squared differences (mean over RGB) of two scene-linear images in an encoding,
    over `region`, and the pixel count: the edit-PSNR measure (`psnr(sum / count)`).

    Linear HDR values have no peak, so a PSNR of them depends on exposure; in a bounded log
    encoding (the working space's `encode`) an error means the same at every brightness.

    Args:
        a_linear, b_linear: (H, W, 3) float32.
        region: (H, W) bool.
        encode: linear → 0..1 encoding, e.g. `working_space("scene_linear").encode`.
    """
    ea = encode(np.clip(a_linear, 0, None))
    eb = encode(np.clip(b_linear, 0, None))
    return float(((ea - eb) ** 2).mean(-1)[region].sum()), int(region.sum())


def region_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float | None:
    """PSNR of two 0..1 images (H, W, C) over `region` (mean over channels); None if empty."""
    if not region.any():
        return None
    return psnr(float(((a - b) ** 2).mean(-1)[region].mean()))


def share(condition: np.ndarray, region: np.ndarray) -> float | None:
    """Share of `region`'s pixels where `condition` holds; None when the region is empty.

    >>> share(np.array([True, False, True]), np.array([True, True, False]))
    0.5
    """
    n = int(region.sum())
    return None if n == 0 else float((condition & region).sum()) / n


def paint_amount(comp: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(H, W) how much a comp changed its base image: sum over RGB of |comp − base|."""
    return np.abs(comp[..., :3] - base[..., :3]).sum(-1)


def paint_share(paint: np.ndarray, region: np.ndarray, at_least: float = 0.0) -> float | None:
    """Share of the total `paint_amount` that lands in `region`; None when nothing was painted.

    `at_least`: the total is taken as at least this, e.g. the paint a full view of the surface
    receives, so that a frame whose paint is almost all (rightly) hidden does not report the
    few painted pixels left as a large share."""
    total = max(float(paint.sum()), at_least)
    return None if total <= 1e-9 else float(paint[region].sum()) / total


def iou_counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Intersection and union pixel counts of two bool masks (sum them over frames)."""
    return int((a & b).sum()), int((a | b).sum())


def paint_over(atlas_rgba: np.ndarray, edit_rgba: np.ndarray) -> np.ndarray:
    """The atlas with straight-alpha paint `edit_rgba` over its RGB (alpha kept).

    Args:
        atlas_rgba: (H, W, 4) float32.
        edit_rgba: (H, W, 4) float32, same size.
    """
    out = atlas_rgba.copy()
    a = edit_rgba[..., 3:4]
    out[..., :3] = atlas_rgba[..., :3] * (1 - a) + edit_rgba[..., :3] * a
    return out


def tracked_region(roi: np.ndarray, uv_stmap: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) bool: pixels whose UV lands in the reference ROI (the ROI carried by the cache).

    Args:
        roi: (Ha, Wa) float32 ROI matte on the reference-frame raster.
        uv_stmap: (H, W, 2) the cache's UVs; u = v = 0 (outside the data window) is never in.
    """
    inside = sample_stmap(roi[..., None].astype(np.float32), uv_stmap, "linear")[..., 0]
    written = (uv_stmap[..., 0] != 0) | (uv_stmap[..., 1] != 0)
    return (inside > threshold) & written


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate (px > 0) or erode (px < 0) a bool mask by a disc of radius |px| pixels."""
    import cv2

    if px == 0:
        return mask.copy()
    r = abs(px)
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (xs * xs + ys * ys <= r * r).astype(np.uint8)
    img = mask.astype(np.uint8)
    out = cv2.dilate(img, disc) if px > 0 else cv2.erode(img, disc, borderValue=1)
    return out > 0


def worst_first(
    rows: Sequence[dict[str, Any]], key: str, higher_is_better: bool
) -> list[dict[str, Any]]:
    """`rows` sorted worst `key` first; rows where `key` is None go last (in frame order)."""
    have = [r for r in rows if r.get(key) is not None]
    none = [r for r in rows if r.get(key) is None]
    return sorted(have, key=lambda r: r[key], reverse=not higher_is_better) + none


def summarise(
    rows: Sequence[dict[str, Any]], key: str, higher_is_better: bool
) -> dict[str, float | None]:
    """Worst, p10-worst, median and mean of a per-frame metric (None values skipped).

    The mean is there to compare with older numbers only: it hides the failing frames.
    """
    vals = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
    if vals.size == 0:
        return {"worst": None, "p10_worst": None, "median": None, "mean": None}
    worst = vals.min() if higher_is_better else vals.max()
    p10 = np.quantile(vals, 0.1 if higher_is_better else 0.9)
    return {
        "worst": float(worst),
        "p10_worst": float(p10),
        "median": float(np.median(vals)),
        "mean": float(vals.mean()),
    }


def by_distance(
    rows: Sequence[dict[str, Any]],
    key: str,
    reference_index: int,
    n_frames: int,
    bins: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
) -> list[dict[str, Any]]:
    """Median of a per-frame metric by distance to the reference, as a share of the longest
    distance: [0, 0.1], (0.1, 0.25], ...; rows need `index` (frame index)."""
    reach = max(reference_index, n_frames - 1 - reference_index, 1)
    out = []
    lo = -1.0
    for hi in bins:
        vals = [
            r[key]
            for r in rows
            if r.get(key) is not None and lo < abs(r["index"] - reference_index) / reach <= hi
        ]
        out.append(
            {
                "distance": f"{max(lo, 0):g}-{hi:g}",
                "frames": len(vals),
                "median": float(np.median(vals)) if vals else None,
            }
        )
        lo = hi
    return out
