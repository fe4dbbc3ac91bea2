"""UV conventions and Nuke-exact STMap sampling (docs/cache.md).

Three coordinate systems meet here; every name says which one it holds:

- `uv_stmap`: Nuke's STMap convention, what the cache stores. `u, v ∈ [0, 1]` over the whole
  atlas image, origin at the **bottom-left corner**, pixel centres at `+0.5`. The identity map of
  a W×H image is `u = (x + 0.5)/W`, `v = 1 − (row + 0.5)/H` for column `x` and top-down `row`.
  Normalised, so the atlas may be resampled to any size.
- `x_px, row_px`: continuous pixel coordinates of an image, column from the left, row from the
  top; pixel `(x, row)` covers `[x, x+1) × [row, row+1)`, its centre is at `+0.5`.
- `uv_norm`: the fit's normalised frame coordinates (docs/method.md §1.2) at the working resolution
  `W_w × H_w`: `x̃ = x/(rez/2) − 1`, `ỹ = y/(rez/2) − 1`, `rez = max(W_w, H_w)`, with `x` the
  column and `y` the top-down row, pixel **centres at integers**.

`sample_stmap` reproduces what Nuke's STMap node computes for one output pixel: the source is
looked up at the continuous point `(u·W, v·H)` (y up), the taps are the source pixels around it
weighted by the node's filter kernel, and lookups beyond the image repeat its edge pixels.
"""

from __future__ import annotations

import numpy as np

# Mitchell–Netravali (B, C) of Nuke's cubic filters. The Foundry page "Choosing a Filtering
# Algorithm" describes them only qualitatively (Keys: minor, Simon: medium, Rifman: significant
# sharpening); the values are those of Nuke's filter-knob help text (DD::Image::Filter::HELP),
# quoted from memory because the text itself could not be retrieved — see `FILTERS_NOTE`.
CUBIC_BC: dict[str, tuple[float, float]] = {
    "cubic": (0.0, 0.0),
    "keys": (0.0, 0.5),
    "simon": (0.0, 0.75),
    "rifman": (0.0, 1.0),
    "mitchell": (1.0 / 3.0, 1.0 / 3.0),
    "parzen": (1.0, 0.0),
    "notch": (1.5, -0.25),
}
# Radius `a` of Nuke's windowed-sinc filters, k(d) = sinc(d)·sinc(d/a) for |d| < a. Nuke's
# NDK lists them after the cubics (DD::Image::Filter: Lanczos4, Lanczos6, Sinc4) and its
# Filter::Coefficients carry a `normalize` factor "to make it sum to 1"; the Foundry page orders
# them by sharpening (Lanczos4 least, Sinc4 most). The radii (the name's number = support width
# for Lanczos, = radius for Sinc4) are our reading, not a quoted formula — see `FILTERS_NOTE`.
WINDOWED_SINC_RADIUS: dict[str, int] = {"lanczos4": 2, "lanczos6": 3, "sinc4": 4}
FILTERS: tuple[str, ...] = ("impulse", "linear", *CUBIC_BC, *WINDOWED_SINC_RADIUS)
"""Filter names `sample_stmap` accepts (lower case): Nuke's STMap filter menu in its order, plus
`linear`, which is not a Nuke STMap filter but the bilinear reference used by the bake and tests."""
FILTERS_NOTE = (
    "Nuke's Cubic/Keys/Simon/Rifman/Mitchell/Parzen/Notch are taken as Mitchell-Netravali "
    "cubics with (B, C) = (0, 0), (0, 1/2), (0, 3/4), (0, 1), (1/3, 1/3), (1, 0), (3/2, -1/4); "
    "Lanczos4/Lanczos6/Sinc4 as sinc(d)*sinc(d/a) with a = 2, 3, 4, weights normalised to sum 1."
)


def identity_stmap(height: int, width: int) -> np.ndarray:
    """The identity STMap of a `width`×`height` image.

    Convention:
        `u = (x + 0.5)/width`, `v = 1 − (row + 0.5)/height`; origin bottom-left, centres +0.5.

    Returns:
        (height, width, 2) float32: `[..., 0] = u`, `[..., 1] = v`.

    >>> identity_stmap(2, 4)[0, :, 0].tolist()
    [0.125, 0.375, 0.625, 0.875]
    >>> identity_stmap(2, 4)[:, 0, 1].tolist()
    [0.75, 0.25]
    """
    u = (np.arange(width, dtype=np.float64) + 0.5) / width
    v = 1.0 - (np.arange(height, dtype=np.float64) + 0.5) / height
    out = np.empty((height, width, 2), np.float32)
    out[..., 0] = u[None, :]
    out[..., 1] = v[:, None]
    return out


