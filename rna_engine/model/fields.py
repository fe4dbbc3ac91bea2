"""The four RNA fields — UV mapping T, atlas A, mask M, illumination S (docs/method.md §1).

`HashGrid` is the PyTorch reference of the multiresolution hash encoding. Its parameters are one
flat vector in tinycudann's layout (levels one after another; a level holds
`min(next_multiple_of_8(res^D), 2^log2_hashmap_size)` entries × F features, entry-major), so a
tinycudann `Encoding`'s `params` load unchanged and every fast backend in `kernels/` computes the
same function on the same tensor (the tests compare them).

Coordinates: `xyt_norm` is docs/method.md §1.2's normalisation — x and y divided
by half the long side minus 1, t̃ = t/(N/2) − 1 — and `uv_norm` is T's output in (−1, 1), which
the position loss pins to the reference frame's `xy_norm`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from rna_engine.settings import FitSettings, HashGridSettings

PRIMES = (1, 2654435761, 805459861, 3674653429)
"""tinycudann's coherent prime hash, one prime per dimension."""


def level_resolutions(settings: HashGridSettings) -> list[int]:
    """Grid resolution of every level, tinycudann's rule `ceil(base·s^l − 1) + 1`."""
    out = []
    for level in range(settings.n_levels):
        scale = settings.base_resolution * settings.per_level_scale**level - 1.0
        out.append(int(math.ceil(scale)) + 1)
    return out


def capped_levels(settings: HashGridSettings, cells: float) -> HashGridSettings:
    """`settings` with the levels whose resolution exceeds `cells` dropped (at least one kept);
    `cells` ≤ 0: unchanged."""
    if cells <= 0:
        return settings
    keep = sum(1 for res in level_resolutions(settings) if res - 1 <= cells)
    return replace(settings, n_levels=max(1, keep))


def level_sizes(settings: HashGridSettings, n_dims: int) -> list[int]:
    """Entries of every level: dense when it fits the table, else the hash table size."""
    table = 2**settings.log2_hashmap_size
    sizes = []
    for res in level_resolutions(settings):
        dense = res**n_dims
        dense = (dense + 7) // 8 * 8
        sizes.append(min(dense, table))
    return sizes


class HashGrid(nn.Module):
    """Multiresolution hash encoding, PyTorch reference (the CPU path and the ground truth).

    Args:
        n_dims: input dimensions (2 for the atlas, 3 for the mask).
        settings: levels, features, table size, base resolution, per-level scale.
    Input: (N, n_dims) float32 in [0, 1] (clamped). Output: (N, n_levels · F) float32.
    """

    graph_safe = False
    """Whether a step through this grid can be captured as a CUDA graph. The reference's
    backward is not capture-safe (its capture failed on an H100), so it runs eagerly."""

    def __init__(self, n_dims: int, settings: HashGridSettings) -> None:
        super().__init__()
        if n_dims not in (2, 3):
            raise ValueError("HashGrid supports 2 or 3 input dimensions")
        self.n_dims = n_dims
        self.settings = settings
        sizes = level_sizes(settings, n_dims)
        self.n_features = settings.n_features_per_level
        self.n_output_dims = settings.n_levels * self.n_features
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        res = level_resolutions(settings)
        self.register_buffer("level_offset", torch.tensor(offsets[:-1], dtype=torch.int64), False)
        self.register_buffer("level_size", torch.tensor(sizes, dtype=torch.int64), False)
        self.register_buffer("level_res", torch.tensor(res, dtype=torch.int64), False)
        self.register_buffer(
            "level_scale",
            torch.tensor(
                [
                    settings.base_resolution * settings.per_level_scale**lv - 1.0
                    for lv in range(settings.n_levels)
                ],
                dtype=torch.float32,
            ),
            False,
        )
        dense = [r**n_dims <= s for r, s in zip(res, sizes, strict=True)]
        self.register_buffer("level_dense", torch.tensor(dense), False)
        corners = torch.tensor(
            [[(c >> d) & 1 for d in range(n_dims)] for c in range(2**n_dims)], dtype=torch.int64
        )
        self.register_buffer("corners", corners, False)
        self.register_buffer("primes", torch.tensor(PRIMES[:n_dims], dtype=torch.int64), False)
        self.n_params = offsets[-1] * self.n_features
        # tinycudann's default initialisation: uniform in ±1e-4.
        self.params = nn.Parameter(torch.empty(self.n_params).uniform_(-1e-4, 1e-4))

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"n_dims={self.n_dims}, levels={s.n_levels}, features={s.n_features_per_level}, "
            f"log2_T={s.log2_hashmap_size}, base={s.base_resolution}, "
            f"scale={s.per_level_scale}, params={self.n_params}"
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.float().clamp(0.0, 1.0)
        n = x.shape[0]
        # (N, L, D): tinycudann's positions, pos = x·scale + 0.5, cell = floor(pos).
        pos = x[:, None, :] * self.level_scale[None, :, None] + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        cell = cell.to(torch.int64)
        # (N, L, C, D) corner coordinates and (N, L, C) trilinear weights.
        corner = cell[:, :, None, :] + self.corners[None, None, :, :]
        w = torch.where(
            self.corners[None, None, :, :] == 1, frac[:, :, None, :], 1.0 - frac[:, :, None, :]
        ).prod(-1)
        res = self.level_res[None, :, None]
        stride = torch.ones_like(corner[..., 0])
        dense_index = torch.zeros_like(corner[..., 0])
        for d in range(self.n_dims):
            dense_index = dense_index + corner[..., d] * stride
            stride = stride * res
        hashed = torch.zeros_like(corner[..., 0])
        for d in range(self.n_dims):
            hashed = hashed ^ (corner[..., d] * self.primes[d])
        index = torch.where(self.level_dense[None, :, None], dense_index, hashed)
        index = (
            torch.remainder(index, self.level_size[None, :, None])
            + self.level_offset[None, :, None]
        )
        table = self.params.view(-1, self.n_features)
        # embedding's backward accumulates with index_add: far faster than index_put on the CPU.
        feats = nn.functional.embedding(index, table)  # (N, L, C, F)
        out = (feats * w[..., None]).sum(2)  # (N, L, F)
        return out.reshape(n, self.n_output_dims)


