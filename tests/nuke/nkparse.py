"""A small parser for Nuke's `.nk` / `.gizmo` text, for tests without Nuke.

The files are Tcl scripts. This module implements the subset Nuke writes:

- Tcl words: `{brace}` words (nested, no substitution), `"quoted"` words (backslash escapes;
  `\\[` stays a literal bracket, which is how Nuke stores Tcl for later evaluation), bare words
  with `[command substitution]` kept as text; newlines and `;` end a command; `#` comments.
- Commands: `Class {knob value ...}` creates a node, `set VAR [stack N]`, `push $VAR` /
  `push 0`, `pop N`, `add_layer {layer chan ...}`, `Group`/`Gizmo` ... `end_group`, `version`,
  `Root {...}`. Inside a node body: `knob value` pairs and `addUserKnob {ID name ...}`.
- Wiring: a node pops `inputs` items (`N` or `N+M`, M mask inputs) from the stack, the top of
  the stack being input 0, then pushes itself.

`parse(text)` returns a `Script`; every syntax error raises `NkSyntaxError` with a line number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NkSyntaxError",
    "Word",
    "UserKnob",
    "Node",
    "Script",
    "tokenize",
    "split_words",
    "parse",
    "parse_file",
]

GROUP_CLASSES = ("Group", "Gizmo", "LiveGroup")
_NO_INPUT_CLASSES = {
    "Read",
    "Input",
    "Constant",
    "CheckerBoard2",
    "ColorBars",
    "ColorWheel",
    "Root",
    "Viewer",
    "BackdropNode",
    "StickyNote",
    "Camera",
    "Camera2",
    "Camera3",
    "Axis",
    "Axis2",
    "Ramp",
    "Radial",
    "Rectangle",
    "Noise",
    "Text",
    "Text2",
    "DeepRead",
    "ReadGeo",
    "ReadGeo2",
    "Group",
    "Gizmo",
}
"""Classes whose default input count (when `inputs` is not written) is 0; all others take 1."""
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "\\": "\\",
    '"': '"',
    "[": "[",
    "]": "]",
    "{": "{",
    "}": "}",
    "$": "$",
    ";": ";",
    " ": " ",
}


class NkSyntaxError(ValueError):
    """Malformed Tcl or an unsupported command; the message starts with the line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Word:
    """One Tcl word.

    `text` is the word's value: a brace word's content verbatim, a quoted word with its escapes
    processed (`\\[` → `[`), a bare word as written. `kind` is "brace", "quote" or "bare".
    """

    text: str
    kind: str
    line: int

    @property
    def is_expression(self) -> bool:
        """`{{expr}}` in the file: a knob value that is an expression."""
        t = self.text.strip()
        return self.kind == "brace" and t.startswith("{") and t.endswith("}")

    @property
    def expression(self) -> str:
        """The expression of `{{expr}}` (a quoted inner word is unquoted)."""
        inner = self.text.strip()[1:-1].strip()
        words = split_words(inner, self.line)
        if len(words) == 1:
            return words[0].text
        return inner

    def __str__(self) -> str:
        return self.text


@dataclass
class UserKnob:
    """One `addUserKnob {ID name [l label] [t tooltip] [T value] [M {items}] [R a b] [+FLAG]}`."""

    type_id: int
    name: str
    label: str | None
    tooltip: str | None
    options: dict[str, Word]
    """Option letter → its word (`T` value/code/link target, `M` menu items, `n` tab depth)."""
    range: tuple[float, float] | None
    flags: list[str]
    line: int

    @property
    def items(self) -> list[str]:
        """Enumeration entries (`M {a "b c" d}`)."""
        menu = self.options.get("M")
        return [] if menu is None else [w.text for w in split_words(menu.text, menu.line)]


