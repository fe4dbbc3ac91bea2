"""THE one fake `nuke` module of the test suite : an in-memory node graph.

`tests/conftest.py` installs it as `sys.modules["nuke"]` with a fresh graph per test (fixture
`fake_nuke`). It behaves like a small real Nuke, not like a mock: an API name Nuke does not
have raises AttributeError, a knob a node does not have raises NameError, a node class Nuke
does not know raises RuntimeError, `setProgress` wants an int, and touching knobs from a worker
thread outside `executeInMainThread` while `GUI` is on is recorded as a threading violation
(`fake.thread_violations`), as is calling `executeInMainThread` from the main thread (raises:
that hangs a real Nuke).

What it models: nodes with knobs, inputs and groups (`createNode`, `nodes.X(...)`, `toNode`,
`allNodes`, `delete`, `with group:`); `.nk`/`.gizmo` text (`nodePaste`, gizmo classes found on
the plug-in path, a TCL-word tokenizer with the stack wiring of `set`/`push`/`inputs`, user
knobs from `addUserKnob`); knob callbacks (`knobChanged` fired for programmatic changes as in
Nuke 17.1, `onCreate` after creation, PyScript buttons) with `thisNode`/`thisKnob`; a minimal
TCL (`value`, `file dirname|tail|join|rootname`, `format`, `frame`, `subst`, `getenv`; results
are not substituted again) for `File_Knob.evaluate`, `filename` and `tcl`; `execute`
(recorded; `fake.on_execute` may write files); a recording `ProgressTask`, `message`, `menu`.

Test-side helpers live on `nuke.fake` (the state of the current graph), never on the API.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

# ------------------------------------------------------------------------------------------
# constants (names from the types-nuke stubs)

GUI = True
NUKE_VERSION_MAJOR = 15
NUKE_VERSION_MINOR = 1
NUKE_VERSION_RELEASE = 2
NUKE_VERSION_STRING = "15.1v2"
EXE_PATH = ""
"""The Nuke executable; tests set it to a folder laid out like an install."""
INVISIBLE = 0x00000400
DISABLED = 0x00000080
STARTLINE = 0x00001000
ENDLINE = 0x00002000
READ_ONLY = 0x10000000
NO_ANIMATION = 0x00000100
DO_NOT_WRITE = 0x00000200
ALWAYS_SAVE = 0x00800000
INPUTS = 0x1
HIDDEN_INPUTS = 0x2
EXPRESSIONS = 0x4
REPLACE = 1
untitled = "Untitled"


class CancelledError(Exception):
    """Raised by a render the user cancelled."""


# ------------------------------------------------------------------------------------------
# state of the current graph


class FakeState:
    """Everything the fake records; `nuke.fake` is the state of the current test's graph."""

    def __init__(self) -> None:
        self.main_thread = threading.main_thread()
        self.tls = threading.local()
        self.root = Root()
        self.context: list[Group] = [self.root]
        self.this: list[tuple[Node, Knob | None]] = []
        self.frame = 1
        self.messages: list[str] = []
        self.log: list[tuple[str, str]] = []
        self.executed: list[dict[str, Any]] = []
        self.on_execute: Callable[[Node, int, int], None] | None = None
        self.progress_tasks: list[ProgressTask] = []
        self.cancel_when: Callable[[ProgressTask], bool] | None = None
        self.main_thread_calls: list[str] = []
        self.thread_violations: list[str] = []
        self.plugin_path: list[str] = []
        self.menus: dict[str, Menu] = {}
        self.layers: dict[str, list[str]] = {}
        self.knob_changed_on_set = True
        """Nuke 17.1: knobChanged fires for programmatic changes too."""
        self.knob_changed_calls = 0
        self.knob_changed_depth = 0
        self.ask_answer = True
        self.choice_answer: int | None = None
        """What `nuke.choice` returns (an option index; None = the user cancelled)."""
        self.choices: list[tuple[str, list[str]]] = []
        self.callbacks: dict[str, list[Any]] = {}

    # test helpers
    def set_metadata(self, node: Node, metadata: dict[str, Any]) -> None:
        node._metadata = dict(metadata)

    def set_format(self, node: Node, width: int, height: int) -> None:
        node._format = (int(width), int(height))

    def in_main_call(self) -> bool:
        return bool(getattr(self.tls, "in_main", False))


def reset() -> FakeState:
    """A fresh graph (the fixture calls this for every test)."""
    global fake, GUI
    GUI = True
    fake = FakeState()
    return fake


def _module() -> Any:
    return sys.modules[__name__]


def _check_thread(what: str) -> None:
    if GUI and threading.current_thread() is not fake.main_thread and not fake.in_main_call():
        fake.thread_violations.append(f"{what} from thread {threading.current_thread().name}")


# ------------------------------------------------------------------------------------------
# knobs


class Knob:
    """Base of every knob."""

    _default: Any = ""

    def __init__(self, name: str, label: str | None = None, *args: Any, **kwargs: Any) -> None:
        self._name = name
        self._label = name if label is None else label
        self._value: Any = self._default
        self._tooltip = ""
        self._flags = STARTLINE
        self._enabled = True
        self._visible = True
        self._expression: str | None = None
        self._node: Node | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name}>"

    def Class(self) -> str:
        return type(self).__name__

    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def label(self) -> str:
        return self._label

    def setLabel(self, label: str) -> None:
        self._label = label

    def tooltip(self) -> str:
        return self._tooltip

    def setTooltip(self, tooltip: str) -> None:
        self._tooltip = tooltip

    def node(self) -> Node:
        if self._node is None:
            raise ValueError(f"knob {self._name} is not on a node")
        return self._node

    def fullyQualifiedName(self, channel: int = -1) -> str:
        return f"{self.node().fullName()}.{self._name}"

    def _touch(self, what: str) -> None:
        if self._node is not None:
            _check_thread(f"{what} {self._node.fullName()}.{self._name}")

    def _coerce(self, value: Any) -> Any:
        return value

    def value(self, *args: Any, **kwargs: Any) -> Any:
        self._touch("read")
        return self._value

    def getValue(self, *args: Any, **kwargs: Any) -> Any:
        return self.value()

    def setValue(self, value: Any, *args: Any, **kwargs: Any) -> bool:
        self._touch("set")
        self._value = self._coerce(value)
        self._expression = None
        if self._node is not None:
            self._node._knob_changed(self)
        return True

    def fromScript(self, text: str) -> None:
        self._value = self._coerce(text)

    def toScript(self, *args: Any, **kwargs: Any) -> str:
        return str(self._value)

    def setExpression(self, expression: str, *args: Any, **kwargs: Any) -> bool:
        self._expression = expression
        return True

    def hasExpression(self, *args: Any, **kwargs: Any) -> bool:
        return self._expression is not None

    def expression(self) -> str | None:
        """Fake-only reader of an expression set by text or setExpression."""
        return self._expression

    def isAnimated(self, *args: Any) -> bool:
        return False

    def clearAnimated(self, *args: Any) -> bool:
        """Drop the animation or expression; the knob keeps its last plain value."""
        self._touch("set")
        self._expression = None
        return True

    def setEnabled(self, enabled: bool) -> None:
        self._touch("enable")
        self._enabled = bool(enabled)

    def enabled(self) -> bool:
        return self._enabled

    def setVisible(self, visible: bool) -> None:
        self._visible = bool(visible)

    def visible(self) -> bool:
        return self._visible and not self._flags & INVISIBLE

    def setFlag(self, flag: int) -> None:
        self._flags |= int(flag)

    def clearFlag(self, flag: int) -> None:
        self._flags &= ~int(flag)

    def getFlag(self, flag: int) -> bool:
        return bool(self._flags & int(flag))


