"""Broken image files exit 2 with one line naming the file (issue #14): `rna-engine info`, reads.

Every file here is written by the test: a real EXR, PNG or JPEG cut short at several offsets,
garbage, a wrong magic number, an empty file, a PNG named .exr, a folder named like a frame and
an EXR header whose error message is not UTF-8. Damage that still decodes (issue #35 item 6):
a JPEG with a flipped bit in its entropy-coded data or bytes its decoder never reaches, a PNG
ancillary chunk failing its CRC; warned about by name, refused with `strict` / `--strict`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rna_engine.cli import main
from rna_engine.errors import InputError
from rna_engine.media import io
from rna_engine.pipeline import ingest, prepare, validate_inputs
from rna_engine.runtime.context import RunContext
from rna_engine.settings import spec_from_dict
from rna_engine.stages.inputs import resolve_inputs

ROOT = Path(__file__).resolve().parents[2]
EXR_MAGIC = b"\x76\x2f\x31\x01"


def _rgb(width: int = 40, height: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def _good(folder: Path, kind: str) -> Path:
    """A real file of `kind` (exr, png, jpg) that reads back."""
    rgb = _rgb()
    if kind == "exr":
        path = io.write_exr(folder / "good.exr", {c: rgb[..., i] for i, c in enumerate("RGB")})
    elif kind == "png":
        path = io.write_png(folder / "good.png", rgb)
    else:
        path = io.write_image(folder / "good.jpg", rgb, bits=8)
    assert io.read_image(path).pixels.shape == (30, 40, 3)
    return path


def _cut(keep: Callable[[int], int]) -> Callable[[bytes], bytes]:
    return lambda data: data[: keep(len(data))]


TRUNCATIONS = {
    "8 bytes": _cut(lambda n: 8),
    "half": _cut(lambda n: n // 2),
    "last 100 bytes": _cut(lambda n: n - 100),
}


def _bad_file(folder: Path, case: str) -> Path:
    """A broken file for `case`, named like a frame of a plate."""
    if case.startswith("truncated "):
        kind, how = case.removeprefix("truncated ").split(" ", 1)
        good = _good(folder, kind)
        path = folder / f"plate.0002.{kind}"
        path.write_bytes(TRUNCATIONS[how](good.read_bytes()))
        return path
    path = folder / "plate.0002.exr"
    if case == "garbage header":
        path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    elif case == "wrong magic":
        path.write_bytes(b"\x00\x00\x00\x00" + _good(folder, "exr").read_bytes()[4:])
    elif case == "zero bytes":
        path.write_bytes(b"")
    elif case == "png named exr":
        path.write_bytes(_good(folder, "png").read_bytes())
    elif case == "folder":
        path.mkdir()
    elif case == "header not utf-8":
        # An attribute whose name holds bytes that are not UTF-8: OpenEXR quotes it in its error
        # message, which OpenImageIO's binding then failed to decode (exit 1, issue #14).
        path.write_bytes(
            EXR_MAGIC
            + b"\x02\x00\x00\x00"
            + b"chan\xfe\xffels\x00chlist\x00"
            + (1000).to_bytes(4, "little")
            + b"\x00" * 16
        )
    else:
        raise AssertionError(case)
    return path


CASES = [f"truncated {kind} {how}" for kind in ("exr", "png", "jpg") for how in TRUNCATIONS]
CASES += ["garbage header", "wrong magic", "zero bytes", "png named exr", "folder"]
CASES += ["header not utf-8"]


@pytest.mark.parametrize("case", CASES)
def test_info_on_a_broken_file_exits_2_with_one_line_naming_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    path = _bad_file(tmp_path, case)
    capfd.readouterr()
    # capfd, not capsys: a C library writing to fd 2 (libpng does) would be a second line.
    assert main(["info", str(path)]) == 2
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    assert "Traceback" not in err and "internal error" not in err
    assert out == ""


@pytest.mark.parametrize("case", CASES)
def test_read_image_raises_input_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = _bad_file(tmp_path, case)
    with pytest.raises(InputError) as err:
        io.read_image(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("truncated exr half", "truncated or corrupt"),
        ("truncated exr last 100 bytes", "truncated or corrupt"),
        ("truncated png 8 bytes", "truncated PNG"),
        ("truncated png last 100 bytes", "truncated PNG"),
        ("truncated jpg half", "truncated or corrupt"),
        ("zero bytes", "empty file (0 bytes)"),
        ("png named exr", "a PNG file named .exr; rename it to .png"),
        ("folder", "is a folder, not an image"),
        ("header not utf-8", "Attribute 'chan\ufffd\ufffdels'"),
    ],
)
def test_the_line_says_what_is_wrong(tmp_path: Path, case: str, reason: str) -> None:
    path = _bad_file(tmp_path, case)
    with pytest.raises(InputError) as err:
        io.inspect(path)
    assert reason in str(err.value)


def test_a_corrupt_png_chunk_is_found_by_its_crc(tmp_path: Path) -> None:
    data = bytearray(_good(tmp_path, "png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0x55
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        io.read_image(path)
    assert str(err.value) == f"{path}: corrupt PNG (chunk IDAT at byte {idat - 4} fails its CRC)"


@pytest.mark.parametrize("case", ["truncated exr half", "header not utf-8", "truncated png half"])
def test_info_in_a_real_process_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    path = _bad_file(tmp_path, case)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RNA_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "rna_engine", "info", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0], done.stderr
    assert done.stdout == ""


def test_info_on_a_sequence_names_the_broken_frame(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rgb = _rgb()
    for frame in range(4):
        io.write_png(tmp_path / f"{frame:05d}.png", rgb)
    culprit = tmp_path / "00002.png"
    culprit.write_bytes(culprit.read_bytes()[:-100])
    capfd.readouterr()
    assert main(["info", str(tmp_path / "#####.png")]) == 2
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert f"{culprit}: truncated PNG" in lines[0]


def test_a_folder_named_like_a_frame_is_named_not_skipped(tmp_path: Path) -> None:
    rgb = _rgb()
    for frame in (1, 3):
        io.write_exr(tmp_path / f"p.{frame:04d}.exr", {c: rgb[..., i] for i, c in enumerate("RGB")})
    (tmp_path / "p.0002.exr").mkdir()
    found = io.resolve_sequence(tmp_path / "p.####.exr", "1-3")
    assert sorted(found) == [1, 2, 3]
    with pytest.raises(InputError, match=r"p\.0002\.exr: is a folder, not an image$"):
        io.read_image(found[2])


def _plate(folder: Path, frames: range, culprit: int, kind: str = "exr") -> dict:
    """A 32x24 plate (`kind` files) with frame `culprit` truncated, an ROI and a build spec."""
    rgb = _rgb(32, 24)
    (folder / "plate").mkdir()
    for frame in frames:
        path = folder / "plate" / f"plate.{frame:04d}.{kind}"
        if kind == "exr":
            io.write_exr(path, {c: rgb[..., i] for i, c in enumerate("RGB")}, compression="none")
        else:
            io.write_png(path, rgb)
    bad = folder / "plate" / f"plate.{culprit:04d}.{kind}"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    roi = np.zeros((24, 32), np.float32)
    roi[6:18, 8:24] = 1.0
    io.write_exr(folder / "roi.exr", {"A": roi})
    return {
        "plate": str(folder / "plate" / f"plate.####.{kind}"),
        "roi": str(folder / "roi.exr"),
        "reference_frame": frames[0],
        "settings": {"preset": "draft", "ingest": {"working_long_side": 32}},
    }


@pytest.mark.parametrize("kind", ["exr", "png"])
@pytest.mark.parametrize("workers", [1, 3])
def test_ingest_names_a_truncated_middle_frame(tmp_path: Path, kind: str, workers: int) -> None:
    spec = spec_from_dict(_plate(tmp_path, range(1001, 1007), culprit=1004, kind=kind))
    inputs = resolve_inputs(spec)
    validate_inputs(inputs, spec.settings.ingest)  # cheap checks read the first frame only
    with pytest.raises(InputError) as err:
        ingest(inputs, spec.settings.ingest, RunContext(io_workers=workers))
    culprit = tmp_path / "plate" / f"plate.1004.{kind}"
    assert str(err.value).startswith(f"{culprit}: truncated")
    assert "\n" not in str(err.value)


def test_validate_inputs_names_a_truncated_first_frame(tmp_path: Path) -> None:
    spec = spec_from_dict(_plate(tmp_path, range(1001, 1004), culprit=1001))
    with pytest.raises(InputError) as err:
        prepare(spec)  # resolving and validating the inputs, before any folder is made
    assert str(err.value).startswith(f"{tmp_path / 'plate' / 'plate.1001.exr'}: truncated")


# -- damage that still decodes (issue #35 item 6) ------------------------------------------


def _jpeg(path: Path, progressive: bool = False) -> Path:
    """A 64x48 textured JPEG (quality 90), baseline or progressive, written by OpenImageIO."""
    import OpenImageIO as oiio

    yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
    rgb = np.stack([xx / 64, yy / 48, 0.5 + 0.3 * np.sin(xx / 5) * np.cos(yy / 3)], axis=-1)
    rgb = np.clip(rgb + _rgb(64, 48) * 0.1, 0, 1)
    spec = oiio.ImageSpec(64, 48, 3, oiio.UINT8)
    spec.attribute("Compression", "jpeg:90")
    if progressive:
        spec.attribute("jpeg:progressive", 1)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec) and out.write_image(rgb) and out.close()
    return path


def _scan_start(data: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the first SOS header)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _flipped_jpeg(folder: Path, progressive: bool) -> tuple[Path, np.ndarray]:
    """A JPEG with one bit flipped in its entropy-coded data that libjpeg warns about, and the
    clean file's pixels: the first such flip, walking the data in steps of 7 bytes."""
    good = _jpeg(folder / "clean.jpg", progressive)
    clean = io.read_image(good).pixels
    data = good.read_bytes()
    path = folder / "plate.0007.jpg"
    for pos in range(_scan_start(data) + 8, len(data) - 2, 7):
        blob = bytearray(data)
        blob[pos] ^= 0x10
        path.write_bytes(bytes(blob))
        try:
            if io.read_image(path, warn=False).damage:
                return path, clean
        except InputError:
            continue
    raise AssertionError("no flipped bit that libjpeg warns about")


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_clean_jpeg_reads_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, progressive: bool
) -> None:
    path = _jpeg(tmp_path / "clean.jpg", progressive)
    with caplog.at_level(logging.WARNING, logger="rna_engine"):
        image = io.read_image(path, strict=True)
    assert image.damage == () and image.pixels.shape == (48, 64, 3)
    assert caplog.records == []


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_a_corrupt_entropy_segment_is_warned_about_by_name_and_refused_when_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, progressive: bool
) -> None:
    path, clean = _flipped_jpeg(tmp_path, progressive)
    with caplog.at_level(logging.WARNING, logger="rna_engine"):
        image = io.read_image(path)
    assert not np.array_equal(image.pixels, clean)  # read, with other pixels
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: corrupt JPEG data, pixels may be wrong (libjpeg: ")
    assert lines[0].endswith("; read anyway")
    with pytest.raises(InputError) as err:
        io.read_image(path, strict=True)
    assert str(err.value).startswith(f"{path}: corrupt JPEG data")
    assert str(err.value).endswith("refused (strict decoding)") and "\n" not in str(err.value)


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_data_the_decoder_never_reached_is_found(tmp_path: Path, progressive: bool) -> None:
    # Bytes between the last block and the end marker: OpenImageIO stops a baseline JPEG at its
    # last scanline, so only the pass that reads to the end marker sees them.
    data = _jpeg(tmp_path / "clean.jpg", progressive).read_bytes()
    path = tmp_path / "plate.0003.jpg"
    path.write_bytes(data[:-2] + bytes(range(1, 101)) + data[-2:])
    (damage,) = io.read_image(path, warn=False).damage
    assert re.fullmatch(
        r"corrupt JPEG data, pixels may be wrong \(libjpeg: \d+ extraneous bytes before "
        r"marker 0xd9\)",
        damage,
    ), damage


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("strict", [False, True])
def test_a_truncated_jpeg_is_refused_by_name_strict_or_not(
    tmp_path: Path, progressive: bool, strict: bool
) -> None:
    # A progressive JPEG is decoded when opened; its "Premature end of JPEG file" was dropped.
    data = _jpeg(tmp_path / "clean.jpg", progressive).read_bytes()
    path = tmp_path / "plate.0004.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError) as err:
        io.read_image(path, strict=strict)
    assert str(err.value) == f"{path}: truncated or corrupt (Premature end of JPEG file)"


def test_a_png_ancillary_chunk_failing_its_crc_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _good(tmp_path, "png")
    data = bytearray(good.read_bytes())
    gama = data.index(b"gAMA")
    data[gama + 5] ^= 0x01  # the gamma value: libpng skips the chunk, the pixels are intact
    path = tmp_path / "plate.0005.png"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="rna_engine"):
        image = io.read_image(path)
    np.testing.assert_array_equal(image.pixels, io.read_image(good).pixels)
    expected = f"corrupt PNG chunk gAMA at byte {gama - 4} (fails its CRC; libpng skips it"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: {expected}, the pixels are intact); read anyway"
    ]
    with pytest.raises(InputError, match=re.escape(f"{path}: {expected}")):
        io.read_image(path, strict=True)


