"""Phase 2 of the fit: the joint estimation of T, A, M and S (docs/method.md §2, §4).

Every step samples a stratified batch (`shot.Sampler`) and evaluates all the losses of
docs/method.md §2 on it, with T evaluated once on one concatenated batch (p, its forward,
backward and reference matches, p − δx, p − δy). The bootstrap term is on for the first
`fit.bootstrap_fraction` of the steps. The reconstruction term sees M through the evidence
guard (`fit.evidence_guard`, §2.3): it trains A, S and T but cannot lower M where the atlas
explains the pixel or a match ties it to the surface.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rna_engine.model import losses
from rna_engine.model.fields import RNAFields
from rna_engine.stages import evidence

from .loop import StepLoop
from .problem import FitProblem
from .shot import Sampler, gather


class JointFit:
    """The joint fit of T, A, M, S; `steps` steps (the shot-scaled `fit.iterations`)."""

    def __init__(self, problem: FitProblem, model: RNAFields, steps: int) -> None:
        self.problem = problem
        self.model = model
        self.steps = steps

    def losses(self, index: Tensor, boot_on: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """All losses of docs/method.md §2 on one batch of flat pixel indices (B,) into
        (N, H, W); `boot_on` () 1.0 while the bootstrap term is on. Returns the total and its
        weighted terms."""
        problem, model = self.problem, self.model
        shot, geo, fit, w = problem.shot, problem.geometry, problem.fit, problem.fit.weights
        corr = shot.corr
        hw = shot.height * shot.width
        t = index // hw
        rem = index - t * hw
        y = rem // shot.width
        x = rem - y * shot.width
        tf, yf, xf = t.float(), y.float(), x.float()
        b = index.numel()
        colour = gather(shot.frames, t, y, x)  # (B, 3)
        fwd = corr.fwd[t, :, y, x].float()
        bwd = corr.bwd[t, :, y, x].float()
        ref = corr.ref[t, :, y, x].float()
        fwd_ok = corr.fwd_valid[t, y, x].float()
        bwd_ok = corr.bwd_valid[t, y, x].float()
        ref_ok = corr.ref_valid[t, y, x].float()
        r = float(shot.reference_index)
        is_ref = (t == shot.reference_index).float()
        delta = fit.rigidity_delta_px
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
        boot_set = torch.maximum(ref_ok, is_ref) if fit.bootstrap_matched_only else None
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
                w.prior_hold * losses.prior_hold(uv_p, base[0], m_p, px, fit.prior_hold_px).mean()
            )
        pos_set = is_ref * (shot.roi[y, x] if fit.position_set == "roi" else 1.0)
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
        if not self.problem.fit.evidence_guard:
            return m_p
        rs = self.problem.refine
        uv_p, uv_f, uv_b = uvs
        fwd_ok, bwd_ok, ref_ok = valid
        with torch.no_grad():
            px = self.problem.geometry.half_rez
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
        """The camera prior at p, p − δx, p − δy of a `losses` batch (None without one)."""
        if not self.model.has_camera:
            return None
        pts = torch.cat([xyt[:b], xyt[4 * b :]])
        base = self.model.camera_base(pts)
        return base[:b], base[b : 2 * b], base[2 * b :]

    def run(self, loop: StepLoop, start: int = 0, state: dict[str, Any] | None = None) -> None:
        """Steps `start..steps` (`state`: the optimizer's, when resuming mid-phase)."""
        total, model, fit = self.steps, self.model, self.problem.fit
        hash_params = list(model.atlas_grid.parameters()) + list(model.mask_grid.parameters())
        mlp_params = (
            list(model.mapping.parameters())
            + list(model.atlas_mlp.parameters())
            + list(model.mask_mlp.parameters())
            + list(model.shade_mlp.parameters())
            + [model.log_gain, model.offset]
        )
        opt, base = loop.optimizer(hash_params, mlp_params, fit.lr_hash, fit.lr_mlp, state)
        sampler = Sampler(self.problem.shot, fit, loop.generator, fit.batch_size)
        boot_steps = int(round(total * fit.bootstrap_fraction))
        boot_on = torch.ones((), device=loop.device)

        def before_step(step: int) -> None:
            boot_on.fill_(1.0 if step < boot_steps else 0.0)

        def loss_fn(step: int) -> tuple[Tensor, dict[str, Tensor]]:
            return self.losses(sampler.sample(), boot_on)

        def on_log(step: int, loss: float, terms: dict[str, Tensor]) -> None:
            record = {"stage": 1.0, "step": float(step), "loss": loss}
            record.update({k: float(val.detach()) for k, val in terms.items()})
            loop.record.history.append(record)
            loop.report("fit", step, total, fraction=0.05 + 0.95 * step / total, loss=loss)

        before_step(start)
        loop.run("fit", start, total, opt, base, loss_fn, on_log, before_step)