class Obsolete_Knob(Knob):
    pass


class String_Knob(Knob):
    _default = ""

    def __init__(self, name: str, label: str | None = None, text: str = "", **kw: Any) -> None:
        super().__init__(name, label)
        self._value = str(text)

    def _coerce(self, value: Any) -> Any:
        return "" if value is None else str(value)

    def getText(self, *args: Any) -> str:
        return str(self.value())

    def setText(self, text: str) -> None:
        self.setValue(text)


class EvalString_Knob(String_Knob):
    def evaluate(self, *args: Any, **kwargs: Any) -> str:
        self._touch("evaluate")
        return _tcl_subst(str(self._value), self.node())


class Multiline_Eval_String_Knob(EvalString_Knob):
    pass


class File_Knob(EvalString_Knob):
    def evaluate(self, *args: Any, **kwargs: Any) -> str:
        """TCL substituted, frame number filled in (as Nuke's evaluate)."""
        return _fill_frame(super().evaluate(), fake.frame)

    def getEvaluatedValue(self, *args: Any, **kwargs: Any) -> str:
        return self.evaluate()


class Script_Knob(String_Knob):
    """A button: `execute()` runs its Python with thisNode/thisKnob set."""

    def __init__(self, name: str, label: str | None = None, command: str = "", **kw: Any) -> None:
        super().__init__(name, label, command)
        self.executions = 0
        """Fake-only: how many times the button ran."""

    def command(self) -> str:
        return str(self._value)

    def setCommand(self, command: str) -> None:
        self._value = str(command)

    def execute(self) -> None:
        self.executions += 1
        code = str(self._value)
        if code.strip():
            _run_python(code, self.node(), self)


class PyScript_Knob(Script_Knob):
    pass


class PythonKnob(String_Knob):
    pass


class Text_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, text: str = "", **kw: Any) -> None:
        super().__init__(name, label)
        self._value = str(text)

    def _coerce(self, value: Any) -> Any:
        return str(value)


class Tab_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, flags: int = 0, **kw: Any) -> None:
        super().__init__(name, label)
        self._value = 0


class BeginTabGroup_Knob(Tab_Knob):
    pass


class EndTabGroup_Knob(Tab_Knob):
    pass


class Array_Knob(Knob):
    _default: Any = 0.0

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        if isinstance(value, str):
            parts = value.strip("{} ").split()
            if len(parts) > 1:
                return [float(p) for p in parts]
            value = parts[0] if parts else 0
        return float(value)

    def defaultValue(self) -> Any:
        return self._default


class Int_Knob(Array_Knob):
    _default = 0

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.lower().startswith("0x"):
                return int(text, 16)
            value = {"true": 1, "false": 0}.get(text, text)
        return int(float(value))


class Double_Knob(Array_Knob):
    _default = 0.0


class WH_Knob(Double_Knob):
    pass


class XY_Knob(Array_Knob):
    _default = (0.0, 0.0)


class Color_Knob(Array_Knob):
    pass


class AColor_Knob(Color_Knob):
    pass


class Boolean_Knob(Array_Knob):
    _default = False

    def __init__(self, name: str, label: str | None = None, value: Any = False, **kw: Any) -> None:
        super().__init__(name, label)
        self._value = self._coerce(value)

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes", "on")
        return bool(value)


class Disable_Knob(Boolean_Knob):
    pass


class Unsigned_Knob(Array_Knob):
    _default = 0


class Enumeration_Knob(Unsigned_Knob):
    """`value()` is the entry's name, `getValue()` its index (as in Nuke)."""

    def __init__(
        self, name: str, label: str | None = None, values: Iterable[str] = (), **kw: Any
    ) -> None:
        super().__init__(name, label)
        self._values = [str(v) for v in values]
        self._value = 0

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            if value in self._values:
                return self._values.index(value)
            if value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise ValueError(f"{self._name}: {value!r} is not one of {self._values}")
        index = int(value)
        if not 0 <= index < max(1, len(self._values)):
            raise ValueError(f"{self._name}: index {index} out of range")
        return index

    def value(self, *args: Any, **kwargs: Any) -> Any:
        self._touch("read")
        return self._values[self._value] if self._values else ""

    def getValue(self, *args: Any, **kwargs: Any) -> Any:
        self._touch("read")
        return float(self._value)

    def values(self) -> list[str]:
        return list(self._values)

    def setValues(self, values: Iterable[str]) -> None:
        self._values = [str(v) for v in values]
        self._value = 0

    def numValues(self) -> int:
        return len(self._values)

    def enumName(self, n: int) -> str:
        return self._values[n]


class Pulldown_Knob(Enumeration_Knob):
    pass


class Channel_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, depth: int = 0, **kw: Any) -> None:
        super().__init__(name, label)
        self._value = "none"

    def _coerce(self, value: Any) -> Any:
        return str(value)


class ChannelMask_Knob(Channel_Knob):
    pass


class Link_Knob(Knob):
    def __init__(self, name: str, label: str | None = None, **kw: Any) -> None:
        super().__init__(name, label)
        self._link = ""

    def setLink(self, link: str) -> None:
        self._link = str(link)

    def getLink(self) -> str:
        return self._link

    def makeLink(self, node: str, knob: str) -> None:
        self._link = f"{node}.{knob}"

    def getLinkedKnob(self) -> Knob:
        target = _resolve_knob(self._link, self.node())
        if target is None:
            raise ValueError(f"link {self._link!r} does not resolve")
        return target

    def value(self, *args: Any, **kwargs: Any) -> Any:
        return self.getLinkedKnob().value()


