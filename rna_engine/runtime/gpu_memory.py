"""Peak GPU memory per build stage, from the allocator's statistics.

`StageMemory` is a progress sink: when the stage changes it records the allocator's peak
allocated and reserved bytes of the stage that ended and resets the peak counters, so each
stage gets its own peak. The whole build's peak is the largest of them. Off CUDA it records
nothing. A stage's first allocations before its first progress update count to the stage
before it (stages report at their start, so this is small).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from .progress import Event

Stats = Callable[[], tuple[float, float]]
"""Returns (peak allocated, peak reserved) in bytes since the last reset."""


def _torch_stats(device: torch.device) -> tuple[Stats, Callable[[], None]]:
    def stats() -> tuple[float, float]:
        return (
            float(torch.cuda.max_memory_allocated(device)),
            float(torch.cuda.max_memory_reserved(device)),
        )

    def reset() -> None:
        torch.cuda.reset_peak_memory_stats(device)

    return stats, reset


class StageMemory:
    """Peak allocated / reserved GPU memory (MiB) of each stage of a job.

    Args:
        device: the job's device; without `stats`, nothing is recorded unless it is CUDA.
        stats, reset: the peak counters and their reset (default: `torch.cuda`'s for `device`).
    """

    def __init__(
        self,
        device: torch.device | str,
        stats: Stats | None = None,
        reset: Callable[[], None] | None = None,
    ) -> None:
        device = torch.device(device)
        if (stats is None or reset is None) and device.type == "cuda":
            stats, reset = _torch_stats(device)
        self._stats, self._reset = stats, reset
        self.enabled = stats is not None and reset is not None
        self._stage = ""
        self._lock = threading.Lock()
        self.by_stage: dict[str, dict[str, float]] = {}
        if reset is not None:
            reset()

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        with self._lock:
            if event.stage == self._stage:
                return
            self._close()
            self._stage = event.stage

    def _with_running(self) -> dict[str, dict[str, float]]:
        """The recorded peaks, merged with the running stage's peak so far."""
        stages = dict(self.by_stage)
        if self._stage and self._stats is not None:
            allocated, reserved = self._stats()
            before = stages.get(self._stage, {"allocated": 0.0, "reserved": 0.0})
            stages[self._stage] = {
                "allocated": max(before["allocated"], allocated / 2**20),
                "reserved": max(before["reserved"], reserved / 2**20),
            }
        return stages

    def _close(self) -> None:
        if self._stage and self._reset is not None:
            self.by_stage = self._with_running()
            self._reset()

    def finish(self) -> dict[str, dict[str, float]]:
        """Close the running stage; the per-stage peaks (MiB)."""
        with self._lock:
            self._close()
            self._stage = ""
        return self.summary()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-stage peaks so far, the running stage included (MiB, rounded)."""
        return {k: {n: round(v, 1) for n, v in d.items()} for k, d in self._with_running().items()}

    def peak(self) -> tuple[float | None, float | None]:
        """The whole job's peak allocated and reserved MiB so far (None off CUDA)."""
        if not self.enabled:
            return None, None
        stages = self.summary().values()
        return (
            max((d["allocated"] for d in stages), default=0.0),
            max((d["reserved"] for d in stages), default=0.0),
        )
