"""Open Job Description (`jobtemplate-2023-09`) writer: a Deadline Cloud style job bundle.

Bundle files:
- `template.yaml` — steps `BuildAtlas` (one task, `amount.worker.gpu >= 1`) and `Render`
  (`CHUNK[INT]` contiguous frame chunks, extension `TASK_CHUNKING`, depends on `BuildAtlas`).
- `parameter_values.yaml` — the job's values in Deadline Cloud's bundle format
  (`parameterValues: [{name, value}]`), read by `deadline bundle submit <bundle>`.
- `openjd_params.json` — the same values as a flat mapping for the reference runner:
  `openjd run template.yaml -p file://openjd_params.json --step Render --run-dependencies`.

Every path is a `PATH` job parameter with `objectType`/`dataFlow`, so path mapping (and job
attachments) rewrite it on the worker. The spec is reached as `{{Param.JobRoot}}/<spec>`: the
engine resolves the spec's relative paths against the spec's folder, i.e. the mapped job root.
No `PATH` parameter has a default (Deadline Cloud refuses absolute defaults); values come from the
values file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rna_engine.errors import InputError

from .job import BUILD_STEP, MAX_CHUNK, RENDER_STEP, FarmJob, NukeRender, write_text_atomic

SPECIFICATION = "jobtemplate-2023-09"
EXTENSIONS = ("TASK_CHUNKING",)
TEMPLATE_FILE = "template.yaml"
VALUES_FILE = "parameter_values.yaml"
RUNNER_PARAMS_FILE = "openjd_params.json"
FRAME_PARAM = "Frame"
CANCEL_NOTIFY_S = 60
"""Seconds between the stop signal and the kill when a task is cancelled or preempted."""

# Template parameter name → (role in FarmJob.paths(), objectType, dataFlow, description).
_PATH_PARAMS: dict[str, tuple[str, str, str, str]] = {
    "JobRoot": ("job_root", "DIRECTORY", "INOUT", "Shot folder holding the build spec"),
    "BuildDir": ("build_dir", "DIRECTORY", "OUT", "Cache version folder the build writes"),
    "NukeScript": ("script", "FILE", "IN", "Nuke script to render (RNA nodes as Groups)"),
    "Plate": ("plate", "FILE", "NONE", "Plate sequence pattern (####)"),
    "EditedAtlas": ("atlas", "FILE", "IN", "The painted atlas"),
    "ApplyOut": ("out", "FILE", "OUT", "Output sequence pattern of the comp (####)"),
}


def _path_params(job: FarmJob) -> dict[str, str]:
    """Template PATH parameter name → value, for the parameters this job uses."""
    paths = job.paths()
    return {name: paths[role] for name, (role, *_) in _PATH_PARAMS.items() if role in paths}


def parameter_values(job: FarmJob) -> dict[str, Any]:
    """Job parameter name → value (what the values files hold)."""
    values: dict[str, Any] = _path_params(job)
    values["Frames"] = str(job.frames)
    values["ChunkSize"] = job.chunk
    if isinstance(job.render, NukeRender):
        values["WriteNode"] = job.render.write_node
    if "NUKE_PATH" in job.environment:
        values["NukePath"] = job.environment["NUKE_PATH"]
    return values


def _ref(name: str) -> str:
    """An OpenJD format-string reference: `{{Param.Frames}}`."""
    return "{{" + name + "}}"


def _action(argv: list[str], timeout_s: int) -> dict[str, Any]:
    return {
        "command": argv[0],
        "args": argv[1:],
        "timeout": timeout_s,
        "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": CANCEL_NOTIFY_S},
    }


def template(job: FarmJob) -> dict[str, Any]:
    """The job template as a mapping (dump it as YAML or JSON)."""
    definitions: list[dict[str, Any]] = []
    for name in _path_params(job):
        _, object_type, data_flow, description = _PATH_PARAMS[name]
        definitions.append(
            {
                "name": name,
                "type": "PATH",
                "objectType": object_type,
                "dataFlow": data_flow,
                "description": description,
            }
        )
    definitions += [
        {
            "name": "Frames",
            "type": "STRING",
            "description": "Frames to render, first-last",
            "default": str(job.frames),
        },
        {
            "name": "ChunkSize",
            "type": "INT",
            "description": "Frames per render task",
            "default": job.chunk,
            "minValue": 1,
            "maxValue": MAX_CHUNK,
        },
    ]
    if isinstance(job.render, NukeRender):
        definitions.append(
            {
                "name": "WriteNode",
                "type": "STRING",
                "description": "Write node to execute",
                "default": job.render.write_node,
            }
        )
    variables = {k: v for k, v in job.environment.items() if k != "NUKE_PATH"}
    if "NUKE_PATH" in job.environment:
        definitions.append(
            {
                "name": "NukePath",
                "type": "PATH",
                "objectType": "DIRECTORY",
                "dataFlow": "IN",
                "description": "NUKE_PATH on the workers",
            }
        )
        variables["NUKE_PATH"] = "{{Param.NukePath}}"

    # Format strings stand in for the paths, so the runtime substitutes the mapped values.
    refs = {role: _ref("Param." + name) for name, (role, *_) in _PATH_PARAMS.items()}
    refs["spec"] = _ref("Param.JobRoot") + "/" + job.spec_relpath
    refs["write_node"] = _ref("Param.WriteNode")
    render_argv = job.render_argv(_ref("Task.Param." + FRAME_PARAM), refs)

    out: dict[str, Any] = {
        "specificationVersion": SPECIFICATION,
        "extensions": list(EXTENSIONS),
        "name": job.name,
        "parameterDefinitions": definitions,
    }
    if variables:
        out["jobEnvironments"] = [
            {
                "name": "RnaEnvironment",
                "description": "Environment of every RNA task",
                "variables": variables,
            }
        ]
    out["steps"] = [
        {
            "name": BUILD_STEP,
            "description": "Fit the neural atlas and write the EXR cache (GPU, resumable)",
            "hostRequirements": {"amounts": [{"name": "amount.worker.gpu", "min": job.gpus}]},
            "script": {
                "actions": {"onRun": _action(job.build_argv(refs["spec"]), job.build_timeout_s)}
            },
        },
        {
            "name": RENDER_STEP,
            "description": "Render the comp in contiguous frame chunks",
            "dependencies": [{"dependsOn": BUILD_STEP}],
            "parameterSpace": {
                "taskParameterDefinitions": [
                    {
                        "name": FRAME_PARAM,
                        "type": "CHUNK[INT]",
                        "range": "{{Param.Frames}}",
                        "chunks": {
                            "defaultTaskCount": "{{Param.ChunkSize}}",
                            "rangeConstraint": "CONTIGUOUS",
                        },
                    }
                ]
            },
            "script": {"actions": {"onRun": _action(render_argv, job.render_timeout_s)}},
        },
    ]
    return out


def _yaml_dump(data: Any) -> str:
    try:
        import yaml
    except ImportError as err:
        raise InputError("farm openjd: needs PyYAML (pip install 'rna-atlas[farm]')") from err
    return str(yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True))


def write(job: FarmJob, out_dir: Path) -> list[Path]:
    """Write the bundle files into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    values = parameter_values(job)
    files = {
        TEMPLATE_FILE: _yaml_dump(template(job)),
        VALUES_FILE: _yaml_dump(
            {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}
        ),
        RUNNER_PARAMS_FILE: json.dumps(values, indent=2) + "\n",
    }
    return [write_text_atomic(out_dir / name, text) for name, text in files.items()]
