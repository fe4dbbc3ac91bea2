"""RNAAtlasBuild's knobs as data, and the pure helpers behind its callbacks.

Everything here is plain Python (no `nuke`): knob specs (name, type, label, default, tooltip),
the cache path of a build (`<cache_dir>/v###`, docs/cache.md), frame-range resolution,
reference-frame validation, the engine build spec (keys of `rna_engine.settings.BuildSpec`),
the one-line status text, and small cache readers used by Reload and the Info tab.
Errors the artist can fix raise `SpecError` with one line naming the knob or input.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from . import __version__


class SpecError(ValueError):
    """A knob value or input the artist can fix; the message is the one line they see."""


PRESETS = ("draft", "standard", "final")
RANGE_MODES = ("input", "global", "custom")
VIEWS = ("atlas", "plate", "UV checker", "matte overlay", "reconstruction")
"""The `view` knob: what the Viewer shows in the GUI; a render always gets the atlas."""
STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL_STATES = ("done", "failed", "cancelled")

KNOB_TYPE_IDS = {
    "String": 1,
    "File": 2,
    "Int": 3,
    "Enumeration": 4,
    "Boolean": 6,
    "Double": 7,
    "Channel": 11,
    "Tab": 20,
    "PyScript": 22,
    "Text": 26,
}
"""`addUserKnob` type numbers (NDK "Knobs by ID")."""

ATLAS_SCALE_RANGE = (0.25, 4.0)
"""`bake.atlas_scale` values the engine accepts."""

DEFAULT_CACHE_DIR = "[file dirname [value root.name]]/rna/[value this.name]"
"""Beside the script, one folder per node (TCL, evaluated by Nuke)."""


def _button(call: str) -> str:
    return f"import rna_nuke.glue as g; g.{call}(nuke.thisNode())"


class KnobSpec(NamedTuple):
    """One user knob of RNAAtlasBuild (the gizmo text is checked against these)."""

    name: str
    kind: str
    """Key of `KNOB_TYPE_IDS`."""
    label: str = ""
    default: Any = None
    """Value a fresh node has; None: the knob type's own empty value."""
    tooltip: str = ""
    values: tuple[str, ...] = ()
    """Enumeration entries."""
    command: str = ""
    """PyScript button code."""
    flags: tuple[str, ...] = ()
    """Extra `addUserKnob` flags: `-STARTLINE`, `+INVISIBLE`, `+DISABLED`."""
    slider: tuple[float, float] | None = None
    """Double knobs: the slider range (`R min max`), the range the engine accepts."""


