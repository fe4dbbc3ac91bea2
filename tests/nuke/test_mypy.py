"""mypy over `rna_nuke` against the `types-nuke` stubs: a misspelt Nuke API name fails here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "rna_nuke" / "mypy.ini"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed"
)


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rna_nuke_type_checks_against_the_nuke_stubs() -> None:
    done = _mypy("rna_nuke")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_stubs_catch_a_misspelt_api_name() -> None:
    done = _mypy("-c", "import nuke\nnuke.createNode('Blur')\nnuke.creatNode('Blur')\n")
    assert done.returncode == 1
    assert 'Module has no attribute "creatNode"' in done.stdout
    assert "createNode" not in done.stdout.replace("creatNode", "").split("error")[0]
