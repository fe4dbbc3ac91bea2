"""Nuke callbacks of RNAAtlasBuild and RNAApply: the only module of `rna_nuke` importing `nuke`.

Threading: a Build renders the inputs that need it on the main thread (Nuke's
own `execute`, with its progress dialog), then follows the engine job in a worker thread with a
`nuke.ProgressTask`; every node or knob change from that thread goes through
`nuke.executeInMainThread`. Headless (`nuke -t`, `nuke.GUI` off) there is no event loop: the
build runs synchronously and prints its progress. Errors reach the artist as one line, through
`nuke.message` in the GUI and the log otherwise.

`on_create` runs for every instantiation (script load, farm workers): it is cheap and never
talks to the engine. `knob_changed` guards against re-entry: Nuke 17.1 also fires knobChanged
for the changes the callback itself makes.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nuke

from . import __version__, colour, jobs, knobs, render_inputs
from .knobs import SpecError

log = logging.getLogger(__name__)

ClientFactory = Callable[[], jobs.EngineClientLike]

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIZMO_DIR = os.path.join(PACKAGE_ROOT, "gizmos")
"""The gizmos shipped beside this package."""

_JOBS: dict[str, jobs.BuildJob] = {}
"""Running builds by node full name."""
_TASKS: dict[str, Any] = {}
"""Their `nuke.ProgressTask`s (alive until the job ends)."""
_LOCK = threading.Lock()
_CHANGING: set[str] = set()
"""Nodes whose knob_changed is running (re-entry guard)."""


# ------------------------------------------------------------------------------------------
# small knob helpers


def _value(node: nuke.Node, name: str) -> Any:
    knob = node.knob(name)
    if knob is None:  # a Group made by an older plugin
        return knobs.knob_spec(name).default
    return knob.value()


def _text(node: nuke.Node, name: str) -> str:
    """A knob's text, '' when the node lacks it (RNAApply knobs have no `knobs` spec)."""
    knob = node.knob(name)
    return str(knob.value() or "").strip() if knob is not None else ""


def _set(node: nuke.Node, name: str, value: Any) -> None:
    """Set a knob when it exists and differs (Nuke 17.1 fires knobChanged for every set)."""
    knob = node.knob(name)
    if knob is not None and knob.value() != value:
        knob.setValue(value)


def read_values(node: nuke.Node) -> dict[str, Any]:
    """Every value knob of RNAAtlasBuild (defaults for knobs the node lacks)."""
    return {name: _value(node, name) for name in knobs.default_values()}


def _report(text: str) -> None:
    if nuke.GUI:
        nuke.message(text)
    else:
        log.error("%s", text)


def _node_by_name(name: str) -> nuke.Node | None:
    with nuke.root():
        return nuke.toNode(name)


def _engine_factory(python: str | None) -> ClientFactory:
    def factory() -> jobs.EngineClientLike:
        from . import launcher

        return launcher.ensure_engine(python=python)

    return factory


def evaluated_cache_dir(node: nuke.Node) -> str:
    """`cache_dir` with its TCL evaluated (`[value root.name]`...)."""
    knob = node.knob("cache_dir")
    raw = str(knob.value()) if knob is not None else knobs.DEFAULT_CACHE_DIR
    if "root.name" in raw and not str(nuke.root()["name"].value()):
        raise SpecError("cache folder: save the script first (the default cache is beside it)")
    if isinstance(knob, nuke.EvalString_Knob):
        text = str(knob.evaluate())
    else:
        text = raw
    text = text.strip()
    if not text:
        raise SpecError("cache folder: empty")
    return text


def version_dir_of(node: nuke.Node) -> str:
    return knobs.cache_version_dir(evaluated_cache_dir(node), int(_value(node, "version")))


def _script_name() -> str:
    return str(nuke.root()["name"].value())


def stored_path(path: str) -> str:
    """`path` as RNA knobs save it: relative to `$RNA_CACHE_ROOT` or the script when under it."""
    return knobs.portable_path(path, _script_name(), os.environ)


