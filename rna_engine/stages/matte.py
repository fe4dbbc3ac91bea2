"""Soft matte of the visible ROI from the refined mask (docs/method.md §6).

Contract: `soft_matte` turns the fit's hard-ish mask M (plate resolution, 0..1) and the plate
into a soft matte of the visible ROI at plate resolution, float32 in [0, 1], one frame at a time
in bounded memory (work is tiled and limited to the unknown band's bounding box):

1. **Trimap** (`make_trimap`): M binarised at 0.5; an unknown band of `band_px` working pixels
   (× `scale` at the plate) centred on the binary edge, plus every pixel where M itself is
   undecided (`uncertain_mask`): the soft edge the fit saw at the occluder's boundary. Given
   the ROI carried to the frame (`roi_tracked`), only occluder edges are matted and the result
   is multiplied by it (`occluder_target`): the ROI's border is no image edge.
2. **Matting** of the band, guided by a display encoding of the plate (`encode_guide`), forced
   to 1/0 in the sure regions:
   * `guided` (default, no weights, `guided_matte`): a colour guided filter (He et al.) whose
     local linear model `alpha = a·I + b` is fitted on the sure pixels around the band, then
     `closed_form_iterations` conjugate-gradient steps of closed-form matting (Levin et al.)
     on the band with the sure pixels as boundary conditions. Both are box filters in torch,
     so they run where the tensors are (GPU or CPU).
   * `vitmatte`: `transformers.VitMatteForImageMatting` from installed weights, tiled with
     feathered overlaps (`VitMatteBackend`); without weights one warning names the install
     command and `guided` is used.
3. **Temporal stabilisation** (`stabilise_frame`, `stabilise`): inside the unknown band only,
   an exponential blend with the previous frame's matte warped by a backward flow t→t−1,
   faded out where the two disagree by more than `temporal_tolerance` (a wrong flow).
4. **Holdout**: `matte *= 1 − holdout`.

Conventions: images are channel-first torch tensors, rows top-down. A flow is (dx, dy) in plate
pixels, x = column, y = row, pixel centres at integer coordinates: pixel (x, y) of frame t shows
what pixel (x + dx, y + dy) of frame t−1 showed. Foreground (alpha = 1) is the visible ROI.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rna_engine.errors import InputError
from rna_engine.runtime.weights import models_dir
from rna_engine.settings import MatteSettings

log = logging.getLogger(__name__)

UNKNOWN = 0.5
"""Trimap value of the unknown band (sure background 0, sure foreground 1)."""

INSTALL_HINT = (
    "copy a transformers save_pretrained ViTMatte folder to $RNA_HOME/models/vitmatte, "
    "or name it with --set matte.vitmatte_dir=DIR"
)
"""How to install ViTMatte weights (named in the fallback warning, as `rna-engine doctor` says)."""

_WARNED_MISSING: set[str] = set()
"""Weights folders already warned about, so a per-frame caller logs the fallback once."""


# ----------------------------------------------------------------------------------------------
# Guide encoding and trimap


def encode_guide(rgb_linear: Tensor, encoding: Literal["srgb", "log"] = "srgb") -> Tensor:
    """Bounded, roughly perceptual encoding of a scene-linear plate: the matting guide.

    The matting regularisers compare colour variances with a constant (`guided_eps`,
    `closed_form_eps`); on raw linear values highlights would dominate every window and the
    shadows would hold no contrast. `srgb` is the sRGB transfer function of the values clipped
    to [0, 1] (display-like: what the artist sees and what ViTMatte was trained on; measured
    best on our synthetic edges); `log` maps 2^-8..2^4 linearly in log2 to [0, 1], keeping edges
    inside highlights above 1 at the cost of midtone contrast.

    Args:
        rgb_linear: (3, H, W) float32, scene-linear.
        encoding: `srgb` or `log`.

    Returns:
        (3, H, W) float32 in [0, 1].
    """
    x = rgb_linear.float()
    if encoding == "srgb":
        x = x.clamp(0.0, 1.0)
        return torch.where(
            x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055
        )
    if encoding == "log":
        lo, hi = -8.0, 4.0
        return ((torch.log2(x.clamp_min(0.0) + 2.0**lo) - lo) / (hi - lo)).clamp(0.0, 1.0)
    raise InputError(f"setting matte.guide_encoding: {encoding!r} is not srgb or log")


def _dilate(binary: Tensor, radius: int) -> Tensor:
    """Square dilation of a (H, W) bool image by `radius` pixels (separable max filters)."""
    if radius <= 0:
        return binary
    x = binary.float()[None, None]
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    x = F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))
    return x[0, 0] > 0.5


def band_radius(band_px: float, scale: float) -> int:
    """Half-width of the unknown band at the plate, pixels (at least 1).

    Args:
        band_px: full band width at working resolution, pixels (`MatteSettings.band_px`).
        scale: plate pixels per working pixel.
    """
    return max(1, math.ceil(band_px * scale / 2.0 - 1e-6))


def make_trimap(
    mask: Tensor, radius_px: int, uncertain: float = 0.0, keep: Tensor | None = None
) -> Tensor:
    """Trimap of a hard-ish mask: 0 sure background, 0.5 unknown, 1 sure foreground.

    The unknown band is every pixel within `radius_px` (square neighbourhood) of a pixel of the
    other class after binarising at 0.5 (dilation minus erosion: 2·radius pixels across), plus
    every pixel where `uncertain < mask < 1 − uncertain`. The pixels of `keep` stay decided
    (`background_cores`: a small or undecided occluder is not swallowed by the band, where
    matting from the sure foreground alone around it would paint it over).

    Args:
        mask: (H, W) float32 in [0, 1].
        radius_px: half-width of the band, pixels.
        uncertain: mask values within this of 0 or 1 count as decided; 0 disables.
        keep: (H, W) bool or None, pixels kept out of the band.

    Returns:
        (H, W) float32 with values in {0, 0.5, 1}.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {tuple(mask.shape)}")
    fg = mask >= 0.5
    unknown = _dilate(fg, radius_px) & _dilate(~fg, radius_px)
    if uncertain > 0:
        unknown |= (mask > uncertain) & (mask < 1.0 - uncertain)
    if keep is not None:
        unknown &= ~keep
    trimap = fg.to(torch.float32)
    return trimap.masked_fill(unknown, UNKNOWN)


