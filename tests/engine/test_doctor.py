"""`rna-engine doctor` tells the truth about each component, and every command it suggests runs.

Doctor runs in a subprocess: the test session's conftest makes a CUDA torchvision importable
beside the CPU torch (tests/torchvision_env.py), which a user's shell does not.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from rna_engine.cli import main

REPO = Path(__file__).resolve().parents[2]


def _doctor(*args: str, home: Path) -> str:
    env = {**os.environ, "RNA_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "rna_engine", "doctor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@cache
def _doctor_outputs(home: str) -> tuple[dict[str, dict], str]:
    rows = json.loads(_doctor("--json", home=Path(home)))
    return {r["check"]: r for r in rows}, _doctor(home=Path(home))


@pytest.fixture(scope="module")
def doctor(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], str]:
    return _doctor_outputs(str(tmp_path_factory.mktemp("home")))


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _imports_alone(module: str) -> bool:
    """Whether `module` imports in a fresh interpreter (no test-session help)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return proc.returncode == 0


def test_every_row_has_a_state_and_missing_or_unusable_ones_a_fix(
    doctor: tuple[dict[str, dict], str],
) -> None:
    rows, _ = doctor
    for row in rows.values():
        assert row["state"] in ("ok", "unusable", "missing")
        assert row["ok"] == (row["state"] == "ok")
        assert row["ok"] or row["fix"], row


def test_torchvision_row_matches_what_really_happens(
    doctor: tuple[dict[str, dict], str],
) -> None:
    row = doctor[0]["torchvision"]
    version = _installed("torchvision")
    if version is None:
        assert row["state"] == "missing"
    elif _imports_alone("torchvision.models.optical_flow"):
        assert row["state"] == "ok"
    else:  # e.g. the CUDA wheel beside a CPU torch: installed, but its operators do not load
        assert row["state"] == "unusable"
        assert row["detail"].startswith(f"{version} installed, does not load")
        assert "torchvision::nms" in row["detail"] or "Error" in row["detail"]


def test_triton_row_says_installed_but_unusable_without_cuda(
    doctor: tuple[dict[str, dict], str],
) -> None:
    import torch

    row = doctor[0]["triton"]
    version = _installed("triton")
    if version is None:
        assert row["state"] == "missing"
    elif torch.cuda.is_available():
        assert row["state"] in ("ok", "unusable")
    else:
        assert row["state"] == "unusable" and row["detail"].startswith(f"{version} installed")
        assert "CUDA" in row["detail"]


def _suggested_commands(text: str) -> list[list[str]]:
    return [shlex.split(cmd) for cmd in re.findall(r"`([^`]+)`", text)]


def test_every_suggested_rna_engine_command_parses(
    doctor: tuple[dict[str, dict], str], capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [c for c in _suggested_commands(doctor[1]) if c[0] == "rna-engine"]
    assert commands, "doctor suggests no rna-engine command on a machine without weights"
    for argv in commands:
        with pytest.raises(SystemExit) as exc:
            main([*argv[1:], "--help"])  # argparse checks positionals (model names) first
        assert exc.value.code == 0, f"{shlex.join(argv)}: {capsys.readouterr().err}"
    assert "models install vitmatte" not in doctor[1]  # the CLI has no such model


def test_every_suggested_pip_and_make_command_parses(
    doctor: tuple[dict[str, dict], str],
) -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    for argv in _suggested_commands(doctor[1]):
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, argv
        elif argv[0] == "pip":
            proc = subprocess.run(
                [sys.executable, "-m", "pip", *argv[1:], "--help"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, (argv, proc.stderr)
        else:
            assert argv[0] == "rna-engine", argv  # nothing else is suggested
