"""Correspondences stage (docs/architecture.md, docs/method.md §3.3–3.5).

Computes, for N frames and a reference frame r:
- adjacent flows t→t+1 and t→t−1, valid where the forward–backward cycle error is under
  `adjacent_cycle_px` and the appearance test passes;
- the flow t→r aggregated over chains t→m→r (m = t∓k, k = 1…`max_hops`, reusing the stored
  m→r result, so frames are processed outward from r) plus the direct flow beyond `max_hops`.
  Each chain is filtered (hop cycle error < `reference_cycle_px`, appearance, validity of m→r at
  the landing point) and the valid chains are averaged with a true per-pixel mean; a final
  appearance test between t and r keeps the result;
- with `flow.camera` = homography (default), a camera-motion prior (`camera.py`): per frame a
  homography onto the reference, chained and re-anchored to it, and a guided direct match
  t→r (homography plus the residual flow of the pre-aligned frame), which wins over the chains
  where it passes its cycle check: far frames get correspondences that do not drift;
- bootstrap masks: the reference ROI pulled back through t→r, AND the validity of t→r.

Flow backends behind `FlowBackend`: OpenCV DIS (default, no weights) and torchvision RAFT
(installed weights, see `runtime/weights.py`; missing weights log one line and fall back to DIS).
Everything after the flow backend stays on `ctx.device`; no flow is computed twice. The result
is cached under `ctx.work_dir`, keyed by a hash of frames, ROI, reference index, settings and
the weights used, so a rebuild with other fit settings skips this stage.

Convention: a flow is (dx, dy) in working-resolution pixels, x = column, y = row (top-down),
pixel centres at integer coordinates; F_ab(p) maps pixel p of frame a to p + F_ab(p) in b.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rna_engine.errors import InputError
from rna_engine.media.cache import atomic_path
from rna_engine.runtime import weights
from rna_engine.runtime.context import RunContext
from rna_engine.runtime.pool import ordered_map
from rna_engine.settings import FlowSettings

from .appearance import Appearance, gather, inside, make_appearance, pixel_grid, sample_px
from .camera import CameraTracker, TrackAhead, to_gray

log = logging.getLogger(__name__)

STAGE = "correspondences"
CACHE_FORMAT = 2
"""Bump when the cached content or its meaning changes."""
_RAFT_MIN_SIDE = 128
"""torchvision RAFT needs feature maps of at least 16 cells (8-pixel cells)."""
_VALID_WARP_MIN = 0.999
"""A bilinearly warped validity mask must stay at 1: every neighbour used is valid."""
_DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


@dataclass
class Correspondences:
    """The stage's output, as device tensors for the fit."""

    fwd: Tensor
    """(N, 2, H, W) float32 flow t→t+1, pixels (dx, dy); last frame zeros."""
    fwd_valid: Tensor
    """(N, H, W) bool."""
    bwd: Tensor
    """(N, 2, H, W) float32 flow t→t−1; first frame zeros."""
    bwd_valid: Tensor
    """(N, H, W) bool."""
    ref: Tensor
    """(N, 2, H, W) float32 flow t→reference frame; zeros and valid on the reference frame."""
    ref_valid: Tensor
    """(N, H, W) bool."""
    bootstrap: Tensor
    """(N, H, W) float32 in {0, 1}; the binarised ROI on the reference frame."""
    camera: Tensor | None = None
    """(N, 3, 3) float64 homographies frame-t working pixels → reference pixels
    (`camera.py`); None when `flow.camera` is off."""
    anchored: Tensor | None = None
    """(N,) bool: frame t's homography was matched to the reference frame directly (False:
    chained from its neighbours only, a low-confidence frame); None without the camera."""

    def to(self, device: torch.device | str) -> Correspondences:
        return Correspondences(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in dataclasses.fields(self)
            }
        )


# --------------------------------------------------------------------------------------------
# Flow math (pure: tensors in, tensors out)


