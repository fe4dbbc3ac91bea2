"""What the fit hands to the later stages: `FitResult`, and `query_fields` to read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rna_engine.model.fields import RNAFields

from .shot import Geometry, camera_gate


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
    """Per frame index, at the start of the refinement (`Refinement.run`): the share of the
    candidate set Ω with M > 0.5 after the joint fit (`mask_joint`), evidenced as an occluder
    (`occluder_evidence`), of those by the reference landing alone (`occluder_landing`),
    tied to the surface by a match (`surface_tied`) and not pulled toward visible because
    nothing ties or explains them (`surface_unsure`); None where Ω is empty; and the share of
    the ROI's pull-back through T that the camera gate dropped (`camera_gated`, None where T
    lands nothing in the ROI). Kept in the checkpoint; empty when the refinement is off."""
    camera_region: tuple[float, float, float, float] | None = None
    """(x0, y0, x1, y1) reference working pixels: the camera gate (`camera_gate`,
    `refine.camera_gate`); None: no gate."""


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
