"""rna_engine.cache: versions, status, atomic publication."""

from __future__ import annotations

from pathlib import Path

import pytest

from rna_engine.cache import (
    BuildPaths,
    StatusFile,
    atomic_path,
    choose_version,
    read_status,
)
from rna_engine.errors import InputError


def _finish(paths: BuildPaths, digest: str) -> None:
    StatusFile(paths, digest).set(state="done")


def test_versions_never_overwrite_a_finished_build(tmp_path: Path) -> None:
    first = choose_version(tmp_path, "shot", 0, "aaa")
    assert first.root.name == "v001"
    _finish(first, "aaa")
    assert choose_version(tmp_path, "shot", 0, "aaa").root == first.root  # same build: reuse
    second = choose_version(tmp_path, "shot", 0, "bbb")
    assert second.root.name == "v002"
    with pytest.raises(InputError, match="v001 is a finished build"):
        choose_version(tmp_path, "shot", 1, "bbb")


def test_unfinished_build_of_same_hash_is_resumed(tmp_path: Path) -> None:
    v1 = choose_version(tmp_path, "s", 0, "h1")
    StatusFile(v1, "h1").set(state="running")
    _finish(choose_version(tmp_path, "s", 0, "h2"), "h2")
    assert choose_version(tmp_path, "s", 0, "h1").root == v1.root


def test_status_file_fields(tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "v003")
    status = StatusFile(paths, "abc")
    status.set(state="running", stage="fit", progress=0.5)
    data = read_status(paths)
    assert data is not None
    assert (data["state"], data["stage"], data["progress"], data["build_hash"]) == (
        "running",
        "fit",
        0.5,
        "abc",
    )
    assert paths.version == 3
    with pytest.raises(ValueError):
        status.set(state="sleeping")


def test_atomic_path_leaves_target_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
