"""Every document a tracked file cites exists in the repository.

Catches references to documents the repository does not ship (a design note kept elsewhere):
`NAME.md` (upper case, anywhere), `docs/name.md` paths, and relative Markdown links `](x.md)`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER_DOC = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_]*\.md)\b")
DOCS_PATH = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md)\b")
MD_LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)")
SKIP = {"tests/test_docs.py"}
"""This file's own examples."""
PENDING: set[str] = set()
"""Documents written on another branch at the same time; drop an entry once it is merged."""
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".txt", ".yaml", ".yml", ".json", ".gizmo", ""}


def tracked_files() -> list[Path]:
    """The repository's tracked files (git), else every file outside hidden and build folders."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
        ]
    return [ROOT / n for n in names if Path(n).suffix in TEXT_SUFFIXES or n == "Makefile"]


def missing_references(files: list[Path], root: Path) -> list[str]:
    """`path: reference` for every cited document that is not in `root`."""
    names = {p.name for p in files} | {p.name for p in root.glob("*.md")}
    missing = []
    for path in files:
        rel = path.relative_to(root)
        if str(rel) in SKIP or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for ref in UPPER_DOC.findall(text):
            if ref not in names:
                missing.append(f"{rel}: {ref}")
        for ref in DOCS_PATH.findall(text):
            if ref not in PENDING and not (root / ref).is_file():
                missing.append(f"{rel}: {ref}")
        if path.suffix == ".md":
            for ref in MD_LINK.findall(text):
                target = (path.parent / ref).resolve()
                inside = target.is_relative_to(root.resolve())
                if inside and str(target.relative_to(root.resolve())) in PENDING:
                    continue
                if not target.is_file():
                    missing.append(f"{rel}: {ref}")
    return sorted(set(missing))


def test_every_cited_document_exists() -> None:
    assert missing_references(tracked_files(), ROOT) == []


def test_the_check_finds_a_missing_document(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("See docs/guide.md and [the cache](docs/cache.md).\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("[up](../README.md), [gone](gone.md)\n")
    (tmp_path / "mod.py").write_text('"""Layout of DESIGN.md §4 and README.md."""\n')
    files = [tmp_path / "README.md", tmp_path / "docs" / "guide.md", tmp_path / "mod.py"]
    assert missing_references(files, tmp_path) == [
        "README.md: docs/cache.md",
        "docs/guide.md: gone.md",
        "mod.py: DESIGN.md",
    ]


@pytest.mark.parametrize("name", ["architecture", "cache", "protocol", "method", "farm"])
def test_the_docs_are_in_the_repository(name: str) -> None:
    assert (ROOT / "docs" / f"{name}.md").is_file()
