"""Per-frame quality on the real clips, worst frame first (issue #15).

    python benchmarks/bench_clips.py --device cuda:0 --out results/clips
    python benchmarks/bench_clips.py --quick --device cpu --clip blackswan --out /tmp/clips

Every clip in `../shared/data/clips` (frames `NNNNN.jpg`, annotated object masks `NNNNN.png`)
gets the ROI box and reference frame of `CLIPS`: background at the reference frame that the
annotated object crosses in other frames (the reason is recorded). It is built through
`python -m rna_engine build` and scored per frame, at plate resolution:

- `tracked_px`: pixels whose UV lands in the reference ROI (the tracked ROI), none on a frame
  whose `qc/report.json` has no tracked ROI (`roi_pixels` 0: the camera prior puts the ROI
  out of view, `refine.camera_gate`; the UV there is T's and means nothing). On a frame the
  gate cuts only in part, the UV's tracked ROI still counts the cut pixels: coverage there is
  a lower bound;
- `visible_coverage_pct`: share of tracked-ROI pixels outside the object (dilated 5 px) with
  `rna_matte.m` > 0.5;
- `occluded_hidden_pct`: share of tracked-ROI pixels inside the object (eroded 5 px) with
  `rna_matte.m` < 0.5; `occluded_hidden_m_pct` the same with the refined M (`rna_mask.m`):
  where the two differ, the soft matte loses what M hid (or the reverse);
- `atlas_psnr`: atlas × shade at the UV (bilinear) against the plate on the visible tracked ROI,
  in sRGB 0..1 (the engine linearises the sRGB JPEGs: the atlas is scene-linear, the plate as
  read is not);
- `leak_pct`: share of a test paint's comp (`rna_engine.apply`) that lands on the object
  (eroded 5 px), measured against the comp of the unedited atlas. The share is of at least
  the paint of the reference frame scaled by the tracked-ROI area: when the object hides
  almost all the paint, the few painted pixels left are not reported as a large share.

Prints a table per clip sorted worst frame first (lowest visible coverage), writes
`<out>/clips_per_frame.json`, `<out>/clips_summary.json`, `<out>/<clip>_worst.png` (plate,
matte, paint comp and an occluder check of the worst frame by visible coverage, labelled) and
`<out>/<clip>_worst_hidden.png` (the same for the worst frame by occluded hidden). The
occluder check tile is the plate with the object's outline (yellow), its tracked-ROI pixels
that the matte hides (green) and those it does not (red: paint would land on the object).
Each clip's headline figures replace its status record `clip-<clip>.json` (`results.py`) in
`--results DIR`, else `$RNA_BENCH_RESULTS`, else `benchmarks/results/` (`--quick`: only in a
named folder); `python benchmarks/status.py` puts them in BENCHMARKS.md.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_hard import QUICK_SET, run_build  # noqa: E402
from meta import commit  # noqa: E402
from results import target_dir, write_build_result  # noqa: E402

from rna_engine.media import io  # noqa: E402
from rna_engine.media import metrics as m  # noqa: E402
from rna_engine.media.cache import BuildPaths, atomic_path, write_json_atomic  # noqa: E402
from rna_engine.media.colour import linear_to_srgb  # noqa: E402
from rna_engine.media.stmap import sample_stmap  # noqa: E402
from rna_engine.synthetic.shots import paint_pattern  # noqa: E402

CLIPS: dict[str, dict[str, Any]] = {
    # Boxes (x0, y0, x1, y1) in plate pixels, chosen from the masks and a background homography
    # chain (LK features outside the dilated object): background at the reference frame (31 px
    # clear of the object), crossed by the object (> 15 % of the box) in the frames listed.
    "bear": {
        "ref": 61,
        "box": (460, 220, 680, 360),
        "why": "rocks right of the bear at frame 61; the bear walked over them in frames 0-33 "
        "while the camera panned with it",
    },
    "blackswan": {
        "ref": 12,
        "box": (580, 190, 800, 330),
        "why": "water right of the swan at frame 12; the swan covers it in frames 23-49 as the "
        "camera pans with it",
    },
    "car-turn": {
        "ref": 20,
        "box": (340, 220, 560, 360),
        "why": "road left of the car at frame 20; the car drives over it in frames 30-53 while "
        "the camera turns",
    },
    "horsejump-high": {
        "ref": 12,
        "box": (520, 160, 740, 300),
        "why": "background right of horse and rider at frame 12; they jump across it in "
        "frames 24-45",
    },
    "kite-surf": {
        "ref": 25,
        "box": (10, 130, 230, 270),
        "why": "water left of the surfer at frame 25; the surfer crosses it in frames 11-20",
    },
}
COLUMNS = (
    ("tracked_px", "tracked px", True, "{:d}"),
    ("visible_coverage_pct", "visible cover %", True, "{:.1f}"),
    ("occluded_hidden_pct", "occluded hidden %", True, "{:.1f}"),
    ("occluded_hidden_m_pct", "hidden by M %", True, "{:.1f}"),
    ("atlas_psnr", "atlas dB", True, "{:.2f}"),
    ("leak_pct", "leak on object %", False, "{:.2f}"),
)
GROW_PX = 5


def prepare(clips: Path, name: str, out: Path) -> tuple[Path, Path, list[np.ndarray]]:
    """The plate as the clip stores it (`frames/#####.jpg`, read in place), the ROI matte and
    the object masks."""
    import cv2

    spec = CLIPS[name]
    masks = sorted((clips / name / "masks").glob("*.png"))
    (out / name).mkdir(parents=True, exist_ok=True)
    obj = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127 for p in masks]
    h, w = obj[0].shape
    roi = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = spec["box"]
    roi[y0:y1, x0:x1] = 1.0
    if (obj[spec["ref"]] & (roi > 0)).any():
        raise SystemExit(f"{name}: the ROI box is not background at the reference frame")
    roi_path = out / name / "roi.exr"
    io.write_exr(roi_path, {"A": roi}, attributes={"rna/frame": spec["ref"]})
    return (clips / name / "frames" / "#####.jpg").resolve(), roi_path, obj


def score_clip(
    name: str, plate: Path, root: Path, roi: np.ndarray, obj: list[np.ndarray], out: Path
) -> list[dict[str, Any]]:
    """Per-frame rows of one built clip (and the worst frame's contact sheet)."""
    from rna_engine.apply import ApplySettings, apply_sequence

    paths = BuildPaths(root)
    numbers = sorted(io.find_frames(paths.passes_pattern))
    atlas = io.read_image(paths.atlas_exr).select(("R", "G", "B", "A"))
    h, w = roi.shape
    edit = paint_pattern(w, h, roi)
    edit[..., 3] *= roi
    io.write_rgba_exr(out / name / "painted.exr", m.paint_over(atlas, edit), pixel_type="float")
    comps = {}
    for label, atlas_path in (("painted", out / name / "painted.exr"), ("plain", paths.atlas_exr)):
        comps[label] = apply_sequence(
            root,
            atlas_path,
            plate,
            out / name / f"comp_{label}" / "comp.#####.exr",
            ApplySettings(filter="linear"),
            frames=numbers,
        )
    qc = json.loads((paths.qc_dir / "report.json").read_text())
    out_of_view = {f["frame"] for f in qc["frames"] if f.get("roi_pixels") == 0}
    rows: list[dict[str, Any]] = []
    paints: list[tuple[np.ndarray, np.ndarray]] = []
    for k, number in enumerate(numbers):
        passes = io.read_image(paths.pass_path(number))
        uv = passes.select(("rna_uv.u", "rna_uv.v"))
        matte = np.nan_to_num(passes.channel("rna_matte.m"), nan=0.0)
        refined = np.nan_to_num(passes.channel("rna_mask.m"), nan=0.0)
        shade = passes.select(("rna_shade.red", "rna_shade.green", "rna_shade.blue"))
        image = io.read_image(io.frame_path(plate, number))
        plate_rgb = image.select(io.rgb_channel_names(image.channels))
        tracked = m.tracked_region(roi, uv) & (number not in out_of_view)
        outside = tracked & ~m.grow(obj[number], GROW_PX)
        inside = tracked & m.grow(obj[number], -GROW_PX)
        recon = sample_stmap(atlas[..., :3], uv, "linear") * shade
        painted = io.read_image(comps["painted"][k]).pixels[..., :3]
        plain = io.read_image(comps["plain"][k]).pixels[..., :3]
        paint = m.paint_amount(painted, plain)
        paints.append((paint, m.grow(obj[number], -GROW_PX)))
        cover = m.share(matte > 0.5, outside)
        hidden = m.share(matte < 0.5, inside)
        hidden_m = m.share(refined < 0.5, inside)
        rows.append(
            {
                "frame": number,
                "index": number,
                "distance": number - CLIPS[name]["ref"],
                "tracked_px": int(tracked.sum()),
                "object_in_roi_px": int(inside.sum()),
                "visible_coverage_pct": None if cover is None else 100 * cover,
                "occluded_hidden_pct": None if hidden is None else 100 * hidden,
                "occluded_hidden_m_pct": None if hidden_m is None else 100 * hidden_m,
                "atlas_psnr": m.region_psnr(
                    linear_to_srgb(np.clip(recon, 0, 1)), plate_rgb, outside
                ),
            }
        )
    ref = next((k for k, row in enumerate(rows) if row["distance"] == 0), None)
    full = 0.0 if ref is None else float(paints[ref][0].sum()) / max(rows[ref]["tracked_px"], 1)
    for row, (paint, on_object) in zip(rows, paints, strict=True):
        leak = m.paint_share(paint, on_object, at_least=full * row["tracked_px"])
        row["leak_pct"] = None if leak is None else 100 * leak
    for key, suffix in (("visible_coverage_pct", "worst"), ("occluded_hidden_pct", "worst_hidden")):
        worst = m.worst_first(rows, key, True)[0]
        if worst[key] is None:
            continue  # e.g. the object never enters the tracked ROI
        k = numbers.index(worst["frame"])
        sheet = out / f"{name}_{suffix}.png"
        contact_sheet(name, worst, plate, paths, comps["painted"][k], roi, obj, sheet)
    return rows


def occluder_check(
    plate_rgb: np.ndarray, matte: np.ndarray, tracked: np.ndarray, obj: np.ndarray
) -> np.ndarray:
    """(H, W, 3) the plate with the object's outline (yellow) and its tracked-ROI pixels
    (object eroded `GROW_PX`) that the matte hides (green) or not (red)."""
    import cv2

    inside = tracked & m.grow(obj, -GROW_PX)
    tile = plate_rgb.copy()
    shown = inside & (matte >= 0.5)
    tile[inside & ~shown] = 0.5 * tile[inside & ~shown] + 0.5 * np.array([0.0, 1.0, 0.0])
    tile[shown] = (1.0, 0.0, 0.0)
    contours, _ = cv2.findContours(obj.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    edge = np.zeros(obj.shape, np.uint8)
    cv2.drawContours(edge, contours, -1, 1, 1)
    tile[edge > 0] = (1.0, 1.0, 0.0)
    return tile


def contact_sheet(
    name: str,
    row: dict[str, Any],
    plate: Path,
    paths: BuildPaths,
    comp: Path,
    roi: np.ndarray,
    obj: list[np.ndarray],
    target: Path,
) -> None:
    """Plate | matte | paint comp | occluder check of one frame side by side, labelled."""
    import cv2

    number = row["frame"]
    image = io.read_image(io.frame_path(plate, number))
    plate_rgb = np.clip(image.select(io.rgb_channel_names(image.channels)), 0, 1)
    passes = io.read_image(paths.pass_path(number))
    matte = np.nan_to_num(passes.channel("rna_matte.m"), nan=0.0)
    tracked = m.tracked_region(roi, passes.select(("rna_uv.u", "rna_uv.v")))
    comp_rgb = np.clip(io.read_image(comp).pixels[..., :3], 0, 1)
    tiles = []
    cover, hidden = row["visible_coverage_pct"], row["occluded_hidden_pct"]
    labels = (
        f"{name} frame {number} (ref {number - row['distance']})",
        "matte cover " + ("-" if cover is None else f"{cover:.1f}%"),
        "paint comp",
        "object hidden " + ("-" if hidden is None else f"{hidden:.1f}%") + " (red: not)",
    )
    check = occluder_check(plate_rgb, matte, tracked, obj[number])
    for tile, label in zip(
        (plate_rgb, np.repeat(np.clip(matte, 0, 1)[..., None], 3, -1), comp_rgb, check),
        labels,
        strict=True,
    ):
        bgr = np.ascontiguousarray((tile[..., ::-1] * 255).round().astype(np.uint8))
        cv2.putText(bgr, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3)
        cv2.putText(bgr, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1)
        tiles.append(bgr)
    ok, data = cv2.imencode(".png", np.concatenate(tiles, 1))
    if not ok:
        raise SystemExit(f"{target}: PNG encoding failed")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data.tobytes())


def table(name: str, rows: list[dict[str, Any]], limit: int) -> str:
    ordered = m.worst_first(rows, "visible_coverage_pct", True)
    ordered = ordered[:limit] if limit else ordered
    head = "| frame | d ref | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [f"{name}: worst frames first by visible coverage", "", head]
    lines.append("|---" * (2 + len(COLUMNS)) + "|")
    for r in ordered:
        cells = ["–" if r[k] is None else fmt.format(r[k]) for k, _, _, fmt in COLUMNS]
        lines.append(f"| {r['frame']} | {r['distance']:+d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record_clip(
    name: str, rows: list[dict[str, Any]], entry: dict[str, Any], meta: dict[str, Any], folder: Path
) -> Path:
    """Replace the clip's status record with this run's headline figures (`results.py`)."""
    metrics = entry["metrics"]
    report_path = BuildPaths(Path(entry["cache"])).qc_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    cover = [r["visible_coverage_pct"] for r in rows if r["visible_coverage_pct"] is not None]
    notes = []
    for key, what in (
        ("visible_coverage_pct", "visible coverage worst"),
        ("occluded_hidden_pct", "occluded hidden lowest"),
    ):
        worst = m.worst_first(rows, key, True)[:1]
        if worst and worst[0][key] is not None:
            notes.append(f"{what} at frame {worst[0]['frame']} ({worst[0]['distance']:+d})")
    figures = {
        "build_s": entry["build_s"],
        "peak_allocated_mib": report.get("peak_gpu_memory_mib"),
        "in_view_frames": sum(1 for r in rows if r["tracked_px"] > 0),
        "visible_coverage_worst_pct": metrics["visible_coverage_pct"]["worst"],
        "visible_coverage_median_pct": metrics["visible_coverage_pct"]["median"],
        "frames_under_95": sum(1 for c in cover if c < 95),
        "occluded_hidden_min_pct": metrics["occluded_hidden_pct"]["worst"],
        "atlas_psnr_worst_db": metrics["atlas_psnr"]["worst"],
        "atlas_psnr_median_db": metrics["atlas_psnr"]["median"],
        "leak_max_pct": metrics["leak_pct"]["worst"],
    }
    return write_build_result("clip", name, figures, meta, report, notes, folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=str(ROOT.parent / "shared" / "data" / "clips"))
    parser.add_argument("--clip", action="append", default=[], help="clip name(s); default all")
    parser.add_argument("--quick", action="store_true", help="one clip, 5 frames, tiny settings")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="standard", choices=("draft", "standard", "final"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--frames", default="", help="frame range a-b (default: all)")
    parser.add_argument("--rows", type=int, default=12, help="frames per table (0 = all)")
    parser.add_argument("--out", default="bench_clips_out")
    parser.add_argument("--results", default="", help="folder of the status records")
    args = parser.parse_args()
    clips = Path(args.clips)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.clip or ([next(iter(CLIPS))] if args.quick else list(CLIPS))
    names = [n for n in names if (clips / n / "frames").is_dir()]
    if not names:
        raise SystemExit(f"{clips}: no clips found")
    sets = [*(QUICK_SET if args.quick else ()), *args.set]
    quality = "draft" if args.quick and args.preset == "standard" else args.preset
    records = target_dir(args.results, args.quick)
    per_frame: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "meta": {
            "commit": commit(),
            "command": " ".join(["python benchmarks/bench_clips.py", *sys.argv[1:]]),
            "device": args.device,
            "preset": quality,
            "set": sets,
        },
        "clips": {},
    }
    for name in names:
        spec = CLIPS[name]
        frames = args.frames or (f"{spec['ref'] - 2}-{spec['ref'] + 2}" if args.quick else "")
        plate, roi_path, obj = prepare(clips, name, out)
        cmd = [
            sys.executable,
            "-m",
            "rna_engine",
            "build",
            "--plate",
            str(plate),
            "--roi",
            str(roi_path),
            "--ref",
            str(spec["ref"]),
            "--out",
            str(out / "cache"),
            "--name",
            name,
            "--preset",
            quality,
            "--device",
            args.device,
            *(["--frames", frames] if frames else []),
            *[arg for item in sets for arg in ("--set", item)],
        ]
        root, build_s = run_build(cmd, out / f"build_{name}.log")
        roi = io.read_image(roi_path).channel("A")
        rows = score_clip(name, plate, root, roi, obj, out)
        per_frame[name] = rows
        summary["clips"][name] = {
            **spec,
            "cache": str(root),
            "build_s": round(build_s, 1),
            "metrics": {
                key: {
                    **m.summarise(rows, key, hib),
                    "by_distance": m.by_distance(rows, key, spec["ref"], len(obj)),
                }
                for key, _, hib, _ in COLUMNS
            },
        }
        write_json_atomic(out / "clips_per_frame.json", per_frame)
        write_json_atomic(out / "clips_summary.json", summary)
        print(table(name, rows, args.rows), "\n", flush=True)
        if records is not None:
            record_clip(name, rows, summary["clips"][name], summary["meta"], records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
