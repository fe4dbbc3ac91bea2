"""`rna-engine doctor`: what this environment has, what is missing and how to get it."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from typing import Any

NAME = "doctor"
HELP = "check Python, torch/CUDA, tinycudann, Triton, OpenImageIO, OCIO and installed weights"


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # an optional package may fail in any way on import
        return None
    return str(getattr(mod, "__version__", "present"))


def collect() -> list[dict[str, Any]]:
    """One row per check: name, ok, detail, and how to fix it when missing."""
    rows: list[dict[str, Any]] = []

    def add(name: str, ok: bool, detail: str, fix: str = "") -> None:
        rows.append({"check": name, "ok": ok, "detail": detail, "fix": "" if ok else fix})

    add(
        "python",
        sys.version_info >= (3, 10),
        platform.python_version(),
        "install Python 3.10 or newer",
    )
    torch_v = _version("torch")
    add("torch", torch_v is not None, torch_v or "missing", "make venv (or pip install torch)")
    if torch_v:
        import torch

        cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if cuda else "no CUDA device (CPU builds are slow)"
        add("cuda", cuda, name, "install the CUDA build of torch on a machine with an NVIDIA GPU")
        from rna_engine.kernels import available_backends

        backends = available_backends()
        add(
            "tinycudann",
            bool(backends.get("tcnn")),
            str(backends.get("tcnn") or "missing"),
            "optional: pip install from the tiny-cuda-nn repository's bindings/torch",
        )
        add(
            "triton",
            bool(backends.get("triton")),
            str(backends.get("triton") or "missing"),
            "optional: pip install triton (GPU fast path)",
        )
        add("hash grid backend", True, str(backends.get("auto")))
    for module, pip in (
        ("OpenImageIO", "openimageio"),
        ("PyOpenColorIO", "opencolorio"),
        ("cv2", "opencv-python-headless"),
    ):
        v = _version(module)
        add(pip, v is not None, v or "missing", f"pip install {pip}")
    try:
        from rna_engine.colour import load_config

        _, config = load_config()
        add("ocio config", True, config)
    except Exception as err:  # report, don't fail: doctor describes the environment
        add(
            "ocio config",
            False,
            str(err),
            "set $OCIO to a config with scene_linear and compositing_log roles",
        )
    for module, pip in (("torchvision", "torchvision"), ("transformers", "transformers")):
        v = _version(module)
        add(
            module, v is not None, v or "missing (optional, learned backends)", f"pip install {pip}"
        )
    from rna_engine.models import install_command, read_registry

    try:
        registry = read_registry()
    except Exception as err:  # a broken registry is a finding, not a crash
        registry = {}
        add("weights registry", False, str(err), "reinstall the weights")
    for name in ("raft", "dino", "vitmatte"):
        rec = registry.get(name)
        add(
            f"weights: {name}",
            rec is not None,
            getattr(rec, "path", "") if rec else "not installed (weight-free default is used)",
            install_command(name)
            if name != "vitmatte"
            else "rna-engine models install vitmatte --from DIR",
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = collect()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for row in rows:
        mark = "ok " if row["ok"] else "-- "
        line = f"{mark} {row['check']:<18} {row['detail']}"
        if row["fix"]:
            line += f"\n      → {row['fix']}"
        sys.stdout.write(line + "\n")
    return 0
