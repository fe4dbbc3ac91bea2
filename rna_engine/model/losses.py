"""The RNA losses (docs/method.md §2, paper Eqs. 3–10), pure tensor functions.

Every "mean" is over the samples that qualify, computed as sum(mask·x)/max(sum(mask), 1) so the
loop never synchronises with the host. Distances that go through a square root get an epsilon
inside it: T at a point and one pixel away can be bit-identical, and d√x/dx at 0 is NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS_SQRT = 1e-12
"""Added inside square roots of squared distances (NaN-free gradients at 0)."""


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """mean of `x` over `mask` (same shape, 0/1 float); 0 when the mask is empty."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def safe_norm(x: Tensor) -> Tensor:
    """‖x‖₂ over the last axis with an epsilon inside the square root."""
    return torch.sqrt((x * x).sum(-1) + EPS_SQRT)


def bce(p: Tensor, target: Tensor) -> Tensor:
    """Elementwise binary cross-entropy of probabilities `p` (already clamped away from 0, 1)."""
    return -(target * torch.log(p) + (1.0 - target) * torch.log(1.0 - p))


def reconstruction(mask: Tensor, shaded: Tensor, colour: Tensor) -> Tensor:
    """Eq. 3: mean_p Σ_c (Î − I)² with Î = M·S·A + (1 − M)·I, i.e. (M·(S·A − I))².

    mask (B,), shaded (S·A, graded: `RNAFields.shaded`) and colour (B, 3).
    """
    return ((mask[:, None] * (shaded - colour)) ** 2).sum(1).mean()


def rigidity(
    uv: Tensor,
    uv_dx: Tensor,
    uv_dy: Tensor,
    scale: float,
    base: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Eq. 4 with the finite-difference Jacobian of Eq. 15, per sample (B,).

    `uv` = T(x, y, t), `uv_dx` = T(x − δ, y, t), `uv_dy` = T(x, y − δ, t); `scale` converts uv
    differences to pixels per pixel (rez/2 / δ). Loss = ‖JᵀJ‖_F + ‖(JᵀJ + 10⁻³I)⁻¹‖_F, minimum
    2√2 for an orthonormal J. `base`: the camera prior at the same three points; then the
    Jacobian is T's relative to the prior's (J_T · J_P⁻¹), so the zoom or keystone the camera
    measured is not penalised, only the residual's distortion.
    """
    j = torch.stack([uv - uv_dx, uv - uv_dy], -1) * scale  # (B, 2, 2): columns d/dx, d/dy
    if base is not None:
        b0, bx, by = base
        jp = torch.stack([b0 - bx, b0 - by], -1) * scale
        pa, pb, pc, pd = jp[:, 0, 0], jp[:, 0, 1], jp[:, 1, 0], jp[:, 1, 1]
        det = pa * pd - pb * pc
        det = torch.where(det.abs() < 1e-6, torch.full_like(det, 1e-6), det)
        inv = torch.stack([torch.stack([pd, -pb], -1), torch.stack([-pc, pa], -1)], -2)
        j = j @ (inv / det[:, None, None])
    jtj = j.transpose(1, 2) @ j
    a, b, c, d = jtj[:, 0, 0], jtj[:, 0, 1], jtj[:, 1, 0], jtj[:, 1, 1]
    fro = torch.sqrt(a * a + b * b + c * c + d * d + EPS_SQRT)
    a2, d2 = a + 1e-3, d + 1e-3
    det = a2 * d2 - b * c
    inv_fro = torch.sqrt(d2 * d2 + b * b + c * c + a2 * a2 + EPS_SQRT) / det.abs().clamp_min(1e-12)
    return fro + inv_fro


def correspondence(uv_p: Tensor, uv_q: Tensor, mask_p: Tensor, px_scale: float) -> Tensor:
    """Eq. 6 per sample: ‖T(q) − T(p)‖ in pixels, weighted by M(p) (not detached, as the code)."""
    return safe_norm(uv_q - uv_p) * px_scale * mask_p


def position(uv_p: Tensor, xy_norm: Tensor) -> Tensor:
    """Eq. 5 per sample: ‖T(p) − p̄‖ (not squared)."""
    return safe_norm(uv_p - xy_norm)


def prior_hold(
    uv_p: Tensor, base_p: Tensor, mask_p: Tensor, px_scale: float, free_px: float
) -> Tensor:
    """[ours] Per sample: (1 − M(p)) · max(‖T(p) − H_t(p)‖ px − `free_px`, 0), M detached, so
    the term moves only T, and only where the mask says the ROI is not there."""
    excess = (safe_norm(uv_p - base_p) * px_scale - free_px).clamp_min(0.0)
    return (1.0 - mask_p.detach()) * excess


def illumination(shade: Tensor) -> Tensor:
    """Eq. 8 per sample: mean over channels of (S − 1)²."""
    return ((shade - 1.0) ** 2).mean(1)
