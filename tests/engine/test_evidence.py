"""rna_engine.stages.evidence: occluder and surface evidence from motion and appearance (§5.2)."""

from __future__ import annotations

import pytest
import torch

from rna_engine.stages import evidence

H, W = 12, 16


def _grid() -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    return torch.stack([xs, ys])


def test_motion_residual_is_zero_on_the_surface_and_the_relative_motion_on_a_mover() -> None:
    # The camera pans 3 px right between a and b: a surface point at p in a is at p + 3 in b,
    # so T_b(x) = x − 3. The flow follows the surface (+3 px) except on a mover that stays put.
    uv_a = _grid()
    uv_b = _grid() - torch.tensor([3.0, 0.0])[:, None, None]
    flow = torch.zeros(2, H, W)
    flow[0] = 3.0
    mover = torch.zeros(H, W, dtype=torch.bool)
    mover[4:8, 2:6] = True
    flow[0][mover] = 0.0
    valid = torch.ones(H, W, dtype=torch.bool)
    valid[0, :] = False
    res = evidence.motion_residual(uv_a, uv_b, flow, valid)
    surface = valid & ~mover
    surface[:, W - 3 :] = False  # lands outside b
    assert float(res[surface].abs().max()) < 1e-4
    assert torch.allclose(res[mover], torch.full_like(res[mover], 3.0), atol=1e-4)
    assert bool(torch.isinf(res[0]).all())


def _sets(**over: torch.Tensor) -> evidence.RefineSets:
    # Columns: 0 explained; 1 high error, tied to the surface; 2 high error, not tied;
    # 3 middle error, not tied; 4 not a candidate (high error).
    args = {
        "cand": torch.tensor([[[True, True, True, True, False]]]),
        "err": torch.tensor([[[0.01, 0.2, 0.2, 0.06, 0.2]]]),
        "tied": torch.tensor([[[False, True, False, False, False]]]),
    }
    args.update(over)
    return evidence.refine_sets(**args, colour_threshold=0.025, threshold=0.1)


def test_refine_sets_need_evidence_to_lower_the_matte() -> None:
    sets = _sets()
    # Only a large error that nothing ties to the surface is an occluder.
    assert sets.occluder[0, 0].tolist() == [False, False, True, False, False]
    assert sets.surface[0, 0].tolist() == [True, True, False, True, False]
    # The reconstruction term: on the occluder, on explained pixels and off the candidates;
    # never where the atlas misses a candidate that is not evidenced as an occluder.
    assert sets.rgb_on[0, 0].tolist() == [True, False, True, False, True]


def test_the_pull_toward_one_skips_candidates_nothing_explains() -> None:
    cand = torch.tensor([[[True, True, True, True, False]]])
    err = torch.tensor([[[0.01, 0.2, 0.2, 0.06, 0.2]]])
    tied = torch.tensor([[[False, True, False, False, False]]])
    # Without the rule, all of N is pulled.
    assert _sets().pull[0, 0].tolist() == _sets().surface[0, 0].tolist()
    # floor 0.05: the untied 0.06 candidate is unsure; tied or explained ones keep the pull.
    unsure = evidence.unexplained(cand, err, tied, 0.05)
    assert unsure[0, 0].tolist() == [False, False, True, True, False]
    sets = _sets(unsure=unsure)
    assert sets.surface[0, 0].tolist() == [True, True, False, True, False]
    assert sets.pull[0, 0].tolist() == [True, True, False, False, False]
    # At the usual floor (ε·occluded_factor = 0.1) the middle error is roughly explained.
    assert _sets(unsure=evidence.unexplained(cand, err, tied, 0.1)).pull[0, 0, 3]


def test_a_mover_is_every_valid_direction_disagreeing() -> None:
    inf = float("inf")
    fwd = torch.tensor([5.0, 5.0, inf, 0.5, inf])
    bwd = torch.tensor([4.0, inf, 3.0, 6.0, inf])
    assert evidence.moving(fwd, bwd, 2.0).tolist() == [True, True, True, False, False]
    assert evidence.follows(fwd, bwd, 0.75).tolist() == [False, False, False, True, False]


def test_sets_are_disjoint_and_inside_the_candidates() -> None:
    torch.manual_seed(0)
    shape = (3, 9, 9)
    cand = torch.rand(shape) > 0.3
    sets = _sets(cand=cand, err=torch.rand(shape) * 0.2, tied=torch.rand(shape) > 0.5)
    assert not bool((sets.surface & sets.occluder).any())
    assert not bool(((sets.surface | sets.occluder) & ~cand).any())
    assert bool(sets.rgb_on[~cand].all())


