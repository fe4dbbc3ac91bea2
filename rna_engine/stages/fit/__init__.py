"""Fitting the RNA fields to one shot (docs/method.md §2, §4, §5, §8.1), in three phases.

- `pretrain` — identity pre-training of T;
- `joint` — the joint estimation of T, A, M and S with all the losses of §2;
- `refine` — the M-only refinement against the evidence of §5.2;

each a small unit over the shared training loop (`loop`: optimizer, schedule, CUDA graph,
finite checks, progress, checkpoints) and the shot's tensors (`shot`). `fitter.Fitter` builds
the model and runs the phases in order, resuming from `work/fit.ckpt`; `result.FitResult` is
what the bake, the QC and the quality gates receive. The performance design (§8.1): frames,
flows and masks live on the device; sampling happens there, stratified so every step has
reference-frame and ROI samples; one concatenated batch goes through T per step; matches are
computed once; losses are read back only every `log_every` steps.
"""

from __future__ import annotations

from .fitter import REFERENCE_FRAMES, Fitter, build_model, scaled_steps
from .loop import FitLog, StepLoop, graph_capture
from .problem import FitProblem
from .refine import Candidates, Refinement, Ties
from .result import FitResult, query_fields
from .shot import (
    Geometry,
    Sampler,
    ShotTensors,
    atlas_box_for,
    camera_gate,
    camera_region_for,
    gather,
    measured_offsets,
    sample_bilinear,
    validate_shot,
)

__all__ = [
    "REFERENCE_FRAMES",
    "Candidates",
    "FitLog",
    "FitProblem",
    "FitResult",
    "Fitter",
    "Geometry",
    "Refinement",
    "Sampler",
    "ShotTensors",
    "StepLoop",
    "Ties",
    "atlas_box_for",
    "build_model",
    "camera_gate",
    "camera_region_for",
    "gather",
    "graph_capture",
    "measured_offsets",
    "query_fields",
    "sample_bilinear",
    "scaled_steps",
    "validate_shot",
]
