"""Both gizmos loaded in a real `nuke -t` (runs only with `NUKE_EXE` set, e.g. on a licensed box).

A small script run by Nuke's terminal mode creates each gizmo from `gizmos/`, and reports every
user knob's class and value, the view Switch's `which` in terminal mode (`$gui` is false there:
it must pick the atlas) and the internal Reads' file names with a script-relative cache path
(`[subst [value parent.cache_path]]` must evaluate it). The answers are compared with the gizmo
text as `nkparse` reads it, and with the knob classes of `test_gizmo_structure`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nkparse
import pytest
from test_gizmo_structure import NUKE_KNOB_CLASSES

GIZMO_DIR = Path(__file__).resolve().parents[2] / "gizmos"

pytestmark = [
    pytest.mark.nuke,
    pytest.mark.skipif(not os.environ.get("NUKE_EXE"), reason="needs a real Nuke (NUKE_EXE)"),
]

SCRIPT = r"""
import json, sys
import nuke

gizmo_dir, out_path, script_path = sys.argv[1:4]
nuke.pluginAddPath(gizmo_dir)
nuke.root()["name"].setValue(script_path)
report = {}
for name in ("RNAAtlasBuild", "RNAApply"):
    node = nuke.createNode(name, inpanel=False)
    knobs = {}
    for knob in node.allKnobs():
        knobs[knob.name()] = [knob.Class(), str(knob.value()) if hasattr(knob, "value") else ""]
    entry = {"class": node.Class(), "knobs": knobs, "inputs": node.maxInputs()}
    if name == "RNAAtlasBuild":
        node["cache_path"].setValue("[file dirname [value root.name]]/rna/B/v001")
        node["view"].setValue("plate")
        node["cache_ready"].setValue(True)
        with node:
            entry["which"] = nuke.toNode("view_switch")["which"].value()
            entry["atlas_file"] = nuke.filename(nuke.toNode("Read_atlas"))
    else:
        node["cache_dir"].setValue("[file dirname [value root.name]]/rna/B")
        node["version"].setValue(3)
        with node:
            entry["atlas_file"] = nuke.filename(nuke.toNode("ReadAtlas"))
    report[name] = entry
with open(out_path, "w") as fh:
    json.dump(report, fh)
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("nuke")
    script = tmp / "probe.py"
    script.write_text(SCRIPT)
    out = tmp / "report.json"
    comp = (tmp / "shot" / "comp.nk").as_posix()
    subprocess.run(
        [os.environ["NUKE_EXE"], "-t", str(script), str(GIZMO_DIR), str(out), comp],
        check=True,
        timeout=300,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["RNAAtlasBuild", "RNAApply"])
def test_every_user_knob_loads_with_its_class(report: dict, name: str) -> None:
    group = nkparse.parse_file(GIZMO_DIR / f"{name}.gizmo").groups()[0]
    got = report[name]["knobs"]
    for knob in group.user_knobs:
        assert knob.name in got, f"{name}.{knob.name} missing in Nuke"
        assert got[knob.name][0] == NUKE_KNOB_CLASSES[knob.type_id], f"{name}.{knob.name}"
    assert report[name]["inputs"] == 3


def test_terminal_mode_renders_the_atlas_and_evaluates_relative_paths(
    report: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    build, apply = report["RNAAtlasBuild"], report["RNAApply"]
    assert build["which"] == 0  # $gui is false in nuke -t: the atlas, whatever the view
    assert build["atlas_file"].endswith("/shot/rna/B/v001/atlas/atlas.exr")
    assert "[" not in build["atlas_file"]
    assert apply["atlas_file"].endswith("/shot/rna/B/v003/atlas/atlas.exr")
    assert "[" not in apply["atlas_file"]
