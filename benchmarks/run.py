"""Benchmark suite: full builds on synthetic ground-truth shots and the real clips.

    python benchmarks/run.py --suite small|bench|hd|uhd --device cuda:0 --out results/
    python benchmarks/run.py --clips ../shared/data/clips --clip blackswan --device cuda:0

Per case: per-stage wall time, peak GPU memory (the allocator's peak allocated and reserved
bytes, and the device's own peak used memory sampled every 50 ms, CUDA context included), fit
steps/s; quality: ROI PSNR over all frames
(the QC definitions in `rna_engine/stages/qc.py`), edit PSNR against the exact expected render and
paint leaking onto occluders (synthetic), mask IoU against ground truth or the annotation.
Writes `<out>/build_<preset>.json` as soon as each synthetic build is done, then
`<out>/bench.json`, and prints a Markdown table for BENCHMARKS.md. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine.apply import ApplySettings, apply_sequence  # noqa: E402
from rna_engine.media import io  # noqa: E402
from rna_engine.media.colour import working_space  # noqa: E402
from rna_engine.media.metrics import (  # noqa: E402
    encoded_error,
    iou_counts,
    paint_amount,
    paint_over,
    psnr,
    tracked_region,
)
from rna_engine.pipeline import run_build  # noqa: E402
from rna_engine.runtime.context import RunContext  # noqa: E402
from rna_engine.settings import spec_from_dict  # noqa: E402
from rna_engine.synthetic.shots import make_shot, paint_pattern, write_shot  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from meta import commit  # noqa: E402

SUITES = {
    "small": ["small"],
    "bench": ["bench"],
    "hd": ["hd"],
    "uhd": ["uhd"],
    "all": ["bench", "hd"],
}


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


class DeviceMemory:
    """Peak used memory of a CUDA device (total − free, every process and context included),
    sampled in a background thread while the `with` block runs, overall and per build stage
    (it is a progress sink: events tell it the stage); None off CUDA."""

    def __init__(self, device: str, every_s: float = 0.05) -> None:
        self.device = device
        self.every_s = every_s
        self.peak_mib: float | None = None
        self.by_stage: dict[str, float] = {}
        self._stage = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, event: Any) -> None:
        self._stage = event.stage

    def _sample(self) -> None:
        import torch

        while True:
            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            used = (total - free) / 2**20
            self.peak_mib = max(self.peak_mib or 0.0, used)
            if self._stage:
                self.by_stage[self._stage] = max(self.by_stage.get(self._stage, 0.0), used)
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> DeviceMemory:
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _build(spec: Any, device: str) -> tuple[Any, dict[str, Any]]:
    """Run one build; its paths and the summary of its status and QC report."""
    t0, started = time.perf_counter(), time.time()
    with DeviceMemory(device if device != "auto" else "cuda:0") as memory:
        paths = run_build(spec, RunContext(seed=0), sinks=[memory])
    wall_s = time.perf_counter() - t0
    status = json.loads(paths.status_json.read_text())
    report = json.loads((paths.qc_dir / "report.json").read_text())
    # A finished build with the same hash is reused, not redone (e.g. after a scoring step was
    # cut short): its times and allocator peaks come from its own files, and nothing was
    # sampled at the device level.
    reused = status["finished"] < started
    if reused:
        wall_s = status["finished"] - status["started"]
        memory.peak_mib, memory.by_stage = None, {}
    return paths, {
        "reused": reused,
        "wall_s": round(wall_s, 2),
        "stages_s": status["timings"],
        "fit_s": report["fit_timings_s"],
        "steps_per_s": report["steps_per_s"],
        "peak_gpu_mib": report["peak_gpu_memory_mib"],
        "peak_gpu_reserved_mib": report.get("peak_gpu_reserved_mib"),
        "peak_device_mib": memory.peak_mib,
        "peak_mib_by_stage": {
            stage: {**alloc, "device": _round(memory.by_stage.get(stage))}
            for stage, alloc in report.get("peak_gpu_mib_by_stage", {}).items()
        },
        "psnr_roi": report["psnr_roi_mean"],
        "psnr_atlas": report["psnr_atlas_mean"],
    }


def _write_shot_once(shot: Any, shot_dir: Path) -> float:
    """Write the synthetic shot unless the same one is already there; seconds spent."""
    manifest = shot_dir / "shot.json"
    if manifest.exists():
        params = json.loads(manifest.read_text()).get("params")
        if params == json.loads(json.dumps(dataclasses.asdict(shot.params))):
            return 0.0
    t0 = time.perf_counter()
    write_shot(shot, shot_dir, truth=False, srgb=False, workers=os.cpu_count() or 1)
    return time.perf_counter() - t0


def run_synthetic(
    preset: str,
    device: str,
    quality: str,
    out: Path,
    overrides: dict[str, Any],
    eval_stride: int = 1,
) -> dict[str, Any]:
    shot = make_shot(preset, seed=0)
    p = shot.params
    shot_dir = out / f"shot_{preset}"
    synth_s = _write_shot_once(shot, shot_dir)
    spec = spec_from_dict(
        {
            "plate": str(shot_dir / "plate" / "plate.####.exr"),
            "roi": str(shot_dir / "roi.exr"),
            "reference_frame": shot.reference_frame,
            "out": str(out / "cache"),
            "name": f"{preset}_{quality}",
            "device": device,
            "settings": {"preset": quality, **overrides},
        }
    )
    paths, result = _build(spec, device)
    result.update(
        {
            "case": f"synthetic {preset} {p.width}x{p.height}x{p.frames}",
            "preset": quality,
            "synth_s": round(synth_s, 1),
        }
    )
    # The build's numbers survive a scoring step that is cut short (large shots).
    (out / f"build_{preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    # Edit against the exact expected render (linear filter = the ground truth's sampling).
    atlas = io.read_image(paths.atlas_exr).select(("R", "G", "B", "A"))
    edit = paint_pattern(p.width, p.height, shot.roi)
    edit[..., 3] *= shot.roi
    painted = paint_over(atlas, edit)
    io.write_rgba_exr(out / f"painted_{preset}.exr", painted, pixel_type="float")
    t2 = time.perf_counter()
    picked = list(range(0, shot.n_frames, eval_stride))
    comps = apply_sequence(
        paths.root,
        out / f"painted_{preset}.exr",
        shot_dir / "plate" / "plate.####.exr",
        out / f"comp_{preset}" / "comp.####.exr",
        ApplySettings(filter="linear"),
        frames=[shot.frame_numbers[t] for t in picked],
    )
    result["apply_s"] = round(time.perf_counter() - t2, 2)
    err, count, leak, paint_total, inter, union = 0.0, 0, 0.0, 0.0, 0, 0
    space = working_space("scene_linear")
    result["eval_frames"] = len(picked)
    for t, path in zip(picked, comps, strict=True):
        f = shot.frame(t)
        comp = io.read_image(path).pixels[..., :3]
        expected = shot.render_edit(edit, t)
        roi = f["roi_tracked"] > 0.5
        e, n = encoded_error(comp, expected, roi, space.encode)
        err += e
        count += n
        paint = paint_amount(comp, f["plate"])
        leak += float(paint[f["occlusion"] > 0.5].sum())  # pooled over frames
        paint_total += float(paint.sum())
        m = io.read_image(paths.pass_path(shot.frame_numbers[t])).channel("rna_mask.m") > 0.5
        truth = (f["roi_tracked"] * (1 - f["occlusion"])) > 0.5
        i, u = iou_counts(m, truth)
        inter += i
        union += u
    result["edit_psnr"] = round(psnr(err / max(count, 1)), 2)
    result["paint_leak_pct"] = round(100 * leak / max(paint_total, 1e-9), 3)
    result["mask_iou"] = round(inter / max(union, 1), 4)
    return result


def run_clip(
    clips: Path,
    name: str,
    device: str,
    quality: str,
    out: Path,
    overrides: dict[str, Any],
    reference_index: int = 25,
) -> dict[str, Any]:
    """A real clip with the ROI on the background; IoU of the occluded set vs the annotation."""
    import cv2

    frames = sorted((clips / name / "frames").glob("*.jpg"))
    masks = sorted((clips / name / "masks").glob("*.png"))
    obj = [cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) > 127 for m in masks]
    h, w = obj[0].shape
    # ROI: a wide band of background around the object's path, minus the object (dilated) on
    # the reference frame, where the ROI must be unoccluded.
    union = np.any(np.stack(obj), 0)
    rows, cols = np.nonzero(union)
    roi = np.zeros((h, w), np.float32)
    r0, r1 = max(0, rows.min() - 40), min(h, rows.max() + 40)
    c0, c1 = max(0, cols.min() - 60), min(w, cols.max() + 60)
    roi[r0:r1, c0:c1] = 1
    keep_out = cv2.dilate(obj[reference_index].astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    roi[keep_out] = 0
    io.write_exr(out / f"{name}_roi.exr", {"A": roi})
    plate_dir = out / f"{name}_frames"
    plate_dir.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        target = plate_dir / f"{name}.{i:04d}.jpg"
        if not target.exists():
            target.write_bytes(f.read_bytes())
    spec = spec_from_dict(
        {
            "plate": str(plate_dir / f"{name}.####.jpg"),
            "roi": str(out / f"{name}_roi.exr"),
            "reference_frame": reference_index,
            "out": str(out / "cache"),
            "name": f"{name}_{quality}",
            "device": device,
            "settings": {"preset": quality, **overrides},
        }
    )
    paths, result = _build(spec, device)
    result.update({"case": f"{name} {w}x{h}x{len(frames)}", "preset": quality})
    # Inside the tracked ROI (the reference ROI carried by the UVs), the occluded set (M < 0.5)
    # against the annotated object.
    inter = union_px = 0
    for i in range(len(frames)):
        p = io.read_image(paths.pass_path(i))
        uv = p.select(("rna_uv.u", "rna_uv.v"))
        tracked = tracked_region(roi, uv)
        occluded = (p.channel("rna_mask.m") < 0.5) & tracked
        i_px, u_px = iou_counts(occluded, obj[i] & tracked)
        inter += i_px
        union_px += u_px
    result["mask_iou"] = round(inter / max(union_px, 1), 4)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


STAGES = ("ingest", "correspondences", "fit", "refine", "bake", "qc")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Device: {meta['device']} · commit {meta['commit']} · `{meta['command']}`",
        "",
        "| case | preset | build s | ingest | corr | fit | refine | bake | qc | fit steps/s "
        "| peak GPU MiB alloc / reserved / device | ROI PSNR | atlas PSNR | edit PSNR | leak % "
        "| mask IoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["stages_s"]
        case = r["case"] + (" (reused build: no device sampling)" if r.get("reused") else "")
        lines.append(
            f"| {case} | {r['preset']} | {r['wall_s']:.1f} | "
            + " | ".join(f"{s.get(k, 0):.1f}" for k in STAGES)
            + f" | {r['steps_per_s'].get('fit', 0):.0f} | "
            f"{_mib(r['peak_gpu_mib'])} / {_mib(r.get('peak_gpu_reserved_mib'))} / "
            f"{_mib(r.get('peak_device_mib'))} | {r['psnr_roi'] or 0:.2f} | "
            f"{r['psnr_atlas'] or 0:.2f} | {r.get('edit_psnr', '–')} | "
            f"{r.get('paint_leak_pct', '–')} | {r.get('mask_iou', '–')} |"
        )
    if any(r.get("peak_mib_by_stage") for r in rows):
        lines += [
            "",
            "Peak GPU MiB by stage (allocated / reserved / device):",
            "",
            "| case | " + " | ".join(STAGES) + " |",
            "|---|" + "---|" * len(STAGES),
        ]
        for r in rows:
            by = r.get("peak_mib_by_stage") or {}
            cells = [
                " / ".join(_mib(by[k].get(n)) for n in ("allocated", "reserved", "device"))
                if k in by
                else "–"
                for k in STAGES
            ]
            lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="", choices=("", *SUITES))
    parser.add_argument("--clips", default="", help="folder of the real clips")
    parser.add_argument("--clip", action="append", default=[], help="clip name(s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="standard", choices=("draft", "standard", "final"))
    parser.add_argument("--set", default="{}", help="JSON settings overrides")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument(
        "--eval-stride",
        type=int,
        default=1,
        help="score the edit on every k-th frame (large shots)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.set)
    rows = []
    for preset in SUITES.get(args.suite, []):
        rows.append(
            run_synthetic(preset, args.device, args.preset, out, overrides, args.eval_stride)
        )
        print(json.dumps(rows[-1]), flush=True)
    for name in args.clip:
        rows.append(run_clip(Path(args.clips), name, args.device, args.preset, out, overrides))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "device": _device_name(args.device if args.device != "auto" else "cuda:0"),
        "commit": commit(),
        "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
    }
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, meta)
    (out / "bench.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
