"""Benchmark of the correspondences stage (rna_engine/stages/correspondences.py); not collected by pytest.

Synthetic shot (`synth.make_shot("bench")`, 768×432×70, exact ground truth), frames within
`--max-distance` of the reference frame:
- median end-point error (EPE) of the reference flow over valid pixels (target ≤ 0.5 px);
- rejection rate of truly occluded pixels, occlusion > 0.5 (target ≥ 95 %), strictly and
  "handled" (rejected, or matched to the same occluder where it is visible in the reference
  frame — a correct correspondence of the occluder, outside the ROI);
- keep rate of truly visible pixels: visible in t and at their true reference position, inside
  the frame (target ≥ 90 %);
- the same three measures in the optical-flow sense ("scene flow"): whatever is seen at a pixel
  — the surface, or an occluder, which translates rigidly — is followed to its true position in
  the reference frame; it is occluded when something else (or nothing: out of frame) is seen
  there. A correctly tracked occluder is a visible match in this sense, and a rejection in the
  surface sense above: no flow can tell that the occluder is not the surface;
- the share of hidden ROI pixels (surface occluded at t, true reference position in the ROI)
  that the bootstrap mask marks as ROI — what matters to the fit;
- wall time of the whole stage on the device.

Real clips (`../shared/data/clips/*`: frames/*.jpg, masks/*.png = the annotated moving
object), resized to the working resolution, a `--clip-frames` window (default 30 of 50 frames,
to keep the CPU run to minutes) around the middle: the ROI is the background — a box inset by
`--roi-margin` minus the object's mask on the reference frame (the middle frame) — and the
overlap of the bootstrap masks with the object, as % of the object's area over all frames, must
stay ≤ 5 %. Also reported: how much of the visible ROI the bootstrap masks cover.

Prints a Markdown table; `--out` writes JSON.

    .venv/bin/python benchmarks/bench_flow.py --device cpu --out bench_flow.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine.runtime.context import RunContext, resolve_device  # noqa: E402
from rna_engine.settings import FlowSettings, from_dict  # noqa: E402
from rna_engine.stages.appearance import sample_px  # noqa: E402
from rna_engine.stages.correspondences import Correspondences, compute_correspondences  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from meta import commit  # noqa: E402


def _run(
    frames: torch.Tensor, roi: torch.Tensor, ref: int, settings: FlowSettings, device: str
) -> tuple[Correspondences, float]:
    frames = frames.to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = compute_correspondences(frames, roi, ref, settings, RunContext(device=device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result.to("cpu"), time.perf_counter() - start


def synthetic(args: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    from rna_engine.synthetic import shots as synth

    start = time.perf_counter()
    overrides = {"frames": args.frames} if args.frames else {}
    shot = synth.make_shot(args.synth_preset, seed=args.seed, **overrides)
    frames = torch.from_numpy(shot.plate_srgb).permute(0, 3, 1, 2).contiguous()
    make_s = time.perf_counter() - start
    n, _, h, w = frames.shape
    r = shot.reference_index
    c, wall_s = _run(frames, torch.from_numpy(shot.roi), r, settings, args.device)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    occ_ref = torch.from_numpy(shot.occlusion[r])[None, None]
    epe_valid, epe_visible, strict, handled, kept, boot_iou = [], [], [], [], [], []
    scene_epe, scene_rejected, scene_kept, boot_hidden = [], [], [], []
    layer_ref = shot.visible_layer(r)
    for t in range(n):
        if t == r or abs(t - r) > args.max_distance:
            continue
        true = shot.true_ref_xy[t]
        true_flow = np.stack([true[..., 0] - xs, true[..., 1] - ys])
        flow = c.ref[t].numpy()
        valid = c.ref_valid[t].numpy()
        epe = np.linalg.norm(flow - true_flow, axis=0)
        occluded = shot.occlusion[t] > 0.5
        lands = torch.from_numpy(np.stack([xs, ys]) + flow)[None]
        on_occluder = sample_px(occ_ref, lands)[0, 0].numpy() > 0.5
        inside = (
            (true[..., 0] >= 0)
            & (true[..., 0] <= w - 1)
            & (true[..., 1] >= 0)
            & (true[..., 1] <= h - 1)
        )
        hidden_at_ref = sample_px(occ_ref, torch.from_numpy(true).permute(2, 0, 1)[None])
        visible = ~occluded & inside & (hidden_at_ref[0, 0].numpy() < 0.5)
        epe_valid.append(epe[valid])
        epe_visible.append(epe[valid & visible])
        strict.append(~valid[occluded])
        handled.append((~valid | on_occluder)[occluded])
        kept.append(valid[visible])
        boot = c.bootstrap[t].numpy() > 0.5
        matte = shot.true_matte[t] > 0.5
        boot_iou.append((boot & matte).sum() / max(1, (boot | matte).sum()))
        # Flow-sense ground truth: follow whatever is seen at p (surface or occluder) to r.
        dest, seen = _scene_destination(shot, t, r, true, xs, ys)
        scene_visible = _seen_at(layer_ref, dest) == seen
        scene_epe.append(np.hypot(*(np.stack([xs, ys]) + flow - dest.transpose(2, 0, 1)))[valid])
        scene_rejected.append(~valid[~scene_visible])
        scene_kept.append(valid[scene_visible])
        boot_hidden.append(boot[occluded & (shot.roi_at(true) > 0.5)])
    cat = np.concatenate
    return {
        "shot": f"synth {args.synth_preset} seed {args.seed}",
        "frames": n,
        "width": w,
        "height": h,
        "reference_index": r,
        "max_distance": args.max_distance,
        "median_epe_valid_px": float(np.median(cat(epe_valid))),
        "median_epe_valid_visible_px": float(np.median(cat(epe_visible))),
        "mean_epe_valid_visible_px": float(cat(epe_visible).mean()),
        "occluded_rejected": float(cat(strict).mean()),
        "occluded_handled": float(cat(handled).mean()),
        "occluded_pixels": int(cat(strict).size),
        "visible_kept": float(cat(kept).mean()),
        "scene_median_epe_valid_px": float(np.median(cat(scene_epe))),
        "scene_occluded_rejected": float(cat(scene_rejected).mean()),
        "scene_occluded_pixels": int(cat(scene_rejected).size),
        "scene_visible_kept": float(cat(scene_kept).mean()),
        "hidden_roi_in_bootstrap": float(cat(boot_hidden).mean()),
        "bootstrap_iou_mean": float(np.mean(boot_iou)),
        "wall_s": wall_s,
        "make_shot_s": make_s,
    }


def _scene_destination(
    shot: Any, t: int, r: int, surface_ref_xy: np.ndarray, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where the thing seen at each pixel of t is in r, (H, W, 2), and what it is (H, W):
    −1 the surface (at its true reference position), k occluder k (it translates rigidly)."""
    seen = shot.visible_layer(t)
    dest = surface_ref_xy.copy()
    for k in np.unique(seen[seen >= 0]):
        on = seen == k
        shift = shot.occluder_velocity(int(k)) * (r - t)
        dest[on] = np.stack([xs[on] + shift[0], ys[on] + shift[1]], -1)
    return dest, seen


