"""Tests of rna_engine/stages/correspondences.py: flow math, occlusion checks, aggregation, bootstrap, cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rna_engine.runtime.context import RunContext
from rna_engine.runtime.progress import CancelToken
from rna_engine.settings import FlowSettings
from rna_engine.stages.appearance import pixel_grid
from rna_engine.stages.correspondences import (
    Correspondences,
    DisFlow,
    compose,
    compute_correspondences,
    correspondences_from,
    cycle_error,
    mean_of_candidates,
    pull_back_mask,
    warp,
)

BG_VELOCITY = (1.3, 0.6)
"""Background motion per frame, pixels (x, y)."""
SQUARE_VELOCITY = (-5.0, 1.5)
SQUARE_SIZE = 18


def texture(x: np.ndarray, y: np.ndarray, seed: int, waves: int = 24) -> np.ndarray:
    """A smooth random RGB texture defined everywhere (sums of plane waves), 0..1."""
    rng = np.random.default_rng(seed)
    out = np.zeros((*x.shape, 3), np.float32)
    for c in range(3):
        for _ in range(waves):
            freq, angle, phase = rng.uniform(0.05, 0.3), rng.uniform(0, np.pi), rng.uniform(0, 6.3)
            out[..., c] += np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return np.clip(0.5 + 0.35 * out / np.sqrt(waves / 2), 0, 1)


def square_origin(t: int) -> tuple[float, float]:
    return 62 + SQUARE_VELOCITY[0] * t, 12 + SQUARE_VELOCITY[1] * t


def make_scene(n: int = 4, h: int = 64, w: int = 96, square: bool = True):
    """Textured background translating by BG_VELOCITY per frame and an occluding textured square
    moving by SQUARE_VELOCITY. Returns frames (N,3,H,W) and square masks (N,H,W) bool."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    frames, masks = [], []
    for t in range(n):
        img = texture(xs - BG_VELOCITY[0] * t, ys - BG_VELOCITY[1] * t, seed=0)
        ox, oy = square_origin(t)
        inside_sq = (xs >= ox) & (xs < ox + SQUARE_SIZE) & (ys >= oy) & (ys < oy + SQUARE_SIZE)
        if not square:
            inside_sq[:] = False
        img[inside_sq] = texture(xs - ox, ys - oy, seed=1)[inside_sq] * 0.6 + 0.2
        frames.append(img)
        masks.append(inside_sq)
    frames_t = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    return frames_t, torch.from_numpy(np.stack(masks))


def in_square(x: np.ndarray, y: np.ndarray, t: int, margin: float = 0.0) -> np.ndarray:
    ox, oy = square_origin(t)
    return (
        (x >= ox - margin)
        & (x < ox + SQUARE_SIZE + margin)
        & (y >= oy - margin)
        & (y < oy + SQUARE_SIZE + margin)
    )


def affine_flow(h: int, w: int, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """F(p) = A p + b as a (1, 2, H, W) tensor."""
    grid = pixel_grid(h, w, "cpu").numpy()
    flow = np.einsum("ij,jhw->ihw", a, grid) + b[:, None, None]
    return torch.from_numpy(flow.astype(np.float32)).unsqueeze(0)


# --------------------------------------------------------------------------------------------
# Flow math


def test_warp_integer_shift_is_exact() -> None:
    image = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 0] = 1.0  # every pixel looks one column to the right
    out = warp(image, flow)[0, 0]
    torch.testing.assert_close(out[:, :3], image[0, 0, :, 1:])
    assert torch.all(out[:, 3] == 0)  # beyond the last column: zeros


