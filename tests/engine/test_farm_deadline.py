"""Deadline 10 bundles: golden files, documented keys only, and the submit script's id hand-off.

Regenerate the golden files after a reviewed change with `RNA_REGEN_GOLDEN=1 pytest ...`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import farm_golden
import pytest

from rna_engine.errors import InputError
from rna_engine.farm import write_bundle
from rna_engine.farm.deadline import (
    BUILD_JOB_ID_TOKEN,
    build_job_info,
    build_plugin_info,
    quote_arguments,
    render_job_info,
    render_plugin_info,
)
from rna_engine.farm.job import FarmJob, NukeRender

GOLDEN, SHOT = farm_golden.GOLDEN, farm_golden.SHOT

# Job-info keys of Deadline 10's manual-submission documentation ("Job Info File"); indexed keys
# (EnvironmentKeyValue0, OutputDirectory0, OutputFilename0, ...) end in a number.
JOB_INFO_KEYS = {
    "Plugin", "Frames", "Name", "Comment", "Department", "BatchName", "UserName", "MachineName",
    "Pool", "SecondaryPool", "Group", "Priority", "ChunkSize", "ConcurrentTasks",
    "LimitConcurrentTasksToNumberOfCpus", "OnJobComplete", "Sequential", "InitialStatus",
    "MinRenderTimeMinutes", "TaskTimeoutSeconds", "TaskTimeoutMinutes", "OnTaskTimeout",
    "MachineLimit", "Whitelist", "Blacklist", "LimitGroups", "JobDependencies",
    "JobDependencyPercentage", "IsFrameDependent", "ResumeOnCompleteDependencies",
    "ResumeOnDeletedDependencies", "ResumeOnFailedDependencies", "RequiredAssets",
    "ScriptDependencies", "PreJobScript", "PostJobScript", "PreTaskScript", "PostTaskScript",
    "IncludeEnvironment", "UseJobEnvironmentOnly",
}  # fmt: skip
JOB_INFO_INDEXED = {"EnvironmentKeyValue", "OutputDirectory", "OutputFilename", "ExtraInfo"}
# Plug-in info keys of Deadline's Nuke plug-in and CommandLine plug-in (as its submitters write).
NUKE_PLUGIN_KEYS = {
    "SceneFile", "Version", "WriteNode", "BatchMode", "BatchModeIsMovie", "ContinueOnError",
    "EnforceRenderOrder", "NukeX", "UseGpu", "GpuOverride", "Threads", "RamUse", "RenderMode",
    "Views", "ScriptJob", "ScriptFilename", "OutputFilePath", "ProjectPath",
}  # fmt: skip
COMMANDLINE_PLUGIN_KEYS = {
    "Executable", "Arguments", "StartupDirectory", "Shell", "ShellExecute", "SingleFramesOnly",
}  # fmt: skip


def golden_job(kind: str) -> FarmJob:
    return farm_golden.golden_job(
        kind,
        pool="comp",
        group="nuke",
        gpu_pool="gpu",
        gpu_group="gpu_a100",
        priority=60,
        user="artist",
        show="demo",
    )


def assert_golden(case: str, name: str, text: str) -> None:
    path = GOLDEN / case / name
    if os.environ.get("RNA_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"{path} is missing: regenerate with RNA_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (review, then RNA_REGEN_GOLDEN=1)"


def parse_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        assert key not in out, f"duplicate key {key}"
        out[key] = value
    return out


@pytest.mark.parametrize("kind", ["nuke", "apply"])
def test_bundle_matches_the_golden_files(tmp_path, kind):
    files = write_bundle("deadline", golden_job(kind), tmp_path)
    names = sorted(p.name for p in files)
    assert names == [
        "build_job_info.job",
        "build_plugin_info.job",
        "job.json",
        "render_job_info.job",
        "render_plugin_info.job",
        "submit_deadline.sh",
    ]
    for name in names:
        if name != "job.json":
            assert_golden(f"deadline_{kind}", name, (tmp_path / name).read_text())
    assert os.access(tmp_path / "submit_deadline.sh", os.X_OK)


@pytest.mark.parametrize("kind", ["nuke", "apply"])
def test_only_documented_keys(kind):
    job = golden_job(kind)
    for info in (build_job_info(job), render_job_info(job)):
        for key in info:
            base = re.sub(r"\d+$", "", key)
            assert key in JOB_INFO_KEYS or (base in JOB_INFO_INDEXED and base != key), key
    assert set(build_plugin_info(job)) <= COMMANDLINE_PLUGIN_KEYS
    plugin_keys = NUKE_PLUGIN_KEYS if kind == "nuke" else COMMANDLINE_PLUGIN_KEYS
    assert set(render_plugin_info(job)) <= plugin_keys


def test_build_job_is_one_gpu_task_and_render_depends_on_it():
    job = golden_job("nuke")
    build, render = build_job_info(job), render_job_info(job)
    assert (build["Plugin"], build["Frames"], build["ChunkSize"]) == ("CommandLine", "0", "1")
    assert (build["Pool"], build["Group"]) == ("gpu", "gpu_a100")
    assert (render["Plugin"], render["Frames"], render["ChunkSize"]) == ("Nuke", "1001-1095", "10")
    assert (render["Pool"], render["Group"]) == ("comp", "nuke")
    assert render["JobDependencies"] == BUILD_JOB_ID_TOKEN
    assert build["EnvironmentKeyValue0"] == render["EnvironmentKeyValue0"]
    assert build["EnvironmentKeyValue0"] == "NUKE_PATH=/studio/nuke/plugins"
    plugin = render_plugin_info(job)
    assert plugin["SceneFile"] == str(SHOT / "comp" / "sh010_comp_v012.nk")
    assert (plugin["WriteNode"], plugin["Version"]) == ("Write_RNA", "15.1")
    args = build_plugin_info(job)
    assert args["Executable"] == "/opt/rna/bin/python"
    assert args["Arguments"] == f"-m rna_engine build --spec {SHOT}/build.json --farm"


def test_apply_render_uses_deadline_frame_tokens_and_quotes_spaces():
    plugin = render_plugin_info(golden_job("apply"))
    assert plugin["Arguments"].endswith(" --frames <STARTFRAME>-<ENDFRAME>")
    assert f'--atlas "{SHOT}/paint/atlas_paint v2.exr"' in plugin["Arguments"]
    assert quote_arguments(["a b", 'say "hi"', "", "c"]) == '"a b" "say \\"hi\\"" "" c'


def test_a_nuke_job_without_a_version_is_refused():
    job = golden_job("nuke")
    job = FarmJob(**{**job.__dict__, "render": NukeRender(job.render.script, "W", ("nuke",), "")})
    with pytest.raises(InputError, match="--nuke-version"):
        render_plugin_info(job)


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell script")
def test_submit_script_passes_the_build_job_id_to_the_render_job(tmp_path):
    bundle = tmp_path / "bundle"
    write_bundle("deadline", golden_job("nuke"), bundle)
    log = tmp_path / "calls.txt"
    fake = tmp_path / "deadlinecommand"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import sys
            with open({str(log)!r}, "a") as fh:
                fh.write(" ".join(sys.argv[1:]) + "\\n")
                fh.write(open(sys.argv[1]).read())
            print("Submitting to Repository: /repo")
            print("Result=Success")
            print("JobID=5f1e0a9c3b2d1e0012345678\\r")
            """
        )
    )
    fake.chmod(0o755)
    env = {**os.environ, "DEADLINECOMMAND": str(fake)}
    done = subprocess.run(
        ["sh", str(bundle / "submit_deadline.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text()
    first, second = calls.split("render_job_info.submitted.job", 1)
    assert f"{bundle}/build_job_info.job {bundle}/build_plugin_info.job" in first
    assert f"{bundle}/render_plugin_info.job" in second
    assert "JobDependencies=5f1e0a9c3b2d1e0012345678\n" in second
    assert BUILD_JOB_ID_TOKEN not in second
    # The bundle's own file keeps the placeholder, so the bundle can be submitted again.
    assert f"JobDependencies={BUILD_JOB_ID_TOKEN}" in (bundle / "render_job_info.job").read_text()


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell script")
def test_submit_script_stops_when_the_build_was_not_submitted(tmp_path):
    bundle = tmp_path / "bundle"
    write_bundle("deadline", golden_job("apply"), bundle)
    fake = tmp_path / "deadlinecommand"
    fake.write_text(f"#!{sys.executable}\nprint('Result=Failure')\n")
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(bundle / "submit_deadline.sh")],
        env={**os.environ, "DEADLINECOMMAND": str(fake)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "no JobID=" in done.stderr
    assert not (bundle / "render_job_info.submitted.job").exists()
