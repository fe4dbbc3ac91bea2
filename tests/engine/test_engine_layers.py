"""The package layers of `rna_engine` (docs/architecture.md, "Packages and import direction"),
checked with `ast` on every module: no module is imported.

A module may import only the layers its own layer lists in `ALLOWED`; a new top-level module
or package must be given a layer in `LAYER_OF` before it can land.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "rna_engine"

LAYER_OF = {
    "__init__": "foundation",
    "errors": "foundation",
    "settings": "foundation",
    "media": "media",
    "runtime": "runtime",
    "model": "model",
    "synthetic": "synthetic",
    "stages": "stages",
    "pipeline": "orchestration",
    "apply": "orchestration",
    "farm": "orchestration",
    "cli": "entry",
    "__main__": "entry",
    "commands": "entry",
    "service": "entry",
}
"""Top-level module or package of `rna_engine` → its layer."""

BELOW_ORCHESTRATION = {"foundation", "media", "runtime", "model", "synthetic", "stages"}
ALLOWED = {
    "foundation": {"foundation"},
    "media": {"foundation", "media"},
    "runtime": {"foundation", "media", "runtime"},
    "model": {"foundation", "media", "model"},
    "synthetic": {"foundation", "media", "synthetic"},
    "stages": {"foundation", "media", "runtime", "model", "stages"},
    "orchestration": BELOW_ORCHESTRATION | {"orchestration"},
    "entry": BELOW_ORCHESTRATION | {"orchestration", "entry"},
}
"""Layer → the layers its modules may import."""


def _modules(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path, root: Path = REPO) -> list[tuple[str, int]]:
    """Absolute module names `path` imports (relative imports resolved; `from x import y`
    yields `x.y`, which may name a module or an attribute), with line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return out


def layer(parts: list[str]) -> str | None:
    """The layer of the `rna_engine` module `parts` (`["rna_engine", "stages", "fit"]`)."""
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else "foundation"


def violations(path: Path, root: Path = REPO) -> list[str]:
    """Every import of `path` (a module under `root/rna_engine`) its layer does not allow."""
    own = layer(list(path.relative_to(root).with_suffix("").parts))
    where = path.relative_to(root)
    if own is None:
        return [f"{where}: its top-level module has no layer in LAYER_OF"]
    out = []
    for name, line in imports(path, root):
        parts = name.split(".")
        if parts[0] == "rna_nuke":
            out.append(f"{where}:{line} imports {name}: the engine never imports rna_nuke")
        if parts[0] != "rna_engine":
            continue
        theirs = layer(parts)
        if theirs is not None and theirs not in ALLOWED[own]:
            out.append(f"{where}:{line} imports {name}: {own} may not import {theirs}")
    return out


def test_every_top_level_module_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in ENGINE.iterdir() if p.name != "__pycache__"}
    tops = {
        t for t in tops if (ENGINE / f"{t}.py").exists() or (ENGINE / t / "__init__.py").exists()
    }
    assert tops == set(LAYER_OF)


@pytest.mark.parametrize("path", _modules(ENGINE), ids=lambda p: str(p.relative_to(ENGINE)))
def test_rna_engine_layers(path: Path) -> None:
    assert violations(path) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "model/fields.py",
            "from rna_engine.stages.fit import Fitter\n",
            "model may not import stages",
        ),
        ("media/io.py", "from ..model import losses\n", "media may not import model"),
        (
            "stages/bake.py",
            "from rna_engine.service import Service\n",
            "stages may not import entry",
        ),
        (
            "stages/qc.py",
            "from rna_engine import pipeline\n",
            "stages may not import orchestration",
        ),
        ("runtime/pool.py", "import rna_nuke.client\n", "never imports rna_nuke"),
        ("pipeline.py", "from .commands import build\n", "orchestration may not import entry"),
        ("newthing.py", "import os\n", "no layer in LAYER_OF"),
    ],
)
def test_a_forbidden_import_is_caught(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    """The check fails on each kind of violation, written into a copy of the layout."""
    path = tmp_path / "rna_engine" / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    found = violations(path, tmp_path)
    assert len(found) == 1 and expected in found[0], found


def test_allowed_imports_pass(tmp_path: Path) -> None:
    path = tmp_path / "rna_engine" / "stages" / "fit" / "joint.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "from rna_engine.model import losses\nfrom .. import evidence\nfrom .loop import StepLoop\n"
        "from rna_engine import __version__\nimport torch\n"
    )
    assert violations(path, tmp_path) == []