def cache_path_of(node: nuke.Node) -> str:
    """The version folder the node's Reads use: `cache_path` evaluated ('' when unset)."""
    knob = node.knob("cache_path")
    raw = str(knob.value()) if knob is not None else ""
    if not raw.strip():
        return ""
    if isinstance(knob, nuke.EvalString_Knob):
        return str(knob.evaluate()).strip()
    return knobs.expand_portable(raw, _script_name(), os.environ)


# ------------------------------------------------------------------------------------------
# preparing a build


def _through_dots(node: nuke.Node) -> nuke.Node:
    seen = 0
    while node.Class() == "Dot" and node.input(0) is not None and seen < 100:
        node = node.input(0)  # type: ignore[assignment]
        seen += 1
    return node


def source_info(node: nuke.Node) -> render_inputs.SourceInfo:
    """What the input decision needs from the node feeding an input."""
    node = _through_dots(node)
    if node.Class() != "Read":
        return render_inputs.SourceInfo(node.Class())

    def get(name: str, default: Any) -> Any:
        knob = node.knob(name)
        return knob.value() if knob is not None else default

    return render_inputs.SourceInfo(
        "Read",
        file=str(nuke.filename(node) or get("file", "")),
        first=int(get("first", 0)),
        last=int(get("last", 0)),
        disabled=bool(get("disable", False)),
        reformat=bool(get("reformat", False)),
        frame_offset=bool(str(get("frame", "")).strip()),
        colorspace=str(get("colorspace", "") or ""),
        raw=bool(get("raw", False)),
    )


_ROOT_COLOUR_KNOBS = ("colorManagement", "OCIO_config", "customOCIOConfigPath", "workingSpaceLUT")


def _root_text(name: str) -> str:
    knob = nuke.root().knob(name)
    if knob is None:
        return ""
    if isinstance(knob, nuke.EvalString_Knob):
        return str(knob.evaluate()).strip()
    return str(knob.value()).strip()


def plate_colour(plate: nuke.Node, plan: render_inputs.InputPlan) -> dict[str, str]:
    """`settings.ingest` colour entries of the plate: the Read's colourspace and the config.

    A plate Nuke renders first is written in the working space (the temporary Write's default).
    """
    root = {name: _root_text(name) for name in _ROOT_COLOUR_KNOBS}
    nuke_dir = os.path.dirname(str(getattr(nuke, "EXE_PATH", "") or ""))
    config = colour.config_path(root, os.environ, nuke_dir)
    working = root["workingSpaceLUT"]
    if plan.mode == "render":
        name = colour.read_colorspace("", True, working)
    else:
        info = source_info(plate)
        name = colour.read_colorspace(info.colorspace, info.raw, working)
    return colour.plate_colour(name, config)


@dataclass
class Prepared:
    """A build ready to submit once `renders` have been executed."""

    spec: dict[str, Any]
    version: int
    version_dir: str
    frames: tuple[int, int]
    renders: list[tuple[render_inputs.InputPlan, nuke.Node]]


