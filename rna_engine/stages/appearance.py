"""Appearance test of a flow match (docs/method.md §3.2–3.4): does p in frame a look like p + F(p)
in frame b?

Two backends behind one interface (`features` once per shot, `similarity` per batch of flows),
both giving a number in [-1, 1] that is compared with `FlowSettings.appearance_threshold`:

- `descriptor` (default, no weights): the descriptor of a pixel is its (2r+1)² colour patch.
  Patch b is taken along the flow, so the patch deforms with the motion. The similarity is the
  normalised cross-correlation of the zero-mean patches, regularised so that texture under
  `descriptor_structure_floor` stops counting (flat patches compare by colour alone), times a
  Gaussian agreement of the patch mean colours. It plays DINO's cosine: a correct match scores
  near 1, an occluder over texture near 0.
- `dino`: DINO ViT-S/8 or DINOv2 patch tokens through `transformers` (installed weights), the
  official test: cosine of the features bilinearly resampled at p and at p + F(p).

Also the sampling primitives shared with `correspondences.py`. Convention: positions and flows in
working-resolution pixels, x = column, y = row (top-down), pixel centres at integer coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from rna_engine.settings import FlowSettings

if TYPE_CHECKING:
    from rna_engine.runtime.weights import ModelRecord

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DINO_FRAMES_PER_BATCH = 4
_SAMPLE_BUDGET = 1 << 23
"""Feature elements resampled at once by the DINO similarity (bounds its memory)."""


# --------------------------------------------------------------------------------------------
# Sampling at pixel positions


def pixel_grid(height: int, width: int, device: torch.device | str) -> Tensor:
    """Pixel-centre positions.

    Returns:
        (2, H, W) float32: channel 0 is x (column), channel 1 is y (row).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack((xs, ys))