def _seen_at(layer: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """`layer` at positions xy (nearest); −2 outside the frame (nothing there is visible)."""
    h, w = layer.shape
    xi, yi = np.rint(xy[..., 0]).astype(int), np.rint(xy[..., 1]).astype(int)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.full(xy.shape[:-1], -2, np.int8)
    out[ok] = layer[yi[ok], xi[ok]]
    return out


def _read_clip(folder: Path, long_side: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    frame_files = sorted((folder / "frames").glob("*.jpg"))
    mask_files = sorted((folder / "masks").glob("*.png"))
    if limit and len(frame_files) > limit:  # a window centred on the middle frame
        start = (len(frame_files) - limit) // 2
        frame_files = frame_files[start : start + limit]
        mask_files = mask_files[start : start + limit]
    frames, masks = [], []
    for f, m in zip(frame_files, mask_files, strict=True):
        img = cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        scale = long_side / max(h, w)
        size = (round(w * scale), round(h * scale))
        frames.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        mask = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) > 127  # DAVIS: threshold at > 127
        masks.append(cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST))
    return np.stack(frames).astype(np.float32) / 255.0, np.stack(masks).astype(bool)


def clip(folder: Path, args: argparse.Namespace, settings: FlowSettings) -> dict[str, Any]:
    frames_np, objects = _read_clip(folder, args.long_side, args.clip_frames)
    n, h, w, _ = frames_np.shape
    r = n // 2
    margin_x, margin_y = round(w * args.roi_margin), round(h * args.roi_margin)
    roi = np.zeros((h, w), np.float32)
    roi[margin_y : h - margin_y, margin_x : w - margin_x] = 1
    roi[objects[r]] = 0  # the ROI is the background: box minus the object
    frames = torch.from_numpy(frames_np).permute(0, 3, 1, 2).contiguous()
    c, wall_s = _run(frames, torch.from_numpy(roi), r, settings, args.device)
    overlap, area, per_frame, coverage = 0, 0, [], []
    for t in range(n):
        if t == r:
            continue
        boot = c.bootstrap[t].numpy() > 0.5
        obj = objects[t]
        hit = int((boot & obj).sum())
        overlap += hit
        area += int(obj.sum())
        per_frame.append(hit / max(1, int(obj.sum())))
        coverage.append(boot.sum() / max(1, (roi > 0).sum()))
    return {
        "clip": folder.name,
        "frames": n,
        "width": w,
        "height": h,
        "reference_index": r,
        "object_overlap": overlap / max(1, area),
        "object_overlap_worst_frame": float(max(per_frame)),
        "bootstrap_coverage_of_roi": float(np.mean(coverage)),
        "ref_valid_fraction": float(c.ref_valid.float().mean()),
        "wall_s": wall_s,
    }


