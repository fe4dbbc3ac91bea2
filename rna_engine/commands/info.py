"""`rna-engine info PATTERN [--json]`: describe a sequence or file."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "info"
HELP = "frames, missing frames, resolution, windows, channels and compression of a sequence"


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", help="file or sequence pattern (name.####.exr, %%04d, @)")
    parser.add_argument("--frames", default="", help="expected frame range, e.g. 1001-1100")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def describe(pattern: str, frames: str = "") -> dict[str, Any]:
    """Inspect every file of a sequence; raises InputError on the first unreadable one.

    Files that read but are damaged (corrupt JPEG data, a PNG chunk failing its CRC) are listed
    under `damaged`, one entry per file, like NaN/Inf pixels under `nonfinite`.
    """
    from dataclasses import asdict

    from rna_engine.errors import InputError
    from rna_engine.media import io

    found = io.find_frames(pattern)
    if not found:
        raise InputError(f"{pattern}: no files found")
    numbers = sorted(found)
    is_seq = io.parse_pattern(pattern) is not None
    wanted = (
        io.parse_frame_range(frames)
        if frames
        else (list(range(numbers[0], numbers[-1] + 1)) if is_seq else numbers)
    )
    missing = [f for f in wanted if f not in found]
    reports = [io.inspect(found[f]) for f in numbers if f in wanted or not frames]
    first = reports[0]
    sizes = {(r.width, r.height) for r in reports}
    if len(sizes) > 1:
        odd = next(r for r in reports if (r.width, r.height) != (first.width, first.height))
        raise InputError(
            f"{odd.path}: {odd.width}x{odd.height} differs from {first.width}x{first.height}"
        )
    bad = [r for r in reports if r.nan_count or r.inf_count]
    return {
        "pattern": str(pattern),
        "frames": io.format_frame_range(numbers) if is_seq else "",
        "count": len(numbers),
        "missing": io.format_frame_range(missing) if missing else "",
        "width": first.width,
        "height": first.height,
        "display_window": list(first.display_window),
        "data_window": list(first.data_window),
        "channels": [
            {"name": n, "type": t}
            for n, t in zip(first.channels, first.channel_formats, strict=True)
        ],
        "compression": first.compression,
        "file_format": first.file_format,
        "parts": first.parts,
        "colourspace_hint": first.colourspace
        or ("scene-linear" if first.file_format in ("openexr", "hdr") else "display (sRGB)"),
        "nonfinite": [{"path": r.path, "nan": r.nan_count, "inf": r.inf_count} for r in bad],
        "damaged": [{"path": r.path, "damage": "; ".join(r.damage)} for r in reports if r.damage],
        "files": [asdict(r) for r in reports] if len(reports) <= 1 else None,
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.pattern, args.frames)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    out.write(f"{info['pattern']}\n")
    if info["frames"]:
        out.write(f"  frames       {info['frames']} ({info['count']} files)\n")
    if info["missing"]:
        out.write(f"  missing      {info['missing']}\n")
    out.write(f"  resolution   {info['width']}x{info['height']}\n")
    out.write(f"  display win  {info['display_window']}  data win {info['data_window']}\n")
    chans = ", ".join(f"{c['name']}:{c['type']}" for c in info["channels"])
    out.write(f"  channels     {chans}\n")
    out.write(
        f"  compression  {info['compression'] or '-'}  format {info['file_format']}  "
        f"parts {info['parts']}\n"
    )
    out.write(f"  colourspace  {info['colourspace_hint']}\n")
    for bad in info["nonfinite"]:
        out.write(f"  warning      {bad['path']}: {bad['nan']} NaN, {bad['inf']} Inf pixels\n")
    for bad in info["damaged"]:
        out.write(f"  warning      {bad['path']}: {bad['damage']}\n")
    return 0