BUILD_KNOBS: tuple[KnobSpec, ...] = (
    KnobSpec("rna_tab", "Tab", "RNAAtlasBuild"),
    KnobSpec(
        "cache_dir",
        "File",
        "cache folder",
        DEFAULT_CACHE_DIR,
        "Folder of this node's builds; each build is a version folder v001, v002... in it.",
    ),
    KnobSpec(
        "version",
        "Int",
        "version",
        1,
        "Cache version shown and built. Build makes a new version when this one is done.",
    ),
    KnobSpec(
        "range_mode",
        "Enumeration",
        "frame range",
        "input",
        "input: the plate's range; global: the script's range; custom: first-last.",
        values=RANGE_MODES,
    ),
    KnobSpec("first", "Int", "first", 1001, "First frame (custom range).", flags=("-STARTLINE",)),
    KnobSpec("last", "Int", "last", 1100, "Last frame (custom range).", flags=("-STARTLINE",)),
    KnobSpec(
        "reference_frame",
        "Int",
        "reference frame",
        1001,
        "Frame the atlas is aligned with; the ROI must be unoccluded there.",
    ),
    KnobSpec(
        "set_reference",
        "PyScript",
        "set to current frame",
        None,
        "Use the viewer's current frame as the reference frame.",
        command=_button("set_reference_to_current"),
        flags=("-STARTLINE",),
    ),
    KnobSpec(
        "roi_channel",
        "Channel",
        "ROI channel",
        "rgba.alpha",
        "Channel of the roi input holding the region of interest at the reference frame.",
    ),
    KnobSpec(
        "roi_invert", "Boolean", "invert", False, "Invert the ROI matte.", flags=("-STARTLINE",)
    ),
    KnobSpec(
        "holdout_channel",
        "Channel",
        "holdout channel",
        "rgba.alpha",
        "Channel of the optional holdout input: where it is 1 the matte is forced to 0.",
    ),
    KnobSpec(
        "holdout_invert",
        "Boolean",
        "invert",
        False,
        "Invert the holdout matte.",
        flags=("-STARTLINE",),
    ),
    KnobSpec(
        "quality",
        "Enumeration",
        "quality",
        "standard",
        "draft: minutes, for checking the setup; standard: production; final: slowest.",
        values=PRESETS,
    ),
    KnobSpec(
        "view",
        "Enumeration",
        "view",
        "atlas",
        "What the Viewer shows in this session. atlas: the image to paint on; plate: the plate "
        "with the rna layers; UV checker, matte overlay, reconstruction: checks of the fit. "
        "A render (farm or local) always outputs the atlas, whatever view is chosen.",
        values=VIEWS,
    ),
    KnobSpec("buttons_divider", "Text", ""),
    KnobSpec(
        "build",
        "PyScript",
        "Build",
        None,
        "Send this build to the RNA engine (started if needed); Nuke stays usable.",
        command=_button("build"),
    ),
    KnobSpec(
        "cancel",
        "PyScript",
        "Cancel",
        None,
        "Cancel the running build.",
        command=_button("cancel"),
        flags=("-STARTLINE",),
    ),
    KnobSpec(
        "reload",
        "PyScript",
        "Reload",
        None,
        "Re-read the cache from disk.",
        command=_button("reload"),
        flags=("-STARTLINE",),
    ),
    KnobSpec(
        "open_cache",
        "PyScript",
        "Open cache",
        None,
        "Open the cache folder in the file browser.",
        command=_button("open_cache"),
        flags=("-STARTLINE",),
    ),
    KnobSpec(
        "submit_farm",
        "PyScript",
        "Submit to farm",
        None,
        "Write a farm job that builds this cache on a GPU node.",
        command=_button("submit_to_farm"),
        flags=("-STARTLINE",),
    ),
    KnobSpec("status", "Text", "status", "not built"),
    KnobSpec(
        "rna_version",
        "String",
        "RNA version",
        __version__,
        "Plugin version this Group was created with.",
        flags=("+INVISIBLE",),
    ),
    KnobSpec(
        "cache_path",
        "File",
        "cache path",
        "",
        "Version folder the internal Reads use (set by Build and Reload); saved as "
        "[getenv RNA_CACHE_ROOT]/... or [file dirname [value root.name]]/... when under them.",
        flags=("+INVISIBLE",),
    ),
    KnobSpec(
        "cache_ready",
        "Boolean",
        "cache ready",
        False,
        "The version folder holds a finished build.",
        flags=("+INVISIBLE",),
    ),
    KnobSpec(
        "cache_first",
        "Int",
        "cache first",
        1,
        "First frame of the built passes.",
        flags=("+INVISIBLE",),
    ),
    KnobSpec(
        "cache_last",
        "Int",
        "cache last",
        1,
        "Last frame of the built passes.",
        flags=("+INVISIBLE",),
    ),
    KnobSpec(
        "job_id", "String", "job id", "", "Engine job of the last Build.", flags=("+INVISIBLE",)
    ),
    KnobSpec("advanced_tab", "Tab", "Advanced"),
    KnobSpec(
        "working_long_side",
        "Int",
        "working resolution",
        0,
        "Long side in pixels the fit runs at (0: the quality preset's; smaller is faster). "
        "The cache is always written at plate resolution.",
    ),
    KnobSpec(
        "atlas_scale",
        "Double",
        "atlas scale",
        1.0,
        "Atlas size as a multiple of the plate format (0.25 to 4).",
        slider=ATLAS_SCALE_RANGE,
    ),
    KnobSpec("seed", "Int", "seed", 0, "Seed of every random choice of the fit."),
    KnobSpec("device", "String", "device", "auto", "auto, cpu or cuda:N."),
    KnobSpec(
        "engine_python",
        "File",
        "engine python",
        "",
        "Python of the engine environment. Empty: $RNA_ENGINE_PYTHON, else engine_python in "
        "$RNA_HOME/config.json, else rna-engine on PATH (never Nuke's own Python).",
    ),
    KnobSpec(
        "engine_settings",
        "String",
        "extra settings (JSON)",
        "",
        "Engine setting overrides as a JSON object, applied after the quality preset and the "
        'knobs above, e.g. {"fit": {"iterations": 5000}}. Empty: none.',
    ),
    KnobSpec("info_tab", "Tab", "Info"),
    KnobSpec("info_rna_version", "Text", "RNA version", __version__),
    KnobSpec("info_engine_version", "Text", "engine version", "-"),
    KnobSpec("info_cache_hash", "Text", "cache hash", "-"),
    KnobSpec("info_build_time", "Text", "build time", "-"),
)
"""Every user knob of RNAAtlasBuild, in panel order."""