def background_cores(fg: Tensor, radius_px: int) -> Tensor:
    """The background pixels that are deepest in their neighbourhood, (H, W) bool.

    A background pixel's depth is its square (chessboard) distance to the foreground minus 1,
    counted up to 4·`radius_px`; a core pixel has depth ≥ 1 (the background is at least 3 px
    across there) and no deeper background pixel within `radius_px`. Every background part
    at least 3 px thick has one — the centre of a small occluder, the spine of a thin one —
    while the pixels on the slope toward an edge have a deeper neighbour and stay in the band.
    """
    depth = torch.zeros(fg.shape, device=fg.device)
    grown = fg
    for _ in range(max(1, 4 * radius_px)):
        grown = _dilate(grown, 1)
        depth += (~grown).float()
    deepest = F.max_pool2d(depth[None, None], 2 * radius_px + 1, stride=1, padding=radius_px)[0, 0]
    return ~fg & (depth >= 1) & (depth >= deepest)


# ----------------------------------------------------------------------------------------------
# Guided filter (He, Sun, Tang, "Guided Image Filtering", colour guide, Eqs. 19-21)


def box_mean(x: Tensor, radius: int) -> Tensor:
    """Mean over the (2r+1)² window clipped to the image, per channel.

    Args:
        x: (C, H, W) float32.
        radius: window radius r, pixels.

    Returns:
        (C, H, W) float32; near the border the mean is over the pixels inside the image.
    """
    channels, height, width = x.shape
    k = 2 * radius + 1
    # separable depthwise sums (not cumulative sums: those lose the float32 precision that
    # the windows' variances need), divided by the in-image count so borders are true means
    ones_x = torch.ones(channels, 1, 1, k, device=x.device, dtype=x.dtype)
    ones_y = torch.ones(channels, 1, k, 1, device=x.device, dtype=x.dtype)
    y = F.conv2d(x[None], ones_x, padding=(0, radius), groups=channels)
    y = F.conv2d(y, ones_y, padding=(radius, 0), groups=channels)[0]
    return y / _window_count(height, width, radius, x)


def _window_count(height: int, width: int, radius: int, like: Tensor) -> Tensor:
    """(H, W) number of in-image pixels of each (2r+1)² window."""
    rows = torch.arange(height, device=like.device, dtype=torch.float32)
    cols = torch.arange(width, device=like.device, dtype=torch.float32)
    ny = (rows + radius).clamp(max=height - 1) - (rows - radius).clamp(min=0) + 1
    nx = (cols + radius).clamp(max=width - 1) - (cols - radius).clamp(min=0) + 1
    return ny[:, None] * nx[None, :]


def _outer6(mu: Tensor) -> Tensor:
    """(6, H, W) upper triangle of mu·muᵀ for mu (3, H, W): 00, 01, 02, 11, 12, 22."""
    return torch.stack(
        (mu[0] * mu[0], mu[0] * mu[1], mu[0] * mu[2], mu[1] * mu[1], mu[1] * mu[2], mu[2] * mu[2])
    )


def _inverse_sym3(s: Tensor, eps: float) -> Tensor:
    """Per-pixel inverse of symmetric 3×3 matrices `S + eps·U` (S positive semi-definite).

    Cofactors in float64: with a small `eps` and a window whose colours lie on a line, float32
    cancellation can zero the determinant; in exact arithmetic it is at least eps³.

    Args:
        s: (6, H, W) entries s00, s01, s02, s11, s12, s22 of S.
        eps: regulariser added to the diagonal, > 0.

    Returns:
        (6, H, W) float32 entries of the inverse, same order.
    """
    a, b, c, d, e, f = s.double().unbind(0)
    a, d, f = a + eps, d + eps, f + eps
    i00 = d * f - e * e
    i01 = c * e - b * f
    i02 = b * e - c * d
    i11 = a * f - c * c
    i12 = b * c - a * e
    i22 = a * d - b * b
    det = (a * i00 + b * i01 + c * i02).clamp_min(eps**3)
    return (torch.stack((i00, i01, i02, i11, i12, i22)) / det).to(s.dtype)


def _matvec_sym3(m: Tensor, v: Tensor) -> Tensor:
    """(3, H, W) product of symmetric matrices (6, H, W) with vectors (3, H, W)."""
    m00, m01, m02, m11, m12, m22 = m.unbind(0)
    v0, v1, v2 = v.unbind(0)
    return torch.stack(
        (
            m00 * v0 + m01 * v1 + m02 * v2,
            m01 * v0 + m11 * v1 + m12 * v2,
            m02 * v0 + m12 * v1 + m22 * v2,
        )
    )