_USER_KNOB_TYPES: dict[int, type[Knob]] = {
    1: String_Knob,
    2: File_Knob,
    3: Int_Knob,
    4: Enumeration_Knob,
    6: Boolean_Knob,
    7: Double_Knob,
    8: Double_Knob,
    10: ChannelMask_Knob,
    11: Channel_Knob,
    12: XY_Knob,
    18: Color_Knob,
    19: AColor_Knob,
    20: Tab_Knob,
    22: PyScript_Knob,
    26: Text_Knob,
    41: Link_Knob,
}
"""`addUserKnob` type numbers this fake understands."""

# ------------------------------------------------------------------------------------------
# node classes and their built-in knobs

_COMMON_KNOBS: list[tuple[str, type[Knob], Any]] = [
    ("name", String_Knob, ""),
    ("label", String_Knob, ""),
    ("disable", Disable_Knob, False),
    ("selected", Boolean_Knob, False),
    ("xpos", Int_Knob, 0),
    ("ypos", Int_Knob, 0),
    ("knobChanged", PythonKnob, ""),
    ("onCreate", PythonKnob, ""),
    ("tile_color", Int_Knob, 0),
]
_ON_ERROR = ("error", "black", "checkerboard", "nearest frame")
_HOLD = ("hold", "loop", "bounce", "black")
_CLASS_KNOBS: dict[str, list[tuple[str, type[Knob], Any]]] = {
    "Read": [
        ("file", File_Knob, ""),
        ("first", Int_Knob, 1),
        ("last", Int_Knob, 1),
        ("origfirst", Int_Knob, 1),
        ("origlast", Int_Knob, 1),
        ("origset", Boolean_Knob, False),
        ("before", Enumeration_Knob, _HOLD),
        ("after", Enumeration_Knob, _HOLD),
        ("frame_mode", Enumeration_Knob, ("expression", "start at", "offset")),
        ("frame", String_Knob, ""),
        ("on_error", Enumeration_Knob, _ON_ERROR),
        ("reload", PyScript_Knob, ""),
        ("format", String_Knob, ""),
        ("reformat", Boolean_Knob, False),
        ("raw", Boolean_Knob, False),
        ("colorspace", String_Knob, "default"),
        ("premultiplied", Boolean_Knob, False),
        ("file_type", String_Knob, ""),
    ],
    "Write": [
        ("file", File_Knob, ""),
        ("file_type", Enumeration_Knob, (" ", "exr", "dpx", "tiff", "png", "jpeg", "mov")),
        ("channels", ChannelMask_Knob, "rgb"),
        ("datatype", Enumeration_Knob, ("16 bit half", "32 bit float")),
        (
            "compression",
            Enumeration_Knob,
            (
                "none",
                "Zip (1 scanline)",
                "Zip (16 scanlines)",
                "PIZ Wavelet (32 scanlines)",
                "RLE",
                "B44",
                "B44A",
                "DWAA",
                "DWAB",
            ),
        ),
        ("create_directories", Boolean_Knob, False),
        ("raw", Boolean_Knob, False),
        ("use_limit", Boolean_Knob, False),
        ("first", Int_Knob, 1),
        ("last", Int_Knob, 1),
        ("render_order", Int_Knob, 1),
        ("colorspace", String_Knob, "default"),
    ],
    "Invert": [("channels", ChannelMask_Knob, "rgb"), ("mix", Double_Knob, 1.0)],
    "Roto": [("output", ChannelMask_Knob, "alpha"), ("curves", String_Knob, "")],
    "RotoPaint": [("output", ChannelMask_Knob, "rgba"), ("curves", String_Knob, "")],
    "Grade": [
        ("channels", ChannelMask_Knob, "rgb"),
        ("multiply", Color_Knob, 1.0),
        ("white", Color_Knob, 1.0),
        ("mix", Double_Knob, 1.0),
    ],
    "Transform": [
        ("translate", XY_Knob, (0.0, 0.0)),
        ("rotate", Double_Knob, 0.0),
        ("scale", Double_Knob, 1.0),
    ],
    "Reformat": [("format", String_Knob, "")],
    "Blur": [("channels", ChannelMask_Knob, "rgba"), ("size", Double_Knob, 0.0)],
    "Constant": [("color", AColor_Knob, 0.0), ("format", String_Knob, "")],
    "CheckerBoard2": [("format", String_Knob, ""), ("boxsize", Double_Knob, 64.0)],
    "Dot": [],
    "NoOp": [],
    "Input": [("number", Int_Knob, 0)],
    "Output": [],
    "Switch": [("which", Double_Knob, 0.0)],
    "Copy": [],
    "ShuffleCopy": [],
    "Shuffle": [],
    "Shuffle2": [],
    "Merge2": [("operation", String_Knob, "over"), ("mix", Double_Knob, 1.0)],
    "Premult": [],
    "Unpremult": [],
    "STMap": [
        ("uv", Channel_Knob, "rgb"),
        ("channels", ChannelMask_Knob, "all"),
        ("filter", String_Knob, "Cubic"),
    ],
    "Expression": [],
    "Viewer": [],
    "Group": [],
    "Root": [
        ("first_frame", Int_Knob, 1),
        ("last_frame", Int_Knob, 100),
        ("fps", Double_Knob, 24.0),
        ("format", String_Knob, "HD_1080"),
        ("colorManagement", Enumeration_Knob, ("Nuke", "OCIO")),
        (
            "OCIO_config",
            Enumeration_Knob,
            (
                "nuke-default",
                "aces_1.0.3",
                "aces_1.1",
                "aces_1.2",
                "fn-nuke_cg-config-v1.0.0_aces-v1.3_ocio-v2.1",
                "fn-nuke_studio-config-v1.0.0_aces-v1.3_ocio-v2.1",
                "custom",
            ),
        ),
        ("customOCIOConfigPath", File_Knob, ""),
        ("workingSpaceLUT", String_Knob, "linear"),
    ],
}
_SOURCE_CLASSES = {"Read", "Input", "Constant", "CheckerBoard2", "ColorWheel", "Root"}
_MAX_INPUTS = {
    "Read": 0,
    "Input": 0,
    "Constant": 0,
    "CheckerBoard2": 0,
    "Root": 0,
    "Write": 1,
    "Output": 1,
    "Dot": 1,
    "Invert": 2,
    "Grade": 2,
    "Copy": 3,
    "STMap": 3,
    "Viewer": 10,
    "Switch": 10,
    "Merge2": 10,
}
_LENIENT_CLASSES = {
    "Copy",
    "ShuffleCopy",
    "Shuffle",
    "Shuffle2",
    "Expression",
    "Merge2",
    "Premult",
    "Unpremult",
    "Switch",
    "STMap",
    "Grade",
    "Dot",
    "NoOp",
    "Input",
    "Output",
    "Constant",
    "CheckerBoard2",
    "Reformat",
    "Blur",
    "Keymix",
    "Assert",
    "BackdropNode",
    "StickyNote",
    "Multiply",
    "Add",
    "Clamp",
    "Remove",
    "ChannelMerge",
    "Keyer",
    "FrameHold",
    "TimeOffset",
    "AppendClip",
    "Crop",
}
"""Classes whose many knobs this fake does not list: knobs set by name are created on demand."""
_DEFAULT_FORMAT = (1920, 1080)


