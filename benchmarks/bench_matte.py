"""Benchmark of the soft matte (rna_engine/stages/matte.py); not collected by pytest.

For each scene, per method: SAD (sum of |matte − true alpha| per frame, the matting
literature's measure) and temporal flicker (mean |m_t − warp(m_{t−1})| over the unknown band of
frame t, warped by the true backward flow), for

- `hard`: the input mask binarised at 0.5 (what the cache would hold without this stage);
- `guided-only`: the weighted guided filter without the closed-form refinement;
- `guided`: the default weight-free matte (guided filter + closed form), frame by frame;
- `guided+temporal`: the same through `MatteStream` (temporal stabilisation with the flow).

Scenes:
- `edges`: a textured surface behind a wobbly disc whose antialiased edge is `edge` pixels
  wide, grain σ = 0.02, static or translating (known flow), at plate = working resolution and
  at plate = 2× working (mask = working-resolution mask, bilinearly upsampled).
- `synth-small`: `synth.make_shot("small")` (160×96×16, two occluders, camera motion); the
  ROI carried to each frame is `shot.roi` sampled at `true_ref_xy` (what the bake gets through
  the UV pass) and passed as `roi_tracked`. Truth A is the synth's `true_matte` (analytic
  antialiased ROI × (1 − occlusion)); truth B is the sampled ROI × (1 − occlusion). The band's
  flow is each occluder's screen velocity (read from the shot's private occluder list);
  flicker is measured on occluder edges inside the ROI (the ROI's border moves with the camera),
  where the true matte B is consistent under that flow (not where two occluders uncover each
  other), and not across the reference frame (the synth clears occluders inside the ROI there).
- `blackswan`/`horsejump-high` (when `../shared/data/clips` exists): real 8-bit footage; the
  mask is the background (DAVIS annotation inverted); no soft truth, so flicker only, with
  OpenCV DIS backward flow.

Also the time per frame of a 3840×2160 plate (`--4k`) on the chosen device.

    .venv/bin/python benchmarks/bench_matte.py [--device cpu] [--4k] [--out bench_matte.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine.settings import MatteSettings  # noqa: E402
from rna_engine.stages import matte as mt  # noqa: E402

CLIPS = ROOT.parent / "shared" / "data" / "clips"

# ---------------------------------------------------------------------------------------------
# Scenes: (plates (N,3,H,W) linear, masks (N,H,W), truths (N,H,W) | None, flows list, roi | None)


def _texture(xx: torch.Tensor, yy: torch.Tensor, seed: int, fmax: float, lo, hi) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    planes = []
    for c in range(3):
        f = (torch.rand(8, 2, generator=g) * 2 - 1) * fmax
        ph = torch.rand(8, generator=g) * 6.28
        t = sum(torch.sin(xx * f[i, 0] + yy * f[i, 1] + ph[i]) for i in range(8)) / 8
        planes.append(lo[c] + (hi[c] - lo[c]) * (0.5 + 0.5 * t))
    return torch.stack(planes)


def edges_scene(
    scale: int, edge_px: float, velocity: tuple[float, float], frames: int = 10, noise: float = 0.02
) -> dict[str, Any]:
    h, w = 96 * scale, 144 * scale
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    g = torch.Generator().manual_seed(7)
    plates, truths = [], []
    for t in range(frames):
        sx, sy = xx - velocity[0] * t, yy - velocity[1] * t
        surface = _texture(sx / scale, sy / scale, 1, 0.6, (0.03, 0.05, 0.02), (0.7, 0.6, 0.9))
        occluder = _texture(sx / scale, sy / scale, 2, 0.15, (0.4, 0.02, 0.05), (1.6, 0.3, 0.3))
        cx, cy = w * 0.45, h * 0.5
        ang = torch.atan2(sy - cy, sx - cx)
        radius = h * 0.3 * (1 + 0.15 * torch.sin(3 * ang) + 0.05 * torch.sin(7 * ang))
        dist = torch.sqrt((sx - cx) ** 2 + (sy - cy) ** 2) - radius
        alpha = (0.5 - dist / edge_px).clamp(0, 1)
        plate = (1 - alpha) * surface + alpha * occluder + noise * torch.randn(3, h, w, generator=g)
        plates.append(plate.clamp_min(0))
        truths.append(1 - alpha)
    truth = torch.stack(truths)
    if scale > 1:
        working = F.avg_pool2d(truth[:, None], scale) >= 0.5
        masks = F.interpolate(working.float(), scale_factor=scale, mode="bilinear")[:, 0]
    else:
        masks = (truth >= 0.5).float()
    flow = torch.empty(2, h, w)
    flow[0], flow[1] = -velocity[0], -velocity[1]
    moving = velocity != (0.0, 0.0)
    return {
        "plates": torch.stack(plates),
        "masks": masks,
        "truths": {"": truth},
        "flows": [None] + [flow if moving else None] * (frames - 1),
        "roi": None,
        "scale": float(scale),
        "cuts": (),
    }


def synth_scene(grain: float) -> dict[str, Any]:
    from rna_engine.synthetic.shots import make_shot, sample_bilinear_px

    shot = make_shot("small", seed=0, grain=grain)
    n, h, w = shot.occlusion.shape
    roi = np.stack(
        [
            sample_bilinear_px(shot.roi[..., None], shot.true_ref_xy[t], w, h)[..., 0]
            for t in range(n)
        ]
    )
    occlusion = torch.from_numpy(shot.occlusion)
    truth_a = torch.from_numpy(shot.true_matte)
    truth_b = torch.from_numpy(roi) * (1 - occlusion)
    # each pixel moves with the nearest occluder (normalised elliptic distance): the band
    # follows the occluders' edges; their screen velocity is constant per occluder
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    flows: list[torch.Tensor | None] = [None]
    for t in range(1, n):
        best = np.full((h, w), np.inf, np.float32)
        flow = np.zeros((2, h, w), np.float32)
        for occ in shot._occluders:
            c = occ.centre0 + occ.velocity * t
            ca, sa = math.cos(occ.angle), math.sin(occ.angle)
            dx, dy = xs - c[0], ys - c[1]
            u, v = (ca * dx + sa * dy) / occ.radii[0], (-sa * dx + ca * dy) / occ.radii[1]
            rho = np.sqrt(u * u + v * v)
            closer = rho < best
            best = np.where(closer, rho, best)
            flow[0] = np.where(closer, -occ.velocity[0], flow[0])
            flow[1] = np.where(closer, -occ.velocity[1], flow[1])
        flows.append(torch.from_numpy(flow))
    return {
        "plates": torch.from_numpy(shot.plate_linear).permute(0, 3, 1, 2).contiguous(),
        "masks": (truth_b >= 0.5).float(),
        "truths": {"A": truth_a, "B": truth_b},
        "flows": flows,
        "roi": torch.from_numpy(roi),
        "scale": 1.0,
        # the synth clears the occluders inside the ROI on the reference frame: a jump in the
        # occlusion that no flow explains, so the temporal filter restarts after it
        "cuts": (shot.reference_index, shot.reference_index + 1),
    }


def clip_scene(name: str, frames: int) -> dict[str, Any] | None:
    import cv2

    folder = CLIPS / name
    if not (folder / "frames").is_dir():
        return None
    paths = sorted((folder / "frames").glob("*.jpg"))[:frames]
    rgb, grey, masks = [], [], []
    for p in paths:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        m = cv2.imread(str(folder / "masks" / (p.stem + ".png")), cv2.IMREAD_GRAYSCALE)
        if bgr is None or m is None:
            raise SystemExit(f"{p}: unreadable frame or mask")
        grey.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        srgb = bgr[..., ::-1].astype(np.float32) / 255.0
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        rgb.append(torch.from_numpy(np.ascontiguousarray(linear.transpose(2, 0, 1))))
        masks.append(torch.from_numpy(np.asarray(m < 128, np.float32)))  # background = the ROI
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    flows: list[torch.Tensor | None] = [None]
    for t in range(1, len(paths)):
        f = dis.calc(grey[t], grey[t - 1], None)  # pixel of t → where it was in t − 1
        flows.append(torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))))
    return {
        "plates": torch.stack(rgb),
        "masks": torch.stack(masks),
        "truths": {},
        "flows": flows,
        "roi": None,
        "scale": 1.0,
        "cuts": (),
    }


# ---------------------------------------------------------------------------------------------


def run_methods(
    scene: dict[str, Any], settings: MatteSettings, device: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    plates, masks, flows, roi = scene["plates"], scene["masks"], scene["flows"], scene["roi"]
    n = len(plates)
    scale = scene["scale"]
    per_frame = dataclasses.replace(settings, temporal_weight=0.0)
    no_cf = dataclasses.replace(per_frame, closed_form_iterations=0)
    out: dict[str, list[torch.Tensor]] = {"guided-only": [], "guided": [], "guided+temporal": []}
    stream = mt.MatteStream(settings, scale, device)
    seconds = 0.0
    for t in range(n):
        plate = plates[t].to(device)
        mask = masks[t].to(device)
        r = roi[t].to(device) if roi is not None else None
        out["guided-only"].append(mt.soft_matte(plate, mask, no_cf, scale, roi_tracked=r).cpu())
        start = time.perf_counter()
        out["guided"].append(mt.soft_matte(plate, mask, per_frame, scale, roi_tracked=r).cpu())
        seconds += time.perf_counter() - start
        if t in scene["cuts"]:
            stream.reset()
        flow = flows[t].to(device) if flows[t] is not None else None
        out["guided+temporal"].append(stream(plate, mask, None, flow, r).cpu())
    radius = mt.band_radius(settings.band_px, scale)
    bands = []
    for t in range(n):
        target = masks[t] if roi is None else mt.occluder_target(masks[t], roi[t], radius)
        band = mt.make_trimap(target, radius, settings.uncertain_mask) == mt.UNKNOWN
        if roi is not None:
            # measure occluder edges inside the ROI: the ROI's border moves with the camera,
            # the band with its occluder, and no single flow warps both
            outside = (roi[t] < 0.999).float()[None, None]
            band &= F.max_pool2d(outside, 2 * radius + 1, 1, radius)[0, 0] == 0
            if t > 0:
                before, _ = mt.warp_previous(roi[t - 1], flows[t])
                band &= before > 0.999
            if t > 0:
                # occluders uncover and cover the surface: where the true matte itself changes
                # under the flow, the change is real, not flicker
                truth = scene["truths"]["B"]
                before, _ = mt.warp_previous(truth[t - 1], flows[t])
                band &= (truth[t] - before).abs() < 0.05
        if t in scene["cuts"]:
            band[:] = False
        bands.append(band)
    results = {"hard": (masks >= 0.5).float()} | {k: torch.stack(v) for k, v in out.items()}
    return results, torch.stack(bands), 1000 * seconds / n


def time_4k(settings: MatteSettings, device: str) -> dict[str, float]:
    """ms per frame of a 3840×2160 plate with a large soft-edged occluder (band ≈ 16 px)."""
    h, w = 2160, 3840
    scale = w / 768
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    dist = torch.sqrt((xx - w * 0.5) ** 2 + (yy - h * 0.5) ** 2) - h * 0.35
    alpha = (0.5 - dist / 8.0).clamp(0, 1)
    surface = _texture(xx / scale, yy / scale, 1, 0.6, (0.03, 0.05, 0.02), (0.7, 0.6, 0.9))
    plate = ((1 - alpha) * surface + alpha * 0.5).to(device)
    mask = (alpha < 0.5).float().to(device)
    per_frame = dataclasses.replace(settings, temporal_weight=0.0)
    backend = mt.load_backend(per_frame, device)
    mt.soft_matte(plate, mask, per_frame, scale, backend=backend)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    mt.soft_matte(plate, mask, per_frame, scale, backend=backend)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    result = {"ms_per_frame": 1000 * (time.perf_counter() - start)}
    if device.startswith("cuda"):
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--4k", dest="uhd", action="store_true", help="also time a 4K frame")
    parser.add_argument("--clip-frames", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = MatteSettings()
    scenes: list[tuple[str, dict[str, Any]]] = []
    for scale in (1, 2):
        for edge in (1.0, 3.0):
            for vel in ((0.0, 0.0), (0.7, 0.3)):
                kind = "static" if vel == (0.0, 0.0) else "moving"
                label = f"edges {edge:g}px ×{scale} {kind}"
                scenes.append((label, edges_scene(scale, edge * scale, vel)))
    scenes.append(("synth-small", synth_scene(0.0)))
    scenes.append(("synth-small grain .01", synth_scene(0.01)))
    for clip in ("blackswan", "horsejump-high"):
        scene = clip_scene(clip, args.clip_frames)
        if scene is not None:
            scenes.append((clip, scene))

    methods = ("hard", "guided-only", "guided", "guided+temporal")
    rows: list[dict[str, Any]] = []
    header = "| scene | truth | " + " | ".join(f"SAD {m}" for m in methods)
    header += " | " + " | ".join(f"flicker {m}" for m in methods) + " | flicker truth | ms/frame |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, scene in scenes:
        results, bands, ms = run_methods(scene, settings, args.device)
        n = len(scene["plates"])
        flicker = {m: mt.temporal_flicker(results[m], scene["flows"], bands) for m in methods}
        truths = scene["truths"] or {"-": None}
        for key, truth in truths.items():
            sad = {
                m: (mt.matte_sad(results[m], truth) / n if truth is not None else None)
                for m in methods
            }
            ft = mt.temporal_flicker(truth, scene["flows"], bands) if truth is not None else None
            row = {
                "scene": label,
                "truth": key or "exact",
                "sad": sad,
                "flicker": flicker,
                "flicker_truth": ft,
                "ms_per_frame": ms,
            }
            rows.append(row)
            cells = [f"{sad[m]:.1f}" if sad[m] is not None else "–" for m in methods]
            cells += [f"{flicker[m]:.4f}" for m in methods]
            cells += [f"{ft:.4f}" if ft is not None else "–", f"{ms:.0f}"]
            print(f"| {label} | {row['truth']} | " + " | ".join(cells) + " |", flush=True)
    uhd = time_4k(settings, args.device) if args.uhd else None
    if uhd:
        print(
            f"\n4K frame (3840×2160, band ±{mt.band_radius(settings.band_px, 3840 / 768)} px): "
            + ", ".join(f"{k} {v:.0f}" for k, v in uhd.items())
        )
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        meta = {
            "device": args.device,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "commit": commit,
            "settings": dataclasses.asdict(settings),
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "4k": uhd}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
