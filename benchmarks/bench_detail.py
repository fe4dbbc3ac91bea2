"""The atlas's reference detail, K frames side by side, on one finished synthetic build.

    python benchmarks/bench_hard.py --shots pan --device cuda:0 --out OUT
    python benchmarks/bench_detail.py --out OUT --shot pan --detail 0,1,9 --device cuda:0

`bake.reference_detail` (docs/method.md §6.1) only changes the bake, so the fit is not re-run:
the build that `bench_hard.py` wrote into OUT is reloaded from its checkpoint (`work/fit.ckpt`)
and re-baked once per K into `OUT/detail_<shot>_K/v001`, then scored against the exact truth
as `bench_hard.py` scores (`score_shot`: edit PSNR, UV error, leak, coverage). Prints one
line per K (edit PSNR worst / p10 / median frame and pooled, leak worst, bake seconds) and
writes `OUT/detail_<shot>.json`. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_evidence import load_build  # noqa: E402
from bench_hard import score_shot, summary_of  # noqa: E402
from meta import commit  # noqa: E402

from rna_engine import __version__  # noqa: E402
from rna_engine.media import io  # noqa: E402
from rna_engine.media.cache import UV_CONVENTION, BuildPaths, write_json_atomic  # noqa: E402
from rna_engine.pipeline import _cache_format, _display_to_linear, _plate_rgb  # noqa: E402
from rna_engine.runtime.context import RunContext  # noqa: E402
from rna_engine.stages.bake import PlateFormat, bake  # noqa: E402
from rna_engine.synthetic.shots import make_shot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a bench_hard.py output folder")
    parser.add_argument("--shot", default="pan")
    parser.add_argument("--detail", default="0,1,9", help="comma-separated K values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="bench_hard.py's --seed")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    summary = json.loads((out / "summary.json").read_text())
    cache = Path(summary["shots"][args.shot]["cache"])
    torch.set_grad_enabled(False)
    fitter, data, spec = load_build(cache, {}, device=args.device)
    result = fitter.run()  # a finished checkpoint: no step is run
    shot = make_shot(args.shot, seed=args.seed)
    shot_dir = out / f"shot_{args.shot}"
    fmt = PlateFormat(data.plate_width, data.plate_height, data.working_width, data.working_height)
    plate_files = {n: io.frame_path(Path(spec.plate), n) for n in data.frame_numbers}

    def read_plate(number: int) -> np.ndarray:
        rgb = _plate_rgb(plate_files[number])[0]
        return rgb if data.space.kind == "scene_linear" else _display_to_linear(rgb)

    attributes = {
        "rna/version": _cache_format(),
        "rna/engine_version": __version__,
        "rna/build_hash": "bench_detail",
        "rna/reference_frame": spec.reference_frame,
        "rna/uv_convention": UV_CONVENTION,
    }
    rows = []
    for k in [int(v) for v in args.detail.split(",") if v.strip()]:
        root = out / f"detail_{args.shot}_{k}" / "v001"
        paths = BuildPaths(root)  # the bake's atomic writes create the folders
        settings = dataclasses.replace(spec.settings.bake, reference_detail=k)
        ctx = RunContext(device=args.device, seed=spec.settings.seed)
        t0 = time.perf_counter()
        bake(
            result,
            data.frame_numbers,
            read_plate,
            None,
            data.roi_plate,
            fmt,
            data.space,
            settings,
            spec.settings.matte,
            paths,
            attributes,
            ctx,
        )
        bake_s = time.perf_counter() - t0
        numbers = sorted(io.find_frames(paths.passes_pattern))
        per_frame, pooled = score_shot(shot, shot_dir, root, root.parent, args.shot, numbers)
        metrics = summary_of(per_frame, shot)
        edit, leak = metrics["edit_psnr"], metrics["leak_pct"]
        rows.append(
            {"reference_detail": k, "bake_s": round(bake_s, 1), **pooled, "metrics": metrics}
        )
        print(
            f"K={k}: edit PSNR worst {edit['worst']:.2f} / p10 {edit['p10_worst']:.2f} / "
            f"median {edit['median']:.2f} dB, pooled {pooled['edit_psnr_pooled']:.2f} dB; "
            f"leak worst {leak['worst']:.3f} %; bake {bake_s:.1f} s",
            flush=True,
        )
    write_json_atomic(
        out / f"detail_{args.shot}.json",
        {
            "meta": {
                "commit": commit(),
                "command": " ".join(["python benchmarks/bench_detail.py", *sys.argv[1:]]),
                "cache": str(cache),
            },
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
