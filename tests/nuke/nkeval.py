"""A numpy evaluator of the Nuke node classes RNAApply uses, for tests without Nuke.

It evaluates a parsed gizmo (`nkparse`) for one frame: Input, Output, Read (EXR through
`rna_engine.media.io`), STMap, Merge2 (plus, minus, from, multiply, min, max), Copy, Expression,
Multiply, Remove, Switch, Dissolve and Dot, the `disable` knob, `{{expression}}` knobs (with
`$gui`: False = a render, True = the interactive Viewer) and the Tcl commands `value`, `format`,
`exists`, `subst`, `getenv` and `file dirname` inside `[...]`.

It is deliberately *not* written like `rna_engine`: images are held as Nuke holds them — one
float64 plane per named channel (`rgba.red`, `rna_uv.u`), **row 0 at the bottom** (y up) — and
STMap builds dense separable weight matrices over edge-padded images from kernels written in
their own textbook form (Keys' `a` for the B = 0 cubics, `a·sin(πt)·sin(πt/a)/(πt)²` for
Lanczos4/Lanczos6/Sinc4 with a = 2, 3, 4), instead of gathering taps. The two paths agree only if
the gizmo and `rna_engine.apply` compute the same thing, so the STMap is deliberately not shared
with `rna_engine.media.stmap`: `test_two_stmap_implementations_agree` checks one against the other.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nkparse import Node, UserKnob, Word, split_words

NUKE_FILTERS = (
    "Impulse",
    "Cubic",
    "Keys",
    "Simon",
    "Rifman",
    "Mitchell",
    "Parzen",
    "Notch",
    "Lanczos4",
    "Lanczos6",
    "Sinc4",
)
"""Nuke's filter menu, in its order (an expression on `filter` yields the index)."""
_RGBA = ("rgba.red", "rgba.green", "rgba.blue", "rgba.alpha")
_SUFFIX = {"R": "red", "G": "green", "B": "blue", "A": "alpha"}
_EXPRESSION_DEFAULT_CHANNELS = (
    "{rgba.red -rgba.green -rgba.blue none}",
    "{-rgba.red rgba.green -rgba.blue none}",
    "{-rgba.red -rgba.green rgba.blue none}",
    "{none none none rgba.alpha}",
)


class EvalError(RuntimeError):
    """The graph cannot be evaluated (a missing file, an unsupported node or knob)."""


@dataclass
class Image:
    """A Nuke image: a format and named float64 channel planes, row 0 at the bottom."""

    width: int
    height: int
    planes: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, pixels: np.ndarray, names: tuple[str, ...]) -> Image:
        """From a top-down (H, W, C) array with Nuke channel names."""
        h, w = pixels.shape[:2]
        flipped = np.asarray(pixels, dtype=np.float64)[::-1]
        return cls(w, h, {n: np.ascontiguousarray(flipped[..., i]) for i, n in enumerate(names)})

    @classmethod
    def from_rgba(cls, pixels: np.ndarray) -> Image:
        """From a top-down (H, W, 3|4) colour array."""
        return cls.from_rows(pixels, _RGBA[: pixels.shape[2]])

    def plane(self, name: str) -> np.ndarray:
        """A channel; a channel the image does not have is black (as in Nuke)."""
        got = self.planes.get(name)
        return np.zeros((self.height, self.width)) if got is None else got

    def rows(self, names: tuple[str, ...] = _RGBA) -> np.ndarray:
        """Top-down (H, W, len(names)) float64."""
        return np.stack([self.plane(n) for n in names], axis=-1)[::-1]

    def copy(self) -> Image:
        return Image(self.width, self.height, dict(self.planes))


def nuke_channel_name(file_channel: str) -> str:
    """EXR channel name → Nuke's (`R` → `rgba.red`, `diffuse.R` → `diffuse.red`)."""
    layer, _, suffix = file_channel.rpartition(".")
    if not layer:
        return f"rgba.{_SUFFIX[suffix]}" if suffix in _SUFFIX else f"other.{suffix}"
    return f"{layer}.{_SUFFIX.get(suffix, suffix)}"


