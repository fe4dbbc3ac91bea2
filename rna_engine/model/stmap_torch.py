"""PyTorch twins of `stmap.py`, bit-identical to it on any device.

The bake runs them on the device beside the field queries instead of round-tripping to numpy.
Every step is the numpy one in the same order and precision (positions in float64, weights and
sums in float32, one IEEE operation per step), so the results equal `stmap.py`'s exactly; the
tests compare them with `torch.equal`. Conventions and doctests are in `stmap.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rna_engine.media.stmap import CUBIC_BC

FILTERS: tuple[str, ...] = ("impulse", "linear", *CUBIC_BC)
"""Filters of the twin: `stmap.FILTERS` less the windowed sincs, which only `rna-engine apply`
(numpy) uses; the bake samples with `linear`."""


def uv_norm_to_stmap(uv_norm: Tensor, working_width: int, working_height: int) -> Tensor:
    """Twin of `stmap.uv_norm_to_stmap`.

    Args:
        uv_norm: (..., 2) `(x̃, ỹ)`, any float dtype.
        working_width, working_height: the working resolution of the fit.

    Returns:
        (..., 2) float64 in STMap convention.
    """
    uv = uv_norm.double()
    half = max(working_width, working_height) / 2.0
    x = (uv[..., 0] + 1.0) * half
    y = (uv[..., 1] + 1.0) * half
    return torch.stack([(x + 0.5) / working_width, 1.0 - (y + 0.5) / working_height], dim=-1)


def _cubic_weight(distance: Tensor, b: float, c: float) -> Tensor:
    d = distance.abs()
    near = ((12.0 - 9.0 * b - 6.0 * c) * d + (-18.0 + 12.0 * b + 6.0 * c)) * d * d + (6.0 - 2.0 * b)
    far = (((-b - 6.0 * c) * d + (6.0 * b + 30.0 * c)) * d + (-12.0 * b - 48.0 * c)) * d + (
        8.0 * b + 24.0 * c
    )
    return torch.where(d < 1.0, near, torch.where(d < 2.0, far, 0.0)) / 6.0


def _taps(pos_px: Tensor, size: int, filt: str) -> tuple[Tensor, Tensor]:
    """Twin of `stmap._taps`: (..., K) int64 indices clamped to [0, size), float32 weights."""
    if filt == "impulse":
        index = torch.floor(pos_px)[..., None]
        weight = torch.ones_like(index)
    elif filt == "linear":
        centre = pos_px - 0.5
        i0 = torch.floor(centre)
        t = centre - i0
        index = torch.stack([i0, i0 + 1.0], dim=-1)
        weight = torch.stack([1.0 - t, t], dim=-1)
    else:
        b, c = CUBIC_BC[filt]
        centre = pos_px - 0.5
        i0 = torch.floor(centre)
        offsets = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=pos_px.dtype, device=pos_px.device)
        index = i0[..., None] + offsets
        weight = _cubic_weight(centre[..., None] - index, b, c)
    return index.clamp(0, size - 1).long(), weight.float()


def sample_stmap(image: Tensor, uv_stmap: Tensor, filter: str = "cubic") -> Tensor:
    """Twin of `stmap.sample_stmap`: `image` looked up at STMap coordinates, as Nuke's STMap.

    Args:
        image: (H, W, C) float32, the source, on the device of `uv_stmap`.
        uv_stmap: (h, w, 2) float32 STMap coordinates (origin bottom-left, centres at +0.5).
        filter: one of `FILTERS` (case-insensitive).

    Returns:
        (h, w, C) float32.
    """
    filt = filter.lower()
    if filt not in FILTERS:
        raise ValueError(f"filter {filter!r}: not one of {', '.join(FILTERS)}")
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {tuple(image.shape)}")
    if uv_stmap.ndim != 3 or uv_stmap.shape[-1] != 2:
        raise ValueError(f"uv_stmap must be (h, w, 2), got shape {tuple(uv_stmap.shape)}")
    image = image.float()
    height, width = image.shape[:2]
    x_px = uv_stmap[..., 0].double() * width
    y_up_px = uv_stmap[..., 1].double() * height  # Nuke's y, from the bottom edge
    ix, wx = _taps(x_px, width, filt)
    iy_up, wy = _taps(y_up_px, height, filt)
    rows = (height - 1) - iy_up  # rows count from the top
    out = torch.zeros((*uv_stmap.shape[:2], image.shape[2]), device=image.device)
    for a in range(rows.shape[-1]):
        for b in range(ix.shape[-1]):
            weight = wy[..., a] * wx[..., b]
            out += weight[..., None] * image[rows[..., a], ix[..., b]]
    return out
