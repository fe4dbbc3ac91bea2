"""Camera-motion prior: a homography per frame onto the reference frame, anchored to it.

docs/method.md §3.6. The RNA fit learns T from correspondences alone, and its long-range
correspondences are chains of flows that drift and thin out far from the reference frame, so T
was wrong exactly where a shot needs it most (issue #15). This module measures the camera first:

1. **Chain.** Frames are visited outward from the reference r. The adjacent flow t→n (n the
   neighbour toward r, already computed by the correspondences stage) is fitted with a RANSAC
   homography on the ROI's neighbourhood as the previous estimate places it in frame t; it
   composes with n's homography: H_t = H_n · A_{t→n}.
2. **Anchor.** Frame t is warped onto the reference frame's grid by H_t and a dense flow is
   computed between the warped frame and the reference (small residual motion, one hop, so no
   drift). A second homography fitted on that flow, inside the ROI's neighbourhood, corrects
   H_t; drift cannot accumulate while the ROI's surface is in view. When it is not (the ROI has
   left the frame, too few matches), the chained estimate carries on until it is back.
3. **Guided correspondences.** The same residual flow gives every pixel p of frame t a direct
   match to the reference: H_t(p) + D(H_t(p)), valid where the residual flow passes its forward-
   backward cycle check. The correspondences stage prefers these to its chains.

The fit uses H_t as the base of T: T(p) = H_t(p) + residual(H_t(p), t) (`fields.RNAFields`), so T
never has to learn a large pan, zoom or rotation from scratch.

Everything runs on the host with OpenCV (DIS flow, RANSAC), whatever flow backend the stage uses:
the anchoring flows are between a warped image and the reference, which the backends (frame
pairs by index) do not take. Convention: homographies map working-resolution pixels of frame t
(centres at integers) to working pixels of the reference frame.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

_MIN_POINTS = 24
"""Matches needed for a homography (RANSAC on fewer is a guess)."""
_MAX_POINTS = 6000
"""Matches a fit samples at most (evenly over the region)."""
_ADJACENT_RANSAC_PX = 1.0
_ANCHOR_RANSAC_PX = 1.5
_ANCHOR_CYCLE_PX = 1.0
"""Forward-backward cycle error under which a residual (anchoring) flow counts, pixels."""
_MIN_INLIER_SHARE = 0.3


@dataclass
class CameraTrack:
    """The prior for one shot."""

    homography: np.ndarray
    """(N, 3, 3) float64: frame-t working pixels → reference working pixels."""
    anchored: np.ndarray
    """(N,) bool: H_t was corrected by a direct match to the reference frame."""


def apply_homography(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points (x, y) through the 3×3 `h`."""
    den = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / den, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / den


def plausible(h: np.ndarray | None, width: int, height: int) -> bool:
    """A homography between neighbouring views: finite, orientation-preserving, no fold or
    blow-up over the frame (each corner moves less than a frame size; area ratio 0.25…4)."""
    if h is None or not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return False
    cx = np.array([0.0, width - 1.0, width - 1.0, 0.0])
    cy = np.array([0.0, 0.0, height - 1.0, height - 1.0])
    den = h[2, 0] * cx + h[2, 1] * cy + h[2, 2]
    if np.any(den * np.sign(h[2, 2]) <= 1e-6):
        return False
    px, py = apply_homography(h, cx, cy)
    if np.any(np.hypot(px - cx, py - cy) > max(width, height)):
        return False
    area = 0.5 * abs(np.dot(px, np.roll(py, -1)) - np.dot(py, np.roll(px, -1)))
    return 0.25 <= area / max((width - 1.0) * (height - 1.0), 1.0) <= 4.0