VALUE_KINDS = ("String", "File", "Int", "Enumeration", "Boolean", "Double", "Channel")


def knob_spec(name: str) -> KnobSpec:
    for spec in BUILD_KNOBS:
        if spec.name == name:
            return spec
    raise KeyError(name)


def default_values() -> dict[str, Any]:
    """Knob name → default of every knob that holds a value."""
    return {s.name: s.default for s in BUILD_KNOBS if s.kind in VALUE_KINDS}


# ------------------------------------------------------------------------------------------
# Gizmo text of the knobs


def tcl_quote(text: str) -> str:
    """`text` as one double-quoted TCL word: brackets and `$` escaped so Nuke stores it as is."""
    out = []
    for ch in text:
        if ch in '\\"[]${}':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def user_knob_line(spec: KnobSpec) -> str:
    """The `addUserKnob {...}` line of `spec`, as it appears in the gizmo."""
    parts = [str(KNOB_TYPE_IDS[spec.kind]), spec.name]
    if spec.label or spec.kind == "Text":  # a Text knob without `l` shows its name as label
        parts += ["l", tcl_quote(spec.label)]
    if spec.command:
        parts += ["T", tcl_quote(spec.command)]
    elif spec.kind == "Text" and spec.default:
        parts += ["T", tcl_quote(str(spec.default))]
    if spec.tooltip:
        parts += ["t", tcl_quote(spec.tooltip)]
    if spec.values:
        parts += ["M", "{" + " ".join(tcl_quote(v) for v in spec.values) + "}"]
    if spec.slider is not None:
        parts += ["R", f"{spec.slider[0]:g}", f"{spec.slider[1]:g}"]
    parts += list(spec.flags)
    return "addUserKnob {" + " ".join(parts) + "}"


def value_line(spec: KnobSpec) -> str | None:
    """The `name value` line that sets a non-empty default, or None."""
    value = spec.default
    if spec.kind not in VALUE_KINDS or value is None or value == "" or value is False:
        return None
    if spec.kind in ("Int", "Double") and value == 0:
        return None
    if spec.kind == "Enumeration" and value == spec.values[0]:
        return None
    if isinstance(value, bool):
        text = "true"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = tcl_quote(str(value))
    return f"{spec.name} {text}"


# ------------------------------------------------------------------------------------------
# Paths and ranges


def cache_version_dir(cache_dir: str, version: int) -> str:
    """`<cache_dir>/v###` (forward slashes, as Nuke writes paths on every OS)."""
    if not cache_dir.strip():
        raise SpecError("cache folder: empty")
    if version < 1:
        raise SpecError(f"version: {version} (must be 1 or more)")
    return f"{cache_dir.rstrip('/').rstrip(os.sep)}/v{version:03d}"


CACHE_ROOT_ENV = "RNA_CACHE_ROOT"
"""Project root of caches: a path under it is stored as `[getenv RNA_CACHE_ROOT]/...`."""
SCRIPT_DIR_TCL = "[file dirname [value root.name]]"
_CACHE_ROOT_TCL = f"[getenv {CACHE_ROOT_ENV}]"


def _under(path: str, folder: str) -> str | None:
    """`path` relative to `folder` (forward slashes) when inside it, else None."""
    if not folder:
        return None
    clean, base = path.replace("\\", "/").rstrip("/"), folder.replace("\\", "/").rstrip("/")
    if os.name == "nt":
        clean_cmp, base_cmp = clean.lower(), base.lower()
    else:
        clean_cmp, base_cmp = clean, base
    if not base_cmp or not clean_cmp.startswith(base_cmp + "/"):
        return None
    return clean[len(base) + 1 :]