def guided_filter(
    guide: Tensor, src: Tensor, radius: int, eps: float, weight: Tensor | None = None
) -> Tensor:
    """Colour guided filter of `src`, optionally with a per-pixel confidence `weight`.

    In every (2r+1)² window k a linear model `q = a_k·I + b_k` is fitted to `src` by ridge
    regression, `(Σ_k + eps·U) a_k = cov_k(I, p)`, `b_k = p̄_k − a_k·μ_k` (He et al. Eqs.
    19-20), with means weighted by `weight`; the output is the mean of `a_k·I + b_k` over the
    windows covering each pixel (Eq. 21). With `weight=None` it is He et al.'s filter.

    Args:
        guide: (3, H, W) float32, roughly in [0, 1].
        src: (H, W) float32, the signal to filter.
        radius: window radius r, pixels.
        eps: ridge regulariser, in units of the guide's variance.
        weight: (H, W) float32 > 0, or None for all ones.

    Returns:
        (H, W) float32, not clamped.
    """
    if guide.ndim != 3 or guide.shape[0] != 3 or src.shape != guide.shape[1:]:
        raise ValueError(
            f"guide (3,H,W) and src (H,W) expected, got {tuple(guide.shape)}, {tuple(src.shape)}"
        )
    g = guide.float()
    p = src.float()[None]
    stack = torch.cat((g, p, g * p, _outer6(g)))  # 3 + 1 + 3 + 6 = 13 planes
    if weight is None:
        means = box_mean(stack, radius)
    else:
        w = weight.float()[None]
        sums = box_mean(torch.cat((w, stack * w)), radius)
        means = sums[1:] / sums[:1].clamp_min(1e-12)
    mu, p_mean, ip_mean, ii_mean = means[:3], means[3:4], means[4:7], means[7:13]
    a = _matvec_sym3(_inverse_sym3(ii_mean - _outer6(mu), eps), ip_mean - mu * p_mean)
    b = p_mean - (a * mu).sum(0, keepdim=True)
    ab = box_mean(torch.cat((a, b)), radius)
    return (ab[:3] * g).sum(0) + ab[3]


# ----------------------------------------------------------------------------------------------
# Closed-form matting (Levin, Lischinski, Weiss 2008) applied through box filters


class MattingLaplacian:
    """The matting Laplacian L of a guide, applied matrix-free in O(pixels) per product.

    For windows ω_k clipped to the image, `(L p)_i = Σ_{k∋i} (p_i − a_k·I_i − b_k)` where
    (a_k, b_k) is the guided filter's fit of p in window k (He, Sun, Tang, "Fast matting using
    large kernel matting Laplacian matrices", 2010), i.e. `L p = n ⊙ (p − GF(p))` with n the
    number of windows covering each pixel. L is symmetric positive semi-definite.
    """

    def __init__(self, guide: Tensor, radius: int, eps: float) -> None:
        """Precompute the per-window guide statistics.

        Args:
            guide: (3, H, W) float32 in [0, 1].
            radius: window radius, pixels.
            eps: regulariser of the windows' colour covariance.
        """
        self.guide = guide.float()
        self.radius = radius
        moments = box_mean(torch.cat((self.guide, _outer6(self.guide))), radius)
        self.mu = moments[:3]
        self.inv = _inverse_sym3(moments[3:] - _outer6(self.mu), eps)
        self.count = _window_count(guide.shape[1], guide.shape[2], radius, guide)

    def __call__(self, p: Tensor) -> Tensor:
        """L p for p (H, W); returns (H, W)."""
        m = box_mean(torch.cat((p[None], self.guide * p)), self.radius)
        p_mean, ip_mean = m[:1], m[1:]
        a = _matvec_sym3(self.inv, ip_mean - self.mu * p_mean)
        b = p_mean - (a * self.mu).sum(0, keepdim=True)
        ab = box_mean(torch.cat((a, b)), self.radius)
        return self.count * (p - (ab[:3] * self.guide).sum(0) - ab[3])


def closed_form_refine(
    guide: Tensor,
    alpha: Tensor,
    unknown: Tensor,
    radius: int,
    eps: float,
    iterations: int,
    rtol: float = 1e-4,
) -> Tensor:
    """Closed-form matting of the `unknown` pixels with all others fixed (Dirichlet).

    Minimises `αᵀ L α` over the unknown pixels by conjugate gradients, starting from `alpha`
    (a good start, such as the guided filter's, makes a few dozen steps enough because the
    band is thin). Stops after `iterations` steps or when the residual falls below `rtol` of
    the first one.

    Args:
        guide: (3, H, W) float32 in [0, 1].
        alpha: (H, W) float32: fixed values outside `unknown`, the start inside.
        unknown: (H, W) bool.
        radius: Laplacian window radius, pixels.
        eps: Laplacian regulariser.
        iterations: maximum conjugate-gradient steps.
        rtol: relative residual at which to stop.

    Returns:
        (H, W) float32 in [0, 1].
    """
    if iterations <= 0 or not bool(unknown.any()):
        return alpha.clamp(0.0, 1.0)
    lap = MattingLaplacian(guide, radius, eps)
    u = unknown.to(torch.float32)
    fixed = alpha * (1.0 - u)
    x = alpha * u

    def op(v: Tensor) -> Tensor:
        return u * lap(v * u)

    rhs = -u * lap(fixed)
    res = rhs - op(x)
    d = res.clone()
    rs = (res * res).sum()
    rs0 = rs.clamp_min(1e-30)
    for step_index in range(iterations):
        ad = op(d)
        step = rs / (d * ad).sum().clamp_min(1e-30)
        x = x + step * d
        res = res - step * ad
        rs_new = (res * res).sum()
        # the stopping test reads the device: only every few steps
        if step_index % 8 == 7 and float(rs_new) <= rtol * rtol * float(rs0):
            break
        # a solved system has rs = 0: 0/0 would fill the matte with NaN
        d = res + (rs_new / rs.clamp_min(1e-30)) * d
        rs = rs_new
    return (fixed + x * u).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Weight-free matting of the band


