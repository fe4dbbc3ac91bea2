"""Tests of rna_engine/stages/camera.py and the camera prior in flow, fields and losses (issue #15).

Ground truth comes from `synth`: `true_ref_xy` says where every plate pixel lies on the reference
frame, so a homography per frame and the guided t→r matches can be scored exactly.
"""

from __future__ import annotations

import math
import signal
import threading
import time

import numpy as np
import pytest
import torch

from rna_engine.model import losses
from rna_engine.model.fields import RNAFields
from rna_engine.runtime.context import RunContext
from rna_engine.settings import FitSettings, FlowSettings
from rna_engine.stages.camera import TrackAhead, apply_homography, normalised, plausible
from rna_engine.stages.correspondences import compute_correspondences
from rna_engine.stages.fit import Geometry, camera_gate, camera_region_for
from rna_engine.synthetic.shots import make_shot


@pytest.fixture(scope="module")
def pan_small():
    """A pan that carries the ROI across half the frame (16 frames, 160×96), camera on/off."""
    shot = make_shot("pan-small")
    frames = torch.from_numpy(shot.plate_srgb).permute(0, 3, 1, 2).contiguous()
    roi = torch.from_numpy(shot.roi)
    r = shot.reference_index
    with_camera = compute_correspondences(frames, roi, r, FlowSettings(), RunContext())
    chains = compute_correspondences(frames, roi, r, FlowSettings(camera="off"), RunContext())
    return shot, with_camera, chains


def _visible_roi(shot, t: int) -> np.ndarray:
    return (shot.roi_tracked[t] > 0.5) & (shot.occlusion[t] < 0.01)


def test_homography_tracks_the_roi_surface_on_every_frame(pan_small) -> None:
    shot, corr, _ = pan_small
    assert corr.camera is not None and corr.camera.shape == (shot.n_frames, 3, 3)
    h, w = shot.occlusion.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    for t in range(shot.n_frames):
        region = _visible_roi(shot, t)
        if region.sum() < 50:
            continue
        hx, hy = apply_homography(corr.camera[t].numpy(), xs, ys)
        err = np.hypot(hx - shot.true_ref_xy[t, ..., 0], hy - shot.true_ref_xy[t, ..., 1])
        assert np.median(err[region]) < 0.2, f"frame {t}: median {np.median(err[region]):.2f} px"
    np.testing.assert_allclose(corr.camera[shot.reference_index].numpy(), np.eye(3), atol=1e-9)


def _ref_error(shot, corr, t: int) -> tuple[np.ndarray, float]:
    """Errors of the valid t→r matches on the visible ROI, and the valid share there."""
    h, w = shot.occlusion.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    region = _visible_roi(shot, t)
    valid = corr.ref_valid[t].numpy() & region
    flow = corr.ref[t].numpy()
    err = np.hypot(
        xs + flow[0] - shot.true_ref_xy[t, ..., 0], ys + flow[1] - shot.true_ref_xy[t, ..., 1]
    )
    return err[valid], valid.sum() / max(region.sum(), 1)


def test_guided_matches_beat_chains_on_the_far_frames(pan_small) -> None:
    shot, cam, chains = pan_small
    for t in (0, 1, shot.n_frames - 2, shot.n_frames - 1):
        err_cam, share_cam = _ref_error(shot, cam, t)
        err_chain, share_chain = _ref_error(shot, chains, t)
        assert np.quantile(err_cam, 0.9) < 0.5, f"frame {t}"
        assert np.quantile(err_cam, 0.9) <= np.quantile(err_chain, 0.9) + 0.05, f"frame {t}"
        assert share_cam > 0.7, f"frame {t}: {share_cam:.2f} of the visible ROI matched"
        assert share_cam >= share_chain - 0.02, f"frame {t}"


def test_plausible_rejects_folds_and_blow_ups() -> None:
    assert plausible(np.eye(3), 100, 80)
    shift = np.array([[1.0, 0, 30], [0, 1, -10], [0, 0, 1]])
    assert plausible(shift, 100, 80)
    assert not plausible(np.diag([-1.0, 1.0, 1.0]), 100, 80)  # mirrored: area sign flips
    assert not plausible(np.diag([5.0, 5.0, 1.0]), 100, 80)  # 25× the area
    horizon = np.array([[1.0, 0, 0], [0, 1, 0], [-0.02, 0, 1]])  # the line at x = 50 goes to ∞
    assert not plausible(horizon, 100, 80)
    assert not plausible(np.full((3, 3), np.nan), 100, 80)


def _rotation_zoom(half_rez: float) -> np.ndarray:
    a, s = math.radians(12.0), 1.3
    return np.array(
        [
            [s * math.cos(a), -s * math.sin(a), 7.0],
            [s * math.sin(a), s * math.cos(a), -4.0],
            [2e-4, -1e-4, 1.0],
        ]
    )


