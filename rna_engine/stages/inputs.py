"""A build's inputs, resolved once at the door (docs/spec.md).

`resolve_inputs(spec)` applies the path rule (`settings.absolute_paths`), finds the plate frames,
the ROI file at the reference frame and the holdout frames, and reads the plate size. Every later
reader (validation, ingest, the bake's plate and holdout readers, the build hash, the service's
planner) takes the `ResolvedInputs` it returns; nothing resolves a pattern again.

`roi_fault` is the one rule an ROI at working resolution must pass, shared by `validate_inputs`
(before anything is written) and `fit.validate_shot`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rna_engine.errors import InputError
from rna_engine.media import io
from rna_engine.settings import BuildSpec, absolute_paths

MIN_ROI_WORKING_PX = 64
"""Fewest ROI pixels at working resolution a fit accepts: an 8×8 patch, the default DIS patch
and about the descriptor's window; below it no flow lands inside the ROI to carry it."""
MAX_ROI_FRACTION = 0.98
"""Largest share of the frame the ROI may cover (beyond it there is no region to select)."""


@dataclass(frozen=True)
class ResolvedInputs:
    """Absolute input files of one build; plate size from its first frame."""

    spec: BuildSpec
    """The spec with every path absolute (what the cache's `build.json` records)."""
    plate: dict[int, Path]
    """Frame number → plate file, sorted, restricted to the spec's frame range."""
    roi: Path
    """ROI file at the reference frame."""
    holdout: dict[int, Path] | None
    """Frame number → holdout file for every plate frame; None without a holdout."""
    plate_width: int
    plate_height: int

    @property
    def frame_numbers(self) -> list[int]:
        return list(self.plate)

    @property
    def frame_range(self) -> str:
        """The plate frames as range text (`1001-1100`)."""
        return io.format_frame_range(self.frame_numbers)

    @property
    def reference_frame(self) -> int:
        return self.spec.reference_frame

    @property
    def reference_index(self) -> int:
        """frame_index (0…N−1) of the reference frame."""
        return self.frame_numbers.index(self.spec.reference_frame)

    @property
    def plate_size(self) -> tuple[int, int]:
        """(width, height) in plate pixels."""
        return self.plate_width, self.plate_height

    def read_roi(self) -> np.ndarray:
        """(Hp, Wp) float32 0..1 ROI matte at plate resolution."""
        return read_matte(self.roi, self.spec.roi_channel, self.plate_size, "the ROI")

    def read_holdout(self, number: int) -> np.ndarray:
        """(Hp, Wp) float32 0..1 holdout matte of plate frame `number`."""
        if self.holdout is None:
            raise ValueError("this build has no holdout")
        return read_matte(
            self.holdout[number], self.spec.holdout_channel, self.plate_size, "the holdout"
        )


def read_matte(path: Path, channel: str, size: tuple[int, int], what: str) -> np.ndarray:
    """One matte channel (H, W) of an image, checked against the plate size (W, H)."""
    image = io.read_image(path)
    matte = image.channel(io.alpha_channel_name(image.channels, channel))
    if (image.width, image.height) != size:
        raise InputError(
            f"{path}: {what} is {image.width}x{image.height} but the plate is {size[0]}x{size[1]}"
        )
    return np.clip(np.nan_to_num(matte), 0.0, 1.0).astype(np.float32)


def resolve_inputs(spec: BuildSpec) -> ResolvedInputs:
    """Find every input file of `spec` (exit 2 with one line on a missing one).

    Relative paths left in `spec` (a spec built in code) resolve against the current directory,
    as command-line arguments do. Checks: at least two plate frames, the reference frame among
    them, the ROI file at the reference frame and a holdout file for every plate frame exist,
    and the first plate frame reads (undamaged, with `ingest.strict_decode`).
    """
    spec = absolute_paths(spec, Path.cwd())
    plate = io.resolve_sequence(spec.plate, spec.frames)
    numbers = sorted(plate)
    if len(numbers) < 2:
        raise InputError(
            f"{plate[numbers[0]]}: a build needs at least 2 frames (found {len(numbers)})"
        )
    if spec.reference_frame not in plate:
        raise InputError(
            f"reference frame {spec.reference_frame}: outside the plate's frames "
            f"{io.format_frame_range(numbers)}"
        )
    roi = io.frame_path(spec.roi, spec.reference_frame)
    if not roi.is_file():
        raise InputError(f"{roi}: ROI not found (reference frame {spec.reference_frame})")
    holdout = None
    if spec.holdout:
        holdout = io.resolve_sequence(spec.holdout, io.format_frame_range(numbers))
        if io.parse_pattern(spec.holdout) is None:  # one still holdout for every frame
            holdout = {number: Path(spec.holdout) for number in numbers}
    # Damage is refused here with ingest.strict_decode, else warned about when ingest reads it.
    strict = spec.settings.ingest.strict_decode
    first = io.read_image(plate[numbers[0]], strict=strict, warn=False)
    return ResolvedInputs(
        spec, {n: plate[n] for n in numbers}, roi, holdout, first.width, first.height
    )


def roi_working(roi_plate: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width) float32 {0, 1}: the plate-resolution ROI area-resampled, kept at >= 0.5."""
    return (io.resize_area(roi_plate[..., None], width, height)[..., 0] >= 0.5).astype(np.float32)


def roi_fault(inside_px: int, total_px: int) -> str | None:
    """Why an ROI of `inside_px` of `total_px` working pixels cannot be fitted, else None."""
    if inside_px == 0:
        return "the ROI is empty"
    if inside_px < MIN_ROI_WORKING_PX:
        return f"the ROI has {inside_px} working pixels, a fit needs {MIN_ROI_WORKING_PX}"
    if inside_px > MAX_ROI_FRACTION * total_px:
        return "the ROI covers the whole frame; it must select a region"
    return None


def min_roi_side_px(plate_size: tuple[int, int], working_size: tuple[int, int]) -> int:
    """Side, plate pixels, of a square ROI that passes `roi_fault` wherever it lies.

    A square of k+1 working pixels covers at least k×k of them fully (area resampling, kept
    at >= 0.5), with k = ceil(sqrt(MIN_ROI_WORKING_PX)).
    """
    k = math.ceil(math.sqrt(MIN_ROI_WORKING_PX))
    if working_size == plate_size:
        return k  # no resampling: pixels are kept as they are
    scale = max(plate_size[0] / working_size[0], plate_size[1] / working_size[1])
    return math.ceil((k + 1) * scale)
