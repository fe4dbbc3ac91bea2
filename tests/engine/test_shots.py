"""rna_engine.synthetic.shots: the ground truth is self-consistent and deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rna_engine.media import io
from rna_engine.synthetic.shots import SynthShot, make_shot, paint_pattern, write_shot


def test_ground_truth_reproduces_every_unoccluded_pixel() -> None:
    shot = make_shot("tiny", seed=3)
    for t in range(shot.n_frames):
        f = shot.frame(t)
        rebuilt = f["illumination"] * shot.texture(f["true_ref_xy"])
        clear = f["occlusion"] == 0
        assert clear.mean() > 0.5
        assert np.abs(rebuilt - f["plate"])[clear].max() < 1e-3


def test_reference_frame_is_identity_and_unoccluded_in_roi() -> None:
    shot = make_shot("tiny", seed=1)
    r = shot.reference_index
    ys, xs = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(shot.true_ref_xy[r], np.stack([xs, ys], -1), atol=1e-4)
    np.testing.assert_allclose(shot.illumination[r], 1.0, atol=1e-5)
    assert shot.occlusion[r][shot.roi > 0].max() == 0.0
    # Occluders do cross the ROI in other frames, with soft edges.
    crossing = (shot.occlusion * shot.roi_tracked).sum((1, 2))
    assert crossing.max() > 10
    soft = shot.occlusion[(shot.occlusion > 0) & (shot.occlusion < 1)]
    assert soft.size > 0


def test_camera_moves_and_deterministic_by_seed() -> None:
    a, b, c = make_shot("tiny", 5), make_shot("tiny", 5), make_shot("tiny", 6)
    np.testing.assert_array_equal(a.plate_linear, b.plate_linear)
    assert np.abs(a.plate_linear - c.plate_linear).mean() > 1e-3
    motion = np.abs(a.true_ref_xy[0] - a.true_ref_xy[-1]).mean()
    assert motion > 1.0


def paint_pattern_render_changes_only_visible_roi() -> None:
    shot = make_shot("tiny", seed=2)
    edit = paint_pattern(64, 48, shot.roi)
    edited = shot.render_edit(edit)
    diff = np.abs(edited - shot.plate_linear).max(-1)
    weight = shot.true_matte
    assert diff[weight == 0].max() == 0.0
    assert diff[weight > 0.99].max() > 0.05
    # On the reference frame the paint lands where it was painted.
    r = shot.reference_index
    a = edit[..., 3]
    inside = (a > 0.99) & (shot.roi > 0)
    expect = edit[..., :3][inside]
    np.testing.assert_allclose(edited[r][inside], expect, atol=1e-4)


def test_write_shot_layout(tmp_path: Path) -> None:
    shot = make_shot("tiny", seed=0, frames=3)
    manifest = write_shot(shot, tmp_path, edit=paint_pattern(64, 48, shot.roi))
    frames = io.find_frames(tmp_path / manifest["plate"])
    assert sorted(frames) == shot.frame_numbers
    plate = io.read_image(frames[shot.frame_numbers[1]])
    assert np.abs(plate.pixels[..., :3] - shot.plate_linear[1]).max() < 2e-3 * 3
    truth = io.read_image(io.frame_path(tmp_path / manifest["truth"], shot.frame_numbers[1]))
    np.testing.assert_array_equal(truth.channel("ref.x"), shot.true_ref_xy[1][..., 0])
    roi = io.read_image(tmp_path / "roi.exr")
    np.testing.assert_array_equal(roi.channel("A"), shot.roi)
    assert roi.attributes["rna/frame"] == shot.reference_frame


def test_visible_layer_moves_with_its_occluder() -> None:
    shot = make_shot("small", seed=2)
    for t in range(shot.n_frames):
        layer = shot.visible_layer(t)
        occlusion = shot.occlusion[t]
        # An occluder is seen exactly where the combined alpha says the surface is hidden.
        assert (occlusion[layer >= 0] > 0.5).all()
        assert (layer[occlusion > 0.9] >= 0).all()
    # Occluders translate rigidly: the interior of occluder k at frame a, moved by v_k (b − a),
    # is occluder k again at frame b wherever no other occluder is drawn over it there.
    checked = 0
    for a in range(shot.n_frames - 3):
        checked += _layer_moves(shot, a, a + 3)
    assert checked > 500


def _layer_moves(shot: SynthShot, a: int, b: int) -> int:
    layer_a, layer_b = shot.visible_layer(a), shot.visible_layer(b)
    h, w = layer_a.shape
    checked = 0
    for k in np.unique(layer_a[layer_a >= 0]):
        interior = layer_a == k
        for axis in (0, 1):  # erode by two pixels: rounding the shift must stay inside
            for step in (-2, -1, 1, 2):
                interior &= np.roll(layer_a == k, step, axis)
        shift = shot.occluder_velocity(int(k)) * (b - a)
        ys, xs = np.nonzero(interior)
        xb, yb = np.rint(xs + shift[0]).astype(int), np.rint(ys + shift[1]).astype(int)
        ok = (xb >= 0) & (xb < w) & (yb >= 0) & (yb < h)
        landed = layer_b[yb[ok], xb[ok]]
        on_top = landed >= k  # a later occluder drawn over k is the only way to lose it
        assert on_top.all()
        checked += int((landed == k).sum())
    return checked


def test_cli_offers_every_synth_preset() -> None:
    import argparse

    from rna_engine.commands import synth as command
    from rna_engine.synthetic.shots import PRESETS

    parser = argparse.ArgumentParser()
    command.populate(parser)
    for name in PRESETS:
        assert parser.parse_args(["--out", "x", "--preset", name]).preset == name


@pytest.mark.timeout(120)
def test_parallel_write_shot_after_image_io_in_this_process(tmp_path: Path) -> None:
    # OpenImageIO has already run here (the first write); worker processes must still write.
    shot = make_shot("tiny", seed=4)
    write_shot(shot, tmp_path / "serial", truth=False, srgb=False)
    for name in ("a", "b"):
        write_shot(shot, tmp_path / name, truth=False, srgb=False, workers=2)
        for number in shot.frame_numbers:
            rel = Path("plate") / f"plate.{number:04d}.exr"
            serial = io.read_image(tmp_path / "serial" / rel).pixels
            np.testing.assert_array_equal(io.read_image(tmp_path / name / rel).pixels, serial)


HARD = ("pan", "zoomrot", "parallax", "exit")


def _grid(shot: SynthShot) -> np.ndarray:
    ys, xs = np.mgrid[0 : shot.params.height, 0 : shot.params.width]
    return np.stack([xs, ys], -1).astype(np.float64)


@pytest.mark.parametrize("name", HARD)
def test_hard_preset_identity_at_reference_and_sizes(name: str) -> None:
    from rna_engine.synthetic.shots import PRESETS

    assert (PRESETS[name]["width"], PRESETS[name]["height"], PRESETS[name]["frames"]) == (
        768,
        432,
        70,
    )
    shot = make_shot(f"{name}-tiny", seed=1)
    r = shot.reference_index
    np.testing.assert_allclose(shot.true_ref_xy[r], _grid(shot), atol=1e-4)
    np.testing.assert_allclose(shot.illumination[r], 1.0, atol=1e-5)
    # The camera does move away from the reference (exit comes back to it at the end).
    motion = np.abs(shot.true_ref_xy - _grid(shot)[None]).mean((1, 2, 3))
    assert motion.max() > 2.0


def test_pure_translation_shift_equals_the_set_pan() -> None:
    shot = make_shot("pan-tiny", seed=2, zoom=0.0, rotation_deg=0.0, perspective=0.0)
    p = shot.params
    rate = p.pan_total * p.width / (p.frames - 1)
    for t in range(shot.n_frames):
        shift = shot.true_ref_xy[t] - _grid(shot)
        dt = t - shot.reference_index
        np.testing.assert_allclose(shift[..., 0], rate * dt, atol=1e-3)
        np.testing.assert_allclose(shift[..., 1], 0.3 * rate * dt, atol=1e-3)
    # The full preset pans 6 px/frame at 768 wide: 414 px, more than half the frame.
    full = make_shot("pan")
    assert full.pan_offset(full.n_frames - 1)[0] - full.pan_offset(0)[0] == pytest.approx(414.0)


def test_parallax_near_ground_moves_more_than_far_wall() -> None:
    shot = make_shot("parallax-small", seed=0, dolly=0.0)
    p = shot.params
    horizon, contact = p.horizon_row * p.height, p.ground_row * p.height
    t = shot.n_frames - 1
    pan = shot.pan_offset(t)[0]
    shift = shot.true_ref_xy[t] - _grid(shot)
    assert pan > 5.0
    np.testing.assert_allclose(shift[..., 1], 0.0, atol=1e-3)  # lateral camera: rows stay
    wall_rows = np.arange(p.height) < contact - 1
    np.testing.assert_allclose(shift[wall_rows, :, 0], pan, atol=1e-3)
    # On the ground the shift grows as (row − horizon), i.e. inversely with depth.
    for row in (int(contact) + 2, p.height - 1):
        expect = pan * (row - horizon) / (contact - horizon)
        np.testing.assert_allclose(shift[row, :, 0], expect, rtol=1e-4)
        assert expect > pan * 1.05
    # The ROI spans both depths at the reference.
    rows = np.nonzero(shot.roi.any(1))[0]
    assert rows.min() < contact < rows.max()
    # With the dolly the map is still no single homography: the two layers disagree.
    dolly = make_shot("parallax-small", seed=0)
    with pytest.raises(ValueError):
        dolly.homography(0)


def test_exit_roi_leaves_the_frame_and_comes_back() -> None:
    shot = make_shot("exit-tiny", seed=0)
    p = shot.params
    centre, radii = shot.roi_centre, shot.roi_radii
    area = shot.roi_tracked.sum((1, 2))
    out_frames = inside_frames = 0
    for t in range(shot.n_frames):
        # Pure translation: the ROI's box in frame t is the reference box minus the pan.
        lo = centre - radii - shot.pan_offset(t)
        hi = centre + radii - shot.pan_offset(t)
        if hi[0] < -1 or lo[0] > p.width or hi[1] < -1 or lo[1] > p.height:
            assert area[t] == 0.0, t
            out_frames += 1
        elif lo[0] > 1 and hi[0] < p.width - 2 and lo[1] > 1 and hi[1] < p.height - 2:
            assert area[t] == pytest.approx(area[shot.reference_index], rel=0.05), t
            inside_frames += 1
    assert out_frames >= 1
    # It re-enters: fully visible again on the last frame, after being out.
    last_out = max(t for t in range(shot.n_frames) if area[t] == 0)
    assert last_out < shot.n_frames - 1
    assert area[-1] > 0.9 * area[shot.reference_index]
    assert inside_frames >= 2


@pytest.mark.parametrize("name", HARD)
def test_hard_plate_renders_texture_at_true_ref_xy(name: str) -> None:
    shot = make_shot(f"{name}-tiny", seed=4)
    rng = np.random.default_rng(0)
    for t in (0, shot.n_frames - 1):
        f = shot.frame(t)
        rows, cols = rng.integers(0, 48, 20), rng.integers(0, 64, 20)
        clear = f["occlusion"][rows, cols] == 0
        expect = f["illumination"][rows, cols] * shot.texture(f["true_ref_xy"][rows, cols])
        np.testing.assert_allclose(f["plate"][rows, cols][clear], expect[clear], rtol=1e-5)
        # The surface sample is the analytic texture at that exact position: recomputing
        # true_ref_xy for those pixels from the motion model gives the same point.
        again = shot.ref_xy_at(t, cols.astype(np.float64), rows.astype(np.float64))
        np.testing.assert_allclose(f["true_ref_xy"][rows, cols], again, atol=1e-4)
    # A zero-alpha edit is the plate, exactly.
    edit = np.zeros((48, 64, 4), np.float32)
    edit[..., :3] = 0.7
    np.testing.assert_array_equal(shot.render_edit(edit), shot.plate_linear)


@pytest.mark.parametrize("name", HARD)
def test_hard_occluders_cross_roi_at_far_ends_and_exposure_ramps(name: str) -> None:
    shot = make_shot(f"{name}-small", seed=0)
    r, n = shot.reference_index, shot.n_frames
    crossing = (shot.occlusion > 0.5) & (shot.roi_tracked > 0.5)
    hit = [t for t in range(n) if crossing[t].sum() > 5]
    assert hit
    reach = max(r, n - 1 - r)
    assert max(abs(t - r) for t in hit) >= 0.7 * reach
    assert all(abs(t - r) >= 0.3 * reach for t in hit)
    # Exposure: a one-stop global ramp over the shot on top of the colour drift, 1 at the
    # reference.
    flat = make_shot(f"{name}-small", seed=0, exposure_stops=0.0)
    for t in (0, n - 1):
        ratio = shot.illumination[t] / flat.illumination[t]
        np.testing.assert_allclose(ratio, 2.0 ** ((t - r) / (n - 1)), rtol=1e-5)


def test_hard_presets_deterministic_by_seed() -> None:
    a, b, c = (
        make_shot("parallax-tiny", 5),
        make_shot("parallax-tiny", 5),
        make_shot("parallax-tiny", 6),
    )
    np.testing.assert_array_equal(a.plate_linear, b.plate_linear)
    assert np.abs(a.plate_linear - c.plate_linear).mean() > 1e-3


def test_frame_xy_of_inverts_true_ref_xy() -> None:
    shot = make_shot("zoomrot-small", seed=0)
    t = 2
    xy = shot.frame_xy_of(t, np.array([70.0, 40.0]))
    back = shot.ref_xy_at(t, xy[:1], xy[1:])
    np.testing.assert_allclose(back[0], [70.0, 40.0], atol=1e-3)


def test_a_resting_occluder_moves_with_the_surface_for_a_quarter_of_the_shot() -> None:
    shot = make_shot("small", seed=2, resting=1)
    rest = shot._resting[0]
    r, n = shot.reference_index, shot.n_frames
    assert rest.last - rest.first + 1 == n // 4
    assert min(abs(rest.first - r), abs(rest.last - r)) >= 0.5 * max(r, n - 1 - r)
    k = shot.params.occluders  # numbered after the moving occluders
    under = []
    for t in range(n):
        layer = shot.visible_layer(t)
        if not rest.first <= t <= rest.last:
            assert not (layer == k).any()
            continue
        # The same surface points lie under it on every frame: it moves with the surface.
        ref = shot.true_ref_xy[t][layer == k]
        under.append((ref.mean(0), len(ref)))
        assert np.linalg.norm(ref.mean(0) - rest.anchor) < 1.0
    assert len(under) == n // 4 and min(c for _, c in under) > 50
    # Outside its frames the shot is the one without it, pixel for pixel.
    plain = make_shot("small", seed=2)
    outside = [t for t in range(n) if not rest.first <= t <= rest.last]
    np.testing.assert_array_equal(shot.plate_linear[outside], plain.plate_linear[outside])
    hidden = (shot.occlusion > 0.5) & ~(plain.occlusion > 0.5)
    assert hidden[rest.first : rest.last + 1].any() and not hidden[: rest.first].any()
