"""Production image I/O through OpenImageIO: sequences, EXR layers/parts/windows, atomic writes.

Contract:
- Pixels come back as float32 (H, W, C) **in the display window**: data outside the data window
  is zero, data outside the display window is cropped (overscan is dropped).
- Channels are always looked up by name (OpenEXR stores them sorted).
- Every unreadable, truncated, corrupt, mis-named (a PNG named .exr), deep-only or otherwise
  unsupported file, and a folder named like one, raises `InputError` with one line naming the
  file; an error OpenImageIO leaves pending after a read that "succeeded" is a failed read.
  NaN/Inf pixels are reported by `inspect`, never fatal.
- Damage that still decodes is `ImageData.damage`: libjpeg's warnings on a JPEG whose every
  pixel was decoded ("Corrupt JPEG data: ..."; a sequential JPEG's data is read to its end
  marker once more to find them) and a PNG ancillary chunk failing its CRC. `read_image` logs
  one warning naming the file, or raises `InputError` with `strict=True`. A JPEG that ends
  early ("Premature end of JPEG file") is truncated: always an error. A bit flip that libjpeg
  decodes to other pixels without a warning cannot be found: JPEG has no checksum.
- Writers are atomic: a temporary file beside the target, then `os.replace`.

Sequence patterns: a frame token in the file name, which may be the whole name before the
extension (`#####.jpg`, in the current folder or any other):
- `####` one `#` per digit (Nuke's convention; `#` alone = unpadded);
- `%04d` printf (`%d` = unpadded);
- `@@@@` one `@` per digit; a single `@` matches any padding.
Padding is a minimum width that counts the minus sign, as printf and Nuke write it: `####` gives
frame 1 as `0001`, 12345 as `12345`, -1 as `-001`. A file is a frame of a padded pattern only if
its name is exactly what the pattern writes for that frame (`00001` is not frame 1 of `####`).
Frame ranges: `1001-1100`, `1-10x2`, `1 3 4 8`, `1001-1010,1020`, `-5--1` (Nuke's syntax).
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rna_engine.errors import InputError

from .cache import atomic_path

_HASHES = re.compile(r"#+")
_PRINTF = re.compile(r"%(0?)(\d*)d")
_ATS = re.compile(r"@+")
_DIGITS = re.compile(r"-?[0-9]+")
_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+)(?:[x:](\d+))?)?$")

log = logging.getLogger(__name__)

LOSSY_COMPRESSIONS = ("dwaa", "dwab", "b44", "b44a", "pxr24")
LOSSLESS_COMPRESSIONS = ("none", "rle", "zips", "zip", "piz")


def _oiio() -> Any:
    import OpenImageIO as oiio

    return oiio


# --------------------------------------------------------------------------------------------
# Frame ranges and sequence patterns


def parse_frame_range(text: str) -> list[int]:
    """Frames of a Nuke-style range: `1001-1100`, `1-10x2`, `1 3 4 8`, `1-5,9`; sorted, unique.

    >>> parse_frame_range("1-7x3 10")
    [1, 4, 7, 10]
    """
    frames: set[int] = set()
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not parts:
        raise InputError(f"frame range {text!r}: empty")
    for part in parts:
        m = _RANGE.match(part)
        if not m:
            raise InputError(f"frame range {text!r}: cannot read {part!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3)) if m.group(3) else 1
        if step < 1 or last < first:
            raise InputError(f"frame range {text!r}: {part!r} runs backwards or has step < 1")
        frames.update(range(first, last + 1, step))
    return sorted(frames)


def format_frame_range(frames: Sequence[int]) -> str:
    """Compact Nuke-style text for a sorted frame list (`1001-1010 1012`)."""
    out: list[str] = []
    frames = sorted(set(frames))
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        out.append(str(frames[i]) if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return " ".join(out)


@dataclass(frozen=True)
class SequencePattern:
    """A parsed sequence pattern: folder, file-name text around the frame token, and padding.

    A file is frame N of the pattern exactly when its name is `name(N)`, so finding and
    formatting agree: `####` finds `0001` and `12345` but not `00001` or `1`.
    """

    folder: str
    """Text up to and including the last path separator; '' = the current folder."""
    prefix: str
    """File-name text before the frame token (may hold digits: `shot010_v2.`)."""
    suffix: str
    """File-name text after the frame token."""
    padding: int
    """Width of the frame number, a minus sign included (`####`: -1 → `-001`, as Nuke and
    printf's `%04d` write it); 1 = unpadded (`#`, `%d`); 0 = any width (a single `@`)."""

    def name(self, frame: int) -> str:
        """File name of `frame`."""
        return f"{self.prefix}{frame:0{max(self.padding, 1)}d}{self.suffix}"

    def path(self, frame: int) -> Path:
        """Path of `frame` (relative when the pattern is)."""
        return Path(self.folder + self.name(frame))

    def directory(self) -> Path:
        """The folder the frames are in."""
        return Path(self.folder) if self.folder else Path(".")

    def frame_of(self, name: str) -> int | None:
        """Frame number of the file name `name`, or None when it is not a frame of the pattern."""
        if len(name) <= len(self.prefix) + len(self.suffix):
            return None
        if not (name.startswith(self.prefix) and name.endswith(self.suffix)):
            return None
        digits = name[len(self.prefix) : len(name) - len(self.suffix)]
        if not _DIGITS.fullmatch(digits):
            return None
        frame = int(digits)
        if self.padding and self.name(frame) != name:
            return None  # other padding: not a file of this sequence
        return frame


def _split_folder(text: str) -> tuple[str, str]:
    """(folder with its trailing separator, file name) of a path text."""
    seps = {"/", os.sep, os.altsep or "/"}
    cut = max(text.rfind(s) for s in seps) + 1
    return text[:cut], text[cut:]


def parse_pattern(pattern: str | Path) -> SequencePattern | None:
    """The frame token of `pattern`'s file name (`####`, `%04d`, `@`), or None for a single file.

    The token may be the whole file name before the extension (`#####.jpg`, `%05d.png`); only
    the file name is searched, so a `#` or `@` in a folder name is not a token.
    """
    folder, name = _split_folder(str(pattern))
    for regex, kind in ((_HASHES, "#"), (_PRINTF, "%"), (_ATS, "@")):
        matches = list(regex.finditer(name))
        if not matches:
            continue
        m = matches[-1]
        if kind == "%":
            padding = max(int(m.group(2) or 1), 1)
        elif kind == "@" and len(m.group(0)) == 1:
            padding = 0
        else:
            padding = len(m.group(0))
        return SequencePattern(folder, name[: m.start()], name[m.end() :], padding)
    return None


def frame_path(pattern: str | Path, frame: int) -> Path:
    """Path of `frame` in a sequence pattern (a plain file path is returned unchanged)."""
    seq = parse_pattern(pattern)
    return Path(pattern) if seq is None else seq.path(frame)


def find_frames(pattern: str | Path) -> dict[int, Path]:
    """Frame number → path of every entry on disk that is a frame of the pattern, sorted.

    Folders named like a frame are included, so that reading them names them (a silent gap
    would hide them). A plain file (no frame token) gives `{0: path}` when it exists. With a
    single `@` two files can hold the same frame (`p.1.exr`, `p.01.exr`): `InputError`.
    """
    seq = parse_pattern(pattern)
    if seq is None:
        path = Path(pattern)
        return {0: path} if path.exists() else {}
    folder = seq.directory()
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as err:
        raise InputError(f"{folder}: cannot list the folder ({err.strerror})") from err
    found: dict[int, Path] = {}
    for name in names:
        frame = seq.frame_of(name)
        if frame is None:
            continue
        path = Path(seq.folder + name)
        if frame in found:
            raise InputError(f"{path}: frame {frame} is also {found[frame].name}")
        found[frame] = path
    return dict(sorted(found.items()))


def resolve_sequence(pattern: str | Path, frames: str = "") -> dict[int, Path]:
    """Frames of `pattern` restricted to the range text `frames` ('' = all found).

    Raises `InputError` naming the pattern when nothing is found, or naming the first missing
    frame of the requested range.
    """
    found = find_frames(pattern)
    seq = parse_pattern(pattern)
    if not found:
        if seq is not None and not seq.directory().is_dir():
            raise InputError(f"{pattern}: no files found (no folder {seq.directory()})")
        raise InputError(f"{pattern}: no files found")
    if seq is None or not frames:
        return found
    wanted = parse_frame_range(frames)
    missing = [f for f in wanted if f not in found]
    if missing:
        raise InputError(
            f"{frame_path(pattern, missing[0])}: frame {missing[0]} is missing "
            f"({len(missing)} of {len(wanted)} frames missing)"
        )
    return {f: found[f] for f in wanted}


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class ImageData:
    """An image placed in its display window."""

    path: Path
    pixels: np.ndarray
    """(H, W, C) float32, display window, zero outside the data window."""
    channels: tuple[str, ...]
    display_window: tuple[int, int, int, int]
    """(x, y, width, height), y measured downwards (OIIO's full_* fields)."""
    data_window: tuple[int, int, int, int]
    """(x, y, width, height) of the stored pixels."""
    channel_formats: tuple[str, ...]
    compression: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    file_format: str = ""
    bits_per_sample: int = 32
    part: int = 0
    part_name: str = ""
    damage: tuple[str, ...] = ()
    """What is wrong with a file that still decoded (`corrupt JPEG data (...)`); () = nothing
    found. Such pixels may be wrong; `read_image(strict=True)` refuses the file instead."""

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def channel(self, name: str) -> np.ndarray:
        """One channel by name, (H, W)."""
        try:
            return self.pixels[..., self.channels.index(name)]
        except ValueError as err:
            raise InputError(
                f"{self.path}: no channel {name!r} (has {', '.join(self.channels)})"
            ) from err

    def select(self, names: Sequence[str]) -> np.ndarray:
        """Several channels by name, (H, W, len(names))."""
        return np.stack([self.channel(n) for n in names], axis=-1)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_REASON_CHARS = 200
_FORMAT_NAMES = {"openexr": "EXR", "jpeg": "JPEG", "tiff": "TIFF", "png": "PNG", "dpx": "DPX"}


def _pending(source: Any = None) -> str:
    """The pending OpenImageIO error of `source` (an ImageInput) or of this thread; clears it.

    OIIO's messages may quote bytes of a corrupt header, which its binding fails to decode as
    UTF-8: those bytes are decoded with `errors="replace"`.
    """
    try:
        return str((source if source is not None else _oiio()).geterror())
    except UnicodeDecodeError as err:
        return bytes(err.object).decode("utf-8", errors="replace")


def _error_text(source: Any = None) -> str:
    """`_pending(source)` as one line."""
    return _one_line(_pending(source))


def _one_line(text: str) -> str:
    lines = []
    for line in str(text).splitlines():
        line = " ".join("".join(c if c.isprintable() else "?" for c in line).split())
        if line and line not in lines:
            lines.append(line)
    joined = "; ".join(lines)
    if len(joined) > _MAX_REASON_CHARS:
        joined = joined[: _MAX_REASON_CHARS - 3] + "..."
    return joined


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn what OpenImageIO's binding raises on a broken file into one `InputError` line."""
    try:
        yield
    except UnicodeDecodeError as err:  # header text (channel, attribute) that is not UTF-8
        raise InputError(f"{path}: corrupt header (text that is not UTF-8)") from err
    except RuntimeError as err:  # a C++ exception out of the reader
        raise InputError(f"{path}: unreadable ({_one_line(str(err)) or 'reader failed'})") from err


def _check_png(path: Path) -> list[str]:
    """Walk a PNG's chunks and check their CRCs before libpng sees the file; the damage found.

    libpng prints its errors on stderr itself (two lines for one bad file), so truncated and
    corrupt PNGs are caught here, with the byte where they go wrong. An ancillary chunk (its
    first letter lower case: gAMA, tEXt, eXIf) failing its CRC is damage, not an error: libpng
    skips it without a word and the pixels are intact.
    """
    data = memoryview(path.read_bytes())
    pos = len(_PNG_SIGNATURE)
    damage: list[str] = []
    while True:
        if pos + 8 > len(data):
            raise InputError(f"{path}: truncated PNG ({len(data)} bytes, no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
        end = pos + 12 + length
        if end > len(data):
            raise InputError(
                f"{path}: truncated PNG (chunk {name} at byte {pos} needs {end} bytes, "
                f"file has {len(data)})"
            )
        if pos == len(_PNG_SIGNATURE) and kind != b"IHDR":
            raise InputError(f"{path}: corrupt PNG (first chunk is {name}, not IHDR)")
        crc = int.from_bytes(data[end - 4 : end], "big")
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            if not (kind.isalpha() and kind[:1].islower()):
                raise InputError(f"{path}: corrupt PNG (chunk {name} at byte {pos} fails its CRC)")
            damage.append(
                f"corrupt PNG chunk {name} at byte {pos} (fails its CRC; libpng skips it, the "
                "pixels are intact)"
            )
        if kind == b"IEND":
            return damage
        pos = end


_LIBJPEG = "JPEG error: "
"""How OpenImageIO begins a message of libjpeg's (it ends with the file name in quotes)."""
_JPEG_WARNINGS = ("Corrupt JPEG data", "Invalid SOS parameters", "Inconsistent progression")
"""How libjpeg's warnings (JWRN_*) on entropy-coded data it decodes anyway begin."""
_JPEG_EOF = "Premature end of JPEG file"
"""libjpeg's warning when the file ends before the image does: a truncated file."""
_JPEG_METADATA = "Warning: "
"""How libjpeg's warnings on metadata begin (an unknown JFIF revision): no damage."""
_SOF_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _message_lines(path: Path, texts: Sequence[str]) -> list[tuple[bool, str]]:
    """OpenImageIO's messages, one per line: (from libjpeg, the text less OIIO's wrapping)."""
    lines = []
    for line in "\n".join(texts).splitlines():
        line = line.strip()
        libjpeg = line.startswith(_LIBJPEG)
        if libjpeg:
            line = line.removeprefix(_LIBJPEG).removesuffix(f' ("{path}")')
        if line:
            lines.append((libjpeg, line))
    return lines


def _jpeg_damage(line: str) -> str:
    """The damage text of one of libjpeg's messages."""
    detail = line.removeprefix("Corrupt JPEG data: ")
    return f"corrupt JPEG data, pixels may be wrong (libjpeg: {detail})"


def _read_messages(path: Path, *texts: str) -> tuple[list[str], list[str]]:
    """(errors, damage) of the messages after a pixel read: only libjpeg's warnings are damage."""
    errors: list[str] = []
    damage: list[str] = []
    for libjpeg, line in _message_lines(path, texts):
        if libjpeg and line.startswith(_JPEG_WARNINGS):
            damage.append(_jpeg_damage(line))
        else:
            errors.append(line)
    return errors, damage


def _scan_messages(path: Path, *texts: str) -> list[str]:
    """The damage libjpeg reports reading a JPEG to its end marker; `InputError` if truncated.

    Such a read (a progressive JPEG's open, `_jpeg_tail`) has decoded every pixel already, so
    anything libjpeg says but the file ending early is damage, not a failed read. Other
    messages (OpenImageIO's own, on metadata) were never counted at open and are not here.
    """
    lines = [line for libjpeg, line in _message_lines(path, texts) if libjpeg]
    if any(line.startswith(_JPEG_EOF) for line in lines):
        reason = _one_line("\n".join(lines))
        raise InputError(f"{path}: truncated or corrupt ({reason})")
    return [_jpeg_damage(line) for line in lines if not line.startswith(_JPEG_METADATA)]


def _jpeg_progressive(path: Path) -> bool:
    """Whether a JPEG's frame header (SOFn) is progressive; False when none is found."""
    with path.open("rb") as fh:
        fh.seek(2)
        while True:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                return False
            if head[1] == 0xFF:  # a fill byte before the marker
                fh.seek(-3, os.SEEK_CUR)
                continue
            if head[1] in _SOF_ANY:
                return head[1] in _SOF_PROGRESSIVE
            if head[1] == 0xDA:  # start of scan: no frame header before it
                return False
            fh.seek(int.from_bytes(head[2:4], "big") - 2, os.SEEK_CUR)


def _jpeg_tail(path: Path) -> list[str]:
    """The damage libjpeg finds reading a sequential JPEG's scans to its end marker.

    OpenImageIO stops a sequential JPEG at its last scanline, so data left between the last
    block and the end marker (libjpeg's "N extraneous bytes before marker 0xd9": a corrupt
    entropy segment made the decoder finish early, on other pixels) is never looked at. Its
    raw-coefficient mode (`_jpeg:raw`, which its lossless JPEG copy uses) reads every scan to
    the end marker without the inverse DCT. A progressive JPEG was read to the end at open.
    """
    oiio = _oiio()
    config = oiio.ImageSpec()
    config.attribute("_jpeg:raw", 1)
    inp = oiio.ImageInput.open(str(path), config)
    if inp is None:
        return _scan_messages(path, _pending())
    try:
        return _scan_messages(path, _pending(inp))
    finally:
        inp.close()


@lru_cache(maxsize=1)
def _extension_formats() -> dict[str, frozenset[str]]:
    """File extension → the OpenImageIO formats that claim it (`exr` → {openexr})."""
    formats: dict[str, set[str]] = {}
    for entry in str(_oiio().get_string_attribute("extension_list")).split(";"):
        fmt, _, exts = entry.partition(":")
        for ext in exts.split(","):
            if ext:
                formats.setdefault(ext.lower(), set()).add(fmt)
    return {ext: frozenset(fmts) for ext, fmts in formats.items()}


def _check_format(path: Path, found: str) -> None:
    """A file whose content is another format than its extension says (a PNG named .exr)."""
    ext = path.suffix.lstrip(".").lower()
    expected = _extension_formats().get(ext)
    if not expected or found in expected:
        return
    exts = sorted(e for e, fmts in _extension_formats().items() if found in fmts)
    better = f"; rename it to .{exts[0]}" if len(exts) == 1 else ""
    label = _FORMAT_NAMES.get(found, found.upper())
    raise InputError(f"{path}: a {label} file named .{ext}{better}")


def _open(path: Path) -> tuple[Any, list[str]]:
    """An open ImageInput of `path` and the damage found so far, or `InputError` naming the
    file and why not.

    A progressive JPEG is decoded whole when it is opened: libjpeg's warnings on it are
    pending then, and taken before seeking the parts clears them.
    """
    oiio = _oiio()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_PNG_SIGNATURE))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from err
    if not head:
        raise InputError(f"{path}: empty file (0 bytes)")
    damage = _check_png(path) if head == _PNG_SIGNATURE else []
    _error_text()  # drop an error an earlier call left in this thread
    with _reading(path):
        inp = oiio.ImageInput.open(str(path))
        if inp is None:
            raise InputError(f"{path}: cannot open image ({_error_text() or 'unknown format'})")
        try:
            _check_format(path, inp.format_name())
            if inp.format_name() == "jpeg":
                damage += _scan_messages(path, _pending(inp))
        except BaseException:
            inp.close()
            raise
    return inp, damage


