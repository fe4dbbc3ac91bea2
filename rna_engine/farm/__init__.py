"""Render-farm integration (docs/farm.md): one job model, three writers.

`job.make_job` reads a build spec, pins its cache version and describes the two-step job
(`BuildAtlas` on a GPU, chunked `Render`); `write_bundle` renders it for Open Job Description
(Deadline Cloud job bundle), Deadline 10 (job/plugin-info files) or OpenCue (job-spec XML), plus
`job.json` (the model itself, for people and for the Nuke plug-in).
"""

from __future__ import annotations

import json
from pathlib import Path

from .job import KINDS, FarmJob, make_job, write_text_atomic

__all__ = ["JOB_FILE", "KINDS", "FarmJob", "make_job", "write_bundle"]

JOB_FILE = "job.json"


def write_bundle(kind: str, job: FarmJob, out_dir: Path) -> list[Path]:
    """Write the bundle of farm `kind` (`openjd`, `deadline`, `opencue`) into `out_dir`."""
    if kind == "openjd":
        from . import openjd as writer
    elif kind == "deadline":
        from . import deadline as writer  # type: ignore[no-redef]
    elif kind == "opencue":
        from . import opencue as writer  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown farm kind {kind!r}; one of {', '.join(KINDS)}")
    out_dir = Path(out_dir)
    files = writer.write(job, out_dir)
    data = {"kind": kind, **job.to_dict(), "files": [p.name for p in files]}
    files.append(write_text_atomic(out_dir / JOB_FILE, json.dumps(data, indent=2) + "\n"))
    return files