def portable_path(path: str, script: str, env: Mapping[str, str]) -> str:
    """`path` as a knob stores it, so a moved or farm-mapped project still finds it.

    Under `$RNA_CACHE_ROOT`: `[getenv RNA_CACHE_ROOT]/<rest>`; else under the script's folder:
    `[file dirname [value root.name]]/<rest>`; else `path` itself (forward slashes).
    """
    clean = path.replace("\\", "/")
    rest = _under(clean, env.get(CACHE_ROOT_ENV, ""))
    if rest is not None:
        return f"{_CACHE_ROOT_TCL}/{rest}"
    rest = _under(clean, os.path.dirname(script.replace("\\", "/")) if script else "")
    if rest is not None:
        return f"{SCRIPT_DIR_TCL}/{rest}"
    return clean


def expand_portable(text: str, script: str, env: Mapping[str, str]) -> str:
    """The path a `portable_path` value names (what Nuke's TCL evaluates it to)."""
    if text.startswith(_CACHE_ROOT_TCL):
        return (
            env.get(CACHE_ROOT_ENV, "").replace("\\", "/").rstrip("/")
            + text[len(_CACHE_ROOT_TCL) :]
        )
    if text.startswith(SCRIPT_DIR_TCL):
        return os.path.dirname(script.replace("\\", "/")) + text[len(SCRIPT_DIR_TCL) :]
    return text


def split_cache_dir(cache_dir: str) -> tuple[str, str]:
    """(`out`, `name`) of the engine spec for `cache_dir` (builds go to `<out>/<name>/v###`)."""
    clean = cache_dir.replace("\\", "/").rstrip("/")
    out, _, name = clean.rpartition("/")
    if not name or name in (".", ".."):
        raise SpecError(f"cache folder {cache_dir!r}: needs a folder name at the end")
    return (out or "."), name


