"""`rna-engine demo [--out DIR]`: the whole round trip on a built-in synthetic shot.

synth → build → paint a test pattern on the atlas → apply → EXR comp sequence, a labelled PNG
strip and the QC contact sheet; scores the comp against the exact render of the same paint
(`demo_score`), prints where everything is, the score and how long each stage took, and writes
the score to `score.json`. Uses the GPU when there is one; on a CPU the shot and the schedule are
small enough to finish in a few minutes.

Reruns keep one cache version: the shot is rewritten only when missing or different (the build
hash includes the plate files' dates), and the build always goes to `v001`, replaced when it holds
another build.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
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


def paint_atlas(atlas_path: Path, out: Path, roi_like: Any) -> tuple[Path, Any]:
    """Paint the built-in test pattern over the atlas (linear, RGBA) and save it losslessly.

    Returns the file and the paint as applied: (H, W, 4) straight RGB + alpha, the alpha cut to
    the atlas footprint (what `SynthShot.render_edit` re-renders exactly).
    """
    import numpy as np

    from rna_engine.media.io import read_image, write_rgba_exr
    from rna_engine.synthetic.shots import paint_pattern

    atlas = read_image(atlas_path)
    rgba = atlas.select(("R", "G", "B", "A"))
    edit = paint_pattern(atlas.width, atlas.height, rgba[..., 3] if roi_like is None else roi_like)
    edit[..., 3] *= rgba[..., 3] > 0.5
    a = edit[..., 3:4]
    painted = rgba.copy()
    painted[..., :3] = rgba[..., :3] * (1 - a) + edit[..., :3] * a
    write_rgba_exr(out, painted.astype(np.float32), compression="zip")
    return out, edit


def label_band(width: int, text: str, height: int = 14) -> Any:
    """(height, width, 3) float32 dark band with `text` in white (display-encoded 0..1)."""
    import cv2
    import numpy as np

    band = np.full((height, width, 3), 30, np.uint8)  # putText draws on 8-bit only
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, _), _ = cv2.getTextSize(text, font, 0.38, 1)
    scale = 0.38 * min(1.0, (width - 4) / max(text_w, 1))  # the tiny preset is 64 px wide
    cv2.putText(band, text, (2, height - 4), font, scale, (255, 255, 255), 1)
    return band.astype(np.float32) / 255.0


def strip(
    plate_paths: list[Path], comp_paths: list[Path], out: Path, frame_numbers: list[int]
) -> Path:
    """A PNG strip: plate frames on top, comp frames below (sRGB preview), each tile labelled
    with what it is and its frame number."""
    import numpy as np

    from rna_engine.media.colour import preview_srgb
    from rna_engine.media.io import read_image, write_png

    picks = sorted({0, len(plate_paths) // 3, 2 * len(plate_paths) // 3, len(plate_paths) - 1})
    rows = []
    for kind, paths in (("plate", plate_paths), ("comp", comp_paths)):
        tiles = []
        for i in picks:
            image = preview_srgb(read_image(paths[i]).pixels[..., :3])
            band = label_band(image.shape[1], f"{kind} {frame_numbers[i]}")
            tiles.append(np.concatenate([band, image], 0))
        rows.append(np.concatenate(tiles, 1))
    return write_png(out, np.concatenate(rows, 0))


def shot_files(shot: Any, folder: Path) -> dict[str, Any]:
    """Write the synthetic shot under `folder`, or reuse it when it is already there, complete
    and of the same parameters (a rewrite would change the build hash: it includes file dates)."""
    from dataclasses import asdict

    from rna_engine.media.io import frame_path
    from rna_engine.synthetic.shots import write_shot

    try:
        manifest = json.loads((folder / "shot.json").read_text())
    except (OSError, ValueError):
        manifest = None
    if (
        isinstance(manifest, dict)
        and manifest.get("params") == asdict(shot.params)
        and (folder / "roi.exr").is_file()
        and all(frame_path(folder / manifest["plate"], n).is_file() for n in shot.frame_numbers)
    ):
        log.info("%s: reusing the synthetic shot", folder)
        return manifest
    if folder.exists():
        shutil.rmtree(folder)  # another preset's extra frames would join the plate sequence
    return write_shot(shot, folder, truth=False, srgb=False)


def keep_one_version(spec: Any) -> None:
    """Make `v001` free for this build: remove it when it holds a build of another hash (the
    demo's own folder; `cache.choose_version` never overwrites a finished version itself)."""
    from rna_engine.media.cache import BuildPaths, read_status
    from rna_engine.pipeline import build_hash
    from rna_engine.stages.inputs import resolve_inputs

    inputs = resolve_inputs(spec)
    spec = inputs.spec  # paths absolute
    paths = BuildPaths(Path(spec.out) / spec.name / f"v{spec.version:03d}")
    if not paths.root.exists():
        return
    status = read_status(paths) or {}
    if status.get("build_hash") != build_hash(inputs):
        log.info("%s: replacing a demo build of other settings", paths.root)
        shutil.rmtree(paths.root)


def score_comp(shot: Any, edit: Any, plates: list[Path], comps: list[Path]) -> dict[str, Any]:
    """Score every comp frame against `shot.render_edit(edit)` (see `rna_engine.synthetic.scoring`).

    The expected frame is the plate file plus the exact edit, so the plate's half-float rounding
    is not counted as an error of the comp.
    """
    from rna_engine.media.colour import working_space
    from rna_engine.media.io import read_image
    from rna_engine.synthetic.scoring import score_frame, summarise

    space = working_space("scene_linear")
    scores = []
    for t, (plate_path, comp_path) in enumerate(zip(plates, comps, strict=True)):
        f = shot.frame(t)
        plate = read_image(plate_path).pixels[..., :3]
        expected = plate + (shot.render_edit(edit, t) - f["plate"])
        comp = read_image(comp_path).pixels[..., :3]
        visible = f["roi_tracked"] * (1.0 - f["occlusion"])
        region = f["roi_tracked"] > 0.5
        number = shot.frame_numbers[t]
        scores.append(score_frame(number, comp, expected, plate, visible, region, space.encode))
    return summarise(scores)


def run_demo(
    out: Path, device: str, preset: str = "small", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The whole round trip into `out`; returns the paths, the score and the timings.

    `overrides` replaces the CPU schedule (tests pass a tinier one); on CUDA without overrides
    the plain `draft` preset runs.
    """
    import torch

    from rna_engine.apply import ApplySettings, apply_sequence
    from rna_engine.media.cache import write_json_atomic
    from rna_engine.media.io import frame_path
    from rna_engine.pipeline import run_build
    from rna_engine.runtime.context import RunContext
    from rna_engine.runtime.progress import TerminalBar
    from rna_engine.settings import spec_from_dict
    from rna_engine.synthetic.shots import make_shot

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    shot = make_shot(preset, seed=0)
    manifest = shot_files(shot, out / "shot")
    timings["synth"] = time.perf_counter() - t0
    settings: dict[str, Any] = {"preset": "draft"}
    if overrides is not None:
        settings.update(overrides)
    elif not device.startswith("cuda"):
        settings.update(CPU_OVERRIDES)
        torch.set_num_threads(max(1, torch.get_num_threads()))
    plate_pattern = out / "shot" / manifest["plate"]
    spec = spec_from_dict(
        {
            "plate": str(plate_pattern),
            "roi": str(out / "shot" / "roi.exr"),
            "reference_frame": manifest["reference_frame"],
            "out": str(out / "cache"),
            "name": "demo",
            "version": 1,
            "device": device,
            "settings": settings,
        }
    )
    keep_one_version(spec)
    t1 = time.perf_counter()
    paths = run_build(spec, RunContext(seed=0), sinks=[TerminalBar()])
    timings["build"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    painted, edit = paint_atlas(paths.atlas_exr, out / "painted_atlas.exr", shot.roi)
    timings["paint"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    comp_pattern = out / "comp" / "comp.####.exr"
    if comp_pattern.parent.exists():
        shutil.rmtree(comp_pattern.parent)  # no frames of an earlier, longer demo
    comps = apply_sequence(paths.root, painted, plate_pattern, comp_pattern, ApplySettings())
    timings["apply"] = time.perf_counter() - t3
    plates = [frame_path(plate_pattern, n) for n in shot.frame_numbers]
    t4 = time.perf_counter()
    score = score_comp(shot, edit, plates, comps)
    timings["score"] = time.perf_counter() - t4
    preview = strip(plates, comps, out / "preview_strip.png", shot.frame_numbers)
    timings["total"] = time.perf_counter() - t0
    score_path = out / "score.json"
    write_json_atomic(
        score_path,
        {**score, "shot": f"synthetic {preset}", "device": device, "cache": str(paths.root)},
    )
    return {
        "shot": shot,
        "plate": plate_pattern,
        "paths": paths,
        "painted": painted,
        "comp": comp_pattern,
        "comps": comps,
        "preview": preview,
        "score": score,
        "score_json": score_path,
        "timings": timings,
    }


def run(args: argparse.Namespace) -> int:
    from rna_engine.runtime.context import resolve_device
    from rna_engine.synthetic.scoring import format_summary

    device = resolve_device(args.device)
    result = run_demo(Path(args.out), device, args.preset)
    shot, paths = result["shot"], result["paths"]
    w = sys.stdout.write
    w(f"\nRNA demo on {device}: {shot.params.width}x{shot.params.height}x{shot.n_frames}\n")
    w(f"  plate           {result['plate']}\n")
    w(f"  cache           {paths.root}\n")
    w(f"  painted atlas   {result['painted']}\n")
    w(f"  comp            {result['comp']} ({len(result['comps'])} frames)\n")
    w(f"  preview strip   {result['preview']}  (top: plate, bottom: comp; frame numbers)\n")
    w(f"  contact sheet   {paths.qc_dir / 'contact.png'}\n")
    w(f"  QC report       {paths.qc_dir / 'report.json'}\n")
    w(f"  score           {result['score_json']}\n")
    for line in format_summary(result["score"]):
        w(f"  {line}\n")
    timings = result["timings"]
    w("  timings         " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + "\n")
    return 0