def prepare_build(node: nuke.Node) -> Prepared:
    """Resolve range, reference, version and inputs of `node`; raises `SpecError`."""
    values = read_values(node)
    plate, roi, holdout = node.input(0), node.input(1), node.input(2)
    if plate is None:
        raise SpecError("input plate (0) is not connected")
    if roi is None:
        raise SpecError(
            "input roi (1) is not connected: connect a Roto whose alpha is the "
            "region at the reference frame"
        )
    root = nuke.root()
    frames = knobs.frame_range(
        str(values["range_mode"]),
        (int(plate.firstFrame()), int(plate.lastFrame())),
        (int(root["first_frame"].value()), int(root["last_frame"].value())),
        (int(values["first"]), int(values["last"])),
    )
    reference = int(values["reference_frame"])
    knobs.check_reference(reference, *frames)
    cache_dir = evaluated_cache_dir(node)
    version = knobs.version_for_build(cache_dir, int(values["version"]))
    version_dir = knobs.cache_version_dir(cache_dir, version)
    inputs_dir = f"{version_dir}/inputs"
    plate_plan = render_inputs.plan_plate(source_info(plate), inputs_dir, *frames)
    roi_plan = render_inputs.plan_roi(
        source_info(roi),
        inputs_dir,
        reference,
        str(values["roi_channel"]),
        bool(values["roi_invert"]),
    )
    plans: list[tuple[render_inputs.InputPlan, nuke.Node]] = [(plate_plan, plate), (roi_plan, roi)]
    holdout_plan = None
    if holdout is not None:
        holdout_plan = render_inputs.plan_holdout(
            source_info(holdout),
            inputs_dir,
            *frames,
            str(values["holdout_channel"]),
            bool(values["holdout_invert"]),
        )
        plans.append((holdout_plan, holdout))
    spec = knobs.build_spec(
        values,
        plate=plate_plan.path,
        roi=roi_plan.path,
        holdout=holdout_plan.path if holdout_plan else "",
        frames=frames,
        cache_dir=cache_dir,
        version=version,
        roi_channel=roi_plan.channel,
        holdout_channel=holdout_plan.channel if holdout_plan else "A",
        colour=plate_colour(plate, plate_plan),
    )
    renders = [(plan, up) for plan, up in plans if plan.mode == "render"]
    return Prepared(spec, version, version_dir, frames, renders)


def render_input(plan: render_inputs.InputPlan, upstream: nuke.Node, group: nuke.Group) -> None:
    """Render one input to the cache with a temporary Write (main thread); raises `SpecError`."""
    try:
        os.makedirs(os.path.dirname(plan.path), exist_ok=True)
    except OSError as err:
        raise SpecError(f"cache folder {os.path.dirname(plan.path)}: {err.strerror}") from err
    temporary: list[nuke.Node] = []
    with group:
        try:
            source = upstream
            if plan.invert:
                invert = nuke.nodes.Invert(channels=plan.layer)
                temporary.append(invert)
                invert.setInput(0, source)
                source = invert
            write = nuke.nodes.Write()
            temporary.append(write)
            write.setInput(0, source)
            for name, value in render_inputs.write_knob_values(plan).items():
                knob = write.knob(name)
                if knob is not None:
                    knob.setValue(value)
            nuke.execute(write, plan.first, plan.last, 1)
        except (RuntimeError, ValueError, nuke.CancelledError) as err:
            raise SpecError(
                f"rendering the {plan.role} input ({plan.reason}) failed: {err}"
            ) from err
        finally:
            for temp in reversed(temporary):
                nuke.delete(temp)


# ------------------------------------------------------------------------------------------
# buttons


def build(node: nuke.Node, client_factory: ClientFactory | None = None) -> jobs.BuildJob | None:
    """The Build button: render what needs it, submit, follow the job (GUI: in a thread)."""
    name = node.fullName()
    with _LOCK:
        running = name in _JOBS
    if running:
        _report(f"{name}: a build is already running; Cancel it first")
        return None
    try:
        prepared = prepare_build(node)
        if prepared.renders:
            _set(
                node,
                "status",
                "rendering inputs: " + ", ".join(plan.role for plan, _ in prepared.renders),
            )
        for plan, upstream in prepared.renders:
            render_input(plan, upstream, node.parent())
    except SpecError as err:
        _set(node, "status", f"error: {err}")
        _report(f"{name}: {err}")
        return None
    if prepared.version != int(_value(node, "version")):
        _set(node, "version", prepared.version)
    _set(node, "cache_path", stored_path(prepared.version_dir))
    _set(node, "cache_ready", False)
    _set(node, "job_id", "")
    _set(node, "status", "submitting to the RNA engine")
    factory = client_factory or _engine_factory(str(_value(node, "engine_python")) or None)
    job = jobs.BuildJob(prepared.spec, factory, status_path=f"{prepared.version_dir}/status.json")
    if not nuke.GUI:
        job.on_submitted = lambda job_id: _set(node, "job_id", job_id)
        result = jobs.run_headless(job)
        _finish(name, result)
        return job
    with _LOCK:
        _JOBS[name] = job
    job.start(
        on_done=lambda result: _done_in_thread(job, name, result),
        on_thread_start=lambda j: _attach_progress_task(j, name),
    )
    return job


