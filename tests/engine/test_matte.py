"""Tests of rna_engine/stages/matte.py: trimap, guided and closed-form matting, ViTMatte loader and
tiling, temporal stabilisation, holdout. Synthetic soft edges are built here with a known alpha.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rna_engine.errors import InputError
from rna_engine.settings import MatteSettings
from rna_engine.stages import matte as mt


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These images are tiny: on a busy 2-core machine two torch threads made the file 10×
    slower than one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---------------------------------------------------------------------------------------------
# Synthetic soft edges: a textured surface behind a wobbly disc with an antialiased edge.


def _texture(xx: torch.Tensor, yy: torch.Tensor, seed: int, fmax: float, lo, hi) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    planes = []
    for c in range(3):
        f = (torch.rand(6, 2, generator=g) * 2 - 1) * fmax
        ph = torch.rand(6, generator=g) * 6.28
        t = sum(torch.sin(xx * f[i, 0] + yy * f[i, 1] + ph[i]) for i in range(6)) / 6
        planes.append(lo[c] + (hi[c] - lo[c]) * (0.5 + 0.5 * t))
    return torch.stack(planes)


def soft_edge_sequence(
    h: int = 64,
    w: int = 96,
    frames: int = 1,
    edge_px: float = 2.0,
    noise: float = 0.01,
    velocity: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) linear plates and (N, H, W) true mattes of the visible surface.

    The whole scene (surface and occluder) translates by `velocity` pixels per frame, so the
    backward flow t→t−1 is −velocity everywhere. Grain is independent per frame.
    """
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    g = torch.Generator().manual_seed(seed + 100)
    plates, truths = [], []
    for t in range(frames):
        sx, sy = xx - velocity[0] * t, yy - velocity[1] * t
        surface = _texture(sx, sy, seed, 0.6, (0.03, 0.05, 0.02), (0.7, 0.6, 0.9))
        occluder = _texture(sx, sy, seed + 1, 0.15, (0.4, 0.02, 0.05), (1.6, 0.3, 0.3))
        cx, cy = w * 0.45, h * 0.5
        ang = torch.atan2(sy - cy, sx - cx)
        radius = h * 0.3 * (1 + 0.15 * torch.sin(3 * ang))
        dist = torch.sqrt((sx - cx) ** 2 + (sy - cy) ** 2) - radius
        alpha_occ = (0.5 - dist / edge_px).clamp(0, 1)
        truth = 1 - alpha_occ
        plate = truth * surface + alpha_occ * occluder + noise * torch.randn(3, h, w, generator=g)
        plates.append(plate.clamp_min(0))
        truths.append(truth)
    return torch.stack(plates), torch.stack(truths)


def _sad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum())


# ---------------------------------------------------------------------------------------------
# Guide, box filter, trimap


def test_encode_guide_srgb_and_log_known_values() -> None:
    x = torch.tensor([0.0, 0.0031308, 0.18, 1.0, 4.0]).repeat(3, 1)[:, None, :]
    srgb = mt.encode_guide(x, "srgb")[0, 0]
    torch.testing.assert_close(
        srgb, torch.tensor([0.0, 0.04045, 0.46135, 1.0, 1.0]), atol=2e-4, rtol=0
    )
    log = mt.encode_guide(torch.tensor([0.0, 2.0**-8, 1.0, 16.0]).repeat(3, 1)[:, None, :], "log")
    # log2(x + 2^-8) from -8 .. 4 onto 0 .. 1
    torch.testing.assert_close(
        log[0, 0], torch.tensor([0.0, 1 / 12, 8 / 12, 1.0]), atol=2e-3, rtol=0
    )
    with pytest.raises(InputError, match="guide_encoding"):
        mt.encode_guide(x, "linear")  # type: ignore[arg-type]


