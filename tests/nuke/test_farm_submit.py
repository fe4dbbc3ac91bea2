"""`rna_nuke.farm`: the Nuke side writes the spec beside the script, runs the real engine's
`farm` command in its own interpreter, and runs the studio's submit command."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from rna_nuke import farm
from rna_nuke.farm import FarmError

ENGINE = sys.executable  # this venv's Python has rna_engine installed


def make_script(shot: Path, version: str = "15.1") -> Path:
    shot.mkdir(parents=True, exist_ok=True)
    script = shot / "comp" / "sh010_comp_v003.nk"
    script.parent.mkdir()
    script.write_text(f"#! nuke -nx\nversion {version} v2\nRoot {{\n}}\n")
    return script


def node_spec(shot: Path, **over: object) -> dict:
    """The spec as the RNAAtlasBuild node hands it over: absolute paths, version 0."""
    return {
        "plate": str(shot / "plate" / "sh010.####.exr"),
        "roi": str(shot / "comp" / "roi.exr"),
        "reference_frame": 1004,
        "frames": "1001-1040",
        "out": str(shot / "comp" / "rna"),
        "name": "sh010_wall",
        "version": 0,
        "root": "/somewhere/else",
        "settings": {"preset": "draft"},
        **over,
    }


def test_write_bundle_writes_a_relative_spec_and_the_engine_pins_it(tmp_path):
    script = make_script(tmp_path / "sh010")
    bundle = farm.write_bundle(
        "openjd", node_spec(tmp_path / "sh010"), script, "Write1", (1001, 1040), 8, None, ENGINE
    )
    assert bundle == script.parent / "rna_farm" / "sh010_comp_v003.sh010_wall.openjd"
    spec_file = script.parent / "sh010_wall.build.json"
    spec = json.loads(spec_file.read_text())
    assert spec["plate"] == "../plate/sh010.####.exr"
    assert (spec["roi"], spec["out"]) == ("roi.exr", "rna")
    assert "root" not in spec  # the farm maps the spec's folder, nothing else
    assert spec["version"] == 1  # pinned by the engine
    job = farm.read_job(bundle)
    assert (job["version"], job["frames"], job["chunk"]) == (1, "1001-1040", 8)
    assert job["build_dir"] == str(script.parent / "rna" / "sh010_wall" / "v001")
    assert job["render"]["script"] == str(script)
    assert job["render"]["write_node"] == "Write1"
    values = json.loads((bundle / "openjd_params.json").read_text())
    assert values["JobRoot"] == str(script.parent)


def test_two_nodes_of_one_script_get_their_own_specs(tmp_path):
    script = make_script(tmp_path / "sh010")
    shot = tmp_path / "sh010"
    farm.write_bundle(
        "deadline", node_spec(shot), script, "W", "1001-1010", 5, engine_python=ENGINE
    )
    farm.write_bundle(
        "deadline", node_spec(shot, name="sh010_floor"), script, "W", "1001-1010", 5,
        engine_python=ENGINE,
    )  # fmt: skip
    first = json.loads((script.parent / "sh010_wall.build.json").read_text())
    second = json.loads((script.parent / "sh010_floor.build.json").read_text())
    assert (first["name"], second["name"]) == ("sh010_wall", "sh010_floor")
    assert (first["version"], second["version"]) == (1, 1)  # separate builds, separate folders


def test_options_reach_the_bundle(tmp_path):
    script = make_script(tmp_path / "sh010")
    bundle = farm.write_bundle(
        "deadline",
        node_spec(tmp_path / "sh010"),
        script,
        "Write_RNA",
        "1001-1020",
        10,
        out_dir=tmp_path / "bundle",
        engine_python=ENGINE,
        nuke_path=str(tmp_path / "plugins"),
        pool="comp",
        gpu_group="a100",
        priority=70,
    )
    assert bundle == tmp_path / "bundle"
    render = (bundle / "render_job_info.job").read_text().splitlines()
    build = (bundle / "build_job_info.job").read_text().splitlines()
    assert "Pool=comp" in render and "Priority=70" in render
    assert "Group=a100" in build
    assert f"EnvironmentKeyValue0=NUKE_PATH={tmp_path / 'plugins'}" in render
    assert "Version=15.1" in (bundle / "render_plugin_info.job").read_text().splitlines()


def test_the_engine_runs_without_nukes_python_settings(tmp_path, monkeypatch):
    # Nuke sets PYTHONHOME/PYTHONPATH for its own interpreter; another Python dies with them.
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "nuke_python_home"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nuke_site"))
    script = make_script(tmp_path / "sh010")
    bundle = farm.write_bundle(
        "opencue", node_spec(tmp_path / "sh010"), script, "W", "1001-1004", 2, engine_python=ENGINE
    )
    assert (bundle / "opencue_job.xml").is_file()


def test_engine_refusal_becomes_one_farm_error_line(tmp_path):
    script = make_script(tmp_path / "sh010")
    with pytest.raises(FarmError) as info:
        farm.write_bundle(
            "openjd", node_spec(tmp_path / "sh010"), script, "W", "1030-1050", 10, None, ENGINE
        )
    message = str(info.value)
    assert "exit 2" in message and "frame 1041 is outside the build's range 1001-1040" in message
    assert "\n" not in message


def test_engine_python_comes_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("RNA_ENGINE_PYTHON", raising=False)
    script = make_script(tmp_path / "sh010")
    with pytest.raises(FarmError, match="RNA_ENGINE_PYTHON"):
        farm.write_bundle("openjd", node_spec(tmp_path / "sh010"), script, "W", "1001-1002", 1)
    monkeypatch.setenv("RNA_ENGINE_PYTHON", ENGINE)
    assert farm.find_engine_python() == ENGINE
    assert farm.find_engine_python("/opt/py") == "/opt/py"
    bundle = farm.write_bundle("openjd", node_spec(tmp_path / "sh010"), script, "W", "1001-1002", 1)
    assert (bundle / "template.yaml").is_file()


def test_bad_calls_are_refused_before_anything_runs(tmp_path):
    script = make_script(tmp_path / "sh010")
    spec = node_spec(tmp_path / "sh010")
    with pytest.raises(FarmError, match="not one of openjd"):
        farm.write_bundle("tractor", spec, script, "W", "1-2", 1, engine_python=ENGINE)
    with pytest.raises(FarmError, match="'pools'"):
        farm.write_bundle("openjd", spec, script, "W", "1-2", 1, engine_python=ENGINE, pools="x")
    with pytest.raises(FarmError, match="save the Nuke script"):
        farm.write_bundle("openjd", spec, tmp_path / "unsaved.nk", "W", "1-2", 1, None, ENGINE)
    assert not (script.parent / "sh010_wall.build.json").exists()


def test_relative_spec_keeps_other_drives_and_relative_paths(tmp_path):
    spec = farm.relative_spec(
        {"plate": "plates/a.####.exr", "roi": str(tmp_path / "x" / "roi.exr"), "holdout": ""},
        tmp_path / "x",
    )
    assert spec == {"plate": "plates/a.####.exr", "roi": "roi.exr", "holdout": ""}


# -- submit ---------------------------------------------------------------------------------------


def recorder(tmp_path: Path) -> str:
    """A submit command (for $RNA_FARM_SUBMIT) that records its arguments."""
    script = tmp_path / "record.py"
    script.write_text(
        "import json, sys\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "print('Submitted job 42')\n"
    )
    return f"{sys.executable} {script} bundle submit {{bundle}} --yes"


def test_submit_without_a_command_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("RNA_FARM_SUBMIT", raising=False)
    assert farm.submit(tmp_path) is None


def test_submit_runs_the_configured_command_on_the_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "my bundle"
    monkeypatch.setenv("RNA_FARM_SUBMIT", recorder(tmp_path))
    assert farm.submit(bundle) == "Submitted job 42\n"
    assert json.loads((tmp_path / "argv.json").read_text()) == [
        "bundle",
        "submit",
        str(bundle),
        "--yes",
    ]


def test_submit_appends_the_bundle_when_the_command_has_no_placeholder(tmp_path):
    assert farm.submit_command(tmp_path, "sh submit.sh") == ["sh", "submit.sh", str(tmp_path)]
    assert farm.submit_command(tmp_path, "x --dir={bundle}") == ["x", f"--dir={tmp_path}"]


def test_a_failing_submit_raises_with_its_last_line(tmp_path):
    command = f"{sys.executable} -c \"import sys; sys.exit('farm: queue not found')\""
    with pytest.raises(FarmError, match="exit 1.*queue not found"):
        farm.submit(tmp_path, command)
    with pytest.raises(FarmError, match="no-such-submitter"):
        farm.submit(tmp_path, "no-such-submitter {bundle}")


# -- the Nuke-side contract -----------------------------------------------------------------------


def test_farm_module_is_standard_library_python_39():
    source = Path(farm.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(str(node.module).split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported  # no rna_engine
