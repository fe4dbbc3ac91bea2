"""Evidence of an occluder, and of the surface, for the matte (docs/method.md §2.3, §5.2).

The reconstruction term of Eq. 9 lowers M wherever the atlas misses the plate. On real footage
that is water, reflections, light the shade does not follow and small geometric drift as much
as an occluder; on `blackswan` it emptied the matte over open water. Here the candidate set Ω
(the ROI carried to the frame) is the surface by default, and M goes to 0 only where an
occluder is evidenced: a valid reference match lands outside the reference ROI (the occluder
matched to itself), or the atlas misses by more than a threshold (`occluder_threshold`) *and*
nothing ties the pixel to the surface — no reference match into the ROI, no adjacent match that
follows the surface (‖T_{t±1}(p + F(p)) − T_t(p)‖ < `motion_surface_px`). A tie by motion
alone does not hold where the atlas misses the pixel by far more than the threshold
(`motion_tie_factor`): something resting on the surface moves with it.

Motion alone is not taken as evidence of an occluder: water and reflections move against the
surface they lie on (measured on `blackswan`, H200: with motion as evidence the matte covered
23 % of the open water on the worst frame). A mover (every valid adjacent match disagrees by
more than `motion_occluder_px`) only loses the joint fit's protection. Pure tensor functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .correspondences import warp


@dataclass(frozen=True)
class RefineSets:
    """Per-pixel sets of the refinement, (N, H, W) bool each."""

    surface: Tensor
    """N: candidates without evidence of an occluder (M → 1)."""
    occluder: Tensor
    """O: candidates with evidence of an occluder (M → 0)."""
    rgb_on: Tensor
    """Where the reconstruction term applies: O, well-explained pixels and non-candidates."""
    pull: Tensor
    """Where λ_a pulls M toward 1: N without the unsure candidates (`sets_for`)."""


def motion_residual(uv_a: Tensor, uv_b: Tensor, flow_ab: Tensor, valid: Tensor) -> Tensor:
    """‖T_b(p + F_ab(p)) − T_a(p)‖ in atlas pixels, (H, W); +inf where F_ab is not valid.

    uv_a, uv_b: (2, H, W) T of every pixel of frames a and b (adjacent), atlas pixels;
    flow_ab: (2, H, W) F_{a→b}; valid: (H, W) bool.
    """
    landed = warp(uv_b[None], flow_ab[None].float())[0]
    dist = torch.linalg.vector_norm(landed - uv_a, dim=0)
    return torch.where(valid, dist, torch.full_like(dist, float("inf")))


def occluder_threshold(
    cand: Tensor,
    err: Tensor,
    tied: Tensor,
    floor: float,
    quantile: float,
    margin: float,
    min_px: int = 200,
    surest: Tensor | None = None,
    loose_floor: float | None = None,
) -> Tensor:
    """Per frame (N,): the error above which an untied candidate counts as an occluder.

    `floor` (ε·`occluder_floor`), raised to `margin` × the `quantile` of the error on the
    frame's tied candidates (pixels a match puts on the surface): on a frame where even the
    surely visible surface misses the atlas by that much (water, a light change), so may the
    rest of it. `surest` ((N, H, W) bool, the reference ties): where a frame has at least
    `min_px` of them, the quantile is over those alone — a motion tie also holds on something
    resting on the surface, whose error would raise the threshold above its own. A frame
    without `min_px` reference ties is not anchored to the reference: its floor is
    `loose_floor` (default `floor`; ε·`occluded_factor`), since where T has lost the surface
    every candidate misses the atlas. Frames with fewer than `min_px` tied candidates keep
    their floor; `quantile` 0: `floor` on every frame.
    """
    n = err.shape[0]
    out = torch.full((n,), floor, device=err.device)
    if quantile <= 0:
        return out
    for t in range(n):
        sure = err[t][cand[t] & tied[t]]
        low = floor if surest is None or loose_floor is None else loose_floor
        if surest is not None:
            best = err[t][cand[t] & surest[t]]
            if best.numel() >= min_px:
                sure, low = best, floor
        out[t] = low
        if sure.numel() >= min_px:
            q = torch.quantile(sure.float()[: 1 << 24], quantile)
            out[t] = torch.clamp(q * margin, min=low)
    return out


def surface_ties(
    landing: Tensor,
    follows_: Tensor,
    err: Tensor | None = None,
    threshold: Tensor | float = 0.0,
    motion_factor: float = 0.0,
) -> Tensor:
    """The candidates a match ties to the surface, (N, H, W) bool: a reference match into the
    ROI (`reference_landing` 1) or, without a valid reference match (0), an adjacent match that
    `follows` the surface. With `motion_factor` > 0 a tie by motion alone holds only while the
    atlas error `err` is at most `motion_factor` × `threshold` (a number or per frame (N,)):
    a paw resting on the ground moves with it, but the atlas misses it by far more than it
    misses the surface (docs/method.md §5.2)."""
    motion = follows_ & (landing == 0)
    if motion_factor > 0 and err is not None:
        if isinstance(threshold, Tensor):
            threshold = threshold[:, None, None]
        motion &= err <= motion_factor * threshold
    return (landing > 0) | motion


def reference_landing(roi: Tensor, ref_flow: Tensor, ref_valid: Tensor, margin_px: int) -> Tensor:
    """Where each pixel's valid reference match lands, (N, H, W) int8: 1 inside the reference
    ROI, −1 outside it grown by `margin_px`, 0 near its edge or without a valid match.

    A valid match that lands outside the ROI ties the pixel to something that was not the ROI's
    surface at the reference frame: an occluder matched to itself (measured on `blackswan`: 62–80 %
    of the swan's pixels have a valid reference match, landing on the swan).
    """
    inside = roi.float()[None, None]
    grown = F.max_pool2d(inside, 2 * margin_px + 1, stride=1, padding=margin_px)
    out = torch.zeros(ref_valid.shape, dtype=torch.int8, device=roi.device)
    for t in range(ref_valid.shape[0]):
        flow = ref_flow[t : t + 1].float()
        at_in = warp(inside, flow)[0, 0] > 0.5
        at_grown = warp(grown, flow)[0, 0] > 0.5
        ok = ref_valid[t]
        out[t][ok & at_in] = 1
        out[t][ok & ~at_grown] = -1
    return out


def refine_sets(
    cand: Tensor,
    err: Tensor,
    tied: Tensor,
    colour_threshold: float,
    threshold: Tensor | float,
    elsewhere: Tensor | None = None,
    unsure: Tensor | None = None,
    open_px: int = 0,
) -> RefineSets:
    """The refinement's sets from the candidate set Ω, the atlas error and the ties.

    cand: (N, H, W) bool Ω; err: (N, H, W) mean-abs error of S·A against the plate; tied:
    (N, H, W) bool, a reference match into the ROI or an adjacent match that `follows` the
    surface; threshold: the occluder error, a number or per frame (N,) (`occluder_threshold`);
    elsewhere: (N, H, W) bool, a valid reference match landing outside the ROI
    (`reference_landing` −1): an occluder whatever its error or ties; unsure: see `sets_for`;
    open_px: the appearance rule's pixels are opened by a (2·open_px + 1)² square (`opened`).
    """
    if isinstance(threshold, Tensor):
        threshold = threshold[:, None, None]
    occluder = opened(cand & (err > threshold) & ~tied, open_px)
    if elsewhere is not None:
        occluder |= cand & elsewhere
    return sets_for(cand, occluder, err, colour_threshold, unsure)


def opened(mask: Tensor, radius: int) -> Tensor:
    """(N, H, W) bool `mask` opened (eroded, then dilated) by a (2r+1)² square per frame: what
    is left is every part that holds a whole square. An occluder the atlas misses is a region;
    the misses of water and glints are speckle (measured on `blackswan`, CPU small settings:
    with r = 1 the final O covered at most 14.8 % of the visible water on a frame at the low
    floor, against 21.0 % without; docs/method.md §5.2). r ≤ 0: unchanged."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    x = mask.float()[:, None]
    x = -F.max_pool2d(-x, k, stride=1, padding=radius)
    x = F.max_pool2d(x, k, stride=1, padding=radius)
    return x[:, 0] > 0.5


def unexplained(cand: Tensor, err: Tensor, tied: Tensor, floor: float) -> Tensor:
    """Candidates that no match ties to the surface and that the atlas does not even roughly
    explain (error ≥ `floor`, ε·`occluded_factor`), (N, H, W) bool: on a frame where T lost the
    surface, the candidate set itself is wrong, and pulling M to 1 there paints whatever T
    points at."""
    return cand & ~tied & (err >= floor)


def sets_for(
    cand: Tensor,
    occluder: Tensor,
    err: Tensor,
    colour_threshold: float,
    unsure: Tensor | None = None,
) -> RefineSets:
    """The refinement's sets for a given O ⊆ Ω: N = Ω ∖ O; the reconstruction term on O, on
    well-explained pixels (error < ε) and outside Ω; the pull toward 1 on N outside `unsure`
    ((N, H, W) bool, `unexplained`; None: all of N), where M keeps the joint fit's value."""
    surface = cand & ~occluder
    return RefineSets(
        surface=surface,
        occluder=occluder,
        rgb_on=~cand | occluder | (err < colour_threshold),
        pull=surface if unsure is None else surface & ~unsure,
    )


def follows(res_fwd: Tensor, res_bwd: Tensor, surface_px: float) -> Tensor:
    """An adjacent match (either direction) follows the surface within `surface_px`."""
    return (res_fwd < surface_px) | (res_bwd < surface_px)


def moving(res_fwd: Tensor, res_bwd: Tensor, occluder_px: float) -> Tensor:
    """Every valid adjacent match disagrees with the surface by more than `occluder_px`."""
    any_valid = torch.isfinite(res_fwd) | torch.isfinite(res_bwd)
    return any_valid & (res_fwd > occluder_px) & (res_bwd > occluder_px)


def carry_along_flow(
    occluder: Tensor,
    open_: Tensor,
    fwd: Tensor,
    fwd_valid: Tensor,
    bwd: Tensor,
    bwd_valid: Tensor,
    steps: int,
) -> Tensor:
    """O grown along the adjacent matches: a pixel of `open_` (N, H, W) bool — a candidate that
    no match ties to the surface — whose valid forward or backward match lands in O on the
    next or previous frame joins O; `steps` rounds. The occluder's own motion carries the
    evidence of its neighbours in time to pixels where it was not seen (docs/method.md §5.2).
    fwd/bwd: (N, 2, H, W) flows t→t±1 in pixels; *_valid: (N, H, W) bool."""
    n, h, w = occluder.shape
    if steps <= 0 or n < 2:
        return occluder
    ys, xs = torch.meshgrid(
        torch.arange(h, device=occluder.device),
        torch.arange(w, device=occluder.device),
        indexing="ij",
    )

    def lands_in(flow: Tensor, valid: Tensor, target: Tensor) -> Tensor:
        x = (xs + flow[0]).round().long()
        y = (ys + flow[1]).round().long()
        inside = valid & (x >= 0) & (x < w) & (y >= 0) & (y < h)
        return inside & target[y.clamp(0, h - 1), x.clamp(0, w - 1)]

    out = occluder.clone()
    for _ in range(steps):  # one frame at a time: no (N, H, W) index tensors
        before = out.clone()
        for t in range(n):
            grown = torch.zeros_like(out[t])
            if t + 1 < n:
                grown |= lands_in(fwd[t], fwd_valid[t], before[t + 1])
            if t > 0:
                grown |= lands_in(bwd[t], bwd_valid[t], before[t - 1])
            out[t] |= grown & open_[t]
    return out