def test_compose_matches_analytic_affine_composite() -> None:
    h, w = 40, 56  # not square: swapped axes would fail
    a1, b1 = np.array([[0.02, -0.01], [0.015, 0.03]]), np.array([1.7, -0.8])
    a2, b2 = np.array([[-0.03, 0.02], [0.01, -0.02]]), np.array([-0.6, 1.25])
    f1, f2 = affine_flow(h, w, a1, b1), affine_flow(h, w, a2, b2)
    got = compose(f1, f2)[0].numpy()
    grid = pixel_grid(h, w, "cpu").numpy()
    q = grid + f1[0].numpy()  # where p lands in the middle frame
    expected = f1[0].numpy() + np.einsum("ij,jhw->ihw", a2, q) + b2[:, None, None]
    interior = (q[0] > 1) & (q[0] < w - 2) & (q[1] > 1) & (q[1] < h - 2)
    assert interior.mean() > 0.7
    assert np.abs(got - expected)[:, interior].max() < 1e-3


def test_cycle_error_zero_for_inverse_translations_and_known_otherwise() -> None:
    h, w = 20, 30
    fwd = affine_flow(h, w, np.zeros((2, 2)), np.array([2.0, -1.0]))
    bwd = affine_flow(h, w, np.zeros((2, 2)), np.array([-2.0, 1.0]))
    err = cycle_error(fwd, bwd)[0]
    assert torch.all(err[1:-1, :-2] < 1e-5)
    assert torch.isinf(err[:, -1]).all()  # lands outside: never consistent
    wrong = affine_flow(h, w, np.zeros((2, 2)), np.array([-2.0, 4.0]))  # 3 px off in y
    torch.testing.assert_close(cycle_error(fwd, wrong)[0, 1:-1, :-2], torch.full((18, 28), 3.0))


def test_mean_of_candidates_is_a_true_mean() -> None:
    # one pixel, three candidates of dx = 1, 2, 6; a second pixel with only the middle one valid
    flows = torch.tensor([1.0, 2.0, 6.0]).view(3, 1, 1, 1).repeat(1, 2, 1, 2)
    valid = torch.tensor([[[True, False]], [[True, True]], [[True, False]]])
    mean, any_valid = mean_of_candidates(flows, valid)
    # a recency-weighted pairwise average would give ((1 + 2) / 2 + 6) / 2 = 3.75
    torch.testing.assert_close(mean[:, 0, 0], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(mean[:, 0, 1], torch.tensor([2.0, 2.0]))
    assert any_valid.all()
    _, none = mean_of_candidates(flows, torch.zeros_like(valid))
    assert not none.any()


def test_pull_back_mask_follows_the_flow() -> None:
    mask = torch.zeros(8, 10)
    mask[2:5, 3:7] = 1
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # p in t shows reference pixel p + (2, -1)
    for mode in ("nearest", "bilinear"):
        out = pull_back_mask(mask, flow, mode)[0]
        expected = torch.zeros(8, 10, dtype=torch.bool)
        expected[3:6, 1:5] = True
        assert torch.equal(out, expected), mode


# --------------------------------------------------------------------------------------------
# Aggregation with hand-made flows


class TranslationBackend:
    """Constant flows: pair (a, b) → (b − a)·v + error[(a, b)], error[(b, a)] = −error[(a, b)],
    so every cycle is exactly consistent and only the aggregation decides the result."""

    name = "translation"

    def __init__(self, h: int, w: int, errors: dict[tuple[int, int], tuple[float, float]]):
        self.h, self.w, self.errors = h, w, errors
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pairs):
        out = []
        for a, b in pairs:
            self.calls.append((a, b))
            ex, ey = self.errors.get((a, b), (0.0, 0.0))
            if (b, a) in self.errors:
                ex, ey = -self.errors[(b, a)][0], -self.errors[(b, a)][1]
            flow = torch.empty(2, self.h, self.w)
            flow[0] = (b - a) * 1.0 + ex
            flow[1] = (b - a) * 0.5 + ey
            out.append(flow)
        return torch.stack(out)


class AlwaysSimilar:
    name = "always"

    def features(self, frames):
        return frames

    def similarity(self, feat_a, feat_b, flow_ab):
        return torch.ones(flow_ab.shape[0], *flow_ab.shape[2:])


