"""Phase 3 of the fit: the M-only refinement (docs/method.md §5, Eqs. 9–10).

What the refinement receives from the joint fit is `Candidates`: the fields' prediction
S·A(T(p)) of every pixel, the candidate set Ω, where adjacent matches follow the surface, and
the joint fit's own mask over Ω, read once off the fitted fields. From them and the shot's
matches `Refinement.sets` builds the evidence of docs/method.md §5.2 (`evidence.RefineSets`:
pulled toward visible, evidenced as an occluder, where the reconstruction term holds), and
`Refinement.run` trains only M's grid and MLP against those sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rna_engine.model import losses
from rna_engine.model.fields import RNAFields
from rna_engine.stages import evidence

from .loop import StepLoop
from .problem import FitProblem
from .shot import Sampler, camera_gate, gather, sample_bilinear


@dataclass(frozen=True)
class Candidates:
    """The jointly fitted fields read off every working pixel, as the refinement needs them.

    Attributes:
        prediction: (N, 3, H, W) float32 S·A(T(p)), the frame grade applied.
        omega: (N, H, W) bool, the candidate set Ω (docs/method.md §5.1).
        follows: (N, H, W) bool, a forward or backward adjacent match follows the surface
            (`evidence.motion_residual` within `refine.motion_surface_px`).
        joint_px: (N,) pixels of Ω with M > 0.5 after the joint fit.
        gate_counts: (N, 2) per frame the pixels of T's pull-back of the ROI and those the
            camera gate dropped; None without a gate.
    """

    prediction: Tensor
    omega: Tensor
    follows: Tensor
    joint_px: Tensor
    gate_counts: Tensor | None


@dataclass(frozen=True)
class Ties:
    """The refinement's evidence maps (docs/method.md §5.2), (N, H, W) each unless stated.

    Attributes:
        tied: bool, candidates a match ties to the surface.
        elsewhere: bool, a valid reference match lands outside the ROI.
        error: float32, the atlas error |S·A(T(p)) − I| averaged over RGB.
        threshold: (N,) the occluder threshold θ_t.
    """

    tied: Tensor
    elsewhere: Tensor
    error: Tensor
    threshold: Tensor


class Refinement:
    """M-only refinement; `steps` steps (the shot-scaled `refine.iterations`; 0: off)."""

    def __init__(self, problem: FitProblem, model: RNAFields, steps: int) -> None:
        self.problem = problem
        self.model = model
        self.steps = steps

    @torch.no_grad()
    def candidates(self) -> Candidates:
        """Read the fitted fields off every pixel of every frame.

        Ω (docs/method.md §5.1): the reference ROI splatted into atlas space through T on the
        reference frame (max-combined, no lost duplicates: a fix of docs/method.md §8.2), then
        pulled back through T of every frame by a bilinear lookup > 0.5, where the camera gate
        lets it (`shot.camera_gate`).
        """
        problem, model = self.problem, self.model
        shot, geo = problem.shot, problem.geometry
        device = shot.frames.device
        n, h, w = shot.n_frames, shot.height, shot.width
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32),
            torch.arange(w, device=device, dtype=torch.float32),
            indexing="ij",
        )
        xs, ys = xs.reshape(-1), ys.reshape(-1)
        r = shot.reference_index
        uv_ref = model.uv(geo.xyt_norm(xs, ys, torch.full_like(xs, r)))
        pos = geo.uv_to_px(uv_ref)
        footprint = torch.zeros(h * w, device=device)
        roi = shot.roi.reshape(-1)
        for ox in (0, 1):
            for oy in (0, 1):
                cx = (pos[:, 0].floor() + ox).long().clamp(0, w - 1)
                cy = (pos[:, 1].floor() + oy).long().clamp(0, h - 1)
                footprint.scatter_reduce_(0, cy * w + cx, roi, reduce="amax")
        footprint = footprint.reshape(1, h, w)
        pred = torch.empty(n, 3, h, w, device=device)
        cand = torch.empty(n, h, w, dtype=torch.bool, device=device)
        follows = torch.zeros(n, h, w, dtype=torch.bool, device=device)
        joint = torch.zeros(n, h, w, dtype=torch.bool, device=device)
        gated = torch.zeros(n, 2, device=device)
        near = problem.refine.motion_surface_px
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
            zero = torch.zeros_like(tt, dtype=torch.long)
            lands = sample_bilinear(footprint, zero, p[:, 0], p[:, 1]) > 0.5
            gate = camera_gate(model, geo, problem.camera_region, xyt)
            if gate is not None:
                gated[t, 0] = lands.sum()
                gated[t, 1] = (lands & ~gate).sum()
                lands &= gate
            cand[t] = lands.reshape(h, w)
            joint[t] = (model.mask(xyt).reshape(h, w) > 0.5) & cand[t]
        gate_counts = gated if problem.camera_region is not None else None
        return Candidates(pred, cand, follows, joint.sum((1, 2)), gate_counts)

    @torch.no_grad()
    def ties(self, c: Candidates) -> Ties:
        """Which candidates a match ties to the surface or puts outside the ROI, the atlas
        error and θ_t (docs/method.md §5.2)."""
        shot, rs = self.problem.shot, self.problem.refine
        landing = evidence.reference_landing(
            shot.roi, shot.corr.ref, shot.corr.ref_valid.bool(), rs.reference_margin_px
        )
        # A reference match decides where there is one; the adjacent matches elsewhere.
        tied = evidence.surface_ties(landing, c.follows)
        surest = landing > 0 if rs.threshold_from_reference else None
        err = (c.prediction - shot.frames).abs().mean(1)
        threshold = evidence.occluder_threshold(
            c.omega,
            err,
            tied,
            rs.colour_threshold * rs.occluder_floor,
            rs.occluded_quantile,
            rs.occluded_margin,
            surest=surest,
            loose_floor=rs.colour_threshold * rs.occluded_factor,
        )
        if rs.motion_tie_factor > 0:
            tied = evidence.surface_ties(landing, c.follows, err, threshold, rs.motion_tie_factor)
        return Ties(tied, landing < 0, err, threshold)

    @torch.no_grad()
    def sets(self, c: Candidates) -> tuple[evidence.RefineSets, list[dict[str, float | None]]]:
        """The refinement's sets (docs/method.md §5.2) and their per-frame shares
        (`FitResult.evidence`)."""
        shot, rs = self.problem.shot, self.problem.refine
        ties = self.ties(c)
        cand, err, tied = c.omega, ties.error, ties.tied
        floor = rs.colour_threshold * rs.occluded_factor
        unsure = None if rs.pull_unexplained else evidence.unexplained(cand, err, tied, floor)
        sets = evidence.refine_sets(
            cand,
            err,
            tied,
            rs.colour_threshold,
            ties.threshold,
            ties.elsewhere,
            unsure,
            rs.appearance_open_px,
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
        shares = evidence_shares(
            cand,
            c.joint_px,
            sets.occluder,
            tied,
            ties.elsewhere,
            sets.surface & ~sets.pull,
            c.gate_counts,
        )
        return sets, shares

    def run(
        self, loop: StepLoop, start: int = 0, state: dict[str, Any] | None = None
    ) -> list[dict[str, float | None]] | None:
        """Steps `start..steps` (`state`: the optimizer's, when resuming mid-phase); returns
        the per-frame evidence shares, None when the refinement is off."""
        total = self.steps
        if total <= 0:
            return None
        problem, model = self.problem, self.model
        shot, geo, rs, fit = problem.shot, problem.geometry, problem.refine, problem.fit
        c = self.candidates()
        sets, shares = self.sets(c)
        pred = c.prediction
        del c
        pulled, occluded, rgb_on = sets.pull, sets.occluder, sets.rgb_on
        opt, base = loop.optimizer(
            list(model.mask_grid.parameters()),
            list(model.mask_mlp.parameters()),
            rs.lr_hash,
            rs.lr_mlp,
            state,
        )
        sampler = Sampler(shot, fit, loop.generator, fit.batch_size)
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
            colour = gather(shot.frames, t, y, x)
            predicted = gather(pred, t, y, x)
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
            return fit.weights.rgb * rgb + refine_term + flow_term, {}

        def on_log(step: int, loss: float, terms: dict[str, Tensor]) -> None:
            loop.record.history.append({"stage": 2.0, "step": float(step), "loss": loss})
            loop.report("refine", step, total, loss=loss)

        loop.record.evidence[:] = shares
        loop.run("refine", start, total, opt, base, loss_fn, on_log)
        return shares


def evidence_shares(
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
