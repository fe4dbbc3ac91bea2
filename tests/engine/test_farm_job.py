"""The farm job model: frame ranges, chunks, version pinning, input checks, the CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import rna_engine.farm.job as job_module
from rna_engine import cli
from rna_engine.errors import InputError
from rna_engine.farm import make_job
from rna_engine.farm.job import ApplyRender, FrameRange, NukeRender, nuke_version_of, parse_frames

SPEC = {
    "plate": "plate/plate.####.exr",
    "roi": "roi.exr",
    "reference_frame": 1004,
    "frames": "1001-1100",
    "out": "rna_cache",
    "name": "sh010",
    "settings": {"preset": "draft"},
}


def make_shot(root: Path, **spec_overrides: object) -> Path:
    """A shot folder with a spec, a Nuke script (Nuke 15.1) and a painted atlas; returns the spec."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "comp.nk").write_text("#! /opt/Nuke15.1v2/libnuke-15.1.2.so -nx\nversion 15.1 v2\n")
    (root / "atlas_paint.exr").write_bytes(b"not read at bundle time")
    spec = root / "build.json"
    spec.write_text(json.dumps({**SPEC, **spec_overrides}, indent=2))
    return spec


def test_parse_frames_accepts_one_contiguous_range():
    assert parse_frames("1001-1100") == FrameRange(1001, 1100)
    assert parse_frames("1001") == FrameRange(1001, 1001)
    assert str(FrameRange(5, 5)) == "5"
    assert len(FrameRange(1001, 1100)) == 100


@pytest.mark.parametrize("text", ["1-10x2", "1-5 9", "1001-1010,1020"])
def test_parse_frames_refuses_gaps(text):
    with pytest.raises(InputError, match="contiguous"):
        parse_frames(text)


def test_chunks_cover_the_range_exactly_once():
    chunks = FrameRange(1001, 1095).chunks(10)
    assert [str(c) for c in chunks[:2]] == ["1001-1010", "1011-1020"]
    assert str(chunks[-1]) == "1091-1095"
    frames = [f for c in chunks for f in c]
    assert frames == list(range(1001, 1096))


def test_version_zero_is_pinned_in_the_spec_and_reserved(tmp_path):
    spec = make_shot(tmp_path / "shot")
    os.chmod(spec, 0o644)
    job = make_job(spec, script=spec.parent / "comp.nk", write_node="Write1")
    assert job.version == 1
    assert job.build_dir == spec.parent / "rna_cache" / "sh010" / "v001"
    assert job.build_dir.is_dir()  # reserved: the next bundle or local build takes v002
    data = json.loads(spec.read_text())
    assert data["version"] == 1
    assert {k: v for k, v in data.items() if k != "version"} == SPEC  # nothing else changed
    assert stat.S_IMODE(spec.stat().st_mode) == 0o644  # workers can still read it

    # A second spec of the same build (version 0) gets the next number...
    other = make_shot(tmp_path / "shot2", out=str(spec.parent / "rna_cache"))
    assert make_job(other, script=other.parent / "comp.nk", write_node="Write1").version == 2
    # ...and a pinned spec keeps its version: a retry or a resubmit reuses the folder.
    again = make_job(spec, script=spec.parent / "comp.nk", write_node="Write1")
    assert again.version == 1
    assert again.build_dir == job.build_dir


def test_explicit_version_is_kept_and_no_reserve_creates_nothing(tmp_path):
    spec = make_shot(tmp_path / "shot", version=7)
    job = make_job(spec, script=spec.parent / "comp.nk", write_node="W", reserve=False)
    assert job.version == 7
    assert job.name == "RNA sh010 v007"
    assert not (spec.parent / "rna_cache").exists()


def test_nuke_job_paths_and_command(tmp_path):
    spec = make_shot(tmp_path / "shot")
    job = make_job(
        spec,
        frames="1001-1010",
        chunk=4,
        script=spec.parent / "comp.nk",
        write_node="Write_comp",
        nuke=("Nuke15.1", "-i"),
        engine=("python3", "-m", "rna_engine"),
        nuke_path=str(tmp_path / "plugins"),
    )
    assert isinstance(job.render, NukeRender)
    assert job.render.version == "15.1"
    assert job.job_root == spec.parent
    assert job.spec_relpath == "build.json"
    assert job.environment == {"NUKE_PATH": str(tmp_path / "plugins")}
    assert job.build_argv("S") == ["python3", "-m", "rna_engine", "build", "--spec", "S", "--farm"]
    assert job.render_argv("1001-1004") == [
        "Nuke15.1",
        "-i",
        "-x",
        "-F",
        "1001-1004",
        "-X",
        "Write_comp",
        str(spec.parent / "comp.nk"),
    ]


