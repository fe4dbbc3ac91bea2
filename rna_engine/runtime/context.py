"""The run context: what travels with a job instead of global state (docs/architecture.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .progress import CancelToken, NullReporter, Reporter


@dataclass
class RunContext:
    """Device, reporter, cancel token, work folder, seed and I/O threads of one job."""

    device: str = "cpu"
    """torch device string (`cpu`, `cuda:0`) the stages run on; `run_build` sets it from
    `open_device` before any stage runs."""
    auto_device: str = "auto"
    """What a spec's `device: auto` means for this job: the service passes its own device
    (`rna-engine serve --device`), the CLI keeps `auto` (the first GPU, else the CPU)."""
    reporter: Reporter = field(default_factory=NullReporter)
    cancel: CancelToken = field(default_factory=CancelToken)
    work_dir: Path | None = None
    """Engine-private cache folder of the build (`<version>/work`); None disables caching."""
    seed: int = 0
    io_workers: int = 0
    """Threads for plate-resolution reads and writes (ingest, bake); 0 = min(8, CPU count).
    The output does not depend on it."""


def rna_home() -> Path:
    """`$RNA_HOME`, default `~/.rna`: engine discovery file, logs, installed weights."""
    return Path(os.environ.get("RNA_HOME") or Path.home() / ".rna")


def open_device(name: str) -> str:
    """Resolve `name` (`resolve_device`) and make the device ready in the calling thread.

    The one place a job selects its device: the CLI, the service worker and the farm all reach
    it through `run_build`. On CUDA it selects the card for this thread and creates its context
    before anything (allocator statistics, CUDA graphs, streams) touches the device: in a fresh
    process `torch.cuda.reset_peak_memory_stats` on an uninitialised device fails with
    "Invalid device argument".
    """
    import torch

    device = resolve_device(name)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        torch.cuda.init()
        torch.zeros(1, device=device)  # creates the primary context on this card
        torch.cuda.synchronize(device)
    return device


def resolve_device(name: str) -> str:
    """`auto` → `cuda:0` when CUDA is available, else `cpu`; other names are checked."""
    import torch

    from rna_engine.errors import InputError

    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"setting device: {name} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InputError(
                f"setting device: {name} does not exist ({torch.cuda.device_count()} CUDA devices)"
            )
        return f"cuda:{index}"
    raise InputError(f"setting device: {name!r} is not auto, cpu or cuda:N")
