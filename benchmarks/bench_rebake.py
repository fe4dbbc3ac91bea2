"""Re-bake one finished build with other bake, matte or refinement settings, and score it.

    python benchmarks/bench_hard.py --shots enter-small --device cpu --out OUT
    python benchmarks/bench_rebake.py --out OUT --shot enter-small --set matte.keep_cores=false

    python benchmarks/bench_rebake.py --out OUT --shot enter-small --set refine.occluded_factor=2

The bake (the passes, the soft matte of docs/method.md §6) does not change the fit, so the fit
is not re-run: the build that `bench_hard.py` wrote into OUT is reloaded from its checkpoint
(`work/fit.ckpt`), re-baked with the `--set` overrides (`bake.*`, `matte.*`) into
`OUT/rebake_<shot>_<label>/v001` and scored against the exact truth as `bench_hard.py` scores
it (`score_shot`); a `bench_clips.py` folder's clip as that benchmark scores it (`score_clip`,
against the annotated masks of `--clips`). Prints the benchmark's per-frame table and one
summary line. A CPU A/B of a
matte change in the minutes of a bake rather than the fit's quarter hour.

With `refine.*` overrides the M-only refinement (docs/method.md §5) is re-run first, from
`--checkpoint` (a copy of `work/fit.ckpt` taken when the joint fit ended: the exact A/B) or
else from the finished checkpoint's refined M (an approximation: compare runs of this tool
with each other, never with the build itself). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_clips import CLIPS, prepare, score_clip  # noqa: E402
from bench_clips import table as clip_table  # noqa: E402
from bench_evidence import _typed, load_build  # noqa: E402
from bench_hard import score_shot, summary_of, table  # noqa: E402

from rna_engine import __version__  # noqa: E402
from rna_engine.media import io  # noqa: E402
from rna_engine.media import metrics as m  # noqa: E402
from rna_engine.media.cache import UV_CONVENTION, BuildPaths  # noqa: E402
from rna_engine.pipeline import _cache_format, _display_to_linear, _plate_rgb  # noqa: E402
from rna_engine.runtime.context import RunContext  # noqa: E402
from rna_engine.stages.bake import PlateFormat, bake  # noqa: E402
from rna_engine.synthetic.shots import make_shot  # noqa: E402


class Rebaker:
    """One bench_hard build reloaded once, re-baked and scored per settings variant."""

    def __init__(
        self,
        out: Path,
        shot_name: str,
        device: str = "cpu",
        seed: int = 0,
        refine: dict[str, str] | None = None,
        checkpoint: Path | None = None,
        clips: str = str(ROOT.parent / "shared" / "data" / "clips"),
    ) -> None:
        self.clips = clips
        self.clip = (out / "clips_summary.json").exists()  # a bench_clips.py folder
        cache = out / "cache" / shot_name / "v001"  # both benchmarks' layout of OUT
        if not self.clip:
            entry = json.loads((out / "summary.json").read_text())["shots"].get(shot_name)
            cache = Path(entry["cache"]) if entry else cache
        self.out, self.shot_name, self.device = out, shot_name, device
        self.cache = cache
        fitter, self.data, self.spec = load_build(cache, refine or {}, device, checkpoint)
        if refine and checkpoint is None:
            fitter.loop.save("refine", 0)  # re-run the refinement from the refined M
        with torch.enable_grad():
            self.result = fitter.run()  # a finished checkpoint: no step is run
        self.shot = None if self.clip else make_shot(shot_name, seed=seed)
        data = self.data
        self.fmt = PlateFormat(
            data.plate_width, data.plate_height, data.working_width, data.working_height
        )
        self.plate_files = {n: io.frame_path(Path(self.spec.plate), n) for n in data.frame_numbers}

    def read_plate(self, number: int) -> np.ndarray:
        rgb = _plate_rgb(self.plate_files[number])[0]
        return rgb if self.data.space.kind == "scene_linear" else _display_to_linear(rgb)

    def run(
        self, label: str, bake_over: dict[str, Any], matte_over: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any], float]:
        """Re-bake into `OUT/rebake_<shot>_<label>/v001`; per-frame rows, pooled, bake seconds."""
        spec, data = self.spec, self.data
        root = self.out / f"rebake_{self.shot_name}_{label}" / "v001"
        attributes = {
            "rna/version": _cache_format(),
            "rna/engine_version": __version__,
            "rna/build_hash": f"rebake_{label}",
            "rna/reference_frame": spec.reference_frame,
            "rna/uv_convention": UV_CONVENTION,
        }
        t0 = time.perf_counter()
        bake(
            self.result,
            data.frame_numbers,
            self.read_plate,
            None,
            data.roi_plate,
            self.fmt,
            data.space,
            dataclasses.replace(spec.settings.bake, **bake_over),
            dataclasses.replace(spec.settings.matte, **matte_over),
            BuildPaths(root),  # the bake's atomic writes create the folders
            attributes,
            RunContext(device=self.device, seed=spec.settings.seed),
        )
        bake_s = time.perf_counter() - t0
        if self.shot is None:  # a clip: scored against its annotated masks
            # the frames the camera gate put out of view come from the build's own QC
            qc = BuildPaths(root).qc_dir
            qc.mkdir(parents=True, exist_ok=True)
            shutil.copy(BuildPaths(self.cache).qc_dir / "report.json", qc / "report.json")
            _, _, obj = prepare(Path(self.clips), self.shot_name, root.parent)
            roi = io.read_image(self.out / self.shot_name / "roi.exr").channel("A")
            rows = score_clip(self.shot_name, Path(spec.plate), root, roi, obj, root.parent)
            return rows, {}, bake_s
        numbers = sorted(io.find_frames(BuildPaths(root).passes_pattern))
        shot_dir = self.out / f"shot_{self.shot_name}"
        rows, pooled = score_shot(self.shot, shot_dir, root, root.parent, self.shot_name, numbers)
        return rows, pooled, bake_s


def split_sets(pairs: list[str]) -> dict[str, dict[str, str]]:
    """`bake.KEY=VALUE` / `matte.KEY=VALUE` / `refine.KEY=VALUE` pairs by group (untyped)."""
    out: dict[str, dict[str, str]] = {"bake": {}, "matte": {}, "refine": {}}
    for pair in pairs:
        key, _, value = pair.partition("=")
        group, _, name = key.partition(".")
        if group not in out or not name:
            raise SystemExit(f"--set {pair}: not a bake.*, matte.* or refine.* setting")
        out[group][name] = value
    return out


def typed(group: Any, values: dict[str, str], name: str) -> dict[str, Any]:
    """`values` typed as the fields of the settings `group` (named `name` in errors)."""
    for key in values:
        if not hasattr(group, key):
            raise SystemExit(f"--set {name}.{key}: no such setting")
    return {k: _typed(getattr(group, k), v) for k, v in values.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a bench_hard.py output folder")
    parser.add_argument("--shot", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="", help="folder label (default: from --set)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="bench_hard.py's --seed")
    parser.add_argument("--rows", type=int, default=0, help="frames per table (0 = all)")
    parser.add_argument("--sort", default="occluder_shown_pct")
    parser.add_argument("--checkpoint", default="", help="fit.ckpt as the joint fit left it")
    parser.add_argument("--clips", default=str(ROOT.parent / "shared" / "data" / "clips"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sets = split_sets(args.set)
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    rebaker = Rebaker(
        Path(args.out).resolve(),
        args.shot,
        args.device,
        args.seed,
        sets["refine"],
        checkpoint,
        args.clips,
    )
    settings = rebaker.spec.settings
    bake_over = typed(settings.bake, sets["bake"], "bake")
    matte_over = typed(settings.matte, sets["matte"], "matte")
    label = args.label or ("_".join(s.replace("=", "-") for s in args.set) or "same")
    rows, pooled, bake_s = rebaker.run(label, bake_over, matte_over)
    if rebaker.shot is None:
        print(clip_table(f"{args.shot} [{label}]", rows, args.rows))
        worst = {
            k: m.summarise(rows, k, hib)["worst"]
            for k, hib in (("visible_coverage_pct", True), ("occluded_hidden_pct", True))
        }
        leak = m.summarise(rows, "leak_pct", False)["worst"]
        print(
            f"{args.shot} [{label}]: visible coverage worst {worst['visible_coverage_pct']}, "
            f"occluded hidden worst {worst['occluded_hidden_pct']}, leak worst {leak}; "
            f"bake {bake_s:.1f} s (reference frame {CLIPS[args.shot]['ref']})",
            flush=True,
        )
        return 0
    print(table(f"{args.shot} [{label}]", rows, args.sort, args.rows))
    metrics = summary_of(rows, rebaker.shot)
    shown, leak, edit = (
        metrics[k]["worst"] for k in ("occluder_shown_pct", "leak_pct", "edit_psnr")
    )
    cover = metrics["coverage_pct"]["worst"]
    print(
        f"{args.shot} [{label}]: occluded shown worst {shown}, leak worst {leak}, "
        f"edit PSNR worst {edit}, visible coverage worst {cover}; "
        f"pooled edit {pooled['edit_psnr_pooled']:.2f} dB; bake {bake_s:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