def _install_random_raft(size: str) -> None:
    """A randomly initialised torchvision RAFT installed as `raft` in a temporary RNA_HOME."""
    import os
    import tempfile

    from torchvision.models.optical_flow import raft_large, raft_small

    from rna_engine.runtime import weights

    home = Path(tempfile.mkdtemp(prefix="rna_home_"))
    os.environ["RNA_HOME"] = str(home)
    torch.manual_seed(0)
    model = (raft_small if size == "small" else raft_large)(weights=None)
    path = home / f"raft_{size}_random.pth"
    torch.save(model.state_dict(), path)
    record = weights.install("raft", path)
    print(f"RAFT {record.variant}, random weights (timing only) in {home}", file=sys.stderr)


def _table(syn: dict[str, Any] | None, clips: list[dict[str, Any]]) -> str:
    lines = ["| measure | value | target |", "|---|---|---|"]
    if syn:
        lines += [
            f"| shot | {syn['shot']}, {syn['width']}×{syn['height']}×{syn['frames']}, "
            f"ref {syn['reference_index']} | |",
            f"| median EPE, valid pixels, ≤ {syn['max_distance']} frames from ref | "
            f"{syn['median_epe_valid_px']:.3f} px | ≤ 0.5 px |",
            f"| median / mean EPE, valid and truly visible | "
            f"{syn['median_epe_valid_visible_px']:.3f} / {syn['mean_epe_valid_visible_px']:.3f} px"
            " | |",
            f"| occluded pixels rejected (strict) | {syn['occluded_rejected'] * 100:.1f} % of "
            f"{syn['occluded_pixels']} | ≥ 95 % |",
            f"| occluded pixels rejected or matched to the occluder in ref | "
            f"{syn['occluded_handled'] * 100:.1f} % | |",
            f"| truly visible pixels kept | {syn['visible_kept'] * 100:.1f} % | ≥ 90 % |",
            f"| scene flow (surface or occluder followed to r): median EPE, valid pixels | "
            f"{syn['scene_median_epe_valid_px']:.3f} px | ≤ 0.5 px |",
            f"| scene flow: pixels not visible at their destination in r, rejected | "
            f"{syn['scene_occluded_rejected'] * 100:.1f} % of {syn['scene_occluded_pixels']} "
            "| ≥ 95 % |",
            f"| scene flow: pixels visible at their destination, kept | "
            f"{syn['scene_visible_kept'] * 100:.1f} % | ≥ 90 % |",
            f"| hidden ROI pixels (surface occluded at t) in the bootstrap mask | "
            f"{syn['hidden_roi_in_bootstrap'] * 100:.2f} % | |",
            f"| bootstrap IoU with the true matte (mean) | {syn['bootstrap_iou_mean']:.3f} | |",
            f"| wall time, {syn['frames']} frames {syn['width']}×{syn['height']} | "
            f"{syn['wall_s']:.1f} s | |",
        ]
    for row in clips:
        lines += [
            f"| {row['clip']} ({row['frames']} frames {row['width']}×{row['height']}): bootstrap "
            f"∩ object | {row['object_overlap'] * 100:.2f} % (worst frame "
            f"{row['object_overlap_worst_frame'] * 100:.1f} %) | ≤ 5 % |",
            f"| {row['clip']}: bootstrap coverage of the ROI | "
            f"{row['bootstrap_coverage_of_roi'] * 100:.1f} % | |",
            f"| {row['clip']}: wall time | {row['wall_s']:.1f} s | |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda:N or auto")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--synth-preset", default="bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=0, help="override the shot's frame count")
    parser.add_argument(
        "--max-distance",
        type=int,
        default=30,
        help="accuracy over frames at most this far from the reference",
    )
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "data" / "clips")
    parser.add_argument(
        "--clip-frames",
        type=int,
        default=30,
        help="use a window of this many frames around each clip's middle (0: all 50)",
    )
    parser.add_argument("--long-side", type=int, default=768, help="working long side, pixels")
    parser.add_argument(
        "--roi-margin", type=float, default=0.05, help="ROI box inset, fraction of the frame"
    )
    parser.add_argument("--skip-synth", action="store_true")
    parser.add_argument("--skip-clips", action="store_true")
    parser.add_argument("--settings", default="{}", help="JSON overrides of FlowSettings")
    parser.add_argument(
        "--raft-random",
        choices=("small", "large"),
        help="time the RAFT backend with a randomly initialised torchvision RAFT of this size, "
        "installed into a temporary RNA_HOME (no weights can be fetched here): wall time only, "
        "its flows are meaningless",
    )
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    overrides = json.loads(args.settings)
    if args.raft_random:
        _install_random_raft(args.raft_random)
        overrides["backend"] = "raft"
    settings = from_dict(FlowSettings, overrides, "flow.")
    syn = None if args.skip_synth else synthetic(args, settings)
    clips = []
    if not args.skip_clips and args.clips.is_dir():
        for folder in sorted(p for p in args.clips.iterdir() if (p / "frames").is_dir()):
            clips.append(clip(folder, args, settings))
    print(_table(syn, clips))
    if args.out:
        device_name = (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine()
        )
        report = {
            "benchmark": "flow",
            "commit": commit(),
            "device": args.device,
            "device_name": device_name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "command": " ".join(sys.argv),
            "settings": dataclasses.asdict(settings),
            "synthetic": syn,
            "clips": clips,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
