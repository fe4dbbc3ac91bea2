"""`rna_nuke.launcher.engine_command`: which interpreter starts the engine (never Nuke's own)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from rna_nuke import launcher
from rna_nuke.protocol import EngineError


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No RNA_ENGINE_PYTHON, an empty RNA_HOME and a PATH without rna-engine."""
    monkeypatch.delenv("RNA_ENGINE_PYTHON", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RNA_HOME", str(home))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return home


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_nothing_configured_is_a_clear_error_and_starts_nothing(bare: Path) -> None:
    started = len(launcher._STARTED)
    with pytest.raises(EngineError) as info:
        launcher.start_engine(timeout_s=1.0)
    assert info.value.code == "engine_start"
    message = str(info.value)
    assert "set RNA_ENGINE_PYTHON" in message
    assert str(bare / "config.json") in message and "rna-engine on PATH" in message
    assert sys.executable not in message
    assert len(launcher._STARTED) == started  # Nuke's own interpreter was not started


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for rna-engine")
def test_lookup_order_knob_env_config_path(
    bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = _executable(tmp_path / "bin" / "rna-engine")
    assert launcher.engine_command() == [str(tool)]
    (bare / "config.json").write_text(json.dumps({"engine_python": "/envs/rna/bin/python"}))
    assert launcher.engine_command() == ["/envs/rna/bin/python", "-m", "rna_engine"]
    monkeypatch.setenv("RNA_ENGINE_PYTHON", "/opt/rna/python")
    assert launcher.engine_command() == ["/opt/rna/python", "-m", "rna_engine"]
    assert launcher.engine_command("/knob/python") == ["/knob/python", "-m", "rna_engine"]
    assert launcher.engine_command("  ") == ["/opt/rna/python", "-m", "rna_engine"]  # empty knob


@pytest.mark.parametrize(
    "text,message",
    [("{not json", "not valid JSON"), ('{"engine_python": 3}', "expected"), ("[1]", "expected")],
)
def test_a_broken_config_names_the_file(bare: Path, text: str, message: str) -> None:
    (bare / "config.json").write_text(text)
    with pytest.raises(EngineError, match=message) as info:
        launcher.engine_command()
    assert str(bare / "config.json") in str(info.value)
