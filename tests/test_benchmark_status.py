"""BENCHMARKS.md's status table is what `benchmarks/status.py` makes of `benchmarks/results/`.

`benchmarks/` is not a package and not collected, so its two modules are loaded by path.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


status = _load("status")
results = _load("results")


@pytest.fixture
def copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of BENCHMARKS.md and of the records: (document, records folder)."""
    doc = tmp_path / "BENCHMARKS.md"
    shutil.copyfile(DOC, doc)
    folder = tmp_path / "results"
    shutil.copytree(RESULTS, folder)
    return doc, folder


def _row(text: str, kind_title: str, name: str) -> str:
    """The table row of `name` in the table under the title that starts with `kind_title`."""
    _, block, _ = status.split(text)
    table = block.split(f"**{kind_title}")[1].split("\n\n**")[0]
    (row,) = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
    return row


def test_the_committed_block_is_what_the_records_give() -> None:
    records = status.load_records(RESULTS)
    _, block, _ = status.split(DOC.read_text(encoding="utf-8"))
    assert block == "\n" + status.render(records) + "\n"
    assert status.main(["--check"]) == 0


def test_the_block_opens_the_document() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n")
    before = text.split(status.BEGIN)[0]
    assert len(before.splitlines()) <= 8 and "python benchmarks/status.py" in before
    kinds = {r["kind"] for r in status.load_records(RESULTS)}
    assert {"clip", "hard", "smoke", "build"} <= kinds


def test_a_new_record_changes_its_row(copy: tuple[Path, Path]) -> None:
    doc, folder = copy
    old = _row(doc.read_text(encoding="utf-8"), "Real clips", "bear")
    assert "99.6 / 100.0" in old and "`27cfbfb`" in old
    path = results.write_result(
        "clip",
        "bear",
        {"build_s": 91.234, "visible_coverage_worst_pct": 12.3456, "leak_max_pct": None},
        "python benchmarks/bench_clips.py --clip bear --device cuda:0",
        "NVIDIA H100 80GB HBM3",
        "abc1234",
        "standard",
        "Visible coverage worst at frame 3 (-58)",
        date="2027-01-02",
        directory=folder,
    )
    assert path == folder / "clip-bear.json"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp left
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["figures"] == {
        "build_s": 91.2,
        "visible_coverage_worst_pct": 12.35,
        "leak_max_pct": None,
    }

    args = ["--results", str(folder), "--doc", str(doc)]
    assert status.main([*args, "--check"]) == 1
    assert status.main(args) == 0
    text = doc.read_text(encoding="utf-8")
    row = _row(text, "Real clips", "bear")
    assert "| 91.2 |" in row and "12.35 / –" in row
    assert "`abc1234`" in row and "2027-01-02" in row and "NVIDIA H100 80GB HBM3" in row
    assert "99.6" not in row and "27cfbfb" not in row
    assert "`python benchmarks/bench_clips.py --clip bear --device cuda:0`" in text
    assert _row(text, "Real clips", "blackswan") == _row(
        DOC.read_text("utf-8"), "Real clips", "blackswan"
    )
    # everything outside the block is untouched
    assert status.split(text)[0] == status.split(DOC.read_text("utf-8"))[0]
    assert status.split(text)[2] == status.split(DOC.read_text("utf-8"))[2]
    assert status.main([*args, "--check"]) == 0


def test_a_record_without_commit_names_its_file(
    copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    doc, folder = copy
    path = folder / "hard-pan.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    del record["commit"]
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(status.RecordError, match=r"hard-pan\.json: missing 'commit'"):
        status.load_records(folder)
    before = doc.read_text(encoding="utf-8")
    assert status.main(["--results", str(folder), "--doc", str(doc)]) == 2
    assert "hard-pan.json: missing 'commit'" in capsys.readouterr().err
    assert doc.read_text(encoding="utf-8") == before


def test_a_record_under_the_wrong_name_is_refused(copy: tuple[Path, Path]) -> None:
    _, folder = copy
    shutil.copyfile(folder / "clip-bear.json", folder / "clip-bear2.json")
    with pytest.raises(
        status.RecordError, match=r"clip-bear2\.json: holds kind 'clip', name 'bear'"
    ):
        status.load_records(folder)


def test_the_records_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(results.ENV_VAR, raising=False)
    assert results.target_dir("", quick=False) == results.RESULTS_DIR
    assert results.target_dir("", quick=True) is None  # a --quick run measures nothing
    assert results.target_dir(str(tmp_path), quick=True) == tmp_path
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path / "env"))
    assert results.target_dir("", quick=True) == tmp_path / "env"
    with pytest.raises(ValueError, match="not a number"):
        results.make_record("clip", "bear", {"x_pct": "12"}, "cmd", "cpu", "abc", "draft")