def sample_px(
    image: Tensor, xy_px: Tensor, mode: str = "bilinear", padding: str = "zeros"
) -> Tensor:
    """Sample `image` at pixel positions.

    Convention: pixel centres at integer coordinates, so `xy_px = pixel_grid(H, W)` returns the
    image unchanged (grid_sample with align_corners=True, normalised by W-1 and H-1).

    Args:
        image: (B, C, H, W) float.
        xy_px: (B, 2, h, w) float32 positions (x, y) in `image`'s pixels.
        mode: `bilinear` or `nearest`.
        padding: grid_sample padding mode for positions outside the image (`zeros`, `border`).

    Returns:
        (B, C, h, w), same dtype as `image`.
    """
    _, _, height, width = image.shape
    gx = xy_px[:, 0] * (2.0 / max(width - 1, 1)) - 1.0
    gy = xy_px[:, 1] * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def inside(xy_px: Tensor, height: int, width: int) -> Tensor:
    """Whether positions lie in the image's pixel-centre rectangle.

    Args:
        xy_px: (B, 2, h, w) positions.

    Returns:
        (B, h, w) bool.
    """
    x, y = xy_px[:, 0], xy_px[:, 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def box_mean(x: Tensor, radius: int) -> Tensor:
    """Mean over a (2r+1)² window, windows clipped at the border (separable).

    Args:
        x: (B, C, H, W).

    Returns:
        (B, C, H, W).
    """
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


# --------------------------------------------------------------------------------------------
# Backends


class Appearance(Protocol):
    """What `correspondences.py` needs from an appearance backend."""

    name: str

    def features(self, frames: Tensor) -> Tensor:
        """Per-frame features. frames: (N, 3, H, W) float32 0..1 → (N, C, h, w)."""

    def similarity(self, feat_a: Tensor, feat_b: Tensor, flow_ab: Tensor) -> Tensor:
        """Similarity of p in a and p + flow(p) in b: (B, C, h, w) ×2, (B, 2, H, W) → (B, H, W)."""


class DescriptorAppearance:
    """Weight-free patch descriptor (see the module docstring).

    Args:
        radius_px: patch half-width r.
        structure_floor: per-channel patch variance under which texture stops counting.
        colour_tolerance: RMS mean-colour difference giving a factor exp(-1/2).
    """

    name = "descriptor"

    def __init__(self, radius_px: int, structure_floor: float, colour_tolerance: float) -> None:
        self.radius_px = radius_px
        self.structure_floor = structure_floor
        self.colour_tolerance = colour_tolerance

    def features(self, frames: Tensor) -> Tensor:
        """The frames themselves: the patches are cut along each flow in `similarity`."""
        return frames

    def similarity(self, feat_a: Tensor, feat_b: Tensor, flow_ab: Tensor) -> Tensor:
        """Patch similarity in [-1, 1].

        Args:
            feat_a: (B, C, H, W) frames a.
            feat_b: (B, C, H, W) frames b.
            flow_ab: (B, 2, H, W) flow a → b, pixels.

        Returns:
            (B, H, W) float32.
        """
        _, channels, height, width = feat_a.shape
        xy = pixel_grid(height, width, feat_a.device).unsqueeze(0) + flow_ab
        a = feat_a
        b = sample_px(feat_b, xy, padding="border")
        # 2C + 3 box-filtered channels: means per channel, second moments summed over channels
        moments = torch.cat(
            (
                a,
                b,
                (a * a).sum(1, keepdim=True),
                (b * b).sum(1, keepdim=True),
                (a * b).sum(1, keepdim=True),
            ),
            dim=1,
        )
        stats = box_mean(moments, self.radius_px)
        mu_a, mu_b = stats[:, :channels], stats[:, channels : 2 * channels]
        e_aa, e_bb, e_ab = stats[:, 2 * channels :].unbind(1)
        var_a = ((e_aa - (mu_a * mu_a).sum(1)) / channels).clamp_min(0)
        var_b = ((e_bb - (mu_b * mu_b).sum(1)) / channels).clamp_min(0)
        cov = (e_ab - (mu_a * mu_b).sum(1)) / channels
        floor = self.structure_floor
        structure = (2 * cov + floor) / (var_a + var_b + floor)
        # The centre pixels' colours: a patch straddling a motion boundary can correlate well
        # while its centre was matched across the boundary.
        colour_sq = (a - b).square().mean(1)
        colour = torch.exp(-colour_sq / (2 * self.colour_tolerance**2))
        return (structure * colour).clamp(-1, 1)


class DinoAppearance:
    """DINO / DINOv2 patch-token cosine (docs/method.md §3.2).

    Args:
        model: a `transformers` ViTModel or Dinov2Model in eval mode.
    """

    name = "dino"

    def __init__(self, model: Any) -> None:
        self.model = model
        config = model.config
        self.patch_size = int(config.patch_size)
        self.prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self._forward_kwargs = (
            {"interpolate_pos_encoding": True} if config.model_type == "vit" else {}
        )

    @torch.inference_mode()
    def features(self, frames: Tensor) -> Tensor:
        """Unit-length patch tokens of each frame, resized to whole patches first.

        Args:
            frames: (N, 3, H, W) float32 0..1 (working encoding).

        Returns:
            (N, C, h, w) float32, h·patch ≈ H; the token grid spans the whole frame.
        """
        _, _, height, width = frames.shape
        ps = self.patch_size
        rows, cols = max(1, round(height / ps)), max(1, round(width / ps))
        mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1)
        dtype = next(self.model.parameters()).dtype
        out = []
        for start in range(0, frames.shape[0], _DINO_FRAMES_PER_BATCH):
            x = frames[start : start + _DINO_FRAMES_PER_BATCH]
            x = F.interpolate(
                x, size=(rows * ps, cols * ps), mode="bilinear", align_corners=False, antialias=True
            )
            x = ((x - mean) / std).to(dtype)
            tokens = self.model(pixel_values=x, **self._forward_kwargs).last_hidden_state
            tokens = tokens[:, self.prefix_tokens :].float()
            grid = tokens.transpose(1, 2).reshape(x.shape[0], -1, rows, cols)
            out.append(F.normalize(grid, dim=1))
        return torch.cat(out)

    def similarity(self, feat_a: Tensor, feat_b: Tensor, flow_ab: Tensor) -> Tensor:
        """Cosine of the features at p (frame a) and p + flow(p) (frame b), bilinear.

        Args:
            feat_a: (B, C, h, w) tokens of frames a.
            feat_b: (B, C, h, w) tokens of frames b.
            flow_ab: (B, 2, H, W) flow a → b, working pixels.

        Returns:
            (B, H, W) float32 in [-1, 1].
        """
        batch, channels = feat_a.shape[:2]
        _, _, height, width = flow_ab.shape
        grid = pixel_grid(height, width, flow_ab.device)
        rows = max(1, _SAMPLE_BUDGET // (channels * width))
        out = torch.empty(batch, height, width, device=flow_ab.device)
        for i in range(batch):
            for y0 in range(0, height, rows):
                xy_a = grid[:, y0 : y0 + rows].unsqueeze(0)
                xy_b = xy_a + flow_ab[i : i + 1, :, y0 : y0 + rows]
                fa = _sample_token_grid(feat_a[i : i + 1], xy_a, height, width)
                fb = _sample_token_grid(feat_b[i : i + 1], xy_b, height, width)
                out[i, y0 : y0 + rows] = F.cosine_similarity(fa, fb, dim=1, eps=1e-6)[0]
        return out


def _sample_token_grid(tokens: Tensor, xy_px: Tensor, height: int, width: int) -> Tensor:
    """Bilinear tokens at working-pixel positions; the token grid spans the H×W frame, so pixel
    x sits at normalised (2x+1)/W - 1 with align_corners=False."""
    gx = (2 * xy_px[:, 0] + 1) / width - 1
    gy = (2 * xy_px[:, 1] + 1) / height - 1
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(tokens, grid, mode="bilinear", padding_mode="border", align_corners=False)


def make_appearance(settings: FlowSettings, device: str, dino: ModelRecord | None) -> Appearance:
    """The appearance backend to use: DINO when `settings` ask for it and `dino` (a resolved
    record, see `weights.resolve`) is given, else the weight-free descriptor."""
    if settings.appearance == "dino" and dino is not None:
        from rna_engine.runtime import weights

        return DinoAppearance(weights.load_dino(device, record=dino))
    return DescriptorAppearance(
        settings.descriptor_radius_px,
        settings.descriptor_structure_floor,
        settings.descriptor_colour_tolerance,
    )


def gather(features: Tensor, indices: Sequence[int]) -> Tensor:
    """Features of the frames `indices`: (N, C, h, w) → (len(indices), C, h, w)."""
    return features[torch.as_tensor(list(indices), device=features.device, dtype=torch.long)]
