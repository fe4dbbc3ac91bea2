"""Deadline 10 writer: job-info / plugin-info key=value files for two jobs, and a submit script.

- `build_job_info.job` + `build_plugin_info.job`: a `CommandLine` job with one task (`Frames=0`,
  `ChunkSize=1`) on the GPU pool/group, running `rna-engine build --spec ... --farm`.
- `render_job_info.job` + `render_plugin_info.job`: a `Nuke` job (`SceneFile`, `WriteNode`,
  `Version`, `BatchMode`) — or a `CommandLine` job running `rna-engine apply ... --frames
  <STARTFRAME>-<ENDFRAME>` — with `Frames=a-b`, `ChunkSize`, pool/group and
  `JobDependencies=<RNA_BUILD_JOB_ID>`.
- `submit_deadline.sh`: submits the build job with `deadlinecommand`, reads the `JobID=` line it
  prints, replaces the placeholder `<RNA_BUILD_JOB_ID>` and submits the render job.

The job environment (`NUKE_PATH`) goes into both jobs as `EnvironmentKeyValue<N>=NAME=value`.
Keys follow Deadline 10's manual-submission documentation (job info) and the Nuke / CommandLine
plug-in info keys used by Deadline's own submitters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rna_engine.errors import InputError

from .job import BUILD_STEP, RENDER_STEP, FarmJob, NukeRender, write_text_atomic

BUILD_JOB_ID_TOKEN = "<RNA_BUILD_JOB_ID>"
"""Placeholder in the render job's `JobDependencies`; the submitter replaces it with the build
job's id (`submit_deadline.sh` does)."""

BUILD_JOB_INFO = "build_job_info.job"
BUILD_PLUGIN_INFO = "build_plugin_info.job"
RENDER_JOB_INFO = "render_job_info.job"
RENDER_PLUGIN_INFO = "render_plugin_info.job"
SUBMIT_SCRIPT = "submit_deadline.sh"

_SUBMIT_SH = """#!/bin/sh
# Submit the RNA build job, then the render job that depends on it (Deadline 10).
# deadlinecommand prints a line JobID=<id> for a submitted job; that id replaces the
# placeholder {token} in render_job_info.job. Set DEADLINECOMMAND to override the command.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
deadline=${{DEADLINECOMMAND:-deadlinecommand}}
out=$("$deadline" "$here/{build_job}" "$here/{build_plugin}")
printf '%s\\n' "$out"
id=$(printf '%s\\n' "$out" | sed -n 's/^JobID=//p' | tr -d '\\r' | head -n 1)
if [ -z "$id" ]; then
    echo "submit_deadline.sh: no JobID= line from $deadline; build job not submitted" >&2
    exit 1
fi
sed "s/{token}/$id/" "$here/{render_job}" > "$here/render_job_info.submitted.job"
"$deadline" "$here/render_job_info.submitted.job" "$here/{render_plugin}"
"""


def quote_arguments(argv: Sequence[str]) -> str:
    """One `Arguments=` string: words with spaces or quotes are double-quoted."""
    words = []
    for word in argv:
        if word == "" or any(c.isspace() or c == '"' for c in word):
            words.append('"' + word.replace('"', '\\"') + '"')
        else:
            words.append(word)
    return " ".join(words)


def _environment(job: FarmJob) -> dict[str, str]:
    return {
        f"EnvironmentKeyValue{i}": f"{k}={v}" for i, (k, v) in enumerate(job.environment.items())
    }


def _common(job: FarmJob, step: str, pool: str, group: str) -> dict[str, str]:
    info = {"Name": f"{job.name} {step}", "BatchName": job.name}
    if pool:
        info["Pool"] = pool
    if group:
        info["Group"] = group
    info["Priority"] = str(job.priority)
    return info


def build_job_info(job: FarmJob) -> dict[str, str]:
    info = {"Plugin": "CommandLine", **_common(job, BUILD_STEP, job.gpu_pool, job.gpu_group)}
    info.update(
        Frames="0",
        ChunkSize="1",
        ConcurrentTasks="1",
        TaskTimeoutMinutes=str(max(1, job.build_timeout_s // 60)),
        OutputDirectory0=str(job.build_dir),
    )
    info.update(_environment(job))
    return info


def build_plugin_info(job: FarmJob) -> dict[str, str]:
    argv = job.build_argv(str(job.spec_path))
    return {
        "Executable": argv[0],
        "Arguments": quote_arguments(argv[1:]),
        "StartupDirectory": str(job.job_root),
        "ShellExecute": "False",
        "SingleFramesOnly": "False",
    }


def render_job_info(job: FarmJob) -> dict[str, str]:
    plugin = "Nuke" if isinstance(job.render, NukeRender) else "CommandLine"
    info = {"Plugin": plugin, **_common(job, RENDER_STEP, job.pool, job.group)}
    info.update(
        Frames=str(job.frames),
        ChunkSize=str(job.chunk),
        TaskTimeoutMinutes=str(max(1, job.render_timeout_s // 60)),
        JobDependencies=BUILD_JOB_ID_TOKEN,
    )
    if not isinstance(job.render, NukeRender):
        info["OutputFilename0"] = str(job.render.out)
    info.update(_environment(job))
    return info


def render_plugin_info(job: FarmJob) -> dict[str, str]:
    if isinstance(job.render, NukeRender):
        if not job.render.version:
            raise InputError(
                f"setting --nuke-version: {job.render.script.name} has no `version` line; "
                "Deadline's Nuke plug-in needs the Nuke version (e.g. 15.1)"
            )
        return {
            "SceneFile": str(job.render.script),
            "WriteNode": job.render.write_node,
            "Version": job.render.version,
            "BatchMode": "True",
            "ContinueOnError": "False",
            "NukeX": "False",
            "UseGpu": "False",
        }
    argv = job.render_argv("<STARTFRAME>-<ENDFRAME>")
    return {
        "Executable": argv[0],
        "Arguments": quote_arguments(argv[1:]),
        "StartupDirectory": str(job.job_root),
        "ShellExecute": "False",
        "SingleFramesOnly": "False",
    }


def format_info(info: Mapping[str, str]) -> str:
    """`Key=Value` lines; values must be single-line."""
    lines = []
    for key, value in info.items():
        if "\n" in value or "\r" in value:
            raise InputError(f"setting {key}: a Deadline value cannot span lines ({value!r})")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write(job: FarmJob, out_dir: Path) -> list[Path]:
    """Write the four info files and the submit script into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    files = {
        BUILD_JOB_INFO: format_info(build_job_info(job)),
        BUILD_PLUGIN_INFO: format_info(build_plugin_info(job)),
        RENDER_JOB_INFO: format_info(render_job_info(job)),
        RENDER_PLUGIN_INFO: format_info(render_plugin_info(job)),
        SUBMIT_SCRIPT: _SUBMIT_SH.format(
            token=BUILD_JOB_ID_TOKEN,
            build_job=BUILD_JOB_INFO,
            build_plugin=BUILD_PLUGIN_INFO,
            render_job=RENDER_JOB_INFO,
            render_plugin=RENDER_PLUGIN_INFO,
        ),
    }
    return [
        write_text_atomic(out_dir / name, text, 0o755 if name == SUBMIT_SCRIPT else 0o644)
        for name, text in files.items()
    ]
