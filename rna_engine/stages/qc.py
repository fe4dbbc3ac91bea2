"""QC: `qc/report.json` (per-frame ROI PSNR, timings, memory, backends) and `qc/contact.png`.

Per frame, worst frame first (docs/method.md §7.1 says the authors' protocol cannot be reproduced,
so we define ours; the measures are `rna_engine.stages.quality.frame_measures`): at working resolution,
inside the tracked ROI Ω_t — pixels whose T lands in the reference ROI's footprint —
- `psnr_roi`: the model's reconstruction Î = M·S·A + (1 − M)·I against I (the paper's measure);
- `psnr_atlas`: S·A(T(p)) against I on the pixels of Ω_t the model calls visible (M > 0.5) —
  stricter: the mask cannot hide a bad atlas;
- `roi_pixels` (tracked-ROI area), `coverage` (share of Ω_t with M > 0.5) and, at plate
  resolution from the bake, `matte_coverage` (share of the tracked ROI with soft matte > 0.5).
The report names the worst frame of each measure and flags frames far below their neighbours
(`quality.findings`); the contact sheet shows the first, reference, middle and last frames and
the worst ones.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch

from rna_engine import __version__
from rna_engine.media.cache import BuildPaths, write_json_atomic
from rna_engine.media.colour import preview_srgb
from rna_engine.media.io import write_png
from rna_engine.runtime.gpu_memory import StageMemory
from rna_engine.runtime.progress import ProgressTracker
from rna_engine.settings import BuildSpec

from .fit import FitResult, ShotTensors
from .quality import (
    findings,
    frame_maps,
    frame_measures,
    reference_alignment,
    reference_alignment_warning,
)


def contact_sheet(
    rows: list[tuple[torch.Tensor, ...]],
    decode: Any,
    atlas_rgb: np.ndarray,
    frame_numbers: list[int] | None = None,
    reference_frame: int | None = None,
) -> np.ndarray:
    """Grid: per row plate | reconstruction | mask | error heat map; last row the atlas.

    A band over each tile names its column and frame (`frame_numbers`, one per row; the
    reference frame is marked `ref`); the atlas tile is labelled `atlas`.
    """
    columns = ("plate", "recon", "mask M", "error")
    tiles = []
    for k, (image, pred, mask, err) in enumerate(rows):
        plate = preview_srgb(decode(image.permute(1, 2, 0).cpu().numpy()))
        rec = preview_srgb(decode(pred.clamp(0, 1).permute(1, 2, 0).cpu().numpy()))
        m = np.repeat(mask.cpu().numpy()[..., None], 3, -1)
        e = np.clip(err.cpu().numpy() * 8.0, 0, 1)
        heat = np.stack([e, np.sqrt(e) * 0.6, 1 - e], -1) * (e[..., None] > 0.002)
        number = "" if frame_numbers is None else f" {frame_numbers[k]}"
        if frame_numbers is not None and frame_numbers[k] == reference_frame:
            number += " ref"
        labelled = [
            np.concatenate([_label_band(tile.shape[1], name + number), tile], 0)
            for name, tile in zip(columns, (plate, rec, m, heat), strict=True)
        ]
        tiles.append(np.concatenate(labelled, 1))
    sheet = np.concatenate(tiles, 0)
    atlas = preview_srgb(atlas_rgb)
    h, w = rows[0][0].shape[1], rows[0][0].shape[2]
    atlas_small = np.concatenate([_label_band(w, "atlas"), _fit(atlas, w, h)], 0)
    pad = np.zeros((atlas_small.shape[0], sheet.shape[1] - w, 3), np.float32)
    return np.concatenate([sheet, np.concatenate([atlas_small, pad], 1)], 0)


LABEL_BAND_PX = 14
"""Height of the contact sheet's label bands."""