def _parts(inp: Any) -> list[Any]:
    specs = []
    index = 0
    while inp.seek_subimage(index, 0):
        specs.append(inp.spec().copy() if hasattr(inp.spec(), "copy") else inp.spec())
        index += 1
    inp.seek_subimage(0, 0)
    _error_text(inp)  # clears the error left by seeking one past the last part
    return specs


def _choose_part(path: Path, specs: list[Any], part: int | str | None) -> int:
    if part is None:
        for i, spec in enumerate(specs):
            names = set(spec.channelnames)
            if {"R", "G", "B"} <= names:
                return i
        return 0
    if isinstance(part, int):
        if not 0 <= part < len(specs):
            raise InputError(f"{path}: no part {part} (file has {len(specs)})")
        return part
    for i, spec in enumerate(specs):
        if spec.get_string_attribute("name") == part:
            return i
    raise InputError(f"{path}: no part named {part!r}")


def _attributes(spec: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for p in spec.extra_attribs:
        try:
            attrs[p.name] = p.value
        except Exception:  # an attribute type the Python binding cannot convert
            continue
    return attrs


def read_image(
    path: str | Path,
    channels: Sequence[str] | None = None,
    part: int | str | None = None,
    *,
    strict: bool = False,
    warn: bool = True,
) -> ImageData:
    """Read an image into its display window.

    Args:
        path: EXR (scanline/tiled, multi-part, layered, any compression), PNG, TIFF, JPEG, DPX...
        channels: names to return (in this order); None = all channels of the part.
        part: EXR part index or name; None = the first part with R, G, B (else part 0).
        strict: refuse a file whose data is damaged but still decodes (`ImageData.damage`:
            libjpeg's "Corrupt JPEG data" warnings, a PNG ancillary chunk failing its CRC).
        warn: when not strict, log one warning naming such a file (False: the caller reports
            `ImageData.damage` itself, e.g. in frame order).

    Returns:
        `ImageData` whose `pixels` are float32 (H, W, C) in the display window. Integer files are
        normalised to 0..1 by OpenImageIO (8-bit /255, 16-bit /65535).

    Raises:
        InputError: one line naming the file for a missing, empty, truncated, corrupt,
            mis-named (a PNG named .exr), deep or volume file, or a folder; with `strict`, also
            for a damaged one.
    """
    image = _read(Path(path), channels, part)[0]
    if image.damage:
        _report_damage(image, strict, warn)
    return image


def _report_damage(image: ImageData, strict: bool, warn: bool) -> None:
    text = "; ".join(image.damage)
    if strict:
        raise InputError(f"{image.path}: {text}; refused (strict decoding)")
    if warn:
        log.warning("%s: %s; read anyway", image.path, text)


def _read(
    path: Path, channels: Sequence[str] | None, part: int | str | None
) -> tuple[ImageData, int]:
    """The image (as `read_image`, its `damage` found but not reported) and its part count."""
    inp, damage = _open(path)
    try:
        with _reading(path):
            image, parts = _read_open(inp, path, channels, part)
    finally:
        inp.close()
    damage += image.damage
    if not damage and image.file_format == "jpeg" and not _jpeg_progressive(path):
        with _reading(path):
            damage = _jpeg_tail(path)
    image.damage = tuple(dict.fromkeys(damage))
    return image, parts


def _check_spec(path: Path, spec: Any) -> None:
    """Windows and sizes a corrupt header can hold, refused before any pixel is allocated."""
    if spec.width < 1 or spec.height < 1 or spec.nchannels < 1:
        raise InputError(
            f"{path}: corrupt header ({spec.width}x{spec.height}, {spec.nchannels} channels)"
        )
    if spec.full_width < 1 or spec.full_height < 1:
        raise InputError(
            f"{path}: corrupt header (display window {spec.full_width}x{spec.full_height})"
        )
    limit_mib = int(_oiio().get_int_attribute("limits:imagesize_MB", 32768))
    mib = spec.full_width * spec.full_height * spec.nchannels * 4 / 2**20
    if limit_mib > 0 and mib > limit_mib:
        raise InputError(
            f"{path}: corrupt header? display window {spec.full_width}x{spec.full_height} "
            f"needs {mib:.0f} MiB (OpenImageIO's limit is {limit_mib} MiB)"
        )


def _read_open(
    inp: Any, path: Path, channels: Sequence[str] | None, part: int | str | None
) -> tuple[ImageData, int]:
    specs = _parts(inp)
    if not specs:
        raise InputError(f"{path}: no image in file ({_error_text(inp) or 'no parts'})")
    index = _choose_part(path, specs, part)
    if not inp.seek_subimage(index, 0):
        raise InputError(f"{path}: cannot seek to part {index} ({_error_text(inp)})")
    spec = inp.spec()
    if spec.deep:
        raise InputError(f"{path}: deep image (not supported; flatten it first)")
    _check_spec(path, spec)
    names = tuple(spec.channelnames)
    if channels is not None:
        missing = [c for c in channels if c not in names]
        if missing:
            raise InputError(f"{path}: no channel {missing[0]!r} (has {', '.join(names)})")
    data = inp.read_image(index, 0, 0, spec.nchannels, "float")
    # A truncated file may come back "read", zeros where scanlines are missing, with an error
    # left pending: any pending error, of the file or of this thread, is a failed read, except
    # libjpeg's warnings, after which it decodes every pixel (damage).
    errors, damage = _read_messages(path, _pending(inp), _pending())
    if data is None or errors:
        reason = _one_line("\n".join(errors)) or "read failed"
        raise InputError(f"{path}: truncated or corrupt ({reason})")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 4:  # volumetric: not an image for us
        raise InputError(f"{path}: volume images are not supported")
    if data.shape != (spec.height, spec.width, spec.nchannels):
        raise InputError(
            f"{path}: truncated or corrupt (read {data.shape[1]}x{data.shape[0]}x{data.shape[2]}"
            f", header says {spec.width}x{spec.height}x{spec.nchannels})"
        )
    display = (spec.full_x, spec.full_y, spec.full_width, spec.full_height)
    window = (spec.x, spec.y, spec.width, spec.height)
    pixels = _place_in_display(data, window, display)
    formats = tuple(str(f) for f in spec.channelformats) or (str(spec.format),) * len(names)
    if channels is not None:
        pixels = np.ascontiguousarray(pixels[..., [names.index(c) for c in channels]])
        formats = tuple(formats[names.index(c)] for c in channels)
        names = tuple(channels)
    image = ImageData(
        path=path,
        pixels=pixels,
        channels=names,
        display_window=display,
        data_window=window,
        channel_formats=formats,
        compression=spec.get_string_attribute("compression"),
        attributes=_attributes(spec),
        file_format=inp.format_name(),
        bits_per_sample=int(spec.get_int_attribute("oiio:BitsPerSample", 0))
        or spec.format.size() * 8,
        part=index,
        part_name=spec.get_string_attribute("name"),
        damage=tuple(damage),
    )
    return image, len(specs)


def _place_in_display(
    data: np.ndarray, window: tuple[int, int, int, int], display: tuple[int, int, int, int]
) -> np.ndarray:
    if window == display:
        return np.ascontiguousarray(data)
    dx, dy, dw, dh = display
    wx, wy, ww, wh = window
    out = np.zeros((dh, dw, data.shape[2]), np.float32)
    x0, y0 = max(wx, dx), max(wy, dy)
    x1, y1 = min(wx + ww, dx + dw), min(wy + wh, dy + dh)
    if x1 > x0 and y1 > y0:
        out[y0 - dy : y1 - dy, x0 - dx : x1 - dx] = data[y0 - wy : y1 - wy, x0 - wx : x1 - wx]
    return out


def read_channels(
    path: str | Path, names: Sequence[str], part: int | str | None = None
) -> np.ndarray:
    """Channels by name, (H, W, len(names)) float32 in the display window."""
    return read_image(path, channels=names, part=part).pixels


def rgb_channel_names(channels: Sequence[str], layer: str = "") -> tuple[str, str, str]:
    """Names of the R, G, B channels of a layer ('' = the main RGB), looked up by name.

    Accepts EXR suffixes (`R`, `diffuse.R`) and Nuke's (`red`, `diffuse.red`).
    """
    prefix = f"{layer}." if layer else ""
    for trio in (("R", "G", "B"), ("red", "green", "blue"), ("r", "g", "b")):
        names = tuple(prefix + c for c in trio)
        if all(n in channels for n in names):
            return names  # type: ignore[return-value]
    if not layer and len(channels) >= 3:
        return tuple(channels[:3])  # type: ignore[return-value]
    if not layer and len(channels) in (1, 2):
        return (channels[0],) * 3  # grey images
    raise InputError(
        f"no RGB channels{' in layer ' + layer if layer else ''} (has {', '.join(channels)})"
    )


def alpha_channel_name(channels: Sequence[str], preferred: str = "A") -> str:
    """The matte channel: `preferred` (A/alpha/any name), else alpha, else the only channel."""
    for name in (preferred, "A", "alpha", "a", "Y"):
        if name in channels:
            return name
    if len(channels) == 1:
        return channels[0]
    if len(channels) == 3:
        return channels[0]  # an RGB matte: white = inside
    return channels[-1]


@dataclass(frozen=True)
class FileReport:
    """What `inspect` learns of one file."""

    path: str
    width: int
    height: int
    display_window: tuple[int, int, int, int]
    data_window: tuple[int, int, int, int]
    channels: tuple[str, ...]
    channel_formats: tuple[str, ...]
    compression: str
    file_format: str
    colourspace: str
    nan_count: int
    inf_count: int
    parts: int
    damage: tuple[str, ...] = ()
    """What is wrong with the file though it decoded (`ImageData.damage`)."""


def inspect(path: str | Path) -> FileReport:
    """Read a file fully and describe it; raises `InputError` on anything unreadable.

    Damage that still decodes is reported in `FileReport.damage`, not logged.
    """
    path = Path(path)
    img, nparts = _read(path, None, None)
    finite = np.isfinite(img.pixels)
    nan_count = int(np.isnan(img.pixels).sum())
    inf_count = int((~finite).sum()) - nan_count
    colourspace = str(img.attributes.get("oiio:ColorSpace", "") or "")
    return FileReport(
        path=str(path),
        width=img.width,
        height=img.height,
        display_window=img.display_window,
        data_window=img.data_window,
        channels=img.channels,
        channel_formats=img.channel_formats,
        compression=img.compression,
        file_format=img.file_format,
        colourspace=colourspace,
        nan_count=nan_count,
        inf_count=inf_count,
        parts=nparts,
        damage=img.damage,
    )


def is_scene_linear_file(image: ImageData) -> bool:
    """Float files (EXR, float TIFF) and DPX/Cineon log are not display-referred 8/16-bit.

    Heuristic for `IngestSettings.colour == "auto"`: EXR/HDR and float/half data are
    scene-linear; 8/16-bit integer PNG/JPEG/TIFF are display-referred sRGB.
    """
    if image.file_format in ("openexr", "hdr"):
        return True
    return any(f in ("half", "float", "double") for f in image.channel_formats)


# --------------------------------------------------------------------------------------------
# Writing

_PIXEL_TYPES = {
    "half": "HALF",
    "float": "FLOAT",
    "uint": "UINT32",
    "uint8": "UINT8",
    "uint16": "UINT16",
}


def write_exr(
    path: str | Path,
    channels: Mapping[str, np.ndarray],
    pixel_types: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    compression: str = "zips",
    data_window: tuple[int, int, int, int] | None = None,
    display_size: tuple[int, int] | None = None,
) -> Path:
    """Write a multi-channel scanline EXR atomically.

    Args:
        path: target file.
        channels: name → (H, W) array; all the same size. When `data_window` is given the arrays
            are the data window's pixels; else they are the full display window.
        pixel_types: name → 'half' | 'float' | 'uint'; default 'half' for colour, 'float' for
            names containing 'uv'.
        attributes: header attributes (int, float, str; names may contain '/').
        compression: lossless only for data: zips, zip, piz, rle, none (or any OpenEXR name for
            colour-only files).
        data_window: (x, y, width, height) of the stored pixels inside the display window.
        display_size: (width, height) of the display window; default = the arrays' size.
    """
    oiio = _oiio()
    path = Path(path)
    names = list(channels)
    if not names:
        raise ValueError("write_exr needs at least one channel")
    arrays = [np.asarray(channels[n], dtype=np.float32) for n in names]
    height, width = arrays[0].shape
    if any(a.shape != (height, width) for a in arrays):
        raise ValueError("write_exr: channels differ in size")
    types = dict(pixel_types or {})
    formats = []
    for n in names:
        kind = types.get(n, "float" if "uv" in n.lower() else "half")
        formats.append(getattr(oiio, _PIXEL_TYPES[kind]))
    same = all(f == formats[0] for f in formats)
    spec = oiio.ImageSpec(width, height, len(names), formats[0] if same else oiio.FLOAT)
    spec.channelnames = tuple(names)
    spec.channelformats = tuple(formats)
    if data_window is not None:
        x, y, w, h = data_window
        if (w, h) != (width, height):
            raise ValueError("write_exr: data_window size differs from the arrays")
        spec.x, spec.y = x, y
    full_w, full_h = display_size or (width, height)
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, full_w, full_h
    spec.attribute("compression", compression)
    for key, value in (attributes or {}).items():
        spec.attribute(key, _attr_value(value))
    data = np.ascontiguousarray(np.stack(arrays, axis=-1))
    _write(oiio, path, spec, data)
    return path


def _attr_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    return str(value)


def _write(oiio: Any, path: Path, spec: Any, data: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        out = oiio.ImageOutput.create(path.suffix.lstrip(".") or str(path))
        if out is None:
            raise InputError(f"{path}: no writer for this file type ({oiio.geterror()})")
        if not out.open(str(tmp), spec):
            raise OSError(f"{path}: cannot write ({out.geterror()})")
        ok = out.write_image(data)
        out.close()
        if not ok:
            raise OSError(f"{path}: write failed ({out.geterror()})")


def write_rgba_exr(
    path: str | Path,
    rgba: np.ndarray,
    attributes: Mapping[str, Any] | None = None,
    compression: str = "zips",
    pixel_type: str = "half",
) -> Path:
    """Write (H, W, 3|4) colour as R, G, B[, A] EXR atomically."""
    names = ["R", "G", "B", "A"][: rgba.shape[2]]
    return write_exr(
        path,
        {n: rgba[..., i] for i, n in enumerate(names)},
        pixel_types={n: pixel_type for n in names},
        attributes=attributes,
        compression=compression,
    )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float 0..1 → uint8 with rounding; uint8 passes through."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an 8-bit PNG (values already display-encoded: float 0..1 or uint8), atomically."""
    oiio = _oiio()
    path = Path(path)
    data = to_uint8(np.asarray(image))
    if data.ndim == 2:
        data = data[..., None]
    h, w, c = data.shape
    spec = oiio.ImageSpec(w, h, c, oiio.UINT8)
    _write(oiio, path, spec, np.ascontiguousarray(data))
    return path


def write_image(path: str | Path, image: np.ndarray, bits: int = 16) -> Path:
    """Write PNG/TIFF/DPX/JPEG from float 0..1 (H, W, C) with `bits` per sample, atomically."""
    oiio = _oiio()
    path = Path(path)
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]
    h, w, c = data.shape
    fmt = {8: oiio.UINT8, 10: oiio.UINT16, 16: oiio.UINT16, 32: oiio.FLOAT}[bits]
    spec = oiio.ImageSpec(w, h, c, fmt)
    if bits == 10:
        spec.attribute("oiio:BitsPerSample", 10)
    _write(oiio, path, spec, np.ascontiguousarray(data))
    return path


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample (H, W, C) float32 to (height, width): area filter down, bilinear up."""
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image.astype(np.float32, copy=False)
    interp = cv2.INTER_AREA if width < w and height < h else cv2.INTER_LINEAR
    out = cv2.resize(
        np.ascontiguousarray(image, dtype=np.float32), (width, height), interpolation=interp
    )
    if out.ndim == 2 and image.ndim == 3:
        out = out[..., None]
    return out


def working_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Working resolution with the plate's aspect ratio and the given long side (never upscales)."""
    scale = min(1.0, long_side / max(width, height))
    return max(8, int(math.floor(width * scale + 0.5))), max(
        8, int(math.floor(height * scale + 0.5))
    )