def test_apply_job_resolves_the_plate_against_the_job_root(tmp_path):
    spec = make_shot(tmp_path / "shot", version=2)
    job = make_job(
        spec,
        frames="1001-1003",
        apply_atlas=spec.parent / "atlas_paint.exr",
        apply_out=tmp_path / "out" / "comp.####.exr",
    )
    assert isinstance(job.render, ApplyRender)
    assert job.render.plate == spec.parent / "plate" / "plate.####.exr"
    assert job.render_argv("1001-1002") == [
        "rna-engine",
        "apply",
        "--build",
        str(spec.parent / "rna_cache" / "sh010" / "v002"),
        "--atlas",
        str(spec.parent / "atlas_paint.exr"),
        "--plate",
        str(spec.parent / "plate" / "plate.####.exr"),
        "--out",
        str(tmp_path / "out" / "comp.####.exr"),
        "--frames",
        "1001-1002",
    ]


def test_frames_default_to_the_spec_and_must_lie_inside_it(tmp_path):
    spec = make_shot(tmp_path / "shot", version=1)
    script = spec.parent / "comp.nk"
    assert make_job(spec, script=script, write_node="W").frames == FrameRange(1001, 1100)
    with pytest.raises(InputError, match="frame 1101 is outside"):
        make_job(spec, frames="1090-1110", script=script, write_node="W")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either --script"),
        ({"script": "comp.nk", "apply_atlas": "atlas_paint.exr"}, "either --script"),
        ({"script": "missing.nk", "write_node": "W"}, "missing.nk: Nuke script not found"),
        ({"script": "comp.nk"}, "--write"),
        ({"apply_atlas": "nope.exr", "apply_out": "o.####.exr"}, "nope.exr: edited atlas"),
        ({"apply_atlas": "atlas_paint.exr"}, "--apply-out"),
        ({"script": "comp.nk", "write_node": "W", "chunk": 151}, "chunk: 151"),
        ({"script": "comp.nk", "write_node": "W", "priority": 101}, "priority: 101"),
    ],
)
def test_bad_input_names_the_setting_and_leaves_the_spec_alone(tmp_path, kwargs, message):
    spec = make_shot(tmp_path / "shot")
    before = spec.read_text()
    for key in ("script", "apply_atlas"):
        if key in kwargs:
            kwargs[key] = spec.parent / kwargs[key]
    with pytest.raises(InputError, match=message):
        make_job(spec, **kwargs)
    assert spec.read_text() == before  # refused before the version was pinned
    assert not (spec.parent / "rna_cache").exists()


def test_deadline_needs_a_nuke_version_before_anything_is_written(tmp_path):
    spec = make_shot(tmp_path / "shot")
    (spec.parent / "comp.nk").write_text("Root {\n}\n")
    before = spec.read_text()
    with pytest.raises(InputError, match="--nuke-version"):
        make_job(spec, script=spec.parent / "comp.nk", write_node="W", require_nuke_version=True)
    assert spec.read_text() == before
    job = make_job(spec, script=spec.parent / "comp.nk", write_node="W", nuke_version="14.0")
    assert job.render.version == "14.0"


def test_nuke_version_of_reads_the_script_header(tmp_path):
    script = tmp_path / "a.nk"
    script.write_text("#! nuke -nx\nversion 13.2 v8\ndefine_window_layout_xml {}\n")
    assert nuke_version_of(script) == "13.2"
    script.write_text("Root {\n}\n")
    assert nuke_version_of(script) == ""


def test_cli_writes_a_bundle_and_prints_its_folder(tmp_path, capsys):
    spec = make_shot(tmp_path / "shot")
    out = tmp_path / "bundle"
    code = cli.main(
        ["farm", "openjd", "--spec", str(spec), "--script", str(spec.parent / "comp.nk")]
        + ["--write", "Write1", "--frames", "1001-1020", "--chunk", "5", "--out", str(out)]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    job = json.loads((out / "job.json").read_text())
    assert (job["kind"], job["version"], job["frames"], job["chunk"]) == (
        "openjd",
        1,
        "1001-1020",
        5,
    )
    assert sorted(job["files"]) == ["openjd_params.json", "parameter_values.yaml", "template.yaml"]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    spec = make_shot(tmp_path / "shot")
    code = cli.main(
        ["farm", "deadline", "--spec", str(spec), "--apply-atlas", str(tmp_path / "none.exr")]
        + ["--apply-out", "c.####.exr", "--out", str(tmp_path / "b")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.exr: edited atlas not found" in err[0]
    assert not (tmp_path / "b").exists()


def test_pinning_skips_a_version_folder_taken_meanwhile(tmp_path, monkeypatch):
    spec = make_shot(tmp_path / "shot")
    real = job_module.choose_version
    calls = []

    def racing(cache_root, name, version, build_hash):
        paths = real(cache_root, name, version, build_hash)
        if not calls:  # another submitter creates v001 between our choice and our mkdir
            paths.root.mkdir(parents=True)
        calls.append(paths.version)
        return paths

    monkeypatch.setattr(job_module, "choose_version", racing)
    job = make_job(spec, script=spec.parent / "comp.nk", write_node="W")
    assert calls == [1, 2]
    assert job.version == 2
    assert json.loads(spec.read_text())["version"] == 2
