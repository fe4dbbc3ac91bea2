"""Structure of every `gizmos/*.gizmo`, checked without Nuke via `nkparse`."""

from __future__ import annotations

import re
from pathlib import Path

import nkparse
import pytest

GIZMO_DIR = Path(__file__).resolve().parents[2] / "gizmos"
GIZMOS = sorted(GIZMO_DIR.glob("*.gizmo"))

KNOWN_KNOB_IDS = {
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    26,
    27,
    28,
    29,
    31,
    32,
    33,
    36,
    38,
    39,
    40,
    41,
    43,
    44,
    45,
    48,
    49,
    51,
    53,
    54,
    55,
    58,
    59,
    60,
    61,
    64,
    65,
    66,
    67,
    68,
    69,
    70,
    72,
    77,
}
"""IDs of nuke.KnobType (eStringKnob = 1 ... eCancelExecutionKnob = 77) and the NDK's "Knobs by
ID" table: String 1, File 2, Int 3, Enumeration 4, Boolean 6, Double 7, XY 12, Color 18,
AColor 19, Tab 20, PyScript 22, Text 26, Script (Tcl button) 32, Link 41, ..."""
PYTHON_KNOBS = {
    "knobChanged",
    "onCreate",
    "onDestroy",
    "autolabel",
    "beforeRender",
    "afterRender",
    "beforeFrameRender",
    "afterFrameRender",
    "updateUI",
}
"""Node knobs whose value is Python source."""
GROUP_BUILTIN_KNOBS = {
    "name",
    "label",
    "help",
    "note_font",
    "note_font_size",
    "note_font_color",
    "tile_color",
    "gl_color",
    "selected",
    "hide_input",
    "cached",
    "disable",
    "xpos",
    "ypos",
    "postage_stamp",
    "lifetimeStart",
    "lifetimeEnd",
    "useLifetime",
    "icon",
    "indicators",
    "inputs",
    "knobChanged",
    "onCreate",
    "onDestroy",
    "updateUI",
    "autolabel",
    "bookmark",
    "dope_sheet",
}
_ABSOLUTE = re.compile(
    r"(?:^|(?<=[\s\"'=(,{]))(?:/[A-Za-z_][\w.-]*/|[A-Za-z]:[\\/]|\\\\[\w.-]+\\|~/)"
)
_PARENT_REF = re.compile(r"\bparent\.([A-Za-z_]\w*)")


def _parse(path: Path) -> nkparse.Script:
    return nkparse.parse_file(path)


def _group(path: Path) -> nkparse.Node:
    script = _parse(path)
    assert len(script.nodes) == 1, f"{path.name}: expected one top-level Group/Gizmo"
    group = script.nodes[0]
    assert group.is_group and group.closed, f"{path.name}: the top node must be a closed group"
    return group


def _all_knob_texts(group: nkparse.Node) -> list[tuple[str, str]]:
    """(where, text) of every knob value and user-knob option in the group and its children."""
    out: list[tuple[str, str]] = []
    for node in [group, *group.walk()]:
        for key, word in node.assignments:
            out.append((f"{node.name}.{key}", word.text))
        for knob in node.user_knobs:
            for letter, word in knob.options.items():
                out.append((f"{node.name}.{knob.name}[{letter}]", word.text))
    return out


def test_there_are_gizmos_to_check() -> None:
    assert (GIZMO_DIR / "RNAApply.gizmo") in GIZMOS