def test_box_mean_matches_windows_clipped_to_the_image() -> None:
    x = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(1))
    r = 2
    ref = torch.empty_like(x)
    for i in range(7):
        for j in range(9):
            win = x[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            ref[:, i, j] = win.mean((1, 2))
    torch.testing.assert_close(mt.box_mean(x, r), ref, atol=1e-6, rtol=0)


def test_band_radius_scales_with_the_plate() -> None:
    assert mt.band_radius(3.0, 1.0) == 2
    assert mt.band_radius(3.0, 2.0) == 3
    assert mt.band_radius(3.0, 4096 / 768) == 8
    assert mt.band_radius(0.0, 1.0) == 1


def test_trimap_band_straddles_the_binary_edge() -> None:
    mask = torch.zeros(12, 20)
    mask[:, 10:] = 1.0
    mask[2, 3] = 0.3  # an undecided pixel of the mask, far from the edge
    tri = mt.make_trimap(mask, 2, uncertain=0.05)
    row = tri[6]
    assert torch.equal(row[:8], torch.zeros(8))
    assert torch.equal(row[8:12], torch.full((4,), 0.5))
    assert torch.equal(row[12:], torch.ones(8))
    assert tri[2, 3] == 0.5
    assert mt.make_trimap(mask, 2, uncertain=0.0)[2, 3] == 0.0


def test_background_cores_keep_each_part_three_px_thick_and_only_its_middle() -> None:
    fg = torch.ones(20, 40, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(40.0), indexing="ij")
    fg[((yy - 10) ** 2 + (xx - 8) ** 2) < 16] = False  # a disk of radius 4
    fg[4:16, 20:22] = False  # 2 px wide: no core
    fg[4:16, 26:29] = False  # 3 px wide: its middle column
    cores = mt.background_cores(fg, 2)
    assert cores[10, 7:10].all() and int(cores[:, :16].sum()) <= 9  # the disk's middle only
    assert not cores[:, 18:24].any()
    assert cores[6:14, 27].all() and not cores[:, 26].any() and not cores[:, 28].any()
    assert not (cores & fg).any()


def test_trimap_keeps_an_undecided_occluder_smaller_than_the_band() -> None:
    mask = torch.ones(20, 24)
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(24.0), indexing="ij")
    mask[((yy - 10) ** 2 + (xx - 12) ** 2) < 16] = 0.3  # M undecided over a small occluder
    swallowed = mt.make_trimap(mask, 2, uncertain=0.05)
    kept = mt.make_trimap(mask, 2, 0.05, mt.background_cores(mask >= 0.5, 2))
    assert not (swallowed == 0).any()  # all band: nothing to matte the occluder from
    assert (kept == 0).sum() >= 3 and kept[10, 12] == 0
    assert torch.equal(kept[kept != 0], swallowed[kept != 0])
    # through the matte: a red disk on grey, M undecided over it
    plate = torch.full((3, 20, 24), 0.18)
    plate[0][mask < 0.5], plate[1][mask < 0.5] = 0.8, 0.05
    on = MatteSettings(temporal_weight=0.0, keep_cores=True)
    off = dataclasses.replace(on, keep_cores=False)
    disk = mask < 0.5
    assert float(mt.soft_matte(plate, mask, off, 1.0)[disk].min()) > 0.5  # painted over
    assert float((mt.soft_matte(plate, mask, on, 1.0)[disk] > 0.5).float().mean()) < 0.1


# ---------------------------------------------------------------------------------------------
# Guided filter and closed-form matting


def test_guided_filter_reproduces_a_linear_function_of_the_guide() -> None:
    guide = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(2))
    src = 0.3 * guide[0] - 0.2 * guide[1] + 0.5 * guide[2] + 0.1
    out = mt.guided_filter(guide, src, 3, 1e-8)
    torch.testing.assert_close(out, src, atol=1e-3, rtol=0)
    weighted = mt.guided_filter(guide, src, 3, 1e-8, torch.rand(20, 24) + 0.1)
    torch.testing.assert_close(weighted, src, atol=1e-3, rtol=0)
    const = mt.guided_filter(guide, torch.full((20, 24), 0.7), 3, 1e-3)
    torch.testing.assert_close(const, torch.full((20, 24), 0.7), atol=1e-5, rtol=0)