def _attach_progress_task(job: jobs.BuildJob, name: str) -> None:
    """Worker thread: a ProgressTask for the job; knob updates marshalled to the main thread."""
    task = nuke.ProgressTask(f"RNA build {name}")
    task.setMessage("starting the RNA engine")
    with _LOCK:
        _TASKS[name] = task

    def on_progress(progress: jobs.Progress) -> None:
        task.setProgress(progress.percent)
        task.setMessage(progress.message)
        nuke.executeInMainThread(_set_status, (name, progress.message))

    job.on_progress = on_progress
    job.is_cancelled = task.isCancelled
    job.on_submitted = lambda job_id: nuke.executeInMainThread(_set_knob, (name, "job_id", job_id))


def _done_in_thread(job: jobs.BuildJob, name: str, result: jobs.JobResult) -> None:
    # the ProgressTask's bar closes when the last reference to it goes
    job.on_progress = job.is_cancelled = job.on_submitted = None
    with _LOCK:
        _TASKS.pop(name, None)
    nuke.executeInMainThread(_finish, (name, result))


def _set_status(name: str, text: str) -> None:
    _set_knob(name, "status", text)


def _set_knob(name: str, knob: str, value: Any) -> None:
    node = _node_by_name(name)
    if node is not None:
        _set(node, knob, value)


def _finish(name: str, result: jobs.JobResult) -> None:
    """Main thread: show how the job ended; a finished build is loaded into the node."""
    with _LOCK:
        _JOBS.pop(name, None)
    node = _node_by_name(name)
    if node is None:
        return
    if result.ok:
        _set(node, "status", result.message)
        refresh_from_cache(node, reload_reads=True)
        _update_linked(node)
    elif result.state == "cancelled":
        _set(node, "status", "cancelled")
    else:
        _set(node, "status", result.message)
        _report(f"{name}: {result.message}")


def running_job(node: nuke.Node) -> jobs.BuildJob | None:
    with _LOCK:
        return _JOBS.get(node.fullName())


def cancel(node: nuke.Node, client_factory: ClientFactory | None = None) -> None:
    """The Cancel button: stop this node's build (the worker sends `job.cancel`)."""
    job = running_job(node)
    if job is not None:
        job.cancel()
        _set(node, "status", "cancelling")
        return
    job_id = str(_value(node, "job_id"))
    if not job_id:
        _report(f"{node.fullName()}: no build to cancel")
        return
    factory = client_factory or _engine_factory(str(_value(node, "engine_python")) or None)
    try:
        factory().cancel(job_id)
    except Exception as err:  # a button never ends in a traceback; the message says why
        _report(jobs.describe_error(err))
        return
    _set(node, "status", "cancel sent")


def refresh_from_cache(node: nuke.Node, reload_reads: bool = False) -> dict[str, Any]:
    """Read `status.json`/`build.json` of the node's version into its status and Info knobs."""
    version_dir = cache_path_of(node)
    if not version_dir:
        return {}
    info = knobs.cache_info(version_dir)
    _set(node, "cache_ready", bool(info["ready"]))
    if info["first"] is not None:
        _set(node, "cache_first", int(info["first"]))
        _set(node, "cache_last", int(info["last"]))
    if info["state"] != "not built":  # keep the last message until the cache says more
        _set(node, "status", info["status"])
    _set(node, "info_engine_version", info["engine_version"])
    _set(node, "info_cache_hash", info["build_hash"])
    _set(node, "info_build_time", info["build_time"])
    if reload_reads and isinstance(node, nuke.Group):
        for inner in node.nodes():
            if inner.Class() == "Read":
                knob = inner.knob("reload")
                if isinstance(knob, nuke.Script_Knob):
                    knob.execute()
    return info