@dataclass(eq=False)
class Node:
    """A node: its class, knob values (last assignment wins), user knobs and ordered inputs."""

    cls: str
    line: int
    knobs: dict[str, Word] = field(default_factory=dict)
    assignments: list[tuple[str, Word]] = field(default_factory=list)
    """Every `knob value` in file order (duplicates included)."""
    user_knobs: list[UserKnob] = field(default_factory=list)
    inputs: list[Node | None] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    """Nodes inside a Group/Gizmo, in file order."""
    layers: dict[str, list[str]] = field(default_factory=dict)
    """`add_layer` declarations made inside this group."""
    parent: Node | None = None
    closed: bool = False
    """A group whose `end_group` was seen."""

    @property
    def name(self) -> str:
        word = self.knobs.get("name")
        return word.text if word is not None else f"<{self.cls}@{self.line}>"

    @property
    def is_group(self) -> bool:
        return self.cls in GROUP_CLASSES

    def knob(self, name: str, default: str | None = None) -> str | None:
        word = self.knobs.get(name)
        return default if word is None else word.text

    def user_knob(self, name: str) -> UserKnob | None:
        for knob in self.user_knobs:
            if knob.name == name:
                return knob
        return None

    def walk(self) -> Iterator[Node]:
        """This node's children, depth first (groups' own children included)."""
        for child in self.children:
            yield child
            if child.is_group:
                yield from child.walk()

    def find(self, name: str) -> Node:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(f"{self.name}: no node {name!r}")

    def input_number(self) -> int:
        """An `Input` node's group input index (`number`, default 0)."""
        return int(self.knob("number", "0") or 0)

    def __repr__(self) -> str:
        return f"Node({self.cls} {self.name})"


@dataclass
class Script:
    """A parsed file: top-level nodes, the Root node, layers and comment lines."""

    nodes: list[Node]
    root: Node | None
    layers: dict[str, list[str]]
    comments: list[tuple[int, str]]
    commands: list[str]
    """Names of every top-level command seen (`version`, `Gizmo`, `end_group`, ...)."""

    def groups(self) -> list[Node]:
        return [n for n in self.nodes if n.is_group]

    def all_nodes(self) -> Iterator[Node]:
        for node in self.nodes:
            yield node
            if node.is_group:
                yield from node.walk()


# --------------------------------------------------------------------------------------------
# Tcl words


def _read_brace(text: str, i: int, line: int) -> tuple[str, int, int]:
    """Content of the brace word opening at `text[i]`; returns (content, next index, line)."""
    depth = 0
    start = i + 1
    start_line = line
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 < len(text) and text[i + 1] == "\n":
                line += 1
            i += 2
            continue
        if ch == "\n":
            line += 1
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i], i + 1, line
        i += 1
    raise NkSyntaxError(start_line, "unbalanced '{': no closing brace")


def _read_bracket(text: str, i: int, line: int) -> tuple[int, int]:
    """Skip the `[...]` starting at `text[i]` (nested, quotes and braces inside)."""
    depth = 0
    start_line = line
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "\n":
            line += 1
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i + 1, line
        elif ch == "{" and depth > 0:
            _, i, line = _read_brace(text, i, line)
            continue
        elif ch == '"' and depth > 0:
            _, i, line = _read_quote(text, i, line)
            continue
        i += 1
    raise NkSyntaxError(start_line, "unbalanced '[': no closing bracket")


def _read_quote(text: str, i: int, line: int) -> tuple[str, int, int]:
    """Value of the quoted word opening at `text[i]` (escapes processed)."""
    out: list[str] = []
    start_line = line
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "\n":
                line += 1
                out.append(" ")
            else:
                out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1, line
        if ch == "[":
            end, line2 = _read_bracket(text, i, line)
            out.append(text[i:end])
            line = line2
            i = end
            continue
        if ch == "\n":
            line += 1
        out.append(ch)
        i += 1
    raise NkSyntaxError(start_line, "unbalanced '\"': no closing quote")


