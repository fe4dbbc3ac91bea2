"""Hash-grid backends: forward and forward+backward time, PyTorch reference vs Triton (vs tcnn).

Usage: python benchmarks/bench_hashgrid.py [--points 65536 262144] [--iters 20] [--sweep] [--graph]

Full-size grid (16 levels, 2^15 entries, 2 features). The 2-D grid's backward includes the
input gradient (the atlas grid's input is T's uv); the 3-D one only the params gradient (as the
mask grid). Times are CUDA-event means after warm-up, in milliseconds. `--sweep` also times
Triton block sizes; `--graph` also times the fast backends' forward+backward captured in a CUDA
graph (as the fit's `compile: graph` runs it: no launch overhead) and checks its gradients
against eager. On CPU (smoke test only) run it under TRITON_INTERPRET=1 with few points.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rna_engine.model.fields import HashGrid
from rna_engine.model.kernels import available_backends, make_hash_grid
from rna_engine.settings import HashGridSettings


def timed(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    """Mean milliseconds of `fn` after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type != "cuda":
        start_s = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - start_s) * 1e3 / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench(grid: torch.nn.Module, x: torch.Tensor, input_grad: bool, iters: int) -> tuple:
    """(forward ms, forward+backward ms) of `grid` on `x`."""
    grad_out = torch.randn(x.shape[0], grid.n_output_dims, device=x.device)

    def forward() -> None:
        with torch.no_grad():
            grid(x)

    def forward_backward() -> None:
        xi = x.detach().requires_grad_(input_grad)
        grid.params.grad = None
        (grid(xi) * grad_out).sum().backward()

    return timed(forward, iters, x.device), timed(forward_backward, iters, x.device)


def bench_graph(grid: torch.nn.Module, x: torch.Tensor, input_grad: bool, iters: int) -> tuple:
    """(ms per replay, max |graph grad − eager grad| / max |eager grad|) of forward+backward."""
    xi = x.detach().requires_grad_(input_grad)
    grad_out = torch.randn(x.shape[0], grid.n_output_dims).to(x.device)
    inputs = [grid.params] + ([xi] if input_grad else [])

    def step() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(grid(xi), inputs, grad_out)

    eager = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    ms = timed(graph.replay, iters, x.device)
    err = max(
        ((c - e).abs().max() / e.abs().max()).item() for c, e in zip(captured, eager, strict=True)
    )
    return ms, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[65536, 262144])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweep", action="store_true", help="also time Triton block sizes")
    parser.add_argument("--graph", action="store_true", help="also time CUDA-graph replay")
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = HashGridSettings()
    backends = available_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; backends {backends}")
    names = [b for b in ("torch", "triton", "tcnn") if backends[b]]
    print(f"{'backend':8} {'D':>2} {'points':>8} {'fwd ms':>9} {'fwd+bwd ms':>11} {'speed-up':>9}")
    for n_dims in (2, 3):
        ref = HashGrid(n_dims, settings).to(device)
        for n in args.points:
            x = torch.rand(n, n_dims, device=device)
            base = None
            for backend in names:
                grid = make_hash_grid(n_dims, settings, backend, device)
                grid.load_state_dict(ref.state_dict())
                fwd, both = bench(grid, x, input_grad=n_dims == 2, iters=args.iters)
                base = base or both
                print(
                    f"{backend:8} {n_dims:>2} {n:>8} {fwd:>9.3f} {both:>11.3f} {base / both:>8.1f}x"
                )
    if args.graph and device.type == "cuda":
        print(f"{'backend':8} {'D':>2} {'points':>8} {'graph fwd+bwd ms':>17} {'rel. err':>9}")
        # Not the reference: on torch 2.11 + CUDA 13 its capture is invalidated, and a failed
        # capture leaves the CUDA generator unusable for the rest of the process.
        for n_dims in (2, 3):
            for n in args.points:
                x = torch.rand(n, n_dims).to(device)
                for backend in (b for b in names if b != "torch"):
                    grid = make_hash_grid(n_dims, settings, backend, device)
                    try:
                        ms, err = bench_graph(grid, x, input_grad=n_dims == 2, iters=args.iters)
                    except RuntimeError as exc:  # a backend that cannot be captured: say so
                        print(f"{backend:8} {n_dims:>2} {n:>8} capture failed: {exc}")
                        continue
                    print(f"{backend:8} {n_dims:>2} {n:>8} {ms:>17.3f} {err:>9.1e}")
    if args.sweep and backends["triton"]:
        from rna_engine.model.kernels import triton_hashgrid as th

        print(f"{'block':>5} {'warps':>5} {'D':>2} {'points':>8} {'fwd ms':>9} {'fwd+bwd ms':>11}")
        default = (th.BLOCK_POINTS, th.NUM_WARPS)
        for block, warps in ((64, 2), (128, 4), (256, 4), (256, 8), (512, 8)):
            th.BLOCK_POINTS, th.NUM_WARPS = block, warps
            for n_dims in (2, 3):
                grid = make_hash_grid(n_dims, settings, "triton", device)
                n = max(args.points)
                x = torch.rand(n, n_dims, device=device)
                fwd, both = bench(grid, x, input_grad=n_dims == 2, iters=args.iters)
                print(f"{block:>5} {warps:>5} {n_dims:>2} {n:>8} {fwd:>9.3f} {both:>11.3f}")
        th.BLOCK_POINTS, th.NUM_WARPS = default


if __name__ == "__main__":
    main()