# --------------------------------------------------------------------------------------------
# Expressions (Nuke's C-like syntax)

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"|(?P<op>&&|\|\||==|!=|>=|<=|[-+*/%!?:(),<>]))"
)
_BINARY = {
    "||": (1, lambda a, b: ((a != 0) | (b != 0)) * 1.0),
    "&&": (2, lambda a, b: ((a != 0) & (b != 0)) * 1.0),
    "==": (3, lambda a, b: (a == b) * 1.0),
    "!=": (3, lambda a, b: (a != b) * 1.0),
    "<": (4, lambda a, b: (a < b) * 1.0),
    ">": (4, lambda a, b: (a > b) * 1.0),
    "<=": (4, lambda a, b: (a <= b) * 1.0),
    ">=": (4, lambda a, b: (a >= b) * 1.0),
    "+": (5, lambda a, b: a + b),
    "-": (5, lambda a, b: a - b),
    "*": (6, lambda a, b: a * b),
    "/": (6, lambda a, b: a / b),
    "%": (6, lambda a, b: np.fmod(a, b)),
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.abs,
    "min": np.minimum,
    "max": np.maximum,
    "pow": np.power,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "floor": np.floor,
    "ceil": np.ceil,
    "clamp": lambda v, lo=0.0, hi=1.0: np.clip(v, lo, hi),
}


