"""STMap conventions and Nuke-style sampling (rna_engine/media/stmap.py), on hand-computed 3×4 cases."""

from __future__ import annotations

import numpy as np
import pytest

from rna_engine.media import stmap
from rna_engine.media.stmap import identity_stmap, sample_stmap


def _image(height: int = 3, width: int = 4, channels: int = 2) -> np.ndarray:
    values = np.arange(height * width * channels, dtype=np.float32)
    return values.reshape(height, width, channels) * np.float32(0.25) - np.float32(1.0)


@pytest.mark.parametrize("height,width", [(3, 4), (1, 1), (5, 2)])
def test_identity_impulse_returns_the_image_exactly(height: int, width: int) -> None:
    image = np.random.default_rng(0).normal(size=(height, width, 3)).astype(np.float32)
    out = sample_stmap(image, identity_stmap(height, width), "impulse")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image)


INTERPOLATING = ["cubic", "keys", "simon", "rifman", "linear", "lanczos4", "lanczos6", "sinc4"]


@pytest.mark.parametrize("name", INTERPOLATING)
def test_identity_with_interpolating_filters_returns_the_image(name: str) -> None:
    # B = 0 cubics, the tent and the windowed sincs are 1 at their centre and 0 on the other
    # pixel centres (sin(πn) ≈ 1e-16 in float64), so the identity map returns the image.
    image = _image()
    out = sample_stmap(image, identity_stmap(3, 4), name)
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_identity_values_are_the_documented_formula() -> None:
    uv = identity_stmap(3, 4)
    assert uv.shape == (3, 4, 2)
    assert uv[0, 0].tolist() == [0.125, pytest.approx(1 - 0.5 / 3)]  # top-left pixel
    assert uv[2, 3].tolist() == [0.875, pytest.approx(0.5 / 3)]  # bottom-right pixel


def test_one_pixel_shift_right_clamps_at_the_edge() -> None:
    # Like kornia's test_shift: sampling at u + 1/W reads the next column; the last column
    # repeats the edge pixel (clamp).
    image = _image(3, 4, 1)
    uv = identity_stmap(3, 4)
    uv[..., 0] += 1.0 / 4.0
    expected = image[:, [1, 2, 3, 3]]
    for name in ("impulse", "linear", "keys", "cubic", "lanczos4", "lanczos6", "sinc4"):
        np.testing.assert_allclose(sample_stmap(image, uv, name), expected, atol=1e-6)


def test_one_pixel_shift_up_reads_the_row_above() -> None:
    # v grows upwards: v + 1/H looks one row *up*, i.e. numpy row - 1.
    image = _image(3, 4, 1)
    uv = identity_stmap(3, 4)
    uv[..., 1] += 1.0 / 3.0
    expected = image[[0, 0, 1]]
    np.testing.assert_allclose(sample_stmap(image, uv, "impulse"), expected)
    np.testing.assert_allclose(sample_stmap(image, uv, "keys"), expected, atol=1e-6)


def test_origin_is_bottom_left() -> None:
    image = _image(3, 4, 1)
    corners = np.array([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3]]], np.float32)  # (1, 2, 2)
    out = sample_stmap(image, corners, "impulse")[0, :, 0]
    assert out.tolist() == [image[2, 0, 0], image[0, 3, 0]]  # bottom-left, top-right


def test_half_pixel_linear_is_the_mean_of_neighbours() -> None:
    image = np.array([[[0.0], [2.0], [10.0]]], np.float32)  # 1×3
    uv = np.array([[[1.0 / 3.0, 0.5], [2.0 / 3.0, 0.5]]], np.float32)  # between pixel centres
    out = sample_stmap(image, uv, "linear")[0, :, 0]
    np.testing.assert_allclose(out, [1.0, 6.0], atol=1e-6)


def test_impulse_picks_the_pixel_containing_the_point() -> None:
    image = np.array([[[0.0], [1.0], [2.0], [3.0]]], np.float32)
    u = np.array([0.0, 0.2499, 0.25, 0.74, 0.9999, 1.5, -0.3])
    uv = np.stack([u, np.full_like(u, 0.5)], axis=-1)[None].astype(np.float64)
    out = sample_stmap(image, uv, "impulse")[0, :, 0]
    assert out.tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 0.0]