def test_matting_laplacian_is_symmetric_psd_with_constants_in_its_null_space() -> None:
    h, w = 5, 6
    guide = torch.rand(3, h, w, generator=torch.Generator().manual_seed(3))
    lap = mt.MattingLaplacian(guide, 1, 1e-4)
    basis = torch.eye(h * w).reshape(h * w, h, w)
    mat = torch.stack([lap(e).flatten() for e in basis])
    torch.testing.assert_close(mat, mat.T, atol=1e-4, rtol=1e-4)
    assert float(torch.linalg.eigvalsh(0.5 * (mat + mat.T)).min()) > -1e-4
    torch.testing.assert_close(lap(torch.ones(h, w)), torch.zeros(h, w), atol=1e-4, rtol=0)


def test_closed_form_recovers_the_alpha_of_a_two_colour_blend() -> None:
    # with constant fore/background colours the true alpha is in L's null space (Levin et al.)
    h, w = 16, 24
    xs = torch.arange(w, dtype=torch.float32)
    alpha = ((xs - 8) / 8).clamp(0, 1).expand(h, w)  # ramp over columns 8..16
    fg, bg = torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.8])
    guide = alpha * fg[:, None, None] + (1 - alpha) * bg[:, None, None]
    unknown = (xs >= 6) & (xs <= 18)
    unknown = unknown.expand(h, w)
    start = torch.where(unknown, 0.5, (alpha >= 0.5).float())
    out = mt.closed_form_refine(guide, start, unknown, 1, 1e-5, 200, rtol=1e-7)
    torch.testing.assert_close(out, alpha, atol=3e-3, rtol=0)  # measured 7e-4


@pytest.mark.parametrize("mask_value", [0.0, 0.41, 0.6, 1.0])
def test_soft_matte_stays_finite_when_the_whole_frame_is_undecided(mask_value: float) -> None:
    # an untrained mask (about 0.4 everywhere) made every pixel unknown: conjugate gradients
    # then hit 0/0 and the build wrote NaN into every pass
    g = torch.Generator().manual_seed(3)
    guide = torch.rand(3, 24, 40, generator=g)
    mask = torch.full((24, 40), mask_value)
    for roi in (None, torch.ones(24, 40)):
        alpha = mt.soft_matte(guide, mask, MatteSettings(), 2.0, roi_tracked=roi)
        assert bool(torch.isfinite(alpha).all())
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


@pytest.mark.parametrize(("edge_px", "ratio"), [(1.0, 0.8), (3.0, 0.5)])
def test_soft_matte_beats_the_hard_mask_on_soft_edges(edge_px: float, ratio: float) -> None:
    plates, truths = soft_edge_sequence(edge_px=edge_px)
    hard = (truths[0] >= 0.5).float()
    settings = MatteSettings(temporal_weight=0.0)
    soft = mt.soft_matte(plates[0], hard, settings, 1.0)
    # measured SAD hard → soft: edge 1 px 27.6 → 18.3, edge 3 px 89.8 → 25.5
    assert _sad(soft, truths[0]) < ratio * _sad(hard, truths[0])
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    if edge_px >= 3.0:  # the guided filter alone helps on wide edges only (44.8 here)
        guided_only = mt.soft_matte(
            plates[0], hard, dataclasses.replace(settings, closed_form_iterations=0), 1.0
        )
        assert _sad(guided_only, truths[0]) < 0.6 * _sad(hard, truths[0])


