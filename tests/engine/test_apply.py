"""RNAApply math and `rna-engine apply` (rna_engine/apply.py), on small hand-made caches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from rna_engine import CACHE_FORMAT_VERSION
from rna_engine.apply import (
    APPLY_FILTERS,
    ApplySettings,
    apply_frame,
    output_pixel_types,
    read_edited_atlas,
)
from rna_engine.cli import main
from rna_engine.errors import InputError
from rna_engine.media import io
from rna_engine.media.cache import MASK, MATTE, SHADE, UV_U, UV_V, BuildPaths
from rna_engine.media.colour import srgb_to_linear
from rna_engine.media.stmap import identity_stmap

H, W = 24, 32
FRAMES = (1001, 1002)


def _passes(uv: np.ndarray, matte: np.ndarray, shade: np.ndarray) -> dict[str, np.ndarray]:
    return {
        UV_U: uv[..., 0],
        UV_V: uv[..., 1],
        MATTE: matte,
        MASK: (matte > 0.5) * 1.0,
        SHADE[0]: shade[..., 0],
        SHADE[1]: shade[..., 1],
        SHADE[2]: shade[..., 2],
    }


def _scene(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    matte = np.clip((10.0 - np.hypot(x - 16, y - 12)) / 3.0, 0.0, 1.0).astype(np.float32)
    shade = np.stack(
        [0.8 + 0.1 * np.sin(x / 5), 0.9 + 0.05 * np.cos(y / 4), np.full_like(x, 1.1)], axis=-1
    ).astype(np.float32)
    return {
        # values exact in half, so a plate survives any EXR round trip bit for bit
        "plate": rng.uniform(0.1, 0.9, (H, W, 3)).astype(np.float16).astype(np.float32),
        "atlas": rng.uniform(0.0, 1.0, (H, W, 4)).astype(np.float32),
        "matte": matte,
        "shade": shade,
    }


def write_cache(
    root: Path,
    scene: dict[str, np.ndarray],
    uv: np.ndarray,
    frames: tuple[int, ...] = FRAMES,
    version: int = CACHE_FORMAT_VERSION,
    data_window: tuple[int, int, int, int] | None = None,
    plate_type: str = "float",
) -> BuildPaths:
    """A cache version folder with the given UV on every frame, plus plate frames beside it."""
    paths = BuildPaths(root / "shot" / "v001")
    io.write_rgba_exr(paths.atlas_exr, scene["atlas"], compression="zip")
    channels = _passes(uv, scene["matte"], scene["shade"])
    if data_window is not None:
        x, y, w, h = data_window
        channels = {k: v[y : y + h, x : x + w] for k, v in channels.items()}
    for frame in frames:
        io.write_exr(
            paths.pass_path(frame),
            channels,
            attributes={"rna/version": version},
            data_window=data_window,
            display_size=(W, H),
        )
        io.write_rgba_exr(
            root / "plate" / f"plate.{frame:04d}.exr", scene["plate"], pixel_type=plate_type
        )
    return paths


def awkward_plate(plate_type: str) -> np.ndarray:
    """A plate that a half write, or `plate + 0.0`, would change: float32 values off the half
    grid, −0.0, denormals, negatives, large values (for `half`: half values of the same kinds)."""
    rng = np.random.default_rng(11)
    plate = rng.uniform(-0.2, 1.5, (H, W, 3)).astype(np.float32)
    plate[0, 0] = -0.0
    plate[0, 1] = [1e-40, -1e-40, 3.0e5] if plate_type == "float" else [6e-8, -6e-8, 6.0e4]
    plate[H // 2, W // 2] = [-0.0, 0.0, -0.0]  # inside the matte
    if plate_type == "half":
        plate = plate.astype(np.float16).astype(np.float32)
    return plate


def raw_pixels(path: Path) -> np.ndarray:
    """The file's pixels in its own type (float16 or float32), as stored."""
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(str(path))
    try:
        spec = inp.spec()
        return np.asarray(inp.read_image(0, 0, 0, spec.nchannels, spec.format))
    finally:
        inp.close()


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Bit-for-bit equality (−0.0 ≠ +0.0, NaN payloads count)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = np.uint16 if got.dtype == np.float16 else np.uint32
    assert np.array_equal(got.view(bits), want.view(bits))