@pytest.mark.parametrize("path", GIZMOS, ids=lambda p: p.name)
class TestEveryGizmo:
    def test_parses_with_balanced_braces_and_end_group(self, path: Path) -> None:
        script = _parse(path)
        assert script.commands[-1] == "end_group", "the file must end with end_group"
        assert script.commands.count("end_group") == len(script.groups())
        _group(path)

    def test_inputs_are_numbered_in_order(self, path: Path) -> None:
        group = _group(path)
        inputs = [n for n in group.children if n.cls == "Input"]
        numbers = sorted(n.input_number() for n in inputs)
        assert numbers == list(range(len(inputs))), f"Input numbers {numbers}"
        names = [n.name for n in inputs]
        assert len(set(names)) == len(names)
        assert not [n for n in names if re.fullmatch(r"Input\d*", n)], "name the inputs"
        declared = group.knob("inputs")
        if declared is not None:
            assert sum(int(p) for p in declared.split("+")) == len(inputs)
        assert sum(1 for n in group.children if n.cls == "Output") == 1

    def test_names_are_unique(self, path: Path) -> None:
        group = _group(path)
        for node in [group, *group.walk()]:
            if node.is_group:
                names = [c.name for c in node.children]
                dupes = {n for n in names if names.count(n) > 1}
                assert not dupes, f"{node.name}: duplicate node names {dupes}"
            knob_names = [k.name for k in node.user_knobs if k.name]
            dupes = {n for n in knob_names if knob_names.count(n) > 1}
            assert not dupes, f"{node.name}: duplicate user knobs {dupes}"
            assigned = [key for key, _ in node.assignments]
            dupes = {n for n in assigned if assigned.count(n) > 1}
            assert not dupes, f"{node.name}: knobs set twice {dupes}"
            clash = set(knob_names) & GROUP_BUILTIN_KNOBS if node.is_group else set()
            assert not clash, f"{node.name}: user knobs shadow built-in knobs {clash}"

    def test_user_knobs_are_well_formed(self, path: Path) -> None:
        group = _group(path)
        for node in [group, *group.walk()]:
            for knob in node.user_knobs:
                where = f"{node.name}.{knob.name}"
                assert knob.type_id in KNOWN_KNOB_IDS, f"{where}: unknown knob type {knob.type_id}"
                if knob.type_id == 4:
                    assert knob.items, f"{where}: enumeration without M {{items}}"
                    value = node.knob(knob.name)
                    if value is not None and not node.knobs[knob.name].is_expression:
                        assert value in knob.items, f"{where}: {value!r} not in {knob.items}"
                if knob.type_id == 41:
                    target = knob.options.get("T")
                    assert target is not None, f"{where}: Link knob without T Node.knob"
                    inner = target.text.split(".")[0]
                    assert inner in {c.name for c in node.children}, f"{where}: links {target}"
                if knob.type_id == 22:
                    assert "T" in knob.options, f"{where}: Python button without code"
                if knob.type_id not in (20, 26) and knob.name:
                    assert re.fullmatch(r"[A-Za-z_]\w*", knob.name), f"{where}: bad knob name"

    def test_embedded_python_compiles(self, path: Path) -> None:
        group = _group(path)
        for node in [group, *group.walk()]:
            for knob in node.user_knobs:
                if knob.type_id == 22:
                    compile(knob.options["T"].text, f"{path.name}:{node.name}.{knob.name}", "exec")
            for key in PYTHON_KNOBS & set(node.knobs):
                compile(node.knobs[key].text, f"{path.name}:{node.name}.{key}", "exec")

    def test_no_absolute_paths(self, path: Path) -> None:
        group = _group(path)
        for where, text in _all_knob_texts(group):
            assert not _ABSOLUTE.search(text), f"{path.name} {where}: absolute path in {text!r}"
        for line, comment in _parse(path).comments:
            assert not _ABSOLUTE.search(comment), f"{path.name}:{line}: absolute path {comment!r}"

    def test_no_viewer_nodes(self, path: Path) -> None:
        group = _group(path)
        viewers = [n.name for n in group.walk() if n.cls == "Viewer"]
        assert not viewers, f"{path.name}: Viewer nodes inside: {viewers}"

    def test_parent_references_exist(self, path: Path) -> None:
        # a typo in parent.knob silently evaluates to 0 in Nuke
        group = _group(path)
        knobs = {k.name for k in group.user_knobs} | GROUP_BUILTIN_KNOBS
        for node in group.walk():
            for key, word in node.assignments:
                for name in _PARENT_REF.findall(word.text):
                    ok = name in knobs or re.fullmatch(r"input\d+", name)
                    assert ok, f"{node.name}.{key}: parent.{name} is not a knob of the gizmo"

    def test_every_node_inside_is_wired(self, path: Path) -> None:
        group = _group(path)
        for node in group.walk():
            if node.inputs:  # generators (inputs 0) have none
                assert node.inputs[0] is not None, f"{node.name}: input 0 unconnected"


# --------------------------------------------------------------------------------------------
# The parser itself

SAMPLE = r"""version 13.2 v1
#! a comment
Gizmo {
 inputs 2
 addUserKnob {20 tab l "My Tab"}
 addUserKnob {4 mode l mode M {one "two words" three}}
 mode "two words"
 addUserKnob {7 amount R 0 2}
 addUserKnob {22 go T "print(\"hi\")\nx = \[1]" +STARTLINE}
 label "\[value mode]"
}
 Input {
  inputs 0
  name src
 }
set Nsrc [stack 0]
 Input {
  inputs 0
  name other
  number 1
 }
push $Nsrc
 Merge2 {
  inputs 2+1
  operation {minus}
  disable {{"\[exists parent.input1] ? 0 : 1"}}
  name M
 }
push 0
 Switch {
  inputs 2
  which {{parent.amount > 1}}
  name S
 }
 Output {
  name Out
 }
end_group
"""


def test_parser_builds_the_graph_from_the_stack() -> None:
    script = nkparse.parse(SAMPLE)
    group = script.groups()[0]
    assert group.cls == "Gizmo" and group.closed
    assert script.comments == [(2, "#! a comment")]
    merge = group.find("M")
    # stack before Merge2: [src, other, src] → input 0 = src (top), 1 = other, 2 (mask) = src
    assert [n.name if n else None for n in merge.inputs] == ["src", "other", "src"]
    switch = group.find("S")
    assert [n.name if n else None for n in switch.inputs] == [None, "M"]
    assert group.find("Out").inputs[0] is switch
    assert merge.knob("operation") == "minus"
    assert merge.knobs["disable"].is_expression
    assert merge.knobs["disable"].expression == "[exists parent.input1] ? 0 : 1"
    assert switch.knobs["which"].expression == "parent.amount > 1"