def stmap_to_pixel(uv_stmap: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """STMap coordinates → continuous pixel coordinates of a `width`×`height` image.

    Convention:
        `x_px = u·width`, `row_px = (1 − v)·height`; pixel centres land on `+0.5`.

    Args:
        uv_stmap: (..., 2) in STMap convention.

    Returns:
        `(x_px, row_px)`, each (...) float64.

    >>> x, r = stmap_to_pixel(np.array([0.125, 0.75]), 4, 2)
    >>> float(x), float(r)
    (0.5, 0.5)
    """
    uv = np.asarray(uv_stmap, dtype=np.float64)
    return uv[..., 0] * width, (1.0 - uv[..., 1]) * height


def pixel_to_stmap(x_px: np.ndarray, row_px: np.ndarray, width: int, height: int) -> np.ndarray:
    """Continuous pixel coordinates → STMap coordinates (inverse of `stmap_to_pixel`).

    Returns:
        (..., 2) float64: `u = x_px/width`, `v = 1 − row_px/height`.
    """
    x = np.asarray(x_px, dtype=np.float64)
    r = np.asarray(row_px, dtype=np.float64)
    return np.stack([x / width, 1.0 - r / height], axis=-1)


def uv_norm_to_stmap(uv_norm: np.ndarray, working_width: int, working_height: int) -> np.ndarray:
    """The fit's normalised frame coordinates → STMap coordinates of the atlas.

    Convention:
        The atlas covers the plate's format (× `atlas_scale`) and is aligned with the reference
        frame, so a `uv_norm` value is the point's position in the reference frame. With
        `rez = max(W_w, H_w)` the working pixel index is `x = (x̃ + 1)·rez/2`,
        `y = (ỹ + 1)·rez/2` (centres at integers). Working pixel `x` covers the plate columns
        `[x·W_p/W_w, (x+1)·W_p/W_w)`, so its centre is at plate column `(x + 0.5)·W_p/W_w`,
        and on an atlas raster of `W_p·s` columns at atlas column `(x + 0.5)·W_p·s/W_w`.
        Normalising by the atlas width, the plate size and `atlas_scale` cancel:

            u = ((x̃ + 1)·rez/2 + 0.5) / W_w
            v = 1 − ((ỹ + 1)·rez/2 + 0.5) / H_w

    Args:
        uv_norm: (..., 2) `(x̃, ỹ)`.
        working_width, working_height: the working resolution `W_w`, `H_w` of the fit.

    Returns:
        (..., 2) float64 in STMap convention.

    >>> uv_norm_to_stmap(np.array([-1.0, -1.0]), 4, 2).tolist()
    [0.125, 0.75]
    """
    uv = np.asarray(uv_norm, dtype=np.float64)
    half = max(working_width, working_height) / 2.0
    x = (uv[..., 0] + 1.0) * half
    y = (uv[..., 1] + 1.0) * half
    return np.stack([(x + 0.5) / working_width, 1.0 - (y + 0.5) / working_height], axis=-1)


def stmap_to_uv_norm(uv_stmap: np.ndarray, working_width: int, working_height: int) -> np.ndarray:
    """STMap coordinates → the fit's normalised frame coordinates (inverse of `uv_norm_to_stmap`).

    Returns:
        (..., 2) float64 `(x̃, ỹ)`.
    """
    uv = np.asarray(uv_stmap, dtype=np.float64)
    half = max(working_width, working_height) / 2.0
    x = uv[..., 0] * working_width - 0.5
    y = (1.0 - uv[..., 1]) * working_height - 0.5
    return np.stack([x / half - 1.0, y / half - 1.0], axis=-1)


def cubic_weight(distance: np.ndarray, b: float, c: float) -> np.ndarray:
    """Mitchell–Netravali cubic kernel k(d) (Mitchell & Netravali 1988, Eq. 8), support |d| < 2.

    Written as nested polynomials (Horner) of |d|; weights of a lookup sum to 1 for every B, C.
    """
    d = np.abs(distance)
    near = ((12.0 - 9.0 * b - 6.0 * c) * d + (-18.0 + 12.0 * b + 6.0 * c)) * d * d + (6.0 - 2.0 * b)
    far = (((-b - 6.0 * c) * d + (6.0 * b + 30.0 * c)) * d + (-12.0 * b - 48.0 * c)) * d + (
        8.0 * b + 24.0 * c
    )
    return np.where(d < 1.0, near, np.where(d < 2.0, far, 0.0)) / 6.0


def windowed_sinc_weight(distance: np.ndarray, radius: int) -> np.ndarray:
    """Lanczos kernel k(d) = sinc(d)·sinc(d/a) for |d| < a (0 beyond), `sinc(x) = sin(πx)/(πx)`.

    Unlike the cubics its taps do not sum to exactly 1; `_taps` normalises them, as Nuke does.
    """
    d = np.abs(np.asarray(distance, dtype=np.float64))
    return np.where(d < radius, np.sinc(d) * np.sinc(d / radius), 0.0)


def _taps(pos_px: np.ndarray, size: int, filt: str) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices (clamped to the image: edge pixels repeat) and weights along one axis.

    Args:
        pos_px: (...) continuous pixel coordinate (centres at +0.5), measured along the axis.
        size: pixels along the axis.

    Returns:
        `(index, weight)`, each (..., K): int64 indices in [0, size), float32 weights.
    """
    if filt == "impulse":
        # Nuke's impulse takes the pixel whose square contains the point.
        index = np.floor(pos_px)[..., None]
        weight = np.ones_like(index)
    elif filt == "linear":
        centre = pos_px - 0.5
        i0 = np.floor(centre)
        t = centre - i0
        index = np.stack([i0, i0 + 1.0], axis=-1)
        weight = np.stack([1.0 - t, t], axis=-1)
    elif filt in CUBIC_BC:
        b, c = CUBIC_BC[filt]
        centre = pos_px - 0.5
        i0 = np.floor(centre)
        index = i0[..., None] + np.array([-1.0, 0.0, 1.0, 2.0])
        weight = cubic_weight(centre[..., None] - index, b, c)
    else:
        radius = WINDOWED_SINC_RADIUS[filt]
        centre = pos_px - 0.5
        i0 = np.floor(centre)
        index = i0[..., None] + np.arange(1 - radius, radius + 1, dtype=np.float64)
        weight = windowed_sinc_weight(centre[..., None] - index, radius)
        # Normalised before the edge clamp, as Nuke's Filter::Coefficients::normalize does.
        weight = weight / weight.sum(axis=-1, keepdims=True)
    index = np.clip(index, 0, size - 1).astype(np.int64)
    return index, weight.astype(np.float32)


def sample_stmap(image: np.ndarray, uv_stmap: np.ndarray, filter: str = "cubic") -> np.ndarray:
    """Look `image` up at STMap coordinates, as Nuke's STMap node does.

    Convention:
        `uv_stmap` is normalised over the whole image, origin bottom-left, pixel centres at +0.5
        (docs/cache.md). The lookup point is `(u·W, v·H)` with y up; the taps are the pixels whose
        centres `(i + 0.5, j + 0.5)` lie within the kernel's support, weighted separably. Edge
        mode is **clamp** (the edge pixels repeat): Nuke extends every image beyond its bounding
        box by repeating the edge pixels, and the atlas's bounding box is its format. `impulse`
        returns the pixel containing the point (`floor(u·W)`, `floor(v·H)` counted from the
        bottom), so the identity map returns the image exactly.
        Cubic kernels span 4 taps per axis, Lanczos4/Lanczos6/Sinc4 span 4/6/8 taps and are
        normalised to sum to 1 (`FILTERS_NOTE`).
        Not modelled: Nuke widens the kernel when the map minifies (its footprint follows the UV
        derivatives and the `blur` channel); at the cache's ~1:1 scale the kernel is unit-width.

    Args:
        image: (H, W, C) float32, the source (atlas).
        uv_stmap: (h, w, 2) STMap coordinates, one lookup per output pixel.
        filter: one of `FILTERS` (case-insensitive), Nuke's name of the kernel.

    Returns:
        (h, w, C) float32.

    >>> img = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    >>> sample_stmap(img, identity_stmap(2, 3), "impulse")[..., 0].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    filt = filter.lower()
    if filt not in FILTERS:
        raise ValueError(f"filter {filter!r}: not one of {', '.join(FILTERS)}")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    uv = np.asarray(uv_stmap)
    if uv.ndim != 3 or uv.shape[-1] != 2:
        raise ValueError(f"uv_stmap must be (h, w, 2), got shape {uv.shape}")
    height, width = image.shape[:2]
    x_px = uv[..., 0].astype(np.float64) * width
    y_up_px = uv[..., 1].astype(np.float64) * height  # Nuke's y, from the bottom edge
    ix, wx = _taps(x_px, width, filt)
    iy_up, wy = _taps(y_up_px, height, filt)
    rows = (height - 1) - iy_up  # numpy rows count from the top
    out = np.zeros((*uv.shape[:2], image.shape[2]), np.float32)
    for a in range(rows.shape[-1]):
        for b in range(ix.shape[-1]):
            weight = wy[..., a] * wx[..., b]
            out += weight[..., None] * image[rows[..., a], ix[..., b]]
    return out