def mlp(n_in: int, width: int, n_out: int, n_linear: int = 4) -> nn.Sequential:
    """`n_linear` Linear layers with ReLU between them (docs/method.md §1.3: 4 linear layers)."""
    layers: list[nn.Module] = []
    dims = [n_in] + [width] * (n_linear - 1)
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-1], n_out))
    return nn.Sequential(*layers)


class RNAFields(nn.Module):
    """T, A, M and S with the authors' architecture (docs/method.md §1.3).

    Args:
        settings: widths and hash-grid settings.
        atlas_box: (u0, v0, u1, v1) the uv_norm box the atlas grid spans (the ROI's neighbourhood
            on the reference frame), so the grid's cells are spent on the ROI, not on the empty
            rest of [−1, 1]² (docs/method.md §1.3: only ~107 of 455 finest cells cover a typical ROI).
        xy_extent: (x_max, y_max) of xy_norm, so the mask grid's y axis spans the frame
            (docs/method.md §1.3: a 16:9 frame otherwise uses only 56 % of it).
        grid_factory: builds a hash grid (`kernels.make_hash_grid`); default the reference.
        camera: (N, 3, 3) homographies on xy_norm, frame t → reference (`camera.normalised`):
            T becomes camera base + residual (`uv`); None: the authors' tanh(MLP(x, y, t)).
        frame_grade: (n_frames, reference index): a free per-frame, per-channel gain and offset
            on S·A (`shaded`), the identity on the reference frame; None: the authors' Î = S·A.
        atlas_grid: the atlas grid's own settings (`capped_levels`); None: `settings.hash_grid`.
    """

    def __init__(
        self,
        settings: FitSettings,
        atlas_box: tuple[float, float, float, float] = (-1.0, -1.0, 1.0, 1.0),
        xy_extent: tuple[float, float] = (1.0, 1.0),
        grid_factory: object | None = None,
        camera: Tensor | None = None,
        frame_grade: tuple[int, int] | None = None,
        atlas_grid: HashGridSettings | None = None,
    ) -> None:
        super().__init__()
        make = grid_factory or (lambda d, s: HashGrid(d, s))
        self.mapping = mlp(3, settings.mapping_width, 2)
        empty = torch.zeros(0, 3, 3)
        self.register_buffer("camera", empty if camera is None else camera.float().clone())
        if camera is not None:  # the residual starts at 0: T starts as the camera prior
            last = self.mapping[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        # [OURS] a grade per frame and channel, Î = gain · S·A + offset (exposure is an offset in
        # the log working encoding, a gain in a display one); the reference frame's stays the
        # identity: the atlas is the surface as lit there (the gauge).
        n_grade, r_grade = frame_grade if frame_grade is not None else (0, 0)
        self.log_gain = nn.Parameter(torch.zeros(n_grade, 3))
        self.offset = nn.Parameter(torch.zeros(n_grade, 3))
        free = torch.ones(n_grade, 1)
        if n_grade:
            free[r_grade] = 0.0
        self.register_buffer("grade_free", free)
        self.atlas_grid = make(2, atlas_grid or settings.hash_grid)  # type: ignore[operator]
        self.atlas_mlp = mlp(self.atlas_grid.n_output_dims, settings.atlas_width, 3)
        self.mask_grid = make(3, settings.hash_grid)  # type: ignore[operator]
        self.mask_mlp = mlp(self.mask_grid.n_output_dims, settings.mask_width, 1)
        self.shade_mlp = mlp(3, settings.shade_width, 3)
        u0, v0, u1, v1 = atlas_box
        self.register_buffer("atlas_lo", torch.tensor([u0, v0]), False)
        self.register_buffer("atlas_span", torch.tensor([u1 - u0, v1 - v0]), False)
        self.register_buffer("xy_lo", torch.tensor([-1.0, -1.0, -1.0]), False)
        self.register_buffer(
            "xy_span", torch.tensor([xy_extent[0] + 1.0, xy_extent[1] + 1.0, 2.0]), False
        )

    @property
    def has_camera(self) -> bool:
        return self.camera.shape[0] > 0

    @staticmethod
    def _frame_index(t_norm: Tensor, n: int) -> Tensor:
        """t̃ → nearest frame index in 0…n−1 (t̃ = t / (n/2) − 1)."""
        return ((t_norm + 1.0) * (n / 2.0)).round().long().clamp(0, n - 1)

    def camera_base(self, xyt_norm: Tensor) -> Tensor:
        """(N, 3) xyt_norm at integer frames → (N, 2) the camera prior's uv_norm (the identity
        without a prior). The frame index is t̃'s nearest frame."""
        if not self.has_camera:
            return xyt_norm[:, :2]
        h = self.camera[self._frame_index(xyt_norm[:, 2], self.camera.shape[0])]  # (N, 3, 3)
        x, y = xyt_norm[:, 0], xyt_norm[:, 1]
        den = h[:, 2, 0] * x + h[:, 2, 1] * y + h[:, 2, 2]
        u = (h[:, 0, 0] * x + h[:, 0, 1] * y + h[:, 0, 2]) / den
        v = (h[:, 1, 0] * x + h[:, 1, 1] * y + h[:, 1, 2]) / den
        return torch.stack([u, v], 1)

    def uv(self, xyt_norm: Tensor) -> Tensor:
        """T: (N, 3) xyt_norm → (N, 2) uv_norm: tanh(MLP(x, y, t)) in (−1, 1), or with a camera
        prior the prior's uv plus the MLP's residual at that uv and t (unbounded)."""
        if not self.has_camera:
            return torch.tanh(self.mapping(xyt_norm))
        base = self.camera_base(xyt_norm)
        return base + self.mapping(torch.cat([base, xyt_norm[:, 2:3]], 1))

    def atlas(self, uv_norm: Tensor) -> Tensor:
        """A: (N, 2) uv_norm → (N, 3) working-encoded colour in (0, 1)."""
        grid_in = (uv_norm - self.atlas_lo) / self.atlas_span
        return torch.sigmoid(2.0 * self.atlas_mlp(self.atlas_grid(grid_in)))

    def mask(self, xyt_norm: Tensor) -> Tensor:
        """M: (N, 3) xyt_norm → (N,) in [1e-5, 1 − 1e-5]."""
        grid_in = (xyt_norm - self.xy_lo) / self.xy_span
        m = torch.sigmoid(2.0 * self.mask_mlp(self.mask_grid(grid_in))[:, 0])
        return m.clamp(1e-5, 1.0 - 1e-5)

    def shade(self, uv_norm: Tensor, t_norm: Tensor) -> Tensor:
        """S: (N, 2) uv_norm (detached by the caller) and (N,) t̃ → (N, 3) positive multiplier."""
        return nn.functional.softplus(self.shade_mlp(torch.cat([uv_norm, t_norm[:, None]], 1)))

    def grade(self, t_norm: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) t̃ → the frame grade's gain and offset, (N, 3) each (1 and 0 without one)."""
        n = self.log_gain.shape[0]
        if n == 0:
            ones = torch.ones(t_norm.shape[0], 3, device=t_norm.device, dtype=t_norm.dtype)
            return ones, torch.zeros_like(ones)
        i = self._frame_index(t_norm, n)
        free = self.grade_free[i]
        return torch.exp(self.log_gain[i] * free), self.offset[i] * free

    def shaded(self, shade: Tensor, atlas: Tensor, t_norm: Tensor) -> Tensor:
        """Î before the matte: the frame grade applied to S·A, (N, 3) working-encoded."""
        gain, offset = self.grade(t_norm)
        return gain * shade * atlas + offset

    def mapping_parameters(self) -> list[nn.Parameter]:
        return list(self.mapping.parameters())

    def mask_parameters(self) -> list[nn.Parameter]:
        return list(self.mask_grid.parameters()) + list(self.mask_mlp.parameters())