def version_dirs(cache_dir: str) -> list[int]:
    """Version numbers of the `v###` folders under `cache_dir`, ascending."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return []
    found = [int(m.group(1)) for n in names if (m := re.match(r"^v(\d{3,})$", n))]
    return sorted(v for v in found if os.path.isdir(os.path.join(cache_dir, f"v{v:03d}")))


def read_json_file(path: str) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when missing or unreadable (caches are polled)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


LOST_AFTER_S = 30.0
"""A running/queued `status.json` whose `heartbeat` is older than this is lost, seconds (the
engine's `rna_engine.media.cache.LOST_AFTER_S`)."""


def status_lost(
    status: Mapping[str, Any],
    now: float | None = None,
    lost_after_s: float = LOST_AFTER_S,
    host: str | None = None,
) -> str | None:
    """Why a running/queued `status.json` belongs to a build that died, or None.

    The engine's rule (`rna_engine.media.cache.status_lost`, written again here: rna_nuke does not
    import the engine): the writer's `pid` is gone on this host, or its `heartbeat` is more
    than `lost_after_s` old. Final states and statuses without pid/heartbeat are never lost.
    """
    if status.get("state") not in ("queued", "running"):
        return None
    now = time.time() if now is None else now
    pid, where = status.get("pid"), status.get("host")
    if isinstance(pid, int) and where and where == (host or socket.gethostname()):
        if not pid_alive(pid):
            return f"process {pid} on {where} is gone"
    beat = status.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat > lost_after_s:
        return f"no heartbeat for {now - beat:.0f} s (process {pid} on {where})"
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (always True on Windows: signal 0 there would
    stop it; callers decide by heartbeat or hello instead)."""
    if os.name == "nt":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT; the heartbeat decides there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def version_for_build(cache_dir: str, version: int) -> int:
    """The version a new Build writes: `version`, unless that one is finished (then the next free).

    A finished version is never rebuilt in place (docs/cache.md); unfinished ones are resumed.
    """
    version = max(1, int(version))
    status = read_json_file(f"{cache_version_dir(cache_dir, version)}/status.json") or {}
    if status.get("state") != "done":
        return version
    existing = version_dirs(cache_dir)
    return max([version, *existing]) + 1


def frame_range(
    mode: str,
    input_range: tuple[int, int] | None,
    global_range: tuple[int, int],
    custom_range: tuple[int, int],
) -> tuple[int, int]:
    """(first, last) for `range_mode` input / global / custom (SmartVector's choices)."""
    if mode == "input":
        if input_range is None:
            raise SpecError("frame range input: the plate input is not connected")
        first, last = input_range
        where = "the plate input's range"
    elif mode == "global":
        first, last = global_range
        where = "the script's frame range"
    elif mode == "custom":
        first, last = custom_range
        where = "first/last"
    else:
        raise SpecError(f"frame range: {mode!r} is not one of {', '.join(RANGE_MODES)}")
    first, last = int(first), int(last)
    if first > last:
        raise SpecError(f"frame range: {where} is {first}-{last} (first after last)")
    if last - first < 1:
        raise SpecError(f"frame range: {where} is the single frame {first}; need two or more")
    return first, last


def check_reference(reference_frame: int, first: int, last: int) -> None:
    """Raise `SpecError` unless the reference frame lies in `first..last`."""
    if not first <= int(reference_frame) <= last:
        raise SpecError(
            f"reference frame {reference_frame} is outside the frame range {first}-{last}"
        )


def layer_of(channel: str) -> str:
    """Nuke layer of a channel: `rgba.alpha` → `rgba`, `alpha` → `rgba`."""
    if "." in channel:
        return channel.split(".", 1)[0]
    return "rgba"


_RGBA_SUFFIX = {"red": "R", "green": "G", "blue": "B", "alpha": "A"}


def exr_channel_name(channel: str) -> str:
    """Name of a Nuke channel in an EXR file Nuke writes: `rgba.alpha` → `A`, `m.red` → `m.R`."""
    channel = channel.strip()
    if not channel or channel == "none":
        raise SpecError("channel: none selected")
    layer, _, name = channel.rpartition(".")
    suffix = _RGBA_SUFFIX.get(name, name)
    if layer in ("", "rgba", "rgb"):
        return suffix
    return f"{layer}.{suffix}"


# ------------------------------------------------------------------------------------------
# The engine build spec


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def build_spec(
    values: Mapping[str, Any],
    *,
    plate: str,
    roi: str,
    frames: tuple[int, int],
    cache_dir: str,
    version: int,
    holdout: str = "",
    roi_channel: str = "A",
    holdout_channel: str = "A",
    colour: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The engine's build spec (keys of `rna_engine.settings.BuildSpec`) from knob values.

    `settings` holds the quality preset, the seed and the non-default Advanced knobs, with the
    `engine_settings` JSON merged in last (it wins over the knobs).

    Args:
        values: knob name → value (`default_values()` fills what is missing).
        plate, roi, holdout: file paths or sequence patterns the engine reads.
        frames: (first, last) plate frame numbers.
        cache_dir: evaluated `cache_dir`; the build goes to `<cache_dir>/v<version>`.
        roi_channel, holdout_channel: channel names as stored in those files (`A`, `mask.A`).
        colour: `settings.ingest` entries of the plate (`colorspace`, `ocio_config`).
    """
    v = {**default_values(), **dict(values)}
    if not plate:
        raise SpecError("plate: no file to read (connect a Read or a renderable tree to input 0)")
    if not roi:
        raise SpecError("roi: no matte (connect a Roto to input 1)")
    quality = str(v["quality"])
    if quality not in PRESETS:
        raise SpecError(f"quality: {quality!r} is not one of {', '.join(PRESETS)}")
    device = str(v["device"]).strip() or "auto"
    if not _DEVICE.match(device):
        raise SpecError(f"device: {device!r} is not auto, cpu or cuda:N")
    long_side = int(v["working_long_side"])
    if long_side != 0 and not 32 <= long_side <= 8192:
        raise SpecError(f"working resolution: {long_side} (0 for the preset, else 32 to 8192)")
    atlas_scale = float(v["atlas_scale"])
    if not ATLAS_SCALE_RANGE[0] <= atlas_scale <= ATLAS_SCALE_RANGE[1]:
        raise SpecError(f"atlas scale: {atlas_scale:g} (must be 0.25 to 4)")
    first, last = frames
    reference = int(v["reference_frame"])
    check_reference(reference, first, last)
    out, name = split_cache_dir(cache_dir)
    cache_version_dir(cache_dir, version)  # validates version
    settings: dict[str, Any] = {"preset": quality, "seed": int(v["seed"])}
    if long_side:
        settings["ingest"] = {"working_long_side": long_side}
    if atlas_scale != 1.0:
        settings["bake"] = {"atlas_scale": atlas_scale}
    if colour:
        settings["ingest"] = {**settings.get("ingest", {}), **colour}
    settings = merge_settings(settings, extra_settings(v.get("engine_settings")))
    return {
        "plate": plate,
        "roi": roi,
        "reference_frame": reference,
        "frames": f"{first}-{last}",
        "holdout": holdout,
        "roi_channel": roi_channel,
        "holdout_channel": holdout_channel,
        "out": out,
        "name": name,
        "version": int(version),
        "device": device,
        "settings": settings,
    }


def extra_settings(text: Any) -> dict[str, Any]:
    """The `engine_settings` knob's JSON object (empty text: `{}`); raises `SpecError`.

    Only the JSON is checked here; the engine validates the setting names and types and answers
    `invalid_spec` naming the setting.
    """
    text = str(text or "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as err:
        raise SpecError(f"extra settings (JSON): not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise SpecError(
            'extra settings (JSON): expected an object like {"fit": {"iterations": 5000}}, '
            f"got {type(data).__name__}"
        )
    if "preset" in data:
        raise SpecError("extra settings (JSON): set the preset with the quality knob, not here")
    return data


def merge_settings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in, nested objects key by key (`over` wins)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


def frames_of_spec(frames: str) -> tuple[int, int] | None:
    """(first, last) of a `first-last` range string, or None."""
    m = re.match(r"^\s*(-?\d+)\s*-\s*(-?\d+)", frames or "")
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.match(r"^\s*(-?\d+)\s*$", frames or "")
    return (int(m.group(1)), int(m.group(1))) if m else None


# ------------------------------------------------------------------------------------------
# Status text and cache info


def format_eta(eta_s: float | None) -> str:
    """'1m05s', '12s' or '--' (as the engine's terminal bar)."""
    if eta_s is None:
        return "--"
    eta = int(round(float(eta_s)))
    return f"{eta // 60}m{eta % 60:02d}s" if eta >= 60 else f"{eta}s"


def percent(progress: Any) -> int:
    """Progress 0..1 as an int percentage 0..100 (clamped; junk reads as 0)."""
    try:
        value = float(progress)
    except (TypeError, ValueError):
        return 0
    if value != value:  # NaN
        return 0
    return max(0, min(100, int(value * 100.0 + 1e-6)))


def error_text(error: Any) -> str:
    """One line from an engine error (`{code, message}`) or any other value."""
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        if code and message:
            return f"{message} ({code})"
        return str(message or code or "")
    return str(error or "")


def status_line(event: Mapping[str, Any], device: str = "") -> str:
    """The status knob's text for an engine event or `status.json`.

    `running | fit 42% | ETA 1m05s | GPU cuda:0 | message`; a failure shows its error (a
    failed quality gate ends `(quality)`); a done build names its QC warnings, the first in full.
    """
    state = str(event.get("state") or "")
    stage = str(event.get("stage") or "")
    pct = percent(event.get("progress"))
    device = str(event.get("device") or device or "")
    message = str(event.get("message") or "")
    if state == "failed":
        return "failed: " + (error_text(event.get("error")) or message or "unknown error")
    if state == "cancelled":
        return f"cancelled at {stage} {pct}%" if stage else "cancelled"
    if state == "lost":
        return f"lost at {stage} {pct}%: {message}" if stage else f"lost: {message}"
    if state == "done":
        parts = ["done", "100%"]
    elif state == "queued":
        parts = ["queued"]
    else:
        parts = [
            state or "running",
            f"{stage} {pct}%".strip(),
            "ETA " + format_eta(event.get("eta_s")),
        ]
    if device:
        parts.append(f"GPU {device}")
    if message and state != "done":
        parts.append(message)
    warnings = event.get("warnings")
    if state == "done" and isinstance(warnings, list) and warnings:
        more = f" (+{len(warnings) - 1} more in qc/report.json)" if len(warnings) > 1 else ""
        parts.append(f"QC warning: {warnings[0]}{more}")
    return " | ".join(parts)


def cache_info(version_dir: str) -> dict[str, Any]:
    """What Reload shows about a version folder, read from its `status.json` and `build.json`.

    Returns keys: state, status (status-line text), ready (finished and the atlas exists),
    first/last (built frames or None), engine_version, build_hash, build_time.
    """
    status = read_json_file(f"{version_dir}/status.json")
    lost = status_lost(status) if status else None
    if status and lost:  # a dead build must not show as running
        status = {**status, "state": "lost", "message": f"the build stopped: {lost}"}
    build = read_json_file(f"{version_dir}/build.json") or {}
    atlas = os.path.isfile(f"{version_dir}/atlas/atlas.exr")
    state = str((status or {}).get("state") or ("done" if atlas else "not built"))
    frames = frames_of_spec(str(build.get("frames") or ""))
    versions = build.get("versions") if isinstance(build.get("versions"), Mapping) else {}
    engine_version = (
        build.get("engine_version")
        or (versions or {}).get("rna_engine")
        or (status or {}).get("version")
        or "-"
    )
    timings = (status or {}).get("timings")
    total_s = sum(float(t) for t in timings.values()) if isinstance(timings, Mapping) else 0.0
    finished = (status or {}).get("finished")
    build_time = "-"
    if state == "done" and (total_s or finished):
        build_time = format_eta(total_s) if total_s else "-"
        if isinstance(finished, (int, float)):
            build_time += time.strftime(" (finished %Y-%m-%d %H:%M)", time.localtime(finished))
        elif finished:
            build_time += f" (finished {finished})"
    return {
        "state": state,
        "status": status_line(status) if status else ("done" if atlas else "not built"),
        "ready": state == "done" and atlas,
        "first": frames[0] if frames else None,
        "last": frames[1] if frames else None,
        "engine_version": str(engine_version),
        "build_hash": str((status or {}).get("build_hash") or build.get("build_hash") or "-"),
        "build_time": build_time,
    }


# ------------------------------------------------------------------------------------------
# Small helpers of the other buttons


def open_folder_command(path: str, platform: str) -> list[str]:
    """argv that shows `path` in the OS file browser (`platform` is `sys.platform`)."""
    if platform.startswith("win"):
        return ["explorer", os.path.normpath(path)]
    if platform == "darwin":
        return ["open", path]
    return ["xdg-open", path]


def find_gizmo(name: str, search_dirs: Iterable[str]) -> str | None:
    """Path of `<name>.gizmo` in the first of `search_dirs` holding it, or None."""
    for folder in search_dirs:
        path = os.path.join(folder, f"{name}.gizmo")
        if os.path.isfile(path):
            return path
    return None


def group_script(gizmo_text: str) -> str:
    """Gizmo text as a pasteable Group (`Gizmo {` → `Group {`): a script then renders anywhere."""
    text, count = re.subn(r"(?m)^(\s*)Gizmo\s*\{", r"\1Group {", gizmo_text, count=1)
    if not count:
        raise SpecError("gizmo: no `Gizmo {` header")
    return text


_LOSSY = ("dwaa", "dwab", "b44", "pxr24", "lossy")
_EXR_CODES = {5: "pxr24", 6: "b44", 7: "b44a", 8: "dwaa", 9: "dwab"}


def atlas_warnings(
    metadata: Mapping[str, Any],
    atlas_size: tuple[int, int] | None,
    plate_size: tuple[int, int] | None,
) -> list[str]:
    """Problems of a painted atlas that would break RNAApply's delta (docs/cache.md).

    Args:
        metadata: the atlas input's metadata (`exr/compression` as Nuke reports it).
        atlas_size: (width, height) of the painted atlas.
        plate_size: (width, height) of the original atlas (or the plate), if known.
    """
    warnings: list[str] = []
    compression = metadata.get("exr/compression")
    if compression is not None:
        name = _EXR_CODES.get(compression, "") if isinstance(compression, int) else ""
        text = name or str(compression).lower()
        if any(word in text for word in _LOSSY):
            warnings.append(
                f"atlas compression {compression!r} is lossy: every unpainted texel changes a "
                "little and the whole ROI gets noise. Write the atlas as ZIP, ZIPS or PIZ."
            )
    if atlas_size and plate_size and min(*atlas_size, *plate_size) > 0:
        atlas_aspect = atlas_size[0] / atlas_size[1]
        plate_aspect = plate_size[0] / plate_size[1]
        if abs(atlas_aspect / plate_aspect - 1.0) > 0.01:
            warnings.append(
                f"atlas is {atlas_size[0]}x{atlas_size[1]} but the original is "
                f"{plate_size[0]}x{plate_size[1]}: the aspect ratio differs, so the paint will be "
                "stretched. Keep the atlas in the format the build wrote (no crop or reformat)."
            )
    return warnings
