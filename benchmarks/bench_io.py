"""Plate I/O: does OpenImageIO overlap in threads, and ingest/bake wall time by worker count.

    python benchmarks/bench_io.py --gil
    python benchmarks/bench_io.py --frames 12 --workers 1,2 --device cpu --out /tmp/bench_io

`--gil`: ms per 1080p 7-channel pass file written and read by 1, 2 and 4 Python threads, with
OpenImageIO's own threads set to 1 (a binding that holds the GIL gains nothing from threads).

Otherwise: writes a synthetic 1920×1080 shot and fits it once with a short `draft` fit (saved as
`<out>/fit.pt`; neither is measured), then per worker count times `ingest()` and `bake()` called
directly (no closed-form matte refinement: on a CPU it would be nearly all of the bake) and
checks that every pass file's pixels equal the first run's bit for bit. A checkout without
`RunContext.io_workers` (before the I/O pools) runs with `--workers 1`. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine import pipeline  # noqa: E402
from rna_engine.media import io  # noqa: E402
from rna_engine.media.cache import BuildPaths  # noqa: E402
from rna_engine.runtime.context import RunContext  # noqa: E402
from rna_engine.settings import BuildSpec, spec_from_dict  # noqa: E402
from rna_engine.stages.bake import PlateFormat, bake  # noqa: E402
from rna_engine.stages.correspondences import compute_correspondences  # noqa: E402
from rna_engine.stages.fit import Fitter, ShotTensors  # noqa: E402
from rna_engine.stages.inputs import resolve_inputs  # noqa: E402
from rna_engine.synthetic.shots import make_shot, write_shot  # noqa: E402

SHORT_FIT = {
    "ingest": {"working_long_side": 128},
    "fit": {
        "pretrain_steps": 50,
        "iterations": 200,
        "batch_size": 2048,
        "scale_with_shot": False,
        "checkpoint_every": 1000,
        "log_every": 50,
    },
    "refine": {"iterations": 50},
    "matte": {"closed_form_iterations": 0},
}


def gil_probe(frames: int = 8) -> None:
    """ms per file for 1, 2, 4 threads writing then reading 1080p pass-like EXRs."""
    from concurrent.futures import ThreadPoolExecutor

    import OpenImageIO as oiio

    oiio.attribute("threads", 1)
    oiio.attribute("exr_threads", 1)
    rng = np.random.default_rng(0)
    channels = {f"c{i}": rng.random((1080, 1920), dtype=np.float32) for i in range(7)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"f.{i:04d}.exr" for i in range(frames)]

        def write(path: Path) -> None:
            io.write_exr(path, channels, pixel_types={"c0": "float", "c1": "float"})

        for name, fn in (("write", write), ("read", io.read_image)):
            for threads in (1, 2, 4):
                t0 = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(fn, paths))
                ms = (time.perf_counter() - t0) / frames * 1000
                print(f"{name:5s} {threads} threads: {ms:5.0f} ms/file")


def _context(workers: int, device: str) -> RunContext:
    ctx = RunContext(device=device, seed=0)
    if any(f.name == "io_workers" for f in dataclasses.fields(ctx)):
        return dataclasses.replace(ctx, io_workers=workers)
    if workers != 1:
        raise SystemExit("this checkout has no RunContext.io_workers: run it with --workers 1")
    return ctx


def _fit(spec: BuildSpec, data: pipeline.Ingested, path: Path, device: str) -> Any:
    if path.exists():
        return torch.load(path, weights_only=False, map_location=device)
    ctx = RunContext(device=device, seed=0)
    frames = torch.from_numpy(data.working).permute(0, 3, 1, 2).contiguous().to(device)
    roi = torch.from_numpy(data.roi_working).to(device)
    corr = compute_correspondences(frames, roi, data.reference_index, spec.settings.flow, ctx)
    shot = ShotTensors(frames, roi, data.reference_index, corr)
    result = Fitter(shot, spec.settings.fit, spec.settings.refine, ctx).run()
    torch.save(result, path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--workers", default="1,8", help="comma-separated worker counts")
    parser.add_argument("--ingest-repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_io_out"))
    parser.add_argument("--gil", action="store_true", help="only the threaded OIIO probe")
    args = parser.parse_args(argv)
    if args.gil:
        gil_probe()
        return 0
    shot = make_shot("hd", seed=0, frames=args.frames)
    shot_dir = args.out / "shot"
    if not (shot_dir / "shot.json").exists():
        write_shot(shot, shot_dir, truth=False, srgb=False, workers=os.cpu_count() or 1)
    spec = spec_from_dict(
        {
            "plate": str(shot_dir / "plate" / "plate.####.exr"),
            "roi": str(shot_dir / "roi.exr"),
            "reference_frame": shot.reference_frame,
            "device": args.device,
            "settings": {"preset": "draft", **SHORT_FIT},
        }
    )
    inputs = resolve_inputs(spec)
    data = pipeline.ingest(inputs, spec.settings.ingest, RunContext(device=args.device))
    result = _fit(spec, data, args.out / "fit.pt", args.device)
    fmt = PlateFormat(data.plate_width, data.plate_height, data.working_width, data.working_height)

    def read_plate(number: int) -> np.ndarray:
        return pipeline._plate_rgb(inputs.plate[number])[0]

    rows: list[dict[str, Any]] = []
    first: dict[str, bytes] | None = None
    for workers in (int(w) for w in args.workers.split(",")):
        ctx = _context(workers, args.device)
        ingest_s = []
        for _ in range(args.ingest_repeats):
            t0 = time.perf_counter()
            pipeline.ingest(inputs, spec.settings.ingest, ctx)
            ingest_s.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            paths = BuildPaths(Path(tmp))
            t0 = time.perf_counter()
            bake(
                result,
                data.frame_numbers,
                read_plate,
                None,
                data.roi_plate,
                fmt,
                data.space,
                spec.settings.bake,
                spec.settings.matte,
                paths,
                {"rna/build_hash": "bench"},
                ctx,
            )
            bake_s = time.perf_counter() - t0
            passes = {
                p.name: io.read_image(p).pixels.tobytes() for p in paths.passes_dir.glob("*.exr")
            }
        first = first or passes
        rows.append(
            {
                "workers": workers,
                "ingest_s_median": round(statistics.median(ingest_s), 3),
                "bake_s": round(bake_s, 2),
                "identical_to_first": passes == first,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    p = shot.params
    print(f"\n{p.width}x{p.height}x{p.frames}, device {args.device}, {os.cpu_count()} CPUs")
    print("| workers | ingest s (median) | bake s | passes identical |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['ingest_s_median']} | {r['bake_s']} "
            f"| {r['identical_to_first']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