def tokenize(text: str, first_line: int = 1) -> list[list[Word]]:
    """Split Tcl text into commands, each a list of words (comments dropped, see `comments`)."""
    commands, _ = _tokenize(text, first_line)
    return commands


def _tokenize(text: str, first_line: int) -> tuple[list[list[Word]], list[tuple[int, str]]]:
    commands: list[list[Word]] = []
    comments: list[tuple[int, str]] = []
    words: list[Word] = []
    i = 0
    line = first_line
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r":
            i += 1
            continue
        if ch == "\\" and i + 1 < n and text[i + 1] == "\n":
            i += 2
            line += 1
            continue
        if ch in "\n;":
            if words:
                commands.append(words)
                words = []
            if ch == "\n":
                line += 1
            i += 1
            continue
        if ch == "#" and not words:
            end = text.find("\n", i)
            end = n if end < 0 else end
            comments.append((line, text[i:end]))
            i = end
            continue
        if ch == "}":
            raise NkSyntaxError(line, "unbalanced '}': closing brace without an opening one")
        start_line = line
        if ch == "{":
            content, i, line = _read_brace(text, i, line)
            word = Word(content, "brace", start_line)
        elif ch == '"':
            content, i, line = _read_quote(text, i, line)
            word = Word(content, "quote", start_line)
        else:
            j = i
            while j < n and text[j] not in " \t\r\n;":
                if text[j] == "[":
                    j, line = _read_bracket(text, j, line)
                    continue
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] in "{}":
                    if text[j] == "}":
                        raise NkSyntaxError(line, "unbalanced '}' inside a word")
                    _, j, line = _read_brace(text, j, line)
                    continue
                j += 1
            word = Word(text[i:j], "bare", start_line)
            i = j
        if i < n and text[i] not in " \t\r\n;" and word.kind != "bare":
            raise NkSyntaxError(line, f"extra characters after a {word.kind} word")
        words.append(word)
    if words:
        commands.append(words)
    return commands, comments


def split_words(text: str, line: int = 1) -> list[Word]:
    """The words of a Tcl list (a brace word's content); newlines count as separators."""
    return [w for command in tokenize(text, line) for w in command]


# --------------------------------------------------------------------------------------------
# Nodes and wiring


def _parse_user_knob(word: Word) -> UserKnob:
    parts = split_words(word.text, word.line)
    if len(parts) < 2:
        raise NkSyntaxError(word.line, f"addUserKnob {{{word.text}}}: needs an ID and a name")
    try:
        type_id = int(parts[0].text)
    except ValueError as err:
        raise NkSyntaxError(
            word.line, f"addUserKnob: type ID {parts[0].text!r} is not an integer"
        ) from err
    knob = UserKnob(type_id, parts[1].text, None, None, {}, None, [], word.line)
    i = 2
    while i < len(parts):
        token = parts[i].text
        if parts[i].kind == "bare" and token[:1] in "+-" and token[1:].isupper():
            knob.flags.append(token)
            i += 1
        elif token == "R" and i + 2 < len(parts):
            knob.range = (float(parts[i + 1].text), float(parts[i + 2].text))
            i += 3
        elif token in ("l", "t", "T", "M", "n", "e", "U") and i + 1 < len(parts):
            if token == "l":
                knob.label = parts[i + 1].text
            elif token == "t":
                knob.tooltip = parts[i + 1].text
            knob.options[token] = parts[i + 1]
            i += 2
        else:
            raise NkSyntaxError(word.line, f"addUserKnob {knob.name}: unknown option {token!r}")
    return knob


def _parse_body(node: Node, body: Word) -> None:
    for command in tokenize(body.text, body.line):
        if len(command) % 2:
            raise NkSyntaxError(
                command[0].line, f"{node.cls}: knob {command[0].text!r} without a value"
            )
        for key, value in zip(command[::2], command[1::2], strict=True):
            if key.text == "addUserKnob":
                if value.kind != "brace":
                    raise NkSyntaxError(key.line, "addUserKnob needs a {...} specification")
                node.user_knobs.append(_parse_user_knob(value))
            else:
                node.knobs[key.text] = value
                node.assignments.append((key.text, value))


