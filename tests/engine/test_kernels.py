"""Tests of rna_engine/kernels: every hash-grid backend against the PyTorch reference.

The Triton kernels run on CPU under Triton's interpreter, which reads `TRITON_INTERPRET=1` when a
kernel is decorated: they run in one child process (this file with `--worker`) so the variable
never leaks into the rest of the session. The parent compares with the reference in-process.
`gpu` tests compare the compiled kernels (and tinycudann, if installed) on CUDA at full size.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rna_engine.errors import InputError
from rna_engine.model.fields import HashGrid
from rna_engine.model.kernels import available_backends, make_hash_grid, resolve_backend
from rna_engine.settings import HashGridSettings

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
REPO = Path(__file__).resolve().parents[2]

# name: (n_dims, settings, points). Resolutions in the comments: dense when res^D <= 1024.
CASES: dict[str, tuple[int, HashGridSettings, int]] = {
    # res 4..7: all dense; base 4 has scale 3, so corner 4 wraps modulo the level size.
    "dense_2d": (2, HashGridSettings(n_levels=4, log2_hashmap_size=10, base_resolution=4), 300),
    "dense_3d": (3, HashGridSettings(n_levels=4, log2_hashmap_size=10, base_resolution=4), 300),
    # res 16, 32 dense; 64, 128 hashed.
    "hashed_2d": (
        2,
        HashGridSettings(n_levels=4, log2_hashmap_size=10, base_resolution=16, per_level_scale=2.0),
        300,
    ),
    # res 4, 8 dense; 16, 32 hashed; four features per level.
    "hashed_3d_f4": (
        3,
        HashGridSettings(
            n_levels=4,
            log2_hashmap_size=10,
            base_resolution=4,
            per_level_scale=2.0,
            n_features_per_level=4,
        ),
        300,
    ),
    "hashed_2d_f1": (
        2,
        HashGridSettings(
            n_levels=3,
            log2_hashmap_size=10,
            base_resolution=16,
            per_level_scale=3.0,
            n_features_per_level=1,
        ),
        200,
    ),
}


def make_case(name: str) -> dict[str, object]:
    """Inputs of one case: parameters of order 1 (not tcnn's 1e-4) so every error shows."""
    n_dims, settings, n = CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    grid = HashGrid(n_dims, settings)
    params = torch.rand(grid.n_params, generator=gen) * 2.0 - 1.0
    # Some points outside [0, 1] (clamped, zero input gradient) and the exact corners.
    x = torch.rand(n, n_dims, generator=gen) * 1.2 - 0.1
    x[:2] = torch.tensor([[0.0] * n_dims, [1.0] * n_dims])
    grad_out = torch.randn(n, grid.n_output_dims, generator=gen)
    return {
        "n_dims": n_dims,
        "settings": dataclasses.asdict(settings),
        "params": params,
        "x": x,
        "grad_out": grad_out,
    }


def run_grid(grid: torch.nn.Module, case: dict[str, object]) -> dict[str, torch.Tensor]:
    """Forward, then backward of <out, grad_out>: output, params grad and input grad."""
    grid.params.data.copy_(case["params"])  # type: ignore[union-attr, operator]
    grid.params.grad = None  # type: ignore[union-attr]
    x = case["x"].clone().requires_grad_(True)  # type: ignore[union-attr]
    out = grid(x)
    (out * case["grad_out"]).sum().backward()
    return {
        "out": out.detach(),
        "grad_params": grid.params.grad.detach(),  # type: ignore[union-attr]
        "grad_x": x.grad.detach(),  # type: ignore[union-attr]
    }


def worker(case_dir: Path) -> None:
    """Child process: the Triton kernels (interpreted) on every case file in `case_dir`."""
    from rna_engine.model.kernels.triton_hashgrid import TritonHashGrid

    for path in sorted(case_dir.glob("*.case.pt")):
        case = torch.load(path)
        settings = HashGridSettings(**case["settings"])
        grid = TritonHashGrid(case["n_dims"], settings)
        torch.save(run_grid(grid, case), path.with_suffix("").with_suffix(".triton.pt"))


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """Triton results of every case, from one interpreter child process."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    case_dir = tmp_path_factory.mktemp("kernel_cases")
    for name in CASES:
        torch.save(make_case(name), case_dir / f"{name}.case.pt")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(case_dir)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {name: torch.load(case_dir / f"{name}.triton.pt") for name in CASES}


# -- Triton (interpreted) against the reference -------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference(
    name: str, interpreted: dict[str, dict[str, torch.Tensor]]
) -> None:
    case = make_case(name)
    grid = HashGrid(case["n_dims"], HashGridSettings(**case["settings"]))  # type: ignore[arg-type]
    ref = run_grid(grid, case)
    got = interpreted[name]
    torch.testing.assert_close(got["out"], ref["out"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["grad_params"], ref["grad_params"], rtol=1e-5, atol=1e-5)
    scale = ref["grad_x"].abs().max().item()
    torch.testing.assert_close(got["grad_x"], ref["grad_x"], rtol=1e-5, atol=1e-6 * scale)


def test_cases_cover_dense_hashed_and_clamped() -> None:
    """The cases exercise what they claim: dense and hashed levels, clamped points."""
    dense = {n: HashGrid(d, s).level_dense.tolist() for n, (d, s, _) in CASES.items()}
    assert dense["dense_2d"] == [True] * 4 and dense["dense_3d"] == [True] * 4
    assert dense["hashed_2d"] == [True, True, False, False]
    assert dense["hashed_3d_f4"] == [True, True, False, False]
    case = make_case("hashed_2d")
    outside = ((case["x"] < 0) | (case["x"] > 1)).any(1)  # type: ignore[operator]
    assert 0 < int(outside.sum()) < len(outside)  # type: ignore[arg-type]


def test_reference_input_gradient_is_the_derivative() -> None:
    """The reference's autograd input gradient equals a central difference.

    The encoding is linear along each axis inside a cell, so a central difference is exact up
    to float32 rounding for points whose ±eps stay in the same cell at every level.
    """
    n_dims, settings, _ = CASES["hashed_2d"]
    grid = HashGrid(n_dims, settings)
    case = make_case("hashed_2d")
    grid.params.data.copy_(case["params"])  # type: ignore[arg-type]
    eps = 1e-3
    x = (torch.rand(400, n_dims, generator=torch.Generator().manual_seed(3)) * 0.9 + 0.05).double()
    pos = x[:, None, :] * grid.level_scale.double()[None, :, None] + 0.5
    safe = ((pos - eps * grid.level_scale.double()[None, :, None]).floor() == pos.floor()) & (
        (pos + eps * grid.level_scale.double()[None, :, None]).floor() == pos.floor()
    )
    x = x[safe.all(2).all(1)].float()
    assert len(x) > 100
    weights = torch.randn(grid.n_output_dims, generator=torch.Generator().manual_seed(4))
    xg = x.clone().requires_grad_(True)
    (grid(xg) @ weights).sum().backward()
    for d in range(n_dims):
        step = torch.zeros(n_dims)
        step[d] = eps
        with torch.no_grad():
            fd = ((grid(x + step) - grid(x - step)) @ weights) / (2 * eps)
        torch.testing.assert_close(xg.grad[:, d], fd, rtol=2e-3, atol=2e-2)


# -- layout and factory --------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("n_dims", [2, 3])
def test_state_dict_round_trip(n_dims: int) -> None:
    """A reference state dict loads into TritonHashGrid and back, unchanged, same keys."""
    from rna_engine.model.kernels.triton_hashgrid import TritonHashGrid

    _, settings, _ = CASES["hashed_2d"]
    ref = HashGrid(n_dims, settings)
    ref.params.data.uniform_(-1.0, 1.0)
    tri = TritonHashGrid(n_dims, settings)
    assert tri.params.shape == ref.params.shape
    assert set(tri.state_dict()) == set(ref.state_dict()) == {"params"}
    tri.load_state_dict(ref.state_dict())
    assert torch.equal(tri.params, ref.params)
    tri.params.data.mul_(-2.0)
    back = HashGrid(n_dims, settings)
    back.load_state_dict(tri.state_dict())
    assert torch.equal(back.params, ref.params * -2.0)
    # Level table: offsets/size/resolution/dense as the reference's buffers.
    assert tri.level_meta.tolist() == [
        [int(o), int(s), int(r), int(d)]
        for o, s, r, d in zip(
            ref.level_offset, ref.level_size, ref.level_res, ref.level_dense, strict=True
        )
    ]


@needs_triton
def test_triton_on_cpu_without_interpreter_falls_back_to_reference() -> None:
    """In this process TRITON_INTERPRET is unset: CPU input gives the reference's output."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter enabled in this process")
    from rna_engine.model.kernels.triton_hashgrid import TritonHashGrid

    n_dims, settings, _ = CASES["dense_2d"]
    ref = HashGrid(n_dims, settings)
    tri = TritonHashGrid(n_dims, settings)
    tri.load_state_dict(ref.state_dict())
    x = torch.rand(50, n_dims)
    assert torch.equal(tri(x), ref(x))


def test_factory_on_cpu() -> None:
    settings = CASES["dense_2d"][1]
    grid = make_hash_grid(2, settings, "auto", device="cpu")
    assert type(grid) is HashGrid and grid.params.device.type == "cpu"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert type(make_hash_grid(3, settings, "torch", device="cpu")) is HashGrid


def test_factory_rejects_unknown_or_unusable_backend() -> None:
    settings = CASES["dense_2d"][1]
    with pytest.raises(InputError, match="fit.encoding_backend: unknown backend 'cuda'"):
        make_hash_grid(2, settings, "cuda", device="cpu")
    with pytest.raises(InputError, match="tcnn cannot run on cpu"):
        make_hash_grid(2, settings, "tcnn", device="cpu")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(InputError, match="triton cannot run on cpu"):
            make_hash_grid(2, settings, "triton", device="cpu")


def test_available_backends_on_cpu() -> None:
    got = available_backends("cpu")
    assert got["torch"] == torch.__version__
    assert got["tcnn"] is False
    assert got["auto"] == "torch"
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert got["triton"] is False


# -- CUDA: compiled kernels at full size ---------------------------------------------------

FULL = HashGridSettings()  # 16 levels, 2^15 entries, base 16, scale 1.25


def cuda_case(n_dims: int, n: int = 65536) -> dict[str, object]:
    gen = torch.Generator().manual_seed(7 + n_dims)
    grid = HashGrid(n_dims, FULL)
    return {
        "params": (torch.rand(grid.n_params, generator=gen) * 2.0 - 1.0).cuda(),
        "x": torch.rand(n, n_dims, generator=gen).cuda(),
        "grad_out": torch.randn(n, grid.n_output_dims, generator=gen).cuda(),
    }


def assert_matches(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float):
    """Forward to `rtol` relative; gradients to 10·rtol of their largest magnitude."""
    for key, tol in (("out", rtol), ("grad_params", 10 * rtol), ("grad_x", 10 * rtol)):
        scale = ref[key].abs().max().item()
        torch.testing.assert_close(got[key], ref[key], rtol=tol, atol=tol * scale, msg=key)


@pytest.mark.gpu
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n_dims", [2, 3])
def test_triton_matches_reference_cuda(n_dims: int) -> None:
    from rna_engine.model.kernels.triton_hashgrid import TritonHashGrid

    case = cuda_case(n_dims)
    ref = run_grid(HashGrid(n_dims, FULL).cuda(), case)
    got = run_grid(TritonHashGrid(n_dims, FULL).cuda(), case)
    assert_matches(got, ref, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n_dims", [2, 3])
def test_tcnn_matches_reference_cuda(n_dims: int) -> None:
    """tinycudann computes pos with an FMA: points on a cell edge may differ in gradient."""
    from rna_engine.model.kernels.tcnn_hashgrid import TcnnHashGrid, load_tinycudann

    if load_tinycudann()[0] is None:
        pytest.skip("tinycudann is not installed")
    case = cuda_case(n_dims)
    ref = run_grid(HashGrid(n_dims, FULL).cuda(), case)
    got = run_grid(TcnnHashGrid(n_dims, FULL).cuda(), case)
    torch.testing.assert_close(got["out"], ref["out"], rtol=1e-4, atol=1e-4)
    scale = ref["grad_params"].abs().max().item()
    torch.testing.assert_close(got["grad_params"], ref["grad_params"], rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_backend_on_cuda_is_fast_when_available() -> None:
    got = available_backends("cuda")
    expected = "tcnn" if got["tcnn"] else "triton" if got["triton"] else "torch"
    assert got["auto"] == expected
    grid = make_hash_grid(2, FULL, "auto", device="cuda")
    assert grid.params.is_cuda


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(Path(sys.argv[2]))
