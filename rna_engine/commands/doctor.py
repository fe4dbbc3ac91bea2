"""`rna-engine doctor`: what this environment has, what is missing and how to get it.

Every component is `ok` (installed and usable here), `unusable` (installed, but it cannot run
here, and why: triton and tinycudann need CUDA; a CUDA torchvision does not load beside a CPU
torch) or `missing`. Each fix that names a command quotes it in backticks, and every quoted
`rna-engine` command parses (a test runs each with `--help`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import sys
from typing import Any

NAME = "doctor"
HELP = "check Python, torch/CUDA, tinycudann, Triton, OpenImageIO, OCIO and installed weights"

OK, UNUSABLE, MISSING = "ok", "unusable", "missing"
_MARKS = {OK: "ok ", UNUSABLE: "!! ", MISSING: "-- "}


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _installed(distribution: str, module: str) -> str | None:
    """The installed version of a package (without importing it), or None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return "installed" if importlib.util.find_spec(module) is not None else None
    except (ImportError, ValueError):
        return None


def _import_error(module: str) -> str | None:
    """Why `module` does not import (one line), or None when it does."""
    try:
        importlib.import_module(module)
    except Exception as err:  # an optional package may fail in any way on import
        return f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err) else ''}"
    return None


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # an optional package may fail in any way on import
        return None
    return str(getattr(mod, "__version__", "present"))


def collect() -> list[dict[str, Any]]:
    """One row per check: check, state (ok/unusable/missing), ok, detail, fix."""
    rows: list[dict[str, Any]] = []

    def add(name: str, state: str, detail: str, fix: str = "") -> None:
        rows.append(
            {
                "check": name,
                "state": state,
                "ok": state == OK,
                "detail": detail,
                "fix": "" if state == OK else fix,
            }
        )

    add(
        "python",
        OK if sys.version_info >= (3, 10) else UNUSABLE,
        platform.python_version(),
        "install Python 3.10 or newer",
    )
    torch_v = _version("torch")
    add("torch", OK if torch_v else MISSING, torch_v or "missing", "`make venv`")
    cuda = False
    if torch_v:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            add("cuda", OK, torch.cuda.get_device_name(0))
        elif torch.version.cuda is None:
            add(
                "cuda",
                MISSING,
                f"this torch ({torch_v}) is a CPU build: builds run on the CPU, slowly",
                "install a CUDA build of torch on a machine with an NVIDIA GPU",
            )
        else:
            add(
                "cuda",
                UNUSABLE,
                f"torch built for CUDA {torch.version.cuda}, but no CUDA device is visible",
                "check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
            )
        _kernel_rows(add, cuda, torch_v)
    for module, pip in (
        ("OpenImageIO", "openimageio"),
        ("PyOpenColorIO", "opencolorio"),
        ("cv2", "opencv-python-headless"),
    ):
        v = _version(module)
        add(pip, OK if v else MISSING, v or "missing", f"`pip install {pip}`")
    try:
        from rna_engine.media.colour import load_config

        _, config = load_config()
        add("ocio config", OK, config)
    except Exception as err:  # report, don't fail: doctor describes the environment
        add(
            "ocio config",
            UNUSABLE,
            str(err),
            "set $OCIO to a config with scene_linear and compositing_log roles",
        )
    if torch_v:
        _learned_rows(add, torch_v)
    return rows


def _kernel_rows(add: Any, cuda: bool, torch_v: str) -> None:
    """tinycudann, triton and the hash-grid backend `auto` picks."""
    from rna_engine.model.kernels import available_backends

    backends = available_backends()
    for name, dist, module, fix in (
        (
            "tinycudann",
            "tinycudann",
            "tinycudann",
            "optional: pip install the tiny-cuda-nn repository's bindings/torch on a CUDA machine",
        ),
        ("triton", "triton", "triton", "optional: `pip install triton` (GPU fast path)"),
    ):
        key = "tcnn" if name == "tinycudann" else name
        installed = _installed(dist, module)
        if backends.get(key):
            add(name, OK, str(backends[key]))
        elif installed is None:
            add(name, MISSING, "missing", fix)
        elif not cuda:
            add(
                name,
                UNUSABLE,
                f"{installed} installed, unusable here: its kernels need a CUDA GPU "
                f"(torch {torch_v}, no CUDA device); the PyTorch hash grid is used",
                "run on a machine with an NVIDIA GPU and a CUDA build of torch",
            )
        else:
            why = _import_error(module) or "it did not load"
            add(name, UNUSABLE, f"{installed} installed, does not load: {why}", fix)
    add("hash grid backend", OK, str(backends.get("auto")))