def test_reference_flow_is_the_true_mean_of_chains() -> None:
    h, w, n = 16, 24, 4
    errors = {(1, 0): (0.3, 0.0), (2, 1): (0.0, 0.6), (2, 0): (-0.9, 0.0), (3, 0): (1.2, -0.3)}
    backend = TranslationBackend(h, w, errors)
    frames = torch.zeros(n, 3, h, w)
    roi = torch.ones(h, w)
    result = correspondences_from(  # the chains alone: no camera prior on blank frames
        backend, AlwaysSimilar(), frames, roi, 0, FlowSettings(camera="off"), RunContext()
    )
    v = torch.tensor([1.0, 0.5])
    e = {k: torch.tensor(x) for k, x in errors.items()}
    zero = torch.zeros(2)
    ref1 = -v + e[(1, 0)]
    ref2 = ((-v + e[(2, 1)] + ref1) + (-2 * v + e[(2, 0)])) / 2
    # frame 3: hops to 2, 1 (chains) and the direct 3→0; adjacent 3→2 carries no error
    ref3 = ((-v + zero + ref2) + (-2 * v + zero + ref1) + (-3 * v + e[(3, 0)])) / 3
    # check away from where the chains leave the frame
    for t, expected in ((1, ref1), (2, ref2), (3, ref3)):
        got = result.ref[t][:, 8:-2, 10:]
        torch.testing.assert_close(got, expected.view(2, 1, 1).expand_as(got), atol=1e-5, rtol=0)
        assert result.ref_valid[t][8:-2, 10:].all()
    # nothing computed twice: every ordered pair at most once
    assert len(backend.calls) == len(set(backend.calls))
    assert torch.equal(result.ref[0], torch.zeros(2, h, w)) and result.ref_valid[0].all()


def test_far_frames_use_max_hops_plus_direct_flow() -> None:
    h, w, n = 12, 16, 5
    backend = TranslationBackend(h, w, {})
    settings = FlowSettings(max_hops=2)
    correspondences_from(
        backend,
        AlwaysSimilar(),
        torch.zeros(n, 3, h, w),
        torch.ones(h, w),
        2,
        settings,
        RunContext(),
    )
    # frame 0 (distance 2): hops 0→1 (adjacent) and 0→2; frame 4 likewise; no direct flows
    assert (0, 2) in backend.calls and (4, 2) in backend.calls
    backend = TranslationBackend(h, w, {})
    correspondences_from(
        backend,
        AlwaysSimilar(),
        torch.zeros(n, 3, h, w),
        torch.ones(h, w),
        0,
        settings,
        RunContext(),
    )
    assert (4, 0) in backend.calls and (0, 4) in backend.calls  # direct beyond max_hops
    assert (4, 1) not in backend.calls  # a 3-frame hop exceeds max_hops


# --------------------------------------------------------------------------------------------
# The stage on hand-built frames (DIS + descriptor)


@pytest.fixture(scope="module")
def scene() -> tuple[torch.Tensor, torch.Tensor, Correspondences]:
    frames, squares = make_scene()
    roi = torch.zeros(64, 96)
    roi[30:60, 8:50] = 1  # on the background, clear of the square in the reference frame
    result = compute_correspondences(frames, roi, 0, FlowSettings(), RunContext())
    return frames, roi, result


def test_cycle_check_rejects_occluded_and_disoccluded_pixels(scene) -> None:
    frames, _, c = scene
    n, _, h, w = frames.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rejected_occ, rejected_dis, kept_far = [], [], []
    for t in range(n - 1):
        # background pixels of t hidden at t+1 (occluded): the square covers where they move to
        bg_t = ~in_square(xs, ys, t, margin=1)
        occluded = bg_t & in_square(xs + BG_VELOCITY[0], ys + BG_VELOCITY[1], t + 1, margin=-1)
        rejected_occ.append(~c.fwd_valid[t].numpy()[occluded])
        # background pixels of t+1 hidden at t (disoccluded): the backward flow has no match
        bg_t1 = ~in_square(xs, ys, t + 1, margin=1)
        disocc = bg_t1 & in_square(xs - BG_VELOCITY[0], ys - BG_VELOCITY[1], t, margin=-1)
        rejected_dis.append(~c.bwd_valid[t + 1].numpy()[disocc])
        far = ~in_square(xs, ys, t, margin=6) & ~in_square(xs, ys, t + 1, margin=6)
        far &= (xs > 4) & (xs < w - 5) & (ys > 4) & (ys < h - 5)
        kept_far.append(c.fwd_valid[t].numpy()[far])
    assert np.concatenate(rejected_occ).size > 60
    assert np.concatenate(rejected_occ).mean() > 0.95
    assert np.concatenate(rejected_dis).mean() > 0.95
    assert np.concatenate(kept_far).mean() > 0.95  # not everything rejected
    assert not c.fwd_valid[n - 1].any() and not c.bwd_valid[0].any()


