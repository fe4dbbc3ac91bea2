"""Fitting the RNA fields: identity pre-training, joint atlas estimation, mask refinement.

docs/method.md §2, §4, §5, with the performance design of its §8.1: frames, flows and masks live on
the device; sampling happens there, stratified so every step has reference-frame and ROI
samples; one concatenated batch goes through T per step; matches are computed once; losses are
read back only every `log_every` steps (the loop never waits for the host otherwise).
Checkpoints go to `work/` every `checkpoint_every` steps; a rerun resumes from the last one.
Fixes of the authors' bugs (docs/method.md §8.2): position loss on the ROI (configurable), no checkpoint
selection on one easy frame, correct splatting for the candidate set, seeds everywhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rna_engine.errors import FitDiverged, InputError
from rna_engine.media.cache import atomic_path
from rna_engine.model import losses
from rna_engine.model.fields import RNAFields, capped_levels
from rna_engine.runtime.context import RunContext
from rna_engine.settings import FitSettings, RefineSettings

from . import evidence
from .camera import normalised, roi_region
from .correspondences import Correspondences
from .inputs import roi_fault

log = logging.getLogger(__name__)

REFERENCE_FRAMES = 70
"""Shot length the presets' step counts are tuned for (`FitSettings.scale_with_shot`)."""


@dataclass
class ShotTensors:
    """The shot at working resolution, on the fit's device."""

    frames: Tensor
    """(N, 3, H, W) float32 working-encoded colour in [0, 1]."""
    roi: Tensor
    """(H, W) float32 {0, 1}: ROI on the reference frame."""
    reference_index: int
    corr: Correspondences

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[2])

    @property
    def width(self) -> int:
        return int(self.frames.shape[3])


@dataclass(frozen=True)
class Geometry:
    """Coordinate normalisation of docs/method.md §1.2 for one shot."""

    width: int
    height: int
    n_frames: int

    @property
    def rez(self) -> int:
        return max(self.width, self.height)

    @property
    def half_rez(self) -> float:
        return self.rez / 2.0

    def xyt_norm(self, x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        """Working pixels (x column, y row, centres at integers) and frame index → (B, 3)."""
        h = self.half_rez
        return torch.stack([x / h - 1.0, y / h - 1.0, t / (self.n_frames / 2.0) - 1.0], -1)

    def t_norm(self, t: Tensor) -> Tensor:
        return t / (self.n_frames / 2.0) - 1.0

    def xy_extent(self) -> tuple[float, float]:
        """Largest xy_norm of the frame, per axis."""
        h = self.half_rez
        return ((self.width - 1) / h - 1.0, (self.height - 1) / h - 1.0)

    def uv_to_px(self, uv: Tensor) -> Tensor:
        """uv_norm → working-resolution pixel position of the reference frame (atlas raster)."""
        return (uv + 1.0) * self.half_rez


@dataclass
class FitResult:
    """The fitted fields and what the later stages need."""

    model: RNAFields
    geometry: Geometry
    reference_index: int
    atlas_box: tuple[float, float, float, float]
    history: list[dict[str, float]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    steps_per_s: dict[str, float] = field(default_factory=dict)
    evidence: list[dict[str, float | None]] = field(default_factory=list)
    """Per frame index, at the start of the refinement (`Fitter.refine`): the share of the
    candidate set Ω with M > 0.5 after the joint fit (`mask_joint`), evidenced as an occluder
    (`occluder_evidence`), of those by the reference landing alone (`occluder_landing`),
    tied to the surface by a match (`surface_tied`) and not pulled toward visible because
    nothing ties or explains them (`surface_unsure`); None where Ω is empty; and the share of
    the ROI's pull-back through T that the camera gate dropped (`camera_gated`, None where T
    lands nothing in the ROI). Kept in the checkpoint; empty when the refinement is off."""
    camera_region: tuple[float, float, float, float] | None = None
    """(x0, y0, x1, y1) reference working pixels: the camera gate (`camera_gate`,
    `refine.camera_gate`); None: no gate."""


def camera_gate(
    model: RNAFields,
    geometry: Geometry,
    region: tuple[float, float, float, float] | None,
    xyt_norm: Tensor,
) -> Tensor | None:
    """(P,) bool: the camera prior H_t maps each (x, y, t) inside `region` (reference working
    pixels); None without a prior or a region (everything passes). The ROI's surface can only
    be where the camera puts it: where T lands a pixel in the ROI far from there, T has lost
    the surface (`refine.camera_gate`)."""
    if region is None or not model.has_camera:
        return None
    px = geometry.uv_to_px(model.camera_base(xyt_norm))
    x0, y0, x1, y1 = region
    return (px[:, 0] >= x0) & (px[:, 0] <= x1) & (px[:, 1] >= y0) & (px[:, 1] <= y1)


def camera_region_for(roi: Tensor, grow: float) -> tuple[float, float, float, float] | None:
    """The gate's box: the ROI's bounding box grown by `grow` of its size per side + 8 px
    (`camera.roi_region`, the region the prior is fitted on); None when `grow` < 0."""
    if grow < 0:
        return None
    corners = roi_region(roi.detach().cpu().numpy(), grow)
    x0, y0 = corners.min(0).tolist()
    x1, y1 = corners.max(0).tolist()
    return (x0, y0, x1, y1)


def atlas_box_for(roi: Tensor, geometry: Geometry, margin: float = 0.25) -> tuple[float, ...]:
    """uv_norm box around the ROI (with a relative margin) that the atlas grid spans."""
    rows, cols = torch.nonzero(roi > 0.5, as_tuple=True)
    h = geometry.half_rez
    x0, x1 = cols.min().item(), cols.max().item()
    y0, y1 = rows.min().item(), rows.max().item()
    pad_x = margin * (x1 - x0 + 1) + 4
    pad_y = margin * (y1 - y0 + 1) + 4
    side = max(x1 - x0 + 1 + 2 * pad_x, y1 - y0 + 1 + 2 * pad_y)  # square: isotropic cells
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (
        (cx - side / 2) / h - 1.0,
        (cy - side / 2) / h - 1.0,
        (cx + side / 2) / h - 1.0,
        (cy + side / 2) / h - 1.0,
    )


def scaled_steps(steps: int, n_frames: int, enabled: bool) -> int:
    """Step count scaled with shot length (clamped to ¼…2× of the preset's)."""
    if not enabled:
        return steps
    return max(1, int(round(steps * min(2.0, max(0.25, n_frames / REFERENCE_FRAMES)))))


class Sampler:
    """Stratified pixel sampling on the device: reference frame, ROI neighbourhood, everything."""

    def __init__(
        self,
        shot: ShotTensors,
        settings: FitSettings,
        generator: torch.Generator | None,
        batch: int,
    ) -> None:
        n, h, w = shot.n_frames, shot.height, shot.width
        self.n, self.h, self.w = n, h, w
        self.generator = generator
        self.n_ref = int(batch * settings.reference_fraction)
        self.n_roi = int(batch * settings.roi_fraction)
        self.n_all = batch - self.n_ref - self.n_roi
        # ROI neighbourhood: per frame, the bounding box of the bootstrap mask plus a margin.
        # A box, not the mask itself: occluded ROI pixels are holes in the bootstrap mask, and
        # they are exactly where M must learn 0, so they need samples too.
        boot = shot.corr.bootstrap > 0.5
        margin = settings.roi_margin_px
        near = torch.zeros_like(boot)
        rows_any, cols_any = boot.any(2), boot.any(1)
        for t in range(n):
            rows = torch.nonzero(rows_any[t]).flatten()
            cols = torch.nonzero(cols_any[t]).flatten()
            if rows.numel():
                r0, r1 = max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + margin + 1)
                c0, c1 = max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + margin + 1)
                near[t, r0:r1, c0:c1] = True
        idx = torch.nonzero(near.reshape(-1), as_tuple=True)[0]
        if idx.numel() == 0:
            idx = torch.arange(n * h * w, device=boot.device)
        self.roi_index = idx
        self.reference_index = shot.reference_index
        self.device = boot.device

    def sample(self) -> Tensor:
        """(B,) flat pixel indices into (N, H, W)."""
        g, dev = self.generator, self.device
        hw = self.h * self.w
        parts = [torch.randint(0, self.n * hw, (self.n_all,), generator=g, device=dev)]
        if self.n_ref:
            parts.append(
                self.reference_index * hw
                + torch.randint(0, hw, (self.n_ref,), generator=g, device=dev)
            )
        if self.n_roi:
            pick = torch.randint(0, self.roi_index.numel(), (self.n_roi,), generator=g, device=dev)
            parts.append(self.roi_index[pick])
        return torch.cat(parts)