def test_parser_reads_user_knobs_and_escapes() -> None:
    group = nkparse.parse(SAMPLE).groups()[0]
    mode = group.user_knob("mode")
    assert mode is not None and mode.type_id == 4
    assert mode.items == ["one", "two words", "three"]
    assert group.knob("mode") == "two words"
    amount = group.user_knob("amount")
    assert amount is not None and amount.range == (0.0, 2.0)
    go = group.user_knob("go")
    assert go is not None and go.flags == ["+STARTLINE"]
    assert go.options["T"].text == 'print("hi")\nx = [1]'
    assert group.knob("label") == "[value mode]"
    assert group.user_knob("tab").label == "My Tab"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text,message",
    [
        ("Group {\n name G\n}\n Dot {\n  name D\n", "unbalanced '{'"),
        ("Group {\n name G\n}\n Dot {}\n}\nend_group\n", "unbalanced '}'"),
        ('Group {\n label "open\n}\nend_group\n', "no closing quote"),
        ("Group {\n name G\n}\n Dot {}\n", "missing end_group"),
        ("Dot {}\nend_group\n", "end_group without"),
        ("Group {}\npush $Nnope\nend_group\n", "unknown variable"),
        ("Group {\n addUserKnob {x bad}\n}\nend_group\n", "not an integer"),
        ("Group {\n name\n}\nend_group\n", "without a value"),
    ],
)
def test_parser_rejects_malformed_text(text: str, message: str) -> None:
    with pytest.raises(nkparse.NkSyntaxError, match=message):
        nkparse.parse(text)


def test_absolute_path_pattern() -> None:
    for bad in (
        "/home/me/cache",
        "C:/Program Files/Nuke",
        "x \\\\server\\share",
        "~/rna",
        'file "/mnt/show/a.exr"',
    ):
        assert _ABSOLUTE.search(bad), bad
    for good in (
        "[value parent.cache_dir]/v001/passes/rna.####.exr",
        "x / 2",
        "a/b",
        "cache root/build name",
        "rna.####.exr",
    ):
        assert not _ABSOLUTE.search(good), good


NUKE_KNOB_CLASSES = {
    1: "String_Knob",
    2: "File_Knob",
    3: "Int_Knob",
    4: "Enumeration_Knob",
    6: "Boolean_Knob",
    7: "Double_Knob",
    11: "Channel_Knob",
    20: "Tab_Knob",
    22: "PyScript_Knob",
    26: "Text_Knob",
}
"""`addUserKnob` type → the Python class Nuke gives the knob: every type the gizmos use.
The `nuke`-marked test checks these classes in a real Nuke; until then this table, the fake
and nkparse must all know every type used."""


@pytest.mark.parametrize("path", GIZMOS, ids=lambda p: p.name)
def test_every_knob_type_used_is_covered(path: Path, fake_nuke) -> None:
    group = _group(path)
    used = {k.type_id for node in [group, *group.walk()] for k in node.user_knobs}
    assert used <= set(NUKE_KNOB_CLASSES), (
        f"no expected class for types {used - set(NUKE_KNOB_CLASSES)}"
    )
    for type_id in used:
        cls = fake_nuke._USER_KNOB_TYPES[type_id]  # the fake loads it as that knob class
        assert cls.__name__ == NUKE_KNOB_CLASSES[type_id], type_id


@pytest.mark.parametrize("path", GIZMOS, ids=lambda p: p.name)
def test_dividers_have_an_empty_label_and_sliders_a_range(path: Path) -> None:
    group = _group(path)
    for knob in group.user_knobs:
        if knob.type_id == 26 and "T" not in knob.options:  # a divider line
            assert knob.label == "", f'{knob.name}: a divider without l "" shows its name'
        if knob.type_id == 7:
            assert knob.range is not None, f"{knob.name}: slider without R min max"
        if knob.type_id not in (20, 26):
            assert "t" in knob.options, f"{knob.name}: no tooltip"


def test_atlas_scale_slider_is_the_range_the_engine_accepts() -> None:
    from rna_engine.errors import InputError
    from rna_engine.settings import BakeSettings

    knob = _group(GIZMO_DIR / "RNAAtlasBuild.gizmo").user_knob("atlas_scale")
    assert knob is not None and knob.range == (0.25, 4.0)
    low, high = knob.range
    BakeSettings(atlas_scale=low), BakeSettings(atlas_scale=high)
    for outside in (low - 0.01, high + 0.01):
        with pytest.raises(InputError, match="bake.atlas_scale"):
            BakeSettings(atlas_scale=outside)