def warp(image: Tensor, flow: Tensor, mode: str = "bilinear") -> Tensor:
    """`image` of frame b sampled at p + flow(p): brings b onto a's pixel grid.

    Args:
        image: (B, C, H, W) values in frame b.
        flow: (B, 2, H, W) flow a → b, pixels.
        mode: `bilinear` or `nearest`. Outside the image: zeros.

    Returns:
        (B, C, H, W).
    """
    _, _, height, width = flow.shape
    xy = pixel_grid(height, width, flow.device).unsqueeze(0) + flow
    return sample_px(image, xy, mode=mode)


def lands_inside(flow: Tensor) -> Tensor:
    """(B, 2, H, W) flow → (B, H, W) bool: p + flow(p) lies inside the frame."""
    _, _, height, width = flow.shape
    xy = pixel_grid(height, width, flow.device).unsqueeze(0) + flow
    return inside(xy, height, width)


def compose(flow_ab: Tensor, flow_bc: Tensor) -> Tensor:
    """Chain two flows: F_ac(p) = F_ab(p) + F_bc(p + F_ab(p)), F_bc sampled bilinearly.

    Args:
        flow_ab: (B, 2, H, W).
        flow_bc: (B, 2, H, W).

    Returns:
        (B, 2, H, W) flow a → c (meaningful where p + F_ab(p) lands inside the frame).
    """
    return flow_ab + warp(flow_bc, flow_ab)


def cycle_error(flow_ab: Tensor, flow_ba: Tensor) -> Tensor:
    """Forward–backward cycle error ‖F_ab(p) + F_ba(p + F_ab(p))‖ in pixels.

    Args:
        flow_ab: (B, 2, H, W).
        flow_ba: (B, 2, H, W).

    Returns:
        (B, H, W); +inf where p + F_ab(p) leaves the frame.
    """
    loop = compose(flow_ab, flow_ba)
    err = torch.hypot(loop[:, 0], loop[:, 1])  # vector_norm over dim 1 is slow on CPU
    return torch.where(lands_inside(flow_ab), err, torch.full_like(err, float("inf")))