def measured_offsets(shot: ShotTensors, samples: int = 20_000) -> Tensor:
    """(N, 3) per frame the median working-encoded colour difference between frame t and the
    reference at t's valid reference matches on the bootstrap ROI (0 where it has none): the
    starting offset of the frame grade (an exposure change is an offset in the log encoding)."""
    corr, frames = shot.corr, shot.frames
    out = torch.zeros(shot.n_frames, 3)
    w, h = shot.width, shot.height
    for t in range(shot.n_frames):
        ok = (corr.ref_valid[t] & (corr.bootstrap[t] > 0.5)).reshape(-1).nonzero()[:, 0]
        if ok.numel() < 64 or t == shot.reference_index:
            continue
        ok = ok[torch.linspace(0, ok.numel() - 1, min(samples, ok.numel())).long().to(ok.device)]
        y, x = ok // w, ok % w
        rx = (x + corr.ref[t, 0, y, x]).round().long().clamp(0, w - 1)
        ry = (y + corr.ref[t, 1, y, x]).round().long().clamp(0, h - 1)
        diff = frames[t][:, y, x] - frames[shot.reference_index][:, ry, rx]
        out[t] = diff.median(1).values.float().cpu()
    return out


def _gather(image: Tensor, t: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """image (N, C, H, W) at integer (t, y, x) → (B, C)."""
    return image[t, :, y, x]


def _sample_bilinear(image: Tensor, t: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """image (N, H, W) at real (x, y) of frames t, edges clamped → (B,)."""
    n, h, w = image.shape
    x = x.clamp(0, w - 1)
    y = y.clamp(0, h - 1)
    x0 = x.floor().long().clamp(0, w - 2) if w > 1 else x.floor().long()
    y0 = y.floor().long().clamp(0, h - 2) if h > 1 else y.floor().long()
    fx, fy = x - x0, y - y0
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    return (image[t, y0, x0] * (1 - fx) + image[t, y0, x1] * fx) * (1 - fy) + (
        image[t, y1, x0] * (1 - fx) + image[t, y1, x1] * fx
    ) * fy


class Fitter:
    """Runs the three fit stages on one shot (docs/method.md §4, §5)."""

    def __init__(
        self,
        shot: ShotTensors,
        fit: FitSettings,
        refine: RefineSettings,
        ctx: RunContext,
        grid_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.shot = shot
        self.fit = fit
        self.refine_settings = refine
        self.ctx = ctx
        self.device = torch.device(ctx.device)
        self.geometry = Geometry(shot.width, shot.height, shot.n_frames)
        self.atlas_box = atlas_box_for(shot.roi, self.geometry)
        torch.manual_seed(ctx.seed)
        camera = None
        if fit.camera_prior and shot.corr.camera is not None:
            camera = torch.from_numpy(
                normalised(shot.corr.camera.cpu().double().numpy(), self.geometry.half_rez)
            )
        grade = (shot.n_frames, shot.reference_index) if fit.frame_grade else None
        self.model = RNAFields(
            fit,
            self.atlas_box,
            self.geometry.xy_extent(),
            grid_factory,
            camera=camera,
            frame_grade=grade,
            atlas_grid=capped_levels(
                fit.hash_grid,
                fit.atlas_cells_per_px
                * (self.atlas_box[2] - self.atlas_box[0])
                * self.geometry.half_rez,
            ),
        )
        if grade is not None:
            with torch.no_grad():
                self.model.offset.copy_(measured_offsets(shot))
        self.model.to(self.device)
        self.camera_region = (
            camera_region_for(shot.roi, refine.camera_gate) if camera is not None else None
        )
        self.use_graph = self._graph_capture(fit)
        # A captured graph draws from the default CUDA generator (graph-safe); elsewhere a
        # private seeded generator keeps CPU runs deterministic and resumable.
        self.generator: torch.Generator | None = None
        if not self.use_graph:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(ctx.seed)
        self.history: list[dict[str, float]] = []
        self.timings_s: dict[str, float] = {}
        self.steps_per_s: dict[str, float] = {}
        self.evidence: list[dict[str, float | None]] = []
        self.gate_counts: Tensor | None = None
        n = shot.n_frames
        self.pretrain_steps = scaled_steps(fit.pretrain_steps, n, fit.scale_with_shot)
        self.iterations = scaled_steps(fit.iterations, n, fit.scale_with_shot)
        self.refine_steps = scaled_steps(refine.iterations, n, fit.scale_with_shot)
        self.ckpt_path = ctx.work_dir / "fit.ckpt" if ctx.work_dir else None

    def _graph_capture(self, fit: FitSettings) -> bool:
        """Whether the steps run as a captured CUDA graph (`fit.compile`, the grids' backend)."""
        if self.device.type != "cuda" or fit.compile == "off":
            return False
        unsafe = sorted(
            {type(m).__name__ for m in self.model.modules() if not getattr(m, "graph_safe", True)}
        )
        if not unsafe:
            return True
        if fit.compile == "graph":
            raise InputError(
                f"setting fit.compile: 'graph' cannot capture the {', '.join(unsafe)} hash grid "
                "(its backward is not capture-safe); use fit.encoding_backend 'triton' or fit.compile "
                "'auto'"
            )
        log.info("fit: %s cannot be captured as a CUDA graph; steps run eagerly", ", ".join(unsafe))
        return False

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def _save(self, stage: str, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        if self.ckpt_path is None:
            return
        state = {
            "stage": stage,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "generator": self.generator.get_state()
            if self.generator is not None
            else torch.cuda.get_rng_state(self.device),
            "history": self.history,
            "timings_s": self.timings_s,
            "evidence": self.evidence,
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)

    def _load(self) -> dict[str, Any] | None:
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return None
        try:
            state = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        except Exception as err:  # a damaged checkpoint: start over rather than fail
            log.warning("ignoring unreadable checkpoint %s (%s)", self.ckpt_path, err)
            return None
        # Checked before loading: `load_state_dict` copies the matching tensors before it
        # raises on the others, which would leave a half-loaded model.
        mine = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        saved = state.get("model") if isinstance(state, dict) else None
        theirs = {k: tuple(v.shape) for k, v in saved.items()} if isinstance(saved, dict) else {}
        if mine != theirs:  # another engine's model layout, or another shot's
            differ = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
            log.warning(
                "ignoring checkpoint %s of another model layout (%s)",
                self.ckpt_path,
                ", ".join(differ[:4]),
            )
            return None
        self.model.load_state_dict(state["model"])
        try:
            if self.generator is not None:
                self.generator.set_state(state["generator"].cpu())
            else:
                torch.cuda.set_rng_state(state["generator"].cpu(), self.device)
        except (RuntimeError, KeyError):  # saved on another kind of device: keep our seed
            log.info("checkpoint %s: random state of another device, reseeded", self.ckpt_path)
        self.history = list(state.get("history", []))
        self.timings_s = dict(state.get("timings_s", {}))
        self.evidence = list(state.get("evidence", []))
        log.info("resuming fit from %s step %d", state["stage"], state["step"])
        return state

    # --------------------------------------------------------------------------------------
    def _optimizer(
        self, params_hash: list[Tensor], params_mlp: list[Tensor], lr_hash: float, lr_mlp: float
    ) -> torch.optim.Adam:
        groups = [
            {"params": params_hash, "lr": lr_hash, "eps": 1e-15},
            {"params": params_mlp, "lr": lr_mlp, "eps": 1e-8},
        ]
        groups = [g for g in groups if g["params"]]
        if self.use_graph:
            # A captured step reads the learning rate from device tensors updated in place.
            for g in groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=self.device)
            return torch.optim.Adam(groups, betas=(0.9, 0.99), capturable=True, foreach=True)
        return torch.optim.Adam(groups, betas=(0.9, 0.99))

    def _set_lr(
        self, optimizer: torch.optim.Optimizer, base: list[float], step: int, total: int
    ) -> None:
        # Cosine decay from 1 to lr_decay: larger early steps, quiet convergence at the end.
        frac = min(1.0, step / max(total, 1))
        factor = self.fit.lr_decay + (1 - self.fit.lr_decay) * 0.5 * (1 + math.cos(math.pi * frac))
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr * factor)
            else:
                group["lr"] = lr * factor

    def _check_finite(self, value: Tensor, stage: str, step: int) -> float:
        v = float(value.detach())
        if not math.isfinite(v):
            raise FitDiverged(
                f"{stage}: loss became {v} at step {step}; lower the learning rates "
                "or check the plate for NaN/Inf pixels"
            )
        return v

    def _report(
        self,
        stage: str,
        step: int,
        total: int,
        fraction: float | None = None,
        phase: str = "",
        **metrics: float,
    ) -> None:
        """Report `step` of `total`; `fraction` of `stage` (default step/total) when a stage
        spans phases (pretrain then joint fit), whose name then leads the message."""
        self.ctx.cancel.check()
        done = step / max(total, 1) if fraction is None else fraction
        text = f"{phase} step {step}/{total}" if phase else f"step {step}/{total}"
        self.ctx.reporter.update(stage, done, text, **metrics)

    def _steps(
        self,
        stage: str,
        start: int,
        total: int,
        opt: torch.optim.Optimizer,
        base: list[float],
        loss_fn: Callable[[int], tuple[Tensor, dict[str, Tensor]]],
        on_log: Callable[[int, float, dict[str, Tensor]], None],
    ) -> None:
        """Run steps `start..total` of one stage: eager, or replaying one captured CUDA graph.

        `loss_fn(step)` samples a batch on the device and returns the loss and its terms; it
        may read per-step device tensors the caller updates in place (never Python values that
        change between steps, which a graph would freeze). Losses are read back only every
        `log_every` steps; checkpoints every `checkpoint_every`.
        """
        graph: torch.cuda.CUDAGraph | None = None
        static: tuple[Tensor, dict[str, Tensor]] | None = None
        step = start
        if self.use_graph and total - start > 8:
            # Warm-up on a side stream is what CUDA graph capture requires; the gradient
            # accumulators it creates then sit on that stream, and PyTorch warns about the
            # (intended, harmless) stream mismatch on every capture.
            quiet = getattr(
                torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None
            )
            if quiet is not None:
                quiet(False)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up steps (real ones): kernels compiled, state built
                    self._set_lr(opt, base, step, total)
                    opt.zero_grad(set_to_none=True)
                    loss, _ = loss_fn(step)
                    loss.backward()
                    opt.step()
                    step += 1
                # The last warm-up graph holds the parameters' gradient accumulators, made on
                # the side stream; alive during the capture they trip PyTorch's stream-mismatch
                # warning for AccumulateGrad.
                del loss
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                static = loss_fn(step)
                static[0].backward()
                opt.step()
        while step < total:
            self._set_lr(opt, base, step, total)
            if graph is not None and static is not None:
                self._before_step(step)
                graph.replay()
                loss, terms = static
            else:
                self._before_step(step)
                loss, terms = loss_fn(step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step += 1
            if step % self.fit.log_every == 0 or step == total:
                on_log(step, self._check_finite(loss, stage, step), terms)
            if self.ckpt_path and step % self.fit.checkpoint_every == 0 and step < total:
                self._save(stage, step, opt)
        if graph is not None:
            # The graph's private memory pool stays reserved until it is returned: without
            # this, the refinement's graph was captured beside the joint fit's dead pool
            # (0.9 GB more device memory at 768×432×70).
            del graph, static, loss, terms
            opt.zero_grad(set_to_none=True)  # the gradients live in that pool too
            torch.cuda.empty_cache()

    def _before_step(self, step: int) -> None:
        """Per-step updates of device tensors a captured step reads (set by the stages)."""
        hook = getattr(self, "_step_hook", None)
        if hook is not None:
            hook(step)

    # --------------------------------------------------------------------------------------
    # Stage 1: identity pre-training of T

    def pretrain(self, start: int = 0) -> None:
        """Fit T(x, y, t) ≈ (x̃, ỹ) for every frame (docs/method.md §4)."""
        total = self.pretrain_steps
        if start >= total:
            return
        geo, shot = self.geometry, self.shot
        opt = self._optimizer([], self.model.mapping_parameters(), 0.0, self.fit.lr_mlp)
        if start and self._pending_opt is not None:
            opt.load_state_dict(self._pending_opt)
        batch = min(self.fit.batch_size, 65_536)
        base = [
            g["lr"] if not isinstance(g["lr"], Tensor) else float(g["lr"]) for g in opt.param_groups
        ]
        self._step_hook = None

        def loss_fn(step: int) -> tuple[Tensor, dict[str, Tensor]]:
            g = self.generator
            x = torch.rand(batch, generator=g, device=self.device) * (shot.width - 1)
            y = torch.rand(batch, generator=g, device=self.device) * (shot.height - 1)
            t = torch.randint(0, shot.n_frames, (batch,), generator=g, device=self.device).float()
            xyt = geo.xyt_norm(x, y, t)
            target = self.model.camera_base(xyt)
            return ((self.model.uv(xyt) - target) ** 2).sum(1).mean(), {}

        def on_log(step: int, loss: float, terms: dict[str, Tensor]) -> None:
            self._report(
                "fit", step, total, fraction=0.05 * step / total, phase="pretrain", loss=loss
            )

        t0 = time.perf_counter()
        self._steps("pretrain", start, total, opt, base, loss_fn, on_log)
        self.timings_s["pretrain"] = self.timings_s.get("pretrain", 0) + time.perf_counter() - t0
        self._save("fit", 0, None)

    # --------------------------------------------------------------------------------------
    # Stage 2: joint atlas estimation

    def _joint_losses(self, index: Tensor, boot_on: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """All losses of docs/method.md §2 on one batch of flat pixel indices."""
        shot, geo, model, w = self.shot, self.geometry, self.model, self.fit.weights
        corr = shot.corr
        hw = shot.height * shot.width
        t = index // hw
        rem = index - t * hw
        y = rem // shot.width
        x = rem - y * shot.width
        tf, yf, xf = t.float(), y.float(), x.float()
        b = index.numel()
        colour = _gather(shot.frames, t, y, x)  # (B, 3)
        fwd = corr.fwd[t, :, y, x].float()
        bwd = corr.bwd[t, :, y, x].float()
        ref = corr.ref[t, :, y, x].float()
        fwd_ok = corr.fwd_valid[t, y, x].float()
        bwd_ok = corr.bwd_valid[t, y, x].float()
        ref_ok = corr.ref_valid[t, y, x].float()
        r = float(shot.reference_index)
        is_ref = (t == shot.reference_index).float()
        delta = self.fit.rigidity_delta_px
        # One concatenated batch through T: p, fwd match, bwd match, ref match, p−δx, p−δy.
        xs = torch.cat([xf, xf + fwd[:, 0], xf + bwd[:, 0], xf + ref[:, 0], xf - delta, xf])
        ys = torch.cat([yf, yf + fwd[:, 1], yf + bwd[:, 1], yf + ref[:, 1], yf, yf - delta])
        ts = torch.cat([tf, tf + 1, tf - 1, torch.full_like(tf, r), tf, tf])
        xyt = geo.xyt_norm(xs, ys, ts)
        uv_all = model.uv(xyt)
        uv_p, uv_f, uv_b, uv_r, uv_dx, uv_dy = uv_all.split(b)
        base = self._rigidity_base(xyt, b)
        m_all = model.mask(xyt[: 4 * b])
        m_p, m_f, m_b, m_r = m_all.split(b)
        atlas = model.atlas(uv_p)
        shade = model.shade(uv_p.detach(), xyt[:b, 2])
        px = geo.half_rez
        shaded = model.shaded(shade, atlas, xyt[:b, 2])
        # A reference match ties p to the surface only where it lands in the ROI (B_t, §3.5),
        # as in the refinement's sets (§5.2).
        ref_in = corr.bootstrap[t, y, x].float() * (1 - is_ref)
        m_rgb = self._guarded_mask(
            m_p, shaded, colour, (uv_p, uv_f, uv_b), (fwd_ok, bwd_ok, ref_ok * (1 - is_ref)), ref_in
        )
        boot_set = torch.maximum(ref_ok, is_ref) if self.fit.bootstrap_matched_only else None
        boot_bce = losses.bce(m_p, corr.bootstrap[t, y, x].float())
        terms = {
            "rgb": w.rgb * losses.reconstruction(m_rgb, shaded, colour),
            "bootstrap": w.bootstrap
            * boot_on
            * (boot_bce.mean() if boot_set is None else losses.masked_mean(boot_bce, boot_set)),
            "ref_mask": w.ref_mask * losses.masked_mean(losses.bce(m_p, shot.roi[y, x]), is_ref),
            "ref_flow_alpha": w.ref_flow_alpha
            * losses.masked_mean((m_p - m_r).abs(), ref_ok * (1 - is_ref)),
            "flow_alpha": w.flow_alpha
            * 0.5
            * (
                losses.masked_mean((m_p - m_f).abs(), fwd_ok)
                + losses.masked_mean((m_p - m_b).abs(), bwd_ok)
            ),
            "ref_optical_flow": w.ref_optical_flow
            * losses.masked_mean(losses.correspondence(uv_p, uv_r, m_p, px), ref_ok * (1 - is_ref)),
            "optical_flow": w.optical_flow
            * 0.5
            * (
                losses.masked_mean(losses.correspondence(uv_p, uv_f, m_p, px), fwd_ok)
                + losses.masked_mean(losses.correspondence(uv_p, uv_b, m_p, px), bwd_ok)
            ),
            "rigidity": w.rigidity * losses.rigidity(uv_p, uv_dx, uv_dy, px / delta, base).mean(),
            "residual_reg": w.residual_reg * losses.illumination(shade).mean(),
        }
        if base is not None and w.prior_hold > 0:
            terms["prior_hold"] = (
                w.prior_hold
                * losses.prior_hold(uv_p, base[0], m_p, px, self.fit.prior_hold_px).mean()
            )
        pos_set = is_ref * (shot.roi[y, x] if self.fit.position_set == "roi" else 1.0)
        terms["position"] = w.position * losses.masked_mean(
            losses.position(uv_p, xyt[:b, :2]), pos_set
        )
        total = torch.stack(list(terms.values())).sum()
        return total, terms

    def _guarded_mask(
        self,
        m_p: Tensor,
        shaded: Tensor,
        colour: Tensor,
        uvs: tuple[Tensor, Tensor, Tensor],
        valid: tuple[Tensor, Tensor, Tensor],
        ref_in: Tensor,
    ) -> Tensor:
        """M as the reconstruction term sees it (`fit.evidence_guard`, docs/method.md §2.3):
        detached, so the term trains A, S and T but cannot lower M, on samples that the atlas
        roughly explains (error < ε·`occluded_factor`) or that a match ties to the surface
        (`ref_in`: a reference match into the ROI; without a valid reference match, an
        adjacent one that follows T), unless the reference match lands outside the ROI or
        every valid adjacent match says the pixel moves against the surface. `uvs`: T at p
        and at its forward and backward matches; `valid`: forward, backward and reference
        validity."""
        if not self.fit.evidence_guard:
            return m_p
        rs = self.refine_settings
        uv_p, uv_f, uv_b = uvs
        fwd_ok, bwd_ok, ref_ok = valid
        with torch.no_grad():
            px = self.geometry.half_rez
            inf = torch.full_like(m_p, float("inf"))
            d_f = torch.where(fwd_ok > 0, torch.linalg.vector_norm(uv_f - uv_p, dim=1) * px, inf)
            d_b = torch.where(bwd_ok > 0, torch.linalg.vector_norm(uv_b - uv_p, dim=1) * px, inf)
            explained = (shaded - colour).abs().mean(1) < rs.colour_threshold * rs.occluded_factor
            follows = evidence.follows(d_f, d_b, rs.motion_surface_px)
            tied = (ref_in > 0) | (follows & (ref_ok == 0))
            elsewhere = (ref_ok > 0) & (ref_in == 0)  # matched outside the ROI: no guard
            protect = (tied | explained) & ~elsewhere
            protect &= ~evidence.moving(d_f, d_b, rs.motion_occluder_px)
        return torch.where(protect, m_p.detach(), m_p)

    def _rigidity_base(self, xyt: Tensor, b: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """The camera prior at p, p − δx, p − δy of a `_joint_losses` batch (None without one)."""
        if not self.model.has_camera:
            return None
        pts = torch.cat([xyt[:b], xyt[4 * b :]])
        base = self.model.camera_base(pts)
        return base[:b], base[b : 2 * b], base[2 * b :]

    def joint(self, start: int = 0) -> None:
        """Joint estimation of T, A, M, S (docs/method.md §4)."""
        total = self.iterations
        model = self.model
        hash_params = list(model.atlas_grid.parameters()) + list(model.mask_grid.parameters())
        mlp_params = (
            list(model.mapping.parameters())
            + list(model.atlas_mlp.parameters())
            + list(model.mask_mlp.parameters())
            + list(model.shade_mlp.parameters())
            + [model.log_gain, model.offset]
        )
        opt = self._optimizer(hash_params, mlp_params, self.fit.lr_hash, self.fit.lr_mlp)
        base = [float(g["lr"]) for g in opt.param_groups]
        if start and self._pending_opt is not None:
            opt.load_state_dict(self._pending_opt)
        sampler = Sampler(self.shot, self.fit, self.generator, self.fit.batch_size)
        boot_steps = int(round(total * self.fit.bootstrap_fraction))
        boot_on = torch.ones((), device=self.device)

        def hook(step: int) -> None:
            boot_on.fill_(1.0 if step < boot_steps else 0.0)

        self._step_hook = hook

        def loss_fn(step: int) -> tuple[Tensor, dict[str, Tensor]]:
            return self._joint_losses(sampler.sample(), boot_on)

        def on_log(step: int, loss: float, terms: dict[str, Tensor]) -> None:
            record = {"stage": 1.0, "step": float(step), "loss": loss}
            record.update({k: float(val.detach()) for k, val in terms.items()})
            self.history.append(record)
            self._report("fit", step, total, fraction=0.05 + 0.95 * step / total, loss=loss)

        hook(start)
        t0 = time.perf_counter()
        self._steps("fit", start, total, opt, base, loss_fn, on_log)
        self._step_hook = None
        elapsed = time.perf_counter() - t0
        self.timings_s["fit"] = self.timings_s.get("fit", 0) + elapsed
        if total > start:
            self.steps_per_s["fit"] = (total - start) / max(elapsed, 1e-9)
        self._save("refine", 0, None)

    # --------------------------------------------------------------------------------------
    # Stage 3: mask refinement

    @torch.no_grad()
    def _prediction_and_candidates(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """S·A(T(p)) for every pixel (N, 3, H, W), the candidate set Ω (N, H, W) bool, where
        an adjacent match follows the surface (N, H, W) bool (forward or backward
        `evidence.motion_residual` within `refine.motion_surface_px`), and per frame the
        pixels of Ω with M > 0.5 (N,).

        Ω (docs/method.md §5.1): the reference ROI splatted into atlas space through T on the
        reference frame (max-combined, no lost duplicates: a fix of docs/method.md §8.2), then pulled back
        through T of every frame by a bilinear lookup > 0.5, where the camera gate lets it
        (`camera_gate`; per frame the pull-back's pixels and those the gate dropped are kept in
        `self.gate_counts`, (N, 2)).
        """
        shot, geo, model = self.shot, self.geometry, self.model
        n, h, w = shot.n_frames, shot.height, shot.width
        ys, xs = torch.meshgrid(
            torch.arange(h, device=self.device, dtype=torch.float32),
            torch.arange(w, device=self.device, dtype=torch.float32),
            indexing="ij",
        )
        xs, ys = xs.reshape(-1), ys.reshape(-1)
        r = shot.reference_index
        uv_ref = model.uv(geo.xyt_norm(xs, ys, torch.full_like(xs, r)))
        pos = geo.uv_to_px(uv_ref)
        footprint = torch.zeros(h * w, device=self.device)
        roi = shot.roi.reshape(-1)
        for ox in (0, 1):
            for oy in (0, 1):
                cx = (pos[:, 0].floor() + ox).long().clamp(0, w - 1)
                cy = (pos[:, 1].floor() + oy).long().clamp(0, h - 1)
                footprint.scatter_reduce_(0, cy * w + cx, roi, reduce="amax")
        footprint = footprint.reshape(1, h, w)
        pred = torch.empty(n, 3, h, w, device=self.device)
        cand = torch.empty(n, h, w, dtype=torch.bool, device=self.device)
        follows = torch.zeros(n, h, w, dtype=torch.bool, device=self.device)
        joint = torch.zeros(n, h, w, dtype=torch.bool, device=self.device)
        gated = torch.zeros(n, 2, device=self.device)
        near = self.refine_settings.motion_surface_px
        corr = shot.corr
        prev: Tensor | None = None
        for t in range(n):
            tt = torch.full_like(xs, t)
            xyt = geo.xyt_norm(xs, ys, tt)
            uv = model.uv(xyt)
            colour = model.shaded(model.shade(uv, xyt[:, 2]), model.atlas(uv), xyt[:, 2])
            pred[t] = colour.T.reshape(3, h, w)
            p = geo.uv_to_px(uv)
            here = p.T.reshape(2, h, w).contiguous()
            if prev is not None:
                fwd = evidence.motion_residual(
                    prev, here, corr.fwd[t - 1], corr.fwd_valid[t - 1].bool()
                )
                follows[t - 1] |= fwd < near
                bwd = evidence.motion_residual(here, prev, corr.bwd[t], corr.bwd_valid[t].bool())
                follows[t] |= bwd < near
            prev = here
            lands = (
                _sample_bilinear(
                    footprint, torch.zeros_like(tt, dtype=torch.long), p[:, 0], p[:, 1]
                )
                > 0.5
            )
            gate = camera_gate(model, geo, self.camera_region, xyt)
            if gate is not None:
                gated[t, 0] = lands.sum()
                gated[t, 1] = (lands & ~gate).sum()
                lands &= gate
            cand[t] = lands.reshape(h, w)
            joint[t] = (model.mask(xyt).reshape(h, w) > 0.5) & cand[t]
        self.gate_counts = gated if self.camera_region is not None else None
        return pred, cand, follows, joint.sum((1, 2))

    @torch.no_grad()
    def _ties(
        self, pred: Tensor, cand: Tensor, follows: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The refinement's evidence maps (docs/method.md §5.2): the candidates a match ties to
        the surface and those a reference match puts outside the ROI, (N, H, W) bool each; the
        atlas error (N, H, W); the occluder threshold θ_t (N,)."""
        shot, rs = self.shot, self.refine_settings
        landing = evidence.reference_landing(
            shot.roi, shot.corr.ref, shot.corr.ref_valid.bool(), rs.reference_margin_px
        )
        # A reference match decides where there is one; the adjacent matches elsewhere.
        tied = evidence.surface_ties(landing, follows)
        surest = landing > 0 if rs.threshold_from_reference else None
        err = (pred - shot.frames).abs().mean(1)
        floor = rs.colour_threshold * rs.occluded_factor
        threshold = evidence.occluder_threshold(
            cand, err, tied, floor, rs.occluded_quantile, rs.occluded_margin, surest=surest
        )
        if rs.motion_tie_factor > 0:
            tied = evidence.surface_ties(landing, follows, err, threshold, rs.motion_tie_factor)
        return tied, landing < 0, err, threshold

    @torch.no_grad()
    def _refine_sets(
        self, pred: Tensor, cand: Tensor, follows: Tensor, joint_px: Tensor
    ) -> evidence.RefineSets:
        """The refinement's sets (docs/method.md §5.2) from `_prediction_and_candidates`;
        sets `self.evidence` (`FitResult.evidence`)."""
        shot, rs = self.shot, self.refine_settings
        tied, elsewhere, err, threshold = self._ties(pred, cand, follows)
        floor = rs.colour_threshold * rs.occluded_factor
        unsure = None if rs.pull_unexplained else evidence.unexplained(cand, err, tied, floor)
        sets = evidence.refine_sets(
            cand, err, tied, rs.colour_threshold, threshold, elsewhere, unsure
        )
        if rs.occluder_carry_steps > 0:
            corr = shot.corr
            occluder = evidence.carry_along_flow(
                sets.occluder,
                cand & ~tied,
                corr.fwd,
                corr.fwd_valid.bool(),
                corr.bwd,
                corr.bwd_valid.bool(),
                rs.occluder_carry_steps,
            )
            sets = evidence.sets_for(cand, occluder, err, rs.colour_threshold, unsure)
        self.evidence = _evidence_shares(
            cand,
            joint_px,
            sets.occluder,
            tied,
            elsewhere,
            sets.surface & ~sets.pull,
            self.gate_counts,
        )
        return sets

    def refine(self, start: int = 0) -> None:
        """M-only refinement (docs/method.md §5, Eqs. 9–10)."""
        total = self.refine_steps
        if total <= 0:
            return
        shot, geo, model, rs = self.shot, self.geometry, self.model, self.refine_settings
        pred, cand, follows, joint_px = self._prediction_and_candidates()
        sets = self._refine_sets(pred, cand, follows, joint_px)
        del cand, follows
        pulled, occluded, rgb_on = sets.pull, sets.occluder, sets.rgb_on
        opt = self._optimizer(
            list(model.mask_grid.parameters()),
            list(model.mask_mlp.parameters()),
            rs.lr_hash,
            rs.lr_mlp,
        )
        base = [float(g["lr"]) for g in opt.param_groups]
        if start and self._pending_opt is not None:
            opt.load_state_dict(self._pending_opt)
        sampler = Sampler(shot, self.fit, self.generator, self.fit.batch_size)
        corr = shot.corr
        hw = shot.height * shot.width

        def loss_fn(step: int) -> tuple[Tensor, dict[str, Tensor]]:
            index = sampler.sample()
            t = index // hw
            rem = index - t * hw
            y = rem // shot.width
            x = rem - y * shot.width
            tf, yf, xf = t.float(), y.float(), x.float()
            b = index.numel()
            fwd = corr.fwd[t, :, y, x].float()
            bwd = corr.bwd[t, :, y, x].float()
            xs = torch.cat([xf, xf + fwd[:, 0], xf + bwd[:, 0]])
            ys = torch.cat([yf, yf + fwd[:, 1], yf + bwd[:, 1]])
            ts = torch.cat([tf, tf + 1, tf - 1])
            m_p, m_f, m_b = model.mask(geo.xyt_norm(xs, ys, ts)).split(b)
            colour = _gather(shot.frames, t, y, x)
            predicted = _gather(pred, t, y, x)
            rgb = (
                rgb_on[t, y, x].float() * ((m_p[:, None] * (predicted - colour)) ** 2).sum(1)
            ).mean()
            no = pulled[t, y, x].float()
            refine_term = rs.weight_refine * losses.masked_mean((1 - m_p) ** 2, no)
            refine_term = refine_term + rs.weight_occluded * losses.masked_mean(
                m_p**2, occluded[t, y, x].float()
            )
            flow_term = (
                rs.weight_flow_alpha
                * 0.5
                * (
                    losses.masked_mean((m_p - m_f).abs(), corr.fwd_valid[t, y, x].float())
                    + losses.masked_mean((m_p - m_b).abs(), corr.bwd_valid[t, y, x].float())
                )
            )
            return self.fit.weights.rgb * rgb + refine_term + flow_term, {}

        def on_log(step: int, loss: float, terms: dict[str, Tensor]) -> None:
            self.history.append({"stage": 2.0, "step": float(step), "loss": loss})
            self._report("refine", step, total, loss=loss)

        self._step_hook = None
        t0 = time.perf_counter()
        self._steps("refine", start, total, opt, base, loss_fn, on_log)
        elapsed = time.perf_counter() - t0
        self.timings_s["refine"] = self.timings_s.get("refine", 0) + elapsed
        self.steps_per_s["refine"] = (total - start) / max(elapsed, 1e-9)
        self._save("done", total, None)

    # --------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        """Pre-train, fit and refine, resuming from the last checkpoint when there is one."""
        self._pending_opt: dict[str, Any] | None = None
        state = self._load()
        stage, step = ("pretrain", 0) if state is None else (state["stage"], state["step"])
        if state is not None:
            self._pending_opt = state.get("optimizer")
        order = ["pretrain", "fit", "refine", "done"]
        if order.index(stage) <= 0:
            self.pretrain(step)
            step, self._pending_opt = 0, None
        if order.index(stage) <= 1:
            self.joint(step if stage == "fit" else 0)
            step, self._pending_opt = 0, None
        if order.index(stage) <= 2:
            self.ctx.reporter.update("refine", 0.0, "candidate set")
            self.refine(step if stage == "refine" else 0)
        self.ctx.reporter.update("refine", 1.0, "done")
        self.model.eval()
        return FitResult(
            self.model,
            self.geometry,
            self.shot.reference_index,
            self.atlas_box,
            self.history,
            self.timings_s,
            self.steps_per_s,
            self.evidence,
            self.camera_region,
        )


def _evidence_shares(
    cand: Tensor,
    joint_px: Tensor,
    occluder: Tensor,
    tied: Tensor,
    elsewhere: Tensor,
    unsure: Tensor,
    gate_counts: Tensor | None = None,
) -> list[dict[str, float | None]]:
    """`FitResult.evidence` from the refinement's maps (one host transfer): per frame the
    shares of Ω with M > 0.5 after the joint fit, in O, tied, in O by the reference landing
    alone (the rest of O is the appearance rule), unsure (not pulled toward 1), and the share
    of T's pull-back the camera gate dropped (`gate_counts` (N, 2): pull-back, dropped)."""
    sets = (occluder, tied, elsewhere, unsure)
    counts = torch.stack([joint_px, *((m & cand).sum((1, 2)) for m in sets), cand.sum((1, 2))], 1)
    keys = ("mask_joint", "occluder_evidence", "surface_tied", "occluder_landing", "surface_unsure")
    out: list[dict[str, float | None]] = []
    gate = [] if gate_counts is None else gate_counts.cpu().tolist()
    for t, (*values, a) in enumerate(counts.cpu().tolist()):
        row = {k: (round(v / a, 4) if a else None) for k, v in zip(keys, values, strict=True)}
        if gate:
            back, dropped = gate[t]
            row["camera_gated"] = round(dropped / back, 4) if back else None
        out.append(row)
    return out


def validate_shot(roi: Tensor, n_frames: int, reference_index: int, where: str = "roi") -> None:
    """Input checks that would otherwise produce a meaningless fit."""
    if n_frames < 2:
        raise InputError("plate: a build needs at least 2 frames")
    if not 0 <= reference_index < n_frames:
        raise InputError(f"reference frame: index {reference_index} outside 0..{n_frames - 1}")
    fault = roi_fault(int((roi > 0.5).sum()), roi.numel())  # the rule `validate_inputs` applies
    if fault is not None:
        raise InputError(f"{where}: on the reference frame, {fault}")


@torch.no_grad()
def query_fields(
    result: FitResult, x: Tensor, y: Tensor, t: int, chunk: int = 262_144
) -> dict[str, Tensor]:
    """UV, mask, shade and reconstruction inputs at working-pixel positions of frame index t.

    Args:
        x, y: (P,) float32 working-resolution pixel positions (centres at integers), any density.
    Returns:
        uv_norm (P, 2), mask (P,), shade (P, 3), atlas (P, 3) working-encoded A(T(p)), shaded
        (P, 3) Î = the frame grade of S·A, in_view (P,) bool: the camera gate (`camera_gate`;
        all True without one).
    """
    model, geo = result.model, result.geometry
    keys = ("uv_norm", "mask", "shade", "atlas", "shaded", "in_view")
    outs: dict[str, list[Tensor]] = {k: [] for k in keys}
    for s in range(0, x.numel(), chunk):
        xs, ys = x[s : s + chunk], y[s : s + chunk]
        xyt = geo.xyt_norm(xs, ys, torch.full_like(xs, float(t)))
        uv = model.uv(xyt)
        outs["uv_norm"].append(uv)
        outs["mask"].append(model.mask(xyt))
        shade, atlas = model.shade(uv, xyt[:, 2]), model.atlas(uv)
        outs["shade"].append(shade)
        outs["atlas"].append(atlas)
        outs["shaded"].append(model.shaded(shade, atlas, xyt[:, 2]))
        gate = camera_gate(model, geo, result.camera_region, xyt)
        outs["in_view"].append(torch.ones_like(xs, dtype=torch.bool) if gate is None else gate)
    return {k: torch.cat(v) for k, v in outs.items()}