def reload(node: nuke.Node) -> None:
    """The Reload button: point the internal Reads at `<cache_dir>/v###` and re-read it."""
    try:
        _set(node, "cache_path", stored_path(version_dir_of(node)))
    except SpecError as err:
        _report(f"{node.fullName()}: {err}")
        return
    refresh_from_cache(node, reload_reads=True)
    _update_linked(node)


def set_reference_to_current(node: nuke.Node) -> None:
    """The "set to current frame" button."""
    _set(node, "reference_frame", int(nuke.frame()))


def open_cache(node: nuke.Node, opener: Callable[[list[str]], Any] | None = None) -> None:
    """The Open cache button: the version folder (else the cache folder) in the file browser."""
    try:
        candidates = [
            cache_path_of(node),
            version_dir_of(node),
            evaluated_cache_dir(node),
        ]
    except SpecError as err:
        _report(f"{node.fullName()}: {err}")
        return
    folder = next((c for c in candidates if c and os.path.isdir(c)), None)
    if folder is None:
        _report(
            f"{node.fullName()}: the cache folder {candidates[-1]} does not exist yet (press Build)"
        )
        return
    argv = knobs.open_folder_command(folder, sys.platform)
    try:
        (opener or subprocess.Popen)(argv)
    except OSError:
        webbrowser.open("file://" + folder)


def submit_to_farm(node: nuke.Node) -> str | None:
    """The Submit to farm button: inputs rendered here, the build handed to `rna_nuke.farm`."""
    try:
        prepared = prepare_build(node)
        for plan, upstream in prepared.renders:
            render_input(plan, upstream, node.parent())
        text = farm_submit(
            prepared.spec, prepared.frames, str(_value(node, "engine_python")) or None
        )
    except SpecError as err:
        _report(f"{node.fullName()}: {err}")
        return None
    if prepared.version != int(_value(node, "version")):
        _set(node, "version", prepared.version)
    _set(node, "cache_path", stored_path(prepared.version_dir))
    _set(node, "status", text)
    if nuke.GUI:
        nuke.message(text)
    return text


def _farm_write_node() -> str:
    writes = nuke.allNodes("Write", nuke.root())
    chosen = [w for w in writes if w.isSelected()] or writes
    if len(chosen) != 1:
        raise SpecError("farm: select the one Write node the farm renders")
    return chosen[0].fullName()


def farm_submit(spec: dict[str, Any], frames: tuple[int, int], engine_python: str | None) -> str:
    """Thin call into `rna_nuke.farm` (optional): write the bundle, submit it when configured."""
    try:
        farm: Any = importlib.import_module(f"{__package__}.farm")
    except ImportError as err:
        raise SpecError(f"farm submission is not installed (rna_nuke.farm: {err})") from err
    script = str(nuke.root()["name"].value())
    if not script:
        raise SpecError("farm: save the script first")
    kind = os.environ.get("RNA_FARM_KIND", "openjd")
    chunk = int(os.environ.get("RNA_FARM_CHUNK", "10") or 10)
    try:
        bundle = farm.write_bundle(
            kind, spec, script, _farm_write_node(), frames, chunk, engine_python=engine_python
        )
        output = farm.submit(bundle)
    except farm.FarmError as err:
        raise SpecError(str(err)) from err
    if output is None:
        return f"farm bundle written to {bundle} (set {farm.SUBMIT_ENV} to submit it)"
    return f"farm job submitted ({bundle})"


# ------------------------------------------------------------------------------------------
# RNAApply


