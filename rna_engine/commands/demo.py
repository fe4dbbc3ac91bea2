"""`rna-engine demo [--out DIR]`: the whole round trip on a built-in synthetic shot.

synth → build → paint a test pattern on the atlas → apply → EXR comp sequence, a PNG strip and
the QC contact sheet; prints where everything is and how long each stage took. Uses the GPU when
there is one; on a CPU the shot and the schedule are small enough to finish in a few minutes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

NAME = "demo"
HELP = "synthetic shot → build → paint → apply, with previews (the README's `make demo`)"
log = logging.getLogger(__name__)

CPU_OVERRIDES: dict[str, Any] = {
    "ingest": {"working_long_side": 160},
    "fit": {
        "pretrain_steps": 150,
        "iterations": 600,
        "batch_size": 2048,
        "log_every": 50,
        "scale_with_shot": False,
        "bootstrap_fraction": 0.4,
        "mapping_width": 128,
        "hash_grid": {
            "n_levels": 12,
            "log2_hashmap_size": 14,
            "base_resolution": 8,
            "per_level_scale": 1.35,
        },
    },
    "refine": {"iterations": 200},
}
"""A draft small enough for a 2-core CPU (the GPU runs the plain `draft` preset)."""


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument(
        "--preset", default="small", choices=("tiny", "small", "bench"), help="synthetic shot size"
    )


def paint_atlas(atlas_path: Path, out: Path, roi_like: Any) -> Path:
    """Paint the built-in test pattern over the atlas (linear, RGBA) and save it losslessly."""
    import numpy as np

    from rna_engine.io import read_image, write_rgba_exr
    from rna_engine.synth import paint_pattern

    atlas = read_image(atlas_path)
    rgba = atlas.select(("R", "G", "B", "A"))
    edit = paint_pattern(atlas.width, atlas.height, rgba[..., 3] if roi_like is None else roi_like)
    a = edit[..., 3:4] * (rgba[..., 3:4] > 0.5)
    painted = rgba.copy()
    painted[..., :3] = rgba[..., :3] * (1 - a) + edit[..., :3] * a
    write_rgba_exr(out, painted.astype(np.float32), compression="zip")
    return out


def strip(plate_paths: list[Path], comp_paths: list[Path], out: Path) -> Path:
    """A PNG strip: plate frames on top, comp frames below (sRGB preview)."""
    import numpy as np

    from rna_engine.colour import preview_srgb
    from rna_engine.io import read_image, write_png

    picks = sorted({0, len(plate_paths) // 3, 2 * len(plate_paths) // 3, len(plate_paths) - 1})
    top = [read_image(plate_paths[i]).pixels[..., :3] for i in picks]
    bottom = [read_image(comp_paths[i]).pixels[..., :3] for i in picks]
    image = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    return write_png(out, preview_srgb(image))


def run(args: argparse.Namespace) -> int:
    import torch

    from rna_engine.apply import ApplySettings, apply_sequence
    from rna_engine.context import RunContext, resolve_device
    from rna_engine.io import frame_path
    from rna_engine.pipeline import run_build
    from rna_engine.progress import TerminalBar
    from rna_engine.settings import spec_from_dict
    from rna_engine.synth import make_shot, write_shot

    out = Path(args.out)
    device = resolve_device(args.device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    shot = make_shot(args.preset, seed=0)
    manifest = write_shot(shot, out / "shot", truth=False, srgb=False)
    timings["synth"] = time.perf_counter() - t0
    settings: dict[str, Any] = {"preset": "draft"}
    if not device.startswith("cuda"):
        settings.update(CPU_OVERRIDES)
        torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = spec_from_dict(
        {
            "plate": str(out / "shot" / manifest["plate"]),
            "roi": str(out / "shot" / "roi.exr"),
            "reference_frame": manifest["reference_frame"],
            "out": str(out / "cache"),
            "name": "demo",
            "device": device,
            "settings": settings,
        }
    )
    t1 = time.perf_counter()
    paths = run_build(spec, RunContext(seed=0), sinks=[TerminalBar()])
    timings["build"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    painted = paint_atlas(paths.atlas_exr, out / "painted_atlas.exr", shot.roi)
    timings["paint"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    comp_pattern = out / "comp" / "comp.####.exr"
    comps = apply_sequence(
        paths.root, painted, out / "shot" / manifest["plate"], comp_pattern, ApplySettings()
    )
    timings["apply"] = time.perf_counter() - t3
    plates = [frame_path(out / "shot" / manifest["plate"], n) for n in shot.frame_numbers]
    preview = strip(plates, comps, out / "preview_strip.png")
    timings["total"] = time.perf_counter() - t0
    w = sys.stdout.write
    w(f"\nRNA demo on {device}: {shot.params.width}x{shot.params.height}x{shot.n_frames}\n")
    w(f"  plate           {out / 'shot' / manifest['plate']}\n")
    w(f"  cache           {paths.root}\n")
    w(f"  painted atlas   {painted}\n")
    w(f"  comp            {comp_pattern} ({len(comps)} frames)\n")
    w(f"  preview strip   {preview}\n")
    w(f"  contact sheet   {paths.qc_dir / 'contact.png'}\n")
    w(f"  QC report       {paths.qc_dir / 'report.json'}\n")
    w("  timings         " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + "\n")
    return 0
