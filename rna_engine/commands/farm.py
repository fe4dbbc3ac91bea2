"""`rna-engine farm openjd|deadline|opencue`: write a farm bundle (GPU build + chunked render).

Prints the bundle folder on stdout. The spec's `version: 0` is pinned to the next free cache
version (the spec file is rewritten with it), so farm retries resume the same build.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

NAME = "farm"
HELP = "write a farm bundle: Open Job Description, Deadline 10 or OpenCue (build + render)"

KINDS = ("openjd", "deadline", "opencue")


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="farm system")
    parser.add_argument("--spec", required=True, metavar="JSON", help="build spec (build.json)")
    nuke = parser.add_argument_group("render with Nuke")
    nuke.add_argument("--script", metavar="NK", help="Nuke script to render")
    nuke.add_argument("--write", metavar="NODE", default="", help="Write node to execute")
    nuke.add_argument("--nuke", default="nuke", help="Nuke command on the workers (default: nuke)")
    nuke.add_argument(
        "--nuke-version",
        default="",
        metavar="X.Y",
        help="Nuke major.minor for Deadline (default: read from the script)",
    )
    nuke.add_argument("--nuke-path", default="", metavar="DIR", help="NUKE_PATH on the workers")
    apply = parser.add_argument_group("render with rna-engine apply (no Nuke licence)")
    apply.add_argument("--apply-atlas", metavar="EDITED", help="the painted atlas")
    apply.add_argument("--apply-out", metavar="PATTERN", help="output pattern (comp.####.exr)")
    parser.add_argument(
        "--frames", default="", help="render range first-last (default: the spec's frames)"
    )
    parser.add_argument("--chunk", type=int, default=10, help="frames per render task (1..150)")
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    parser.add_argument(
        "--engine",
        default="rna-engine",
        help="engine command on the workers (default: rna-engine; e.g. 'python -m rna_engine')",
    )
    farm = parser.add_argument_group("scheduling")
    farm.add_argument("--pool", default="", help="Deadline pool of the render job")
    farm.add_argument("--group", default="", help="Deadline group of the render job")
    farm.add_argument("--gpu-pool", default="", help="Deadline pool of the GPU build job")
    farm.add_argument(
        "--gpu-group",
        default="gpu",
        help="Deadline group of the build job, OpenCue tag of the build layer (default: gpu)",
    )
    farm.add_argument("--priority", type=int, default=50, help="Deadline priority (0..100)")
    farm.add_argument("--show", default="rna", help="OpenCue show")
    farm.add_argument("--shot", default="", help="OpenCue shot (default: the build name)")
    farm.add_argument(
        "--no-reserve",
        action="store_true",
        help="do not create the pinned cache version folder now",
    )


def run(args: argparse.Namespace) -> int:
    from rna_engine.errors import InputError
    from rna_engine.farm import make_job, write_bundle
    from rna_engine.farm.job import absolute

    if args.script and args.apply_atlas:
        raise InputError("farm: --script and --apply-atlas exclude each other")
    job = make_job(
        Path(args.spec),
        frames=args.frames,
        chunk=args.chunk,
        script=Path(args.script) if args.script else None,
        write_node=args.write,
        apply_atlas=Path(args.apply_atlas) if args.apply_atlas else None,
        apply_out=Path(args.apply_out) if args.apply_out else None,
        nuke=tuple(shlex.split(args.nuke)),
        nuke_version=args.nuke_version,
        engine=tuple(shlex.split(args.engine)),
        nuke_path=args.nuke_path,
        reserve=not args.no_reserve,
        require_nuke_version=args.kind == "deadline",
        pool=args.pool,
        group=args.group,
        gpu_pool=args.gpu_pool,
        gpu_group=args.gpu_group,
        priority=args.priority,
        show=args.show,
        shot=args.shot,
    )
    out = absolute(args.out)
    files = write_bundle(args.kind, job, out)
    logging.getLogger("rna_engine.farm").info(
        "%s bundle for %s: %s", args.kind, job.name, ", ".join(p.name for p in files)
    )
    sys.stdout.write(f"{out}\n")
    return 0