def test_soft_matte_at_plate_resolution_from_a_working_resolution_mask() -> None:
    scale = 2
    plates, truths = soft_edge_sequence(h=64 * scale // 2, w=96 * scale // 2, edge_px=3.0)
    truth = truths[0]
    working = F.avg_pool2d(truth[None, None], scale)[0, 0] >= 0.5
    mask = F.interpolate(
        working.float()[None, None], scale_factor=scale, mode="bilinear", align_corners=False
    )[0, 0]
    soft = mt.soft_matte(plates[0], mask, MatteSettings(temporal_weight=0.0), float(scale))
    assert _sad(soft, truth) < 0.7 * _sad((mask >= 0.5).float(), truth)


def test_sure_regions_are_forced_and_holdout_zeroes_the_matte() -> None:
    plates, truths = soft_edge_sequence()
    hard = (truths[0] >= 0.5).float()
    settings = MatteSettings(temporal_weight=0.0)
    tri = mt.make_trimap(hard, mt.band_radius(settings.band_px, 1.0), settings.uncertain_mask)
    holdout = torch.zeros_like(hard)
    holdout[:, :10] = 1.0
    holdout[:, 10:20] = 0.5
    out = mt.soft_matte(plates[0], hard, settings, 1.0, holdout=holdout)
    free = mt.soft_matte(plates[0], hard, settings, 1.0)
    sure = tri != mt.UNKNOWN
    assert torch.equal(free[sure], hard[sure])
    assert torch.equal(out[:, :10], torch.zeros_like(out[:, :10]))
    torch.testing.assert_close(out[:, 10:20], 0.5 * free[:, 10:20])
    torch.testing.assert_close(out[:, 20:], free[:, 20:])


def test_tiles_match_the_untiled_matte() -> None:
    plates, truths = soft_edge_sequence(h=80, w=100, edge_px=2.0)
    hard = (truths[0] >= 0.5).float()
    guide = mt.encode_guide(plates[0])
    tri = mt.make_trimap(hard, 2)
    whole = mt.guided_matte(guide, tri, 4, 1e-3, tile_px=4096)
    tiled = mt.guided_matte(guide, tri, 4, 1e-3, tile_px=32)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)  # the guided filter is exact
    whole_cf = mt.guided_matte(guide, tri, 4, 1e-3, cf_iterations=60, tile_px=4096)
    tiled_cf = mt.guided_matte(guide, tri, 4, 1e-3, cf_iterations=60, tile_px=32)
    assert float((tiled_cf - whole_cf).abs().max()) < 0.05
    assert abs(_sad(tiled_cf, truths[0]) - _sad(whole_cf, truths[0])) < 0.05 * _sad(
        whole_cf, truths[0]
    )


# ---------------------------------------------------------------------------------------------
# Tracked ROI: its border is not an image edge


