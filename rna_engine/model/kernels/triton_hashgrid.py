"""Triton backend of the multiresolution hash encoding (fields.HashGrid's function and layout).

Same parameters, buffers and output as `fields.HashGrid`: one flat float32 `params` vector in
tinycudann's layout, input (N, D) clamped to [0, 1], output (N, L·F) float32. One kernel launch
computes every level (grid: point blocks × levels); the backward is one launch too and gives the
gradient wrt `params` (float32 atomic adds) and wrt the input positions (the atlas grid's input
is T's uv, so the reconstruction loss reaches T through it).

Convention (tinycudann's): level l has `scale = base·s^l − 1` and `pos = x·scale + 0.5`; the
corners of `floor(pos)` are looked up densely (`Σ_d c_d·res^d`) when `res^D` fits the level,
else by the XOR of `c_d·prime_d` in uint32; either index is taken modulo the level's size.
Weights are (bi/tri)linear in `frac = pos − floor(pos)`, so
`∂out/∂x_d = scale · Σ_corners feature · ∂w/∂frac_d` and the clamp passes gradient only for
x in [0, 1] (as `torch.clamp` does).

Without CUDA, `TRITON_INTERPRET=1` (set before triton is first imported) runs the kernels on CPU
tensors, slowly: the tests use it.
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from rna_engine.model.fields import HashGrid
from rna_engine.settings import HashGridSettings

log = logging.getLogger(__name__)

BLOCK_POINTS = 128
"""Points per program; one point per thread at 4 warps."""
NUM_WARPS = 4
FP_FUSION = False
"""No FMA contraction: `x·scale + 0.5` rounds as PyTorch's two ops do, so `floor` picks the same
cell as the reference (an FMA moves points within an ulp of a cell edge to the next cell, where
the input gradient jumps)."""


def interpreter_enabled() -> bool:
    """True when Triton runs kernels on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _corner(
    i0, i1, i2, f0, f1, f2, size, res, dense, C: tl.constexpr, D: tl.constexpr
):  # pragma: no cover - compiled
    """Table row (uint32, within the level) and the per-axis weights of corner `C`."""
    if C % 2 == 1:
        c0 = i0 + 1
        w0 = f0
    else:
        c0 = i0
        w0 = 1.0 - f0
    if (C // 2) % 2 == 1:
        c1 = i1 + 1
        w1 = f1
    else:
        c1 = i1
        w1 = 1.0 - f1
    if D == 3:
        if (C // 4) % 2 == 1:
            c2 = i2 + 1
            w2 = f2
        else:
            c2 = i2
            w2 = 1.0 - f2
        dense_row = c0 + c1 * res + c2 * (res * res)
        hashed_row = c0 ^ (c1 * 2654435761) ^ (c2 * 805459861)
    else:
        c2 = i2
        w2 = 1.0
        dense_row = c0 + c1 * res
        hashed_row = c0 ^ (c1 * 2654435761)
    row = tl.where(dense, dense_row, hashed_row) % size
    return row, w0, w1, w2


@triton.jit
def _positions(x_ptr, offs, valid, scale, d: tl.constexpr, D: tl.constexpr):  # pragma: no cover
    """Clamped input, cell (uint32) and fraction of axis `d`, and whether x was inside [0, 1]."""
    x = tl.load(x_ptr + offs * D + d, mask=valid, other=0.0)
    inside = (x >= 0.0) & (x <= 1.0)
    pos = tl.minimum(tl.maximum(x, 0.0), 1.0) * scale + 0.5
    cell = tl.floor(pos)
    return cell.to(tl.int32).to(tl.uint32), pos - cell, inside


@triton.jit
def _hashgrid_fwd_kernel(
    x_ptr,  # (N, D) float32
    params_ptr,  # (n_params,) float32
    meta_ptr,  # (L, 4) int32: entry offset, size, resolution, dense
    scale_ptr,  # (L,) float32
    out_ptr,  # (N, L·F) float32
    n_points,
    D: tl.constexpr,
    F: tl.constexpr,
    L: tl.constexpr,
    BLOCK: tl.constexpr,
):  # pragma: no cover - compiled
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    level = tl.program_id(1)
    valid = offs < n_points
    feat = tl.arange(0, F)
    scale = tl.load(scale_ptr + level)
    base = tl.load(meta_ptr + level * 4)
    size = tl.load(meta_ptr + level * 4 + 1).to(tl.uint32)
    res = tl.load(meta_ptr + level * 4 + 2).to(tl.uint32)
    dense = tl.load(meta_ptr + level * 4 + 3) != 0
    i0, f0, _ = _positions(x_ptr, offs, valid, scale, 0, D)
    i1, f1, _ = _positions(x_ptr, offs, valid, scale, 1, D)
    if D == 3:
        i2, f2, _ = _positions(x_ptr, offs, valid, scale, 2, D)
    else:
        i2 = i1
        f2 = f1
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for c in tl.static_range(2**D):
        row, w0, w1, w2 = _corner(i0, i1, i2, f0, f1, f2, size, res, dense, c, D)
        entry = base + row.to(tl.int32)
        vals = tl.load(
            params_ptr + entry[:, None] * F + feat[None, :], mask=valid[:, None], other=0.0
        )
        acc += vals * (w0 * w1 * w2)[:, None]
    out = out_ptr + offs[:, None] * (L * F) + level * F + feat[None, :]
    tl.store(out, acc, mask=valid[:, None])


@triton.jit
def _hashgrid_bwd_kernel(
    x_ptr,  # (N, D) float32
    params_ptr,  # (n_params,) float32
    meta_ptr,  # (L, 4) int32
    scale_ptr,  # (L,) float32
    grad_out_ptr,  # (N, L·F) float32
    grad_params_ptr,  # (n_params,) float32, zeroed, accumulated atomically
    grad_x_ptr,  # (N, D) float32, zeroed, accumulated atomically over levels
    n_points,
    D: tl.constexpr,
    F: tl.constexpr,
    L: tl.constexpr,
    BLOCK: tl.constexpr,
    NEED_PARAMS: tl.constexpr,
    NEED_X: tl.constexpr,
):  # pragma: no cover - compiled
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    level = tl.program_id(1)
    valid = offs < n_points
    feat = tl.arange(0, F)
    scale = tl.load(scale_ptr + level)
    base = tl.load(meta_ptr + level * 4)
    size = tl.load(meta_ptr + level * 4 + 1).to(tl.uint32)
    res = tl.load(meta_ptr + level * 4 + 2).to(tl.uint32)
    dense = tl.load(meta_ptr + level * 4 + 3) != 0
    i0, f0, in0 = _positions(x_ptr, offs, valid, scale, 0, D)
    i1, f1, in1 = _positions(x_ptr, offs, valid, scale, 1, D)
    if D == 3:
        i2, f2, in2 = _positions(x_ptr, offs, valid, scale, 2, D)
    else:
        i2 = i1
        f2 = f1
        in2 = in1
    g = tl.load(
        grad_out_ptr + offs[:, None] * (L * F) + level * F + feat[None, :],
        mask=valid[:, None],
        other=0.0,
    )
    dx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in tl.static_range(2**D):
        row, w0, w1, w2 = _corner(i0, i1, i2, f0, f1, f2, size, res, dense, c, D)
        entry = (base + row.to(tl.int32))[:, None] * F + feat[None, :]
        if NEED_PARAMS:
            tl.atomic_add(
                grad_params_ptr + entry,
                g * (w0 * w1 * w2)[:, None],
                mask=valid[:, None],
                sem="relaxed",
            )
        if NEED_X:
            vals = tl.load(params_ptr + entry, mask=valid[:, None], other=0.0)
            g_dot = tl.sum(vals * g, axis=1)
            # ∂w/∂frac_d: the other axes' weights, sign + for the upper corner.
            if c % 2 == 1:
                dx0 += g_dot * w1 * w2
            else:
                dx0 -= g_dot * w1 * w2
            if (c // 2) % 2 == 1:
                dx1 += g_dot * w0 * w2
            else:
                dx1 -= g_dot * w0 * w2
            if D == 3:
                if (c // 4) % 2 == 1:
                    dx2 += g_dot * w0 * w1
                else:
                    dx2 -= g_dot * w0 * w1
    if NEED_X:
        tl.atomic_add(
            grad_x_ptr + offs * D, tl.where(in0, dx0 * scale, 0.0), mask=valid, sem="relaxed"
        )
        tl.atomic_add(
            grad_x_ptr + offs * D + 1, tl.where(in1, dx1 * scale, 0.0), mask=valid, sem="relaxed"
        )
        if D == 3:
            tl.atomic_add(
                grad_x_ptr + offs * D + 2,
                tl.where(in2, dx2 * scale, 0.0),
                mask=valid,
                sem="relaxed",
            )


def _launch_grid(n_points: int, n_levels: int) -> tuple[int, int]:
    return (triton.cdiv(n_points, BLOCK_POINTS), n_levels)


class _HashGridFunction(torch.autograd.Function):
    """Autograd over the two kernels; inputs already float32 and contiguous."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        params: Tensor,
        level_meta: Tensor,
        level_scale: Tensor,
        n_features: int,
    ) -> Tensor:
        n, d = x.shape
        n_levels = level_meta.shape[0]
        out = torch.empty((n, n_levels * n_features), dtype=torch.float32, device=x.device)
        if n > 0:
            _hashgrid_fwd_kernel[_launch_grid(n, n_levels)](
                x,
                params,
                level_meta,
                level_scale,
                out,
                n,
                D=d,
                F=n_features,
                L=n_levels,
                BLOCK=BLOCK_POINTS,
                num_warps=NUM_WARPS,
                enable_fp_fusion=FP_FUSION,
            )
        ctx.save_for_backward(x, params, level_meta, level_scale)
        ctx.n_features = n_features
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, params, level_meta, level_scale = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        n, d = x.shape
        n_levels = level_meta.shape[0]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_params = torch.zeros_like(params) if need_params else None
        if n > 0 and (need_x or need_params):
            grad_out = grad_out.float().contiguous()
            # Unused pointers still need a tensor; the constexpr flags skip their stores.
            _hashgrid_bwd_kernel[_launch_grid(n, n_levels)](
                x,
                params,
                level_meta,
                level_scale,
                grad_out,
                grad_params if grad_params is not None else params,
                grad_x if grad_x is not None else x,
                n,
                D=d,
                F=ctx.n_features,  # type: ignore[attr-defined]
                L=n_levels,
                BLOCK=BLOCK_POINTS,
                NEED_PARAMS=bool(need_params),
                NEED_X=bool(need_x),
                num_warps=NUM_WARPS,
                enable_fp_fusion=FP_FUSION,
            )
        return grad_x, grad_params, None, None, None


def hash_grid_triton(
    x: Tensor, params: Tensor, level_meta: Tensor, level_scale: Tensor, n_features: int
) -> Tensor:
    """Multiresolution hash encoding with the Triton kernels, differentiable in `x` and `params`.

    Args:
        x: (N, D) positions, D = 2 or 3, any float dtype; clamped to [0, 1].
        params: (n_params,) float32, tinycudann's layout (fields.HashGrid).
        level_meta: (L, 4) int32 per level: entry offset, entries, resolution, dense (0/1).
        level_scale: (L,) float32, `base·s^l − 1`.
        n_features: F, features per level (1, 2, 4 or 8).

    Returns:
        (N, L·F) float32.
    """
    if x.dim() != 2 or x.shape[1] not in (2, 3):
        raise ValueError(f"hash grid input must be (N, 2) or (N, 3), got {tuple(x.shape)}")
    if params.dtype != torch.float32:
        raise ValueError(f"hash grid params must be float32, got {params.dtype}")
    x32 = x.float().contiguous()
    return _HashGridFunction.apply(
        x32, params.contiguous(), level_meta.contiguous(), level_scale.contiguous(), n_features
    )


class TritonHashGrid(HashGrid):
    """`fields.HashGrid` computed by the Triton kernels: same `params`, buffers and output.

    A state dict of either class loads into the other. CUDA tensors run the compiled kernels;
    CPU tensors run them under `TRITON_INTERPRET=1` and otherwise fall back to the reference.

    Args:
        n_dims: 2 (atlas) or 3 (mask).
        settings: levels, features, table size, base resolution, per-level scale.
    Input: (N, n_dims) in [0, 1] (clamped). Output: (N, n_levels · F) float32.
    """

    graph_safe = True
    """Fixed-size launches and no host synchronisation: the fit captures its step."""

    def __init__(self, n_dims: int, settings: HashGridSettings) -> None:
        super().__init__(n_dims, settings)
        if self.n_params >= 2**31:
            raise ValueError(f"hash grid has {self.n_params} parameters; Triton indexes int32")
        meta = torch.stack(
            [self.level_offset, self.level_size, self.level_res, self.level_dense.long()], 1
        )
        self.register_buffer("level_meta", meta.to(torch.int32).contiguous(), False)
        self._warned_fallback = False

    def forward(self, x: Tensor) -> Tensor:
        if not (x.is_cuda or interpreter_enabled()):
            if not self._warned_fallback:
                log.warning("TritonHashGrid on %s without TRITON_INTERPRET: reference", x.device)
                self._warned_fallback = True
            return super().forward(x)
        return hash_grid_triton(x, self.params, self.level_meta, self.level_scale, self.n_features)
