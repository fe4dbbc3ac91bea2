"""RNAApply math and `rna-engine apply` (rna_engine/apply.py), on small hand-made caches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from rna_engine import CACHE_FORMAT_VERSION, io
from rna_engine.apply import ApplySettings, apply_frame, read_edited_atlas
from rna_engine.cache import MASK, MATTE, SHADE, UV_U, UV_V, BuildPaths
from rna_engine.cli import main
from rna_engine.colour import srgb_to_linear
from rna_engine.errors import InputError
from rna_engine.stmap import identity_stmap

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
            root / "plate" / f"plate.{frame:04d}.exr", scene["plate"], pixel_type="float"
        )
    return paths


def _settings(**kw: object) -> ApplySettings:
    return ApplySettings(**{"filter": "impulse", **kw})  # type: ignore[arg-type]


def test_unpainted_atlas_gives_the_plate_bit_for_bit() -> None:
    scene = _scene()
    uv = identity_stmap(H, W) + np.float32(0.013)
    passes = _passes(uv, scene["matte"], scene["shade"])
    for mode in ("delta", "replace"):
        for name in ("impulse", "cubic", "mitchell"):
            out = apply_frame(
                scene["plate"],
                scene["atlas"],
                scene["atlas"].copy(),
                passes,
                ApplySettings(mode=mode, filter=name),
            )  # type: ignore[arg-type]
            np.testing.assert_array_equal(out["comp"][..., :3], scene["plate"])
            assert not out["comp"][..., 3].any()
            assert not out["paint"].any()


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
        ApplySettings(filter="lanczos4")
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


def test_outputs_are_half(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = _scene()
    paths = write_cache(tmp_path, scene, identity_stmap(H, W), frames=(1001,))
    atlas = tmp_path / "edit.exr"
    io.write_rgba_exr(atlas, scene["atlas"])
    code, _ = _run(capsys, *_cli_args(paths, atlas, tmp_path))
    assert code == 0
    comp = io.read_image(tmp_path / "out" / "comp.1001.exr")
    assert set(comp.channel_formats) == {"half"}


def test_cli_paint_output_matches_apply_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
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
            "keys",
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
        ApplySettings(filter="keys"),
    )["paint"]
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-3)  # half output


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
