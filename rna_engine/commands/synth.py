"""`rna-engine synth --out DIR --preset NAME --seed N`: a synthetic shot with ground truth.

Presets (`rna_engine.synthetic.shots.PRESETS`): tiny, small, bench, hd, uhd, and the hard camera work
pan, zoomrot, parallax, exit, each also as `<name>-small` and `<name>-tiny`.
"""

from __future__ import annotations

import argparse
import logging

NAME = "synth"
HELP = "write a synthetic shot with exact ground truth (plate, ROI, UV, occlusion, edit)"
log = logging.getLogger(__name__)


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    from rna_engine.synthetic.shots import (
        PRESETS,  # numpy only: cheap enough for the CLI's start-up
    )

    parser.add_argument("--preset", default="tiny", choices=tuple(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=0, help="override the frame count")
    parser.add_argument(
        "--edit",
        action="store_true",
        help="also paint the test edit and write the exact edited render",
    )
    parser.add_argument("--workers", type=int, default=1, help="render frames in N processes")
    parser.add_argument("--no-truth", action="store_true", help="skip the ground-truth passes")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rna_engine.synthetic.shots import make_shot, paint_pattern, write_shot

    overrides = {"frames": args.frames} if args.frames else {}
    shot = make_shot(args.preset, args.seed, **overrides)
    p = shot.params
    edit = paint_pattern(p.width, p.height, shot.roi) if args.edit else None
    manifest = write_shot(
        shot, Path(args.out), edit=edit, truth=not args.no_truth, workers=args.workers
    )
    log.info(
        "wrote %s: %dx%d, frames %s, reference frame %d",
        args.out,
        p.width,
        p.height,
        manifest["frames"],
        manifest["reference_frame"],
    )
    return 0
