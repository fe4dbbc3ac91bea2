"""The occluder scenes of `synth` (issue #34): each occluder does what its preset promises."""

from __future__ import annotations

import numpy as np
import pytest

from rna_engine.errors import InputError
from rna_engine.synthetic.shots import OCCLUDER_SCENES, PRESETS, ShotParams, make_shot


def _layer_px(shot, k: int) -> np.ndarray:  # noqa: ANN001
    """(N,) pixels where occluder k is the one seen."""
    return np.array([(shot.visible_layer(t) == k).sum() for t in range(shot.n_frames)])


def _in_roi(shot, k: int) -> np.ndarray:  # noqa: ANN001
    """(N,) pixels of the ROI where occluder k is the one seen."""
    return np.array(
        [
            ((shot.visible_layer(t) == k) & (shot.roi_tracked[t] > 0.5)).sum()
            for t in range(shot.n_frames)
        ]
    )


@pytest.mark.parametrize("name", list(OCCLUDER_SCENES))
def test_every_scene_has_every_size_and_a_clear_reference(name: str) -> None:
    assert (PRESETS[name]["width"], PRESETS[name]["frames"]) == (768, 70)
    shot = make_shot(f"{name}-small", seed=0)
    r = shot.reference_index
    assert shot.occlusion[r][shot.roi > 0].max() == 0.0
    # Some occluder covers part of the ROI on some frame away from the reference.
    covered = ((shot.occlusion > 0.5) & (shot.roi_tracked > 0.5)).sum((1, 2))
    assert covered.max() > 100 and covered[r] == 0


def test_fast_movers_cross_the_roi_at_nine_percent_of_the_width_per_frame() -> None:
    shot = make_shot("fast-small", seed=0)
    w, r = shot.params.width, shot.reference_index
    sides = set()
    for k, occ in enumerate(shot._occluders):
        seen = np.nonzero(_in_roi(shot, k) > 20)[0]
        assert seen.size >= 2, k
        t = int(seen[0])
        # Relative to the surface point under its centre, it moves ≥ 8 % of the width a frame.
        centre = occ.centre0 + occ.velocity * t
        ref = shot.ref_xy_at(t, np.array([centre[0]]), np.array([centre[1]]))[0]
        surface = shot.frame_xy_of(t + 1, ref) - shot.frame_xy_of(t, ref)
        assert np.linalg.norm(occ.velocity - surface) >= 0.08 * w
        sides.add(bool(seen[0] > r))
    assert sides == {True, False}  # one on either side of the reference


def test_entering_movers_are_out_of_view_at_the_reference_frame() -> None:
    shot = make_shot("enter-small", seed=0)
    r = shot.reference_index
    for k in range(len(shot._occluders)):
        assert _layer_px(shot, k)[r] == 0
        assert _in_roi(shot, k).max() > 100
    assert shot.occlusion[r].max() == 0.0


def test_the_beside_mover_is_in_view_next_to_the_roi_at_the_reference_frame() -> None:
    shot = make_shot("beside-small", seed=0)
    r = shot.reference_index
    occ = shot._occluders[0]
    seen = _layer_px(shot, 0)
    assert seen[r] >= 0.9 * np.pi * occ.radii.prod()  # whole, in view
    assert _in_roi(shot, 0)[r] == 0 and shot.occlusion[r][shot.roi > 0].max() == 0.0
    assert _in_roi(shot, 0).max() > 100


def test_the_slow_mover_drifts_under_half_a_pixel_a_frame_against_the_surface() -> None:
    shot = make_shot("slow-small", seed=0)
    k = len(shot._occluders)  # numbered after the moving ones: there are none
    assert k == 0
    rest = shot._resting[0]
    centres = []
    for t in range(rest.first, rest.last + 1):
        layer = shot.visible_layer(t)
        under = shot.true_ref_xy[t][layer == k]
        assert len(under) > 50
        centres.append(under.mean(0))
    # Its surface footprint slides at the set 0.4 px per frame (over the window: the pixel
    # grid jitters single steps), where a resting one stays put.
    drift = np.linalg.norm(centres[-1] - centres[0]) / (len(centres) - 1)
    assert 0.3 < drift <= 0.5, drift
    assert rest.last - rest.first + 1 == shot.n_frames // 4


def test_the_mimic_wears_the_surface_colours() -> None:
    mimic, fast = make_shot("mimic-small", seed=0), make_shot("fast-small", seed=0)

    def log_gap(shot) -> float:  # noqa: ANN001
        occluded = shot.occlusion > 0.95
        clear = (shot.occlusion == 0) & (shot.roi_tracked > 0.5)
        plate = np.log(np.maximum(shot.plate_linear, 1e-4))
        return float(np.abs(plate[occluded].mean(0) - plate[clear].mean(0)).max())

    assert log_gap(mimic) < 0.35 < log_gap(fast)
    # Its texture moves rigidly with it: the interior at frame a reappears shifted at frame b.
    t = int(np.argmax(_layer_px(mimic, 0)))
    occ = mimic._occluders[0]
    a, b = mimic.frame(t)["plate"], mimic.frame(t + 1 if t + 1 < mimic.n_frames else t - 1)
    dt = 1 if t + 1 < mimic.n_frames else -1
    core = mimic.occlusion[t] > 0.999
    ys, xs = np.nonzero(core & (mimic.visible_layer(t) == 0))
    xb = np.rint(xs + occ.velocity[0] * dt).astype(int)
    yb = np.rint(ys + occ.velocity[1] * dt).astype(int)
    h, w = a.shape[:2]
    ok = (xb >= 0) & (xb < w) & (yb >= 0) & (yb < h)
    ok &= mimic.occlusion[t + dt][yb.clip(0, h - 1), xb.clip(0, w - 1)] > 0.999
    assert ok.sum() > 50
    shift = occ.velocity * dt
    exact = np.allclose(shift, np.rint(shift))
    gap = np.abs(a[ys[ok], xs[ok]] - b["plate"][yb[ok], xb[ok]]).mean()
    assert gap < (0.02 if exact else 0.2) * a[ys[ok], xs[ok]].mean()


def test_the_shutter_smears_the_movers_along_their_motion() -> None:
    sharp = make_shot("blur-small", seed=0, shutter=0.0)
    blurred = make_shot("blur-small", seed=0)
    assert blurred.params.shutter == 0.5 and blurred.params.edge_px == 3.0
    soft = lambda s: ((s.occlusion > 0.02) & (s.occlusion < 0.98)).sum()  # noqa: E731
    assert soft(blurred) > 1.3 * soft(sharp)
    # The same occluders, only blurred: the alpha's total is kept (to the shutter's sampling).
    np.testing.assert_allclose(blurred.occlusion.sum(), sharp.occlusion.sum(), rtol=0.03)


def test_unknown_mover_kinds_and_shutters_are_refused() -> None:
    with pytest.raises(InputError, match="mover 'flying'"):
        ShotParams(movers="fast,flying")
    with pytest.raises(InputError, match="shutter"):
        ShotParams(shutter=2.0)
