"""rna_engine.media.metrics: known answers on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from rna_engine.media import metrics
from rna_engine.media.stmap import identity_stmap


def test_identity_stmap_is_the_reference_grid() -> None:
    ref = metrics.stmap_to_ref_xy(identity_stmap(3, 4), 4, 3)
    ys, xs = np.mgrid[0:3, 0:4]
    np.testing.assert_allclose(ref, np.stack([xs, ys], -1), atol=1e-6)


def test_uv_error_of_a_known_shift() -> None:
    h, w = 6, 8
    uv = identity_stmap(h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    truth = np.stack([xs + 3.0, ys - 4.0], -1)  # 3-4-5: every pixel is off by exactly 5 px
    region = np.zeros((h, w), bool)
    region[1:4, 2:6] = True
    err = metrics.uv_error_px(uv, truth, region)
    assert err.shape == (12,)
    np.testing.assert_allclose(err, 5.0, atol=1e-5)
    assert metrics.quantiles(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == [3.0, pytest.approx(4.6)]
    assert metrics.quantiles(np.array([])) == [None, None]


def test_encoded_error_and_psnr() -> None:
    a = np.zeros((2, 2, 3), np.float32)
    b = a.copy()
    b[0, 0] = 0.1
    region = np.ones((2, 2), bool)
    total, n = metrics.encoded_error(a, b, region, lambda x: x)
    assert n == 4
    assert total == pytest.approx(0.01)
    assert metrics.psnr(total / n) == pytest.approx(-10 * np.log10(0.0025))
    assert metrics.psnr(0.0) == 99.0
    assert metrics.region_psnr(a, b, np.zeros((2, 2), bool)) is None
    assert metrics.region_psnr(a, b, region) == pytest.approx(metrics.psnr(0.0025))


def test_shares_and_paint() -> None:
    region = np.array([[True, True], [True, False]])
    cond = np.array([[True, False], [False, True]])
    assert metrics.share(cond, region) == pytest.approx(1 / 3)
    assert metrics.share(cond, np.zeros_like(region)) is None
    base = np.zeros((2, 2, 3), np.float32)
    comp = base.copy()
    comp[0, 0] = (0.1, 0.1, 0.1)  # 0.3
    comp[1, 1] = (0.7, 0.0, 0.0)  # 0.7
    paint = metrics.paint_amount(comp, base)
    assert metrics.paint_share(paint, ~region) == pytest.approx(0.7)
    assert metrics.paint_share(np.zeros((2, 2)), region) is None
    # A full view would receive 10: the 0.7 on the region is 7 % of it, not 70 %.
    assert metrics.paint_share(paint, ~region, at_least=10.0) == pytest.approx(0.07)
    assert metrics.paint_share(paint, ~region, at_least=0.5) == pytest.approx(0.7)
    assert metrics.iou_counts(cond, region) == (1, 4)


def test_paint_over_straight_alpha() -> None:
    atlas = np.full((1, 2, 4), 0.5, np.float32)
    edit = np.array([[[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.25]]], np.float32)
    out = metrics.paint_over(atlas, edit)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(out[0, 1], [0.625, 0.625, 0.625, 0.5])


def test_tracked_region_follows_the_uvs() -> None:
    h, w = 6, 8
    roi = np.zeros((h, w), np.float32)
    roi[2:4, 2:5] = 1.0
    uv = identity_stmap(h, w)
    np.testing.assert_array_equal(metrics.tracked_region(roi, uv), roi > 0.5)
    shifted = uv.copy()
    shifted[..., 0] += 2.0 / w  # each pixel looks 2 px to its right in the atlas
    expect = np.zeros((h, w), bool)
    expect[2:4, 0:3] = True
    np.testing.assert_array_equal(metrics.tracked_region(roi, shifted), expect)
    uv[0, 0] = 0.0  # outside the data window: never tracked, even over the ROI
    roi[0, 0] = 1.0
    assert not metrics.tracked_region(roi, uv)[0, 0]


def test_grow_and_shrink() -> None:
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    assert metrics.grow(m, 2).sum() == 13  # the pixels within 2 px of the centre
    block = np.zeros((9, 9), bool)
    block[2:7, 2:7] = True
    inner = np.zeros((9, 9), bool)
    inner[3:6, 3:6] = True
    np.testing.assert_array_equal(metrics.grow(block, -1), inner)
    edge = np.ones((4, 4), bool)  # eroding ignores the image border
    assert metrics.grow(edge, -1).all()


def test_worst_first_summary_and_distance() -> None:
    rows = [
        {"index": 0, "cov": 0.2},
        {"index": 1, "cov": None},
        {"index": 2, "cov": 0.9},
        {"index": 3, "cov": 0.5},
    ]
    assert [r["index"] for r in metrics.worst_first(rows, "cov", True)] == [0, 3, 2, 1]
    assert [r["index"] for r in metrics.worst_first(rows, "cov", False)] == [2, 3, 0, 1]
    s = metrics.summarise(rows, "cov", higher_is_better=True)
    assert s["worst"] == 0.2 and s["median"] == 0.5
    assert s["mean"] == pytest.approx(1.6 / 3)
    assert metrics.summarise([], "cov", True)["worst"] is None
    bins = metrics.by_distance(rows, "cov", reference_index=2, n_frames=4, bins=(0.5, 1.0))
    # reach 2: frame 2 (d 0) and 3 (d 0.5) in the first bin, frame 0 (d 1) in the second.
    assert bins[0] == {"distance": "0-0.5", "frames": 2, "median": pytest.approx(0.7)}
    assert bins[1] == {"distance": "0.5-1", "frames": 1, "median": 0.2}
