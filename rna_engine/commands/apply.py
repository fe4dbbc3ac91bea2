"""`rna-engine apply`: the reference implementation of the RNAApply gizmo (docs/cache.md)."""

from __future__ import annotations

import argparse
import logging
import sys

NAME = "apply"
HELP = "comp a painted atlas onto the plate through a cache (same math as the RNAApply gizmo)"

log = logging.getLogger(__name__)


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--build",
        required=True,
        metavar="DIR",
        help="cache version folder (<cache>/<name>/v###) or its build folder",
    )
    parser.add_argument(
        "--atlas",
        required=True,
        metavar="EDITED",
        help="the painted atlas: EXR (scene-linear) or PNG/TIFF/JPEG (sRGB)",
    )
    parser.add_argument(
        "--plate",
        required=True,
        metavar="P",
        help="plate sequence pattern (plate.####.exr) or file",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATTERN",
        help="output EXR pattern, e.g. comp/comp.####.exr; written RGBA, zips, in the plate's "
        "pixel type (half plate: half; float or integer plate: float), so an unpainted atlas "
        "gives the plate back bit for bit",
    )
    parser.add_argument(
        "--mode",
        choices=("delta", "replace"),
        default="delta",
        help="delta keeps the plate's grain; replace puts the painted colour "
        "on fully visible edited pixels (default: delta)",
    )
    parser.add_argument(
        "--delta-threshold",
        type=float,
        default=0.0,
        metavar="X",
        help="ignore atlas differences up to X (max over RGB; default 0)",
    )
    parser.add_argument(
        "--mix",
        type=float,
        default=1.0,
        metavar="X",
        help="strength of the paint, 0..1 (default 1)",
    )
    parser.add_argument(
        "--output",
        choices=("comp", "paint", "delta", "matte"),
        default="comp",
        help="comp, paint element (add onto the plate), delta, or matte overlay (default: comp)",
    )
    parser.add_argument(
        "--filter",
        default="cubic",
        help="STMap filter of both atlas lookups, as the RNAApply gizmo's: impulse, cubic, keys, "
        "simon, rifman, mitchell, parzen, notch, lanczos4, lanczos6, sinc4 (also linear or "
        "bilinear, not a Nuke filter; default cubic)",
    )
    parser.add_argument(
        "--no-shade",
        dest="use_shade",
        action="store_false",
        help="do not multiply the paint by the cached shading",
    )
    parser.add_argument(
        "--replace-matte",
        type=float,
        default=0.95,
        metavar="X",
        help="mode replace: smallest matte that takes the painted colour",
    )
    parser.add_argument(
        "--mask", metavar="PATTERN", help="optional mask sequence; its alpha multiplies the matte"
    )
    parser.add_argument(
        "--frames",
        default="",
        metavar="A-B",
        help="frame range (Nuke syntax); default: every cached frame",
    )


def run(args: argparse.Namespace) -> int:
    from rna_engine.apply import ApplySettings, apply_sequence
    from rna_engine.runtime.progress import ProgressTracker, TerminalBar

    settings = ApplySettings(
        mode=args.mode,
        delta_threshold=args.delta_threshold,
        mix=args.mix,
        output=args.output,
        filter=args.filter,
        use_shade=args.use_shade,
        replace_min_matte=args.replace_matte,
    )
    sinks = [TerminalBar()] if sys.stderr.isatty() else []
    reporter = ProgressTracker({"apply": 1.0}, sinks=sinks)
    written = apply_sequence(
        args.build,
        args.atlas,
        args.plate,
        args.out,
        settings,
        frames=args.frames,
        mask=args.mask,
        reporter=reporter,
    )
    log.info("wrote %d frame(s): %s", len(written), args.out)
    return 0