def check_atlas(node: nuke.Node) -> list[str]:
    """RNAApply's "check atlas" button: warn on a lossy or re-formatted painted atlas.

    The painted atlas (input 1) is compared with the original atlas the Group reads from the
    cache (its internal `ReadAtlas`), else with the plate (input 0).
    """
    atlas = node.input(1)
    if atlas is None:
        _report(f"{node.fullName()}: connect the painted atlas to input 1 (atlas)")
        return ["atlas input is not connected"]
    reference = node.node("ReadAtlas") if isinstance(node, nuke.Group) else None
    if reference is None:
        reference = node.input(0)
    metadata = atlas.metadata() or {}
    atlas_size = (int(atlas.width()), int(atlas.height()))
    reference_size = (
        (int(reference.width()), int(reference.height())) if reference is not None else None
    )
    warnings = knobs.atlas_warnings(metadata, atlas_size, reference_size)
    if warnings:
        _report(f"{node.fullName()}:\n- " + "\n- ".join(warnings))
    elif nuke.GUI:
        nuke.message(f"{node.fullName()}: the atlas looks fine (lossless, same aspect ratio)")
    return warnings


def is_build_node(node: nuke.Node) -> bool:
    """An RNAAtlasBuild: the gizmo, or a Group made from it (it has the `rna_tab` tab)."""
    return node.Class() == "RNAAtlasBuild" or (
        node.knob("rna_tab") is not None and node.knob("cache_path") is not None
    )


def is_apply_node(node: nuke.Node) -> bool:
    """An RNAApply: the gizmo, or a Group made from it (it has the `rna_apply_tab` tab)."""
    return node.Class() == "RNAApply" or node.knob("rna_apply_tab") is not None


def build_nodes() -> list[nuke.Node]:
    """Every RNAAtlasBuild of the script (inside Groups too), in graph order."""
    return [n for n in nuke.allNodes(group=nuke.root(), recurseGroups=True) if is_build_node(n)]


def _pick_build(node: nuke.Node) -> nuke.Node:
    """The build `node` links to: its `build_node`, else the selected or only RNAAtlasBuild."""
    named = _text(node, "build_node")
    if named:
        found = _node_by_name(named)
        if found is not None and is_build_node(found):
            return found
    builds = build_nodes()
    if not builds:
        raise SpecError("link to build: the script has no RNAAtlasBuild node")
    selected = [b for b in builds if b.isSelected()]
    if len(selected) == 1:
        return selected[0]
    if len(builds) == 1:
        return builds[0]
    names = [b.fullName() for b in builds]
    if nuke.GUI:
        index = nuke.choice("RNAApply", "RNAAtlasBuild to take the cache from", names, 0)
        if index is not None:
            return builds[int(index)]
    raise SpecError(
        f"link to build: several RNAAtlasBuild nodes ({', '.join(names)}); "
        "select one or type its name in 'build'"
    )


def _build_frames(build: nuke.Node, version_dir: str) -> tuple[int, int] | None:
    """Frames of the build's cache: the finished cache's, else build.json's, else its range."""
    if bool(_value(build, "cache_ready")):
        return int(_value(build, "cache_first")), int(_value(build, "cache_last"))
    info = knobs.cache_info(version_dir)
    if info["first"] is not None:
        return int(info["first"]), int(info["last"])
    plate = build.input(0)
    values = read_values(build)
    root = nuke.root()
    try:
        return knobs.frame_range(
            str(values["range_mode"]),
            (int(plate.firstFrame()), int(plate.lastFrame())) if plate is not None else None,
            (int(root["first_frame"].value()), int(root["last_frame"].value())),
            (int(values["first"]), int(values["last"])),
        )
    except SpecError:
        return None


def _set_plain(node: nuke.Node, name: str, value: Any) -> None:
    """Set a knob to a plain value, dropping an expression (e.g. `{{root.first_frame}}`)."""
    knob = node.knob(name)
    if knob is None:
        return
    if knob.hasExpression():
        knob.clearAnimated()
    if knob.value() != value:
        knob.setValue(value)