def test_reference_flow_accuracy_and_occlusion(scene) -> None:
    frames, _, c = scene
    n, _, h, w = frames.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for t in range(1, n):
        true = -t * np.array(BG_VELOCITY, np.float32)
        ref_x, ref_y = xs + true[0], ys + true[1]
        visible = (
            ~in_square(xs, ys, t, margin=1)
            & ~in_square(ref_x, ref_y, 0, margin=1)
            & (ref_x >= 0)
            & (ref_y >= 0)
        )
        valid = c.ref_valid[t].numpy()
        epe = np.linalg.norm(c.ref[t].numpy() - true[:, None, None], axis=0)
        assert np.median(epe[valid & visible]) < 0.1
        assert valid[visible].mean() > 0.9
        # background pixels of t whose reference position is under the square: no match
        hidden = ~in_square(xs, ys, t, margin=1) & in_square(ref_x, ref_y, 0, margin=-1)
        assert hidden.sum() > 30
        assert (~valid[hidden]).mean() > 0.95


def test_bootstrap_equals_roi_on_reference_and_follows_motion(scene) -> None:
    frames, roi, c = scene
    assert torch.equal(c.bootstrap[0], roi)
    assert c.bootstrap.dtype == torch.float32
    assert set(torch.unique(c.bootstrap).tolist()) <= {0.0, 1.0}
    t = 2
    ys, xs = np.mgrid[0:64, 0:96].astype(np.float32)
    ref_x, ref_y = xs - t * BG_VELOCITY[0], ys - t * BG_VELOCITY[1]
    expected = (ref_x >= 8) & (ref_x <= 49) & (ref_y >= 30) & (ref_y <= 59)
    got = c.bootstrap[t].numpy() > 0.5
    assert (got == expected).mean() > 0.97
    assert not (got & ~c.ref_valid[t].numpy()).any()  # AND validity


