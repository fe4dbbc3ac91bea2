"""rna_engine.media.colour: pinned config, role names, working encoding round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rna_engine.errors import InputError
from rna_engine.media import colour


def test_pinned_builtin_config_is_recorded_by_full_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCIO", raising=False)
    colour.load_config.cache_clear()
    _, name = colour.load_config()
    assert name.startswith("ocio://studio-config-v") and "latest" not in name


def test_scene_linear_round_trip_below_1e4() -> None:
    space = colour.working_space("scene_linear")
    linear = np.random.default_rng(0).uniform(0.0, 20.0, (2000, 3)).astype(np.float32)
    work = space.encode(linear)
    assert work.min() >= 0 and work.max() <= 1
    back = space.decode(work)
    rel = np.abs(back - linear) / np.maximum(linear, 1e-2)
    assert rel.max() < 1e-4
    assert np.abs(space.encode(back) - work).max() < 1e-4


def test_log_encoding_is_bounded_and_monotonic() -> None:
    space = colour.working_space("scene_linear")
    ramp = np.geomspace(1e-4, 1e4, 50, dtype=np.float32)[:, None].repeat(3, 1)
    work = space.encode(ramp)[:, 0]
    assert np.all(np.diff(work) >= 0)
    assert work[-1] == pytest.approx(1.0)
    assert space.encode(np.full((1, 3), colour.LOG_WHITE, np.float32))[0, 0] == pytest.approx(1.0)
    # Mid grey lands mid-range: a perceptual encoding, not linear.
    grey = space.encode(np.full((1, 3), 0.18, np.float32))[0, 0]
    assert 0.35 < grey < 0.6


def test_display_encoding_is_srgb() -> None:
    space = colour.working_space("display")
    codes = np.linspace(0, 1, 101, dtype=np.float32)[:, None].repeat(3, 1)
    np.testing.assert_allclose(space.encode(space.decode(codes)), codes, atol=1e-6)
    assert space.decode(np.full((1, 3), 0.5, np.float32))[0, 0] == pytest.approx(0.2140, abs=1e-4)


def test_bad_ocio_config_names_the_config() -> None:
    colour.load_config.cache_clear()
    with pytest.raises(InputError, match="nope.ocio"):
        colour.load_config("nope.ocio")


TINY_CONFIG = """ocio_profile_version: 2
roles:
  default: lin
  scene_linear: lin
  compositing_log: log2
file_rules:
  - !<Rule> {name: Default, colorspace: default}
displays:
  sRGB:
    - !<View> {name: Raw, colorspace: lin}
colorspaces:
  - !<ColorSpace>
    name: lin
  - !<ColorSpace>
    name: gain4
    description: "code values are linear / 4"
    to_scene_reference: !<MatrixTransform> {matrix: [4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 1]}
  - !<ColorSpace>
    name: log2
    from_scene_reference: !<LogTransform> {base: 2}
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.ocio"
    path.write_text(TINY_CONFIG)
    return str(path)


def test_plate_colourspace_is_converted_to_scene_linear(tiny_config: str) -> None:
    to_linear = colour.plate_to_linear("gain4", tiny_config)
    code = np.array([[0.0, 0.25, 0.5], [1.0, 2.0, 0.125]], np.float32)
    np.testing.assert_allclose(to_linear(code), code * 4.0, rtol=1e-6)
    assert to_linear(code).dtype == np.float32 and code[0, 1] == 0.25  # input untouched
    roles = colour.plate_to_linear("scene_linear", tiny_config)  # a role name is a name too
    np.testing.assert_array_equal(roles(code), code)


def test_builtin_config_log_plate_decodes_to_acescg() -> None:
    config = f"ocio://{colour.PINNED_CONFIGS[-1]}"
    to_linear = colour.plate_to_linear("ACEScct", config)
    grey = to_linear(np.full((1, 3), 0.4135884, np.float32))  # ACEScct code of 18% grey
    np.testing.assert_allclose(grey, 0.18, rtol=1e-4)


def test_unknown_plate_colourspace_names_the_setting(tiny_config: str) -> None:
    with pytest.raises(InputError, match=r"ingest.colorspace: 'Cineon' is not a colourspace"):
        colour.plate_to_linear("Cineon", tiny_config)


def test_ingest_decodes_the_plate_from_its_colourspace(tmp_path: Path, tiny_config: str) -> None:
    from rna_engine.media import io
    from rna_engine.pipeline import ingest
    from rna_engine.runtime.context import RunContext
    from rna_engine.settings import spec_from_dict
    from rna_engine.stages.inputs import resolve_inputs

    linear = np.random.default_rng(1).uniform(0.05, 8.0, (16, 24, 3)).astype(np.float32)
    for frame in (1001, 1002):
        io.write_rgba_exr(
            tmp_path / f"plate.{frame}.exr",
            np.concatenate([linear / 4.0, np.ones((16, 24, 1), np.float32)], -1),
            compression="zip",
            pixel_type="float",
        )
    io.write_exr(tmp_path / "roi.exr", {"A": np.ones((16, 24))})

    def run(colorspace: str) -> tuple[np.ndarray, np.ndarray]:
        """The first working frame, and what it must be for plate pixels `linear`."""
        spec = spec_from_dict(
            {
                "plate": str(tmp_path / "plate.####.exr"),
                "roi": str(tmp_path / "roi.exr"),
                "reference_frame": 1001,
                "settings": {
                    "preset": "draft",
                    "ingest": {
                        "working_long_side": 32,
                        "ocio_config": tiny_config,
                        "colorspace": colorspace,
                    },
                },
            }
        )
        got = ingest(resolve_inputs(spec), spec.settings.ingest, RunContext())
        size = (got.working_width, got.working_height)
        return got.working[0], io.resize_area(linear, *size)

    space = colour.working_space("scene_linear", tiny_config)
    work, expected_linear = run("gain4")  # code values × 4 = the scene-linear plate
    np.testing.assert_allclose(work, space.encode(expected_linear), atol=1e-5)
    work, _ = run("")  # the auto rule takes the EXR code values as scene-linear
    np.testing.assert_allclose(work, space.encode(expected_linear / 4.0), atol=1e-5)
    with pytest.raises(InputError, match="ingest.colorspace: 'nope'"):
        run("nope")