def test_the_occluder_threshold_rises_on_frames_where_the_visible_surface_misses_the_atlas() -> (
    None
):
    torch.manual_seed(0)
    shape = (2, 40, 40)
    cand = torch.ones(shape, dtype=torch.bool)
    tied = torch.zeros(shape, dtype=torch.bool)
    tied[:, :20] = True
    err = torch.rand(shape) * 0.02  # frame 0: the tied surface is explained to < 0.02
    err[1, :20] = 0.05 + torch.rand(20, 40) * 0.05  # frame 1: water, 0.05-0.1 on tied pixels
    err[:, 30:, :] = 0.12  # untied, missing the atlas by 0.12 on both frames
    thr = evidence.occluder_threshold(cand, err, tied, 0.1, 0.95, 1.5)
    assert float(thr[0]) == pytest.approx(0.1)  # the floor
    assert 0.14 <= float(thr[1]) <= 0.15  # 1.5 × the 95 % quantile of U(0.05, 0.1)
    sets = evidence.refine_sets(cand, err, tied, 0.025, thr)
    assert bool(sets.occluder[0, 30:].all()) and not bool(sets.occluder[1].any())
    # Off, or too few tied pixels: the floor.
    assert torch.allclose(
        evidence.occluder_threshold(cand, err, tied, 0.1, 0.0, 1.5), thr[:1] * 0 + 0.1
    )
    few = torch.zeros(shape, dtype=torch.bool)
    few[:, 0, :5] = True
    assert torch.allclose(
        evidence.occluder_threshold(cand, err, few, 0.1, 0.95, 1.5), thr[:1] * 0 + 0.1
    )


def test_a_reference_match_outside_the_roi_is_an_occluder_and_one_inside_ties() -> None:
    roi = torch.zeros(H, W)
    roi[3:9, 4:12] = 1.0
    flow = torch.zeros(1, 2, H, W)
    flow[0, 0, 5, 6] = -6.0  # lands at x = 0: far outside the ROI (an occluder matched to itself)
    flow[0, 0, 5, 7] = -4.0  # lands at x = 3: one pixel outside, inside the margin
    valid = torch.ones(1, H, W, dtype=torch.bool)
    valid[0, 6, 6] = False
    landing = evidence.reference_landing(roi, flow, valid, margin_px=2)
    assert int(landing[0, 5, 6]) == -1
    assert int(landing[0, 5, 7]) == 0
    assert int(landing[0, 6, 6]) == 0  # no valid match: no evidence either way
    assert int(landing[0, 4, 5]) == 1  # a zero flow inside the ROI
    assert int(landing[0, 0, 0]) == -1  # outside, matched in place
    cand = (roi > 0)[None]
    sets = evidence.refine_sets(
        cand,
        torch.zeros(1, H, W),  # the atlas explains every pixel: only the landing decides
        landing > 0,
        0.025,
        0.1,
        elsewhere=landing < 0,
    )
    assert bool(sets.occluder[0, 5, 6]) and int(sets.occluder.sum()) == 1


def test_occluder_evidence_is_carried_along_the_occluders_own_motion() -> None:
    """A square moving 1 px right per frame, evidenced only on frame 0: two rounds carry O to
    frames 1 and 2 along its matches, never onto tied pixels or pixels whose match misses O."""
    n, h, w = 4, 12, 16
    square = torch.zeros(n, h, w, dtype=torch.bool)
    for t in range(n):
        square[t, 4:8, 2 + t : 6 + t] = True
    fwd = torch.zeros(n, 2, h, w)
    bwd = torch.zeros(n, 2, h, w)
    fwd[:, 0][square] = 1.0  # the square's own motion; the background is still
    bwd[:, 0][square] = -1.0
    # As a checked flow: the background about to be covered / just uncovered has no match.
    fwd_ok = torch.ones(n, h, w, dtype=torch.bool)
    bwd_ok = torch.ones(n, h, w, dtype=torch.bool)
    fwd_ok[:-1] &= ~(square[1:] & ~square[:-1])
    bwd_ok[1:] &= ~(square[:-1] & ~square[1:])
    occluder = torch.zeros_like(square)
    occluder[0] = square[0]
    open_ = torch.ones_like(square)
    open_[2, 5, 5] = False  # tied to the surface on frame 2
    out = evidence.carry_along_flow(occluder, open_, fwd, fwd_ok, bwd, bwd_ok, steps=2)
    assert torch.equal(out[1], square[1])
    expected = square[2].clone()
    expected[5, 5] = False
    assert torch.equal(out[2], expected)
    assert not out[3].any()  # two rounds reach two frames
    assert torch.equal(
        evidence.carry_along_flow(occluder, open_, fwd, fwd_ok, bwd, bwd_ok, 0), occluder
    )