def _settings(**kw: object) -> ApplySettings:
    return ApplySettings(**{"filter": "impulse", **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("plate_type", ["float", "half"])
def test_unpainted_atlas_gives_the_plate_bit_for_bit(plate_type: str) -> None:
    scene = _scene()
    plate = awkward_plate(plate_type)
    scene["shade"][H // 2, W // 2 + 1] = np.nan  # 0 · NaN must not reach the comp
    scene["shade"][H // 2 + 1, W // 2] = np.inf
    uv = identity_stmap(H, W) + np.float32(0.013)
    passes = _passes(uv, scene["matte"], scene["shade"])
    zeros = np.zeros((H, W), np.float32)
    for mode in ("delta", "replace"):
        for name in ("impulse", "cubic", "mitchell", "lanczos4", "sinc4"):
            out = apply_frame(
                plate,
                scene["atlas"],
                scene["atlas"].copy(),
                passes,
                ApplySettings(mode=mode, filter=name),  # type: ignore[arg-type]
            )
            assert_bits_equal(out["comp"][..., :3], plate)
            assert_bits_equal(out["comp"][..., 3], zeros)  # +0.0: nothing edited
            assert_bits_equal(out["paint"], np.zeros((H, W, 4), np.float32))


def test_mix_zero_and_single_channel_paint_keep_the_plate_bits() -> None:
    scene = _scene()
    plate = awkward_plate("float")
    plate[H // 2, W // 2 + 1] = [-0.0, -0.0, 0.3]
    edited = scene["atlas"].copy()
    edited[..., 2] += 0.25  # blue only: red and green of the paint are exactly 0
    passes = _passes(identity_stmap(H, W), scene["matte"], scene["shade"])
    none = apply_frame(plate, scene["atlas"], edited, passes, _settings(mix=0.0))
    assert_bits_equal(none["comp"][..., :3], plate)
    blue = apply_frame(plate, scene["atlas"], edited, passes, _settings())
    assert_bits_equal(blue["comp"][..., :2], plate[..., :2])
    inside = scene["matte"] > 0
    assert (blue["comp"][..., 2][inside] != plate[..., 2][inside]).all()


def test_paint_lands_where_the_uv_points() -> None:
    scene = _scene()
    scene["matte"][:] = 1.0
    scene["shade"][:] = 1.0
    edited = scene["atlas"].copy()
    edited[10:14, 20:24, :3] += 0.5  # a painted 4×4 square at atlas columns 20..23
    uv = identity_stmap(H, W)
    uv[..., 0] += 3.0 / W  # every plate pixel looks 3 texels to the right
    out = apply_frame(
        scene["plate"],
        scene["atlas"],
        edited,
        _passes(uv, scene["matte"], scene["shade"]),
        _settings(),
    )
    diff = out["comp"][..., :3] - scene["plate"]
    expected = np.zeros((H, W, 3), np.float32)
    expected[10:14, 17:21] = 0.5  # ... so the square appears 3 columns to the left
    np.testing.assert_allclose(diff, expected, atol=1e-6)
    np.testing.assert_array_equal(out["comp"][..., 3], expected[..., 0] * 2)


def test_matte_and_shade_scale_the_paint() -> None:
    scene = _scene()
    edited = scene["atlas"].copy()
    edited[..., :3] += 0.25
    out = apply_frame(
        scene["plate"],
        scene["atlas"],
        edited,
        _passes(identity_stmap(H, W), scene["matte"], scene["shade"]),
        _settings(),
    )
    expected = scene["plate"] + scene["matte"][..., None] * scene["shade"] * 0.25
    np.testing.assert_allclose(out["comp"][..., :3], expected, atol=1e-6)
    painted = scene["matte"] > 0
    np.testing.assert_allclose(out["comp"][..., 3], scene["matte"] * painted, atol=1e-7)
    np.testing.assert_allclose(out["paint"][..., :3], expected - scene["plate"], atol=1e-6)
    no_shade = apply_frame(
        scene["plate"],
        scene["atlas"],
        edited,
        _passes(identity_stmap(H, W), scene["matte"], scene["shade"]),
        _settings(use_shade=False),
    )
    np.testing.assert_allclose(
        no_shade["paint"][..., :3],
        np.repeat(scene["matte"][..., None] * 0.25, 3, axis=2),
        atol=1e-6,
    )


def test_threshold_kills_small_noise_and_keeps_the_paint() -> None:
    scene = _scene()
    rng = np.random.default_rng(5)
    edited = scene["atlas"].copy()
    edited[..., :3] += rng.uniform(-2e-3, 2e-3, (H, W, 3)).astype(np.float32)  # lossy re-save
    edited[8:16, 12:20, :3] = 2.0
    passes = _passes(identity_stmap(H, W), scene["matte"], scene["shade"])
    noisy = apply_frame(scene["plate"], scene["atlas"], edited, passes, _settings())
    assert np.count_nonzero(noisy["comp"][..., 3]) > 200  # noise counts as paint everywhere
    clean = apply_frame(
        scene["plate"], scene["atlas"], edited, passes, _settings(delta_threshold=0.01)
    )
    outside = np.ones((H, W), bool)
    outside[8:16, 12:20] = False
    np.testing.assert_array_equal(clean["comp"][outside][..., :3], scene["plate"][outside])
    assert not clean["comp"][outside][..., 3].any()
    inside = clean["delta"][8:16, 12:20]
    np.testing.assert_allclose(inside[..., :3], 2.0 - scene["atlas"][8:16, 12:20, :3], atol=1e-6)
    assert inside[..., 3].min() == 1.0


def test_replace_mode_puts_the_painted_colour_on_solid_matte() -> None:
    scene = _scene()
    edited = scene["atlas"].copy()
    edited[..., :3] = 0.7
    passes = _passes(identity_stmap(H, W), scene["matte"], scene["shade"])
    out = apply_frame(scene["plate"], scene["atlas"], edited, passes, _settings(mode="replace"))
    solid = scene["matte"] >= 0.95
    soft = (scene["matte"] > 0) & ~solid
    assert solid.sum() > 50 and soft.sum() > 50
    np.testing.assert_allclose(out["comp"][solid][..., :3], 0.7 * scene["shade"][solid], atol=1e-6)
    delta = 0.7 - scene["atlas"][..., :3]
    expected_soft = scene["plate"] + scene["matte"][..., None] * scene["shade"] * delta
    np.testing.assert_allclose(out["comp"][soft][..., :3], expected_soft[soft], atol=1e-6)
    np.testing.assert_allclose(out["comp"][..., 3], scene["matte"], atol=1e-7)


def test_mix_blends_with_the_plate_and_overlay_marks_the_matte() -> None:
    scene = _scene()
    edited = scene["atlas"].copy()
    edited[..., :3] += 0.3
    passes = _passes(identity_stmap(H, W), scene["matte"], scene["shade"])
    full = apply_frame(scene["plate"], scene["atlas"], edited, passes, _settings())
    half = apply_frame(scene["plate"], scene["atlas"], edited, passes, _settings(mix=0.5))
    none = apply_frame(scene["plate"], scene["atlas"], edited, passes, _settings(mix=0.0))
    np.testing.assert_array_equal(none["comp"][..., :3], scene["plate"])
    np.testing.assert_allclose(
        half["comp"][..., :3], 0.5 * (full["comp"][..., :3] + scene["plate"]), atol=1e-6
    )
    m = scene["matte"]
    np.testing.assert_allclose(
        full["matte"][..., 0], scene["plate"][..., 0] * (1 - m / 2) + m / 2, atol=1e-6
    )
    np.testing.assert_allclose(full["matte"][..., 3], m)


def test_settings_are_validated_by_name() -> None:
    with pytest.raises(InputError, match="setting mix"):
        ApplySettings(mix=2.0)
    with pytest.raises(InputError, match="setting filter"):
        ApplySettings(filter="gaussian")
    for name in APPLY_FILTERS:
        assert ApplySettings(filter=name.upper()).filter == name.upper()
    assert {"impulse", "cubic", "lanczos4", "lanczos6", "sinc4", "bilinear"} <= set(APPLY_FILTERS)
    with pytest.raises(InputError, match="setting mode"):
        ApplySettings(mode="over")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Files and the command line


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def _cli_args(paths: BuildPaths, atlas: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "apply",
        "--build",
        str(paths.root),
        "--atlas",
        str(atlas),
        "--plate",
        str(tmp_path / "plate" / "plate.####.exr"),
        "--out",
        str(tmp_path / "out" / "comp.####.exr"),
        *extra,
    ]


def test_cli_writes_the_comp_and_unpainted_is_the_plate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W) + np.float32(0.01))
    unpainted = tmp_path / "edit_same.exr"
    io.write_rgba_exr(unpainted, scene["atlas"], compression="piz")
    code, _ = _run(capsys, *_cli_args(paths, unpainted, tmp_path))
    assert code == 0
    for frame in FRAMES:
        comp = io.read_image(tmp_path / "out" / f"comp.{frame:04d}.exr")
        assert comp.channels == ("R", "G", "B", "A")
        assert comp.compression == "zips"
        assert comp.attributes["rna/frame"] == frame
        np.testing.assert_array_equal(comp.pixels[..., :3], scene["plate"])
        assert not comp.pixels[..., 3].any()


def test_output_pixel_types_follow_the_plate() -> None:
    assert output_pixel_types(["half"] * 3) == dict.fromkeys("RGBA", "half")
    assert output_pixel_types(["float"] * 3) == dict.fromkeys("RGBA", "float")
    assert output_pixel_types(["uint16"] * 3) == dict.fromkeys("RGBA", "float")  # PNG/TIFF/DPX
    assert output_pixel_types(["half", "float", "half"]) == {
        "R": "half",
        "G": "float",
        "B": "half",
        "A": "float",
    }


@pytest.mark.parametrize("plate_type", ["float", "half"])
@pytest.mark.parametrize("output", ["comp", "paint", "delta", "matte"])
def test_outputs_take_the_plate_pixel_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plate_type: str, output: str
) -> None:
    scene = _scene()
    paths = write_cache(
        tmp_path, scene, identity_stmap(H, W), frames=(1001,), plate_type=plate_type
    )
    atlas = tmp_path / "edit.exr"
    io.write_rgba_exr(atlas, scene["atlas"])
    code, _ = _run(capsys, *_cli_args(paths, atlas, tmp_path, "--output", output))
    assert code == 0
    comp = io.read_image(tmp_path / "out" / "comp.1001.exr")
    assert comp.channel_formats == (plate_type,) * 4


@pytest.mark.parametrize("plate_type", ["float", "half"])
def test_cli_unpainted_atlas_writes_the_plate_back_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plate_type: str
) -> None:
    # The reported bug: a float plate came back re-quantised to half (max error 2.4e-4).
    scene = _scene()
    scene["plate"] = awkward_plate(plate_type)
    scene["shade"][H // 2, W // 2 + 1] = np.nan  # stored as half NaN / inf in the cache
    scene["shade"][H // 2 + 1, W // 2] = np.inf
    paths = write_cache(
        tmp_path, scene, identity_stmap(H, W) + np.float32(0.013), plate_type=plate_type
    )
    unpainted = tmp_path / "edit_same.exr"  # the original atlas, re-saved with other compression
    io.write_rgba_exr(unpainted, io.read_image(paths.atlas_exr).pixels, compression="piz")
    plate_raw = raw_pixels(tmp_path / "plate" / "plate.1001.exr")
    assert plate_raw.dtype == (np.float16 if plate_type == "half" else np.float32)
    for mode in ("delta", "replace"):
        for name in ("impulse", "cubic", "lanczos6", "sinc4"):
            out = tmp_path / f"out_{mode}_{name}" / "comp.####.exr"
            args = _cli_args(paths, unpainted, tmp_path, "--mode", mode, "--filter", name)
            args[args.index("--out") + 1] = str(out)
            code, _ = _run(capsys, *args)
            assert code == 0
            for frame in FRAMES:
                got = raw_pixels(io.frame_path(out, frame))
                assert_bits_equal(got[..., :3], plate_raw[..., :3])
                assert_bits_equal(got[..., 3], np.zeros((H, W), plate_raw.dtype))


def test_integer_plate_is_written_as_float_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W), frames=(1001,))
    png = tmp_path / "png" / "plate.1001.png"
    png.parent.mkdir()
    io.write_image(png, scene["plate"], bits=16)
    unpainted = tmp_path / "edit_same.exr"
    io.write_rgba_exr(unpainted, io.read_image(paths.atlas_exr).pixels)
    args = _cli_args(paths, unpainted, tmp_path)
    args[args.index("--plate") + 1] = str(tmp_path / "png" / "plate.####.png")
    code, _ = _run(capsys, *args)
    assert code == 0
    got = raw_pixels(tmp_path / "out" / "comp.1001.exr")
    assert got.dtype == np.float32  # 16-bit values k/65535 are not all exact in half
    assert_bits_equal(got[..., :3], io.read_image(png).pixels[..., :3])


@pytest.mark.parametrize("name", ["keys", "Lanczos4", "SINC4", "bilinear"])
def test_cli_paint_output_matches_apply_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    scene = _scene()
    rng = np.random.default_rng(1)
    uv = identity_stmap(H, W) + rng.uniform(-0.02, 0.02, (1, 1, 2)).astype(np.float32)
    paths = write_cache(tmp_path, scene, uv)
    edited = scene["atlas"].copy()
    edited[4:12, 6:18, :3] = [1.0, 0.2, 0.1]
    edited_path = tmp_path / "edit.exr"
    io.write_rgba_exr(edited_path, edited, pixel_type="float")
    code, _ = _run(
        capsys,
        *_cli_args(
            paths,
            edited_path,
            tmp_path,
            "--output",
            "paint",
            "--filter",
            name,
            "--frames",
            "1002",
        ),
    )
    assert code == 0
    assert not (tmp_path / "out" / "comp.1001.exr").exists()
    got = io.read_image(tmp_path / "out" / "comp.1002.exr").pixels
    stored = io.read_image(paths.pass_path(1002))  # the passes as stored (half matte/shade)
    want = apply_frame(
        scene["plate"],
        io.read_image(paths.atlas_exr).pixels,
        edited,
        {c: stored.channel(c) for c in stored.channels},
        ApplySettings(filter=name),
    )["paint"]
    assert np.abs(want).max() > 0.1
    np.testing.assert_array_equal(got, want)  # a float plate: float output, nothing rounded


def test_data_window_outside_is_the_plate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    scene["matte"][:] = 1.0
    paths = write_cache(tmp_path, scene, identity_stmap(H, W), data_window=(8, 4, 16, 12))
    edited = scene["atlas"].copy()
    edited[..., :3] += 0.5
    edited_path = tmp_path / "edit.exr"
    io.write_rgba_exr(edited_path, edited, pixel_type="float")
    code, _ = _run(capsys, *_cli_args(paths, edited_path, tmp_path, "--frames", "1001"))
    assert code == 0
    comp = io.read_image(tmp_path / "out" / "comp.1001.exr").pixels
    inside = np.zeros((H, W), bool)
    inside[4:16, 8:24] = True
    np.testing.assert_array_equal(comp[~inside][..., :3], scene["plate"][~inside])
    assert (comp[inside][..., 3] == 1.0).all() and not comp[~inside][..., 3].any()


def test_png_atlas_is_linearised_and_8_bit_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "atlas.png"
    io.write_png(path, np.full((H, W, 3), 128, np.uint8))
    with caplog.at_level(logging.WARNING, logger="rna_engine"):
        rgb = read_edited_atlas(path, (H, W))
    np.testing.assert_allclose(rgb, srgb_to_linear(np.float32(128 / 255)), atol=1e-6)
    assert any("8-bit" in r.getMessage() for r in caplog.records)


def test_lossy_exr_atlas_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "atlas.exr"
    io.write_rgba_exr(path, _scene()["atlas"], compression="dwaa")
    lossless = tmp_path / "atlas_zip.exr"
    io.write_rgba_exr(lossless, _scene()["atlas"], compression="zip")
    with caplog.at_level(logging.WARNING, logger="rna_engine"):
        read_edited_atlas(lossless, (H, W))
        assert not caplog.records
        rgb = read_edited_atlas(path, (2 * H, 2 * W))  # any size with the same aspect is fine
    assert rgb.shape == (H, W, 3)
    assert any("lossy" in r.getMessage() and "dwaa" in r.getMessage() for r in caplog.records)


def test_aspect_mismatch_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W))
    wrong = tmp_path / "squashed.exr"
    io.write_rgba_exr(wrong, np.zeros((H, W + 2, 4), np.float32))  # 6 % wider
    code, err = _run(capsys, *_cli_args(paths, wrong, tmp_path))
    assert code == 2
    assert len(err) == 1 and "squashed.exr" in err[0] and "aspect" in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_cache_frame_exits_2_naming_the_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W))
    atlas = tmp_path / "edit.exr"
    io.write_rgba_exr(atlas, scene["atlas"])
    code, err = _run(capsys, *_cli_args(paths, atlas, tmp_path, "--frames", "1001-1003"))
    assert code == 2
    assert len(err) == 1 and "1003" in err[0] and "rna.1003.exr" in err[0]
    assert not (tmp_path / "out").exists()  # nothing half-done