def _input_count(node: Node) -> int:
    text = node.knob("inputs")
    if text is None:
        return 0 if node.cls in _NO_INPUT_CLASSES else 1
    if not re.fullmatch(r"\d+(\+\d+)?", text):
        raise NkSyntaxError(node.line, f"{node.cls}: bad inputs {text!r}")
    return sum(int(p) for p in text.split("+"))


def parse(text: str) -> Script:
    """Parse `.nk` / `.gizmo` text into nodes with their inputs wired from the stack."""
    commands, comments = _tokenize(text, 1)
    top: list[Node] = []
    root: Node | None = None
    layers: dict[str, list[str]] = {}
    names: list[str] = []
    group: Node | None = None  # the group being filled
    stack: list[Node | None] = []
    saved: list[list[Node | None]] = []
    variables: dict[str, Node | None] = {}
    for words in commands:
        head = words[0]
        cmd = head.text
        if group is None or (cmd == "end_group" and group.parent is None):
            names.append(cmd)
        if cmd == "version" or cmd == "define_window_layout_xml":
            continue
        if cmd == "set":
            if len(words) != 3 or not re.fullmatch(r"\[stack (\d+)\]", words[2].text):
                raise NkSyntaxError(head.line, "set: expected 'set NAME [stack N]'")
            depth = int(words[2].text[7:-1])
            if depth >= len(stack):
                raise NkSyntaxError(head.line, f"set {words[1].text}: stack has {len(stack)} items")
            variables[words[1].text] = stack[-1 - depth]
            continue
        if cmd == "push":
            if len(words) != 2:
                raise NkSyntaxError(head.line, "push: expected one argument")
            arg = words[1].text
            if arg == "0":
                stack.append(None)
            elif arg.startswith("$") and arg[1:] in variables:
                stack.append(variables[arg[1:]])
            else:
                raise NkSyntaxError(head.line, f"push {arg}: unknown variable")
            continue
        if cmd == "pop":
            count = int(words[1].text) if len(words) > 1 else 1
            del stack[len(stack) - count :]
            continue
        if cmd == "add_layer":
            if len(words) != 2:
                raise NkSyntaxError(head.line, "add_layer: expected {layer channels...}")
            parts = [w.text for w in split_words(words[1].text, head.line)]
            target = group.layers if group is not None else layers
            target[parts[0]] = parts[1:]
            continue
        if cmd == "end_group":
            if group is None:
                raise NkSyntaxError(head.line, "end_group without an open Group/Gizmo")
            group.closed = True
            node = group
            group = group.parent
            stack = saved.pop()
            continue
        if not cmd[:1].isupper() or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cmd):
            raise NkSyntaxError(head.line, f"unknown command {cmd!r}")
        if len(words) > 2 or (len(words) == 2 and words[1].kind != "brace"):
            raise NkSyntaxError(head.line, f"{cmd}: expected '{cmd} {{knobs}}'")
        node = Node(cmd, head.line, parent=group)
        if len(words) == 2:
            _parse_body(node, words[1])
        if cmd == "Root":
            root = node
            continue
        count = _input_count(node)
        popped: list[Node | None] = []
        for _ in range(count):
            popped.append(stack.pop() if stack else None)
        node.inputs = popped
        (group.children if group is not None else top).append(node)
        stack.append(node)
        if node.is_group:
            saved.append(stack)
            stack = []
            group = node
    if group is not None:
        raise NkSyntaxError(group.line, f"{group.cls} {group.name}: missing end_group")
    return Script(top, root, layers, comments, names)


def parse_file(path: str | Path) -> Script:
    return parse(Path(path).read_text())
