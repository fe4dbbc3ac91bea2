"""Tests of `rna_nuke/glue.py` and `gizmos/{init,menu}.py` on the fake-Nuke graph.

The engine is a small stand-in client object (it is another process in real use): it records
the spec, plays progress events and, when done, writes the cache files the engine would write.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rna_nuke import __version__, knobs
from rna_nuke.protocol import EngineError

REPO = Path(__file__).resolve().parents[2]
GIZMOS = REPO / "gizmos"


class Engine:
    """Stand-in engine client: events, then (done) the cache files of docs/cache.md."""

    def __init__(self, steps: int = 4, hold: threading.Event | None = None) -> None:
        self.steps = steps
        self.hold = hold
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.state = "running"

    def hello(self) -> dict[str, Any]:
        return {"protocol": 1, "device": "cuda:0"}

    def submit(self, spec: dict[str, Any]) -> str:
        self.submitted.append(spec)
        return "job-7"

    def subscribe(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        status_path: str | None = None,
    ) -> dict[str, Any]:
        last: dict[str, Any] = {"job_id": job_id, "state": "queued"}
        for i in range(self.steps):
            if should_stop():
                return last
            last = {"job_id": job_id, "state": "running", "stage": "fit",
                    "progress": i / self.steps, "eta_s": 10.0}  # fmt: skip
            on_event(last)
            while self.hold is not None and not self.hold.is_set():
                if should_stop():
                    return last
                time.sleep(0.005)
        spec = self.submitted[-1]
        root = Path(spec["out"]) / spec["name"] / f"v{spec['version']:03d}"
        (root / "atlas").mkdir(parents=True, exist_ok=True)
        (root / "atlas" / "atlas.exr").write_bytes(b"exr")
        (root / "build.json").write_text(json.dumps({**spec, "engine_version": "0.1.0"}))
        status = {"state": "done", "progress": 1.0, "stage": "bake", "build_hash": "feedbeef",
                  "timings": {"fit": 12.0}}  # fmt: skip
        (root / "status.json").write_text(json.dumps(status))
        self.state = "done"
        final = {"job_id": job_id, **status}
        on_event(final)
        return final

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        self.state = "cancelled"
        return {"state": "cancelled"}

    def status(self, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "state": self.state}


@pytest.fixture
def scene(fake_nuke: ModuleType, tmp_path: Path) -> dict[str, Any]:
    """A saved script with plate Read (1001-1010) → RNAAtlasBuild ← Roto; reference 1005."""
    nuke = fake_nuke
    nuke.root()["name"].setValue(str(tmp_path / "shots" / "comp.nk"))
    nuke.root()["first_frame"].setValue(1)
    nuke.root()["last_frame"].setValue(100)
    plate = nuke.nodes.Read(file=str(tmp_path / "plates" / "sh010.####.exr"), first=1001, last=1010)
    roto = nuke.nodes.Roto()
    plate.setSelected(True)
    from rna_nuke import glue

    node = glue.create_node("RNAAtlasBuild")
    node.setInput(1, roto)
    node["reference_frame"].setValue(1005)
    cache = tmp_path / "shots" / "rna" / "RNAAtlasBuild1"
    return {"nuke": nuke, "glue": glue, "node": node, "plate": plate, "roto": roto, "cache": cache}


def _wait(job: Any) -> None:
    assert job is not None and job.thread is not None
    job.thread.join(5.0)
    assert not job.thread.is_alive()


def test_create_node_makes_a_group_with_rna_version(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    assert node.Class() == "Group"  # not a gizmo reference: renders without the plug-in
    assert node.name() == "RNAAtlasBuild1"
    assert node["rna_version"].value() == __version__
    assert not node["rna_version"].visible()
    assert node.input(0) is scene["plate"]  # connected to the selected node
    assert node.maxInputs() == 3
    inner = {n.name(): n for n in node.nodes()}
    assert [n.name() for n in node.nodes() if n.Class() == "Input"] == ["plate", "roi", "holdout"]
    assert "Viewer" not in {n.Class() for n in node.nodes()}
    passes = "[subst [value parent.cache_path]]/passes/rna.####.exr"
    assert inner["Read_passes"]["file"].value() == passes
    assert (
        inner["Read_atlas"]["file"].value() == "[subst [value parent.cache_path]]/atlas/atlas.exr"
    )
    switch = inner["view_switch"]
    assert [switch.input(i).name() for i in range(5)] == [
        "Read_atlas", "cache_ready_switch", "Merge_checker", "Merge_overlay", "Merge_recon",
    ]  # fmt: skip
    assert node.output().input(0) is switch
    assert not node["first"].enabled()  # onCreate ran: range_mode is input
    second = glue.create_node("RNAAtlasBuild")
    assert second.name() == "RNAAtlasBuild2"
    assert nuke.allNodes("Group") == [node, second]


def test_default_cache_dir_is_beside_the_script(scene: dict[str, Any]) -> None:
    glue, node = scene["glue"], scene["node"]
    assert glue.evaluated_cache_dir(node) == str(scene["cache"])
    assert glue.version_dir_of(node) == f"{scene['cache']}/v001"


def test_build_sends_the_read_path_and_the_reference_frame(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    engine = Engine()
    job = glue.build(node, client_factory=lambda: engine)
    _wait(job)
    spec = engine.submitted[0]
    assert spec["plate"] == nuke.filename(scene["plate"])  # a plain Read is read directly
    assert spec["reference_frame"] == 1005
    assert spec["frames"] == "1001-1010"  # range_mode input: the plate's range
    assert (spec["out"], spec["name"], spec["version"]) == (
        str(scene["cache"].parent), "RNAAtlasBuild1", 1,
    )  # fmt: skip
    assert spec["roi"] == f"{scene['cache']}/v001/inputs/roi.exr"
    assert spec["roi_channel"] == "A"
    # the Roto was rendered by Nuke at the reference frame only, by a temporary Write
    [render] = nuke.fake.executed
    assert (render["start"], render["end"], render["upstream"]) == (1005, 1005, scene["roto"])
    assert render["file"] == spec["roi"] and render["channels"] == "rgba"
    assert nuke.allNodes("Write") == []
    # progress reached 100 on the task; the node shows the finished cache
    [task] = nuke.fake.progress_tasks
    assert task.progress[-1] == 100 and task.progress == sorted(task.progress)
    assert task.thread == job.thread.name
    task_ref = weakref.ref(task)
    del task
    nuke.fake.progress_tasks.clear()
    assert task_ref() is None  # released: Nuke closes the progress bar
    assert node["status"].value() == "done | 100%"
    assert node["cache_ready"].value() is True
    assert (node["cache_first"].value(), node["cache_last"].value()) == (1001, 1010)
    assert node["cache_path"].value() == "[file dirname [value root.name]]/rna/RNAAtlasBuild1/v001"
    assert glue.cache_path_of(node) == f"{scene['cache'].as_posix()}/v001"
    assert node["info_cache_hash"].value() == "feedbeef"
    assert node["job_id"].value() == "job-7"
    assert node.node("Read_passes")["reload"].executions == 1
    assert nuke.fake.thread_violations == []
    assert "_finish" in nuke.fake.main_thread_calls
    assert nuke.fake.messages == []


def test_progress_task_cancel_sends_job_cancel(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    engine = Engine(steps=50)
    nuke.fake.cancel_when = lambda task: len(task.progress) >= 2
    job = glue.build(node, client_factory=lambda: engine)
    _wait(job)
    assert engine.cancelled == ["job-7"]
    assert node["status"].value() == "cancelled"
    assert node["cache_ready"].value() is False
    assert nuke.fake.messages == []  # a cancel is not an error
    assert nuke.fake.thread_violations == []


def test_cancel_button_stops_the_running_build(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    engine = Engine(hold=threading.Event())
    job = glue.build(node, client_factory=lambda: engine)
    assert glue.running_job(node) is job
    glue.build(node, client_factory=lambda: engine)  # a second Build is refused
    assert nuke.fake.messages == ["RNAAtlasBuild1: a build is already running; Cancel it first"]
    glue.cancel(node)
    _wait(job)
    assert engine.cancelled == ["job-7"]
    assert len(engine.submitted) == 1
    assert node["status"].value() == "cancelled"
    assert glue.running_job(node) is None


def test_headless_build_runs_synchronously_and_prints(
    scene: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    nuke.GUI = False
    engine = Engine(steps=2)
    job = glue.build(node, client_factory=lambda: engine)
    assert job is not None and job.thread is None  # no worker thread
    assert nuke.fake.progress_tasks == [] and nuke.fake.main_thread_calls == []
    assert capsys.readouterr().out.splitlines() == [
        "RNA build   0% running | fit 0% | ETA 10s | GPU cuda:0",
        "RNA build  50% running | fit 50% | ETA 10s | GPU cuda:0",
        "RNA build 100% done | 100% | GPU cuda:0",
        "RNA build done: done | 100% | GPU cuda:0",
    ]
    assert node["cache_ready"].value() is True


def test_engine_error_is_one_message(scene: dict[str, Any], caplog: Any) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]

    def no_engine() -> Engine:
        raise EngineError("engine_start", "cannot run the engine interpreter /opt/py")

    _wait(glue.build(node, client_factory=no_engine))
    text = "RNA engine error (engine_start): cannot run the engine interpreter /opt/py"
    assert nuke.fake.messages == [f"RNAAtlasBuild1: {text}"]
    assert node["status"].value() == text
    nuke.GUI = False  # headless: no dialog, the log
    with caplog.at_level(logging.ERROR, logger="rna_nuke.glue"):
        glue.build(node, client_factory=no_engine)
    assert len(nuke.fake.messages) == 1
    assert text in caplog.text


def test_reference_outside_the_range_is_refused_before_anything_runs(
    scene: dict[str, Any],
) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    node["reference_frame"].setValue(2000)
    engine = Engine()
    assert glue.build(node, client_factory=lambda: engine) is None
    message = "reference frame 2000 is outside the frame range 1001-1010"
    assert nuke.fake.messages == [f"RNAAtlasBuild1: {message}"]
    assert node["status"].value() == f"error: {message}"
    assert engine.submitted == [] and nuke.fake.executed == []


def test_an_unsaved_script_has_no_default_cache(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    nuke.root()["name"].setValue("")
    assert glue.build(node, client_factory=Engine) is None
    assert nuke.fake.messages == [
        "RNAAtlasBuild1: cache folder: save the script first (the default cache is beside it)"
    ]


def test_a_graded_plate_is_rendered_over_the_custom_range(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    grade = nuke.nodes.Grade()
    grade.setInput(0, scene["plate"])
    node.setInput(0, grade)
    node["range_mode"].setValue("custom")
    node["first"].setValue(1003)
    node["last"].setValue(1008)
    engine = Engine(steps=1)
    _wait(glue.build(node, client_factory=lambda: engine))
    spec = engine.submitted[0]
    assert spec["plate"] == f"{scene['cache']}/v001/inputs/plate.####.exr"
    assert spec["frames"] == "1003-1008"
    plate_render = next(r for r in nuke.fake.executed if "plate" in r["file"])
    assert (plate_render["start"], plate_render["end"]) == (1003, 1008)
    assert plate_render["upstream"] is grade


def test_a_finished_version_is_never_rebuilt(scene: dict[str, Any]) -> None:
    glue, node, cache = scene["glue"], scene["node"], scene["cache"]
    (cache / "v001").mkdir(parents=True)
    (cache / "v001" / "status.json").write_text(json.dumps({"state": "done"}))
    engine = Engine(steps=1)
    _wait(glue.build(node, client_factory=lambda: engine))
    assert engine.submitted[0]["version"] == 2
    assert node["version"].value() == 2
    assert glue.cache_path_of(node) == f"{cache.as_posix()}/v002"


def test_set_reference_button_uses_the_current_frame(scene: dict[str, Any]) -> None:
    nuke, node = scene["nuke"], scene["node"]
    nuke.frame(1007)
    node["set_reference"].execute()  # the gizmo's own button code
    assert node["reference_frame"].value() == 1007


def test_knob_changed_guards_its_own_changes(scene: dict[str, Any]) -> None:
    nuke, node = scene["nuke"], scene["node"]
    assert nuke.fake.knob_changed_on_set  # Nuke 17.1: programmatic changes fire knobChanged
    node["range_mode"].setValue("custom")
    assert node["first"].enabled() and node["last"].enabled()
    calls = nuke.fake.knob_changed_calls
    node["version"].setValue(0)  # clamped to 1 by the callback, which fires it again
    assert node["version"].value() == 1
    assert scene["glue"].cache_path_of(node) == f"{scene['cache'].as_posix()}/v001"
    assert nuke.fake.knob_changed_calls - calls == 3  # version, its clamp, cache_path; no loop


def test_reload_reads_the_cache(scene: dict[str, Any]) -> None:
    glue, node, cache = scene["glue"], scene["node"], scene["cache"]
    root = cache / "v003"
    (root / "atlas").mkdir(parents=True)
    (root / "atlas" / "atlas.exr").write_bytes(b"exr")
    (root / "build.json").write_text(json.dumps({"frames": "1001-1010"}))
    (root / "status.json").write_text(json.dumps({"state": "done", "build_hash": "h3"}))
    node["version"].setValue(3)
    node["reload"].execute()
    assert glue.cache_path_of(node) == root.as_posix()
    assert node["cache_ready"].value() is True
    assert node["info_cache_hash"].value() == "h3"
    assert node.node("Read_passes")["reload"].executions == 1
    assert node.node("Read_atlas")["reload"].executions == 1


def test_open_cache_opens_the_version_folder(scene: dict[str, Any]) -> None:
    nuke, glue, node, cache = scene["nuke"], scene["glue"], scene["node"], scene["cache"]
    opened: list[list[str]] = []
    glue.open_cache(node, opener=opened.append)
    assert opened == [] and "does not exist yet" in nuke.fake.messages[0]
    (cache / "v001").mkdir(parents=True)
    glue.open_cache(node, opener=opened.append)
    assert opened == [knobs.open_folder_command(f"{cache}/v001", sys.platform)]


def test_submit_to_farm_without_the_farm_module(
    scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    monkeypatch.setitem(sys.modules, "rna_nuke.farm", None)  # import fails as if absent
    assert glue.submit_to_farm(node) is None
    assert len(nuke.fake.messages) == 1
    assert "farm submission is not installed" in nuke.fake.messages[0]


def test_check_atlas_warns_on_lossy_and_stretched_atlases(fake_nuke: ModuleType) -> None:
    nuke = fake_nuke
    from rna_nuke import glue

    plate = nuke.nodes.Read(file="/p/plate.####.exr")
    atlas = nuke.nodes.Read(file="/p/atlas_painted.exr")
    nuke.fake.set_format(plate, 1920, 1080)
    nuke.fake.set_format(atlas, 2048, 2048)
    nuke.fake.set_metadata(atlas, {"exr/compression": "DWAA"})
    apply_node = nuke.nodes.Group()
    with apply_node:
        nuke.nodes.Input()
        nuke.nodes.Input(number=1)
    apply_node.setInput(0, plate)
    apply_node.setInput(1, atlas)
    warnings = glue.check_atlas(apply_node)
    assert len(warnings) == 2
    assert "lossy" in warnings[0] and "2048x2048" in warnings[1]
    assert len(nuke.fake.messages) == 1 and "lossy" in nuke.fake.messages[0]
    nuke.fake.set_format(atlas, 1920, 1080)
    nuke.fake.set_metadata(atlas, {"exr/compression": "Zip (1 scanline)"})
    assert glue.check_atlas(apply_node) == []


def test_rnaapply_check_atlas_button_compares_with_the_original_atlas(
    fake_nuke: ModuleType,
) -> None:
    nuke = fake_nuke
    from rna_nuke import glue

    plate = nuke.nodes.Read(file="/p/plate.####.exr")
    painted = nuke.nodes.Read(file="/p/atlas_painted.exr")
    node = glue.create_node("RNAApply")
    assert (node.Class(), node.name(), node["rna_version"].value()) == (
        "Group", "RNAApply1", __version__,
    )  # fmt: skip
    node.setInput(0, plate)
    node.setInput(1, painted)
    nuke.fake.set_format(node.node("ReadAtlas"), 2048, 1024)  # atlas_scale 2 of a 2:1 plate
    nuke.fake.set_format(painted, 1024, 512)  # painted at half size: fine
    nuke.fake.set_metadata(painted, {"exr/compression": "Zip (16 scanlines)"})
    node["check_atlas"].execute()  # the gizmo's own button
    assert nuke.fake.messages == ["RNAApply1: the atlas looks fine (lossless, same aspect ratio)"]
    nuke.fake.set_format(painted, 1024, 1024)
    nuke.fake.set_metadata(painted, {"exr/compression": "DWAB"})
    node["check_atlas"].execute()
    assert "lossy" in nuke.fake.messages[1] and "1024x1024" in nuke.fake.messages[1]


def test_submit_to_farm_writes_a_bundle(
    scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    script = Path(nuke.root()["name"].value())
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("#! nuke -nx\nversion 15.1 v2\nRoot {\n}\n")
    write = nuke.nodes.Write(file=str(tmp_path / "out" / "comp.####.exr"))
    write.setInput(0, node)
    monkeypatch.setenv("RNA_ENGINE_PYTHON", sys.executable)
    monkeypatch.delenv("RNA_FARM_SUBMIT", raising=False)
    text = glue.submit_to_farm(node)
    assert text is not None and text.startswith("farm bundle written to "), nuke.fake.messages
    bundle = Path(text.split(" to ", 1)[1].split(" (set ")[0])
    job = json.loads((bundle / "job.json").read_text())
    assert job["frames"] in ("1001-1010", [1001, 1010])
    spec = json.loads((script.parent / "RNAAtlasBuild1.build.json").read_text())
    assert spec["reference_frame"] == 1005
    assert nuke.fake.executed[0]["file"].endswith("/v001/inputs/roi.exr")  # rendered locally


@pytest.mark.parametrize("name", ["RNAAtlasBuild", "RNAApply"])
def test_fake_nuke_wires_gizmos_as_nkparse_does(fake_nuke: ModuleType, name: str) -> None:
    """Two independent readings of the gizmo text (the fake's and nkparse's) agree."""
    import nkparse

    from rna_nuke import glue

    [parsed] = nkparse.parse_file(GIZMOS / f"{name}.gizmo").groups()
    node = glue.create_node(name)

    def wiring(children: Any, name_of: Callable[[Any], str], inputs_of: Any) -> dict:
        return {name_of(c): [name_of(i) if i else None for i in inputs_of(c)] for c in children}

    expected = wiring(parsed.children, lambda n: n.name, lambda n: n.inputs)
    got = wiring(
        node.nodes(), lambda n: n.name(), lambda n: [n.input(i) for i in range(n.inputs())]
    )
    trim = {k: [*v] for k, v in expected.items()}
    for inputs in trim.values():
        while inputs and inputs[-1] is None:
            inputs.pop()
    assert got == trim
    user = [k.name for k in parsed.user_knobs]
    assert all(node.knob(k) is not None for k in user)


def test_init_puts_the_package_on_sys_path(fake_nuke: ModuleType) -> None:
    sys.path[:] = [p for p in sys.path if Path(p).resolve() != REPO]
    runpy.run_path(str(GIZMOS / "init.py"))
    assert str(REPO) in sys.path


def test_menu_adds_an_rna_toolbar_that_creates_groups(fake_nuke: ModuleType) -> None:
    nuke = fake_nuke
    runpy.run_path(str(GIZMOS / "menu.py"))
    toolbar = nuke.menu("Nodes").findItem("RNA")
    assert [item.name() for item in toolbar.items()] == ["RNAAtlasBuild", "RNAApply"]
    toolbar.findItem("RNAAtlasBuild").invoke()
    [node] = nuke.allNodes()
    assert (node.Class(), node.name()) == ("Group", "RNAAtlasBuild1")


def test_cache_path_is_saved_relative_to_the_script_and_follows_a_move(
    scene: dict[str, Any], tmp_path: Path
) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    _wait(glue.build(node, client_factory=lambda: Engine(steps=1)))
    stored = node["cache_path"].value()
    assert stored == "[file dirname [value root.name]]/rna/RNAAtlasBuild1/v001"
    # the project is moved (or path-mapped on the farm): the same text names the new place
    moved = tmp_path / "moved"
    nuke.root()["name"].setValue(str(moved / "comp.nk"))
    assert glue.cache_path_of(node) == f"{moved.as_posix()}/rna/RNAAtlasBuild1/v001"
    read = node.node("Read_atlas")
    assert nuke.filename(read) == f"{moved.as_posix()}/rna/RNAAtlasBuild1/v001/atlas/atlas.exr"


def test_cache_path_under_rna_cache_root_uses_the_variable(
    scene: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    glue, node = scene["glue"], scene["node"]
    monkeypatch.setenv("RNA_CACHE_ROOT", str(tmp_path / "caches"))
    node["cache_dir"].setValue(str(tmp_path / "caches" / "sh010" / "plate_fix"))
    stored = node["cache_path"].value()  # knobChanged followed the new folder
    assert stored == "[getenv RNA_CACHE_ROOT]/sh010/plate_fix/v001"
    monkeypatch.setenv("RNA_CACHE_ROOT", str(tmp_path / "farm_mount"))
    assert (
        glue.cache_path_of(node) == f"{(tmp_path / 'farm_mount').as_posix()}/sh010/plate_fix/v001"
    )
    node["cache_dir"].setValue(str(tmp_path / "elsewhere" / "c"))  # under neither: absolute
    assert node["cache_path"].value() == f"{(tmp_path / 'elsewhere').as_posix()}/c/v001"


def _apply_linked_after_a_build(scene: dict[str, Any]) -> Any:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    _wait(glue.build(node, client_factory=lambda: Engine(steps=1)))
    apply_node = glue.create_node("RNAApply")
    apply_node.setInput(0, scene["plate"])
    assert apply_node["first_frame"].hasExpression()  # {{root.first_frame}} until linked
    apply_node["link_build"].execute()  # the gizmo's own button code
    assert nuke.fake.messages == []
    return apply_node


def test_link_to_build_bakes_cache_version_and_frames(scene: dict[str, Any]) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    apply_node = _apply_linked_after_a_build(scene)
    assert apply_node["build_node"].value() == "RNAAtlasBuild1"
    # plain values (no expression, no Python at render time), the cache saved script-relative
    assert apply_node["cache_dir"].value() == "[file dirname [value root.name]]/rna/RNAAtlasBuild1"
    assert apply_node["version"].value() == 1
    assert (apply_node["first_frame"].value(), apply_node["last_frame"].value()) == (1001, 1010)
    assert not apply_node["first_frame"].hasExpression()
    assert not apply_node["last_frame"].hasExpression()
    assert not str(apply_node["onCreate"].value()) and not str(apply_node["knobChanged"].value())
    nuke.frame(1004)
    passes = nuke.filename(apply_node.node("ReadPasses"), nuke.REPLACE)
    assert passes == f"{scene['cache'].as_posix()}/v001/passes/rna.1004.exr"
    atlas = nuke.filename(apply_node.node("ReadAtlas"))
    assert atlas == glue.cache_path_of(node) + "/atlas/atlas.exr"


def test_a_new_build_version_updates_the_linked_apply(scene: dict[str, Any]) -> None:
    glue, node = scene["glue"], scene["node"]
    apply_node = _apply_linked_after_a_build(scene)
    node["range_mode"].setValue("custom")
    node["first"].setValue(1002)
    node["last"].setValue(1008)
    _wait(glue.build(node, client_factory=lambda: Engine(steps=1)))  # v001 is done: v002
    assert node["version"].value() == 2
    assert apply_node["version"].value() == 2
    assert (apply_node["first_frame"].value(), apply_node["last_frame"].value()) == (1002, 1008)


def test_link_to_build_asks_when_there_are_several(scene: dict[str, Any], caplog: Any) -> None:
    nuke, glue, node = scene["nuke"], scene["glue"], scene["node"]
    second = glue.create_node("RNAAtlasBuild")
    second["version"].setValue(4)
    for n in nuke.allNodes():
        n.setSelected(False)
    apply_node = glue.create_node("RNAApply")
    nuke.fake.choice_answer = 1
    assert glue.link_to_build(apply_node) is second
    assert nuke.fake.choices == [
        ("RNAAtlasBuild to take the cache from", ["RNAAtlasBuild1", "RNAAtlasBuild2"])
    ]
    assert apply_node["cache_dir"].value() == "[file dirname [value root.name]]/rna/RNAAtlasBuild2"
    assert apply_node["version"].value() == 4
    assert glue.link_to_build(apply_node) is second  # build_node now names it: no question
    assert len(nuke.fake.choices) == 1
    apply_node["build_node"].setValue("")
    nuke.GUI = False  # headless: no list, one line naming the way out
    with caplog.at_level(logging.ERROR, logger="rna_nuke.glue"):
        assert glue.link_to_build(apply_node) is None
    assert caplog.messages == [
        "RNAApply1: link to build: several RNAAtlasBuild nodes (RNAAtlasBuild1, RNAAtlasBuild2); "
        "select one or type its name in 'build'"
    ]
    node.setSelected(True)
    assert glue.link_to_build(apply_node) is node  # the selected one