def mean_of_candidates(flows: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel true mean over the valid candidates (not a recency-weighted average).

    Args:
        flows: (K, 2, H, W) candidate flows.
        valid: (K, H, W) bool.

    Returns:
        (2, H, W) mean (zeros where no candidate is valid) and (H, W) bool any-valid.
    """
    weight = valid.unsqueeze(1).to(flows.dtype)
    count = weight.sum(0)
    total = torch.where(weight > 0, flows, torch.zeros_like(flows)).sum(0)
    return total / count.clamp_min(1), count[0] > 0


def pull_back_mask(mask: Tensor, flow: Tensor, mode: str) -> Tensor:
    """A reference-frame mask pulled back to frame t through t→r: mask(p + F_tr(p)).

    Args:
        mask: (H, W) float32 {0, 1} on the reference frame.
        flow: (B, 2, H, W) flows t → r.
        mode: `nearest`, or `bilinear` (thresholded at 0.5).

    Returns:
        (B, H, W) bool, False where p + F(p) leaves the frame.
    """
    src = mask.expand(flow.shape[0], 1, *mask.shape)
    value = warp(src, flow, mode="nearest" if mode == "nearest" else "bilinear")[:, 0]
    return (value > 0.5) & lands_inside(flow)


# --------------------------------------------------------------------------------------------
# Flow backends


class FlowBackend(Protocol):
    """Dense flow for a batch of frame pairs."""

    name: str

    def __call__(self, pairs: Sequence[tuple[int, int]]) -> Tensor:
        """Flows frames[a] → frames[b] for each (a, b): (P, 2, H, W) float32 on the device."""


def stream_flows(
    backend: FlowBackend, batches: Iterable[Sequence[tuple[int, int]]]
) -> Iterator[Tensor]:
    """The flows of each batch in order; a backend with a `stream` method computes ahead."""
    stream = getattr(backend, "stream", None)
    if stream is not None:
        yield from stream(batches)
        return
    for pairs in batches:
        yield backend(pairs)


def _dis_factory(settings: FlowSettings) -> Callable[[], Any]:
    def make() -> Any:
        import cv2

        dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[settings.dis_preset])
        dis.setFinestScale(settings.dis_finest_scale)
        dis.setPatchSize(settings.dis_patch_size_px)
        dis.setPatchStride(settings.dis_patch_stride_px)
        dis.setGradientDescentIterations(settings.dis_gradient_descent_iterations)
        dis.setVariationalRefinementIterations(settings.dis_variational_iterations)
        dis.setUseMeanNormalization(True)
        dis.setUseSpatialPropagation(True)
        return dis

    return make


class DisFlow:
    """OpenCV DIS on 8-bit luma, pairs spread over a thread pool (cv2 releases the GIL).

    `stream` keeps the pool busy across batches: it submits pairs up to `lookahead` flows ahead
    of the batch being consumed, so the CPU computes flows while the device filters and chains
    earlier ones. While it is open, OpenCV's own thread pool is limited to one thread: one DIS
    per worker thread scales better than DIS's internal parallel loops, which oversubscribe the
    cores when several run at once.

    Args:
        frames: (N, 3, H, W) float32 0..1, any device.
        settings: DIS parameters.
        device: where the flows go.
        workers: threads; each owns one DIS instance.
        lookahead: flows computed ahead of the consumer (bounds host memory); default 4 × workers.
    """

    name = "dis"

    def __init__(
        self,
        frames: Tensor,
        settings: FlowSettings,
        device: str,
        workers: int,
        lookahead: int | None = None,
    ) -> None:
        import cv2

        self._gray = to_gray(frames)
        self._make = _dis_factory(settings)
        self._local = threading.local()
        self._device = device
        self._workers = max(1, workers)
        self._lookahead = max(1, lookahead if lookahead is not None else 4 * self._workers)
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._cv_threads = cv2.getNumThreads()
        if self._workers > 1:
            cv2.setNumThreads(1)

    def _one(self, pair: tuple[int, int]) -> np.ndarray:
        dis = getattr(self._local, "dis", None)
        if dis is None:
            dis = self._local.dis = self._make()
        a, b = pair
        return dis.calc(self._gray[a], self._gray[b], None)

    def _tensor(self, flows: list[np.ndarray]) -> Tensor:
        out = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2)
        return out.to(self._device, dtype=torch.float32).contiguous()

    def __call__(self, pairs: Sequence[tuple[int, int]]) -> Tensor:
        return self._tensor(list(self._pool.map(self._one, pairs)))

    def stream(self, batches: Iterable[Sequence[tuple[int, int]]]) -> Iterator[Tensor]:
        """The flows of each batch in order, computed up to `lookahead` flows ahead."""
        batches = [list(pairs) for pairs in batches]
        pairs = (pair for batch in batches for pair in batch)
        flows = ordered_map(self._pool, self._one, pairs, self._lookahead)
        try:
            for batch in batches:
                yield self._tensor([next(flows) for _ in batch])
        finally:  # the consumer stopped early (cancel, error): drop what has not started
            flows.close()

    def close(self) -> None:
        import cv2

        self._pool.shutdown(cancel_futures=True)
        cv2.setNumThreads(self._cv_threads)


class RaftFlow:
    """torchvision RAFT, batched, inputs padded (edge replicate) to a multiple of 8 and ≥ 128.

    Args:
        model: torchvision RAFT in eval mode on `frames.device`.
        frames: (N, 3, H, W) float32 0..1 on the device.
        iterations: recurrent updates per pair.
        batch_pairs: pairs per forward pass.
    """

    name = "raft"

    def __init__(self, model: Any, frames: Tensor, iterations: int, batch_pairs: int) -> None:
        self._model = model
        self._frames = frames
        self._iterations = iterations
        self._batch = batch_pairs
        _, _, height, width = frames.shape
        pad_h = max(_RAFT_MIN_SIDE, -(-height // 8) * 8) - height
        pad_w = max(_RAFT_MIN_SIDE, -(-width // 8) * 8) - width
        self._pad = (0, pad_w, 0, pad_h)

    @torch.inference_mode()
    def __call__(self, pairs: Sequence[tuple[int, int]]) -> Tensor:
        _, _, height, width = self._frames.shape
        out = []
        for start in range(0, len(pairs), self._batch):
            chunk = pairs[start : start + self._batch]
            a = gather(self._frames, [p[0] for p in chunk]) * 2 - 1  # RAFT expects [-1, 1]
            b = gather(self._frames, [p[1] for p in chunk]) * 2 - 1
            if any(self._pad):
                a = F.pad(a, self._pad, mode="replicate")
                b = F.pad(b, self._pad, mode="replicate")
            flow = self._model(a, b, num_flow_updates=self._iterations)[-1]
            out.append(flow[:, :, :height, :width].float())
        return torch.cat(out).contiguous()

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------
# The stage


def compute_correspondences(
    frames: Tensor, roi: Tensor, reference_index: int, settings: FlowSettings, ctx: RunContext
) -> Correspondences:
    """Adjacent flows, aggregated flows to the reference frame, validity and bootstrap masks.

    Args:
        frames: (N, 3, H, W) float32 in [0, 1] (working encoding).
        roi: (H, W) float32 0..1 on the reference frame (binarised at 0.5).
        reference_index: index r of the reference frame in 0…N−1.
        settings: flow settings.
        ctx: device, reporter, cancel token, work folder (None: no caching).

    Returns:
        `Correspondences` on `ctx.device`.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
    n, _, height, width = frames.shape
    if tuple(roi.shape) != (height, width):
        raise ValueError(f"roi must be ({height}, {width}), got {tuple(roi.shape)}")
    if not 0 <= reference_index < n:
        raise InputError(
            f"setting reference_frame: index {reference_index} is outside the {n} loaded frames"
        )
    raft = weights.resolve("raft") if settings.backend == "raft" else None
    dino = weights.resolve("dino") if settings.appearance == "dino" else None
    key = cache_key(frames, roi, reference_index, settings, raft, dino)
    path = ctx.work_dir / f"correspondences-{key[:20]}.pt" if ctx.work_dir else None
    if path is not None and path.exists():
        cached = _load(path, ctx.device)
        if cached is not None:
            log.info("correspondences: reusing %s", path.name)
            ctx.reporter.update(STAGE, 1.0, "cached")
            return cached

    device = ctx.device
    frames = frames.to(device, torch.float32)
    roi_ref = roi.to(device, torch.float32)
    appearance = make_appearance(settings, device, dino)
    backend: DisFlow | RaftFlow
    if raft is not None:
        model = weights.load_raft(device, record=raft)
        backend = RaftFlow(model, frames, settings.raft_iterations, settings.batch_pairs)
    else:
        backend = DisFlow(frames, settings, device, workers=max(1, torch.get_num_threads()))
    log.info(
        "correspondences: %d frames %dx%d, flow %s, appearance %s",
        n,
        width,
        height,
        backend.name,
        appearance.name,
    )
    try:
        result = correspondences_from(
            backend, appearance, frames, roi_ref, reference_index, settings, ctx
        )
    finally:
        backend.close()
    if path is not None:
        _save(path, result)
    return result


def correspondences_from(
    backend: FlowBackend,
    appearance: Appearance,
    frames: Tensor,
    roi: Tensor,
    reference_index: int,
    settings: FlowSettings,
    ctx: RunContext,
) -> Correspondences:
    """The stage with given backends, no cache (`compute_correspondences` picks the backends).

    Args:
        backend: flows for frame pairs, on `frames.device`.
        appearance: the appearance test.
        frames: (N, 3, H, W) float32 0..1 on the device.
        roi: (H, W) float32 on the device (binarised at 0.5).
        reference_index: r.
        settings: thresholds, hops, bootstrap sampling.
        ctx: reporter and cancel token.
    """
    roi_ref = (roi.to(frames.device, torch.float32) > 0.5).float()
    return _Aggregator(frames, roi_ref, reference_index, settings, ctx, backend, appearance).run()


class _Aggregator:
    """One run of the stage (state shared by its steps)."""

    def __init__(
        self,
        frames: Tensor,
        roi_ref: Tensor,
        reference_index: int,
        settings: FlowSettings,
        ctx: RunContext,
        backend: FlowBackend,
        appearance: Appearance,
    ) -> None:
        self.frames = frames
        self.roi_ref = roi_ref
        self.r = reference_index
        self.s = settings
        self.ctx = ctx
        self.backend = backend
        self.appearance = appearance
        self.n = frames.shape[0]
        self.feats = appearance.features(frames)
        self.flows_total = max(1, _count_flows(self.n, self.r, settings.max_hops))
        self.flows_done = 0

    def _next(self, flows: Iterator[Tensor], count: int) -> Tensor:
        out = next(flows)
        self.flows_done += count
        return out

    def _report(self, message: str) -> None:
        self.ctx.cancel.check()
        self.ctx.reporter.update(STAGE, self.flows_done / self.flows_total, message)

    def _similarity(self, a: Sequence[int], b: Sequence[int], flow: Tensor) -> Tensor:
        return self.appearance.similarity(gather(self.feats, a), gather(self.feats, b), flow)

    def _hop_checks(
        self, a: list[int], b: list[int], f_ab: Tensor, f_ba: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Cycle error and appearance similarity of flows a→b: (B, H, W) each."""
        return cycle_error(f_ab, f_ba), self._similarity(a, b, f_ab)

    def _adjacent_chunks(self) -> list[list[int]]:
        step = max(1, self.s.batch_pairs)
        return [list(range(a, min(a + step, self.n - 1))) for a in range(0, self.n - 1, step)]

    def _order(self) -> list[int]:
        """Frames outward from r: every frame's chain partners m are done before it."""
        return [*range(self.r + 1, self.n), *range(self.r - 1, -1, -1)]

    def _chain(self, t: int) -> tuple[list[int], list[int], bool]:
        """Intermediate frames m (one hop first), frames needing a new flow t↔m, direct flow."""
        distance = abs(t - self.r)
        toward = 1 if t < self.r else -1
        mids = [t + toward * k for k in range(1, min(self.s.max_hops, distance) + 1)]
        direct = distance > self.s.max_hops
        # The one-hop chain is the stored adjacent flow; the direct flow is one more target.
        return mids, mids[1:] + ([self.r] if direct else []), direct

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        """Every pair the stage needs, in the order `run` consumes them (nothing twice)."""
        for ts in self._adjacent_chunks():
            up = [t + 1 for t in ts]
            yield [*zip(ts, up, strict=True), *zip(up, ts, strict=True)]
        for t in self._order():
            targets = self._chain(t)[1]
            if targets:
                yield [(t, m) for m in targets] + [(m, t) for m in targets]

    def run(self) -> Correspondences:
        n, r, s = self.n, self.r, self.s
        _, _, height, width = self.frames.shape
        device = self.frames.device
        fwd = torch.zeros(n, 2, height, width, device=device)
        bwd = torch.zeros_like(fwd)
        fwd_valid = torch.zeros(n, height, width, dtype=torch.bool, device=device)
        bwd_valid = torch.zeros_like(fwd_valid)
        # Adjacent flows double as one-hop chains, filtered at the reference thresholds.
        fwd_hop = torch.zeros_like(fwd_valid)
        bwd_hop = torch.zeros_like(fwd_valid)
        self._report(f"adjacent flows 0/{n - 1}")
        flows = stream_flows(self.backend, self._batches())
        ahead: TrackAhead | None = None
        try:
            for ts in self._adjacent_chunks():
                up = [t + 1 for t in ts]
                pair_flows = self._next(flows, 2 * len(ts))
                f_ab, f_ba = pair_flows[: len(ts)], pair_flows[len(ts) :]
                err_ab, sim_ab = self._hop_checks(ts, up, f_ab, f_ba)
                err_ba, sim_ba = self._hop_checks(up, ts, f_ba, f_ab)
                fwd[ts], bwd[up] = f_ab, f_ba
                look_ab, look_ba = sim_ab > s.appearance_threshold, sim_ba > s.appearance_threshold
                fwd_valid[ts] = (err_ab < s.adjacent_cycle_px) & look_ab
                bwd_valid[up] = (err_ba < s.adjacent_cycle_px) & look_ba
                fwd_hop[ts] = (err_ab < s.reference_cycle_px) & look_ab
                bwd_hop[up] = (err_ba < s.reference_cycle_px) & look_ba
                self._report(f"adjacent flows {up[-1]}/{n - 1}")

            ref = torch.zeros_like(fwd)
            ref_valid = torch.zeros_like(fwd_valid)
            ref_valid[r] = True
            if s.camera == "homography":

                def adjacent_to_ref(t: int) -> tuple[np.ndarray, np.ndarray]:
                    flow, ok = (fwd[t], fwd_valid[t]) if t < r else (bwd[t], bwd_valid[t])
                    return flow.permute(1, 2, 0).cpu().numpy(), ok.cpu().numpy()

                tracker = CameraTracker(
                    to_gray(self.frames), self.roi_ref.cpu().numpy(), r, _dis_factory(s)
                )
                ahead = TrackAhead(tracker, self._order(), adjacent_to_ref)
                ahead.start()
            bootstrap = torch.zeros(n, height, width, device=device)
            bootstrap[r] = self.roi_ref
            for done, t in enumerate(self._order(), start=1):
                adjacent = (fwd[t], fwd_hop[t]) if t < r else (bwd[t], bwd_hop[t])
                targets = self._chain(t)[1]
                hops = self._next(flows, 2 * len(targets)) if targets else None
                guided = None
                if ahead is not None:
                    g_flow, g_ok = ahead.get(t)
                    guided = (
                        torch.from_numpy(g_flow).permute(2, 0, 1).to(device),
                        torch.from_numpy(g_ok).to(device),
                    )
                ref[t], ref_valid[t] = self._aggregate(t, adjacent, hops, ref, ref_valid, guided)
                pulled = pull_back_mask(self.roi_ref, ref[t : t + 1], s.bootstrap_sampling)[0]
                bootstrap[t] = (pulled & ref_valid[t]).float()
                self._report(f"frame {done + 1}/{n}")
        finally:
            flows.close()
            track = ahead.close() if ahead is not None else None
        self.ctx.reporter.update(STAGE, 1.0, f"frame {n}/{n}")
        camera = anchored = None
        if track is not None:
            camera = torch.from_numpy(track.homography).to(device)
            anchored = torch.from_numpy(track.anchored).to(device)
            far = np.flatnonzero(~track.anchored)
            log.info(
                "camera: %d/%d frames anchored to the reference%s",
                int(track.anchored.sum()),
                n,
                f" (chained only: {far.tolist()})" if far.size else "",
            )
        return Correspondences(
            fwd, fwd_valid, bwd, bwd_valid, ref, ref_valid, bootstrap, camera, anchored
        )

    def _aggregate(
        self,
        t: int,
        adjacent: tuple[Tensor, Tensor],
        hops: Tensor | None,
        ref: Tensor,
        ref_valid: Tensor,
        guided: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Flow t→r: true mean of the valid chains t→m→r and the direct flow (docs/method.md §3.4).

        `hops` holds the flows t→m then m→t for the targets of `_chain(t)`, None if it has none.
        `guided` (flow (2, H, W), valid (H, W)): the camera prior's direct match, used wherever
        it is valid (one short hop on pre-aligned frames: it does not drift as chains do).
        """
        s, r = self.s, self.r
        mids, targets, direct = self._chain(t)
        flows_t = [adjacent[0].unsqueeze(0)]
        ok_t = [adjacent[1].unsqueeze(0)]
        if hops is not None:
            f_tm, f_mt = hops[: len(targets)], hops[len(targets) :]
            err, sim = self._hop_checks([t] * len(targets), targets, f_tm, f_mt)
            thresholds = torch.full((len(targets), 1, 1), s.appearance_threshold, device=err.device)
            if direct:
                thresholds[-1] = s.direct_appearance_threshold
            flows_t.append(f_tm)
            ok_t.append((err < s.reference_cycle_px) & (sim > thresholds))
        f_tm = torch.cat(flows_t)
        ok = torch.cat(ok_t)
        # Chains: m = r needs no second leg; otherwise compose with the stored m→r result.
        ends = mids + ([r] if direct else [])
        chained = [i for i, m in enumerate(ends) if m != r]
        candidates = f_tm.clone()
        if chained:
            legs = f_tm[chained]
            m_idx = [ends[i] for i in chained]
            candidates[chained] = compose(legs, ref[m_idx])
            leg_valid = warp(ref_valid[m_idx].unsqueeze(1).float(), legs)[:, 0] >= _VALID_WARP_MIN
            ok[chained] &= leg_valid
        mean, any_valid = mean_of_candidates(candidates, ok)
        if guided is not None:
            g_flow, g_ok = guided
            mean = torch.where(g_ok.unsqueeze(0), g_flow, mean)
            any_valid = any_valid | g_ok
        final = self._similarity([t], [r], mean.unsqueeze(0))[0] > s.appearance_threshold
        valid = any_valid & final & lands_inside(mean.unsqueeze(0))[0]
        return mean * valid, valid


def _count_flows(n: int, r: int, max_hops: int) -> int:
    """Flows the stage computes: both directions of every adjacent pair and of every longer hop
    and direct flow of the reference chains."""
    total = 2 * max(0, n - 1)
    for t in range(n):
        d = abs(t - r)
        total += 2 * max(0, min(max_hops, d) - 1) + (2 if d > max_hops else 0)
    return total


# --------------------------------------------------------------------------------------------
# Cache


def cache_key(
    frames: Tensor,
    roi: Tensor,
    reference_index: int,
    settings: FlowSettings,
    raft: weights.ModelRecord | None,
    dino: weights.ModelRecord | None,
) -> str:
    """Hex digest of everything the result depends on (frames, ROI, settings, weights used)."""
    digest = hashlib.blake2b(digest_size=20)
    meta = {
        "format": CACHE_FORMAT,
        "shape": list(frames.shape),
        "reference_index": reference_index,
        "settings": dataclasses.asdict(settings),
        "flow": f"raft:{raft.sha256}" if raft else "dis",
        "appearance": f"dino:{dino.sha256}" if dino else "descriptor",
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for tensor in (frames, roi):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save(path: Path, result: Correspondences) -> None:
    data: dict[str, Any] = {"format": CACHE_FORMAT}
    for f in dataclasses.fields(result):
        if getattr(result, f.name) is None:
            continue
        value = getattr(result, f.name).cpu()
        data[f.name] = value.bool() if f.name == "bootstrap" else value  # {0,1}: 1 byte a pixel
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def _load(path: Path, device: str) -> Correspondences | None:
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a damaged cache file is recomputed, never fatal
        log.warning("correspondences: ignoring unreadable cache %s (%s)", path.name, err)
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    data.pop("format")
    data["bootstrap"] = data["bootstrap"].float()
    data.setdefault("camera", None)
    data.setdefault("anchored", None)
    return Correspondences(**data)