def link_to_build(node: nuke.Node, build: nuke.Node | None = None) -> nuke.Node | None:
    """RNAApply's "link to build" button: cache, version and frames from an RNAAtlasBuild.

    The values are baked into plain knobs (cache saved relative, as `cache_path`), so the Group
    renders on a farm without the plug-in; `build_node` remembers the build, and a finished
    Build or a Reload of that node updates the RNAApply nodes linked to it.
    """
    try:
        build = build or _pick_build(node)
        cache_dir = evaluated_cache_dir(build)
        version = int(_value(build, "version"))
        version_dir = cache_path_of(build) or knobs.cache_version_dir(cache_dir, version)
        frames = _build_frames(build, version_dir)
    except SpecError as err:
        _report(f"{node.fullName()}: {err}")
        return None
    _set_plain(node, "build_node", build.fullName())
    _set_plain(node, "cache_dir", stored_path(cache_dir))
    _set_plain(node, "version", version)
    if frames is not None:
        _set_plain(node, "first_frame", frames[0])
        _set_plain(node, "last_frame", frames[1])
    return build


def _update_linked(build: nuke.Node) -> None:
    """Re-link the RNAApply nodes whose `build_node` names `build` (after Build or Reload)."""
    name = build.fullName()
    for other in nuke.allNodes(group=nuke.root(), recurseGroups=True):
        if is_apply_node(other) and _text(other, "build_node") == name:
            link_to_build(other, build)


# ------------------------------------------------------------------------------------------
# node callbacks


def _update_enabled(node: nuke.Node) -> None:
    custom = str(_value(node, "range_mode")) == "custom"
    for name in ("first", "last"):
        knob = node.knob(name)
        if knob is not None:
            knob.setEnabled(custom)


def on_create() -> None:
    """onCreate: cheap and offline (it also runs on script load and on farm workers)."""
    _update_enabled(nuke.thisNode())


def knob_changed() -> None:
    """knobChanged of RNAAtlasBuild; re-entry from its own knob changes is ignored."""
    node, knob = nuke.thisNode(), nuke.thisKnob()
    if knob is None:
        return
    key = node.fullName()
    if key in _CHANGING:
        return
    _CHANGING.add(key)
    try:
        name = knob.name()
        if name in ("range_mode", "showPanel"):
            _update_enabled(node)
        elif name == "version":
            if int(_value(node, "version")) < 1:
                _set(node, "version", 1)
            _follow_cache_dir(node)
        elif name == "cache_dir":
            _follow_cache_dir(node)
    finally:
        _CHANGING.discard(key)


def _follow_cache_dir(node: nuke.Node) -> None:
    try:
        version_dir = version_dir_of(node)
    except SpecError:
        return
    if version_dir != cache_path_of(node):
        _set(node, "cache_path", stored_path(version_dir))
        refresh_from_cache(node)


# ------------------------------------------------------------------------------------------
# creating nodes


def gizmo_search_dirs() -> list[str]:
    return [GIZMO_DIR, *nuke.pluginPath()]


def create_node(name: str) -> nuke.Node:
    """The menu command: a **Group** made from `<name>.gizmo` (a farm without RNA renders it).

    The Group carries a hidden `rna_version` knob, is connected to the selected node and named
    `<name>1`, `<name>2`...
    """
    selected = nuke.selectedNodes()
    path = knobs.find_gizmo(name, gizmo_search_dirs())
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            text = knobs.group_script(fh.read())
        fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".nk")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            node = nuke.nodePaste(tmp)
        finally:
            os.unlink(tmp)
        if node is None:
            node = nuke.selectedNode()
    else:
        created = nuke.createNode(name)
        node = created.makeGroup() if isinstance(created, nuke.Gizmo) else created
        if node is not created:
            nuke.delete(created)
    knob = node.knob("rna_version")
    if knob is None:
        knob = nuke.String_Knob("rna_version", "RNA version")
        knob.setFlag(nuke.INVISIBLE)
        node.addKnob(knob)
    knob.setValue(__version__)
    node.setName(_unique_name(name))
    if len(selected) == 1 and node.input(0) is None and selected[0] is not node:
        node.setInput(0, selected[0])
    return node


def _unique_name(prefix: str) -> str:
    i = 1
    while nuke.toNode(f"{prefix}{i}") is not None:
        i += 1
    return f"{prefix}{i}"
