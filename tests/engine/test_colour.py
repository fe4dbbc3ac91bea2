"""rna_engine.colour: pinned config, role names, working encoding round trip."""

from __future__ import annotations

import numpy as np
import pytest

from rna_engine import colour
from rna_engine.errors import InputError


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