def roi_region(roi: np.ndarray, grow: float = 0.5, pad_px: int = 8) -> np.ndarray:
    """Corners (4, 2) of the ROI's bounding box grown by `grow` of its size per side plus pad:
    the surface the homography is fitted on (the ROI and the background around it)."""
    rows, cols = np.nonzero(roi > 0.5)
    x0, x1, y0, y1 = cols.min(), cols.max(), rows.min(), rows.max()
    gx, gy = grow * (x1 - x0 + 1) + pad_px, grow * (y1 - y0 + 1) + pad_px
    x0, x1, y0, y1 = x0 - gx, x1 + gx, y0 - gy, y1 + gy
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _polygon_mask(corners: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    mask = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(mask, np.round(corners).astype(np.int32), 1)
    return mask.astype(bool)


def _grid_points(select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Up to `_MAX_POINTS` pixel positions (x, y) of `select`, spread evenly."""
    ys, xs = np.nonzero(select)
    if xs.size > _MAX_POINTS:
        pick = np.linspace(0, xs.size - 1, _MAX_POINTS).astype(np.int64)
        xs, ys = xs[pick], ys[pick]
    return xs.astype(np.float64), ys.astype(np.float64)


def fit_flow_homography(
    flow: np.ndarray, valid: np.ndarray, region: np.ndarray, threshold_px: float
) -> np.ndarray | None:
    """RANSAC homography p → p + flow(p) over the valid pixels of `region`.

    Args:
        flow: (H, W, 2) float32 pixels (dx, dy).
        valid: (H, W) bool.
        region: (H, W) bool.
        threshold_px: RANSAC reprojection threshold.

    Returns:
        The 3×3 homography; None when too few matches or inliers.
    """
    import cv2

    xs, ys = _grid_points(valid & region)
    if xs.size < _MIN_POINTS:
        return None
    xi, yi = xs.astype(np.int64), ys.astype(np.int64)
    src = np.stack([xs, ys], 1).astype(np.float32)
    dst = src + flow[yi, xi].astype(np.float32)
    h, inl = cv2.findHomography(src, dst, cv2.RANSAC, threshold_px, maxIters=2000, confidence=0.999)
    if h is None or inl is None or int(inl.sum()) < max(_MIN_POINTS, _MIN_INLIER_SHARE * xs.size):
        return None
    return h.astype(np.float64)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(H, W, C) image at float positions (…) → (…, C), edges clamped."""
    import cv2

    return cv2.remap(
        image,
        x.astype(np.float32),
        y.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


class CameraTracker:
    """Estimates `CameraTrack` frame by frame, outward from the reference (see the module doc).

    Args:
        gray: (N, H, W) uint8 luma of the working frames.
        roi: (H, W) ROI on the reference frame.
        reference_index: r.
        make_flow: builds an object with `calc(a, b, None) → (H, W, 2)` (an OpenCV DIS).
    """

    def __init__(
        self, gray: np.ndarray, roi: np.ndarray, reference_index: int, make_flow: object
    ) -> None:
        self.gray = gray
        self.n, self.h, self.w = gray.shape
        self.r = reference_index
        self.region_ref = roi_region(roi)
        self.region_ref_mask = _polygon_mask(self.region_ref, self.w, self.h)
        self.flow = make_flow() if callable(make_flow) else make_flow
        self.homography = np.tile(np.eye(3), (self.n, 1, 1))
        self.anchored = np.zeros(self.n, bool)
        self.anchored[self.r] = True
        ys, xs = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self._xs, self._ys = xs, ys

    def region_in(self, h_to_ref: np.ndarray) -> np.ndarray:
        """The ROI neighbourhood as seen in a frame whose homography to r is `h_to_ref`."""
        try:
            inv = np.linalg.inv(h_to_ref)
        except np.linalg.LinAlgError:
            return np.ones((self.h, self.w), bool)
        x, y = apply_homography(inv, self.region_ref[:, 0], self.region_ref[:, 1])
        return _polygon_mask(np.stack([x, y], 1), self.w, self.h)

    def step(
        self, t: int, flow_to_neighbour: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track frame t (its neighbour toward r already tracked): chain, then anchor.

        Args:
            flow_to_neighbour: (H, W, 2) flow t → n, pixels.
            valid: (H, W) bool validity of that flow.

        Returns:
            The guided flow t → r (H, W, 2) float32 and its validity (H, W) bool.
        """
        n = t + 1 if t < self.r else t - 1
        h_n = self.homography[n]
        region = self.region_in(h_n)
        a = fit_flow_homography(flow_to_neighbour, valid, region, _ADJACENT_RANSAC_PX)
        if a is None or not plausible(a, self.w, self.h):
            a = fit_flow_homography(
                flow_to_neighbour, valid, np.ones_like(region), _ADJACENT_RANSAC_PX
            )
        if a is None or not plausible(a, self.w, self.h):
            a = np.eye(3)
        h_t = h_n @ a
        h_t /= h_t[2, 2]
        guided, guided_ok, correction = self._anchor(t, h_t)
        if correction is not None:
            h_t = correction @ h_t
            h_t /= h_t[2, 2]
            self.anchored[t] = True
        self.homography[t] = h_t
        return guided, guided_ok

    def _anchor(self, t: int, h_t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Residual flow between frame t warped by h_t and the reference; its correction."""
        import cv2

        warped = cv2.warpPerspective(
            self.gray[t], h_t, (self.w, self.h), flags=cv2.INTER_LINEAR, borderValue=0
        )
        covered = cv2.warpPerspective(
            np.ones((self.h, self.w), np.uint8),
            h_t,
            (self.w, self.h),
            flags=cv2.INTER_NEAREST,
            borderValue=0,
        )
        covered = cv2.erode(covered, np.ones((5, 5), np.uint8)).astype(bool)
        ref = self.gray[self.r]
        d = self.flow.calc(warped, ref, None)  # reference grid q → q + d(q) in r
        back = self.flow.calc(ref, warped, None)
        loop = d + _bilinear(back, self._xs + d[..., 0], self._ys + d[..., 1])
        landed_x, landed_y = self._xs + d[..., 0], self._ys + d[..., 1]
        inside = (landed_x >= 0) & (landed_x <= self.w - 1) & (landed_y >= 0)
        inside &= landed_y <= self.h - 1
        ok = covered & inside & (np.hypot(loop[..., 0], loop[..., 1]) < _ANCHOR_CYCLE_PX)
        correction = fit_flow_homography(d, ok, self.region_ref_mask, _ANCHOR_RANSAC_PX)
        if correction is not None and not plausible(correction, self.w, self.h):
            correction = None
        # Guided match of every pixel p of frame t: q = h_t(p), then q + d(q).
        qx, qy = apply_homography(h_t, self._xs.astype(np.float64), self._ys.astype(np.float64))
        inside_q = (qx >= 0) & (qx <= self.w - 1) & (qy >= 0) & (qy <= self.h - 1)
        dq = _bilinear(d, qx, qy)
        okq = _bilinear(ok.astype(np.float32)[..., None], qx, qy)
        okq = okq[..., 0] if okq.ndim == 3 else okq
        guided = np.stack([qx + dq[..., 0] - self._xs, qy + dq[..., 1] - self._ys], -1)
        guided_ok = inside_q & (okq >= 0.999)
        return guided.astype(np.float32), guided_ok, correction

    def track(self) -> CameraTrack:
        """The homographies gathered so far (after every frame has had its `step`)."""
        return CameraTrack(self.homography.copy(), self.anchored.copy())


class TrackAhead:
    """Runs a `CameraTracker` over `order` in a background thread, ahead of its consumer.

    The tracker needs only the adjacent flows, so it does not wait for the correspondences
    stage's chains: both run at once (OpenCV releases the GIL), the host-side anchoring flows
    off the stage's critical path. `get(t)` returns `step(t)`'s result in `order`'s order;
    an error in the thread is raised there. Bind it first, then `start()` it, and always
    `close()` it (also on error or cancel): `Thread.start` waits for the thread, so a signal can
    land inside it, and a thread its caller never got hold of cannot be stopped.

    Args:
        tracker: the tracker.
        order: frame indices, each after its neighbour toward the reference.
        inputs: t → (flow t→neighbour (H, W, 2), valid (H, W)) on the host.
        depth: results computed ahead at most.
    """

    def __init__(
        self,
        tracker: CameraTracker,
        order: Sequence[int],
        inputs: Callable[[int], tuple[np.ndarray, np.ndarray]],
        depth: int = 4,
    ) -> None:
        self.tracker = tracker
        self._results: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(list(order), inputs), name="camera-track", daemon=True
        )
        self._launched = False

    def start(self) -> None:
        """Start the thread with SIGINT and SIGTERM held, so a signal raises only once it runs
        and `close()` knows whether there is a thread to wait for."""
        held = (signal.SIGINT, signal.SIGTERM)
        can_hold = hasattr(signal, "pthread_sigmask")
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if can_hold else None
        try:
            self._thread.start()
            self._launched = True
        finally:
            if previous is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _put(self, item: tuple[int, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, order: list[int], inputs: Callable) -> None:
        try:
            for t in order:
                if self._stop.is_set() or not self._put((t, self.tracker.step(t, *inputs(t)))):
                    return
        except BaseException as exc:  # handed to the consumer, raised in `get`
            self._put((-1, exc))
        finally:
            self._finished.set()

    def get(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The guided flow t → r and its validity (`CameraTracker.step`)."""
        got, value = self._results.get()
        if isinstance(value, BaseException):
            raise value
        if got != t:
            raise RuntimeError(f"camera track: frame {got} came when {t} was asked for")
        return value  # type: ignore[return-value]

    def close(self) -> CameraTrack:
        """Stop the thread (if still running), wait for it and return the track so far.

        A signal (`Interrupted`) that lands during the wait is held until the thread is gone,
        then raised: a daemon thread still inside OpenCV while the interpreter shuts down can
        abort the process (SIGABRT) instead of the build ending `cancelled`."""
        self._stop.set()
        if not self._launched:  # a signal came before `start` did: there is no thread
            return self.tracker.track()
        held: BaseException | None = None
        while True:  # not Thread.join: interrupted, it can report a running thread stopped
            try:
                while not self._finished.wait(timeout=0.1):
                    pass
                break
            except BaseException as exc:  # re-raised once the thread is gone
                held = held or exc
        self._thread.join()
        if held is not None:
            raise held
        return self.tracker.track()


def to_gray(frames: Tensor) -> np.ndarray:
    """(N, 3, H, W) float 0..1 → (N, H, W) uint8 Rec.709 luma, on the host."""
    luma = torch.tensor((0.2126, 0.7152, 0.0722), device=frames.device).view(1, 3, 1, 1)
    gray = (frames * luma).sum(1).clamp(0, 1) * 255 + 0.5
    return gray.to(torch.uint8).cpu().numpy()


def normalised(homography: np.ndarray, half_rez: float) -> np.ndarray:
    """Homographies on working pixels → the same maps on xy_norm (x/half_rez − 1)."""
    s = np.array([[1 / half_rez, 0, -1], [0, 1 / half_rez, -1], [0, 0, 1]], np.float64)
    s_inv = np.linalg.inv(s)
    return s @ homography @ s_inv
