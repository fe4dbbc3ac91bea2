"""The one farm job model (docs/farm.md) every writer (OpenJD, Deadline 10, OpenCue) renders.

A job is two steps:

1. `BuildAtlas` — one GPU task: `rna-engine build --spec <job root>/<spec> --farm`. It prints
   `openjd_progress:` / `openjd_status:` lines and `openjd_fail: <reason>` on bad input. A retry
   after preemption reruns the same command; the pipeline resumes from its checkpoints because the
   spec pins the cache version (`pin_version`), so every attempt writes the same `v###` folder.
2. `Render` — the frame range cut into contiguous chunks, each running either
   `nuke -x -F a-b -X <Write> <script>` (`NukeRender`) or, for pipelines without Nuke render
   licences, `rna-engine apply --build <version folder> --atlas <edited> --plate <plate>
   --out <pattern> --frames a-b` (`ApplyRender`). It depends on `BuildAtlas`.

Paths in the model are absolute. The job root is the folder relative spec paths resolve against
(`BuildSpec.root`, by default the spec file's folder), so farm path mapping only has to rewrite it.
Argument lists are built by `build_argv` / `render_argv` from a mapping of path strings, so a
writer can substitute its own placeholders (OpenJD's `{{Param.JobRoot}}`).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rna_engine.errors import InputError
from rna_engine.media.cache import atomic_path, choose_version
from rna_engine.settings import BuildSpec, load_spec

log = logging.getLogger(__name__)

BUILD_STEP = "BuildAtlas"
RENDER_STEP = "Render"
KINDS = ("openjd", "deadline", "opencue")
"""Farm systems with a writer."""

MAX_CHUNK = 150
"""Largest chunk OpenJD's TASK_CHUNKING accepts (`defaultTaskCount` ≤ 150)."""

_NO_HASH = "rna-farm:no-hash"
"""Build hash passed to `choose_version`: matches no build, so version 0 becomes the next free one."""