def test_catmull_rom_known_weights() -> None:
    # Keys = Catmull-Rom (B=0, C=1/2): k(0.5) = 0.5625, k(1.5) = -0.0625.
    k = stmap.cubic_weight(np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5]), 0.0, 0.5)
    np.testing.assert_allclose(k, [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0], atol=1e-12)
    # Halfway between two pixels of a step edge 0 | 1 in a row 0 0 1 1.
    image = np.array([[[0.0], [0.0], [1.0], [1.0]]], np.float32)
    out = sample_stmap(image, np.array([[[0.5, 0.5]]], np.float32), "keys")
    assert out[0, 0, 0] == pytest.approx(0.5, abs=1e-6)
    out = sample_stmap(image, np.array([[[0.4375, 0.5]]], np.float32), "keys")  # x_px = 1.75
    # taps at distances 1.25, 0.25, 0.75, 1.75: -0.0703125, 0.8671875, 0.2265625, -0.0234375
    assert out[0, 0, 0] == pytest.approx(0.2265625 - 0.0234375, abs=1e-6)


@pytest.mark.parametrize("name", sorted(stmap.CUBIC_BC))
def test_cubic_weights_sum_to_one(name: str) -> None:
    b, c = stmap.CUBIC_BC[name]
    t = np.linspace(0.0, 1.0, 17)[:, None]
    k = stmap.cubic_weight(t + np.array([1.0, 0.0, -1.0, -2.0]), b, c)
    np.testing.assert_allclose(k.sum(axis=1), 1.0, atol=1e-12)


def test_mitchell_blurs_even_at_pixel_centres() -> None:
    # Mitchell (B = C = 1/3): k(0) = 8/9, k(1) = 1/18 — a single bright texel spreads.
    image = np.zeros((5, 5, 1), np.float32)
    image[2, 2] = 1.0
    out = sample_stmap(image, identity_stmap(5, 5), "mitchell")[..., 0]
    assert out[2, 2] == pytest.approx((8 / 9) ** 2, abs=1e-6)
    assert out[2, 3] == pytest.approx(8 / 9 / 18, abs=1e-6)
    assert out[1, 1] == pytest.approx(1 / 18**2, abs=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_uv_is_normalised_so_any_atlas_size_works() -> None:
    # The same UVs sampled on a 2× replicated atlas give the same picture.
    image = _image(3, 4, 2)
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    out = sample_stmap(big, identity_stmap(3, 4), "impulse")
    np.testing.assert_array_equal(out, image)


def test_pixel_round_trip_and_centres() -> None:
    uv = identity_stmap(3, 4)
    x, row = stmap.stmap_to_pixel(uv, 4, 3)
    np.testing.assert_allclose(x[0], [0.5, 1.5, 2.5, 3.5], atol=1e-6)
    np.testing.assert_allclose(row[:, 0], [0.5, 1.5, 2.5], atol=1e-6)
    np.testing.assert_allclose(stmap.pixel_to_stmap(x, row, 4, 3), uv, atol=1e-7)


def test_uv_norm_at_the_reference_frame_is_the_identity_stmap() -> None:
    # At the reference frame T(x, y, r) = (x̃, ỹ): the STMap is the identity of the working grid,
    # for a landscape and a portrait working resolution.
    for width, height in ((8, 6), (6, 8)):
        half = max(width, height) / 2
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        uv_norm = np.stack([x / half - 1, y / half - 1], axis=-1)
        uv = stmap.uv_norm_to_stmap(uv_norm, width, height)
        np.testing.assert_allclose(uv, identity_stmap(height, width), atol=1e-7)
        np.testing.assert_allclose(stmap.stmap_to_uv_norm(uv, width, height), uv_norm, atol=1e-12)


def test_uv_norm_lands_on_the_plate_pixel_it_covers() -> None:
    # Working 4×2 of a 16×8 plate: working pixel (x=1, y=0) covers plate columns [4, 8) and rows
    # [0, 4); its centre is plate pixel position (6, 2) → u = 6/16, v = 1 - 2/8.
    uv = stmap.uv_norm_to_stmap(np.array([1 / 2 - 1, -1.0]), 4, 2)
    np.testing.assert_allclose(uv, [6 / 16, 1 - 2 / 8])


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="filter"):
        sample_stmap(_image(), identity_stmap(3, 4), "gaussian")
    with pytest.raises(ValueError, match="uv_stmap"):
        sample_stmap(_image(), np.zeros((3, 4), np.float32))


def _textbook_kernel(name: str, t: np.ndarray) -> np.ndarray:
    """Each filter from its textbook formula, written apart from `rna_engine.media.stmap`."""
    s = np.abs(t)
    if name == "linear":
        return np.maximum(1.0 - s, 0.0)
    if name in ("cubic", "keys"):  # Keys (1981) with a = −C: cubic a = 0, keys a = −1/2
        a = 0.0 if name == "cubic" else -0.5
        inner = (a + 2) * s**3 - (a + 3) * s**2 + 1
        outer = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return np.select([s <= 1, s < 2], [inner, outer], 0.0)
    a = {"lanczos4": 2, "lanczos6": 3, "sinc4": 4}[name]
    safe = np.where(s == 0, 1.0, s)
    value = a * np.sin(np.pi * safe) * np.sin(np.pi * safe / a) / (np.pi * safe) ** 2
    return np.select([s == 0, s < a], [1.0, value], 0.0)


