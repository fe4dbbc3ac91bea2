"""Make a CUDA build of torchvision importable beside a CPU torch, for the RAFT tests.

The package index has only CUDA builds of torchvision for Linux. Beside CI's CPU torch its
compiled operators (`_C.so`, linked to libc10_cuda) fail to load, and its import then stops at
`register_fake("torchvision::nms")` for an operator that was never defined. RAFT uses none of
those operators, so declaring the two schemas that torchvision registers fake kernels for
unconditionally lets its Python modules import; any call of a real torchvision operator would
still fail loudly. Nothing is declared when torchvision imports on its own.
"""

from __future__ import annotations

import importlib
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping a torch.library.Library undefines its operators


def _forget_torchvision() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> bool:
    """Import `torchvision.models.optical_flow`, declaring the missing schemas when needed."""
    global _library
    try:
        importlib.import_module("torchvision.models.optical_flow")
        return True
    except ImportError:
        return False
    except RuntimeError as err:
        if "torchvision::" not in str(err) or _library is not None:
            return False
    import torch

    _forget_torchvision()
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    try:
        importlib.import_module("torchvision.models.optical_flow")
    except Exception:
        _forget_torchvision()
        return False
    return True