def _new_knob(cls: type[Knob], name: str, default: Any) -> Knob:
    if cls is Enumeration_Knob:
        return Enumeration_Knob(name, name, default)
    knob = cls(name, name)
    if default is not None:
        knob._value = knob._coerce(default) if not isinstance(default, tuple) else list(default)
    return knob


class Node:
    """A node: knobs, inputs, a parent group."""

    def __init__(self, cls: str, parent: Group | None = None) -> None:
        self._class = cls
        self._knobs: dict[str, Knob] = {}
        self._inputs: list[Node | None] = []
        self._parent = parent
        self._metadata: dict[str, Any] = {}
        self._format: tuple[int, int] | None = None
        self._lenient = cls in _LENIENT_CLASSES
        for name, kcls, default in _COMMON_KNOBS + _CLASS_KNOBS.get(cls, []):
            self._attach(_new_knob(kcls, name, default))

    def __repr__(self) -> str:
        return f"<{self._class} {self.fullName()}>"

    def _attach(self, knob: Knob) -> None:
        knob._node = self
        self._knobs[knob.name()] = knob

    # identity
    def Class(self) -> str:
        return self._class

    def name(self) -> str:
        return str(self._knobs["name"]._value)

    def setName(self, name: str, uncollide: bool = False, updateExpressions: bool = False) -> None:
        parent = self._parent
        if parent is not None:
            taken = {n.name() for n in parent._children if n is not self}
            if name in taken:
                if not uncollide:
                    raise ValueError(f"{name}: a node of this name already exists")
                name = _unique_name(parent, re.sub(r"\d+$", "", name) or name)
        self._knobs["name"]._value = name

    def fullName(self) -> str:
        names = [self.name()]
        parent = self._parent
        while parent is not None and not isinstance(parent, Root):
            names.append(parent.name())
            parent = parent._parent
        return ".".join(reversed(names))

    def parent(self) -> Group:
        if self._parent is None:
            raise ValueError(f"{self.name()} has no parent")
        return self._parent

    # knobs
    def knob(self, name: str | int, follow_link: bool = False) -> Knob | None:
        if isinstance(name, int):
            return list(self._knobs.values())[name]
        return self._knobs.get(name)

    def __getitem__(self, name: str) -> Knob:
        knob = self._knobs.get(name)
        if knob is None:
            raise NameError(f"knob {name} does not exist")
        return knob

    def knobs(self) -> dict[str, Knob]:
        return dict(self._knobs)

    def allKnobs(self) -> list[Knob]:
        return list(self._knobs.values())

    def numKnobs(self) -> int:
        return len(self._knobs)

    def addKnob(self, knob: Knob) -> None:
        if knob.name() in self._knobs:
            raise ValueError(f"{self.name()}: knob {knob.name()} exists")
        self._attach(knob)

    def removeKnob(self, knob: Knob) -> None:
        self._knobs.pop(knob.name(), None)
        knob._node = None

    def _knob_changed(self, knob: Knob) -> None:
        if not fake.knob_changed_on_set:
            return
        code = str(self._knobs["knobChanged"]._value)
        if not code.strip() or knob.name() in ("knobChanged", "onCreate"):
            return
        fake.knob_changed_calls += 1
        fake.knob_changed_depth += 1
        try:
            if fake.knob_changed_depth > 30:
                raise RecursionError(f"{self.fullName()}: knobChanged recursion on {knob.name()}")
            _run_python(code, self, knob)
        finally:
            fake.knob_changed_depth -= 1

    # inputs
    def maxInputs(self) -> int:
        return _MAX_INPUTS.get(self._class, 5)

    def maximumInputs(self) -> int:
        return self.maxInputs()

    def input(self, index: int) -> Node | None:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def inputs(self) -> int:
        while self._inputs and self._inputs[-1] is None:
            self._inputs.pop()
        return len(self._inputs)

    def setInput(self, index: int, node: Node | None) -> bool:
        if index < 0 or index >= self.maxInputs():
            return False
        while len(self._inputs) <= index:
            self._inputs.append(None)
        self._inputs[index] = node
        return True

    def connectInput(self, index: int, node: Node | None) -> bool:
        return self.setInput(index, node)

    def dependencies(self, what: int = INPUTS | HIDDEN_INPUTS | EXPRESSIONS) -> list[Node]:
        out: list[Node] = []
        for node in self._inputs:
            if node is not None and node not in out:
                out.append(node)
        return out

    def dependent(
        self, what: int = INPUTS | HIDDEN_INPUTS | EXPRESSIONS, forceEvaluate: bool = True
    ) -> list[Node]:
        group = self._parent
        if group is None:
            return []
        return [n for n in group._children if self in n._inputs]

    # image info
    def metadata(
        self, key: str | None = None, time: float | None = None, view: str | None = None
    ) -> Any:
        if key is None:
            return dict(self._metadata)
        return self._metadata.get(key)

    def width(self) -> int:
        return self._image_format()[0]

    def height(self) -> int:
        return self._image_format()[1]

    def _image_format(self) -> tuple[int, int]:
        if self._format is not None:
            return self._format
        up = self.input(0)
        return up._image_format() if up is not None else _DEFAULT_FORMAT

    def firstFrame(self) -> int:
        return self.frameRange().first()

    def lastFrame(self) -> int:
        return self.frameRange().last()

    def frameRange(self) -> FrameRange:
        if self._class == "Read":
            return FrameRange(int(self["first"]._value), int(self["last"]._value))
        up = self.input(0)
        if up is not None:
            return up.frameRange()
        root = fake.root
        return FrameRange(int(root["first_frame"]._value), int(root["last_frame"]._value))

    # UI bits
    def setSelected(self, selected: bool) -> None:
        self._knobs["selected"]._value = bool(selected)

    def isSelected(self) -> bool:
        return bool(self._knobs["selected"]._value)

    def xpos(self) -> int:
        return int(self._knobs["xpos"]._value)

    def ypos(self) -> int:
        return int(self._knobs["ypos"]._value)

    def setXYpos(self, x: int, y: int) -> None:
        self._knobs["xpos"]._value, self._knobs["ypos"]._value = int(x), int(y)

    def setXpos(self, x: int) -> None:
        self._knobs["xpos"]._value = int(x)

    def setYpos(self, y: int) -> None:
        self._knobs["ypos"]._value = int(y)

    def showControlPanel(self, forceFloat: bool = False) -> None:
        pass

    def hideControlPanel(self) -> None:
        pass

    def error(self) -> bool:
        return False

    def hasError(self) -> bool:
        return False


