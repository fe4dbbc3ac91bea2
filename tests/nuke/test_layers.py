"""The import layers of docs/architecture.md, checked with `ast` (no module is imported).

- `rna_nuke` runs in Nuke's Python 3.9+: standard library only, never `rna_engine`; only
  `glue.py` imports `nuke`; every module starts with `from __future__ import annotations`;
  no 3.10+ syntax or API (`match`, runtime `X | Y`, `zip(strict=)`, `dataclass(slots=)`...).

The engine's own layers (and that it never imports `rna_nuke`) are checked in
`tests/engine/test_engine_layers.py`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUKE_PKG = REPO / "rna_nuke"

NEW_TYPING = {
    "TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "Self", "Never", "LiteralString",
    "Required", "NotRequired", "Unpack", "TypeVarTuple", "assert_never", "assert_type",
    "reveal_type", "dataclass_transform", "override", "is_typeddict",
}  # fmt: skip
"""`typing` names newer than Python 3.9."""
NEW_MODULES = {"tomllib", "wsgiref.types"}
TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "type",
              "frozenset", "object", "Any", "Callable", "Path"}  # fmt: skip


def _modules(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path, package: str) -> list[tuple[str, int]]:
    """Absolute module names imported by `path` (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
                out += [(name, node.lineno) for name in names]
            else:
                out.append((node.module or "", node.lineno))
    return out


@pytest.mark.parametrize("path", _modules(NUKE_PKG), ids=lambda p: p.name)
def test_rna_nuke_imports_only_the_standard_library(path: Path) -> None:
    for name, line in _imports(path, "rna_nuke"):
        top = name.split(".")[0]
        where = f"{path.name}:{line} imports {name}"
        assert top != "rna_engine", where
        if top == "rna_nuke":
            continue
        if top == "nuke":
            assert path.name == "glue.py", f"{where}: only glue.py may import nuke"
            continue
        assert top in sys.stdlib_module_names, f"{where}: not in the standard library"
        assert name not in NEW_MODULES, f"{where}: newer than Python 3.9"


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (strings at run time under PEP 563)."""
    inside: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            inside.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None:
                    mark(arg.annotation)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
    return inside


def _is_type_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES or node.id[:1].isupper()
    if isinstance(node, ast.Attribute):
        return node.attr[:1].isupper()
    if isinstance(node, ast.Subscript):
        return _is_type_expr(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_expr(node.left) or _is_type_expr(node.right)
    return False


@pytest.mark.parametrize("path", _modules(NUKE_PKG), ids=lambda p: p.name)
def test_rna_nuke_runs_on_python_3_9(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, str(path), feature_version=(3, 9))  # rejects `match`, etc.
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    first = body[0] if body else None
    assert (
        isinstance(first, ast.ImportFrom)
        and first.module == "__future__"
        and any(a.name == "annotations" for a in first.names)
    ), f"{path.name}: first statement must be `from __future__ import annotations`"
    annotations = _annotation_nodes(tree)
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and id(node) not in annotations
        ):
            assert not _is_type_expr(node), f"{where}: runtime `X | Y` of types needs 3.10"
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            keywords = {k.arg for k in node.keywords}
            assert not (name == "zip" and "strict" in keywords), f"{where}: zip(strict=) is 3.10"
            assert not (name == "dataclass" and keywords & {"slots", "kw_only", "match_args"}), (
                f"{where}: dataclass(slots/kw_only) is 3.10"
            )
        if isinstance(node, ast.ImportFrom) and node.module in ("typing", "itertools"):
            for alias in node.names:
                assert alias.name not in NEW_TYPING | {"pairwise"}, (
                    f"{where}: {node.module}.{alias.name} is newer than 3.9"
                )


def test_the_syntax_check_catches_3_10_code() -> None:
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
    tree = ast.parse("isinstance(v, int | None)\nflags = a | b\n")
    ops = {ast.unparse(n): _is_type_expr(n) for n in ast.walk(tree) if isinstance(n, ast.BinOp)}
    assert ops == {"int | None": True, "a | b": False}
