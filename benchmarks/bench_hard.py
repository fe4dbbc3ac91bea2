"""Per-frame quality on hard synthetic camera work, worst frame first (issue #15).

    python benchmarks/bench_hard.py --device cuda:0 --out results/hard
    python benchmarks/bench_hard.py --quick --device cpu --out /tmp/hard   # CPU smoke run

For each shot (`pan`, `zoomrot`, `parallax`, `exit`, `bench`; `rest` and the occluder scenes
`fast`, `enter`, `beside`, `slow`, `mimic`, `blur` (and their `-small`) when `--shots` names them;
`--quick`: their `-tiny` variants and tiny build settings) it writes the shot, builds it
through the user's entry point (`python -m rna_engine build` in a subprocess) and scores every
frame against the exact truth (`rna_engine.media.metrics`), at plate resolution:

- `uv_med_px`, `uv_p90_px`: UV error (`rna_uv.u/v` converted to reference pixels vs
  `true_ref_xy`) over the truly visible ROI (ROI membership > 0.5, occlusion < 0.5);
- `edit_psnr`: the paint pattern comped with `rna_engine.apply` (bilinear) against the exact
  `render_edit`, in the working log encoding, over the tracked ROI;
- `leak_pct`: share of the comp's paint on pixels outside the true visible ROI (matte < 0.05);
- `coverage_pct`: share of the true visible ROI with `rna_matte.m` > 0.5;
- `spread_pct`: `rna_matte.m` > 0.5 on unoccluded surface outside the ROI, in % of the
  reference frame's ROI area;
- `occluder_shown_pct`: share of the occluded ROI with `rna_matte.m` > 0.5;
- `nonfinite_matte_px`, `nonfinite_comp_px`: NaN/inf pixels (scored as matte 0, black comp).

Prints a table per shot sorted worst frame first (by `--sort`, default UV p90), and writes
`<out>/per_frame.json` and `<out>/summary.json` (pooled UV quantiles over all frames, pooled
edit PSNR, worst/p10/median/mean per metric, medians by distance to the reference). Each
shot's headline figures replace its status record `hard-<shot>.json` (`results.py`) in
`--results DIR`, else `$RNA_BENCH_RESULTS`, else `benchmarks/results/` (`--quick`: only in a
named folder); `python benchmarks/status.py` puts them in BENCHMARKS.md.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta import commit  # noqa: E402
from results import target_dir, write_build_result  # noqa: E402

from rna_engine.media import io  # noqa: E402
from rna_engine.media import metrics as m  # noqa: E402
from rna_engine.media.cache import BuildPaths, write_json_atomic  # noqa: E402
from rna_engine.media.colour import working_space  # noqa: E402
from rna_engine.synthetic.shots import SynthShot, make_shot, paint_pattern, write_shot  # noqa: E402

SHOTS = ("pan", "zoomrot", "parallax", "exit", "bench")
QUICK_SET = (
    # The fit must not scale its 300 steps down with the frame count (8 of 70 frames).
    "fit.scale_with_shot=false",
    "fit.pretrain_steps=100",
    "fit.iterations=300",
    "fit.batch_size=1536",
    "fit.checkpoint_every=1000",
    "fit.mapping_width=64",
    "fit.hash_grid.n_levels=8",
    "fit.hash_grid.log2_hashmap_size=12",
    "refine.iterations=100",
    "ingest.working_long_side=96",
)
# (key, label, higher is better, format)
COLUMNS = (
    ("uv_med_px", "UV med px", False, "{:.2f}"),
    ("uv_p90_px", "UV p90 px", False, "{:.2f}"),
    ("edit_psnr", "edit dB", True, "{:.2f}"),
    ("leak_pct", "leak %", False, "{:.2f}"),
    ("coverage_pct", "cover %", True, "{:.1f}"),
    ("spread_pct", "spread %", False, "{:.2f}"),
    ("occluder_shown_pct", "occ shown %", False, "{:.1f}"),
)
HIGHER_IS_BETTER = {key: hib for key, _, hib, _ in COLUMNS}


def shot_name(name: str, quick: bool) -> str:
    """The preset to write: the tiny variant under `--quick`."""
    if not quick:
        return name
    return "tiny" if name == "bench" else f"{name}-tiny"


def write_shot_once(shot: SynthShot, shot_dir: Path) -> float:
    """Write the shot unless the same one is already there; seconds spent."""
    import dataclasses

    manifest = shot_dir / "shot.json"
    if manifest.exists():
        params = json.loads(manifest.read_text()).get("params")
        if params == json.loads(json.dumps(dataclasses.asdict(shot.params))):
            return 0.0
    t0 = time.perf_counter()
    write_shot(shot, shot_dir, truth=False, srgb=False, workers=min(os.cpu_count() or 1, 8))
    return time.perf_counter() - t0


def build(
    shot: SynthShot,
    shot_dir: Path,
    out: Path,
    name: str,
    device: str,
    quality: str,
    sets: list[str],
    frames: str,
) -> tuple[Path, float]:
    """`python -m rna_engine build` in a subprocess; the cache version folder and seconds."""
    cmd = [
        sys.executable,
        "-m",
        "rna_engine",
        "build",
        "--plate",
        str(shot_dir / "plate" / "plate.####.exr"),
        "--roi",
        str(shot_dir / "roi.exr"),
        "--ref",
        str(shot.reference_frame),
        "--out",
        str(out / "cache"),
        "--name",
        name,
        "--preset",
        quality,
        "--device",
        device,
        *(["--frames", frames] if frames else []),
        *[arg for item in sets for arg in ("--set", item)],
    ]
    return run_build(cmd, out / f"build_{name}.log")


def run_build(cmd: list[str], log_path: Path) -> tuple[Path, float]:
    """Run a build command; the cache version folder it printed, and its wall time."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - t0
    log_path.write_text(" ".join(cmd) + "\n" + done.stderr + done.stdout)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"build failed ({done.returncode}), see {log_path}: {tail[0]}")
    return Path(done.stdout.strip().splitlines()[-1]), wall_s


