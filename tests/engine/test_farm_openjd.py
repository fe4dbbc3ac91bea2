"""Open Job Description bundles: the model validates them, `openjd check` passes, `openjd run`
runs the whole job locally — with stand-in executables, and with the real engine when the
pipeline is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import farm_golden
import pytest
import yaml

from rna_engine.farm import make_job, write_bundle
from rna_engine.farm.job import FarmJob

openjd_model = pytest.importorskip("openjd.model")

OPENJD = shutil.which("openjd", path=str(Path(sys.executable).parent)) or shutil.which("openjd")
needs_cli = pytest.mark.skipif(OPENJD is None, reason="openjd-cli is not installed")
posix_only = pytest.mark.skipif(os.name == "nt", reason="stand-ins are POSIX scripts")

SPEC = {
    "plate": "plate/plate.####.exr",
    "roi": "roi.exr",
    "reference_frame": 1004,
    "out": "rna_cache",
    "name": "sh010",
    "settings": {"preset": "draft"},
}


def make_shot(root: Path, **spec: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "comp.nk").write_text("version 15.1 v2\n")
    (root / "atlas_paint.exr").write_bytes(b"-")
    path = root / "build.json"
    path.write_text(json.dumps({**SPEC, **spec}))
    return path


def stand_in(path: Path, log: Path, exit_code: int = 0, fail: str = "") -> Path:
    """An executable that logs its argv and NUKE_PATH as a JSON line and prints farm messages."""
    path.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, os, sys
            with open({str(log)!r}, "a") as fh:
                fh.write(json.dumps({{"exe": os.path.basename(sys.argv[0]),
                                     "argv": sys.argv[1:],
                                     "NUKE_PATH": os.environ.get("NUKE_PATH")}}) + "\\n")
            print("openjd_status: stand-in")
            print("openjd_progress: 100.0")
            if {fail!r}:
                print("openjd_fail: " + {fail!r})
                print("rna-engine: " + {fail!r}, file=sys.stderr)
            sys.exit({exit_code})
            """
        )
    )
    path.chmod(0o755)
    return path


def read_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def nuke_job(tmp_path: Path, frames: str = "1001-1095", chunk: int = 10, **kw: object) -> FarmJob:
    spec = make_shot(tmp_path / "shot")
    return make_job(
        spec,
        frames=frames,
        chunk=chunk,
        script=spec.parent / "comp.nk",
        write_node="Write1",
        **kw,
    )


def apply_job(tmp_path: Path, frames: str = "1001-1008", chunk: int = 3, **kw: object) -> FarmJob:
    spec = make_shot(tmp_path / "shot")
    return make_job(
        spec,
        frames=frames,
        chunk=chunk,
        apply_atlas=spec.parent / "atlas_paint.exr",
        apply_out=tmp_path / "comp" / "comp.####.exr",
        **kw,
    )


def load_template(bundle: Path) -> dict:
    return yaml.safe_load((bundle / "template.yaml").read_text())


def chunks_of(bundle: Path, frames: str, chunk: int) -> list[str]:
    """Frame chunks of the Render step, as the OpenJD model forms them."""
    template = openjd_model.decode_job_template(
        template=load_template(bundle), supported_extensions=["TASK_CHUNKING"]
    )
    values = {k: str(v) for k, v in json.loads((bundle / "openjd_params.json").read_text()).items()}
    values.update(Frames=frames, ChunkSize=str(chunk))
    params = openjd_model.preprocess_job_parameters(
        job_template=template,
        job_parameter_values=values,
        job_template_dir=bundle,
        current_working_dir=bundle,
    )
    job = openjd_model.create_job(job_template=template, job_parameter_values=params)
    render = next(s for s in job.steps if s.name == "Render")
    space = openjd_model.StepParameterSpaceIterator(space=render.parameterSpace)
    return [task["Frame"].value for task in space]


