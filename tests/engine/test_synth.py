"""rna_engine.synth: the ground truth is self-consistent and deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rna_engine import io
from rna_engine.synth import SynthShot, make_shot, paint_pattern, write_shot


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
    from rna_engine.synth import PRESETS

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