def test_a_resting_occluder_that_moves_with_the_surface_is_evidenced_by_its_error() -> None:
    # One frame: the surface (rows 0-29) is tied by reference matches and explained to < 0.02;
    # a paw resting on it (rows 30-39) moves with it, so only its adjacent matches tie it, and
    # the atlas misses it by 0.3; a patch of surface tied by motion alone misses by 0.15.
    torch.manual_seed(0)
    shape = (1, 40, 40)
    cand = torch.ones(shape, dtype=torch.bool)
    landing = torch.zeros(shape, dtype=torch.int8)
    landing[:, :30] = 1
    follows = torch.ones(shape, dtype=torch.bool)
    err = torch.rand(shape) * 0.02
    err[:, 30:] = 0.3
    err[:, :30, :1] = 0.15  # surface that a reference match ties, missing the atlas
    err[:, 30:, 36:] = 0.15  # surface tied by motion alone, missing by 1.5 θ
    tied = evidence.surface_ties(landing, follows)
    assert bool(tied.all())  # without the error test every pixel is tied
    # With the motion ties in the quantile (10 % of the tied pixels miss by 0.3), θ rises
    # above the paw's own error; over the reference ties alone it stays at the floor.
    mixed = evidence.occluder_threshold(cand, err, tied, 0.1, 0.95, 1.5)
    assert float(mixed[0]) > 0.3
    thr = evidence.occluder_threshold(cand, err, tied, 0.1, 0.95, 1.5, surest=landing > 0)
    assert float(thr[0]) == pytest.approx(0.1)
    ties = evidence.surface_ties(landing, follows, err, thr, motion_factor=2.0)
    sets = evidence.refine_sets(cand, err, ties, 0.025, thr)
    assert bool(sets.occluder[0, 30:, :36].all())  # the paw: 0.3 > 2 θ
    assert not bool(sets.occluder[0, 30:, 36:].any())  # 0.15 ≤ 2 θ: the motion tie holds
    assert not bool(sets.occluder[0, :30].any())  # a reference tie holds whatever the error
    # A frame with too few reference ties takes the quantile over every tie.
    few = torch.zeros(shape, dtype=torch.bool)
    few[:, 0, :5] = True
    assert torch.allclose(
        evidence.occluder_threshold(cand, err, tied, 0.1, 0.95, 1.5, surest=few), mixed
    )


def test_a_low_floor_finds_an_occluder_near_the_surface_colour_on_anchored_frames() -> None:
    # A frame whose surface the atlas explains to < 0.01: an untied disc that misses it by
    # 0.05 (its colours near the surface's) is an occluder at a floor of ε, not at 4 ε; a
    # frame without 200 reference ties keeps the loose floor.
    torch.manual_seed(0)
    shape = (2, 40, 40)
    cand = torch.ones(shape, dtype=torch.bool)
    landing = torch.ones(shape, dtype=torch.int8)
    landing[1] = 0  # frame 1: no reference tie (T lost the surface there)
    err = torch.rand(shape) * 0.01
    disc = torch.zeros(shape, dtype=torch.bool)
    disc[:, 10:20, 10:20] = True
    landing[disc] = 0
    err[disc] = 0.05
    follows = torch.zeros(shape, dtype=torch.bool)
    follows[1] = ~disc[1]  # frame 1 is tied by motion, except the disc
    tied = evidence.surface_ties(landing, follows)

    def occluder(floor: float) -> torch.Tensor:
        thr = evidence.occluder_threshold(
            cand, err, tied, floor, 0.95, 1.5, surest=landing > 0, loose_floor=0.1
        )
        assert float(thr[1]) == pytest.approx(0.1)  # not anchored: the loose floor
        return evidence.refine_sets(cand, err, tied, 0.025, thr).occluder

    low = occluder(0.025)
    assert bool(low[0][disc[0]].all()) and not bool(low[0][~disc[0]].any())
    assert not bool(low[1].any())
    assert not bool(occluder(0.1).any())


def test_opening_keeps_regions_and_drops_speckle() -> None:
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 2:8, 2:8] = True  # a region
    mask[0, 12, 12] = mask[0, 15, 3] = True  # speckle
    mask[0, 10:12, 15:19] = True  # 2 px thick: gone at r = 1
    out = evidence.opened(mask, 1)
    assert torch.equal(out[0, 2:8, 2:8], mask[0, 2:8, 2:8])
    assert int(out.sum()) == 36
    assert torch.equal(evidence.opened(mask, 0), mask)
