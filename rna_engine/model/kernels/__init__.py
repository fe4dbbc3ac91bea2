"""Fast hash-grid backends behind one factory; every one computes `fields.HashGrid`'s function.

Backends: "torch" (`fields.HashGrid`, always), "triton" (`triton_hashgrid.TritonHashGrid`,
CUDA, or CPU under `TRITON_INTERPRET=1` for tests), "tcnn" (`tcnn_hashgrid.TcnnHashGrid`,
CUDA with tinycudann installed). All share the reference's `params` layout, so a state dict
written by one loads into any other. "auto" picks tcnn, then triton, on CUDA, else torch.
The backend modules are imported only when used: importing triton or tinycudann is slow, and
tinycudann raises without CUDA.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn

from rna_engine.errors import InputError
from rna_engine.model.fields import HashGrid
from rna_engine.settings import HashGridSettings

log = logging.getLogger(__name__)

BACKENDS = ("torch", "triton", "tcnn")
"""Backend names `make_hash_grid` accepts besides "auto"."""


@functools.cache
def _triton_version() -> str | None:
    """triton's version when it imports, else None; probed once per process."""
    try:
        import triton
    except (ImportError, OSError, RuntimeError) as err:
        log.debug("triton unavailable: %s", err)
        return None
    return str(triton.__version__)


def _tcnn_version() -> str | None:
    from .tcnn_hashgrid import load_tinycudann

    tcnn, _ = load_tinycudann()
    if tcnn is None:
        return None
    return str(getattr(tcnn, "__version__", "installed"))


def _interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _usable(backend: str, device: torch.device) -> str | None:
    """Version string when `backend` can run on `device`, else None."""
    if backend == "torch":
        return torch.__version__
    if backend == "triton":
        if device.type == "cuda" or (device.type == "cpu" and _interpreter()):
            return _triton_version()
        return None
    if backend == "tcnn":
        return _tcnn_version() if device.type == "cuda" else None
    raise ValueError(f"unknown hash-grid backend {backend!r}")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend "auto" (or an explicit name, checked) stands for on `device`.

    Raises:
        InputError: the name is unknown, or the backend cannot run on `device`.
    """
    if backend == "auto":
        if device.type == "cuda":
            for name in ("tcnn", "triton"):
                if _usable(name, device):
                    return name
        return "torch"
    if backend not in BACKENDS:
        raise InputError(
            f"fit.encoding_backend: unknown backend {backend!r}; use auto, {', '.join(BACKENDS)}"
        )
    if not _usable(backend, device):
        raise InputError(
            f"fit.encoding_backend: {backend} cannot run on {device.type} here "
            "(see `rna-engine doctor`); use auto or torch"
        )
    return backend


def make_hash_grid(
    n_dims: int,
    settings: HashGridSettings,
    backend: str = "auto",
    device: torch.device | str | None = None,
) -> nn.Module:
    """A hash grid (a `fields.HashGrid`) of the requested backend, on `device`.

    Args:
        n_dims: 2 (atlas) or 3 (mask).
        settings: the grid's hyperparameters.
        backend: "auto" | "torch" | "triton" | "tcnn".
        device: where the module lives; None means CUDA when available, else CPU.

    Returns:
        Module mapping (N, n_dims) in [0, 1] to (N, n_levels · F) float32, with a flat float32
        `params` in tinycudann's layout.
    """
    dev = torch.device(device) if device is not None else _default_device()
    name = resolve_backend(backend, dev)
    grid: HashGrid
    if name == "tcnn":
        from .tcnn_hashgrid import TcnnHashGrid

        grid = TcnnHashGrid(n_dims, settings)
    elif name == "triton":
        from .triton_hashgrid import TritonHashGrid

        grid = TritonHashGrid(n_dims, settings)
    else:
        grid = HashGrid(n_dims, settings)
    log.debug("hash grid %dD: %s backend on %s", n_dims, name, dev)
    return grid.to(dev)


def available_backends(device: torch.device | str | None = None) -> dict[str, bool | str]:
    """What each backend can do on `device` (default: CUDA when available), for `doctor`.

    Returns:
        {"torch": version, "triton": version or False, "tcnn": version or False,
        "auto": the backend "auto" picks}; a version string means usable (and is truthy).
    """
    dev = torch.device(device) if device is not None else _default_device()
    out: dict[str, bool | str] = {name: _usable(name, dev) or False for name in BACKENDS}
    out["auto"] = resolve_backend("auto", dev)
    return out