def test_missing_plate_frame_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W))
    (tmp_path / "plate" / "plate.1002.exr").unlink()
    atlas = tmp_path / "edit.exr"
    io.write_rgba_exr(atlas, scene["atlas"])
    code, err = _run(capsys, *_cli_args(paths, atlas, tmp_path))
    assert code == 2 and len(err) == 1 and "plate.1002.exr" in err[0]


@pytest.mark.parametrize("where", ["header", "build.json"])
def test_old_cache_exits_2_asking_for_a_rebuild(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    old = CACHE_FORMAT_VERSION - 1
    paths = write_cache(
        tmp_path,
        scene,
        identity_stmap(H, W),
        version=old if where == "header" else CACHE_FORMAT_VERSION,
    )
    if where == "build.json":
        paths.build_json.write_text(json.dumps({"cache_format_version": old}))
    atlas = tmp_path / "edit.exr"
    io.write_rgba_exr(atlas, scene["atlas"])
    code, err = _run(capsys, *_cli_args(paths, atlas, tmp_path))
    assert code == 2 and len(err) == 1
    assert "older version" in err[0] and "rebuild" in err[0]
    assert ("rna.1001.exr" if where == "header" else "build.json") in err[0]
    assert not (tmp_path / "out").exists()


def test_build_folder_resolves_to_its_newest_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W), frames=(1001,))
    atlas = tmp_path / "edit.exr"
    io.write_rgba_exr(atlas, scene["atlas"])
    args = _cli_args(paths, atlas, tmp_path)
    args[2] = str(paths.root.parent)  # the build folder, not v001
    code, _ = _run(capsys, *args)
    assert code == 0 and (tmp_path / "out" / "comp.1001.exr").is_file()
