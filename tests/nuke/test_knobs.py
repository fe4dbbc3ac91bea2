"""Tests of `rna_nuke/knobs.py` and `rna_nuke/render_inputs.py`: pure helpers, known answers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import ModuleType

import pytest

from rna_nuke import __version__, knobs, render_inputs
from rna_nuke.knobs import SpecError
from rna_nuke.render_inputs import SourceInfo

REPO = Path(__file__).resolve().parents[2]
GIZMO = REPO / "gizmos" / "RNAAtlasBuild.gizmo"


def test_version_matches_the_engine() -> None:
    import rna_engine

    assert __version__ == rna_engine.__version__


# -- paths and ranges --------------------------------------------------------------------------


def test_cache_version_dir_pads_to_three_digits() -> None:
    assert knobs.cache_version_dir("/show/rna/Build1", 7) == "/show/rna/Build1/v007"
    assert knobs.cache_version_dir("/show/rna/Build1/", 12) == "/show/rna/Build1/v012"
    assert knobs.cache_version_dir("/show/rna/Build1", 1234) == "/show/rna/Build1/v1234"
    with pytest.raises(SpecError, match="version: 0"):
        knobs.cache_version_dir("/show/rna/Build1", 0)
    with pytest.raises(SpecError, match="cache folder"):
        knobs.cache_version_dir("  ", 1)


def test_split_cache_dir_gives_out_and_name() -> None:
    assert knobs.split_cache_dir("/show/sh010/rna/RNAAtlasBuild1") == (
        "/show/sh010/rna",
        "RNAAtlasBuild1",
    )
    assert knobs.split_cache_dir("C:\\show\\rna\\B1\\") == ("C:/show/rna", "B1")
    with pytest.raises(SpecError):
        knobs.split_cache_dir("/show/..")


def test_frame_range_modes() -> None:
    assert knobs.frame_range("input", (1001, 1050), (1, 100), (5, 6)) == (1001, 1050)
    assert knobs.frame_range("global", (1001, 1050), (1, 100), (5, 6)) == (1, 100)
    assert knobs.frame_range("custom", (1001, 1050), (1, 100), (5, 9)) == (5, 9)
    with pytest.raises(SpecError, match="plate input is not connected"):
        knobs.frame_range("input", None, (1, 100), (5, 6))
    with pytest.raises(SpecError, match="first/last is 9-5"):
        knobs.frame_range("custom", None, (1, 100), (9, 5))
    with pytest.raises(SpecError, match="single frame 7"):
        knobs.frame_range("custom", None, (1, 100), (7, 7))
    with pytest.raises(SpecError, match="'sideways' is not one of"):
        knobs.frame_range("sideways", None, (1, 100), (1, 2))


def test_reference_frame_must_lie_in_the_range() -> None:
    knobs.check_reference(1001, 1001, 1100)
    knobs.check_reference(1100, 1001, 1100)
    with pytest.raises(
        SpecError, match="reference frame 1000 is outside the frame range 1001-1100"
    ):
        knobs.check_reference(1000, 1001, 1100)


def _status(folder: Path, state: str) -> None:
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"state": state}))


def test_version_for_build_never_reuses_a_finished_version(tmp_path: Path) -> None:
    _status(tmp_path / "v001", "done")
    _status(tmp_path / "v002", "failed")
    assert knobs.version_for_build(str(tmp_path), 1) == 3  # v001 done → next free
    assert knobs.version_for_build(str(tmp_path), 2) == 2  # unfinished: resumed
    assert knobs.version_for_build(str(tmp_path), 5) == 5  # new
    assert knobs.version_for_build(str(tmp_path / "none"), 1) == 1


def test_channel_names_as_nuke_writes_them() -> None:
    assert knobs.exr_channel_name("rgba.alpha") == "A"
    assert knobs.exr_channel_name("alpha") == "A"
    assert knobs.exr_channel_name("rgba.red") == "R"
    assert knobs.exr_channel_name("matte.alpha") == "matte.A"
    assert knobs.exr_channel_name("mask.a") == "mask.a"
    assert knobs.layer_of("rgba.alpha") == "rgba"
    assert knobs.layer_of("mask.a") == "mask"
    with pytest.raises(SpecError):
        knobs.exr_channel_name("none")


# -- the build spec ----------------------------------------------------------------------------


def _spec(**overrides: object) -> dict:
    values = {**knobs.default_values(), "reference_frame": 1010, **overrides}
    return knobs.build_spec(
        values,
        plate="/plates/sh010.####.exr",
        roi="/cache/sh010/rna/B1/v003/inputs/roi.exr",
        frames=(1001, 1050),
        cache_dir="/cache/sh010/rna/B1",
        version=3,
        roi_channel="A",
    )


def test_build_spec_is_a_valid_engine_spec() -> None:
    from rna_engine.settings import PRESETS, BuildSpec, spec_from_dict

    spec = _spec(quality="final", seed=7, working_long_side=512, atlas_scale=2.0, device="cuda:1")
    fields = {f for f in BuildSpec.__dataclass_fields__}
    assert set(spec) <= fields
    parsed = spec_from_dict(spec)
    assert parsed.plate == "/plates/sh010.####.exr"
    assert parsed.reference_frame == 1010
    assert parsed.frames == "1001-1050"
    assert (parsed.out, parsed.name, parsed.version) == ("/cache/sh010/rna", "B1", 3)
    assert parsed.device == "cuda:1"
    assert parsed.settings.preset == "final"
    assert parsed.settings.seed == 7
    assert parsed.settings.ingest.working_long_side == 512
    assert parsed.settings.bake.atlas_scale == 2.0
    assert parsed.settings.fit.iterations == PRESETS["final"]["fit"]["iterations"]


def test_build_spec_leaves_preset_defaults_alone() -> None:
    from rna_engine.settings import PRESETS, spec_from_dict

    spec = _spec(quality="draft")
    assert spec["settings"] == {"preset": "draft", "seed": 0}
    parsed = spec_from_dict(spec)
    assert (
        parsed.settings.ingest.working_long_side == PRESETS["draft"]["ingest"]["working_long_side"]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"device": "gpu0"}, "device: 'gpu0'"),
        ({"atlas_scale": 8.0}, "atlas scale: 8"),
        ({"working_long_side": 16}, "working resolution: 16"),
        ({"quality": "ultra"}, "quality: 'ultra'"),
        ({"reference_frame": 2000}, "reference frame 2000 is outside"),
    ],
)
def test_build_spec_rejects_bad_knobs_by_name(override: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(**override)


def test_engine_settings_json_is_merged_into_the_settings() -> None:
    from rna_engine.settings import spec_from_dict

    extra = {
        "fit": {"iterations": 5000, "hash_grid": {"n_levels": 8}},
        "ingest": {"colour": "display"},
    }
    spec = _spec(
        quality="draft",
        seed=3,
        working_long_side=512,
        engine_settings="  " + json.dumps(extra) + "\n",
    )
    assert spec["settings"] == {
        "preset": "draft",
        "seed": 3,
        "ingest": {"working_long_side": 512, "colour": "display"},  # knob and JSON side by side
        "fit": {"iterations": 5000, "hash_grid": {"n_levels": 8}},
    }
    parsed = spec_from_dict(spec).settings
    assert parsed.fit.iterations == 5000
    assert parsed.fit.hash_grid.n_levels == 8
    assert parsed.fit.batch_size == 8192  # the rest of the draft preset stays
    assert (parsed.ingest.working_long_side, parsed.ingest.colour) == (512, "display")
    # the JSON is applied last: it wins over a knob
    spec = _spec(working_long_side=512, engine_settings='{"ingest": {"working_long_side": 96}}')
    assert spec_from_dict(spec).settings.ingest.working_long_side == 96
    assert _spec(engine_settings=" ")["settings"] == {"preset": "standard", "seed": 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"fit": {"iterations": 5000}', "extra settings \\(JSON\\): not valid JSON"),
        ("fit.iterations=5000", "extra settings \\(JSON\\): not valid JSON"),
        ('[{"fit": {}}]', "extra settings \\(JSON\\): expected an object .* got list"),
        ("5000", "extra settings \\(JSON\\): expected an object .* got int"),
        ('{"preset": "final"}', "extra settings \\(JSON\\): set the preset with the quality knob"),
    ],
)
def test_engine_settings_rejects_bad_json_by_knob_name(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(engine_settings=text)


def test_engine_settings_unknown_names_are_left_to_the_engine() -> None:
    from rna_engine.errors import InputError
    from rna_engine.settings import spec_from_dict

    spec = _spec(engine_settings='{"fit": {"iterashuns": 5}}')
    with pytest.raises(InputError, match="setting fit.iterashuns: unknown setting"):
        spec_from_dict(spec)
    spec = _spec(engine_settings='{"fit": {"iterations": "many"}}')
    with pytest.raises(InputError, match="setting fit.iterations: expected an integer"):
        spec_from_dict(spec)


# -- status text -------------------------------------------------------------------------------


def test_percent_and_eta() -> None:
    assert knobs.percent(0.29) == 29
    assert knobs.percent(0.999) == 99
    assert knobs.percent(1.7) == 100
    assert knobs.percent(-1) == 0
    assert knobs.percent(None) == 0
    assert knobs.percent(math.nan) == 0
    assert knobs.format_eta(65.2) == "1m05s"
    assert knobs.format_eta(12) == "12s"
    assert knobs.format_eta(None) == "--"


def test_status_line_texts() -> None:
    running = {"state": "running", "stage": "fit", "progress": 0.42, "eta_s": 65, "message": ""}
    assert knobs.status_line(running, "cuda:0") == "running | fit 42% | ETA 1m05s | GPU cuda:0"
    assert knobs.status_line({**running, "message": "step 4000"}) == (
        "running | fit 42% | ETA 1m05s | step 4000"
    )
    assert knobs.status_line({"state": "done", "progress": 1.0}, "cpu") == "done | 100% | GPU cpu"
    assert knobs.status_line({"state": "queued"}) == "queued"
    failed = {"state": "failed", "error": {"code": "input", "message": "plate.1005.exr: missing"}}
    assert knobs.status_line(failed) == "failed: plate.1005.exr: missing (input)"
    assert knobs.status_line({"state": "cancelled", "stage": "fit", "progress": 0.5}) == (
        "cancelled at fit 50%"
    )
    gate = {"state": "failed", "error": {"code": "quality", "message": "fit: atlas PSNR 12 dB"}}
    assert knobs.status_line(gate) == "failed: fit: atlas PSNR 12 dB (quality)"
    warned = {"state": "done", "progress": 1.0, "warnings": ["frame 1040: low", "frame 1050: low"]}
    assert knobs.status_line(warned) == (
        "done | 100% | QC warning: frame 1040: low (+1 more in qc/report.json)"
    )
    assert knobs.status_line({**warned, "warnings": ["frame 1040: low"]}) == (
        "done | 100% | QC warning: frame 1040: low"
    )


def test_cache_info_reads_status_and_build(tmp_path: Path) -> None:
    version = tmp_path / "v001"
    (version / "atlas").mkdir(parents=True)
    finished = time.mktime((2025, 3, 4, 5, 6, 0, 0, 0, -1))
    (version / "status.json").write_text(
        json.dumps(
            {
                "state": "done",
                "progress": 1.0,
                "build_hash": "abc123",
                "timings": {"fit": 50.0, "bake": 15.0},
                "finished": finished,
            }
        )
    )
    (version / "build.json").write_text(json.dumps({"frames": "1001-1050", "rna_version": "x"}))
    info = knobs.cache_info(str(version))
    assert info["ready"] is False  # no atlas yet
    (version / "atlas" / "atlas.exr").write_bytes(b"exr")
    info = knobs.cache_info(str(version))
    assert info["ready"] is True
    assert (info["first"], info["last"]) == (1001, 1050)
    assert info["build_hash"] == "abc123"
    assert info["build_time"] == "1m05s (finished 2025-03-04 05:06)"
    assert info["status"] == "done | 100%"
    empty = knobs.cache_info(str(tmp_path / "v009"))
    assert (empty["state"], empty["ready"], empty["first"]) == ("not built", False, None)


def test_atlas_warnings() -> None:
    plate = (1920, 1080)
    assert knobs.atlas_warnings({"exr/compression": "Zip (1 scanline)"}, plate, plate) == []
    assert knobs.atlas_warnings({"exr/compression": 4}, (960, 540), plate) == []  # PIZ, half size
    lossy = knobs.atlas_warnings({"exr/compression": "DWAA"}, plate, plate)
    assert len(lossy) == 1 and "lossy" in lossy[0]
    assert len(knobs.atlas_warnings({"exr/compression": 8}, plate, plate)) == 1  # DWAA code
    stretched = knobs.atlas_warnings({}, (2048, 2048), plate)
    assert len(stretched) == 1 and "2048x2048" in stretched[0] and "1920x1080" in stretched[0]


def test_open_folder_command_per_platform() -> None:
    assert knobs.open_folder_command("/a/b", "linux") == ["xdg-open", "/a/b"]
    assert knobs.open_folder_command("/a/b", "darwin") == ["open", "/a/b"]
    assert knobs.open_folder_command("/a/b", "win32")[0] == "explorer"


def test_group_script_and_tcl_quote() -> None:
    text = "version 13.2 v1\nGizmo {\n inputs 3\n}\nend_group\n"
    assert knobs.group_script(text) == "version 13.2 v1\nGroup {\n inputs 3\n}\nend_group\n"
    with pytest.raises(SpecError):
        knobs.group_script("Group {\n}\n")
    assert knobs.tcl_quote('a [b] "c" $d\n') == '"a \\[b\\] \\"c\\" \\$d\\n"'


# -- the gizmo carries exactly the specs -------------------------------------------------------


def test_gizmo_declares_every_knob_spec() -> None:
    text = GIZMO.read_text()
    header = text[: text.index("\n}\n")]
    for spec in knobs.BUILD_KNOBS:
        assert knobs.user_knob_line(spec) in header, spec.name
        line = knobs.value_line(spec)
        if line is not None:
            assert f"\n {line}\n" in header, line
    assert header.count("addUserKnob") == len(knobs.BUILD_KNOBS)


KNOB_CLASSES = {
    "String": "String_Knob",
    "File": "File_Knob",
    "Int": "Int_Knob",
    "Enumeration": "Enumeration_Knob",
    "Boolean": "Boolean_Knob",
    "Double": "Double_Knob",
    "Channel": "Channel_Knob",
    "Tab": "Tab_Knob",
    "PyScript": "PyScript_Knob",
    "Text": "Text_Knob",
}


def test_gizmo_knobs_load_with_their_defaults(fake_nuke: ModuleType) -> None:
    nuke = fake_nuke
    nuke.pluginAddPath(str(GIZMO.parent))
    node = nuke.createNode("RNAAtlasBuild")
    assert node.Class() == "RNAAtlasBuild"
    for spec in knobs.BUILD_KNOBS:
        knob = node[spec.name]
        assert knob.Class() == KNOB_CLASSES[spec.kind], spec.name
        if spec.kind in knobs.VALUE_KINDS:
            assert knob.value() == spec.default, spec.name
        if spec.kind == "Enumeration":
            assert tuple(knob.values()) == spec.values
        if spec.kind == "PyScript":
            assert knob.command() == spec.command
            compile(knob.command(), spec.name, "exec")
        if "+INVISIBLE" in spec.flags:
            assert not knob.visible(), spec.name


# -- which inputs are rendered -----------------------------------------------------------------

READ = SourceInfo("Read", "/plates/sh010.####.exr", 1001, 1100)


def test_a_plain_read_is_read_directly() -> None:
    plan = render_inputs.plan_plate(READ, "/c/v001/inputs", 1001, 1100)
    assert (plan.mode, plan.path) == ("direct", "/plates/sh010.####.exr")
    roi = render_inputs.plan_roi(
        SourceInfo("Read", "/mattes/roi.exr", 1, 1), "/c/v001/inputs", 1050, "rgba.alpha", False
    )
    assert (roi.mode, roi.path, roi.channel) == ("direct", "/mattes/roi.exr", "A")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (SourceInfo("Roto"), "Roto is not a Read"),
        (SourceInfo("Read", "/p/a.####.exr", 1001, 1050), "does not cover 1001-1100"),
        (SourceInfo("Read", "/p/a.mov", 1001, 1100), ".mov files"),
        (SourceInfo("Read", "/p/a.####.exr", 1001, 1100, reformat=True), "reformats"),
        (SourceInfo("Read", "/p/a.####.exr", 1001, 1100, frame_offset=True), "offsets"),
        (SourceInfo("Read", "/p/a.####.exr", 1001, 1100, disabled=True), "disabled"),
    ],
)
def test_other_plates_are_rendered_over_the_range(source: SourceInfo, reason: str) -> None:
    plan = render_inputs.plan_plate(source, "/c/v001/inputs", 1001, 1100)
    assert plan.mode == "render"
    assert plan.path == "/c/v001/inputs/plate.####.exr"
    assert (plan.first, plan.last) == (1001, 1100)
    assert reason in plan.reason


def test_roi_is_rendered_at_the_reference_frame_only() -> None:
    plan = render_inputs.plan_roi(SourceInfo("Roto"), "/c/v001/inputs", 1050, "mask.a", False)
    assert (plan.mode, plan.path) == ("render", "/c/v001/inputs/roi.exr")
    assert (plan.first, plan.last, plan.layer, plan.channel) == (1050, 1050, "mask", "mask.a")
    inverted = render_inputs.plan_roi(
        SourceInfo("Read", "/mattes/roi.exr", 1, 1), "/c/v001/inputs", 1050, "rgba.alpha", True
    )
    assert (inverted.mode, inverted.invert, inverted.reason) == ("render", True, "invert is on")
    holdout = render_inputs.plan_holdout(
        SourceInfo("Roto"), "/c/v001/inputs", 1001, 1100, "rgba.alpha", False
    )
    assert (holdout.path, holdout.first, holdout.last) == (
        "/c/v001/inputs/holdout.####.exr",
        1001,
        1100,
    )
    knob_values = render_inputs.write_knob_values(plan)
    assert list(knob_values)[:2] == ["file", "file_type"]  # exr knobs exist once the type is set
    assert knob_values["channels"] == "mask"


def test_portable_path_prefers_the_cache_root_then_the_script_folder() -> None:
    env = {"RNA_CACHE_ROOT": "/jobs/show/caches/"}
    script = "/jobs/show/sh010/comp/sh010_v003.nk"
    cases = {
        "/jobs/show/caches/sh010/a/v002": "[getenv RNA_CACHE_ROOT]/sh010/a/v002",
        "/jobs/show/sh010/comp/rna/RNAAtlasBuild1/v001": (
            "[file dirname [value root.name]]/rna/RNAAtlasBuild1/v001"
        ),
        "/jobs/show/sh010/compositing/x": "/jobs/show/sh010/compositing/x",  # a prefix, not a dir
        "/other/place/v001": "/other/place/v001",
    }
    for path, stored in cases.items():
        assert knobs.portable_path(path, script, env) == stored
        assert knobs.expand_portable(stored, script, env) == path
    assert knobs.portable_path("/jobs/show/caches/x", script, {}) == "/jobs/show/caches/x"
    assert knobs.portable_path("/a/b/rna/x", "", {}) == "/a/b/rna/x"  # unsaved script