class Group(Node):
    def __init__(self, cls: str = "Group", parent: Group | None = None) -> None:
        super().__init__(cls, parent)
        self._children: list[Node] = []
        self._source_text = ""

    def nodes(self) -> list[Node]:
        return list(self._children)

    def numNodes(self) -> int:
        return len(self._children)

    def node(self, name: str) -> Node | None:
        return _lookup(self, name)

    def begin(self) -> Group:
        fake.context.append(self)
        return self

    def end(self) -> None:
        if len(fake.context) > 1 and fake.context[-1] is self:
            fake.context.pop()

    def __enter__(self) -> Group:
        return self.begin()

    def __exit__(self, *exc: Any) -> None:
        self.end()

    def output(self) -> Node | None:
        outs = [n for n in self._children if n.Class() == "Output"]
        return outs[0] if outs else None

    def selectedNodes(self) -> list[Node]:
        return [n for n in self._children if n.isSelected()]

    def maxInputs(self) -> int:
        numbers = [int(n["number"]._value) for n in self._children if n.Class() == "Input"]
        return max(numbers) + 1 if numbers else 0


class Gizmo(Group):
    """A node whose class is a `.gizmo` found on the plug-in path."""

    def makeGroup(self) -> Group:
        parent = self._parent or fake.root
        with parent:
            created = _run_script(_gizmo_as_group(self._source_text), parent)
        group = [n for n in created if isinstance(n, Group)][-1]
        for name, knob in self._knobs.items():
            if name != "name" and name in group._knobs:
                group._knobs[name]._value = knob._value
        for i, node in enumerate(self._inputs):
            group.setInput(i, node)
        return group

    def filename(self) -> str:
        return self._knobs["name"]._value

    def command(self) -> str:
        return self._class


class Root(Group):
    def __init__(self) -> None:
        super().__init__("Root", None)
        self._knobs["name"] = File_Knob("name", "name")
        self._knobs["name"]._node = self

    def name(self) -> str:
        return "root"

    def fullName(self) -> str:
        return "root"

    def firstFrame(self) -> int:
        return int(self["first_frame"]._value)

    def lastFrame(self) -> int:
        return int(self["last_frame"]._value)

    def fps(self) -> float:
        return float(self["fps"]._value)


class FrameRange:
    def __init__(self, first: int = 1, last: int = 1, increment: int = 1) -> None:
        self._first, self._last, self._increment = int(first), int(last), int(increment)

    def first(self) -> int:
        return self._first

    def last(self) -> int:
        return self._last

    def increment(self) -> int:
        return self._increment

    def frames(self) -> int:
        return self._last - self._first + 1

    def isInRange(self, n: int) -> int:
        return int(self._first <= n <= self._last)


# ------------------------------------------------------------------------------------------
# graph functions


def _current() -> Group:
    return fake.context[-1]


def _unique_name(group: Group, prefix: str) -> str:
    taken = {n.name() for n in group._children}
    i = 1
    while f"{prefix}{i}" in taken:
        i += 1
    return f"{prefix}{i}"


def _lookup(group: Group, path: str) -> Node | None:
    if path == "root":
        return fake.root
    node: Node | None = None
    scope: Group | None = group
    for part in path.split("."):
        if scope is None:
            return None
        node = next((n for n in scope._children if n.name() == part), None)
        if node is None:
            return None
        scope = node if isinstance(node, Group) else None
    return node


def _make_node(cls: str, group: Group, gizmo_path: str | None = None) -> Node:
    if gizmo_path is not None:
        node: Node = Gizmo(cls, group)
    elif cls in ("Group", "Gizmo", "LiveGroup"):
        node = Group("Group", group)
    elif cls in _CLASS_KNOBS or cls in _LENIENT_CLASSES:
        node = Node(cls, group)
    else:
        raise RuntimeError(f"{cls}: unknown command")
    node._knobs["name"]._value = _unique_name(group, node.Class())
    group._children.append(node)
    return node


def _find_gizmo(name: str) -> str | None:
    for folder in fake.plugin_path:
        path = os.path.join(folder, f"{name}.gizmo")
        if os.path.isfile(path):
            return path
    return None


def _apply_knob_args(node: Node, values: dict[str, Any], strict: bool) -> None:
    for name, value in values.items():
        knob = node.knob(name)
        if knob is None:
            if strict and not node._lenient:
                raise ValueError(f"{node.Class()}: no knob named {name}")
            knob = String_Knob(name, name)
            node._attach(knob)
        knob._value = knob._coerce(value)


def createNode(typ: str, knobs: str = "", inpanel: bool = True) -> Node:
    """Create in the current group, connect input 0 to the selected node, select the new one."""
    group = _current()
    gizmo = _find_gizmo(typ) if typ not in _CLASS_KNOBS else None
    selected = [n for n in group._children if n.isSelected()]
    if gizmo is not None:
        with open(gizmo, encoding="utf-8") as fh:
            text = fh.read()
        node = _make_node(typ, group, gizmo)
        assert isinstance(node, Gizmo)
        node._source_text = text
        _run_script(text, group, gizmo_node=node)  # runs its onCreate
    else:
        node = _make_node(typ, group)
    if knobs:
        words = [w.text for w in _flat_words(knobs)]
        _apply_knob_args(node, dict(zip(words[::2], words[1::2], strict=False)), strict=True)
    if len(selected) == 1 and node.maxInputs() > 0:
        node.setInput(0, selected[0])
    for n in group._children:
        n.setSelected(n is node)
    if gizmo is None:
        _run_on_create(node)
    return node


class _Nodes:
    """`nuke.nodes.X(**knobs)`: create without touching the selection."""

    def __getattr__(self, cls: str) -> Callable[..., Node]:
        if cls.startswith("__"):
            raise AttributeError(cls)

        def construct(**knobs: Any) -> Node:
            group = _current()
            node = _make_node(cls, group)
            inputs = knobs.pop("inputs", None)
            _apply_knob_args(node, knobs, strict=True)
            for i, up in enumerate(inputs or []):
                node.setInput(i, up)
            _run_on_create(node)
            return node

        return construct


nodes = _Nodes()