def _band_bbox(unknown: Tensor) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) bounding the unknown pixels; None when there are none."""
    rows = torch.nonzero(unknown.any(1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(unknown.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _tiles(box: tuple[int, int, int, int], tile: int) -> list[tuple[int, int, int, int]]:
    y0, y1, x0, x1 = box
    return [
        (ty, min(ty + tile, y1), tx, min(tx + tile, x1))
        for ty in range(y0, y1, tile)
        for tx in range(x0, x1, tile)
    ]


def guided_matte(
    guide: Tensor,
    trimap: Tensor,
    radius: int,
    eps: float,
    unknown_weight: float = 0.0,
    cf_iterations: int = 0,
    cf_radius: int = 1,
    cf_eps: float = 1e-5,
    tile_px: int = 1024,
) -> Tensor:
    """Alpha of the trimap's unknown band: weighted guided filter, then closed-form refinement.

    The guided filter's source is the binarised mask (trimap ≥ 0.5) with weight 1 on sure
    pixels and `unknown_weight` in the band, so a window straddling the band fits its linear
    colour model on the sure fore/background around it and extrapolates it across the band.
    Its result starts `cf_iterations` steps of `closed_form_refine`. Work is limited to the
    band's bounding box, in tiles of `tile_px` with halos: the guided filter is exact (halo 2r);
    the closed-form solve sees `max(2r, 8)` pixels around its tile, fixed at the guided result
    beyond them, so tile seams differ from an untiled solve by far less than a matte step.

    Args:
        guide: (3, H, W) float32 display-encoded plate in [0, 1].
        trimap: (H, W) float32 in {0, 0.5, 1}.
        radius: guided-filter window radius, pixels.
        eps: guided-filter regulariser.
        unknown_weight: confidence of the binarised mask inside the band, 0..1.
        cf_iterations: closed-form refinement steps (0 = off).
        cf_radius: matting-Laplacian window radius, pixels.
        cf_eps: matting-Laplacian regulariser.
        tile_px: tile edge, pixels (memory: about 40 float32 planes of (tile + 6r)²).

    Returns:
        (H, W) float32 in [0, 1], equal to the trimap's sure values outside the band.
    """
    binary = (trimap >= 0.5).to(torch.float32)
    unknown = trimap == UNKNOWN
    alpha = binary.clone()
    box = _band_bbox(unknown)
    if box is None:
        return alpha
    height, width = trimap.shape
    # a tiny floor keeps every window solvable where the band is wider than the window
    weight = torch.where(unknown, max(unknown_weight, 1e-4), 1.0)
    cf_halo = max(2 * radius, 8) if cf_iterations > 0 else 0
    gf_halo = 2 * radius
    for ty0, ty1, tx0, tx1 in _tiles(box, tile_px):
        if not bool(unknown[ty0:ty1, tx0:tx1].any()):
            continue
        # region solved by closed form, and the larger one the guided filter needs for it
        ry0, ry1 = max(0, ty0 - cf_halo), min(height, ty1 + cf_halo)
        rx0, rx1 = max(0, tx0 - cf_halo), min(width, tx1 + cf_halo)
        gy0, gy1 = max(0, ry0 - gf_halo), min(height, ry1 + gf_halo)
        gx0, gx1 = max(0, rx0 - gf_halo), min(width, rx1 + gf_halo)
        q = guided_filter(
            guide[:, gy0:gy1, gx0:gx1],
            binary[gy0:gy1, gx0:gx1],
            radius,
            eps,
            weight[gy0:gy1, gx0:gx1],
        )[ry0 - gy0 : ry1 - gy0, rx0 - gx0 : rx1 - gx0]
        band = unknown[ry0:ry1, rx0:rx1]
        region = torch.where(band, q.clamp(0.0, 1.0), binary[ry0:ry1, rx0:rx1])
        if cf_iterations > 0:
            region = closed_form_refine(
                guide[:, ry0:ry1, rx0:rx1], region, band, cf_radius, cf_eps, cf_iterations
            )
        inner = region[ty0 - ry0 : ty1 - ry0, tx0 - rx0 : tx1 - rx0]
        alpha[ty0:ty1, tx0:tx1] = torch.where(
            unknown[ty0:ty1, tx0:tx1], inner, binary[ty0:ty1, tx0:tx1]
        )
    return alpha


# ----------------------------------------------------------------------------------------------
# Backends


class MatteBackend(Protocol):
    """Matting of one frame's unknown band; sure pixels come back as the trimap says."""

    name: str

    def __call__(self, guide_linear: Tensor, trimap: Tensor, band_radius_px: int) -> Tensor:
        """Alpha (H, W) float32 in [0, 1] from the linear plate (3, H, W) and trimap (H, W)."""
        ...


class GuidedBackend:
    """Weight-free matting: `guided_matte` with the settings' radii scaled to the band."""

    name = "guided"

    def __init__(self, settings: MatteSettings) -> None:
        self.settings = settings

    def __call__(self, guide_linear: Tensor, trimap: Tensor, band_radius_px: int) -> Tensor:
        s = self.settings
        # every window over the band must reach sure pixels on both sides of it
        radius = max(s.guided_radius_px, 2 * band_radius_px)
        tile = s.tile_px or (1024 if guide_linear.is_cuda else 256)
        return guided_matte(
            encode_guide(guide_linear, s.guide_encoding),
            trimap,
            radius,
            s.guided_eps,
            s.unknown_weight,
            s.closed_form_iterations,
            s.closed_form_radius_px,
            s.closed_form_eps,
            tile,
        )


