"""`rna-engine build`: a full build into the cache (docs/cache.md).

With `--farm` progress is printed as Open Job Description messages (`openjd_progress:`,
`openjd_status:`) and a failure ends with `openjd_fail: <reason>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

NAME = "build"
HELP = "fit the ROI neural atlas of a plate and write the EXR cache"
log = logging.getLogger(__name__)


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec",
        help="a spec file or a cache's build.json (docs/spec.md); the other input options are "
        "then ignored",
    )
    parser.add_argument("--plate", help="plate sequence (name.####.exr, %%04d, @) or file")
    parser.add_argument("--roi", help="ROI matte image or sequence (its reference frame is used)")
    parser.add_argument("--ref", type=int, help="reference frame number")
    parser.add_argument("--frames", default="", help="frame range, e.g. 1001-1100 (default: all)")
    parser.add_argument("--holdout", default="", help="holdout matte sequence")
    parser.add_argument("--roi-channel", default="A")
    parser.add_argument("--holdout-channel", default="A")
    parser.add_argument("--out", default="rna_cache", help="cache root")
    parser.add_argument("--name", default="shot", help="build name (folder under the root)")
    parser.add_argument("--version", type=int, default=0, help="cache version (0 = next free)")
    parser.add_argument("--preset", default="standard", choices=("draft", "standard", "final"))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. fit.iterations=5000 (JSON value)",
    )
    parser.add_argument(
        "--farm", action="store_true", help="print openjd_progress/openjd_status/openjd_fail lines"
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=1` items → nested dict; values are JSON when they parse, else strings."""
    from rna_engine.errors import InputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"setting {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def spec_from_args(args: argparse.Namespace) -> Any:
    """The build spec, paths absolute: a `--spec` file's relative to its folder, the options'
    relative to the current directory (docs/spec.md)."""
    from pathlib import Path

    from rna_engine.errors import InputError
    from rna_engine.settings import absolute_paths, load_spec, spec_from_dict

    if args.spec:
        return load_spec(Path(args.spec))
    missing = [n for n in ("plate", "roi", "ref") if getattr(args, n) is None]
    if missing:
        raise InputError(f"setting --{missing[0]}: required (or give --spec)")
    settings = {"preset": args.preset, "seed": args.seed, **parse_overrides(args.set)}
    spec = spec_from_dict(
        {
            "plate": args.plate,
            "roi": args.roi,
            "reference_frame": args.ref,
            "frames": args.frames,
            "holdout": args.holdout,
            "roi_channel": args.roi_channel,
            "holdout_channel": args.holdout_channel,
            "out": args.out,
            "name": args.name,
            "version": args.version,
            "device": args.device,
            "settings": settings,
        }
    )
    return absolute_paths(spec, Path.cwd())


def run(args: argparse.Namespace) -> int:
    from rna_engine.context import RunContext
    from rna_engine.errors import Cancelled, InputError
    from rna_engine.pipeline import run_build
    from rna_engine.progress import FarmPrinter, TerminalBar

    farm = FarmPrinter() if args.farm else None
    try:
        spec = spec_from_args(args)
        sinks = [farm] if farm else [TerminalBar()]
        paths = run_build(spec, RunContext(seed=spec.settings.seed), sinks=sinks)
    except (InputError, Cancelled) as err:
        if farm:
            farm.fail(str(err) or "cancelled")
        raise
    except Exception as err:
        if farm:
            farm.fail(f"internal error: {err}")
        raise
    sys.stdout.write(f"{paths.root}\n")
    return 0