def toNode(name: str) -> Node | None:
    return _lookup(_current(), name)


def allNodes(
    filter: str | None = None, group: Group | None = None, recurseGroups: bool = False
) -> list[Node]:
    scope = group or _current()
    out: list[Node] = []
    for node in scope._children:
        if filter is None or node.Class() == filter:
            out.append(node)
        if recurseGroups and isinstance(node, Group):
            out += allNodes(filter, node, True)
    return out


def selectedNodes(filter: str | None = None) -> list[Node]:
    return [
        n
        for n in _current()._children
        if n.isSelected() and (filter is None or n.Class() == filter)
    ]


def selectedNode() -> Node:
    chosen = selectedNodes()
    if not chosen:
        raise ValueError("no node selected")
    return chosen[-1]


def delete(node: Node | None) -> None:
    if node is None or node._parent is None:
        return
    group = node._parent
    group._children.remove(node)
    for other in group._children:
        other._inputs = [None if n is node else n for n in other._inputs]
    node._parent = None


def nodePaste(s: str) -> Node | None:
    """Paste a script file (`.nk` text): the pasted nodes are selected; returns the last one."""
    with open(s, encoding="utf-8") as fh:
        text = fh.read()
    group = _current()
    for n in group._children:
        n.setSelected(False)
    created = _run_script(text, group)
    for n in created:
        n.setSelected(True)
    return created[-1] if created else None


def thisNode() -> Node:
    return fake.this[-1][0] if fake.this else fake.root


def thisKnob() -> Knob | None:
    return fake.this[-1][1] if fake.this else None


def thisGroup() -> Group:
    return _current()


def thisParent() -> Group | None:
    node = thisNode()
    return node._parent


def root() -> Root:
    return fake.root


def frame(f: int | None = None) -> int:
    if f is not None:
        fake.frame = int(f)
    return fake.frame


def scriptName() -> str:
    name = str(fake.root["name"]._value)
    if not name:
        raise RuntimeError("no script name")
    return name


def filename(node: Node, i: int = 0) -> str | None:
    knob = node.knob("file")
    if knob is None:
        return None
    text = _tcl_subst(str(knob._value), node)
    return _fill_frame(text, fake.frame) if i == REPLACE else text


def execute(
    nameOrNode: Node | str,
    start: int | None = None,
    end: int | None = None,
    incr: int = 1,
    views: list[str] | None = None,
    continueOnError: bool = False,
) -> None:
    node = toNode(nameOrNode) if isinstance(nameOrNode, str) else nameOrNode
    if node is None or node.knob("file") is None or node.Class() != "Write":
        raise ValueError(f"{nameOrNode}: not a Write node")
    if start is None or end is None:
        raise TypeError("execute() needs start and end frames")
    if node.input(0) is None:
        raise RuntimeError(f"{node.name()}: input is not connected")
    if node["disable"]._value:
        raise RuntimeError(f"{node.name()}: disabled")
    fake.executed.append(
        {
            "node": node.fullName(),
            "start": int(start),
            "end": int(end),
            "incr": int(incr),
            "file": filename(node),
            "channels": node["channels"]._value,
            "upstream": node.input(0),
            "thread": threading.current_thread().name,
        }
    )
    if fake.on_execute is not None:
        fake.on_execute(node, int(start), int(end))