def frames_of(ranges: list[str]) -> list[int]:
    out: list[int] = []
    for text in ranges:
        first, _, last = text.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def openjd_run(bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert OPENJD is not None
    return subprocess.run(
        [OPENJD, "run", str(bundle / "template.yaml")]
        + ["-p", f"file://{bundle / 'openjd_params.json'}"]
        + ["--step", "Render", "--run-dependencies", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- the template -------------------------------------------------------------------------------

GOLDEN, SHOT = farm_golden.GOLDEN, farm_golden.SHOT


def golden_job(kind: str) -> FarmJob:
    environment = {"NUKE_PATH": "/studio/nuke/plugins"} if kind == "nuke" else {}
    return farm_golden.golden_job(kind, environment=environment)


def assert_golden(case: str, name: str, text: str) -> None:
    """Compare with `tests/golden/farm/<case>/<name>`; `RNA_REGEN_GOLDEN=1` rewrites it."""
    path = GOLDEN / case / name
    if os.environ.get("RNA_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"{path} is missing: regenerate with RNA_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (review, then RNA_REGEN_GOLDEN=1)"


@pytest.mark.parametrize("kind", ["nuke", "apply"])
def test_bundle_matches_the_golden_files(tmp_path, kind):
    files = write_bundle("openjd", golden_job(kind), tmp_path)
    names = sorted(p.name for p in files)
    assert names == ["job.json", "openjd_params.json", "parameter_values.yaml", "template.yaml"]
    for name in names:
        assert_golden(f"openjd_{kind}", name, (tmp_path / name).read_text())


@pytest.mark.parametrize("variant", ["nuke", "apply"])
def test_template_decodes_and_passes_openjd_check(tmp_path, variant):
    make = nuke_job if variant == "nuke" else apply_job
    job = make(tmp_path, nuke_path=str(tmp_path / "plugins") if variant == "nuke" else "")
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    template = openjd_model.decode_job_template(
        template=load_template(bundle), supported_extensions=["TASK_CHUNKING"]
    )
    assert [s.name for s in template.steps] == ["BuildAtlas", "Render"]
    if OPENJD is not None:
        check = subprocess.run(
            [OPENJD, "check", str(bundle / "template.yaml")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "passes validation" in check.stdout


def test_template_declares_gpu_dependency_chunking_and_mappable_paths(tmp_path):
    job = nuke_job(tmp_path, nuke_path=str(tmp_path / "plugins"))
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    t = load_template(bundle)
    assert t["extensions"] == ["TASK_CHUNKING"]
    build, render = t["steps"]
    assert build["hostRequirements"] == {"amounts": [{"name": "amount.worker.gpu", "min": 1}]}
    assert build["script"]["actions"]["onRun"]["args"] == [
        "build",
        "--spec",
        "{{Param.JobRoot}}/build.json",
        "--farm",
    ]
    assert "parameterSpace" not in build  # one task
    assert render["dependencies"] == [{"dependsOn": "BuildAtlas"}]
    (frame,) = render["parameterSpace"]["taskParameterDefinitions"]
    assert frame["type"] == "CHUNK[INT]"
    assert frame["chunks"]["rangeConstraint"] == "CONTIGUOUS"
    assert render["script"]["actions"]["onRun"]["args"][:3] == ["-x", "-F", "{{Task.Param.Frame}}"]
    paths = {p["name"]: p for p in t["parameterDefinitions"] if p["type"] == "PATH"}
    assert set(paths) == {"JobRoot", "BuildDir", "NukeScript", "NukePath"}
    for p in paths.values():
        assert p["objectType"] in ("FILE", "DIRECTORY") and "dataFlow" in p
        assert "default" not in p  # Deadline Cloud refuses absolute PATH defaults
    assert paths["JobRoot"]["dataFlow"] == "INOUT"
    assert t["jobEnvironments"][0]["variables"] == {"NUKE_PATH": "{{Param.NukePath}}"}
    # The two values files agree, and hold absolute paths of this job.
    listed = yaml.safe_load((bundle / "parameter_values.yaml").read_text())["parameterValues"]
    flat = json.loads((bundle / "openjd_params.json").read_text())
    assert {v["name"]: v["value"] for v in listed} == flat
    assert flat["JobRoot"] == str(job.job_root)
    assert flat["NukeScript"] == str(job.job_root / "comp.nk")
    assert (flat["Frames"], flat["ChunkSize"], flat["WriteNode"]) == ("1001-1095", 10, "Write1")


@pytest.mark.parametrize(
    ("frames", "chunk"),
    [("1001-1095", 10), ("1001-1100", 10), ("1001-1001", 10), ("1-150", 150), ("7-20", 1)],
)
def test_render_chunks_are_contiguous_and_cover_the_range_once(tmp_path, frames, chunk):
    bundle = tmp_path / "bundle"
    write_bundle("openjd", nuke_job(tmp_path, frames="1-150", chunk=5), bundle)
    ranges = chunks_of(bundle, frames, chunk)
    first, _, last = frames.partition("-")
    assert frames_of(ranges) == list(range(int(first), int(last) + 1))
    assert all(len(frames_of([r])) <= chunk for r in ranges)
    assert len(ranges) == -(-len(frames_of([frames])) // chunk)  # ceil: no extra tasks


# -- openjd run with stand-ins -------------------------------------------------------------------


@needs_cli
@posix_only
def test_openjd_run_builds_once_then_renders_every_chunk(tmp_path):
    log = tmp_path / "log.jsonl"
    (tmp_path / "bin").mkdir()
    engine = stand_in(tmp_path / "bin" / "rna-engine", log)
    nuke = stand_in(tmp_path / "bin" / "nuke", log)
    job = nuke_job(
        tmp_path,
        frames="1001-1023",
        chunk=5,
        engine=(str(engine),),
        nuke=(str(nuke),),
        nuke_path=str(tmp_path / "plugins"),
    )
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    run = openjd_run(bundle)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    calls = read_log(log)
    assert calls[0]["exe"] == "rna-engine"
    assert calls[0]["argv"] == ["build", "--spec", str(job.spec_path), "--farm"]
    renders = calls[1:]
    assert all(c["exe"] == "nuke" for c in renders)
    assert all(c["argv"][-2:] == ["Write1", str(job.job_root / "comp.nk")] for c in renders)
    chunks = [c["argv"][c["argv"].index("-F") + 1] for c in renders]
    assert sorted(frames_of(chunks)) == list(range(1001, 1024))  # every frame exactly once
    assert len(chunks) == 5
    assert {c["NUKE_PATH"] for c in calls} == {str(tmp_path / "plugins")}


@needs_cli
@posix_only
def test_apply_variant_runs_the_engine_per_chunk(tmp_path):
    log = tmp_path / "log.jsonl"
    (tmp_path / "bin").mkdir()
    engine = stand_in(tmp_path / "bin" / "rna-engine", log)
    job = apply_job(tmp_path, frames="1001-1008", chunk=3, engine=(str(engine),))
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    run = openjd_run(bundle)
    assert run.returncode == 0, run.stdout[-3000:]
    build, *applies = [c["argv"] for c in read_log(log)]
    assert build[0] == "build"
    for argv in applies:
        assert argv[:3] == ["apply", "--build", str(job.build_dir)]
        assert argv[argv.index("--plate") + 1] == str(job.job_root / "plate" / "plate.####.exr")
        assert argv[argv.index("--out") + 1] == str(tmp_path / "comp" / "comp.####.exr")
    chunks = [argv[argv.index("--frames") + 1] for argv in applies]
    assert sorted(frames_of(chunks)) == list(range(1001, 1009))


@needs_cli
@posix_only
def test_path_mapping_rewrites_the_job_root_and_every_path(tmp_path):
    log = tmp_path / "log.jsonl"
    (tmp_path / "bin").mkdir()
    engine = stand_in(tmp_path / "bin" / "rna-engine", log)
    job = apply_job(tmp_path, frames="1001-1002", chunk=2, engine=(str(engine),))
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    rules = {
        "version": "pathmapping-1.0",
        "path_mapping_rules": [
            {
                "source_path_format": "POSIX",
                "source_path": str(tmp_path),
                "destination_path": "/farm",
            }
        ],
    }
    run = openjd_run(bundle, "--path-mapping-rules", json.dumps(rules))
    assert run.returncode == 0, run.stdout[-3000:]
    build, apply = [c["argv"] for c in read_log(log)]
    assert build[2] == "/farm/shot/build.json"
    mapped = [apply[apply.index(flag) + 1] for flag in ("--build", "--atlas", "--plate", "--out")]
    assert mapped == [
        "/farm/shot/rna_cache/sh010/v001",
        "/farm/shot/atlas_paint.exr",
        "/farm/shot/plate/plate.####.exr",
        "/farm/comp/comp.####.exr",
    ]


@needs_cli
@posix_only
def test_a_failed_build_fails_the_job_with_the_engine_message(tmp_path):
    log = tmp_path / "log.jsonl"
    (tmp_path / "bin").mkdir()
    reason = "plate/plate.####.exr: no frames found"
    engine = stand_in(tmp_path / "bin" / "rna-engine", log, exit_code=2, fail=reason)
    nuke = stand_in(tmp_path / "bin" / "nuke", log)
    job = nuke_job(tmp_path, frames="1001-1004", engine=(str(engine),), nuke=(str(nuke),))
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    run = openjd_run(bundle)
    assert run.returncode != 0
    assert f"openjd_fail: {reason}" in run.stdout + run.stderr
    assert [c["exe"] for c in read_log(log)] == ["rna-engine"]  # no render after a failed build


# -- the real engine ------------------------------------------------------------------------------

_MISSING = [
    name
    for name in ("rna_engine.pipeline", "rna_engine.commands.build", "rna_engine.commands.apply")
    if importlib.util.find_spec(name) is None
]
needs_engine = pytest.mark.skipif(bool(_MISSING), reason=f"not written yet: {', '.join(_MISSING)}")

TINY_SETTINGS = {
    "preset": "draft",
    # the fewest steps whose fit passes the quality gates (narrower fields collapse T)
    "fit": {
        "iterations": 150,
        "pretrain_steps": 100,
        "batch_size": 512,
        "scale_with_shot": False,
        "encoding_backend": "torch",
    },
    "refine": {"iterations": 20},
    "ingest": {"working_long_side": 64},
}
"""A build of a few seconds on two CPU cores: the test checks the farm plumbing, not quality."""


def real_shot(root: Path, **spec: object) -> tuple[Path, dict]:
    """The tiny synthetic shot, a spec with tiny fit settings, and a painted atlas stand-in."""
    from rna_engine.media.io import write_rgba_exr
    from rna_engine.synthetic.shots import make_shot as synth_shot
    from rna_engine.synthetic.shots import paint_pattern, write_shot

    shot = synth_shot("tiny", seed=0)
    manifest = write_shot(shot, root, truth=False, srgb=False)
    # The painted atlas only has to match the plate format: the test checks frames, not pixels.
    write_rgba_exr(root / "atlas_paint.exr", paint_pattern(shot.params.width, shot.params.height))
    data = {
        "plate": manifest["plate"],
        "roi": manifest["roi"],
        "reference_frame": manifest["reference_frame"],
        "frames": manifest["frames"],
        "out": "rna_cache",
        "name": "tiny",
        "device": "cpu",
        "settings": TINY_SETTINGS,
        **spec,
    }
    (root / "build.json").write_text(json.dumps(data, indent=2))
    return root / "build.json", manifest


@needs_cli
@needs_engine
def test_real_job_builds_and_applies_every_frame(tmp_path):
    from rna_engine.media.io import frame_path, parse_frame_range

    spec, manifest = real_shot(tmp_path / "shot")
    out = tmp_path / "comp" / "comp.####.exr"
    job = make_job(
        spec,
        chunk=3,
        apply_atlas=spec.parent / "atlas_paint.exr",
        apply_out=out,
        engine=(sys.executable, "-m", "rna_engine"),
    )
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    run = openjd_run(bundle)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert "openjd_progress:" in log
    status = json.loads((job.build_dir / "status.json").read_text())
    assert status["state"] == "done"
    for frame in parse_frame_range(manifest["frames"]):
        assert frame_path(out, frame).is_file(), f"frame {frame} not rendered"
        assert (job.build_dir / "passes" / f"rna.{frame:04d}.exr").is_file()


@needs_cli
@needs_engine
def test_real_job_with_a_missing_plate_fails_with_the_engine_message(tmp_path):
    spec, _ = real_shot(tmp_path / "shot", plate="nowhere/plate.####.exr")
    job = make_job(
        spec,
        chunk=4,
        apply_atlas=spec.parent / "atlas_paint.exr",
        apply_out=tmp_path / "comp" / "comp.####.exr",
        engine=(sys.executable, "-m", "rna_engine"),
    )
    bundle = tmp_path / "bundle"
    write_bundle("openjd", job, bundle)
    run = openjd_run(bundle)
    log = run.stdout + run.stderr
    assert run.returncode != 0
    fail = [line for line in log.splitlines() if "openjd_fail:" in line]
    assert fail and "nowhere/plate" in fail[0], log[-4000:]
    assert not (tmp_path / "comp").exists()  # no render after the failed build
