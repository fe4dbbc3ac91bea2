"""Which inputs of RNAAtlasBuild the engine reads directly, and which Nuke renders first.

The engine reads image files only. A plain Read (no reformat, no frame offset, an image
sequence covering the frames needed) is handed over by its file path. Anything else (a Roto, a
Grade after the Read, a .mov, an inverted matte) is rendered by Nuke itself through a temporary
Write into the build's version folder:

    plate   → <cache>/v###/inputs/plate.####.exr    every frame of the range
    roi     → <cache>/v###/inputs/roi.exr           the reference frame only
    holdout → <cache>/v###/inputs/holdout.####.exr  every frame of the range

This module decides (pure); `glue` creates and executes the Write nodes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .knobs import exr_channel_name, layer_of

READABLE_EXTENSIONS = ("exr", "dpx", "tif", "tiff", "png", "jpg", "jpeg")
"""Image formats the engine reads (docs/architecture.md); movies and others are rendered."""

_FRAME_TOKEN = re.compile(r"#+|%0?\d*d|@+")


@dataclass(frozen=True)
class SourceInfo:
    """What `glue` reads off the node connected to an input."""

    node_class: str
    file: str = ""
    """Evaluated file pattern of a Read (`####`, `%04d` kept); '' for other nodes."""
    first: int = 0
    """Read's first frame."""
    last: int = 0
    """Read's last frame."""
    disabled: bool = False
    reformat: bool = False
    """The Read reformats its image (the file is not what Nuke shows)."""
    frame_offset: bool = False
    """The Read shifts frame numbers (`frame_mode` offset / start at)."""
    colorspace: str = ""
    """The Read's `colorspace` knob (`default (linear)`, `ACES - ACEScct`...)."""
    raw: bool = False
    """The Read's `raw` knob (no colour conversion)."""


@dataclass(frozen=True)
class InputPlan:
    """How one input reaches the engine."""

    role: str
    """plate, roi or holdout."""
    mode: str
    """`direct` (read the Read's files) or `render` (a temporary Write first)."""
    path: str
    """File or sequence pattern written into the build spec."""
    channel: str
    """Matte channel as named in that file (`A`, `mask.A`); `""` for the plate."""
    first: int
    """First frame to render (render mode)."""
    last: int
    """Last frame to render (render mode)."""
    layer: str = "rgba"
    """Nuke layer the temporary Write writes."""
    invert: bool = False
    """Insert an Invert of `layer` before the Write."""
    reason: str = ""
    """Why the input is rendered ('' when direct)."""


def is_sequence(path: str) -> bool:
    return bool(_FRAME_TOKEN.search(os.path.basename(path)))


def why_not_plain(source: SourceInfo, first: int, last: int) -> str:
    """'' when `source` is a plain Read whose files hold frames first..last, else the reason."""
    if source.node_class != "Read":
        return f"{source.node_class} is not a Read"
    if source.disabled:
        return "the Read is disabled"
    if not source.file:
        return "the Read has no file"
    ext = source.file.rsplit(".", 1)[-1].lower() if "." in source.file else ""
    if ext not in READABLE_EXTENSIONS:
        return f".{ext or '?'} files are not an image format the engine reads"
    if source.reformat:
        return "the Read reformats"
    if source.frame_offset:
        return "the Read offsets frame numbers"
    if is_sequence(source.file) and not (source.first <= first and last <= source.last):
        return f"the Read's range {source.first}-{source.last} does not cover {first}-{last}"
    return ""


def _rendered(role: str, inputs_dir: str, first: int, last: int, sequence: bool) -> str:
    name = f"{role}.####.exr" if sequence else f"{role}.exr"
    return f"{inputs_dir.rstrip('/')}/{name}"


def plan_plate(source: SourceInfo, inputs_dir: str, first: int, last: int) -> InputPlan:
    """The plate: its Read's files, or every frame rendered to `inputs/plate.####.exr`."""
    reason = why_not_plain(source, first, last)
    if not reason:
        return InputPlan("plate", "direct", source.file, "", first, last)
    return InputPlan(
        "plate",
        "render",
        _rendered("plate", inputs_dir, first, last, True),
        "",
        first,
        last,
        reason=reason,
    )


def plan_roi(
    source: SourceInfo, inputs_dir: str, reference_frame: int, channel: str, invert: bool
) -> InputPlan:
    """The ROI matte: its Read's file, or the reference frame rendered to `inputs/roi.exr`."""
    reason = "invert is on" if invert else why_not_plain(source, reference_frame, reference_frame)
    exr_channel = exr_channel_name(channel)
    if not reason:
        return InputPlan(
            "roi",
            "direct",
            source.file,
            exr_channel,
            reference_frame,
            reference_frame,
            layer_of(channel),
        )
    return InputPlan(
        "roi",
        "render",
        _rendered("roi", inputs_dir, 0, 0, False),
        exr_channel,
        reference_frame,
        reference_frame,
        layer_of(channel),
        invert,
        reason,
    )


def plan_holdout(
    source: SourceInfo, inputs_dir: str, first: int, last: int, channel: str, invert: bool
) -> InputPlan:
    """The holdout matte: its Read's files, or every frame rendered to `inputs/holdout.####.exr`."""
    reason = "invert is on" if invert else why_not_plain(source, first, last)
    exr_channel = exr_channel_name(channel)
    if not reason:
        return InputPlan(
            "holdout", "direct", source.file, exr_channel, first, last, layer_of(channel)
        )
    return InputPlan(
        "holdout",
        "render",
        _rendered("holdout", inputs_dir, first, last, True),
        exr_channel,
        first,
        last,
        layer_of(channel),
        invert,
        reason,
    )


def write_knob_values(plan: InputPlan) -> dict[str, Any]:
    """Knob values of the temporary Write that renders `plan` (lossless EXR, half floats)."""
    return {
        "file": plan.path,
        "file_type": "exr",
        "channels": plan.layer,
        "datatype": "16 bit half",
        "compression": "Zip (1 scanline)",
        "create_directories": True,
    }
