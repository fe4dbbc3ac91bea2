"""The fit of one shot: the model built, then its three phases run in order, resumable.

`Fitter.run` pre-trains T (`pretrain.Pretraining`), fits T, A, M and S jointly
(`joint.JointFit`) and refines M (`refine.Refinement`) on one `loop.StepLoop`, resuming from
the last checkpoint in `work/` when there is one. Each phase's step count is the preset's,
scaled with the shot's length (`fit.scale_with_shot`). Fixes of the authors' bugs
(docs/method.md §8.2): position loss on the ROI (configurable), no checkpoint selection on
one easy frame, correct splatting for the candidate set, seeds everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rna_engine.model.fields import RNAFields, capped_levels
from rna_engine.runtime.context import RunContext
from rna_engine.settings import FitSettings, RefineSettings
from rna_engine.stages.camera import normalised

from .joint import JointFit
from .loop import FitLog, Resume, StepLoop
from .pretrain import Pretraining
from .problem import FitProblem
from .refine import Refinement
from .result import FitResult
from .shot import Geometry, ShotTensors, atlas_box_for, camera_region_for, measured_offsets

REFERENCE_FRAMES = 70
"""Shot length the presets' step counts are tuned for (`FitSettings.scale_with_shot`)."""


def scaled_steps(steps: int, n_frames: int, enabled: bool) -> int:
    """Step count scaled with shot length (clamped to ¼…2× of the preset's)."""
    if not enabled:
        return steps
    return max(1, int(round(steps * min(2.0, max(0.25, n_frames / REFERENCE_FRAMES)))))


def build_model(
    shot: ShotTensors,
    geometry: Geometry,
    atlas_box: tuple[float, ...],
    fit: FitSettings,
    grid_factory: Callable[..., Any] | None,
) -> RNAFields:
    """The fields for `shot` (camera prior, frame grade, atlas grid cap as `fit` asks), not
    yet on the fit's device."""
    camera = None
    if fit.camera_prior and shot.corr.camera is not None:
        camera = torch.from_numpy(
            normalised(shot.corr.camera.cpu().double().numpy(), geometry.half_rez)
        )
    grade = (shot.n_frames, shot.reference_index) if fit.frame_grade else None
    model = RNAFields(
        fit,
        atlas_box,
        geometry.xy_extent(),
        grid_factory,
        camera=camera,
        frame_grade=grade,
        atlas_grid=capped_levels(
            fit.hash_grid,
            fit.atlas_cells_per_px * (atlas_box[2] - atlas_box[0]) * geometry.half_rez,
        ),
    )
    if grade is not None:
        with torch.no_grad():
            model.offset.copy_(measured_offsets(shot))
    return model


class Fitter:
    """Runs the three phases of the fit on one shot (docs/method.md §4, §5).

    Attributes:
        problem: the shot, its geometry, the settings and the camera gate's region.
        model: the fields being fitted, on `ctx.device`.
        loop: the training loop the phases share (optimizer, schedule, checkpoints).
        pretraining, joint, refinement: the phases, each with its `steps`.
    """

    def __init__(
        self,
        shot: ShotTensors,
        fit: FitSettings,
        refine: RefineSettings,
        ctx: RunContext,
        grid_factory: Callable[..., Any] | None = None,
    ) -> None:
        geometry = Geometry(shot.width, shot.height, shot.n_frames)
        self.atlas_box = atlas_box_for(shot.roi, geometry)
        torch.manual_seed(ctx.seed)
        self.model = build_model(shot, geometry, self.atlas_box, fit, grid_factory)
        self.model.to(torch.device(ctx.device))
        region = camera_region_for(shot.roi, refine.camera_gate) if self.model.has_camera else None
        self.problem = FitProblem(shot, geometry, fit, refine, region)
        self.record = FitLog()
        self.loop = StepLoop(self.model, fit, ctx, self.record)
        self.ctx = ctx
        n, scale = shot.n_frames, fit.scale_with_shot
        self.pretraining = Pretraining(
            self.problem, self.model, scaled_steps(fit.pretrain_steps, n, scale)
        )
        self.joint = JointFit(self.problem, self.model, scaled_steps(fit.iterations, n, scale))
        self.refinement = Refinement(
            self.problem, self.model, scaled_steps(refine.iterations, n, scale)
        )

    @property
    def shot(self) -> ShotTensors:
        return self.problem.shot

    @property
    def geometry(self) -> Geometry:
        return self.problem.geometry

    def run(self) -> FitResult:
        """Pre-train, fit and refine, resuming from the last checkpoint when there is one."""
        loop = self.loop
        resume = loop.load() or Resume("pretrain", 0, None)
        if resume.runs("pretrain"):
            state = resume.optimizer_for("pretrain")
            if self.pretraining.run(loop, resume.start("pretrain"), state):
                loop.save("fit", 0)
        if resume.runs("fit"):
            self.joint.run(loop, resume.start("fit"), resume.optimizer_for("fit"))
            loop.save("refine", 0)
        if resume.runs("refine"):
            self.ctx.reporter.update("refine", 0.0, "candidate set")
            start = resume.start("refine")
            if self.refinement.run(loop, start, resume.optimizer_for("refine")) is not None:
                loop.save("done", self.refinement.steps)
        self.ctx.reporter.update("refine", 1.0, "done")
        self.model.eval()
        return FitResult(
            self.model,
            self.problem.geometry,
            self.problem.shot.reference_index,
            self.atlas_box,
            self.record.history,
            self.record.timings_s,
            self.record.steps_per_s,
            self.record.evidence,
            self.problem.camera_region,
        )