def score_shot(
    shot: SynthShot, shot_dir: Path, root: Path, out: Path, name: str, frame_numbers: list[int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-frame rows and the pooled numbers of one built shot."""
    from rna_engine.apply import ApplySettings, apply_sequence

    p = shot.params
    paths = BuildPaths(root)
    atlas = io.read_image(paths.atlas_exr).select(("R", "G", "B", "A"))
    edit = paint_pattern(p.width, p.height, shot.roi)
    edit[..., 3] *= shot.roi
    painted = m.paint_over(atlas, edit)
    io.write_rgba_exr(out / f"painted_{name}.exr", painted, pixel_type="float")
    comps = apply_sequence(
        root,
        out / f"painted_{name}.exr",
        shot_dir / "plate" / "plate.####.exr",
        out / f"comp_{name}" / "comp.####.exr",
        ApplySettings(filter="linear"),
        frames=frame_numbers,
    )
    space = working_space("scene_linear")
    ref_area = float(shot.roi.sum())
    rows: list[dict[str, Any]] = []
    uv_all: list[np.ndarray] = []
    err_sum, err_n = 0.0, 0
    for number, comp_path in zip(frame_numbers, comps, strict=True):
        t = number - p.first_frame
        f = shot.frame(t)
        passes = io.read_image(paths.pass_path(number))
        uv = passes.select(("rna_uv.u", "rna_uv.v"))
        matte = passes.channel("rna_matte.m")
        # A non-finite matte or comp pixel is a failure, scored as no matte and black paint.
        nonfinite_matte = int((~np.isfinite(matte)).sum())
        matte = np.nan_to_num(matte, nan=0.0, posinf=0.0, neginf=0.0)
        tracked = f["roi_tracked"] > 0.5
        occluded = f["occlusion"] >= 0.5
        visible = tracked & ~occluded
        err = m.uv_error_px(uv, f["true_ref_xy"], visible)
        uv_all.append(err.astype(np.float32))
        med, p90 = m.quantiles(err)
        comp = io.read_image(comp_path).pixels[..., :3]
        nonfinite_comp = int((~np.isfinite(comp).all(-1)).sum())
        comp = np.nan_to_num(comp, nan=0.0, posinf=0.0, neginf=0.0)
        expected = shot.render_edit(edit, t)
        e, n = m.encoded_error(comp, expected, tracked, space.encode)
        err_sum, err_n = err_sum + e, err_n + n
        true_matte = f["roi_tracked"] * (1 - f["occlusion"])
        # Against the plate the comp was made from (the EXR on disk: half floats), not the
        # float plate in memory, whose rounding difference would count as paint everywhere.
        plate = io.read_image(shot_dir / "plate" / f"plate.{number:04d}.exr").pixels[..., :3]
        leak = m.paint_share(m.paint_amount(comp, plate), true_matte < 0.05)
        cover = m.share(matte > 0.5, visible)
        outside = (f["roi_tracked"] < 0.5) & ~occluded
        shown = m.share(matte > 0.5, tracked & occluded)
        rows.append(
            {
                "frame": number,
                "index": t,
                "distance": t - shot.reference_index,
                "visible_roi_px": int(visible.sum()),
                "uv_med_px": med,
                "uv_p90_px": p90,
                "edit_psnr": m.psnr(e / n) if n else None,
                "leak_pct": None if leak is None else 100 * leak,
                "coverage_pct": None if cover is None else 100 * cover,
                "spread_pct": 100 * float(((matte > 0.5) & outside).sum()) / max(ref_area, 1),
                "occluder_shown_pct": None if shown is None else 100 * shown,
                "nonfinite_matte_px": nonfinite_matte,
                "nonfinite_comp_px": nonfinite_comp,
            }
        )
    pooled = np.concatenate(uv_all) if uv_all else np.zeros(0)
    med, p90 = m.quantiles(pooled)
    return rows, {
        "uv_pooled_median_px": med,
        "uv_pooled_p90_px": p90,
        "edit_psnr_pooled": m.psnr(err_sum / err_n) if err_n else None,
    }


def summary_of(rows: list[dict[str, Any]], shot: SynthShot) -> dict[str, Any]:
    """Worst/p10/median/mean per metric and medians by distance to the reference."""
    return {
        key: {
            **m.summarise(rows, key, hib),
            "by_distance": m.by_distance(rows, key, shot.reference_index, shot.n_frames),
        }
        for key, _, hib, _ in COLUMNS
    }


def table(name: str, rows: list[dict[str, Any]], sort: str, limit: int) -> str:
    """Markdown table of the worst `limit` frames (all when 0) by `sort`."""
    ordered = m.worst_first(rows, sort, HIGHER_IS_BETTER[sort])
    if limit:
        ordered = ordered[:limit]
    head = "| frame | d ref | vis px | " + " | ".join(c[1] for c in COLUMNS) + " | NaN px |"
    lines = [f"{name}: worst frames first by {sort}", "", head, "|---" * (4 + len(COLUMNS)) + "|"]
    for r in ordered:
        cells = ["–" if r[k] is None else fmt.format(r[k]) for k, _, _, fmt in COLUMNS]
        lines.append(
            f"| {r['frame']} | {r['distance']:+d} | {r['visible_roi_px']} | "
            + " | ".join(cells)
            + f" | {r['nonfinite_matte_px'] + r['nonfinite_comp_px']} |"
        )
    return "\n".join(lines)


def record_shot(
    name: str, rows: list[dict[str, Any]], entry: dict[str, Any], meta: dict[str, Any], folder: Path
) -> Path:
    """Replace the shot's status record with this run's headline figures (`results.py`)."""
    metrics = entry["metrics"]
    report_path = BuildPaths(Path(entry["cache"])).qc_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    notes = [entry["shot"]]
    for key, what in (("uv_p90_px", "UV p90 worst"), ("edit_psnr", "edit PSNR worst")):
        worst = m.worst_first(rows, key, HIGHER_IS_BETTER[key])[:1]
        if worst and worst[0][key] is not None:
            notes.append(f"{what} at frame {worst[0]['frame']} ({worst[0]['distance']:+d})")
    if entry["frames_with_nonfinite"]:
        notes.append(f"{entry['frames_with_nonfinite']} frames with NaN/inf pixels")
    figures = {
        "build_s": entry["build_s"],
        "peak_allocated_mib": report.get("peak_gpu_memory_mib"),
        "visible_coverage_worst_pct": metrics["coverage_pct"]["worst"],
        "visible_coverage_median_pct": metrics["coverage_pct"]["median"],
        "occluder_shown_max_pct": metrics["occluder_shown_pct"]["worst"],
        "edit_psnr_worst_db": metrics["edit_psnr"]["worst"],
        "edit_psnr_median_db": metrics["edit_psnr"]["median"],
        "edit_psnr_pooled_db": entry["edit_psnr_pooled"],
        "uv_p90_worst_px": metrics["uv_p90_px"]["worst"],
        "uv_p90_median_px": metrics["uv_p90_px"]["median"],
        "leak_max_pct": metrics["leak_pct"]["worst"],
        "leak_median_pct": metrics["leak_pct"]["median"],
    }
    return write_build_result("hard", name, figures, meta, report, notes, folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", default=",".join(SHOTS), help="comma-separated shot names")
    parser.add_argument("--quick", action="store_true", help="tiny shots and tiny build settings")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="standard", choices=("draft", "standard", "final"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--frames", default="", help="build only this frame range (a-b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sort", default="uv_p90_px", choices=[c[0] for c in COLUMNS])
    parser.add_argument("--rows", type=int, default=12, help="frames per table (0 = all)")
    parser.add_argument("--out", default="bench_hard_out")
    parser.add_argument("--results", default="", help="folder of the status records")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sets = [*(QUICK_SET if args.quick else ()), *args.set]
    quality = "draft" if args.quick and args.preset == "standard" else args.preset
    records = target_dir(args.results, args.quick)
    per_frame: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "meta": {
            "commit": commit(),
            "command": " ".join(["python benchmarks/bench_hard.py", *sys.argv[1:]]),
            "device": args.device,
            "preset": quality,
            "set": sets,
        },
        "shots": {},
    }
    for base in [s.strip() for s in args.shots.split(",") if s.strip()]:
        name = shot_name(base, args.quick)
        shot = make_shot(name, seed=args.seed)
        p = shot.params
        shot_dir = out / f"shot_{name}"
        synth_s = write_shot_once(shot, shot_dir)
        root, build_s = build(shot, shot_dir, out, name, args.device, quality, sets, args.frames)
        numbers = sorted(io.find_frames(BuildPaths(root).passes_pattern))
        rows, pooled = score_shot(shot, shot_dir, root, out, name, numbers)
        per_frame[name] = rows
        summary["shots"][name] = {
            "shot": f"{p.width}x{p.height}x{p.frames}",
            "reference_frame": shot.reference_frame,
            "cache": str(root),
            "synth_s": round(synth_s, 1),
            "build_s": round(build_s, 1),
            **pooled,
            "frames_with_nonfinite": sum(
                1 for r in rows if r["nonfinite_matte_px"] or r["nonfinite_comp_px"]
            ),
            "metrics": summary_of(rows, shot),
        }
        write_json_atomic(out / "per_frame.json", per_frame)
        write_json_atomic(out / "summary.json", summary)
        print(table(name, rows, args.sort, args.rows), flush=True)
        print(
            f"{name}: pooled UV median {_fmt(pooled['uv_pooled_median_px'])} px, "
            f"p90 {_fmt(pooled['uv_pooled_p90_px'])} px, "
            f"edit PSNR {_fmt(pooled['edit_psnr_pooled'])} dB; build {build_s:.1f} s\n",
            flush=True,
        )
        if records is not None:
            record_shot(name, rows, summary["shots"][name], summary["meta"], records)
    return 0


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