def test_fields_start_as_the_camera_prior() -> None:
    width, height, n = 96, 64, 5
    half = max(width, height) / 2.0
    px = np.stack([np.eye(3)] + [_rotation_zoom(half)] * (n - 1))
    camera = torch.from_numpy(normalised(px, half))
    model = RNAFields(FitSettings(mapping_width=32), camera=camera)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, generator=g) * (width - 1)
    y = torch.rand(200, generator=g) * (height - 1)
    t = torch.randint(0, n, (200,), generator=g).double()
    xyt = torch.stack([x / half - 1, y / half - 1, t / (n / 2.0) - 1], 1).float()
    uv = model.uv(xyt)
    torch.testing.assert_close(uv, model.camera_base(xyt))  # the residual starts at 0
    # The prior on xy_norm is the pixel homography: compare in reference pixels.
    for i in range(200):
        hx, hy = apply_homography(px[int(t[i])], x[i].double().numpy(), y[i].double().numpy())
        got = (uv[i].double() + 1.0) * half
        assert abs(got[0].item() - hx) < 2e-3 and abs(got[1].item() - hy) < 2e-3
    plain = RNAFields(FitSettings(mapping_width=32))
    assert not plain.has_camera
    assert torch.equal(plain.camera_base(xyt), xyt[:, :2])
    assert plain.uv(xyt).abs().max() < 1.0  # the authors' tanh(MLP) keeps its range


def test_the_camera_gate_passes_what_the_prior_maps_inside_the_grown_roi() -> None:
    """`fit.camera_gate`: a pixel passes where H_t puts it in the ROI's box grown by the
    setting's share per side (+ 8 px), whatever T's residual does."""
    width, height, n = 96, 64, 3
    geo = Geometry(width, height, n)
    roi = torch.zeros(height, width)
    roi[20:40, 30:50] = 1.0  # 20 × 20 px
    region = camera_region_for(roi, 0.5)
    assert region == (12.0, 2.0, 67.0, 57.0)  # 10 px + 8 px of pad around cols 30-49, rows 20-39
    assert camera_region_for(roi, -1.0) is None
    shift = np.array([[1.0, 0, 60.0], [0, 1, 0], [0, 0, 1]])  # frame 2 sees the ROI 60 px left
    px = np.stack([np.eye(3), np.eye(3), shift])
    camera = torch.from_numpy(normalised(px, geo.half_rez))
    model = RNAFields(FitSettings(mapping_width=32), camera=camera)
    with torch.no_grad():  # a residual that drags every pixel of frame 2 back by 60 px
        model.mapping[-1].bias.copy_(torch.tensor([-60.0 / geo.half_rez, 0.0]))
    xs = torch.tensor([40.0, 40.0, 70.0, 5.0])
    ys = torch.full_like(xs, 30.0)
    for t, expected in ((0, [True, True, False, False]), (2, [False, False, False, True])):
        xyt = geo.xyt_norm(xs, ys, torch.full_like(xs, float(t)))
        gate = camera_gate(model, geo, region, xyt)
        assert gate is not None and gate.tolist() == expected, t
    # T (prior + residual) puts frame 2's x = 40 inside the ROI; the gate does not follow T.
    xyt = geo.xyt_norm(xs[:1], ys[:1], torch.full_like(xs[:1], 2.0))
    assert 30 <= float(geo.uv_to_px(model.uv(xyt)).detach()[0, 0]) <= 49
    assert camera_gate(model, geo, None, xyt) is None
    assert camera_gate(RNAFields(FitSettings(mapping_width=32)), geo, region, xyt) is None


def test_rigidity_relative_to_the_prior_does_not_penalise_the_camera() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.rand(64, 2, generator=g)
    zoom = torch.tensor([[1.6, 0.3], [-0.2, 0.7]])  # a sheared zoom the camera measured

    def mapped(q: torch.Tensor) -> torch.Tensor:
        return q @ zoom.T

    delta = 0.01
    dx, dy = p - torch.tensor([delta, 0.0]), p - torch.tensor([0.0, delta])
    uv, uv_dx, uv_dy = mapped(p), mapped(dx), mapped(dy)
    minimum = 2 * math.sqrt(2)
    alone = losses.rigidity(uv, uv_dx, uv_dy, 1 / delta)
    assert alone.min() > minimum + 0.3  # without the prior the zoom is a distortion
    relative = losses.rigidity(uv, uv_dx, uv_dy, 1 / delta, (uv, uv_dx, uv_dy))
    torch.testing.assert_close(relative, torch.full_like(relative, minimum), atol=2e-3, rtol=0)
    # A residual that stretches on top of the prior is still penalised.
    stretched = losses.rigidity(1.5 * uv, 1.5 * uv_dx, 1.5 * uv_dy, 1 / delta, (uv, uv_dx, uv_dy))
    assert stretched.min() > minimum + 0.3