def _roi_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plate, ROI (a box with antialiased sides), occluder-crossing mask and true matte."""
    plates, visible = soft_edge_sequence(h=64, w=96, edge_px=2.0)
    xs = torch.arange(96, dtype=torch.float32)
    ys = torch.arange(64, dtype=torch.float32)
    # box 8.5..60.5 x 10.5..54.5, antialiased over one pixel
    rx = ((xs - 8.0).clamp(0, 1) * (60.0 - xs + 1).clamp(0, 1))[None, :]
    ry = ((ys - 10.0).clamp(0, 1) * (54.0 - ys + 1).clamp(0, 1))[:, None]
    roi = (rx * ry).clamp(0, 1)
    truth = roi * visible[0]
    return plates[0], roi, truth, (truth >= 0.5).float()


def test_with_the_tracked_roi_only_occluder_edges_are_matted() -> None:
    plate, roi, truth, hard = _roi_scene()
    settings = MatteSettings(temporal_weight=0.0)
    with_roi = mt.soft_matte(plate, hard, settings, 1.0, roi_tracked=roi)
    without = mt.soft_matte(plate, hard, settings, 1.0)
    # the ROI's border carries no image edge: matting it would follow the texture
    # (measured SAD: hard 48.1, with the ROI 27.4, without 216)
    assert _sad(with_roi, truth) < 0.7 * _sad(hard, truth)
    assert _sad(with_roi, truth) < 0.25 * _sad(without, truth)
    # no occluder at all: the matte is the tracked ROI exactly
    no_occluder = mt.soft_matte(plate, (roi >= 0.5).float(), settings, 1.0, roi_tracked=roi)
    torch.testing.assert_close(no_occluder, roi)


# ---------------------------------------------------------------------------------------------
# Temporal stabilisation


def test_warp_previous_follows_an_integer_backward_flow() -> None:
    prev = torch.arange(20, dtype=torch.float32).reshape(4, 5) / 20
    flow = torch.zeros(2, 4, 5)
    flow[0] = 1.0  # pixel x of frame t shows what x + 1 showed in t - 1
    warped, valid = mt.warp_previous(prev, flow)
    torch.testing.assert_close(warped[:, :4], prev[:, 1:], atol=1e-6, rtol=0)
    assert valid[:, :4].all() and not valid[:, 4].any()
    same, ok = mt.warp_previous(prev, None)
    assert torch.equal(same, prev) and ok.all()


def test_stabilise_frame_blends_only_in_the_band_and_respects_the_tolerance() -> None:
    cur = torch.full((4, 4), 0.6)
    prev = torch.full((4, 4), 0.4)
    band = torch.zeros(4, 4, dtype=torch.bool)
    band[1:3] = True
    out = mt.stabilise_frame(cur, prev, None, band, 0.5)
    assert torch.allclose(out[band], torch.tensor(0.5)) and torch.equal(out[~band], cur[~band])
    # difference 0.2 with tolerance 0.4: the weight halves to 0.25
    out = mt.stabilise_frame(cur, prev, None, band, 0.5, tolerance=0.4)
    assert torch.allclose(out[band], torch.tensor(0.55))
    # an edge that moved (difference beyond the tolerance) is not dragged back
    out = mt.stabilise_frame(cur, torch.zeros(4, 4), None, band, 0.5, tolerance=0.3)
    assert torch.equal(out, cur)


def test_stabilise_leaves_an_exactly_moving_matte_unchanged() -> None:
    _, truths = soft_edge_sequence(frames=4, noise=0.0, velocity=(2.0, 0.0))
    flow = torch.zeros(2, *truths.shape[1:])
    flow[0] = -2.0
    out = mt.stabilise(truths, [None, flow, flow, flow], weight=0.5)
    torch.testing.assert_close(out[:, :, 8:-8], truths[:, :, 8:-8], atol=1e-4, rtol=0)


def test_stabilise_reduces_flicker_of_a_static_noisy_matte() -> None:
    g = torch.Generator().manual_seed(4)
    base = torch.linspace(0, 1, 32).expand(16, 32)
    mattes = (base + 0.1 * torch.randn(6, 16, 32, generator=g)).clamp(0, 1)
    band = (base > 0.2) & (base < 0.8)
    bands = band.expand(6, 16, 32)
    out = mt.stabilise(mattes, None, weight=0.5, unknown=bands)
    assert torch.equal(out[0], mattes[0])
    torch.testing.assert_close(
        out[1], torch.where(band, 0.5 * mattes[1] + 0.5 * mattes[0], mattes[1])
    )
    before = mt.temporal_flicker(mattes, None, bands)
    after = mt.temporal_flicker(out, None, bands)
    assert after < 0.6 * before
    assert torch.equal(out[:, ~band], mattes[:, ~band])


def test_matte_stream_is_steadier_than_per_frame_mattes() -> None:
    plates, truths = soft_edge_sequence(frames=5, edge_px=2.0, noise=0.03)
    hard = (truths >= 0.5).float()
    settings = MatteSettings()
    per_frame = torch.stack(
        [
            mt.soft_matte(p, m, dataclasses.replace(settings, temporal_weight=0.0), 1.0)
            for p, m in zip(plates, hard, strict=True)
        ]
    )
    stream = mt.MatteStream(settings, 1.0)
    steady = torch.stack([stream(p, m) for p, m in zip(plates, hard, strict=True)])
    radius = mt.band_radius(settings.band_px, 1.0)
    bands = torch.stack([mt.make_trimap(m, radius) == mt.UNKNOWN for m in hard])
    flicker_before = mt.temporal_flicker(per_frame, None, bands)
    flicker_after = mt.temporal_flicker(steady, None, bands)
    assert flicker_after < 0.8 * flicker_before
    assert _sad(steady, truths) <= 1.02 * _sad(per_frame, truths)
    # the first frame has no previous one; holdout does not feed the next frame's reference
    torch.testing.assert_close(steady[0], per_frame[0])


# ---------------------------------------------------------------------------------------------
# Backends: fallback, ViTMatte loader and tiling


def test_missing_vitmatte_weights_warn_once_and_fall_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MatteSettings(backend="vitmatte", vitmatte_dir=str(tmp_path / "none"))
    with caplog.at_level(logging.WARNING, logger="rna_engine.stages.matte"):
        backend = mt.load_backend(settings)
        again = mt.load_backend(settings)
    assert backend.name == "guided" and again.name == "guided"
    hits = [r for r in caplog.records if mt.INSTALL_HINT in r.getMessage()]
    assert len(hits) == 1
    assert "models install vitmatte" not in hits[0].getMessage()  # the CLI has no such model
    assert "matte.vitmatte_dir" in hits[0].getMessage()


def test_vitmatte_dir_finds_an_installed_folder_one_level_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNA_HOME", str(tmp_path))
    installed = tmp_path / "models" / "vitmatte" / "vitmatte-small"
    installed.mkdir(parents=True)
    (installed / "config.json").write_text("{}")
    assert mt.vitmatte_dir(MatteSettings()) == installed
    assert mt.vitmatte_dir(MatteSettings(vitmatte_dir="/x/y")) == Path("/x/y")


def test_tiled_apply_blends_a_pointwise_function_exactly() -> None:
    image = torch.rand(2, 50, 77, generator=torch.Generator().manual_seed(5))

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x[0] - 2 * x[1])

    out, ran = mt.tiled_apply(fn, image, 32, 8)
    torch.testing.assert_close(out, fn(image), atol=1e-6, rtol=0)
    assert ran.all()
    needed = torch.zeros(50, 77, dtype=torch.bool)
    needed[5, 5] = True
    _, ran = mt.tiled_apply(fn, image, 32, 8, needed)
    assert ran[:32, :32].all() and not ran[40:, 60:].any()


def _tiny_vitmatte(path: Path, mean: float | None = None) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = transformers.VitDetConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        num_channels=4,
        image_size=64,
        pretrain_image_size=64,
        out_features=["stage2"],
    )
    config = transformers.VitMatteConfig(
        backbone_config=backbone,
        hidden_size=32,
        convstream_hidden_sizes=[4, 8, 16],
        fusion_hidden_sizes=[16, 8, 8, 4],
    )
    model = transformers.VitMatteForImageMatting(config).eval()
    model.save_pretrained(str(path))
    if mean is not None:
        pre = {"image_mean": [mean] * 3, "image_std": [0.25] * 3}
        (path / "preprocessor_config.json").write_text(json.dumps(pre))


def _vitmatte_scene() -> tuple[torch.Tensor, torch.Tensor]:
    plates, truths = soft_edge_sequence(h=48, w=60, edge_px=2.0)
    return plates[0], mt.make_trimap((truths[0] >= 0.5).float(), 3)


def test_vitmatte_backend_feeds_the_model_as_its_processor_does(tmp_path: Path) -> None:
    _tiny_vitmatte(tmp_path, mean=0.4)
    settings = MatteSettings(backend="vitmatte", vitmatte_dir=str(tmp_path))
    backend = mt.load_backend(settings)
    assert isinstance(backend, mt.VitMatteBackend)
    assert backend.image_mean == (0.4, 0.4, 0.4) and backend.image_std == (0.25, 0.25, 0.25)
    plate, tri = _vitmatte_scene()
    alpha = backend(plate, tri, 3)
    # reference: the documented input built by hand, one tile (48×60 pads to 64×64)
    srgb = mt.encode_guide(plate, "srgb")
    occ_tri = 1.0 - tri
    occ_tri = torch.where(occ_tri == 0.5, 128 / 255, occ_tri)
    x = torch.cat(((srgb - 0.4) / 0.25, occ_tri[None]))[None]
    x = F.pad(x, (0, 4, 0, 16))
    built = backend.network_input(srgb, 1.0 - tri)
    torch.testing.assert_close(built, x, atol=1e-6, rtol=0)
    levels = built[0, 3, :48, :60].unique()
    torch.testing.assert_close(levels, torch.tensor([0.0, 128 / 255, 1.0]))  # 8-bit trimap
    with torch.no_grad():
        ref = 1.0 - backend.model(pixel_values=x).alphas[0, 0, :48, :60]
    band = tri == mt.UNKNOWN
    torch.testing.assert_close(alpha[band], ref.clamp(0, 1)[band], atol=1e-5, rtol=0)
    assert torch.equal(alpha[~band], (tri[~band] >= 0.5).float())


def test_vitmatte_tiles_are_the_model_on_each_tile_where_they_do_not_overlap(
    tmp_path: Path,
) -> None:
    _tiny_vitmatte(tmp_path)
    plate, tri = _vitmatte_scene()
    tiled = mt.VitMatteBackend.load(tmp_path, "cpu", tile_px=32, overlap_px=8)
    whole = mt.VitMatteBackend.load(tmp_path, "cpu", tile_px=64, overlap_px=8)
    out = tiled(plate, tri, 3)
    first = whole(plate[:, :32, :32], tri[:32, :32], 3)  # the first tile on its own
    only_first = (slice(0, 24), slice(0, 24))  # before the next tiles' overlap starts
    band = (tri == mt.UNKNOWN)[only_first]
    assert band.any()
    torch.testing.assert_close(out[only_first][band], first[only_first][band], atol=1e-5, rtol=0)
    soft = mt.soft_matte(plate, (tri >= 0.5).float(), MatteSettings(), 1.0, backend=tiled)
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0


def test_matte_settings_validate_new_fields() -> None:
    with pytest.raises(InputError, match="matte.vitmatte_tile_px"):
        MatteSettings(vitmatte_tile_px=100)
    with pytest.raises(InputError, match="matte.uncertain_mask"):
        MatteSettings(uncertain_mask=0.5)
    assert math.isclose(MatteSettings().temporal_tolerance, 0.2)
    assert np.isfinite(MatteSettings().closed_form_eps)


def test_a_narrower_sliver_width_keeps_an_occluder_entering_across_the_roi_border() -> None:
    roi = torch.zeros(20, 30)
    roi[4:16, 5:25] = 1.0
    mask = roi.clone()
    mask[4:16, 5:8] = 0.0  # a 3 px wide occluder entering across the ROI's left border
    mask[4:16, 24] = 0.0  # a 1 px disagreement along the right border
    dropped = mt.occluder_target(mask, roi, 2)
    kept = mt.occluder_target(mask, roi, 2, sliver_px=1)
    # within the band of the border, narrower than the band: the ROI decides
    assert bool((dropped[4:16, 5:7] == 1.0).all())
    assert bool((kept[6:14, 5:8] == 0.0).all())
    assert bool((kept[4:16, 24] == 1.0).all())  # a 1 px sliver is still dropped