def _feather(length: int, overlap: int, start: bool, end: bool, like: Tensor) -> Tensor:
    """(length,) blending weight of a tile along one axis: linear ramps over `overlap` pixels
    at the sides that have a neighbour (`start`, `end`), never zero."""
    pos = torch.arange(length, device=like.device, dtype=torch.float32)
    w = torch.ones(length, device=like.device)
    if overlap > 0:
        if start:
            w = torch.minimum(w, (pos + 1) / (overlap + 1))
        if end:
            w = torch.minimum(w, (length - pos) / (overlap + 1))
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride tile − overlap, the last one flush with the end."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    tile_px: int,
    overlap_px: int,
    needed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply a per-tile function over an image in overlapping tiles, blended with feathering.

    Args:
        fn: callable (C, h, w) → (h, w); h, w ≤ tile_px.
        image: (C, H, W).
        tile_px: tile edge, pixels.
        overlap_px: overlap of neighbouring tiles, pixels (≤ tile_px / 2).
        needed: (H, W) bool or None: tiles without a needed pixel are skipped.

    Returns:
        (H, W) blended result (0 where no tile ran) and (H, W) bool, True where a tile ran.
    """
    _, height, width = image.shape
    acc = torch.zeros(height, width, device=image.device)
    wsum = torch.zeros(height, width, device=image.device)
    ys, xs = _starts(height, tile_px, overlap_px), _starts(width, tile_px, overlap_px)
    for iy, y0 in enumerate(ys):
        y1 = min(height, y0 + tile_px)
        wy = _feather(y1 - y0, overlap_px, iy > 0, iy < len(ys) - 1, image)
        for ix, x0 in enumerate(xs):
            x1 = min(width, x0 + tile_px)
            if needed is not None and not bool(needed[y0:y1, x0:x1].any()):
                continue
            wx = _feather(x1 - x0, overlap_px, ix > 0, ix < len(xs) - 1, image)
            w = wy[:, None] * wx[None, :]
            acc[y0:y1, x0:x1] += w * fn(image[:, y0:y1, x0:x1]).float()
            wsum[y0:y1, x0:x1] += w
    ran = wsum > 0
    return acc / wsum.clamp_min(1e-12), ran


def vitmatte_dir(settings: MatteSettings) -> Path:
    """Folder to load ViTMatte from: `settings.vitmatte_dir`, else `$RNA_HOME/models/vitmatte`.

    Under the models folder the weights may sit directly or one level down, as
    `rna-engine models install` copies a folder (`models/<name>/<folder name>/`).
    """
    if settings.vitmatte_dir:
        return Path(settings.vitmatte_dir).expanduser()
    root = models_dir() / "vitmatte"
    if (root / "config.json").is_file() or not root.is_dir():
        return root
    found = sorted(p.parent for p in root.glob("*/config.json"))
    return found[0] if found else root


def has_vitmatte_weights(path: Path) -> bool:
    """True when `path` holds a `save_pretrained` model: config.json plus weights."""
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


class VitMatteBackend:
    """ViTMatte (`transformers.VitMatteForImageMatting`) over overlapping tiles.

    Input as `VitMatteImageProcessor` builds it: the sRGB-encoded image in [0, 1] normalised
    with the folder's `preprocessor_config.json` mean/std (default 0.5/0.5), the trimap in
    {0, 128/255, 1} as a fourth channel, zero-padded at the bottom/right to a multiple of 32.
    As in RNA's `postprocess.py` the network mattes the *occluder* (trimap and alpha inverted):
    the ROI is usually a background surface and the occluder the object in front.
    """

    name = "vitmatte"

    def __init__(
        self,
        model: Any,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        tile_px: int = 1024,
        overlap_px: int = 128,
    ) -> None:
        self.model = model
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.tile_px = tile_px
        self.overlap_px = overlap_px

    @classmethod
    def load(
        cls, path: Path, device: torch.device | str, tile_px: int = 1024, overlap_px: int = 128
    ) -> VitMatteBackend:
        """Load a `save_pretrained` folder onto `device` in eval mode."""
        from transformers import VitMatteForImageMatting

        model: Any = VitMatteForImageMatting.from_pretrained(str(path))
        model = model.to(device).eval()
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            try:
                cfg = json.loads(pre.read_text())
            except (OSError, ValueError) as err:
                raise InputError(f"{pre}: not readable JSON ({err})") from err
            mean = cfg.get("image_mean", mean)
            std = cfg.get("image_std", std)
        log.info("matte: ViTMatte from %s on %s", path, device)
        return cls(model, mean, std, tile_px, overlap_px)

    def network_input(self, image_srgb: Tensor, trimap: Tensor) -> Tensor:
        """(1, 4, H', W') model input of one tile, H', W' padded up to multiples of 32.

        Args:
            image_srgb: (3, h, w) float32 in [0, 1].
            trimap: (h, w) float32 in {0, 0.5, 1}, already inverted to the occluder's.
        """
        mean = torch.tensor(self.image_mean, device=image_srgb.device)[:, None, None]
        std = torch.tensor(self.image_std, device=image_srgb.device)[:, None, None]
        # the processor reads 8-bit trimaps: unknown is 128/255, not 0.5
        tri = torch.where(trimap == UNKNOWN, 128.0 / 255.0, trimap)
        x = torch.cat(((image_srgb - mean) / std, tri[None]))[None]
        h, w = trimap.shape
        return F.pad(x, (0, (-w) % 32, 0, (-h) % 32))

    def _tile(self, stacked: Tensor) -> Tensor:
        image, tri = stacked[:3], stacked[3]
        h, w = tri.shape
        x = self.network_input(image, tri).to(dtype=next(self.model.parameters()).dtype)
        with torch.inference_mode():
            alphas = self.model(pixel_values=x).alphas
        return alphas[0, 0, :h, :w].float()

    def __call__(self, guide_linear: Tensor, trimap: Tensor, band_radius_px: int) -> Tensor:
        unknown = trimap == UNKNOWN
        sure = (trimap >= 0.5).to(torch.float32)
        if not bool(unknown.any()):
            return sure
        occluder_tri = 1.0 - trimap
        stacked = torch.cat((encode_guide(guide_linear, "srgb"), occluder_tri[None]))
        occluder, ran = tiled_apply(
            self._tile, stacked, self.tile_px, self.overlap_px, needed=unknown
        )
        alpha = (1.0 - occluder).clamp(0.0, 1.0)
        return torch.where(unknown & ran, alpha, sure)


def load_backend(settings: MatteSettings, device: torch.device | str = "cpu") -> MatteBackend:
    """The backend `settings.backend` names; `vitmatte` without weights falls back to guided.

    The fallback logs one warning per weights folder naming the install command.
    """
    if settings.backend == "vitmatte":
        path = vitmatte_dir(settings)
        reason = ""
        if not has_vitmatte_weights(path):
            reason = f"no ViTMatte weights in {path}"
        else:
            try:
                import transformers  # noqa: F401
            except ImportError:
                reason = (
                    "the transformers package is not installed (pip install rna-atlas[learned])"
                )
        if not reason:
            return VitMatteBackend.load(
                path, device, settings.vitmatte_tile_px, settings.vitmatte_overlap_px
            )
        if str(path) not in _WARNED_MISSING:
            _WARNED_MISSING.add(str(path))
            log.warning(
                "matte: %s; using the guided-filter matte. Install them with `%s`.",
                reason,
                INSTALL_HINT,
            )
    return GuidedBackend(settings)


# ----------------------------------------------------------------------------------------------
# Temporal stabilisation


def warp_previous(previous: Tensor, flow: Tensor | None) -> tuple[Tensor, Tensor]:
    """The previous frame's matte brought to the current frame by a backward flow.

    Args:
        previous: (H, W) float32, matte of frame t−1.
        flow: (2, H, W) float32 (dx, dy) pixels t→t−1, or None (identity).

    Returns:
        (H, W) warped matte (bilinear) and (H, W) bool, True where the sample lies inside
        frame t−1.
    """
    if flow is None:
        return previous, torch.ones_like(previous, dtype=torch.bool)
    height, width = previous.shape
    if flow.shape != (2, height, width):
        raise ValueError(f"flow must be (2, {height}, {width}), got {tuple(flow.shape)}")
    flow = flow.to(previous.device, torch.float32)
    ys = torch.arange(height, device=previous.device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=previous.device, dtype=torch.float32)[None, :]
    sx, sy = xs + flow[0], ys + flow[1]
    valid = (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
    # align_corners=True: -1 and +1 are the centres of the first and last pixels
    grid = torch.stack(
        (2.0 * sx / max(width - 1, 1) - 1.0, 2.0 * sy / max(height - 1, 1) - 1.0), dim=-1
    )
    warped = F.grid_sample(
        previous[None, None].float(),
        grid[None],
        mode="bicubic",  # bilinear blurs the matte a little more at every frame
        padding_mode="border",
        align_corners=True,
    )[0, 0]
    return warped.clamp(0.0, 1.0), valid


def stabilise_frame(
    matte: Tensor,
    previous: Tensor | None,
    flow: Tensor | None,
    unknown: Tensor,
    weight: float,
    tolerance: float = 0.0,
) -> Tensor:
    """One step of the temporal filter: blend the warped previous matte into the band.

    `out = (1 − w)·matte + w·warp(previous)` on unknown pixels whose warped sample lies inside
    the previous frame, with `w = weight · max(0, 1 − |matte − warp(previous)| / tolerance)`
    (tolerance 0: `w = weight`), so flicker is averaged out while an edge that moved further
    than the flow says is not dragged behind. Passing the previous *output* makes it a
    recursive (exponential) filter: per-frame noise variance falls to (1 − w)/(1 + w).

    Args:
        matte: (H, W) float32, this frame's matte.
        previous: (H, W) float32, the previous frame's (stabilised) matte, or None.
        flow: (2, H, W) float32 backward flow t→t−1 in pixels, or None (identity).
        unknown: (H, W) bool, this frame's unknown band; other pixels are returned unchanged.
        weight: blend weight of the previous frame, 0..1.
        tolerance: matte difference at which the blend fades out; 0 disables the fade.

    Returns:
        (H, W) float32.
    """
    if previous is None or weight <= 0:
        return matte
    if previous.shape != matte.shape:
        raise ValueError(f"previous matte {tuple(previous.shape)} vs matte {tuple(matte.shape)}")
    warped, valid = warp_previous(previous.to(matte.device, torch.float32), flow)
    w = torch.full_like(matte, float(weight))
    if tolerance > 0:
        w = w * (1.0 - (matte - warped).abs() / tolerance).clamp(0.0, 1.0)
    w = torch.where(unknown & valid, w, 0.0)
    return (1.0 - w) * matte + w * warped


def stabilise(
    mattes: Tensor | np.ndarray | Sequence[Tensor],
    motion: Tensor | np.ndarray | Sequence[Tensor | np.ndarray | None] | None = None,
    weight: float = 0.5,
    unknown: Tensor | np.ndarray | Sequence[Tensor] | None = None,
    tolerance: float = 0.0,
) -> Tensor:
    """Temporal stabilisation of a matte sequence, frame by frame (`stabilise_frame`).

    Frame 0 is unchanged; frame t blends in the stabilised frame t−1 warped by `motion[t]`.

    Args:
        mattes: (N, H, W) float32 in [0, 1] (tensor, array or list of (H, W)).
        motion: (N, 2, H, W) backward flows t→t−1 in pixels (entry 0 unused), a list whose
            entries may be None (identity), or None (static shot).
        weight: blend weight of the previous frame, 0..1.
        unknown: (N, H, W) bool bands where blending is allowed; None: where the frame's own
            matte is strictly between 0 and 1.
        tolerance: see `stabilise_frame`.

    Returns:
        (N, H, W) float32.
    """
    frames = [torch.as_tensor(m, dtype=torch.float32) for m in mattes]
    out: list[Tensor] = []
    for t, matte in enumerate(frames):
        if unknown is None:
            band = (matte > 0) & (matte < 1)
        else:
            band = torch.as_tensor(unknown[t], device=matte.device).bool()
        flow = None
        if motion is not None and t > 0 and motion[t] is not None:
            flow = torch.as_tensor(motion[t], dtype=torch.float32, device=matte.device)
        previous = out[-1] if out else None
        out.append(stabilise_frame(matte, previous, flow, band, weight, tolerance))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# The stage's entry points


def _check_inputs(guide_linear: Tensor, mask: Tensor, scale: float) -> None:
    if guide_linear.ndim != 3 or guide_linear.shape[0] != 3:
        raise ValueError(f"guide_linear must be (3, H, W), got {tuple(guide_linear.shape)}")
    if mask.shape != guide_linear.shape[1:]:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match plate {tuple(guide_linear.shape)}"
        )
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")


def occluder_target(
    mask: Tensor, roi_tracked: Tensor, radius_px: int, sliver_px: int | None = None
) -> Tensor:
    """The mask to matte when the tracked ROI is known: visibility of the surface.

    Inside the ROI (roi ≥ 0.5) it is `mask / roi`, except that within `radius_px` of the ROI's
    border occluded slivers narrower than 2·`sliver_px` + 1 (default `radius_px`: the band;
    the fit's mask and the tracked ROI disagree there by a pixel or so) are dropped: there the
    ROI decides. Outside the ROI it is 1, except
    within 2·`radius_px` of an occluded part of the ROI, where it is 0, so an occluder crossing
    the ROI's border makes no false edge along it. The ROI's own border is thus no edge of the
    target: it is not an image edge, and image-guided matting there would follow the texture.

    Args:
        mask: (H, W) float32 in [0, 1], the fit's mask of the visible ROI.
        roi_tracked: (H, W) float32 in [0, 1], the ROI carried to this frame.
        radius_px: half-width of the trimap's band, pixels.
        sliver_px: half-width of the slivers dropped along the ROI's border, pixels.

    Returns:
        (H, W) float32 in [0, 1].
    """
    sliver = radius_px if sliver_px is None else sliver_px
    inside = roi_tracked >= 0.5
    visible = (mask / roi_tracked.clamp_min(1e-6)).clamp(0.0, 1.0)
    occluded = inside & (visible < 0.5)
    near_border = inside & _dilate(~inside, radius_px)
    opened = _dilate(~_dilate(~occluded, sliver), sliver)
    occluded = torch.where(near_border, opened & occluded, occluded)
    visible = torch.where(near_border & ~occluded, 1.0, visible)
    grown = _dilate(occluded, 2 * radius_px) & ~inside
    outside = torch.where(grown, 0.0, 1.0)
    return torch.where(inside, visible, outside)


def _matte_before_holdout(
    guide_linear: Tensor,
    mask: Tensor,
    settings: MatteSettings,
    scale: float,
    previous: Tensor | None,
    previous_flow: Tensor | None,
    roi_tracked: Tensor | None,
    backend: MatteBackend,
) -> Tensor:
    _check_inputs(guide_linear, mask, scale)
    mask = mask.to(guide_linear.device, torch.float32)
    radius = band_radius(settings.band_px, scale)
    roi = None
    target = mask
    if roi_tracked is not None:
        if roi_tracked.shape != mask.shape:
            raise ValueError(f"roi_tracked {tuple(roi_tracked.shape)} vs mask {tuple(mask.shape)}")
        roi = roi_tracked.to(mask.device, torch.float32).clamp(0.0, 1.0)
        # With the cores kept, only slivers of about a working pixel are dropped: an occluder
        # entering across the ROI's border is a sliver at first.
        sliver = max(1, radius // 2) if settings.keep_cores else radius
        target = occluder_target(mask, roi, radius, sliver)
    keep = None
    if settings.keep_cores:
        keep = background_cores(target >= 0.5, radius)
        if roi is not None:  # outside the ROI the target's 0s only guard its border
            keep &= roi >= 0.5
    trimap = make_trimap(target, radius, settings.uncertain_mask, keep)
    alpha = backend(guide_linear, trimap, radius)
    unknown = trimap == UNKNOWN
    if roi is not None:
        alpha = alpha * roi
        # the ROI's border moves with the surface, not with the occluder the flow follows
        unknown &= ~_dilate(roi < 0.999, radius)
    return stabilise_frame(
        alpha,
        previous,
        previous_flow,
        unknown,
        settings.temporal_weight,
        settings.temporal_tolerance,
    )


def _apply_holdout(matte: Tensor, holdout: Tensor | None) -> Tensor:
    if holdout is None:
        return matte
    if holdout.shape != matte.shape:
        raise ValueError(
            f"holdout {tuple(holdout.shape)} does not match matte {tuple(matte.shape)}"
        )
    return matte * (1.0 - holdout.to(matte.device, torch.float32).clamp(0.0, 1.0))


def soft_matte(
    guide_linear: Tensor,
    mask: Tensor,
    settings: MatteSettings,
    scale: float,
    holdout: Tensor | None = None,
    previous: Tensor | None = None,
    previous_flow: Tensor | None = None,
    roi_tracked: Tensor | None = None,
    backend: MatteBackend | None = None,
) -> Tensor:
    """Soft matte of the visible ROI for one frame at plate resolution.

    Trimap from `mask` (band `settings.band_px` × `scale`), matting of the band by `backend`
    (default: `load_backend(settings)`, which for `vitmatte` loads the weights: pass a backend,
    or use `MatteStream`, when calling per frame), temporal blend with `previous` inside the
    band, then `× (1 − holdout)`. Runs on `guide_linear`'s device.

    With `roi_tracked`, only occluder edges are matted (`occluder_target`) and the result is
    multiplied by `roi_tracked`: the ROI's border is not an image edge, so image-guided matting
    there follows the texture (on the synthetic shots it multiplies the border's error by ~5).

    Args:
        guide_linear: (3, H, W) float32 scene-linear plate at plate resolution.
        mask: (H, W) float32 in [0, 1], the fit's mask M at plate resolution.
        settings: matte settings.
        scale: plate pixels per working pixel.
        holdout: (H, W) float32 in [0, 1] or None; where 1 the matte is 0.
        previous: (H, W) float32 matte of the previous frame, or None. Best the previous
            frame's matte *before* its holdout (`MatteStream` keeps that); a previous output
            with the holdout applied only matters where a moving holdout crosses the band.
        previous_flow: (2, H, W) float32 backward flow t→t−1 in plate pixels, or None
            (identity: static camera and subject).
        roi_tracked: (H, W) float32 in [0, 1] or None: the reference frame's ROI carried to
            this frame (sampled at each pixel's atlas position, i.e. through the UV pass).
        backend: a loaded `MatteBackend`, or None.

    Returns:
        (H, W) float32 in [0, 1].
    """
    if backend is None:
        backend = load_backend(settings, guide_linear.device)
    matte = _matte_before_holdout(
        guide_linear, mask, settings, scale, previous, previous_flow, roi_tracked, backend
    )
    return _apply_holdout(matte, holdout)


class MatteStream:
    """Soft mattes of one shot's frames in order, holding the backend and the previous matte.

    The bake's streaming loop: `matte = stream(plate, mask, holdout, flow_to_previous)` per
    frame; memory is one frame's matte plus one tile's work. `reset()` before a jump in time.
    """

    def __init__(
        self, settings: MatteSettings, scale: float, device: torch.device | str = "cpu"
    ) -> None:
        self.settings = settings
        self.scale = scale
        self.backend = load_backend(settings, device)
        self._previous: Tensor | None = None

    def reset(self) -> None:
        """Forget the previous frame (the next one is matted on its own)."""
        self._previous = None

    def __call__(
        self,
        guide_linear: Tensor,
        mask: Tensor,
        holdout: Tensor | None = None,
        flow_to_previous: Tensor | None = None,
        roi_tracked: Tensor | None = None,
    ) -> Tensor:
        """This frame's matte (see `soft_matte`); `flow_to_previous` (2, H, W) t→t−1 pixels."""
        flow = flow_to_previous if self._previous is not None else None
        matte = _matte_before_holdout(
            guide_linear,
            mask,
            self.settings,
            self.scale,
            self._previous,
            flow,
            roi_tracked,
            self.backend,
        )
        self._previous = matte
        return _apply_holdout(matte, holdout)


# ----------------------------------------------------------------------------------------------
# Quality measures (QC and benchmarks)


def matte_sad(matte: Tensor, truth: Tensor) -> float:
    """Sum of absolute differences between two mattes (the matting literature's SAD)."""
    return float((matte.float() - truth.float()).abs().sum())


def temporal_flicker(
    mattes: Tensor,
    motion: Tensor | Sequence[Tensor | None] | None = None,
    bands: Tensor | None = None,
) -> float:
    """Mean |m_t − warp(m_{t−1})| over t ≥ 1 and the band pixels where the warp is valid.

    Args:
        mattes: (N, H, W) float32.
        motion: backward flows t→t−1 as in `stabilise`, or None (static).
        bands: (N, H, W) bool pixels to measure, or None (everywhere).

    Returns:
        The mean absolute temporal difference (0 for a perfectly stable static matte).
    """
    total, count = 0.0, 0
    for t in range(1, len(mattes)):
        flow = None
        if motion is not None and motion[t] is not None:
            flow = torch.as_tensor(motion[t], dtype=torch.float32)
        warped, valid = warp_previous(mattes[t - 1].float(), flow)
        sel = valid if bands is None else valid & bands[t].bool()
        diff = (mattes[t].float() - warped).abs()[sel]
        total += float(diff.sum())
        count += int(diff.numel())
    return total / max(count, 1)
