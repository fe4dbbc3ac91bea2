"""`rna-engine build`: a full build into the cache (docs/cache.md).

With `--farm` progress is printed as Open Job Description messages (`openjd_progress:`,
`openjd_status:`) and a failure ends with `openjd_fail: <reason>`. SIGINT (Ctrl-C) and SIGTERM
(what farms send) cancel the build: `status.json` ends `cancelled` and the exit code is 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
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
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override settings, e.g. --set fit.iterations=5000 refine.iterations=500 (JSON "
        "values; repeatable)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse a damaged plate frame (corrupt JPEG data, a PNG chunk failing its CRC) "
        "instead of warning; sets ingest.strict_decode, also with --spec",
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
    relative to the current directory (docs/spec.md); `--strict` applies to both."""
    spec = _spec_from_args(args)
    return _strict(spec) if getattr(args, "strict", False) else spec


def _strict(spec: Any) -> Any:
    """`spec` with `ingest.strict_decode` on."""
    from dataclasses import replace

    settings = spec.settings
    ingest = replace(settings.ingest, strict_decode=True)
    return replace(spec, settings=replace(settings, ingest=ingest))


def _spec_from_args(args: argparse.Namespace) -> Any:
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


class Interrupted(KeyboardInterrupt):
    """A signal ended the build; the message is the signal's name (`SIGTERM`)."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def _signals_cancel() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while the build runs.

    An exception rather than a cancel flag: a stage that is between checks (a long flow solve,
    an EXR write) is interrupted at once, and `run_build` records `cancelled` on its way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread
        return
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _warn_gpu_preset_on_cpu(spec: Any) -> None:
    """One warning when a GPU preset runs on the CPU (it takes many minutes there)."""
    from rna_engine.runtime.context import resolve_device
    from rna_engine.runtime.progress import cpu_build_estimate_s, format_eta

    settings = spec.settings
    if settings.preset == "draft" or resolve_device(spec.device) != "cpu":
        return
    steps = settings.fit.pretrain_steps + settings.fit.iterations + settings.refine.iterations
    estimate_s = cpu_build_estimate_s(steps, settings.fit.batch_size)
    took = f"{estimate_s / 3600:.1f} h" if estimate_s >= 3600 else format_eta(estimate_s)
    log.warning(
        "preset %s on the CPU will take long: at least %s of fitting for a 70-frame shot "
        "(%d steps of %d samples); use --preset draft, or a GPU (--device cuda:0)",
        settings.preset,
        took,
        steps,
        settings.fit.batch_size,
    )


def run(args: argparse.Namespace) -> int:
    from rna_engine.errors import Cancelled, InputError
    from rna_engine.pipeline import prepare, run_build
    from rna_engine.runtime.context import RunContext
    from rna_engine.runtime.progress import FarmPrinter, TerminalBar

    farm = FarmPrinter() if args.farm else None
    try:
        with _signals_cancel():
            spec = spec_from_args(args)
            plan = prepare(spec)  # bad input is one line, before the warning below
            _warn_gpu_preset_on_cpu(plan.inputs.spec)
            sinks = [farm] if farm else [TerminalBar()]
            ctx = RunContext(seed=spec.settings.seed)
            paths = run_build(spec, ctx, sinks=sinks, plan=plan)
    except (InputError, Cancelled) as err:
        if farm:
            farm.fail(str(err) or "cancelled")
        raise
    except KeyboardInterrupt as err:
        if farm:
            farm.fail(f"cancelled ({err or 'SIGINT'})")
        raise
    except Exception as err:
        if farm:
            farm.fail(f"internal error: {err}")
        raise
    sys.stdout.write(f"{paths.root}\n")
    return 0
