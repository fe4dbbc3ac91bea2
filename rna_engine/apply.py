"""RNAApply's comp math (docs/cache.md), the reference implementation of `gizmos/RNAApply.gizmo`.

For every plate pixel `p`, with `E`/`O` the edited/original atlas looked up through the cached UV
with the same filter (so unpainted texels cancel exactly), `m = matte · mask`, `S = shade`:

    delta   = E(uv) − O(uv), zeroed where max(|delta.rgb|) <= delta_threshold
    edited  = [max(|delta.rgb|) > delta_threshold]
    paint   = m · S · delta                         (mode delta: keeps the plate's grain)
            = S · E(uv) − plate   where edited and m >= replace_min_matte   (mode replace)
    paint.a = m · edited
    outputs: paint element = mix · paint (rgb, a)   — an *additive* element: comp = plate + paint
             comp          = plate.rgb + mix · paint.rgb,  alpha = mix · paint.a
             delta         = delta.rgb, alpha = edited
             matte overlay = plate · (1 − m/2) + (m/2, 0, 0),  alpha = m

Where nothing is edited the comp is the plate **bit for bit** (not `plate + 0.0`, which turns −0.0
into +0.0, nor `0 · NaN` from a bad shade texel), and files are written in the plate's own pixel
type (`output_pixel_types`): an unpainted atlas returns a float or half plate unchanged.

The paint element's rgb is already weighted by its coverage (alpha), i.e. premultiplied; it is
merged with **plus** (not over), which is exactly what the comp does. The gizmo computes the same
expressions node by node; `tests/nuke/test_rnaapply_eval.py` evaluates it against this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import CACHE_FORMAT_VERSION, __version__
from .errors import InputError
from .media.cache import MATTE, SHADE, UV_U, UV_V, BuildPaths, version_dirs
from .media.stmap import FILTERS, sample_stmap
from .runtime.progress import CancelToken, NullReporter, Reporter

log = logging.getLogger(__name__)

MODES = ("delta", "replace")
OUTPUTS = ("comp", "paint", "delta", "matte")
APPLY_FILTERS = (*FILTERS, "bilinear")
"""Accepted `filter` names (case-insensitive): Nuke's STMap menu, `linear` and its alias
`bilinear`."""
OVERLAY_OPACITY = 0.5
"""Strength of the red tint of the matte overlay (a QC view, not a setting)."""
ASPECT_TOLERANCE = 0.01
"""Largest relative aspect-ratio difference between the edited and the original atlas."""
LOSSY_EXR = ("dwaa", "dwab", "b44", "b44a", "pxr24")


@dataclass(frozen=True)
class ApplySettings:
    """Settings of RNAApply / `rna-engine apply` (the gizmo's knobs of the same names)."""

    mode: Literal["delta", "replace"] = "delta"
    """`delta` adds the paint's difference (keeps grain); `replace` puts the painted colour on
    fully visible edited texels, as the paper does."""
    delta_threshold: float = 0.0
    """Differences whose largest |RGB| component is at most this are treated as unpainted
    (kills noise from lossy re-saves of the atlas); scene-linear units."""
    mix: float = 1.0
    """Strength of the paint: 0 = the plate, 1 = the full comp."""
    output: Literal["comp", "paint", "delta", "matte"] = "comp"
    """What is written: the comp, the paint element, the delta, or the matte overlay."""
    filter: str = "cubic"
    """STMap filter of both atlas lookups: Nuke's name (impulse, cubic, keys, simon, rifman,
    mitchell, parzen, notch, lanczos4, lanczos6, sinc4), or `linear`/`bilinear` (not in Nuke)."""
    use_shade: bool = True
    """Multiply the paint by the cached shading `rna_shade` (else by 1)."""
    replace_min_matte: float = 0.95
    """Mode replace: smallest matte at which an edited pixel takes the painted colour."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"setting mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.output not in OUTPUTS:
            raise InputError(f"setting output: {self.output!r} is not one of {', '.join(OUTPUTS)}")
        if self.filter.lower() not in APPLY_FILTERS:
            raise InputError(
                f"setting filter: {self.filter!r} is not one of {', '.join(APPLY_FILTERS)}"
            )
        if not (self.delta_threshold >= 0.0):
            raise InputError("setting delta_threshold: must be >= 0")
        if not (0.0 <= self.mix <= 1.0):
            raise InputError("setting mix: must be in 0..1")
        if not (0.0 <= self.replace_min_matte <= 1.0):
            raise InputError("setting replace_min_matte: must be in 0..1")


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def apply_frame(
    plate: np.ndarray,
    atlas_orig: np.ndarray,
    atlas_edit: np.ndarray,
    passes: Mapping[str, np.ndarray],
    settings: ApplySettings,
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All four outputs of one frame (pure numpy).

    Args:
        plate: (H, W, C≥3) float32 scene-linear plate (extra channels are ignored).
        atlas_orig: (Ha, Wa, C≥3) float32 original atlas of the cache.
        atlas_edit: (He, We, C≥3) float32 painted atlas, scene-linear, any size (UVs are
            normalised, so it is resampled implicitly).
        passes: channel name → (H, W) float32: `rna_uv.u`, `rna_uv.v`, `rna_matte.m` and
            `rna_shade.red/green/blue` (the latter only when `settings.use_shade`).
        settings: the knobs.
        mask: optional (H, W) float32 user mask multiplied into the matte.

    Returns:
        `{"comp", "paint", "delta", "matte"}` → (H, W, 4) float32 RGBA, see the module docstring.
        Where nothing is edited (delta exactly 0 after the threshold) the comp's RGB are the
        plate's values bit for bit, its alpha and the paint element are +0.0; so is every comp
        channel whose paint is 0 (e.g. with mix 0).
    """
    plate_rgb = _rgb(plate)
    height, width = plate_rgb.shape[:2]
    try:
        uv = np.stack([passes[UV_U], passes[UV_V]], axis=-1).astype(np.float32)
        matte = np.asarray(passes[MATTE], dtype=np.float32)
        shade = (
            np.stack([passes[c] for c in SHADE], axis=-1).astype(np.float32)
            if settings.use_shade
            else np.ones((height, width, 3), np.float32)
        )
    except KeyError as err:
        raise InputError(f"passes: channel {err.args[0]} is missing") from err
    if uv.shape[:2] != (height, width):
        raise InputError(
            f"plate is {width}x{height} but the cache passes are {uv.shape[1]}x{uv.shape[0]}"
        )
    filt = settings.filter.lower()
    filt = "linear" if filt == "bilinear" else filt
    edit = sample_stmap(_rgb(atlas_edit), uv, filt)
    orig = sample_stmap(_rgb(atlas_orig), uv, filt)
    delta = edit - orig
    edited = np.abs(delta).max(axis=-1) > np.float32(settings.delta_threshold)
    delta = np.where(edited[..., None], delta, np.float32(0.0))
    edited_f = edited.astype(np.float32)
    m = matte if mask is None else matte * np.asarray(mask, dtype=np.float32)

    with np.errstate(invalid="ignore"):  # 0 · inf in unedited pixels: discarded below
        paint_rgb = (m[..., None] * shade) * delta
        if settings.mode == "replace":
            full = edited & (m >= np.float32(settings.replace_min_matte))
            paint_rgb = np.where(full[..., None], shade * edit - plate_rgb, paint_rgb)
        mix = np.float32(settings.mix)
        paint = np.concatenate([paint_rgb, (m * edited_f)[..., None]], axis=-1) * mix
    # Where nothing was painted the comp *is* the plate: `plate + 0` would turn a −0.0 plate
    # value into +0.0, and a NaN/inf in the matte or shade would make `0 · x` a NaN. The same
    # holds per channel wherever the paint is 0 (mix 0, a delta in red only).
    paint = np.where(edited[..., None], paint, np.float32(0.0))
    comp_rgb = np.where(paint[..., :3] == 0, plate_rgb, plate_rgb + paint[..., :3])
    comp = np.concatenate([comp_rgb, paint[..., 3:]], axis=-1)
    tint = np.float32(OVERLAY_OPACITY) * m
    overlay = plate_rgb * (np.float32(1.0) - tint)[..., None]
    overlay[..., 0] += tint
    return {
        "comp": comp.astype(np.float32),
        "paint": paint.astype(np.float32),
        "delta": np.concatenate([delta, edited_f[..., None]], axis=-1).astype(np.float32),
        "matte": np.concatenate([overlay, m[..., None]], axis=-1).astype(np.float32),
    }


# --------------------------------------------------------------------------------------------
# Files


def resolve_build(build_dir: str | Path) -> BuildPaths:
    """The cache version folder: `build_dir` itself, or the newest `v###` inside it."""
    root = Path(build_dir)
    if not root.is_dir():
        raise InputError(f"{root}: cache folder not found")
    paths = BuildPaths(root)
    if not paths.passes_dir.is_dir():
        versions = version_dirs(root)
        if not versions:
            raise InputError(f"{root}: not a cache version folder (no passes/ and no v###)")
        paths = BuildPaths(versions[-1])
        log.info("using the newest cache version %s", paths.root.name)
    if not paths.atlas_exr.is_file():
        raise InputError(f"{paths.atlas_exr}: original atlas not found")
    return paths


def _check_format_version(value: Any, where: Path) -> None:
    if value is None or value == "":
        return
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if number != CACHE_FORMAT_VERSION:
        raise InputError(
            f"{where}: cache from an older version (cache format {value}, this "
            f"engine reads {CACHE_FORMAT_VERSION}), rebuild"
        )


def check_cache_version(paths: BuildPaths) -> None:
    """`build.json`'s `cache_format_version`, when present, must be this engine's format."""
    if not paths.build_json.is_file():
        return
    try:
        data = json.loads(paths.build_json.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{paths.build_json}: unreadable JSON ({err})") from err
    if isinstance(data, dict):
        _check_format_version(data.get("cache_format_version"), paths.build_json)


def read_edited_atlas(path: str | Path, original_shape: tuple[int, int]) -> np.ndarray:
    """The painted atlas as scene-linear RGB (H, W, 3) float32.

    EXR and float files are taken as scene-linear; 8/16-bit PNG/JPEG/TIFF are display-referred
    sRGB and linearised with the sRGB EOTF. Warns on lossy EXR compression and 8-bit files;
    rejects an aspect ratio more than 1 % off the original atlas's.
    """
    from .media import io
    from .media.colour import srgb_to_linear

    image = io.read_image(path)
    height, width = image.height, image.width
    orig_h, orig_w = original_shape
    ratio = (width / height) / (orig_w / orig_h)
    if abs(ratio - 1.0) > ASPECT_TOLERANCE:
        raise InputError(
            f"{image.path}: aspect ratio {width}x{height} differs from the original "
            f"atlas {orig_w}x{orig_h} by {abs(ratio - 1.0) * 100:.1f} %"
        )
    rgb = image.select(io.rgb_channel_names(image.channels))
    compression = (image.compression or "").split(":")[0].lower()
    if image.file_format == "openexr" and compression in LOSSY_EXR:
        log.warning(
            "%s: lossy EXR compression %s changes unpainted texels; save the atlas "
            "with zip/zips/piz or raise --delta-threshold",
            image.path,
            compression,
        )
    if image.bits_per_sample <= 8:
        log.warning(
            "%s: 8-bit atlas; quantisation of unpainted texels shows as noise, save "
            "16-bit or EXR (or raise --delta-threshold)",
            image.path,
        )
    if not io.is_scene_linear_file(image):
        rgb = srgb_to_linear(rgb)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _read_passes(path: Path) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    from .media import io

    names = (UV_U, UV_V, MATTE, *SHADE)
    image = io.read_image(path)
    _check_format_version(image.attributes.get("rna/version"), path)
    missing = [n for n in names if n not in image.channels]
    if missing:
        raise InputError(f"{path}: no channel {missing[0]!r} (not an RNA pass file?)")
    return {n: image.channel(n) for n in names}, (image.width, image.height)


def output_pixel_types(plate_formats: Sequence[str]) -> dict[str, str]:
    """EXR pixel type of each output channel R, G, B, A from the plate's R, G, B formats.

    A half channel stays half; any other (float, 8/16/32-bit integer, double) is written as
    float, which holds the float32 value it was read as exactly (EXR has no double). Alpha is
    half only when all three colour channels are.

    >>> output_pixel_types(["half", "half", "float"])
    {'R': 'half', 'G': 'half', 'B': 'float', 'A': 'float'}
    """
    types = {
        n: "half" if f == "half" else "float" for n, f in zip("RGB", plate_formats, strict=True)
    }
    types["A"] = "half" if all(t == "half" for t in types.values()) else "float"
    return types


def apply_sequence(
    build_dir: str | Path,
    atlas: str | Path,
    plate: str | Path,
    out: str | Path,
    settings: ApplySettings,
    frames: str | Sequence[int] | None = None,
    mask: str | Path | None = None,
    reporter: Reporter | None = None,
    cancel: CancelToken | None = None,
) -> list[Path]:
    """Render RNAApply over a frame range, one atomic EXR per frame.

    Args:
        build_dir: a cache version folder (`.../v001`), or a build folder (newest version).
        atlas: the painted atlas (EXR/PNG/TIFF/JPEG, any size of the same aspect ratio).
        plate: plate sequence pattern (`plate.####.exr`) or single file.
        out: output pattern with a frame token (a plain path is allowed for one frame).
        settings: the knobs.
        frames: Nuke-style range text or frame numbers; None/'' = every cached frame.
        mask: optional mask sequence; its alpha (else its only channel) multiplies the matte.

    Returns:
        The written files, in frame order: RGBA EXR, zips, in the plate's own pixel type
        (`output_pixel_types`), so an unpainted atlas writes the plate back bit for bit.
    """
    from .media import io

    reporter = reporter or NullReporter()
    cancel = cancel or CancelToken()
    paths = resolve_build(build_dir)
    check_cache_version(paths)
    cached = io.find_frames(paths.passes_pattern)
    if not cached:
        raise InputError(f"{paths.passes_pattern}: no cache frames")
    if frames is None or frames == "":
        wanted = sorted(cached)
    elif isinstance(frames, str):
        wanted = io.parse_frame_range(frames)
    else:
        wanted = sorted(set(int(f) for f in frames))
    for frame in wanted:
        if frame not in cached:
            raise InputError(f"{paths.pass_path(frame)}: cache frame {frame} is missing")
    plate_single = io.parse_pattern(plate) is None
    for frame in wanted:
        path = io.frame_path(plate, frame)
        if not path.is_file():
            raise InputError(f"{path}: plate frame {frame} is missing")
        if mask is not None and not io.frame_path(mask, frame).is_file():
            raise InputError(f"{io.frame_path(mask, frame)}: mask frame {frame} is missing")
    if io.parse_pattern(out) is None and len(wanted) > 1:
        raise InputError(f"{out}: needs a frame token (####) to write {len(wanted)} frames")
    if plate_single and len(wanted) > 1:
        log.warning("%s: a single plate image is used for all %d frames", plate, len(wanted))

    orig_image = io.read_image(paths.atlas_exr)
    atlas_orig = orig_image.select(io.rgb_channel_names(orig_image.channels))
    atlas_edit = read_edited_atlas(atlas, atlas_orig.shape[:2])
    _read_passes(cached[wanted[0]])  # a wrong cache version fails before anything is written

    written: list[Path] = []
    for index, frame in enumerate(wanted):
        cancel.check()
        passes, (width, height) = _read_passes(cached[frame])
        plate_image = io.read_image(io.frame_path(plate, frame))
        if (plate_image.width, plate_image.height) != (width, height):
            raise InputError(
                f"{plate_image.path}: plate is {plate_image.width}x"
                f"{plate_image.height} but the cache is {width}x{height}"
            )
        plate_names = io.rgb_channel_names(plate_image.channels)
        plate_rgb = plate_image.select(plate_names)
        mask_array = None
        if mask is not None:
            mask_image = io.read_image(io.frame_path(mask, frame))
            mask_array = mask_image.channel(io.alpha_channel_name(mask_image.channels))
        result = apply_frame(plate_rgb, atlas_orig, atlas_edit, passes, settings, mask_array)
        rgba = result[settings.output]
        target = io.frame_path(out, frame)
        formats = dict(zip(plate_image.channels, plate_image.channel_formats, strict=True))
        types = output_pixel_types([formats[name] for name in plate_names])
        io.write_exr(
            target,
            {name: rgba[..., i] for i, name in enumerate(types)},
            pixel_types=types,
            attributes={
                "rna/frame": frame,
                "rna/version": CACHE_FORMAT_VERSION,
                "rna/engine_version": __version__,
                "rna/apply": json.dumps(
                    {
                        "mode": settings.mode,
                        "output": settings.output,
                        "filter": settings.filter,
                        "mix": settings.mix,
                        "delta_threshold": settings.delta_threshold,
                        "use_shade": settings.use_shade,
                    },
                    sort_keys=True,
                ),
            },
        )
        written.append(target)
        reporter.update("apply", (index + 1) / len(wanted), f"frame {frame}")
    return written
