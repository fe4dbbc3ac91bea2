"""The camera prior alone on a real clip, per frame, worst-first material for issue #15.

    python benchmarks/bench_camera.py --clip car-turn --scale 0.5

No fit: the correspondences stage runs twice on the clip (`flow.camera` homography and off)
with the ROI box and reference frame of `bench_clips.CLIPS`, and every frame is scored on the
ROI's background (the box as the camera maps it, the annotated object dilated and removed):

- `residual`: median / p90 of the DIS flow between frame t warped onto the reference by H_t and
  the reference frame, working pixels (0 = the homography aligns the surface exactly);
- `matched`: share of that background with a valid t→r match, with the camera and chains only.

Runs on the CPU in minutes at `--scale 0.5`. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_clips import CLIPS  # noqa: E402

from rna_engine.runtime.context import RunContext  # noqa: E402
from rna_engine.settings import FlowSettings  # noqa: E402
from rna_engine.stages.camera import apply_homography  # noqa: E402
from rna_engine.stages.correspondences import Correspondences, compute_correspondences  # noqa: E402


def load(clips: Path, name: str, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (N, H, W, 3) float 0..1, object masks (N, H, W) bool and the ROI (H, W)."""
    import cv2

    frames = [cv2.imread(str(p))[..., ::-1] for p in sorted((clips / name / "frames").glob("*"))]
    masks = [cv2.imread(str(p), 0) > 127 for p in sorted((clips / name / "masks").glob("*.png"))]
    h0, w0 = frames[0].shape[:2]
    w, h = int(round(w0 * scale)), int(round(h0 * scale))
    rgb = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    obj = np.stack(
        [cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for m in masks]
    )
    x0, y0, x1, y1 = (int(round(v * scale)) for v in CLIPS[name]["box"])
    roi = np.zeros((h, w), np.float32)
    roi[y0:y1, x0:x1] = 1.0
    return rgb.astype(np.float32) / 255.0, obj.astype(bool), roi


def score(
    frames: np.ndarray,
    obj: np.ndarray,
    roi: np.ndarray,
    r: int,
    cam: Correspondences,
    chains: Correspondences,
) -> list[dict[str, float | int | bool | None]]:
    """Per-frame rows (see the module docstring)."""
    import cv2

    n, h, w = obj.shape
    luma = np.array([0.2126, 0.7152, 0.0722], np.float32)
    gray = (frames @ luma * 255).astype(np.uint8)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grow = np.ones((9, 9), np.uint8)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    assert cam.camera is not None and cam.anchored is not None
    rows = []
    for t in range(n):
        hom = cam.camera[t].cpu().numpy()
        warp = cv2.warpPerspective
        warped = warp(gray[t], hom, (w, h))
        obj_w = warp(obj[t].astype(np.uint8), hom, (w, h), flags=cv2.INTER_NEAREST)
        covered = warp(np.ones((h, w), np.uint8), hom, (w, h), flags=cv2.INTER_NEAREST) > 0
        background_ref = (roi > 0) & covered & ~(cv2.dilate(obj_w, grow) > 0) & ~obj[r]
        row: dict[str, float | int | bool | None] = {
            "index": t,
            "distance": t - r,
            "anchored": bool(cam.anchored[t]),
            "background_px": int(background_ref.sum()),
        }
        if background_ref.sum() > 50:
            d = dis.calc(warped, gray[r], None)
            mag = np.hypot(d[..., 0], d[..., 1])[background_ref]
            row["residual_med"], row["residual_p90"] = (
                float(np.median(mag)),
                float(np.quantile(mag, 0.9)),
            )
        # Background of frame t itself: pixels whose H_t lands in the box, off the object.
        fx, fy = apply_homography(hom, xs, ys)
        inside = (fx >= 0) & (fx <= w - 1) & (fy >= 0) & (fy <= h - 1)
        lands = roi[np.clip(fy, 0, h - 1).astype(int), np.clip(fx, 0, w - 1).astype(int)] > 0
        in_roi = inside & lands
        background = in_roi & ~(cv2.dilate(obj[t].astype(np.uint8), grow) > 0)
        for key, corr in (("matched_camera", cam), ("matched_chains", chains)):
            valid = corr.ref_valid[t].cpu().numpy()
            row[key] = float(valid[background].mean()) if background.any() else None
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default=str(ROOT.parent / "shared" / "data" / "clips"))
    parser.add_argument("--clip", default="car-turn", choices=sorted(CLIPS))
    parser.add_argument("--scale", type=float, default=0.5, help="of the plate resolution")
    args = parser.parse_args()
    frames, obj, roi = load(Path(args.clips), args.clip, args.scale)
    r = int(CLIPS[args.clip]["ref"])
    import torch

    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    runs = {}
    for mode in ("homography", "off"):
        t0 = time.perf_counter()
        runs[mode] = compute_correspondences(
            tensor,
            torch.from_numpy(roi),
            r,
            FlowSettings(camera=mode),
            RunContext(),  # type: ignore[arg-type]
        )
        print(f"flow.camera={mode}: correspondences {time.perf_counter() - t0:.1f} s")
    rows = score(frames, obj, roi, r, runs["homography"], runs["off"])

    def fmt(v: object, pct: bool = False) -> str:
        if v is None:
            return "–"
        return f"{100 * v:.0f}" if pct else f"{v:.2f}" if isinstance(v, float) else str(v)

    print(f"\n{args.clip} at {args.scale}× (working px), reference index {r}\n")
    print(
        "| frame | d ref | anchored | background px | residual med | residual p90 | "
        "matched % camera | matched % chains |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['index']} | {row['distance']:+d} | {row['anchored']} | {row['background_px']} "
            f"| {fmt(row.get('residual_med'))} | {fmt(row.get('residual_p90'))} "
            f"| {fmt(row['matched_camera'], True)} | {fmt(row['matched_chains'], True)} |"
        )


if __name__ == "__main__":
    main()
