"""Evidence of an occluder, and of the surface, for the mask refinement (docs/method.md §5.2).

The reconstruction term of Eq. 9 lowers M wherever the atlas misses the plate: on real footage
that is water, reflections, light the shade does not follow and small geometric drift as much
as an occluder. Here M may only go to 0 where something says an occluder is there:

- **motion**: an adjacent match p → q (F_{t→t±1}, cycle-checked) whose surface positions
  disagree, ‖T_{t±1}(q) − T_t(p)‖ above `motion_occluder_px`, in every valid direction: the
  pixel moves, but not as the surface under it does;
- **appearance**: the atlas misses by more than ε·`occluded_factor` *and* nothing ties the pixel
  to the surface (no valid reference match, no surface-consistent adjacent match).

Evidence of the surface is the mirror: an error under ε, a valid reference match, or an
adjacent match that follows the surface within `motion_surface_px`. Pure tensor functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .flow import warp


@dataclass(frozen=True)
class RefineSets:
    """Per-pixel sets of the refinement, (N, H, W) bool each."""

    surface: Tensor
    """N: candidates with evidence of the surface and none of an occluder (M → 1)."""
    occluder: Tensor
    """O: candidates with evidence of an occluder (M → 0)."""
    rgb_on: Tensor
    """Where the reconstruction term applies: O, well-explained pixels and non-candidates."""


def motion_residual(uv_a: Tensor, uv_b: Tensor, flow_ab: Tensor, valid: Tensor) -> Tensor:
    """‖T_b(p + F_ab(p)) − T_a(p)‖ in atlas pixels, (H, W); +inf where F_ab is not valid.

    uv_a, uv_b: (2, H, W) T of every pixel of frames a and b (adjacent), atlas pixels;
    flow_ab: (2, H, W) F_{a→b}; valid: (H, W) bool.
    """
    landed = warp(uv_b[None], flow_ab[None].float())[0]
    dist = torch.linalg.vector_norm(landed - uv_a, dim=0)
    return torch.where(valid, dist, torch.full_like(dist, float("inf")))


def refine_sets(
    cand: Tensor,
    err: Tensor,
    ref_valid: Tensor,
    res_fwd: Tensor,
    res_bwd: Tensor,
    colour_threshold: float,
    occluded_factor: float,
    surface_px: float,
    occluder_px: float,
) -> RefineSets:
    """The refinement's sets from the candidate set Ω, the atlas error and the evidence.

    cand, ref_valid: (N, H, W) bool; err: (N, H, W) mean-abs error of S·A against the plate;
    res_fwd, res_bwd: `motion_residual` forward and backward (+inf where not valid).
    """
    any_valid = torch.isfinite(res_fwd) | torch.isfinite(res_bwd)
    # Every valid direction disagrees with the surface (one bad flow at an edge is not enough).
    moving = any_valid & (res_fwd > occluder_px) & (res_bwd > occluder_px)
    follows = (res_fwd < surface_px) | (res_bwd < surface_px)
    explained = err < colour_threshold
    unexplained = (err > colour_threshold * occluded_factor) & ~ref_valid & ~follows
    occluder = cand & (moving | unexplained)
    surface = cand & ~occluder & (explained | ref_valid | follows)
    rgb_on = ~cand | occluder | explained
    return RefineSets(surface=surface, occluder=occluder, rgb_on=rgb_on)
