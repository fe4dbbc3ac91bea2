"""The demo's own accuracy: its comp against the exact render of the same paint.

A synthetic shot knows the true result of painting its atlas (`SynthShot.render_edit`), so the
demo can say how close its comp is:

- `edit_psnr`: PSNR (dB, capped at 99 = exact) of the comp against the expected render, on the
  pixels whose surface point lies in the ROI (true tracked ROI > 0.5), in the build's working
  encoding: linear HDR values have no peak, and in the bounded log encoding an error means the
  same at every brightness (the measure of `metrics.encoded_error`).
- `leak_pct`: the share of the paint (|comp − plate| summed over RGB) that lands where the true
  visible-ROI matte is 0 — on an occluder or outside the region — in percent.

Pure functions of arrays; the demo reads the files and passes them in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rna_engine.media.metrics import psnr

"""PSNR reported for an exact match (an MSE of 0 has no finite PSNR)."""


@dataclass(frozen=True)
class FrameScore:
    """One frame's accuracy."""

    frame: int
    """Plate frame number."""
    edit_psnr: float | None
    """dB over the tracked ROI in the working encoding; None when the ROI is off screen."""
    leak_pct: float
    """Percent of this frame's paint outside the true visible ROI (0 when nothing is painted)."""
    paint: float
    """Sum of |comp − plate| over RGB and pixels (linear)."""
    leak: float
    """The part of `paint` outside the true visible ROI."""
    nonfinite_pixels: int = 0
    """Comp pixels with a NaN or infinite channel (scored as black: a broken comp scores low)."""


def score_frame(
    frame: int,
    comp: np.ndarray,
    expected: np.ndarray,
    plate: np.ndarray,
    visible: np.ndarray,
    region: np.ndarray,
    encode: Callable[[np.ndarray], np.ndarray] | None = None,
) -> FrameScore:
    """Edit PSNR and paint leak of one comp frame.

    Args:
        frame: the plate frame number (only recorded).
        comp: (H, W, 3) float32 scene-linear comp.
        expected: (H, W, 3) float32 the exact render of the same paint.
        plate: (H, W, 3) float32 the plate the comp was made from.
        visible: (H, W) float32 0..1 true visible-ROI matte (ROI membership × (1 − occlusion)).
        region: (H, W) bool, the pixels the PSNR is taken over (the true tracked ROI).
        encode: maps non-negative linear RGB to the 0..1 encoding the PSNR is taken in;
            None takes the values as they are, clipped to 0..1.

    Returns:
        The frame's `FrameScore`.
    """
    enc = encode or (lambda x: np.clip(x, 0.0, 1.0))
    bad = ~np.isfinite(comp).all(-1)
    if bad.any():
        comp = np.where(bad[..., None], 0.0, comp).astype(np.float32)
    if region.any():
        ea = enc(np.clip(comp, 0.0, None))
        eb = enc(np.clip(expected, 0.0, None))
        edit_psnr: float | None = psnr(float(((ea - eb) ** 2).mean(-1)[region].mean()))
    else:
        edit_psnr = None
    paint = np.abs(comp.astype(np.float64) - plate).sum(-1)
    total = float(paint.sum())
    leak = float(paint[visible <= 0.0].sum())
    return FrameScore(
        frame=frame,
        edit_psnr=edit_psnr,
        leak_pct=100.0 * leak / total if total > 0 else 0.0,
        paint=total,
        leak=leak,
        nonfinite_pixels=int(bad.sum()),
    )


def summarise(scores: Sequence[FrameScore]) -> dict[str, Any]:
    """The whole comp's score: frames worst PSNR first, the mean and worst PSNR, total leak.

    `paint_leak_pct` pools every frame (leaked paint / all paint), so frames with little paint
    weigh little.
    """
    rated = [s for s in scores if s.edit_psnr is not None]
    worst_first = sorted(rated, key=lambda s: (s.edit_psnr, s.frame)) + [
        s for s in scores if s.edit_psnr is None
    ]
    paint = sum(s.paint for s in scores)
    leak = sum(s.leak for s in scores)
    return {
        "nonfinite_pixels": sum(s.nonfinite_pixels for s in scores),
        "edit_psnr_mean": float(np.mean([s.edit_psnr for s in rated])) if rated else None,
        "edit_psnr_worst": worst_first[0].edit_psnr if rated else None,
        "paint_leak_pct": 100.0 * leak / paint if paint > 0 else 0.0,
        "frames": [asdict(s) for s in worst_first],
    }


def format_summary(summary: dict[str, Any], worst: int = 3) -> list[str]:
    """A few lines for the terminal: mean and worst edit PSNR, the worst frames, the leak."""
    frames = summary["frames"]
    mean = summary["edit_psnr_mean"]
    lines = [
        "edit PSNR       "
        + ("n/a" if mean is None else f"mean {mean:.2f} dB over {len(frames)} frames")
        + " (comp vs the exact render, tracked ROI, working encoding)",
        "  worst frames  "
        + ", ".join(
            f"{f['frame']} {f['edit_psnr']:.2f} dB"
            for f in frames[:worst]
            if f["edit_psnr"] is not None
        ),
        f"paint leak      {summary['paint_leak_pct']:.3f} % of the paint outside the true "
        "visible ROI",
    ]
    if summary["nonfinite_pixels"]:
        lines.append(f"WARNING         {summary['nonfinite_pixels']} comp pixels are NaN/Inf")
    return lines
