"""OpenCue writer: an outline built with `opencue-pyoutline`, serialised to Cue's job-spec XML.

Layers: `BuildAtlas` — a `ShellCommand` (one frame) tagged `gpu`; `Render` — a `Shell` layer over
the frame range with `chunk` frames per task running `... -F #FRAME_START#-#FRAME_END# ...`,
depending on `BuildAtlas` (`depend_all`, LAYER_ON_LAYER). Cuebot releases before OpenCue PR #1467
set `#FRAME_END#` past the range when the range is not a multiple of the chunk (issue #1129), so
the remainder goes to a second layer `Render_tail` whose one task covers exactly the last frames.

The XML comes from `outline.backend.cue.serialize_simple` (raw commands, no `pycuerun` wrapper)
and is written offline; submit it with `cueadmin`/pycue against a Cuebot. The spec records the
submitting user, uid and facility of the machine that wrote it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from rna_engine.errors import InputError

from .job import BUILD_STEP, RENDER_STEP, FarmJob, FrameRange, write_text_atomic

SPEC_FILE = "opencue_job.xml"
FRAME_TOKEN = "#FRAME_START#-#FRAME_END#"
TAIL_SUFFIX = "_tail"


def _outline_modules() -> Any:
    try:
        import outline
        import outline.backend.cue
        import outline.cuerun
        import outline.modules.shell
    except ImportError as err:
        raise InputError(
            "farm opencue: needs opencue-pyoutline and packaging (pip install 'rna-atlas[farm]')"
        ) from err
    return outline


def shell_command(argv: list[str]) -> str:
    """A POSIX shell command line; Cue frame tokens stay unquoted (Cuebot replaces them first)."""
    return " ".join(word if word == FRAME_TOKEN else shlex.quote(word) for word in argv)


def render_layers(frames: FrameRange, chunk: int) -> list[tuple[str, FrameRange, int]]:
    """(layer name, range, chunk) of the render layers: whole chunks, then the remainder."""
    chunk = min(chunk, len(frames))
    whole = len(frames) // chunk * chunk
    layers = [(RENDER_STEP, FrameRange(frames.first, frames.first + whole - 1), chunk)]
    if whole < len(frames):
        tail = FrameRange(frames.first + whole, frames.last)
        layers.append((RENDER_STEP + TAIL_SUFFIX, tail, len(tail)))
    return layers


def job_name(job: FarmJob) -> str:
    """Cue job names take letters, digits, `_`, `.` and `-`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", job.name).strip("_")


def spec_xml(job: FarmJob) -> str:
    """The Cue job-spec XML of `job`, indented."""
    outline = _outline_modules()
    shell = outline.modules.shell
    ol = outline.Outline(
        job_name(job),
        frame_range=str(job.frames),
        shot=job.shot or job.build_name,
        show=job.show,
        user=job.user or None,
    )
    for key, value in job.environment.items():
        ol.set_env(key, value, pre=True)
    build = shell.ShellCommand(
        BUILD_STEP,
        command=shell_command(job.build_argv(str(job.spec_path))),
        tags=[job.gpu_group or "gpu"],
    )
    ol.add_layer(build)
    for name, frames, chunk in render_layers(job.frames, job.chunk):
        layer = shell.Shell(
            name,
            command=shell_command(job.render_argv(FRAME_TOKEN)),
            range=str(frames),
            chunk=chunk,
        )
        ol.add_layer(layer)
        layer.depend_all(build)
    launcher = outline.cuerun.OutlineLauncher(ol, user=job.user or ol.get_user())
    return indent_spec(outline.backend.cue.serialize_simple(launcher))


def indent_spec(raw: str) -> str:
    """Indent the elements of a serialised spec; the XML declaration and DOCTYPE stay verbatim.

    Only whitespace between elements changes (element text is untouched), so Cuebot reads the
    same document; the DOCTYPE's public id must survive byte for byte.
    """
    start = raw.index("<spec")
    root = ElementTree.fromstring(raw[start:])
    ElementTree.indent(root, space="  ")
    head = raw[:start].replace("?><!DOCTYPE", "?>\n<!DOCTYPE")
    return head + "\n" + ElementTree.tostring(root, encoding="unicode") + "\n"


def write(job: FarmJob, out_dir: Path) -> list[Path]:
    """Write `opencue_job.xml` into `out_dir`; returns its path."""
    return [write_text_atomic(Path(out_dir) / SPEC_FILE, spec_xml(job))]
