"""Quality gates: a build that produced garbage does not say `done`.

Hard gates end the build `failed` with error code `quality` (`QualityError`, exit 2 from the
CLI, `openjd_fail:` on the farm, an error in Nuke):
- after the fit, on the reference frame (where the method is exact by construction: the atlas
  is aligned with it and the ROI is drawn on it): every field finite; the ROI carried back to
  the reference by T overlaps the drawn ROI; the mask calls most of the drawn ROI visible; the
  atlas reconstructs the visible ROI (atlas-only PSNR). A flat, untextured ROI passes: its
  reconstruction is trivially good;
- after the bake: the soft matte is not empty on the reference frame.

Soft findings are warnings (in `status.json`, `qc/report.json` and the Nuke node): frames whose
soft matte covers under `qc.min_frame_coverage` of the tracked ROI (an occluder, or drift the
model reads as one), a frame whose matte coverage or tracked-ROI area falls far below the
median of its neighbours in time, frames with the ROI in view whose camera could not be matched
to the reference frame (`camera_anchored` false: geometry chained from the neighbours only, low
confidence); and the worst frame of each per-frame measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rna_engine.errors import QualityError
from rna_engine.media.io import format_frame_range as format_frames
from rna_engine.media.metrics import psnr
from rna_engine.settings import QCSettings

from .fit import FitResult, ShotTensors, query_fields, sample_bilinear


@torch.no_grad()
def frame_maps(result: FitResult, shot: ShotTensors, t: int) -> dict[str, Tensor]:
    """The fitted fields over frame index t at working resolution.

    Returns:
        image (3, H, W) the plate, pred (3, H, W) S·A(T(p)), mask (H, W) M, region (H, W) bool
        the tracked ROI Ω_t (pixels whose T lands in the reference ROI, where the camera gate
        lets them: `fit.camera_gate`).
    """
    geo = result.geometry
    h, w = shot.height, shot.width
    dev = shot.frames.device
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    q = query_fields(result, xs.reshape(-1), ys.reshape(-1), t)
    p = geo.uv_to_px(q["uv_norm"])
    zero = torch.zeros(p.shape[0], dtype=torch.long, device=dev)
    region = (sample_bilinear(shot.roi[None], zero, p[:, 0], p[:, 1]) > 0.5) & q["in_view"]
    region = region.reshape(h, w)
    return {
        "image": shot.frames[t],
        "pred": q["shaded"].T.reshape(3, h, w),
        "mask": q["mask"].reshape(h, w),
        "region": region,
    }


def frame_measures(maps: dict[str, Tensor]) -> dict[str, Any]:
    """Per-frame QC numbers of `frame_maps`: PSNRs, tracked-ROI area and mask coverage.

    `psnr_roi`: Î = M·S·A + (1 − M)·I against I over Ω_t (the paper's measure); `psnr_atlas`:
    S·A(T(p)) against I over the pixels of Ω_t the model calls visible (M > 0.5): the mask
    cannot hide a bad atlas; `coverage`: share of Ω_t with M > 0.5.
    """
    image, pred, mask, region = maps["image"], maps["pred"], maps["mask"], maps["region"]
    recon = mask * pred + (1 - mask) * image
    err_recon = ((recon - image) ** 2).mean(0)
    err_atlas = ((pred - image) ** 2).mean(0)
    visible = region & (mask > 0.5)
    roi_px, visible_px = int(region.sum()), int(visible.sum())
    return {
        "psnr_roi": psnr(float(err_recon[region].mean())) if roi_px else None,
        "psnr_atlas": psnr(float(err_atlas[visible].mean())) if visible_px else None,
        "roi_pixels": roi_px,
        "visible_pixels": visible_px,
        "coverage": visible_px / roi_px if roi_px else None,
    }


@torch.no_grad()
def reference_alignment(result: FitResult, shot: ShotTensors) -> dict[str, float]:
    """‖T(p, r) − p‖ over the drawn ROI's pixels of the reference frame, in working pixels:
    median, p90 and max. T is the identity there by definition (the atlas is the reference
    frame's pixel grid); the position loss (Eq. 5) only pulls it toward it."""
    rows, cols = torch.nonzero(shot.roi > 0.5, as_tuple=True)
    xs, ys = cols.float(), rows.float()
    q = query_fields(result, xs, ys, shot.reference_index)
    p = result.geometry.uv_to_px(q["uv_norm"])
    err = torch.linalg.vector_norm(p - torch.stack([xs, ys], 1), dim=1).double()
    if err.numel() == 0:
        return {"median": 0.0, "p90": 0.0, "max": 0.0}
    median, p90 = torch.quantile(err, torch.tensor([0.5, 0.9], dtype=err.dtype, device=err.device))
    return {"median": float(median), "p90": float(p90), "max": float(err.max())}


def reference_alignment_warning(
    alignment: dict[str, float], reference_frame: int, settings: QCSettings
) -> str | None:
    """The warning for `reference_alignment` above `qc.max_reference_uv_px`, or None."""
    if alignment["p90"] <= settings.max_reference_uv_px:
        return None
    return (
        f"reference frame {reference_frame}: the UV mapping is off by up to "
        f"{alignment['max']:.1f} working px ({alignment['p90']:.1f} px on 10 % of the ROI; "
        f"qc.max_reference_uv_px {settings.max_reference_uv_px:g}): the paint is displaced "
        "on the frame it was drawn for; more fit.weights.position pins it"
    )


@torch.no_grad()
def check_fit(result: FitResult, shot: ShotTensors, settings: QCSettings) -> dict[str, Any]:
    """Hard gates on the reference frame after the fit; its measures when they pass.

    Raises:
        QualityError: one line naming the gate, the measured value and the limit.
    """
    ref = shot.reference_index
    maps = frame_maps(result, shot, ref)
    if not all(bool(torch.isfinite(maps[k]).all()) for k in ("pred", "mask")):
        raise QualityError("fit: the fitted fields are NaN/Inf on the reference frame")
    drawn = shot.roi > 0.5
    tracked = maps["region"]
    iou = float((drawn & tracked).sum()) / max(1, int((drawn | tracked).sum()))
    if iou < settings.min_reference_tracked:
        raise QualityError(
            f"fit: the UV mapping does not hold the ROI on the reference frame (IoU {iou:.2f} "
            f"< qc.min_reference_tracked {settings.min_reference_tracked}); the fit did not "
            "converge: use more fit.pretrain_steps / fit.iterations or a larger ROI"
        )
    visible = float(((maps["mask"] > 0.5) & drawn).sum()) / max(1, int(drawn.sum()))
    if visible < settings.min_reference_visible:
        raise QualityError(
            f"fit: the mask calls {visible:.0%} of the ROI visible on the reference frame "
            f"(< qc.min_reference_visible {settings.min_reference_visible:.0%}); the ROI must be "
            "unoccluded there, or the fit did not converge (more refine.iterations)"
        )
    measures = frame_measures(maps)
    value = measures["psnr_atlas"]
    if value is None or not math.isfinite(value) or value < settings.min_reference_psnr_db:
        shown = "n/a" if value is None else f"{value:.1f} dB"
        raise QualityError(
            f"fit: the atlas does not reconstruct the ROI on the reference frame (PSNR {shown} "
            f"< qc.min_reference_psnr_db {settings.min_reference_psnr_db} dB); the fit did not "
            "converge: use more fit.iterations"
        )
    return {**measures, "reference_iou": iou, "reference_visible": visible}


def check_bake(
    coverage: Sequence[float | None], reference_index: int, settings: QCSettings
) -> None:
    """Hard gate after the bake: the soft matte covers the tracked ROI on the reference frame.

    Args:
        coverage: per frame index, share of the tracked ROI (plate resolution) with matte > 0.5,
            None where the ROI is out of view.
    """
    value = coverage[reference_index]
    if value is None or not math.isfinite(value) or value < settings.min_reference_matte:
        shown = "empty" if value is None else f"{value:.0%}"
        raise QualityError(
            f"bake: the soft matte covers {shown} of the ROI on the reference frame "
            f"(< qc.min_reference_matte {settings.min_reference_matte:.0%})"
        )


def _neighbour_median(values: Sequence[float | None], t: int, radius: int) -> float | None:
    around = [
        v
        for i in range(max(0, t - radius), min(len(values), t + radius + 1))
        if i != t and (v := values[i]) is not None and math.isfinite(v)
    ]
    return float(np.median(around)) if around else None


def flag_drops(values: Sequence[float | None], ratio: float, radius: int) -> list[int]:
    """Indices whose value falls below `ratio` × the median of the `radius` frames each side.

    A frame with no value (the ROI out of view) is never flagged, nor is a frame whose
    neighbours have no value.
    """
    flagged = []
    for t, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        median = _neighbour_median(values, t, radius)
        if median is not None and median > 0 and v < ratio * median:
            flagged.append(t)
    return flagged


def worst(values: Sequence[float | None], frame_numbers: Sequence[int]) -> dict[str, Any] | None:
    """The frame with the lowest value, {frame, value}; None when no frame has one."""
    best: tuple[float, int] | None = None
    for t, v in enumerate(values):
        if v is not None and math.isfinite(v) and (best is None or v < best[0]):
            best = (v, t)
    if best is None:
        return None
    return {"frame": int(frame_numbers[best[1]]), "value": round(best[0], 4)}


def findings(
    per_frame: Sequence[dict[str, Any]], frame_numbers: Sequence[int], settings: QCSettings
) -> dict[str, Any]:
    """Worst frames and soft warnings of the per-frame QC records (`qc/report.json`).

    Each record has `coverage` (mask), `matte_coverage` (soft matte, plate resolution),
    `roi_pixels` (tracked-ROI area), `psnr_atlas` and optionally `camera_anchored`.
    """
    measures = ("matte_coverage", "coverage", "psnr_atlas", "roi_pixels")
    columns = {k: [f.get(k) for f in per_frame] for k in measures}
    flagged: dict[int, list[str]] = {}
    for key in ("matte_coverage", "roi_pixels"):
        for t in flag_drops(columns[key], settings.drop_ratio, settings.neighbour_frames):
            flagged.setdefault(t, []).append(key)
    warnings = []
    low = [
        t
        for t, v in enumerate(columns["matte_coverage"])
        if v is not None and v < settings.min_frame_coverage
    ]
    if low:
        w = min(low, key=lambda t: columns["matte_coverage"][t])
        warnings.append(
            f"{len(low)} of {len(per_frame)} frames ({format_frames([frame_numbers[t] for t in low])})"
            f": the matte covers under {settings.min_frame_coverage:.0%} of the tracked ROI "
            f"(worst frame {frame_numbers[w]}: {columns['matte_coverage'][w]:.0%}); an occluder "
            "or tracking drift: check the paint there"
        )
    unsure = [
        t
        for t, f in enumerate(per_frame)
        if f.get("camera_anchored") is False and (f.get("roi_pixels") or 0) > 0
    ]
    if unsure:
        warnings.append(
            f"{len(unsure)} of {len(per_frame)} frames "
            f"({format_frames([frame_numbers[t] for t in unsure])}): the camera could not be "
            "matched to the reference frame there (tracked from the neighbouring frames only): "
            "low confidence, check the paint there"
        )
    psnr = columns["psnr_atlas"]
    lost = [
        t
        for t, v in enumerate(psnr)
        if v is not None
        and math.isfinite(v)
        and v < settings.min_frame_psnr_db
        and (columns["roi_pixels"][t] or 0) > 0
    ]
    if lost:
        w = min(lost, key=lambda t: psnr[t])
        warnings.append(
            f"{len(lost)} of {len(per_frame)} frames "
            f"({format_frames([frame_numbers[t] for t in lost])}): the atlas does not "
            f"reconstruct the tracked ROI (under {settings.min_frame_psnr_db:g} dB; worst frame "
            f"{frame_numbers[w]}: {psnr[w]:.1f} dB): the tracking is lost "
            "there: low confidence, check the paint there"
        )
    for t in sorted(flagged):
        f = per_frame[t]
        what = " and ".join(
            "matte coverage" if k == "matte_coverage" else "tracked-ROI area" for k in flagged[t]
        )
        cov = f.get("matte_coverage")
        shown = "" if cov is None else f" (matte covers {cov:.0%} of the tracked ROI)"
        warnings.append(
            f"frame {frame_numbers[t]}: {what} far below its neighbours{shown}: "
            "check the paint there"
        )
    return {
        "worst": {k: worst(columns[k], frame_numbers) for k in measures[:3]},
        "flagged_frames": [int(frame_numbers[t]) for t in sorted(flagged)],
        "low_coverage_frames": [int(frame_numbers[t]) for t in low],
        "low_confidence_frames": [int(frame_numbers[t]) for t in sorted({*unsure, *lost})],
        "warnings": warnings,
    }