_NUKE_VERSION = re.compile(r"^\s*version\s+(\d+)\.(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class FrameRange:
    """A contiguous, inclusive frame range (farm chunks are contiguous `a-b` ranges)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise InputError(f"frames {self.first}-{self.last}: range runs backwards")

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def chunks(self, size: int) -> list[FrameRange]:
        """Consecutive chunks of `size` frames; the last one may be shorter."""
        return [
            FrameRange(start, min(start + size - 1, self.last))
            for start in range(self.first, self.last + 1, size)
        ]


def parse_frames(text: str) -> FrameRange:
    """A farm frame range: one contiguous `first-last` (or a single frame), Nuke's syntax.

    Gaps and steps (`1-10x2`, `1-5 9`) are refused: every farm writes chunks as `a-b` ranges,
    which would render the missing frames.
    """
    from rna_engine.media.io import parse_frame_range

    frames = parse_frame_range(text)
    if frames != list(range(frames[0], frames[-1] + 1)):
        raise InputError(f"frames {text!r}: a farm job takes one contiguous range (first-last)")
    return FrameRange(frames[0], frames[-1])


@dataclass(frozen=True)
class NukeRender:
    """Render step that executes one Write node of a Nuke script (`nuke -x -F a-b -X Write`)."""

    script: Path
    """The `.nk` script (its RNA nodes saved as Groups, so a worker without the plug-in renders)."""
    write_node: str
    """Name of the Write node to execute (`-X`)."""
    executable: tuple[str, ...] = ("nuke",)
    """Nuke command on the workers, split into words (`("nuke",)`, `("Nuke15.1", "-i")`)."""
    version: str = ""
    """Nuke `major.minor` (Deadline's Nuke plug-in picks the executable by it); '' = unknown."""

    def argv(self, frames: str, paths: Mapping[str, str]) -> list[str]:
        write = paths.get("write_node", self.write_node)
        return [*self.executable, "-x", "-F", frames, "-X", write, paths["script"]]


@dataclass(frozen=True)
class ApplyRender:
    """Render step that runs `rna-engine apply` (RNAApply's reference implementation) — no Nuke."""

    atlas: Path
    """The edited (painted) atlas image."""
    plate: Path
    """Plate sequence pattern (the build spec's plate, resolved)."""
    out: Path
    """Output sequence pattern (`comp.####.exr`)."""

    def argv(self, engine: Sequence[str], frames: str, paths: Mapping[str, str]) -> list[str]:
        return [
            *engine,
            "apply",
            "--build",
            paths["build_dir"],
            "--atlas",
            paths["atlas"],
            "--plate",
            paths["plate"],
            "--out",
            paths["out"],
            "--frames",
            frames,
        ]


@dataclass(frozen=True)
class FarmJob:
    """Everything a farm writer needs; paths absolute, version pinned."""

    name: str
    """Job name shown on the farm (`RNA shot v003`)."""
    build_name: str
    """The spec's build name (cache folder under the cache root)."""
    version: int
    """Pinned cache version (> 0)."""
    job_root: Path
    """Folder the spec's relative paths resolve against; the farm maps this one path."""
    spec_path: Path
    """The pinned build spec; inside `job_root`."""
    build_dir: Path
    """Cache version folder the build writes (`<cache root>/<build name>/v###`)."""
    frames: FrameRange
    """Frames the render step renders."""
    chunk: int
    """Frames per render task."""
    render: NukeRender | ApplyRender
    engine: tuple[str, ...] = ("rna-engine",)
    """The engine command on the workers, split into words (`("python", "-m", "rna_engine")`)."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """Job environment (`NUKE_PATH`), set on every task."""
    gpus: int = 1
    """GPUs the build task needs."""
    pool: str = ""
    """Deadline pool of the render job ('' = none)."""
    group: str = ""
    """Deadline group of the render job ('' = none)."""
    gpu_pool: str = ""
    """Deadline pool of the GPU build job ('' = none)."""
    gpu_group: str = "gpu"
    """Deadline group of the GPU build job ('' = none); OpenCue tag of the build layer."""
    priority: int = 50
    """Deadline priority 0..100."""
    build_timeout_s: int = 12 * 3600
    """Longest a build task may run before the farm kills it."""
    render_timeout_s: int = 2 * 3600
    """Longest one render chunk may run."""
    user: str = ""
    """Submitting user (OpenCue; '' = the current login)."""
    show: str = "rna"
    """OpenCue show."""
    shot: str = ""
    """OpenCue shot ('' = the build name)."""

    def __post_init__(self) -> None:
        if not 1 <= self.chunk <= MAX_CHUNK:
            raise InputError(f"setting chunk: {self.chunk} is not in 1..{MAX_CHUNK}")
        if self.version < 1:
            raise InputError(f"setting version: {self.version} is not pinned (must be >= 1)")
        if not 0 <= self.priority <= 100:
            raise InputError(f"setting priority: {self.priority} is not in 0..100")
        if not self.engine:
            raise InputError("setting engine: empty command")

    @property
    def spec_relpath(self) -> str:
        """The spec's path relative to the job root, with `/` separators."""
        return self.spec_path.relative_to(self.job_root).as_posix()

    def paths(self) -> dict[str, str]:
        """Absolute path strings by role: job_root, spec, build_dir, script | atlas, plate, out."""
        out = {
            "job_root": str(self.job_root),
            "spec": str(self.spec_path),
            "build_dir": str(self.build_dir),
        }
        if isinstance(self.render, NukeRender):
            out["script"] = str(self.render.script)
        else:
            out.update(atlas=str(self.render.atlas), plate=str(self.render.plate))
            out["out"] = str(self.render.out)
        return out

    def build_argv(self, spec: str) -> list[str]:
        """The build task's command line."""
        return [*self.engine, "build", "--spec", spec, "--farm"]

    def render_argv(self, frames: str, paths: Mapping[str, str] | None = None) -> list[str]:
        """A render task's command line for `frames` (`1001-1010` or a farm's frame token)."""
        paths = self.paths() if paths is None else paths
        if isinstance(self.render, NukeRender):
            return self.render.argv(frames, paths)
        return self.render.argv(self.engine, frames, paths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the bundle's `job.json`)."""
        data = dataclasses.asdict(self)
        data["render"]["kind"] = "nuke" if isinstance(self.render, NukeRender) else "apply"
        data["frames"] = str(self.frames)
        data["environment"] = dict(self.environment)
        return json.loads(json.dumps(data, default=str))


def absolute(path: str | Path) -> Path:
    """`path` made absolute and normalised (`..` removed), symlinks kept."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> Path:
    """Write `text` atomically with permission bits `mode` (a temporary file is private)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)
    return Path(path)


def nuke_version_of(script: Path) -> str:
    """`major.minor` from a `.nk` script's `version 15.1 v2` line, or '' when absent."""
    try:
        with Path(script).open(encoding="utf-8", errors="replace") as fh:
            head = fh.read(64 * 1024)
    except OSError as err:
        raise InputError(f"{script}: cannot read the Nuke script ({err.strerror})") from err
    m = _NUKE_VERSION.search(head)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def job_root_of(spec: BuildSpec, spec_path: Path) -> Path:
    """The spec's folder: relative spec paths resolve against it unless the spec sets `root`."""
    folder = absolute(spec_path).parent
    if spec.root and absolute(spec.root) != folder:
        log.warning(
            "%s: root %s is not the spec's folder; farm path mapping will not rewrite it",
            spec_path.name,
            spec.root,
        )
    return folder


def pin_version(spec_path: Path, spec: BuildSpec, reserve: bool = True) -> BuildSpec:
    """Give a spec with `version: 0` an explicit version, written back into the spec file.

    The next free version of the build is chosen (`cache.choose_version`); with `reserve` its
    folder is created, so a second bundle or a local build cannot take the same number. Only the
    `version` key of the file changes. A farm retry then reruns the same spec on the same folder
    and the pipeline resumes from its checkpoints.
    """
    if spec.version > 0:
        return spec
    try:
        raw = json.loads(spec_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{spec_path}: cannot re-read the build spec ({err})") from err
    cache_root = Path(spec.out)  # absolute: `load_spec`
    try:
        for _ in range(100):
            paths = choose_version(cache_root, spec.name, 0, _NO_HASH)
            if not reserve:
                break
            try:
                paths.root.mkdir(parents=True)
                break
            except FileExistsError:  # another submitter took it a moment ago: take the next
                continue
        else:
            raise InputError(f"{paths.root}: exists but is not a version folder")
        raw["version"] = paths.version
        mode = stat.S_IMODE(spec_path.stat().st_mode)
        write_text_atomic(spec_path, json.dumps(raw, indent=2) + "\n", mode)
    except InputError:  # `OutputError` (an `OSError` too) already names the file
        raise
    except OSError as err:
        raise InputError(f"{err.filename or spec_path}: cannot write ({err.strerror})") from err
    log.info("%s: pinned cache version v%03d", spec_path.name, paths.version)
    return dataclasses.replace(spec, version=paths.version)


def make_job(
    spec_path: Path,
    *,
    frames: str = "",
    chunk: int = 10,
    script: Path | None = None,
    write_node: str = "",
    apply_atlas: Path | None = None,
    apply_out: Path | None = None,
    nuke: Sequence[str] = ("nuke",),
    nuke_version: str = "",
    engine: Sequence[str] = ("rna-engine",),
    nuke_path: str = "",
    reserve: bool = True,
    require_nuke_version: bool = False,
    **options: Any,
) -> FarmJob:
    """Read a build spec, pin its version and describe the farm job.

    Args:
        spec_path: `build.json`; relative paths in it resolve against its folder (the job root).
        frames: render range `first-last`; '' = the spec's frame range.
        chunk: frames per render task.
        script, write_node: Nuke render step (`nuke -x -X write_node script`).
        apply_atlas, apply_out: `rna-engine apply` render step instead of Nuke.
        nuke, engine: the commands on the workers, split into words.
        nuke_version: Nuke `major.minor`; '' = read from the script's header.
        nuke_path: `NUKE_PATH` for the workers ('' = not set).
        reserve: create the pinned version folder now.
        require_nuke_version: refuse a Nuke render whose version is unknown (Deadline needs it).
        options: other `FarmJob` fields (pool, group, gpu_pool, gpu_group, priority, ...).
    """
    spec_path = absolute(spec_path)
    spec = load_spec(spec_path)
    if not 1 <= chunk <= MAX_CHUNK:  # checked before the spec is touched
        raise InputError(f"setting chunk: {chunk} is not in 1..{MAX_CHUNK}")
    if not 0 <= options.get("priority", 50) <= 100:
        raise InputError(f"setting priority: {options['priority']} is not in 0..100")
    if (script is None) == (apply_atlas is None):
        raise InputError("farm: give either --script/--write (Nuke) or --apply-atlas/--apply-out")
    frame_text = frames or spec.frames
    if not frame_text:
        raise InputError(f"setting frames: {spec_path.name} has no frame range; pass --frames")
    render_frames = parse_frames(frame_text)
    if spec.frames:
        from rna_engine.media.io import parse_frame_range

        built = set(parse_frame_range(spec.frames))
        missing = [f for f in render_frames if f not in built]
        if missing:
            raise InputError(
                f"setting frames: frame {missing[0]} is outside the build's range {spec.frames}"
            )
    render: NukeRender | ApplyRender
    if script is not None:
        if not write_node:
            raise InputError("setting --write: name the Write node to render")
        script = absolute(script)
        if not script.is_file():
            raise InputError(f"{script}: Nuke script not found")
        render = NukeRender(
            script=script,
            write_node=write_node,
            executable=tuple(nuke),
            version=nuke_version or nuke_version_of(script),
        )
        if require_nuke_version and not render.version:
            raise InputError(
                f"setting --nuke-version: {script.name} has no `version` line; "
                "Deadline's Nuke plug-in needs the Nuke version (e.g. 15.1)"
            )
    else:
        assert apply_atlas is not None
        if apply_out is None:
            raise InputError("setting --apply-out: give the output pattern (comp.####.exr)")
        apply_atlas = absolute(apply_atlas)
        if not apply_atlas.is_file():
            raise InputError(f"{apply_atlas}: edited atlas not found")
        render = ApplyRender(
            atlas=apply_atlas,
            plate=absolute(spec.plate),
            out=absolute(apply_out),
        )
    job_root = job_root_of(spec, spec_path)
    spec = pin_version(spec_path, spec, reserve=reserve)
    build_dir = absolute(spec.out) / spec.name / f"v{spec.version:03d}"
    environment = {"NUKE_PATH": str(absolute(nuke_path))} if nuke_path else {}
    options.setdefault("user", os.environ.get("USER") or getpass.getuser())
    return FarmJob(
        name=f"RNA {spec.name} v{spec.version:03d}",
        build_name=spec.name,
        version=spec.version,
        job_root=job_root,
        spec_path=spec_path,
        build_dir=build_dir,
        frames=render_frames,
        chunk=chunk,
        render=render,
        engine=tuple(engine),
        environment=environment,
        **options,
    )
