"""tinycudann backend of the multiresolution hash encoding, on fields.HashGrid's `params`.

`TcnnHashGrid` is a `fields.HashGrid` whose forward runs `tinycudann.Encoding` (otype HashGrid,
linear interpolation, float32 parameters and output) on the module's own `params`, so the state
dict is the reference's: it loads both ways. The input is clamped to [0, 1] first, as the
reference does, so out-of-range points and their gradients agree too. CUDA only.

Importing tinycudann raises `EnvironmentError` (an `OSError`) without CUDA and `ImportError`
when it is not installed: `load_tinycudann` probes it once and remembers why it failed.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from rna_engine.model.fields import HashGrid
from rna_engine.settings import HashGridSettings

log = logging.getLogger(__name__)


@functools.cache
def load_tinycudann() -> tuple[ModuleType | None, str]:
    """(tinycudann, "") when it imports, else (None, why not); probed once per process."""
    try:
        import tinycudann
    except (ImportError, OSError) as err:
        log.debug("tinycudann unavailable: %s", err)
        return None, f"{type(err).__name__}: {err}"
    return tinycudann, ""


def encoding_config(settings: HashGridSettings) -> dict[str, Any]:
    """tinycudann's encoding config of `settings` (`NVlabs/tiny-cuda-nn/DOCUMENTATION.md`)."""
    return {
        "otype": "HashGrid",
        "n_levels": settings.n_levels,
        "n_features_per_level": settings.n_features_per_level,
        "log2_hashmap_size": settings.log2_hashmap_size,
        "base_resolution": settings.base_resolution,
        "per_level_scale": settings.per_level_scale,
        "interpolation": "Linear",
    }


class TcnnHashGrid(HashGrid):
    """`fields.HashGrid` computed by tinycudann: same `params`, buffers and output (float32).

    Args:
        n_dims: 2 (atlas) or 3 (mask).
        settings: levels, features, table size, base resolution, per-level scale.
    Input: (N, n_dims) CUDA tensor in [0, 1] (clamped). Output: (N, n_levels · F) float32.

    Raises:
        RuntimeError: tinycudann does not import, or its parameter count differs from the
            reference layout's (then the two would not share a state dict).
    """

    def __init__(self, n_dims: int, settings: HashGridSettings) -> None:
        super().__init__(n_dims, settings)
        tcnn, why = load_tinycudann()
        if tcnn is None:
            raise RuntimeError(f"tinycudann is not available ({why})")
        encoding = tcnn.Encoding(n_dims, encoding_config(settings), dtype=torch.float32)
        n_tcnn = encoding.params.numel()
        if n_tcnn != self.n_params or encoding.n_output_dims != self.n_output_dims:
            raise RuntimeError(
                f"tinycudann HashGrid has {n_tcnn} params and {encoding.n_output_dims} outputs, "
                f"the reference layout {self.n_params} and {self.n_output_dims}"
            )
        # Not a registered submodule: the state dict holds only our `params`, which the
        # encoding reads instead of its own (its forward takes `self.params`).
        encoding._parameters["params"] = self.params
        object.__setattr__(self, "_encoding", encoding)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_cuda or not self.params.is_cuda:
            raise RuntimeError("TcnnHashGrid needs CUDA tensors; move the module and input")
        encoding = self._encoding
        if encoding._parameters["params"] is not self.params:
            encoding._parameters["params"] = self.params
        out = encoding(x.float().clamp(0.0, 1.0).contiguous())
        return out.float()
