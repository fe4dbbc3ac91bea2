"""Shared fixtures: the repository root on `sys.path`, and THE one fake `nuke`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from torchvision_env import ensure_torchvision  # noqa: E402

ensure_torchvision()  # before collection: `models.torchvision_available()` then sees it


@pytest.fixture
def fake_nuke(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """`tests/fake_nuke.py` installed as `sys.modules["nuke"]`, with a fresh graph per test."""
    import fake_nuke as module

    module.reset()
    saved_path = list(sys.path)
    monkeypatch.setitem(sys.modules, "nuke", module)
    yield module
    sys.path[:] = saved_path
    module.reset()
