"""The run context: what travels with a job instead of global state (STYLE.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .progress import CancelToken, NullReporter, Reporter


@dataclass
class RunContext:
    """Device, reporter, cancel token, work folder, seed and I/O threads of one job."""

    device: str = "cpu"
    """torch device string (`cpu`, `cuda:0`); resolved from `auto` by the caller."""
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


def resolve_device(name: str) -> str:
    """`auto` → `cuda:0` when CUDA is available, else `cpu`; other names are checked."""
    import torch

    from .errors import InputError

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