def _label_band(width: int, text: str) -> np.ndarray:
    """(LABEL_BAND_PX, width, 3) float32 dark band with `text` in white."""
    import cv2

    band = np.full((LABEL_BAND_PX, width, 3), 30, np.uint8)  # putText draws on 8-bit only
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, _), _ = cv2.getTextSize(text, font, 0.38, 1)
    scale = 0.38 * min(1.0, (width - 4) / max(text_w, 1))  # narrow working-res tiles
    cv2.putText(band, text, (2, LABEL_BAND_PX - 4), font, scale, (255, 255, 255), 1)
    return band.astype(np.float32) / 255.0


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from rna_engine.media.io import resize_area

    return resize_area(image.astype(np.float32), width, height)


def write_qc(
    result: FitResult,
    data: Any,
    shot: ShotTensors,
    paths: BuildPaths,
    tracker: ProgressTracker,
    device: torch.device,
    spec: BuildSpec,
    memory: StageMemory,
    matte_coverage: list[float | None],
) -> dict[str, Any]:
    """Write `qc/report.json` and `qc/contact.png` (peak GPU memory from `memory`, per stage
    and the largest; `matte_coverage` per frame index from the bake); returns the report."""
    from rna_engine.media.io import read_image
    from rna_engine.model.kernels import available_backends

    n = shot.n_frames
    per_frame = []
    for t in range(n):
        m = frame_measures(frame_maps(result, shot, t))
        m["matte_coverage"] = None if matte_coverage[t] is None else round(matte_coverage[t], 4)
        anchored = shot.corr.anchored
        m["camera_anchored"] = None if anchored is None else bool(anchored[t])
        if result.evidence:
            m.update(result.evidence[t])
        per_frame.append({"frame": data.frame_numbers[t], **m})
        tracker.update("qc", (t + 1) / n, f"frame {data.frame_numbers[t]}")
    found = findings(per_frame, data.frame_numbers, spec.settings.qc)
    alignment = reference_alignment(result, shot)
    misaligned = reference_alignment_warning(
        alignment, data.frame_numbers[shot.reference_index], spec.settings.qc
    )
    if misaligned is not None:
        found["warnings"].insert(0, misaligned)
    index = {number: t for t, number in enumerate(data.frame_numbers)}
    worst_frames = {index[w["frame"]] for w in found["worst"].values() if w is not None}
    sheet_frames = sorted({0, shot.reference_index, n // 2, n - 1} | worst_frames)
    rows = []
    for t in sheet_frames:
        maps = frame_maps(result, shot, t)
        err = ((maps["pred"] - maps["image"]) ** 2).mean(0).sqrt() * maps["region"]
        rows.append((maps["image"], maps["pred"], maps["mask"], err))
    vals = [f["psnr_roi"] for f in per_frame if f["psnr_roi"] is not None]
    vals_atlas = [f["psnr_atlas"] for f in per_frame if f["psnr_atlas"] is not None]
    peak, reserved = memory.peak()
    report = {
        "engine_version": __version__,
        "frames": per_frame,
        "psnr_roi_mean": float(np.mean(vals)) if vals else None,
        "psnr_atlas_mean": float(np.mean(vals_atlas)) if vals_atlas else None,
        **found,
        "reference_uv_error_px": {k: round(v, 3) for k, v in alignment.items()},
        "sheet_frames": [data.frame_numbers[t] for t in sheet_frames],
        "timings_s": {k: round(v, 3) for k, v in tracker.timings_s.items()},
        "fit_timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
        "steps_per_s": {k: round(v, 2) for k, v in result.steps_per_s.items()},
        "peak_gpu_memory_mib": peak,
        "peak_gpu_reserved_mib": reserved,
        "peak_gpu_mib_by_stage": memory.summary(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "backends": {
            "flow": spec.settings.flow.backend,
            "appearance": spec.settings.flow.appearance,
            "matte": spec.settings.matte.backend,
            "encoding": {k: str(v) for k, v in available_backends().items()},
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "working_resolution": [shot.width, shot.height],
        "loss_history": result.history[-20:],
    }
    write_json_atomic(paths.qc_dir / "report.json", report)
    atlas = read_image(paths.atlas_exr).pixels[..., :3]
    numbers = [data.frame_numbers[t] for t in sheet_frames]
    sheet = contact_sheet(
        rows, data.space.decode, atlas, numbers, data.frame_numbers[shot.reference_index]
    )
    write_png(paths.qc_dir / "contact.png", sheet)
    return report
