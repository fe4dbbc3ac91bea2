"""rna_engine.media.io: sequences, EXR layers/parts/windows, atomic writes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

from rna_engine.errors import InputError
from rna_engine.media import io


def test_frame_ranges_follow_nuke_syntax() -> None:
    assert io.parse_frame_range("1001-1004") == [1001, 1002, 1003, 1004]
    assert io.parse_frame_range("1-10x3 20") == [1, 4, 7, 10, 20]
    assert io.parse_frame_range("5,3 3") == [3, 5]
    assert io.format_frame_range([1, 2, 3, 7, 9, 10]) == "1-3 7 9-10"
    with pytest.raises(InputError, match="runs backwards"):
        io.parse_frame_range("10-1")
    with pytest.raises(InputError, match="cannot read"):
        io.parse_frame_range("1-a")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("shot.####.exr", "shot.0042.exr"),
        ("shot.%05d.exr", "shot.00042.exr"),
        ("shot.@@@.exr", "shot.042.exr"),
        ("shot.@.exr", "shot.42.exr"),
        ("shot.%d.exr", "shot.42.exr"),
        ("shot.#.exr", "shot.42.exr"),
        ("#####.jpg", "00042.jpg"),
        ("frames/%05d.png", "frames/00042.png"),
        ("/plates/a#b/@@@@.exr", "/plates/a#b/0042.exr"),
        ("shot010_v2.####.exr", "shot010_v2.0042.exr"),
    ],
)
def test_patterns_take_padding_from_the_pattern(pattern: str, expected: str) -> None:
    assert io.frame_path(pattern, 42) == Path(expected)


@pytest.mark.parametrize(
    ("pattern", "frame", "expected"),
    [
        ("p.####.exr", -1, "p.-001.exr"),  # Nuke's and printf's %04d: the sign counts
        ("p.####.exr", -1234, "p.-1234.exr"),
        ("p.####.exr", 12345, "p.12345.exr"),  # padding is a minimum width
        ("p.%d.exr", -7, "p.-7.exr"),
        ("#####.jpg", 0, "00000.jpg"),
    ],
)
def test_negative_and_wide_frames_are_written_as_nuke_writes_them(
    pattern: str, frame: int, expected: str
) -> None:
    assert io.frame_path(pattern, frame) == Path(expected)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_find_frames_and_missing_frames(tmp_path: Path) -> None:
    for f in (1, 2, 4):
        io.write_exr(tmp_path / f"p.{f:04d}.exr", {"R": np.full((4, 5), f, np.float32)})
    (tmp_path / "p.0003.exr.tmp").write_text("not a frame")
    (tmp_path / "p.00003.exr").write_text("other padding: not frame 3")
    found = io.find_frames(tmp_path / "p.####.exr")
    assert found == {f: tmp_path / f"p.{f:04d}.exr" for f in (1, 2, 4)}
    with pytest.raises(InputError, match=r"p\.0003\.exr: frame 3 is missing"):
        io.resolve_sequence(tmp_path / "p.####.exr", "1-4")
    assert sorted(io.resolve_sequence(tmp_path / "p.####.exr", "1-2")) == [1, 2]


def test_bare_frame_numbers_in_a_folder_start_at_zero(tmp_path: Path) -> None:
    _touch(tmp_path / "frames", "00000.jpg", "00001.jpg", "00002.jpg", "00000.png", "x00003.jpg")
    found = io.find_frames(tmp_path / "frames" / "#####.jpg")
    assert found == {f: tmp_path / "frames" / f"{f:05d}.jpg" for f in (0, 1, 2)}
    assert io.find_frames(f"{tmp_path}/frames/%05d.jpg") == found
    assert sorted(io.resolve_sequence(tmp_path / "frames" / "#####.jpg", "0-1")) == [0, 1]


def test_bare_frame_numbers_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(tmp_path, "0007.exr", "0008.exr", "notes.txt")
    _touch(tmp_path / "frames", "00000.jpg", "00001.jpg")
    monkeypatch.chdir(tmp_path)
    assert io.find_frames("@@@@.exr") == {7: Path("0007.exr"), 8: Path("0008.exr")}
    assert io.find_frames("####.exr") == {7: Path("0007.exr"), 8: Path("0008.exr")}
    assert io.find_frames("frames/#####.jpg") == {
        0: Path("frames/00000.jpg"),
        1: Path("frames/00001.jpg"),
    }
    assert io.find_frames("./frames/#####.jpg") == io.find_frames("frames/#####.jpg")
    with pytest.raises(InputError, match=r"^#####\.jpg: no files found$"):
        io.resolve_sequence("#####.jpg")
    with pytest.raises(InputError, match=r"no folder nope"):
        io.resolve_sequence("nope/#####.jpg")


def test_unpadded_printf_matches_only_unpadded_names(tmp_path: Path) -> None:
    _touch(tmp_path, "f.1.exr", "f.10.exr", "f.100.exr", "f.0002.exr", "f.-3.exr", "f..exr")
    assert sorted(io.find_frames(tmp_path / "f.%d.exr")) == [-3, 1, 10, 100]
    assert sorted(io.find_frames(tmp_path / "f.#.exr")) == [-3, 1, 10, 100]
    # a single @ takes any padding
    assert sorted(io.find_frames(tmp_path / "f.@.exr")) == [-3, 1, 2, 10, 100]


def test_mixed_padding_does_not_match_a_fixed_padding_pattern(tmp_path: Path) -> None:
    _touch(tmp_path, "m.0001.exr", "m.00002.exr", "m.003.exr", "m.12345.exr", "m.-001.exr")
    _touch(tmp_path, "m.-0002.exr")  # Nuke writes -2 as -002 with ####
    assert sorted(io.find_frames(tmp_path / "m.####.exr")) == [-1, 1, 12345]
    assert sorted(io.find_frames(tmp_path / "m.%05d.exr")) == [-2, 2, 12345]
    assert sorted(io.find_frames(tmp_path / "m.@@@.exr")) == [3, 12345]


def test_any_padding_refuses_two_files_for_one_frame(tmp_path: Path) -> None:
    _touch(tmp_path, "a.1.exr", "a.01.exr")
    with pytest.raises(InputError, match=r"a\.1\.exr: frame 1 is also a\.01\.exr"):
        io.find_frames(tmp_path / "a.@.exr")


def test_digits_in_the_prefix_are_not_the_frame(tmp_path: Path) -> None:
    _touch(tmp_path, "shot010_v2.1001.exr", "shot010_v2.1002.exr", "shot010_v3.1003.exr")
    _touch(tmp_path, "shot010_v21001.exr")
    found = io.find_frames(tmp_path / "shot010_v2.####.exr")
    assert found == {f: tmp_path / f"shot010_v2.{f}.exr" for f in (1001, 1002)}
    seq = io.parse_pattern("a/shot010_v2.####.exr")
    assert seq is not None and (seq.folder, seq.prefix, seq.padding) == ("a/", "shot010_v2.", 4)


def test_negative_frames_resolve_through_a_range(tmp_path: Path) -> None:
    _touch(tmp_path, *(f"n.{f:04d}.exr" for f in range(-3, 3)))
    assert (tmp_path / "n.-003.exr").exists()
    found = io.resolve_sequence(tmp_path / "n.####.exr", "-2--1 1")
    assert found == {
        -2: tmp_path / "n.-002.exr",
        -1: tmp_path / "n.-001.exr",
        1: tmp_path / "n.0001.exr",
    }
    assert io.format_frame_range(sorted(io.find_frames(tmp_path / "n.####.exr"))) == "-3-2"
    assert io.parse_frame_range("-3-2") == [-3, -2, -1, 0, 1, 2]


def test_a_single_file_is_frame_zero_and_is_not_a_pattern(tmp_path: Path) -> None:
    _touch(tmp_path, "roi.exr")
    assert io.parse_pattern(tmp_path / "roi.exr") is None
    assert io.find_frames(tmp_path / "roi.exr") == {0: tmp_path / "roi.exr"}
    assert io.resolve_sequence(tmp_path / "roi.exr", "1001-1010") == {0: tmp_path / "roi.exr"}


def test_exr_round_trip_named_channels_types_and_attributes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    uv = rng.random((6, 7)).astype(np.float32) * 4096
    matte = rng.random((6, 7)).astype(np.float32)
    path = io.write_exr(
        tmp_path / "a.exr",
        {"rna_uv.u": uv, "rna_matte.m": matte, "rna_shade.red": matte * 2},
        pixel_types={"rna_uv.u": "float", "rna_matte.m": "half", "rna_shade.red": "half"},
        attributes={"rna/frame": 1001, "rna/uv_convention": "stmap", "rna/scale": 0.5},
        compression="piz",
    )
    img = io.read_image(path)
    # OpenEXR sorts channels: lookups must be by name.
    assert img.channels == ("rna_matte.m", "rna_shade.red", "rna_uv.u")
    np.testing.assert_array_equal(img.channel("rna_uv.u"), uv)  # FLOAT32 is exact
    assert np.abs(img.channel("rna_matte.m") - matte).max() < 1e-3  # half
    assert dict(zip(img.channels, img.channel_formats, strict=True))["rna_uv.u"] == "float"
    assert img.channel_formats[0] == "half"
    assert img.attributes["rna/frame"] == 1001
    assert img.attributes["rna/uv_convention"] == "stmap"
    assert img.compression == "piz"
    sel = io.read_channels(path, ["rna_uv.u", "rna_matte.m"])
    np.testing.assert_array_equal(sel[..., 0], uv)


def test_data_window_is_placed_in_display_window(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    path = io.write_exr(
        tmp_path / "w.exr", {"Y": data}, data_window=(4, 1, 3, 2), display_size=(8, 5)
    )
    img = io.read_image(path)
    assert img.pixels.shape == (5, 8, 1)
    assert img.data_window == (4, 1, 3, 2)
    np.testing.assert_array_equal(img.pixels[1:3, 4:7, 0], data)
    assert img.pixels.sum() == data.sum()  # zero outside the data window


def test_overscan_is_cropped_to_display_window(tmp_path: Path) -> None:
    spec = oiio.ImageSpec(6, 4, 1, oiio.FLOAT)
    spec.channelnames = ("Y",)
    spec.x, spec.y = -1, -1
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, 4, 2
    path = str(tmp_path / "o.exr")
    out = oiio.ImageOutput.create(path)
    out.open(path, spec)
    out.write_image(np.arange(24, dtype=np.float32).reshape(4, 6, 1))
    out.close()
    img = io.read_image(path)
    assert img.pixels.shape == (2, 4, 1)
    np.testing.assert_array_equal(img.pixels[..., 0], [[7, 8, 9, 10], [13, 14, 15, 16]])


def test_multipart_chooses_first_part_with_rgb_or_named_part(tmp_path: Path) -> None:
    path = str(tmp_path / "mp.exr")
    depth = oiio.ImageSpec(4, 3, 1, oiio.FLOAT)
    depth.channelnames = ("Z",)
    depth.attribute("name", "depth")
    beauty = oiio.ImageSpec(4, 3, 4, oiio.HALF)
    beauty.channelnames = ("R", "G", "B", "A")
    beauty.attribute("name", "beauty")
    out = oiio.ImageOutput.create(path)
    assert out.open(path, [depth, beauty])
    out.write_image(np.full((3, 4, 1), 7.0, np.float32))
    assert out.open(path, beauty, "AppendSubimage")
    out.write_image(np.full((3, 4, 4), 0.5, np.float32))
    out.close()
    img = io.read_image(path)
    assert img.part == 1 and img.part_name == "beauty"
    assert io.rgb_channel_names(img.channels) == ("R", "G", "B")
    assert float(io.read_image(path, part="depth").channel("Z").mean()) == 7.0
    with pytest.raises(InputError, match="no part named 'nope'"):
        io.read_image(path, part="nope")


def test_layered_channels_are_found_by_layer(tmp_path: Path) -> None:
    path = io.write_exr(
        tmp_path / "l.exr",
        {
            "diffuse.R": np.full((2, 2), 1.0),
            "diffuse.G": np.full((2, 2), 2.0),
            "diffuse.B": np.full((2, 2), 3.0),
            "R": np.zeros((2, 2)),
            "G": np.zeros((2, 2)),
            "B": np.zeros((2, 2)),
        },
    )
    img = io.read_image(path)
    names = io.rgb_channel_names(img.channels, "diffuse")
    assert names == ("diffuse.R", "diffuse.G", "diffuse.B")
    assert img.select(names)[0, 0].tolist() == [1.0, 2.0, 3.0]


def test_tiled_exr_and_8_16_bit_images(tmp_path: Path) -> None:
    spec = oiio.ImageSpec(40, 30, 3, oiio.HALF)
    spec.tile_width = spec.tile_height = 16
    path = str(tmp_path / "t.exr")
    out = oiio.ImageOutput.create(path)
    out.open(path, spec)
    data = np.random.default_rng(1).random((30, 40, 3)).astype(np.float32)
    out.write_image(data)
    out.close()
    assert np.abs(io.read_image(path).pixels - data).max() < 1e-3
    io.write_image(tmp_path / "a.png", data, bits=16)
    assert np.abs(io.read_image(tmp_path / "a.png").pixels - data).max() < 1e-4
    io.write_png(tmp_path / "b.png", data)
    assert np.abs(io.read_image(tmp_path / "b.png").pixels - data).max() <= 0.5 / 255 + 1e-6
    io.write_image(tmp_path / "c.tif", data, bits=16)
    assert io.read_image(tmp_path / "c.tif").pixels.shape == (30, 40, 3)
    io.write_image(tmp_path / "d.dpx", data, bits=10)
    assert np.abs(io.read_image(tmp_path / "d.dpx").pixels - data).max() < 2e-3


def test_writes_are_atomic(tmp_path: Path) -> None:
    target = tmp_path / "x.exr"
    io.write_exr(target, {"R": np.ones((3, 3))})
    before = target.read_bytes()
    with pytest.raises(ValueError):
        io.write_exr(target, {"R": np.ones((3, 3)), "G": np.ones((2, 2))})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.exr"]  # no temp left behind


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing", "folder"])
def test_bad_files_raise_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    good = io.write_exr(tmp_path / "good.exr", {"R": np.ones((64, 64))}, compression="none")
    bad = tmp_path / "bad.exr"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"\x76\x2f\x31\x01" + b"nonsense" * 20)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "folder":
        bad.mkdir()
    with pytest.raises(InputError) as err:
        io.read_image(bad)
    assert "bad.exr" in str(err.value) and "\n" not in str(err.value)


def test_deep_exr_is_rejected(tmp_path: Path) -> None:
    spec = oiio.ImageSpec(2, 2, 1, oiio.FLOAT)
    spec.channelnames = ("Z",)
    spec.deep = True
    path = str(tmp_path / "deep.exr")
    out = oiio.ImageOutput.create(path)
    assert out.open(path, spec)
    dd = oiio.DeepData()
    dd.init(4, 1, (oiio.FLOAT,), ("Z",))
    out.write_deep_image(dd)
    out.close()
    with pytest.raises(InputError, match="deep.exr: deep image"):
        io.read_image(path)


def test_inspect_reports_nan_and_inf(tmp_path: Path) -> None:
    data = np.ones((3, 3), np.float32)
    data[0, 0] = np.nan
    data[1, 1] = np.inf
    report = io.inspect(io.write_exr(tmp_path / "n.exr", {"R": data}, pixel_types={"R": "float"}))
    assert (report.nan_count, report.inf_count) == (1, 1)


CLIPS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "clips"


@pytest.mark.slow
def test_a_davis_clip_of_bare_frame_numbers_is_a_sequence_from_zero() -> None:
    frames_dir = CLIPS / "bear" / "frames"
    if not frames_dir.is_dir():
        pytest.skip("../shared/data/clips/bear is not here")
    names = sorted(p.name for p in frames_dir.iterdir() if p.suffix == ".jpg")
    found = io.find_frames(frames_dir / "#####.jpg")
    assert [p.name for p in found.values()] == names
    assert sorted(found) == list(range(len(names)))
    first = io.read_image(found[0])
    assert first.file_format == "jpeg" and first.pixels.shape[2] == 3