def _lex(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise EvalError(f"expression {text!r}: cannot read at {text[pos:]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    """Precedence climbing over `_lex` tokens; evaluates as it parses (values are numpy)."""

    def __init__(self, text: str, lookup: Callable[[str], Any]) -> None:
        self.text = text
        self.tokens = _lex(text)
        self.i = 0
        self.lookup = lookup

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise EvalError(f"expression {self.text!r}: unexpected end")
        token = self.tokens[self.i]
        if expected is not None and token[1] != expected:
            raise EvalError(f"expression {self.text!r}: expected {expected!r}, got {token[1]!r}")
        self.i += 1
        return token

    def parse(self) -> Any:
        value = self.ternary()
        if self.i != len(self.tokens):
            raise EvalError(f"expression {self.text!r}: trailing {self.peek()!r}")
        return value

    def ternary(self) -> Any:
        cond = self.binary(1)
        if self.peek() != "?":
            return cond
        self.take("?")
        yes = self.ternary()
        self.take(":")
        no = self.ternary()
        return np.where(np.asarray(cond) != 0, yes, no)

    def binary(self, level: int) -> Any:
        left = self.unary()
        while True:
            op = self.peek()
            if op not in _BINARY or _BINARY[op][0] < level:
                return left
            prec, fn = _BINARY[op]
            self.take()
            right = self.binary(prec + 1)
            left = fn(np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64))

    def unary(self) -> Any:
        op = self.peek()
        if op in ("-", "+", "!"):
            self.take()
            value = np.asarray(self.unary(), dtype=np.float64)
            return -value if op == "-" else (value == 0) * 1.0 if op == "!" else value
        return self.primary()

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return float(text)
        if text == "(":
            value = self.ternary()
            self.take(")")
            return value
        if kind == "name":
            if self.peek() == "(":
                if text not in _FUNCTIONS:
                    raise EvalError(f"expression {self.text!r}: unknown function {text}")
                self.take("(")
                args = [self.ternary()]
                while self.peek() == ",":
                    self.take(",")
                    args.append(self.ternary())
                self.take(")")
                return _FUNCTIONS[text](*args)
            return self.lookup(text)
        raise EvalError(f"expression {self.text!r}: unexpected {text!r}")


def evaluate_expression(text: str, lookup: Callable[[str], Any]) -> Any:
    """Value of a Nuke expression; `lookup(name)` resolves names (channels, knobs, temps)."""
    return _Parser(text, lookup).parse()


# --------------------------------------------------------------------------------------------
# STMap, written independently of rna_engine.media.stmap


def _keys_cubic(a: float) -> Callable[[np.ndarray], np.ndarray]:
    """Keys (1981) cubic convolution kernel with parameter a (= −C of Mitchell–Netravali, B = 0)."""

    def kernel(t: np.ndarray) -> np.ndarray:
        s = np.abs(t)
        inner = (a + 2) * s**3 - (a + 3) * s**2 + 1
        outer = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return np.select([s <= 1, s < 2], [inner, outer], 0.0)

    return kernel


def _bc_cubic(b: float, c: float) -> Callable[[np.ndarray], np.ndarray]:
    """Mitchell & Netravali (1988) piecewise cubic, expanded form."""

    def kernel(t: np.ndarray) -> np.ndarray:
        s = np.abs(t)
        inner = ((12 - 9 * b - 6 * c) * s**3 + (-18 + 12 * b + 6 * c) * s**2 + (6 - 2 * b)) / 6
        outer = (
            (-b - 6 * c) * s**3
            + (6 * b + 30 * c) * s**2
            + (-12 * b - 48 * c) * s
            + (8 * b + 24 * c)
        ) / 6
        return np.select([s < 1, s < 2], [inner, outer], 0.0)

    return kernel


def _lanczos(a: int) -> Callable[[np.ndarray], np.ndarray]:
    """Lanczos (windowed sinc) kernel of radius a: a·sin(πt)·sin(πt/a) / (πt)², 1 at t = 0."""

    def kernel(t: np.ndarray) -> np.ndarray:
        s = np.abs(t)
        safe = np.where(s == 0, 1.0, s)
        value = a * np.sin(np.pi * safe) * np.sin(np.pi * safe / a) / (np.pi * safe) ** 2
        return np.select([s == 0, s < a], [1.0, value], 0.0)

    return kernel


_KERNELS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    # name: (support radius in pixels, kernel)
    "Cubic": (2, _keys_cubic(0.0)),
    "Keys": (2, _keys_cubic(-0.5)),
    "Simon": (2, _keys_cubic(-0.75)),
    "Rifman": (2, _keys_cubic(-1.0)),
    "Mitchell": (2, _bc_cubic(1 / 3, 1 / 3)),
    "Parzen": (2, _bc_cubic(1.0, 0.0)),
    "Notch": (2, _bc_cubic(1.5, -0.25)),
    "Lanczos4": (2, _lanczos(2)),
    "Lanczos6": (3, _lanczos(3)),
    "Sinc4": (4, _lanczos(4)),
}
_PAD = 8
"""Padding of each axis: twice the widest radius (Sinc4), see `_axis_weights`."""


def _axis_weights(pos: np.ndarray, size: int, filt: str) -> np.ndarray:
    """Dense (N, size + 2·PAD) weights of the edge-padded axis for lookups at `pos`.

    `pos` is Nuke's continuous coordinate (pixel i spans [i, i+1)). Padded entry k holds
    source pixel clamp(k − PAD); points further out than the kernel radius r are pulled in to
    −r or size + r, which changes nothing because every tap there reads the same edge pixel
    (taps reach 2r past the edge, inside the padding). Each row is divided by its sum, as
    Nuke's `Filter::Coefficients::normalize` does (the windowed sincs do not sum to 1).
    """
    k = np.arange(-_PAD, size + _PAD)[None, :]
    if filt == "Impulse":
        pos = np.clip(pos, -1.0, size + 1.0)[:, None]
        return ((k <= pos) & (pos < k + 1)) * 1.0
    if filt not in _KERNELS:
        raise EvalError(f"STMap filter {filt}: not implemented by the evaluator")
    radius, kernel = _KERNELS[filt]
    pos = np.clip(pos, -radius, size + radius)[:, None]
    weights = kernel(pos - (k + 0.5))
    return weights / weights.sum(axis=1, keepdims=True)


def stmap(
    src: Image, stmap_image: Image, uv_names: list[str], channels: list[str], filt: str
) -> Image:
    """Nuke's STMap: output format = the stmap input's; each pixel samples src at (u·W, v·H).

    `uv_names` are the uv layer's channels; the first two are u and v (absent ones are black).
    """
    names = uv_names
    if len(names) < 2:
        raise EvalError(f"STMap: uv layer {uv_names} has fewer than two channels")
    u = stmap_image.plane(names[0]).ravel()
    v = stmap_image.plane(names[1]).ravel()
    # Sum in float32, as Nuke does: a footprint grazing a painted texel (~1e-9) must round the
    # same way here as in Nuke and `rna_engine.media.stmap`.
    wx = _axis_weights(u * src.width, src.width, filt).astype(np.float32)
    wy = _axis_weights(v * src.height, src.height, filt).astype(np.float32)
    col = np.clip(np.arange(-_PAD, src.width + _PAD), 0, src.width - 1)
    row = np.clip(np.arange(-_PAD, src.height + _PAD), 0, src.height - 1)
    out = Image(stmap_image.width, stmap_image.height)
    for name in channels:
        padded = src.plane(name)[np.ix_(row, col)].astype(np.float32)
        values = np.einsum("nj,ji,ni->n", wy, padded, wx, optimize=True)
        out.planes[name] = values.reshape(stmap_image.height, stmap_image.width)
    return out


# --------------------------------------------------------------------------------------------
# The graph


_MERGE_OPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "plus": lambda a, b: a + b,
    "minus": lambda a, b: a - b,
    "from": lambda a, b: b - a,
    "multiply": lambda a, b: a * b,
    "min": np.minimum,
    "max": np.maximum,
}


class GizmoEvaluator:
    """Evaluates one instance of a parsed Group/Gizmo for one frame.

    Args:
        group: the parsed `Gizmo`/`Group` node.
        inputs: group input number → image (a missing number is an unconnected input).
        knobs: the instance's knob values (strings as written in a script, or numbers/bools).
        frame: the frame to render.
        root: root knobs (`first_frame`, `last_frame`), as numbers.
        root_format: (width, height) of black images (unconnected inputs, frames out of range).
        gui: the value of `$gui`: False is a render (farm, `nuke -x`, a local render), True the
            interactive session's Viewer.
        env: environment variables for `[getenv NAME]` (default: none set).
    """

    def __init__(
        self,
        group: Node,
        inputs: Mapping[int, Image],
        knobs: Mapping[str, Any],
        frame: int,
        root: Mapping[str, Any],
        root_format: tuple[int, int],
        gui: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.group = group
        self.gui = gui
        self.env = dict(env or {})
        self.inputs = dict(inputs)
        self.overrides = dict(knobs)
        unknown = [k for k in self.overrides if group.user_knob(k) is None]
        if unknown:
            raise EvalError(f"{unknown[0]}: not a knob of the gizmo")
        self.frame = frame
        self.root = dict(root)
        self.root_format = root_format
        self.layers = group.layers
        self._cache: dict[int, Image] = {}
        self.reads: list[Path] = []

    # ---- knobs --------------------------------------------------------------------------

    def _group_knob(self, name: str) -> tuple[UserKnob, Any]:
        spec = self.group.user_knob(name)
        if spec is None:
            raise EvalError(f"parent.{name}: no such knob on the gizmo")
        if name in self.overrides:
            return spec, self.overrides[name]
        word = self.group.knobs.get(name)
        if word is not None:
            return spec, word
        defaults = {3: 0, 7: 0.0, 6: False, 4: spec.items[0] if spec.items else 0}
        return spec, defaults.get(spec.type_id, "")

    def parent_number(self, name: str) -> float:
        spec, value = self._group_knob(name)
        if isinstance(value, Word):
            if value.is_expression:
                return float(self.scalar(value.expression))
            value = value.text
        if spec.type_id == 4:
            if isinstance(value, str) and value in spec.items:
                return float(spec.items.index(value))
            return float(value)
        if isinstance(value, str) and value in ("true", "false"):
            return 1.0 if value == "true" else 0.0
        return float(value)

    def parent_text(self, name: str) -> str:
        spec, value = self._group_knob(name)
        if isinstance(value, Word) and value.is_expression or spec.type_id in (3, 4, 6, 7):
            number = self.parent_number(name)
            return str(int(number)) if float(number).is_integer() else repr(number)
        return value.text if isinstance(value, Word) else str(value)

    def _name(self, name: str) -> float:
        if name.startswith("parent."):
            return self.parent_number(name[7:])
        if name.startswith("root."):
            return float(self.root[name[5:]])
        if name == "frame":
            return float(self.frame)
        if name == "$gui":
            return 1.0 if self.gui else 0.0
        raise EvalError(f"{name}: unknown name in a knob expression")

    def scalar(self, expression: str) -> float:
        return float(evaluate_expression(self.tcl(expression), self._name))

    def knob_number(self, node: Node, name: str, default: float) -> float:
        word = node.knobs.get(name)
        if word is None:
            return default
        if word.is_expression:
            return self.scalar(word.expression)
        text = self.tcl(word.text)
        return 1.0 if text == "true" else 0.0 if text == "false" else float(text)

    def tcl(self, text: str) -> str:
        """Substitute `[command ...]` (value, format, exists, subst, getenv, file dirname).

        As in Tcl, the result of a substitution is not substituted again, except by `subst`.
        """
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != "[":
                out.append(text[i])
                i += 1
                continue
            depth, j = 0, i
            while j < len(text):
                depth += {"[": 1, "]": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            if depth:
                raise EvalError(f"unbalanced [ in {text!r}")
            inner = text[i + 1 : j]
            if inner.startswith("subst "):  # one word, substituted twice (Tcl's subst)
                out.append(self.tcl(self.tcl(inner[6:].strip())))
            else:
                out.append(self._tcl_command(self.tcl(inner)))
            i = j + 1
        return "".join(out)

    def _tcl_command(self, command: str) -> str:
        words = [w.text for w in split_words(command)]
        if words[0] == "value" and len(words) == 2:
            target = words[1]
            if target.startswith("parent."):
                return self.parent_text(target[7:])
            if target.startswith("root."):
                return str(self.root[target[5:]])
            raise EvalError(f"[value {target}]: only parent.* and root.* are supported")
        if words[0] == "getenv" and len(words) == 2:
            return self.env.get(words[1], "")
        if words[0] == "file" and len(words) == 3 and words[1] == "dirname":
            return posixpath.dirname(words[2])
        if words[0] == "format" and len(words) >= 2:
            args = [float(a) if re.fullmatch(r"-?\d+\.\d*", a) else int(a) for a in words[2:]]
            return words[1] % tuple(args)
        if words[0] == "exists" and len(words) == 2:
            m = re.fullmatch(r"parent\.input(\d+)", words[1])
            if m:
                return "1" if int(m.group(1)) in self.inputs else "0"
            if words[1].startswith("parent."):
                return "1" if self.group.user_knob(words[1][7:]) else "0"
        raise EvalError(f"[{command}]: Tcl command not supported by the evaluator")

    # ---- channels -----------------------------------------------------------------------

    def channel_set(self, spec: str, image: Image | None = None) -> list[str]:
        """Channels named by a channel-set knob (`rgb`, `rgba`, `{rgba.red -rgba.green ...}`)."""
        words = [w.text for w in split_words(spec)] if spec.strip() else []
        out: list[str] = []
        for word in words:
            if word in ("none", "") or word.startswith("-"):
                continue
            if word == "rgb":
                out += list(_RGBA[:3])
            elif word == "rgba":
                out += list(_RGBA)
            elif word == "all":
                out += sorted(image.planes) if image is not None else list(_RGBA)
            elif word == "alpha":
                out.append("rgba.alpha")
            elif "." in word:
                out.append(word)
            elif word in self.layers:
                out += self.layers[word]
            elif image is not None and any(c.startswith(word + ".") for c in image.planes):
                out += sorted(c for c in image.planes if c.startswith(word + "."))
            else:
                raise EvalError(f"channel set {spec!r}: unknown layer {word!r}")
        return out

    # ---- nodes --------------------------------------------------------------------------

    def output(self) -> Image:
        outputs = [n for n in self.group.children if n.cls == "Output"]
        if len(outputs) != 1:
            raise EvalError(f"{self.group.name}: expected one Output node, found {len(outputs)}")
        return self.evaluate(outputs[0])

    def black(self) -> Image:
        return Image(*self.root_format)

    def input_image(self, node: Node, index: int) -> Image:
        if index >= len(node.inputs) or node.inputs[index] is None:
            return self.black()
        return self.evaluate(node.inputs[index])  # type: ignore[arg-type]

    def evaluate(self, node: Node) -> Image:
        key = id(node)
        if key not in self._cache:
            if node.knobs.get("disable") is not None and self.knob_number(node, "disable", 0.0):
                self._cache[key] = self.input_image(node, 0)
            else:
                method = getattr(self, f"_node_{node.cls}", None)
                if method is None:
                    raise EvalError(f"{node.name}: node class {node.cls} is not supported")
                self._cache[key] = method(node)
        return self._cache[key]

    def _node_Input(self, node: Node) -> Image:
        number = node.input_number()
        return self.inputs[number] if number in self.inputs else self.black()

    def _node_Output(self, node: Node) -> Image:
        return self.input_image(node, 0)

    def _node_Dot(self, node: Node) -> Image:
        return self.input_image(node, 0)

    def _node_Read(self, node: Node) -> Image:
        from rna_engine.media import io

        first = self.knob_number(node, "first", 1)
        last = self.knob_number(node, "last", 1)
        frame = self.frame
        if frame < first or frame > last:
            mode = node.knob("before" if frame < first else "after", "hold")
            if mode == "black":
                return self.black()
            if mode != "hold":
                raise EvalError(f"{node.name}: before/after {mode} not supported")
            frame = int(first if frame < first else last)
        text = self.tcl(node.knob("file", "") or "")
        text = re.sub(r"#+", lambda m: f"{frame:0{len(m.group(0))}d}", text)
        text = re.sub(r"%0?(\d*)d", lambda m: f"{frame:0{m.group(1) or 1}d}", text)
        path = Path(text)
        if not path.is_file():
            if node.knob("on_error", "error") == "error":
                raise EvalError(f"{node.name}: cannot read {path} (on_error error)")
            return self.black()
        if path.suffix.lower() != ".exr":
            raise EvalError(f"{node.name}: only EXR is supported ({path})")
        self.reads.append(path)
        data = io.read_image(path)
        return Image.from_rows(data.pixels, tuple(nuke_channel_name(c) for c in data.channels))

    def _node_STMap(self, node: Node) -> Image:
        src = self.input_image(node, 0)
        stmap_image = self.input_image(node, 1)
        word = node.knobs.get("filter")
        if word is None:
            filt = "Cubic"
        elif word.is_expression:
            filt = NUKE_FILTERS[int(self.scalar(word.expression))]
        else:
            filt = word.text
        channels = self.channel_set(node.knob("channels", "all") or "all", src)
        uv_names = self.channel_set(node.knob("uv", "rgb") or "rgb", stmap_image)
        return stmap(src, stmap_image, uv_names, channels, filt)

    def _node_Merge2(self, node: Node) -> Image:
        b = self.input_image(node, 0)
        a = self.input_image(node, 1)
        op = node.knob("operation", "over") or "over"
        if op not in _MERGE_OPS:
            raise EvalError(f"{node.name}: Merge operation {op} not supported")
        a_set = self.channel_set(node.knob("Achannels", "rgba") or "rgba", a)
        b_set = self.channel_set(node.knob("Bchannels", "rgba") or "rgba", b)
        out_set = self.channel_set(node.knob("output", "rgba") or "rgba", b)
        if not (len(a_set) == len(b_set) == len(out_set)):
            raise EvalError(f"{node.name}: A/B/output channel sets differ in size")
        mix = self.knob_number(node, "mix", 1.0)
        out = b.copy()
        for ca, cb, co in zip(a_set, b_set, out_set, strict=True):
            merged = _MERGE_OPS[op](a.plane(ca), b.plane(cb))
            out.planes[co] = b.plane(co) + mix * (merged - b.plane(co)) if mix != 1 else merged
        return out

    def _node_Copy(self, node: Node) -> Image:
        b = self.input_image(node, 0)
        a = self.input_image(node, 1)
        out = b.copy()
        for i in range(4):
            src, dst = node.knob(f"from{i}"), node.knob(f"to{i}")
            if not src or not dst or src.startswith("-") or "none" in (src, dst):
                continue
            out.planes[dst] = a.plane(src)
        if node.knob("channels"):
            for name in self.channel_set(node.knob("channels") or "", a):
                out.planes[name] = a.plane(name)
        return out

    def _node_Expression(self, node: Node) -> Image:
        src = self.input_image(node, 0)
        temps: dict[str, Any] = {}
        y, x = np.mgrid[0 : src.height, 0 : src.width].astype(np.float64)

        def lookup(name: str) -> Any:
            if name in temps:
                return temps[name]
            if name in ("r", "g", "b", "a"):
                return src.plane(_RGBA["rgba".index(name)])
            if name in ("x", "y"):
                return x if name == "x" else y
            if name in ("width", "height"):
                return float(src.width if name == "width" else src.height)
            if name.startswith(("parent.", "root.")) or name == "frame":
                return self._name(name)
            layer = name.split(".")[0]
            if name in src.planes or name in self.layers.get(layer, ()):
                return src.plane(name)
            raise EvalError(f"{node.name}: unknown name {name!r} in an expression")

        for i in range(4):
            temp_name = node.knob(f"temp_name{i}")
            temp_expr = node.knob(f"temp_expr{i}")
            if temp_name and temp_expr:
                temps[temp_name] = evaluate_expression(self.tcl(temp_expr), lookup)
        out = src.copy()
        for i in range(4):
            expr = node.knob(f"expr{i}", "") or ""
            if not expr.strip():
                continue
            value = evaluate_expression(self.tcl(expr), lookup)
            plane = np.broadcast_to(np.asarray(value, np.float64), (src.height, src.width))
            spec = node.knob(f"channel{i}", _EXPRESSION_DEFAULT_CHANNELS[i]) or "none"
            for name in self.channel_set(spec, src):
                out.planes[name] = np.array(plane)
        return out

    def _node_Multiply(self, node: Node) -> Image:
        src = self.input_image(node, 0)
        value = self.knob_number(node, "value", 1.0)
        out = src.copy()
        for name in self.channel_set(node.knob("channels", "rgb") or "rgb", src):
            out.planes[name] = src.plane(name) * value
        return out

    def _node_Remove(self, node: Node) -> Image:
        src = self.input_image(node, 0)
        listed = set(self.channel_set(node.knob("channels", "none") or "none", src))
        keep = node.knob("operation", "remove") == "keep"
        planes = {k: v for k, v in src.planes.items() if (k in listed) == keep}
        return Image(src.width, src.height, planes)

    def _node_Switch(self, node: Node) -> Image:
        which = int(self.knob_number(node, "which", 0.0))
        return self.input_image(node, min(max(which, 0), len(node.inputs) - 1))

    def _node_Dissolve(self, node: Node) -> Image:
        first = self.input_image(node, 0)
        second = self.input_image(node, 1)
        w = self.knob_number(node, "which", 0.0)
        out = first.copy()
        for name in set(first.planes) | set(second.planes):
            out.planes[name] = first.plane(name) * (1 - w) + second.plane(name) * w
        return out
