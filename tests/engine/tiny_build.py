"""A real `rna-engine build` of the synthetic `tiny` shot, small enough for CI (~25 s, 2 cores)."""

from __future__ import annotations

import sys
from pathlib import Path

SETTINGS = [
    "ingest.working_long_side=64",
    "fit.pretrain_steps=100",
    "fit.iterations=300",
    "fit.batch_size=1536",
    "fit.scale_with_shot=false",
    "fit.mapping_width=64",
    "fit.hash_grid.n_levels=8",
    "fit.hash_grid.log2_hashmap_size=12",
    "fit.hash_grid.base_resolution=8",
    "fit.hash_grid.per_level_scale=1.5",
    "refine.iterations=20",
]


def build_command(shot_dir: Path, ref: int, out: Path) -> list[str]:
    """`python -m rna_engine build` of the shot written in `shot_dir` into `out` (name `tiny`)."""
    args = [sys.executable, "-m", "rna_engine", "build", "--plate"]
    args += [str(shot_dir / "plate" / "plate.####.exr"), "--roi", str(shot_dir / "roi.exr")]
    args += ["--ref", str(ref), "--out", str(out), "--name", "tiny"]
    args += ["--preset", "draft", "--device", "cpu"]
    for item in SETTINGS:
        args += ["--set", item]
    return args