def _learned_rows(add: Any, torch_v: str) -> None:
    """torchvision, transformers and the weights of the learned backends."""
    from rna_engine.runtime import weights

    learned = f"`pip install 'rna-atlas[learned]' \"torch=={torch_v.split('+')[0]}\"`"
    packages: dict[str, bool] = {}
    for module in ("torchvision", "transformers"):
        installed = _installed(module, module)
        usable = (
            weights.torchvision_available()
            if module == "torchvision"
            else weights.transformers_available()
        )
        packages[module] = usable
        if usable:
            add(module, OK, _version(module) or installed or "present")
        elif installed is None:
            add(module, MISSING, "missing (optional, learned backends)", learned)
        else:
            why = _import_error(module if module != "torchvision" else "torchvision.models")
            detail = f"{installed} installed, does not load beside torch {torch_v}"
            if module == "torchvision" and "torchvision::" in str(why):
                detail += " (its compiled operators do not match this torch build: a CUDA "
                detail += "torchvision beside a CPU torch, or another torch version)"
            fix = f"install the {module} build that matches torch {torch_v}"
            if module == "torchvision" and "+cpu" in torch_v:
                # the default index has only CUDA torchvision wheels for Linux
                base = torch_v.split("+")[0]
                fix += (
                    f': `pip install torchvision "torch=={base}" '
                    "--index-url https://download.pytorch.org/whl/cpu`"
                )
            add(module, UNUSABLE, f"{detail}: {why}", fix)
    try:
        registry = weights.read_registry()
    except Exception as err:  # a broken registry is a finding, not a crash
        registry = {}
        add("weights registry", UNUSABLE, str(err), "reinstall the weights")
    needs = {"raft": "torchvision", "dino": "transformers"}
    for name in weights.MODEL_NAMES:
        rec = registry.get(name)
        if rec is None or not weights.installed_path(rec).exists():
            add(
                f"weights: {name}",
                MISSING,
                "not installed (the weight-free default is used)",
                f"`{weights.install_command(name)}`",
            )
        elif not packages[needs[name]]:
            add(
                f"weights: {name}",
                UNUSABLE,
                f"{weights.installed_path(rec)} installed, but {needs[name]} does not work here",
                f"see the {needs[name]} row",
            )
        else:
            add(f"weights: {name}", OK, str(weights.installed_path(rec)))
    from rna_engine.settings import MatteSettings
    from rna_engine.stages.matte import has_vitmatte_weights, vitmatte_dir

    folder = vitmatte_dir(MatteSettings())
    if not has_vitmatte_weights(folder):
        add(
            "weights: vitmatte",
            MISSING,
            f"not in {folder} (the guided matte is used)",
            f"copy a transformers save_pretrained ViTMatte folder to {folder}, or name it per "
            "build: `rna-engine build --set matte.backend=vitmatte --set "
            "matte.vitmatte_dir=DIR`",
        )
    elif not packages["transformers"]:
        add(
            "weights: vitmatte",
            UNUSABLE,
            f"{folder}, but transformers does not work here",
            "see the transformers row",
        )
    else:
        add("weights: vitmatte", OK, f"{folder} (use with --set matte.backend=vitmatte)")


def run(args: argparse.Namespace) -> int:
    rows = collect()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for row in rows:
        line = f"{_MARKS[row['state']]} {row['check']:<22} {row['detail']}"
        if row["fix"]:
            line += f"\n      → {row['fix']}"
        sys.stdout.write(line + "\n")
    sys.stdout.write("ok = usable, !! = installed but unusable here, -- = missing\n")
    return 0
