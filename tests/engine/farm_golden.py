"""The one farm job the golden-file tests of every farm writer describe (imported by them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rna_engine.farm.job import ApplyRender, FarmJob, FrameRange, NukeRender

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "farm"
SHOT = Path("/shows/demo/sh010")
FRAMES = FrameRange(1001, 1095)


def golden_job(kind: str, frames: FrameRange = FRAMES, **extra: Any) -> FarmJob:
    """A build of sh010 v003 and a Nuke (`kind="nuke"`) or apply render of 1001–1095 by 10."""
    render: NukeRender | ApplyRender
    if kind == "nuke":
        render = NukeRender(SHOT / "comp" / "sh010_comp_v012.nk", "Write_RNA", ("nuke",), "15.1")
    else:
        render = ApplyRender(
            atlas=SHOT / "paint" / "atlas_paint v2.exr",
            plate=SHOT / "plate" / "sh010.####.exr",
            out=SHOT / "render" / "sh010_comp.####.exr",
        )
    fields: dict[str, Any] = {
        "name": "RNA sh010 v003",
        "build_name": "sh010",
        "version": 3,
        "job_root": SHOT,
        "spec_path": SHOT / "build.json",
        "build_dir": SHOT / "rna" / "sh010" / "v003",
        "frames": frames,
        "chunk": 10,
        "render": render,
        "engine": ("/opt/rna/bin/python", "-m", "rna_engine"),
        "environment": {"NUKE_PATH": "/studio/nuke/plugins"},
    }
    fields.update(extra)
    return FarmJob(**fields)