class ProgressTask:
    """Records progress; `fake.cancel_when(task)` decides when the user presses cancel."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.progress: list[int] = []
        self.messages: list[str] = []
        self.cancelled = False
        self.thread = threading.current_thread().name
        fake.progress_tasks.append(self)

    def setProgress(self, progress: int) -> None:
        if not isinstance(progress, int) or isinstance(progress, bool):
            raise TypeError(f"setProgress wants an int, got {type(progress).__name__}")
        self.progress.append(progress)

    def setMessage(self, message: str) -> None:
        self.messages.append(str(message))

    def isCancelled(self) -> bool:
        if not self.cancelled and fake.cancel_when is not None and fake.cancel_when(self):
            self.cancelled = True
        return self.cancelled


def _main_call(call: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    if GUI and threading.current_thread() is fake.main_thread and not fake.in_main_call():
        raise RuntimeError("executeInMainThread called from the main thread: Nuke would hang")
    if not isinstance(args, tuple):
        args = (args,)
    fake.main_thread_calls.append(getattr(call, "__name__", repr(call)))
    previous = fake.in_main_call()
    fake.tls.in_main = True
    try:
        return call(*args, **(kwargs or {}))
    finally:
        fake.tls.in_main = previous


def executeInMainThread(call: Callable[..., Any], args: Any = (), kwargs: Any = None) -> None:
    _main_call(call, args, kwargs)


def executeInMainThreadWithResult(
    call: Callable[..., Any], args: Any = (), kwargs: Any = None
) -> Any:
    return _main_call(call, args, kwargs)


def message(prompt: str) -> None:
    fake.messages.append(str(prompt))


def alert(prompt: str) -> None:
    fake.messages.append(str(prompt))


def choice(title: str, prompt: str, options: Iterable[str], default: int = 0) -> int | None:
    """A modal list (GUI only in Nuke): the index picked, or None when cancelled."""
    if not GUI:
        raise RuntimeError("choice: no GUI")
    fake.choices.append((prompt, list(options)))
    return fake.choice_answer


def ask(prompt: str) -> bool:
    fake.messages.append(str(prompt))
    return fake.ask_answer


def warning(message: str) -> None:
    fake.log.append(("warning", str(message)))


def error(message: str) -> None:
    fake.log.append(("error", str(message)))


def debug(message: str) -> None:
    fake.log.append(("debug", str(message)))


def tprint(*args: Any, **kwargs: Any) -> None:
    fake.log.append(("tprint", " ".join(str(a) for a in args)))


def pluginAddPath(args: str, addToSysPath: bool = True) -> None:
    fake.plugin_path.insert(0, str(args))
    if addToSysPath and str(args) not in sys.path:
        sys.path.insert(0, str(args))


def pluginAppendPath(args: str, addToSysPath: bool = True) -> None:
    fake.plugin_path.append(str(args))
    if addToSysPath and str(args) not in sys.path:
        sys.path.append(str(args))


def pluginPath() -> list[str]:
    return list(fake.plugin_path)


def _add_callback(
    kind: str, call: Any, args: Any = (), kwargs: Any = None, nodeClass: str = "*"
) -> None:
    fake.callbacks.setdefault(kind, []).append((call, args, kwargs, nodeClass))


def addOnCreate(call: Any, args: Any = (), kwargs: Any = None, nodeClass: str = "*") -> None:
    _add_callback("onCreate", call, args, kwargs, nodeClass)


def addKnobChanged(
    call: Any, args: Any = (), kwargs: Any = None, nodeClass: str = "*", node: Any = None
) -> None:
    _add_callback("knobChanged", call, args, kwargs, nodeClass)


def addFilenameFilter(call: Any, args: Any = (), kwargs: Any = None, nodeClass: str = "*") -> None:
    _add_callback("filenameFilter", call, args, kwargs, nodeClass)


class MenuItem:
    def __init__(self, name: str, script: Any = "", shortcut: str = "", icon: str = "") -> None:
        self._name, self._script, self._shortcut, self._icon = name, script, shortcut, icon

    def name(self) -> str:
        return self._name

    def script(self) -> Any:
        return self._script

    def shortcut(self) -> str:
        return self._shortcut

    def icon(self) -> str:
        return self._icon

    def invoke(self) -> None:
        if callable(self._script):
            self._script()
        else:
            exec(compile(str(self._script), f"<menu {self._name}>", "exec"), {"nuke": _module()})


class Menu(MenuItem):
    def __init__(self, name: str, icon: str = "") -> None:
        super().__init__(name, "", "", icon)
        self._items: list[MenuItem] = []

    def addMenu(self, name: str, icon: str = "", tooltip: str = "", index: int = -1) -> Menu:
        for item in self._items:
            if isinstance(item, Menu) and item.name() == name:
                return item
        menu = Menu(name, icon)
        self._items.append(menu)
        return menu

    def addCommand(
        self,
        name: str,
        command: Any = "",
        shortcut: str = "",
        icon: str = "",
        tooltip: str = "",
        index: int = -1,
        readonly: bool = False,
        shortcutContext: int = 0,
        tag: int = 0,
        tagTarget: int = 0,
    ) -> MenuItem:
        head, _, rest = name.partition("/")
        if rest:
            return self.addMenu(head).addCommand(rest, command, shortcut, icon)
        item = MenuItem(name, command, shortcut, icon)
        self._items.append(item)
        return item

    def addSeparator(self, **kwargs: Any) -> None:
        self._items.append(MenuItem("-"))

    def items(self) -> list[MenuItem]:
        return list(self._items)

    def findItem(self, name: str) -> MenuItem | None:
        head, _, rest = name.partition("/")
        for item in self._items:
            if item.name() == head:
                if not rest:
                    return item
                return item.findItem(rest) if isinstance(item, Menu) else None
        return None

    def menu(self, name: str) -> MenuItem | None:
        return self.findItem(name)


def menu(name: str) -> Menu:
    if name not in fake.menus:
        fake.menus[name] = Menu(name)
    return fake.menus[name]


def tcl(cmd: str, *args: str) -> str:
    words = [w.text for w in _flat_words(cmd)] + [str(a) for a in args]
    return _tcl_command(words, thisNode())


# ------------------------------------------------------------------------------------------
# minimal TCL


_FRAME_TOKEN = re.compile(r"(#+)|%(0?)(\d*)d")


def _fill_frame(text: str, number: int) -> str:
    def repl(m: re.Match[str]) -> str:
        width = len(m.group(1)) if m.group(1) else int(m.group(3) or 0)
        return f"{number:0{width}d}"

    return _FRAME_TOKEN.sub(repl, text)


def _resolve_knob(path: str, node: Node) -> Knob | None:
    owner_name, _, knob_name = path.rpartition(".")
    owner: Node | None
    if not owner_name or owner_name == "this":
        owner = node
    elif owner_name == "root":
        owner = fake.root
    elif owner_name == "parent":
        owner = node._parent
    else:
        owner = _lookup(node._parent or fake.root, owner_name)
    if owner is None:
        return None
    if knob_name == "name" and not isinstance(owner, Root):  # root.name is the script path
        return String_Knob("name", "name", owner.name())
    return owner.knob(knob_name)


def _tcl_command(words: list[str], node: Node, depth: int = 0) -> str:
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    if cmd == "subst" and len(args) == 1:
        return _tcl_subst(args[0], node, depth + 1)
    if cmd == "getenv" and len(args) == 1:
        return os.environ.get(args[0], "")
    if cmd == "value" and args:
        knob = _resolve_knob(args[0], node)
        if knob is None:
            raise RuntimeError(f"value: no knob {args[0]}")
        value = knob._value
        if isinstance(knob, Enumeration_Knob):
            return knob._values[value] if knob._values else ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if cmd == "file" and args:
        sub, rest = args[0], args[1:]
        if sub == "dirname":
            return posixpath.dirname(rest[0])
        if sub == "tail":
            return posixpath.basename(rest[0])
        if sub == "rootname":
            return posixpath.splitext(rest[0])[0]
        if sub == "join":
            return posixpath.join(*rest)
        if sub == "exists":
            return "1" if os.path.exists(rest[0]) else "0"
    if cmd == "format" and args:
        values: list[Any] = []
        for a in args[1:]:
            try:
                values.append(int(a))
            except ValueError:
                try:
                    values.append(float(a))
                except ValueError:
                    values.append(a)
        return args[0] % tuple(values)
    if cmd == "frame":
        return str(fake.frame)
    raise RuntimeError(f"fake tcl: unsupported command {' '.join(words)!r}")


def _tcl_subst(text: str, node: Node, depth: int = 0) -> str:
    """Evaluate `[cmd ...]` substitutions, innermost first.

    As in Tcl, what a substitution returns is not substituted again (only `subst` does that):
    `[value knob]` of a knob holding `[file dirname ...]` returns that text as it is.
    """
    if depth > 50:
        raise RuntimeError("fake tcl: substitutions nested too deep")
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if ch != "[":
            out.append(ch)
            i += 1
            continue
        level, j = 0, i
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            level += {"[": 1, "]": -1}.get(text[j], 0)
            if level == 0:
                break
            j += 1
        if level:
            raise RuntimeError(f"fake tcl: unbalanced [ in {text!r}")
        inner = _tcl_subst(text[i + 1 : j], node, depth + 1)
        out.append(_tcl_command([w.text for w in _flat_words(inner)], node, depth))
        i = j + 1
    return "".join(out)


# ------------------------------------------------------------------------------------------
# .nk / .gizmo text


class Word:
    """One TCL word: `kind` is bare, quote or brace; `text` is unescaped (brace: raw)."""

    __slots__ = ("kind", "text")

    def __init__(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text

    def __repr__(self) -> str:
        return f"Word({self.kind}, {self.text!r})"


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _unescape(raw: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _match_brace(text: str, start: int) -> int:
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise SyntaxError(f"unbalanced brace opened at offset {start}")


def _match_quote(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    raise SyntaxError(f"unterminated quote at offset {start}")


def _commands(text: str) -> list[list[Word]]:
    """TCL commands (one per line outside braces/quotes) as lists of words."""
    commands: list[list[Word]] = []
    words: list[Word] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n" or ch == ";":
            if words:
                commands.append(words)
                words = []
            i += 1
        elif ch in " \t\r":
            i += 1
        elif ch == "#" and not words:
            while i < n and text[i] != "\n":
                i += 1
        elif ch == "{":
            j = _match_brace(text, i)
            words.append(Word("brace", text[i + 1 : j]))
            i = j + 1
        elif ch == '"':
            j = _match_quote(text, i)
            words.append(Word("quote", _unescape(text[i + 1 : j])))
            i = j + 1
        else:
            j, depth = i, 0
            while j < n:
                c = text[j]
                if c == "\\":
                    j += 2
                    continue
                if c == "[":
                    depth += 1
                elif c == "]":
                    depth -= 1
                elif depth <= 0 and (c in " \t\r\n;"):
                    break
                j += 1
            words.append(Word("bare", _unescape(text[i:j])))
            i = j
    if words:
        commands.append(words)
    return commands


def _flat_words(text: str) -> list[Word]:
    return [w for cmd in _commands(text) for w in cmd]


def _gizmo_as_group(text: str) -> str:
    return re.sub(r"(?m)^(\s*)Gizmo\s*\{", r"\1Group {", text, count=1)


def _count_inputs(text: str) -> int:
    return sum(int(p) for p in text.split("+") if p.strip().isdigit())


def _add_user_knob(node: Node, spec: str) -> None:
    words = _flat_words(spec)
    if len(words) < 2:
        raise SyntaxError(f"addUserKnob {{{spec}}}: needs a type and a name")
    type_id, name = int(words[0].text), words[1].text
    cls = _USER_KNOB_TYPES.get(type_id)
    if cls is None:
        raise SyntaxError(f"addUserKnob: unsupported knob type {type_id} ({name})")
    knob = _new_knob(cls, name, () if cls is Enumeration_Knob else None)
    i = 2
    while i < len(words):
        key = words[i].text
        if key in ("l", "t", "T", "n") and i + 1 < len(words):
            value = words[i + 1].text
            if key == "l":
                knob._label = value
            elif key == "t":
                knob._tooltip = value
            elif key == "T":
                if isinstance(knob, Link_Knob):
                    knob._link = value
                else:
                    knob._value = value
            i += 2
        elif key == "M" and i + 1 < len(words):
            assert isinstance(knob, Enumeration_Knob), f"M on a non-enumeration knob {name}"
            knob._values = [w.text for w in _flat_words(words[i + 1].text)]
            i += 2
        elif key == "R" and i + 2 < len(words):
            i += 3
        elif key.startswith(("+", "-")):
            flag = key[1:]
            on = key[0] == "+"
            if flag == "INVISIBLE":
                knob.setFlag(INVISIBLE) if on else knob.clearFlag(INVISIBLE)
            elif flag == "STARTLINE":
                knob.setFlag(STARTLINE) if on else knob.clearFlag(STARTLINE)
            elif flag == "DISABLED":
                knob._enabled = not on
            i += 1
        else:
            i += 1
    node.addKnob(knob)


def _set_from_text(node: Node, name: str, word: Word) -> None:
    if name == "addUserKnob":
        _add_user_knob(node, word.text)
        return
    if name == "inputs":
        return
    if name == "name":
        node._knobs["name"]._value = word.text
        return
    knob = node.knob(name)
    if knob is None:
        knob = String_Knob(name, name)
        node._attach(knob)
    text = word.text
    if word.kind == "brace" and text.startswith("{") and text.endswith("}"):
        knob._expression = text[1:-1].strip()
        return
    if isinstance(knob, Enumeration_Knob) and text not in knob._values and knob._values:
        if not text.lstrip("-").isdigit():
            raise ValueError(f"{node.name()}.{name}: {text!r} is not one of {knob._values}")
    knob.fromScript(text)


def _run_script(text: str, into: Group, gizmo_node: Gizmo | None = None) -> list[Node]:
    """Build the nodes of `.nk`/`.gizmo` text inside `into`; the top-level nodes made."""
    created: list[Node] = []
    stack: list[Node | None] = []
    variables: dict[str, Node | None] = {}
    groups: list[tuple[Group, list[Node | None]]] = []
    current = into
    for words in _commands(text):
        head = words[0].text
        if head in ("version", "define_window_layout_xml", "Root"):
            continue
        if head == "set" and len(words) >= 3:
            variables[words[1].text] = stack[-1] if stack else None
            continue
        if head == "push" and len(words) >= 2:
            arg = words[1].text
            stack.append(None if arg == "0" else variables.get(arg.lstrip("$")))
            continue
        if head == "add_layer" and len(words) >= 2:
            names = [w.text for w in _flat_words(words[1].text)]
            fake.layers[names[0]] = names[1:]
            continue
        if head == "end_group":
            if not groups:
                raise SyntaxError("end_group without a group")
            current, stack = groups.pop()
            continue
        if len(words) == 2 and words[1].kind == "brace":
            pairs: list[tuple[str, Word]] = []
            for line in _commands(words[1].text):
                if len(line) >= 2:
                    pairs.append((line[0].text, line[1]))
            n_inputs = next((_count_inputs(w.text) for k, w in pairs if k == "inputs"), None)
            if n_inputs is None:
                n_inputs = 0 if head in _SOURCE_CLASSES else 1
            popped = [stack.pop() if stack else None for _ in range(n_inputs)]
            if head == "Gizmo" and gizmo_node is not None and not groups:
                node: Node = gizmo_node
            else:
                node = _make_node(head, current)
            for name, word in pairs:
                _set_from_text(node, name, word)
            for i, up in enumerate(popped):
                if up is not None:
                    node.setInput(i, up)
            stack.append(node)
            if not groups:
                created.append(node)
            if isinstance(node, Group):
                groups.append((current, stack))
                current, stack = node, []
            continue
        raise SyntaxError(f"unknown command {head!r}")
    if groups:
        raise SyntaxError("missing end_group")
    for node in created:
        _run_on_create(node)
    return created


def _run_python(code: str, node: Node, knob: Knob | None) -> None:
    fake.this.append((node, knob))
    try:
        exec(
            compile(code, f"<{node.fullName()}.{knob.name() if knob else ''}>", "exec"),
            {"nuke": _module()},
        )
    finally:
        fake.this.pop()


def _run_on_create(node: Node) -> None:
    code = str(node._knobs["onCreate"]._value)
    if code.strip():
        _run_python(code, node, None)


fake = FakeState()