def test_info_lists_a_damaged_frame_and_exits_0(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path, _ = _flipped_jpeg(tmp_path, progressive=False)
    capfd.readouterr()
    assert main(["info", str(path)]) == 0
    out, err = capfd.readouterr()
    assert err == ""  # reported once, in the listing, not logged as well
    assert f"  warning      {path}: corrupt JPEG data, pixels may be wrong (libjpeg: " in out
    assert main(["info", str(path), "--json"]) == 0
    damaged = json.loads(capfd.readouterr().out)["damaged"]
    assert [d["path"] for d in damaged] == [str(path)]


def _jpeg_plate(folder: Path, damaged: int) -> dict:
    """Three 64x48 JPEG frames, frame `damaged` with data its decoder never reaches, and a
    build spec for them."""
    data = _jpeg(folder / "clean.jpg").read_bytes()
    (folder / "plate").mkdir()
    for frame in (1, 2, 3):
        blob = data[:-2] + b"\x01" * 50 + data[-2:] if frame == damaged else data
        (folder / "plate" / f"plate.{frame:04d}.jpg").write_bytes(blob)
    roi = np.zeros((48, 64), np.float32)
    roi[12:36, 16:48] = 1.0
    io.write_exr(folder / "roi.exr", {"A": roi})
    return {
        "plate": str(folder / "plate" / "plate.####.jpg"),
        "roi": str(folder / "roi.exr"),
        "reference_frame": 1,
        "out": str(folder / "cache"),
        "settings": {
            "preset": "draft",
            "ingest": {"working_long_side": 64},
            "fit": {"pretrain_steps": 0, "iterations": 1, "scale_with_shot": False},
            "refine": {"iterations": 0},
        },
    }


def test_build_strict_sets_the_setting_with_options_and_with_a_spec(tmp_path: Path) -> None:
    from rna_engine.cli import build_parser
    from rna_engine.commands.build import spec_from_args

    options = ["build", "--plate", "p.####.jpg", "--roi", "r.exr", "--ref", "1"]
    parse = build_parser().parse_args
    assert spec_from_args(parse(options)).settings.ingest.strict_decode is False
    assert spec_from_args(parse([*options, "--strict"])).settings.ingest.strict_decode is True
    (tmp_path / "spec.json").write_text(json.dumps(_jpeg_plate(tmp_path, damaged=0)))
    spec = spec_from_args(parse(["build", "--spec", str(tmp_path / "spec.json"), "--strict"]))
    assert spec.settings.ingest.strict_decode is True
    assert spec.settings.ingest.working_long_side == 64  # the rest of the spec is kept


@pytest.mark.timeout(60)  # a build that did start would run on
def test_build_strict_exits_2_naming_a_damaged_first_frame(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(_jpeg_plate(tmp_path, damaged=1)))
    capfd.readouterr()
    assert main(["build", "--spec", str(tmp_path / "spec.json"), "--strict"]) == 2
    lines = capfd.readouterr().err.splitlines()
    culprit = tmp_path / "plate" / "plate.0001.jpg"
    assert len(lines) == 1 and lines[0].startswith(f"rna-engine: {culprit}: corrupt JPEG data")
    assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_ingest_warns_once_naming_a_damaged_middle_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = spec_from_dict(_jpeg_plate(tmp_path, damaged=2))
    inputs = resolve_inputs(spec)
    with caplog.at_level(logging.WARNING, logger="rna_engine"):
        ingest(inputs, spec.settings.ingest, RunContext(io_workers=2))
    culprit = tmp_path / "plate" / "plate.0002.jpg"
    warned = [r.getMessage() for r in caplog.records if "corrupt JPEG" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{culprit}: corrupt JPEG data"), warned


def test_build_strict_refuses_a_damaged_middle_frame_and_leaves_no_version_folder(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(_jpeg_plate(tmp_path, damaged=2)))
    capfd.readouterr()
    assert main(["build", "--spec", str(tmp_path / "spec.json"), "--strict"]) == 2
    last = capfd.readouterr().err.strip().splitlines()[-1]
    culprit = tmp_path / "plate" / "plate.0002.jpg"
    assert last.startswith(f"rna-engine: {culprit}: corrupt JPEG data"), last
    build_dir = tmp_path / "cache" / "shot"  # made and probed before the plate is read
    assert build_dir.is_dir() and list(build_dir.iterdir()) == []
