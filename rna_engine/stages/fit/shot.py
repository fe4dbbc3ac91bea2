"""The shot as the fit sees it: tensors on the device, its coordinate normalisation, the
sampler, and the small lookups every phase shares (docs/method.md §1.2, §8.1).

Convention: working-resolution pixels, x = column, y = row (top-down), centres at integers;
`uv_norm` / `xyt_norm` as in docs/method.md §1.2 (long side normalised to (−1, 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rna_engine.errors import InputError
from rna_engine.model.fields import RNAFields
from rna_engine.settings import FitSettings
from rna_engine.stages.camera import roi_region
from rna_engine.stages.correspondences import Correspondences
from rna_engine.stages.inputs import roi_fault


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


def gather(image: Tensor, t: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """image (N, C, H, W) at integer (t, y, x) → (B, C)."""
    return image[t, :, y, x]


def sample_bilinear(image: Tensor, t: Tensor, x: Tensor, y: Tensor) -> Tensor:
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


def validate_shot(roi: Tensor, n_frames: int, reference_index: int, where: str = "roi") -> None:
    """Input checks that would otherwise produce a meaningless fit."""
    if n_frames < 2:
        raise InputError("plate: a build needs at least 2 frames")
    if not 0 <= reference_index < n_frames:
        raise InputError(f"reference frame: index {reference_index} outside 0..{n_frames - 1}")
    fault = roi_fault(int((roi > 0.5).sum()), roi.numel())  # the rule `validate_inputs` applies
    if fault is not None:
        raise InputError(f"{where}: on the reference frame, {fault}")