class _FailingTracker:
    """A tracker whose third frame fails, as a bad frame or a cancel would."""

    def __init__(self) -> None:
        self.done: list[int] = []

    def step(self, t: int, flow: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self.done) == 2:
            raise ValueError(f"frame {t}: broken")
        self.done.append(t)
        return flow + t, valid

    def track(self) -> list[int]:
        return list(self.done)


def test_track_ahead_keeps_the_order_and_raises_the_threads_error() -> None:
    tracker = _FailingTracker()
    flow, valid = np.zeros((2, 3, 2), np.float32), np.ones((2, 3), bool)
    ahead = TrackAhead(tracker, [5, 6, 4, 3], lambda t: (flow, valid), depth=1)  # type: ignore[arg-type]
    ahead.start()
    assert ahead.get(5)[0][0, 0, 0] == 5.0
    assert ahead.get(6)[0][0, 0, 0] == 6.0
    with pytest.raises(ValueError, match="frame 4: broken"):
        ahead.get(4)
    assert ahead.close() == [5, 6]


def test_closing_the_track_ahead_waits_for_its_thread_through_a_signal() -> None:
    """A Ctrl-C landing while `TrackAhead.close` waits is raised only once the camera thread
    has stopped: a daemon thread left inside OpenCV at interpreter exit aborts the process."""

    class SlowTracker:
        def step(self, t: int, flow: object, ok: object) -> tuple[np.ndarray, np.ndarray]:
            time.sleep(0.4)
            return np.zeros((2, 2, 2), np.float32), np.zeros((2, 2), bool)

        def track(self) -> str:
            return "track"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    ahead = TrackAhead(SlowTracker(), [0, 1, 2], lambda t: (None, None), depth=1)  # type: ignore[arg-type]
    ahead.start()
    time.sleep(0.05)  # the thread is inside its first step
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(KeyboardInterrupt):
            ahead.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not any(t.name == "camera-track" for t in threading.enumerate())


def test_a_signal_inside_the_track_aheads_start_leaves_a_thread_close_stops() -> None:
    """`Thread.start` waits for the thread: a Ctrl-C landing there is raised only once the
    thread is known to run, so `close()` stops it (else it stayed inside OpenCV at exit and
    aborted the process: "FATAL: exception not rethrown"); one that lands before `start` leaves
    nothing to wait for."""

    class SlowTracker:
        def step(self, t: int, flow: object, ok: object) -> tuple[np.ndarray, np.ndarray]:
            time.sleep(0.2)
            return np.zeros((2, 2, 2), np.float32), np.zeros((2, 2), bool)

        def track(self) -> str:
            return "track"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    never = TrackAhead(SlowTracker(), [0, 1], lambda t: (None, None), depth=1)  # type: ignore[arg-type]
    assert never.close() == "track"  # not started: returns at once
    ahead = TrackAhead(SlowTracker(), [0, 1, 2], lambda t: (None, None), depth=1)  # type: ignore[arg-type]
    thread_start = ahead._thread.start

    def start_then_signal() -> None:  # the signal lands just as Thread.start returns
        thread_start()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    ahead._thread.start = start_then_signal  # type: ignore[method-assign]
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            ahead.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ahead.close() == "track"
    assert not any(t.name == "camera-track" for t in threading.enumerate())


def test_the_prior_hold_moves_only_t_and_only_beyond_the_free_band() -> None:
    """`fit.weights.prior_hold` (docs/method.md §2.4): zero inside `prior_hold_px` or where M
    is 1; beyond, linear in the excess, scaled by 1 − M, pulling T toward the prior, never M."""
    base = torch.zeros(4, 2)
    px = 100.0  # uv_norm → working px
    uv = torch.tensor([[0.05, 0.0], [0.3, 0.4], [0.3, 0.4], [0.0, 0.2]], requires_grad=True)
    m = torch.tensor([0.0, 0.0, 0.75, 1.0 - 1e-5], requires_grad=True)
    held = losses.prior_hold(uv, base, m, px, 10.0)
    # ‖r‖ = 5 px (inside the band), 50 px at M 0, 50 px at M 0.75, 20 px at M ≈ 1.
    torch.testing.assert_close(
        held.detach(), torch.tensor([0.0, 40.0, 10.0, 1e-4]), atol=1e-4, rtol=0
    )
    held.sum().backward()
    assert m.grad is None or float(m.grad.abs().max()) == 0.0
    assert uv.grad is not None and float(uv.grad[0].abs().max()) == 0.0
    # The gradient points away from the prior (descent moves T toward it), 1 − M times as hard.
    direction = uv.grad[1] / uv.grad[1].norm()
    torch.testing.assert_close(direction, torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(uv.grad[2], 0.25 * uv.grad[1])
