"""Peak GPU memory per stage: each stage gets its own peak, the whole job the largest."""

from __future__ import annotations

import pytest
import torch

from rna_engine.runtime.gpu_memory import StageMemory
from rna_engine.runtime.progress import ProgressTracker

MIB = 2**20


class FakeAllocator:
    """Allocated bytes with a resettable peak, like a caching allocator's statistics."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def alloc(self, mib: int) -> None:
        self.current += mib * MIB
        self.peak = max(self.peak, self.current)

    def free(self, mib: int) -> None:
        self.current -= mib * MIB

    def stats(self) -> tuple[float, float]:
        return float(self.peak), float(self.peak + 2 * MIB)  # reserved: a little more

    def reset(self) -> None:
        self.peak = self.current


def test_each_stage_gets_its_own_peak() -> None:
    gpu = FakeAllocator()
    memory = StageMemory("cpu", stats=gpu.stats, reset=gpu.reset)
    tracker = ProgressTracker({"ingest": 1, "fit": 1, "bake": 1}, [memory], min_interval_s=0)
    tracker.update("ingest", 0.0)
    gpu.alloc(100)  # frames, kept for the whole job
    tracker.update("ingest", 1.0)
    tracker.update("fit", 0.0)
    gpu.alloc(500)
    gpu.free(500)
    tracker.update("fit", 1.0)
    tracker.update("bake", 0.0)
    gpu.free(100)
    gpu.alloc(50)
    assert memory.peak() == (600.0, 602.0)  # the running stage counts before it ends
    stages = memory.finish()
    assert stages == {
        "ingest": {"allocated": 100.0, "reserved": 102.0},
        "fit": {"allocated": 600.0, "reserved": 602.0},
        "bake": {"allocated": 100.0, "reserved": 102.0},  # the frames were held at its start
    }
    assert memory.peak() == (600.0, 602.0)


def test_a_stage_seen_again_keeps_its_larger_peak() -> None:
    gpu = FakeAllocator()
    memory = StageMemory("cpu", stats=gpu.stats, reset=gpu.reset)
    tracker = ProgressTracker({"fit": 1, "refine": 1}, [memory], min_interval_s=0)
    tracker.update("fit", 0.0)
    gpu.alloc(300)
    gpu.free(300)
    tracker.update("refine", 0.0)
    tracker.update("fit", 0.5)  # e.g. a resumed job
    gpu.alloc(10)
    assert memory.finish()["fit"]["allocated"] == 300.0


def test_off_cuda_nothing_is_recorded() -> None:
    memory = StageMemory("cpu")
    tracker = ProgressTracker({"fit": 1}, [memory])
    tracker.update("fit", 1.0)
    assert memory.finish() == {} and memory.peak() == (None, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocations_land_in_their_stage() -> None:
    device = torch.device("cuda")
    memory = StageMemory(device)
    tracker = ProgressTracker({"a": 1, "b": 1}, [memory], min_interval_s=0)
    tracker.update("a", 0.0)
    big = torch.empty(256 * MIB, dtype=torch.uint8, device=device)
    del big
    tracker.update("b", 0.0)
    small = torch.empty(16 * MIB, dtype=torch.uint8, device=device)
    stages = memory.finish()
    del small
    assert stages["a"]["allocated"] >= 256
    assert 16 <= stages["b"]["allocated"] < 256