def test_progress_and_cancel(scene) -> None:
    frames, roi, _ = scene

    class Recorder:
        def __init__(self) -> None:
            self.events: list[tuple[str, float, str]] = []

        def update(self, stage: str, fraction: float, message: str = "", **metrics: float):
            self.events.append((stage, fraction, message))

    rec = Recorder()
    compute_correspondences(frames[:3], roi, 1, FlowSettings(), RunContext(reporter=rec))
    assert {e[0] for e in rec.events} == {"correspondences"}
    fractions = [e[1] for e in rec.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert rec.events[-1][2] == "frame 3/3"
    token = CancelToken()
    token.cancel()
    from rna_engine.errors import Cancelled

    with pytest.raises(Cancelled):
        compute_correspondences(frames[:3], roi, 1, FlowSettings(), RunContext(cancel=token))


# --------------------------------------------------------------------------------------------
# Cache and fallbacks


def test_cache_is_reused_and_keyed_by_settings(tmp_path: Path, scene) -> None:
    frames, roi, _ = scene
    frames = frames[:3]
    ctx = RunContext(work_dir=tmp_path)
    first = compute_correspondences(frames, roi, 1, FlowSettings(), ctx)
    files = list(tmp_path.glob("correspondences-*.pt"))
    assert len(files) == 1
    # tamper with the cached flow: a second run must return the file's content, not recompute
    data = torch.load(files[0], weights_only=True)
    data["ref"][0] += 100.0
    torch.save(data, files[0])
    second = compute_correspondences(frames, roi, 1, FlowSettings(), ctx)
    torch.testing.assert_close(second.ref[0], first.ref[0] + 100.0)
    assert torch.equal(second.bootstrap, first.bootstrap)
    assert second.bootstrap.dtype == torch.float32
    compute_correspondences(frames, roi, 1, FlowSettings(max_hops=1), ctx)
    assert len(list(tmp_path.glob("correspondences-*.pt"))) == 2
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_missing_raft_weights_log_the_command_and_fall_back_to_dis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, scene
) -> None:
    monkeypatch.setenv("RNA_HOME", str(tmp_path))
    frames, roi, _ = scene
    frames = frames[:2]
    engine_log = logging.getLogger("rna_engine")
    propagate = engine_log.propagate
    engine_log.propagate = True  # the CLI switches it off when it sets up logging
    try:
        with caplog.at_level(logging.WARNING, logger="rna_engine"):
            settings = FlowSettings(backend="raft", appearance="dino")
            raft = compute_correspondences(frames, roi, 0, settings, RunContext())
    finally:
        engine_log.propagate = propagate
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("rna-engine models install raft --from FILE" in m for m in lines) == 1
    assert sum("rna-engine models install dino --from DIR" in m for m in lines) == 1
    dis = compute_correspondences(frames, roi, 0, FlowSettings(), RunContext())
    assert torch.equal(raft.fwd, dis.fwd) and torch.equal(raft.ref_valid, dis.ref_valid)


# --------------------------------------------------------------------------------------------
# Synthetic shot with exact ground truth


def test_synthetic_tiny_shot_reference_flow_and_occlusion() -> None:
    synth = pytest.importorskip("rna_engine.synthetic.shots")
    shot = synth.make_shot("tiny")
    frames = torch.from_numpy(shot.plate_srgb).permute(0, 3, 1, 2).contiguous()
    r = shot.reference_index
    c = compute_correspondences(frames, torch.from_numpy(shot.roi), r, FlowSettings(), RunContext())
    n, h, w = shot.occlusion.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    epe, occluded_valid, visible_valid = [], [], []
    for t in range(n):
        if t == r:
            continue
        true_flow = np.stack([shot.true_ref_xy[t, ..., 0] - xs, shot.true_ref_xy[t, ..., 1] - ys])
        valid = c.ref_valid[t].numpy()
        epe.append(np.linalg.norm(c.ref[t].numpy() - true_flow, axis=0)[valid])
        occluded_valid.append(valid[shot.occlusion[t] > 0.5])
        visible_valid.append(valid[shot.occlusion[t] < 0.01])
    assert np.median(np.concatenate(epe)) < 0.25
    occluded = np.concatenate(occluded_valid)
    assert occluded.size > 100
    assert occluded.mean() < 0.05  # at least 95 % of the truly occluded pixels rejected
    assert np.concatenate(visible_valid).mean() > 0.8
    assert torch.equal(c.bootstrap[r], torch.from_numpy(shot.roi))


def test_dis_stream_equals_batch_calls_and_stops_early(scene) -> None:
    frames = scene[0]
    settings = FlowSettings()
    batches = [[(0, 1), (1, 0)], [(0, 2)], [(2, 0), (1, 2), (2, 1)]]
    backend = DisFlow(frames, settings, "cpu", workers=2, lookahead=2)
    try:
        streamed = list(backend.stream(batches))
        assert [len(f) for f in streamed] == [2, 1, 3]
        for pairs, flows in zip(batches, streamed, strict=True):
            assert torch.equal(flows, backend(pairs))
        # A consumer that stops after the first batch closes the stream without waiting on the
        # rest; the pool still serves later calls.
        stream = backend.stream(batches * 20)
        first = next(stream)
        stream.close()
        assert torch.equal(first, streamed[0])
        assert torch.equal(backend([(0, 1)])[0], streamed[0][0])
    finally:
        backend.close()