def test_windowed_sinc_known_values() -> None:
    # Lanczos a = 2: k(0.5) = sinc(1/2)·sinc(1/4) = (2/π)(2√2/π) = 4√2/π²,
    # k(1.5) = sinc(3/2)·sinc(3/4) = −(2/3π)(2√2/3π) = −4√2/(9π²); zeros at ±1, and 0 from |d| = 2.
    k = stmap.windowed_sinc_weight(np.array([0.0, 0.5, -0.5, 1.0, 1.5, 2.0, 2.5]), 2)
    r2 = np.sqrt(2.0)
    want = [1.0, 4 * r2 / np.pi**2, 4 * r2 / np.pi**2, 0.0, -4 * r2 / (9 * np.pi**2), 0.0, 0.0]
    np.testing.assert_allclose(k, want, atol=1e-15)
    assert stmap.windowed_sinc_weight(np.array([2.999]), 3)[0] != 0.0  # Lanczos6 reaches 3 px
    assert stmap.windowed_sinc_weight(np.array([3.999]), 4)[0] != 0.0  # Sinc4 reaches 4 px
    assert stmap.windowed_sinc_weight(np.array([3.0, 4.0]), 3).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", ["linear", "cubic", "keys", "lanczos4", "lanczos6", "sinc4"])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8])
def test_impulse_image_gives_the_kernel_weights(name: str, fraction: float) -> None:
    # A single 1 at column 12 of a 1×25 row, looked up `fraction` px right of each pixel centre:
    # output column i reads at distance (i − 12) + fraction from the impulse, so the row of
    # outputs is the kernel sampled at integer steps, normalised to sum 1 (as Nuke does).
    width, centre = 25, 12
    image = np.zeros((1, width, 1), np.float32)
    image[0, centre] = 1.0
    u = (np.arange(width) + 0.5 + fraction) / width  # float64: exact enough for 1e-7
    uv = np.stack([u, np.full(width, 0.5)], axis=-1)[None]
    out = sample_stmap(image, uv, name)[0, :, 0]
    t = np.arange(width) - centre + fraction
    want = _textbook_kernel(name, t)
    want = want / want.sum()
    np.testing.assert_allclose(out, want, atol=1e-7)
    assert out.sum() == pytest.approx(1.0, abs=1e-6)
    radius = {"linear": 1, "cubic": 2, "keys": 2, "lanczos4": 2, "lanczos6": 3, "sinc4": 4}[name]
    assert np.count_nonzero(np.abs(out) > 1e-9) <= 2 * radius  # the support, no wider


@pytest.mark.parametrize("name", stmap.FILTERS)
def test_weights_sum_to_one_so_a_flat_image_stays_flat(name: str) -> None:
    # Anywhere, including far outside the image (edge pixels repeat): sum of weights = 1.
    image = np.full((6, 7, 2), 0.37, np.float32)
    uv = np.random.default_rng(4).uniform(-0.8, 1.8, (9, 5, 2))
    np.testing.assert_allclose(sample_stmap(image, uv, name), 0.37, atol=1e-6)


def test_sharpening_order_of_the_sinc_filters() -> None:
    # Foundry: Lanczos4 sharpens least, Sinc4 most — the negative lobe next to a step grows.
    image = np.zeros((1, 24, 1), np.float32)
    image[0, 12:] = 1.0
    uv = identity_stmap(1, 24).astype(np.float64)
    uv[..., 0] += 0.5 / 24  # halfway between pixel centres
    undershoot = [float(sample_stmap(image, uv, n)[0, :12, 0].min()) for n in INTERPOLATING[5:]]
    assert undershoot[0] > undershoot[1] > undershoot[2] and undershoot[0] < 0


@pytest.mark.parametrize(
    "name,k0,k1",
    [("mitchell", 8 / 9, 1 / 18), ("parzen", 2 / 3, 1 / 6), ("notch", 1 / 2, 1 / 4)],
)
def test_identity_with_blurring_cubics_spreads_a_texel_by_k0_k1(
    name: str, k0: float, k1: float
) -> None:
    # B > 0: k(0) = (6 − 2B)/6, k(±1) = B/6, so the identity map blurs a single texel separably.
    image = np.zeros((5, 5, 1), np.float32)
    image[2, 2] = 1.0
    out = sample_stmap(image, identity_stmap(5, 5), name)[..., 0]
    want = np.zeros((5, 5))
    want[1:4, 1:4] = np.outer([k1, k0, k1], [k1, k0, k1])
    np.testing.assert_allclose(out, want, atol=1e-6)
