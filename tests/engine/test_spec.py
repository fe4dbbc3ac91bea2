"""The build spec as a contract (docs/spec.md): the path rule, a cache's `build.json` fed back to
`--spec`, the inputs resolved once, and the ROI checked at the working size."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from rna_engine.cli import main
from rna_engine.errors import InputError
from rna_engine.media import io
from rna_engine.media.cache import BuildPaths
from rna_engine.pipeline import build_hash, prepare, validate_inputs
from rna_engine.settings import (
    SPEC_VERSION,
    BuildSpec,
    absolute_paths,
    load_spec,
    spec_from_dict,
    spec_schema,
    spec_to_dict,
)
from rna_engine.stages.inputs import (
    MIN_ROI_WORKING_PX,
    min_roi_side_px,
    resolve_inputs,
    roi_working,
)
from rna_engine.synthetic.shots import make_shot, write_shot

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "preset": "draft",
    "ingest": {"working_long_side": 64},
    # the fewest steps whose fit passes the quality gates (narrower fields collapse T)
    "fit": {
        "iterations": 150,
        "pretrain_steps": 100,
        "batch_size": 512,
        "log_every": 50,
        "scale_with_shot": False,
    },
    "refine": {"iterations": 20},
    "matte": {"closed_form_iterations": 0},
}


def _shot(folder: Path, frames: int = 2) -> dict:
    shot = make_shot("tiny", seed=3, frames=frames)
    return write_shot(shot, folder, truth=False, srgb=False)


def _hand_spec(folder: Path, manifest: dict) -> Path:
    """A hand-written spec beside the shot, every path relative to its folder."""
    spec = {
        "spec_version": 1,
        "plate": manifest["plate"],
        "roi": manifest["roi"],
        "reference_frame": manifest["reference_frame"],
        "out": "cache",
        "name": "tiny",
        "device": "cpu",
        "settings": TINY,
    }
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def _build(spec: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["build", "--spec", str(spec)]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_cache_build_json_reruns_from_anywhere_and_a_moved_shot_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shot = tmp_path / "job" / "shot"
    spec_path = _hand_spec(shot, _shot(shot))
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")  # the spec's paths are relative to its folder, not here
    root = _build(spec_path, capsys)
    assert root == shot / "cache" / "tiny" / "v001"
    paths = BuildPaths(root)
    record = json.loads(paths.build_json.read_text())
    digest = json.loads(paths.status_json.read_text())["build_hash"]
    assert record["plate"] == str(shot / "plate" / "plate.####.exr")  # stored absolute
    assert record["roi"] == str(shot / "roi.exr") and record["out"] == str(shot / "cache")
    assert record["build_hash"] == digest and record["spec_version"] == SPEC_VERSION
    atlas_mtime = paths.atlas_exr.stat().st_mtime_ns

    # The cache's build.json, copied elsewhere and run from a third folder: same build, no work.
    copy = tmp_path / "elsewhere" / "build.json"
    copy.parent.mkdir()
    shutil.copy(paths.build_json, copy)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert _build(copy, capsys) == root
    assert paths.atlas_exr.stat().st_mtime_ns == atlas_mtime
    assert json.loads(paths.status_json.read_text())["build_hash"] == digest
    assert not (shot / "cache" / "tiny" / "v002").exists()

    # The shot moved with its cache: the hand-written spec finds its inputs and the done build.
    moved = tmp_path / "moved" / "shot"
    moved.parent.mkdir()
    shutil.move(shot, moved)
    monkeypatch.chdir(tmp_path)
    moved_root = _build(moved / "spec.json", capsys)
    assert moved_root == moved / "cache" / "tiny" / "v001"
    assert BuildPaths(moved_root).atlas_exr.stat().st_mtime_ns == atlas_mtime
    assert json.loads(BuildPaths(moved_root).status_json.read_text())["build_hash"] == digest


def test_build_record_fields_are_ignored_but_unknown_fields_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = {
        **spec_to_dict(BuildSpec(plate="p.####.exr", roi="roi.exr", reference_frame=3)),
        "version": 4,
        "device": "cuda:0",
        "build_hash": "0123456789abcdef",
        "engine_version": "0.0.1",
        "cache_format_version": 1,
        "torch": "2.5.0",
    }
    path = tmp_path / "build.json"
    path.write_text(json.dumps(record))
    caplog.set_level(logging.DEBUG, logger="rna_engine.settings")
    spec = load_spec(path)
    assert spec.version == 4  # the record's version: a re-run resumes or returns that folder
    assert spec.device == "auto"  # what the build ran on is not a request
    assert "build_hash" in caplog.text and "cuda:0" in caplog.text
    path.write_text(json.dumps({**record, "colour_space": "ACES"}))
    with pytest.raises(InputError, match=r"^setting colour_space: unknown setting$"):
        load_spec(path)
    path.write_text(json.dumps({**record, "settings": {"fit": {"iters": 5}}}))
    with pytest.raises(InputError, match=r"^setting fit\.iters: unknown setting$"):
        load_spec(path)
    path.write_text(json.dumps({**record, "spec_version": 2}))
    with pytest.raises(InputError, match=r"^setting spec_version: 2 is not a version"):
        load_spec(path)


def test_path_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"plate": "plate/p.####.exr", "roi": "../mattes/roi.exr", "reference_frame": 1}
    folder = tmp_path / "shots" / "a"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({**spec, "holdout": "/abs/h.####.exr"}))
    monkeypatch.chdir(tmp_path)
    loaded = load_spec(Path("shots/a/spec.json"))  # a relative spec path: cwd, then its folder
    assert loaded.plate == str(folder / "plate/p.####.exr")
    assert loaded.roi == str(tmp_path / "shots/mattes/roi.exr")
    assert loaded.holdout == "/abs/h.####.exr" and loaded.out == str(folder / "rna_cache")
    assert loaded.root == str(folder)
    assert absolute_paths(loaded, Path("/elsewhere")) == loaded  # idempotent
    # `root` moves the base; a relative root is relative to the spec's folder
    (folder / "spec.json").write_text(json.dumps({**spec, "root": "../b"}))
    assert load_spec(folder / "spec.json").plate == str(tmp_path / "shots/b/plate/p.####.exr")
    # command-line arguments: relative to the current directory
    from rna_engine.commands.build import spec_from_args

    args = _cli_args(["--plate", "p.####.exr", "--roi", "r.exr", "--ref", "1", "--out", "c"])
    cli = spec_from_args(args)
    assert (cli.plate, cli.roi, cli.out) == tuple(
        str(tmp_path / n) for n in ("p.####.exr", "r.exr", "c")
    )
    ocio = spec_from_dict({**spec, "settings": {"ingest": {"ocio_config": "ocio://default"}}})
    assert absolute_paths(ocio, tmp_path).settings.ingest.ocio_config == "ocio://default"


def _cli_args(argv: list[str]):
    import argparse

    from rna_engine.commands.build import populate

    parser = argparse.ArgumentParser()
    populate(parser)
    return parser.parse_args(argv)


def test_inputs_are_resolved_once_into_absolute_frame_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _shot(tmp_path / "shot", frames=4)
    shot = tmp_path / "shot"
    io.write_exr(shot / "hold.exr", {"A": np.zeros((48, 64))})
    monkeypatch.chdir(shot)
    spec = spec_from_dict(
        {
            "plate": manifest["plate"],
            "roi": "roi.exr",
            "reference_frame": 1002,
            "frames": "1001-1003",
            "holdout": "hold.exr",
        }
    )
    inputs = resolve_inputs(spec)  # a spec built in code: relative to the cwd, like the CLI
    plate = shot / "plate"
    assert inputs.plate == {n: plate / f"plate.{n}.exr" for n in (1001, 1002, 1003)}
    assert inputs.frame_range == "1001-1003" and inputs.reference_index == 1
    assert inputs.roi == shot / "roi.exr" and inputs.plate_size == (64, 48)
    assert inputs.holdout == {n: shot / "hold.exr" for n in (1001, 1002, 1003)}  # a still
    assert inputs.spec.out == str(shot / "rna_cache")
    with pytest.raises(InputError, match=r"plate\.1005\.exr: frame 1005 is missing"):
        resolve_inputs(spec_from_dict({**spec_to_dict(spec), "frames": "1004-1005"}))
    roi_seq = spec_from_dict({**spec_to_dict(spec), "roi": "mattes/roi.####.exr"})
    with pytest.raises(InputError, match=r"mattes/roi\.1002\.exr: ROI not found"):
        resolve_inputs(roi_seq)


def test_build_hash_follows_content_not_location(tmp_path: Path) -> None:
    manifest = _shot(tmp_path / "a", frames=3)
    spec = {"plate": manifest["plate"], "roi": "roi.exr", "reference_frame": 1001}

    def digest(folder: Path, **extra: object) -> str:
        return build_hash(resolve_inputs(absolute_paths(spec_from_dict({**spec, **extra}), folder)))

    before = digest(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: same names, sizes and mtimes
    assert digest(tmp_path / "b") == before
    assert digest(tmp_path / "b", frames="1001-1002") != before
    assert digest(tmp_path / "b", settings={"fit": {"iterations": 9}}) != before
    frame = tmp_path / "b" / "plate" / "plate.1002.exr"
    frame.write_bytes(frame.read_bytes() + b"\0")
    assert digest(tmp_path / "b") != before


def _plate_854(folder: Path, roi: np.ndarray) -> Path:
    """Two grey 854x480 plate frames and an ROI; returns the ROI path."""
    for number in (1, 2):
        io.write_exr(
            folder / f"plate.{number:04d}.exr", {c: np.full((480, 854), 0.18) for c in "RGB"}
        )
    io.write_exr(folder / "roi.exr", {"A": roi})
    return folder / "roi.exr"


def _roi_spec(folder: Path) -> BuildSpec:
    return spec_from_dict(
        {
            "plate": str(folder / "plate.####.exr"),
            "roi": str(folder / "roi.exr"),
            "reference_frame": 1,
            "out": str(folder / "cache"),
            "settings": {"preset": "standard"},  # working size 768x432 (scale 1.112)
        }
    )


@pytest.mark.parametrize(
    ("preset", "working", "kept", "side"),
    [
        ("standard", (768, 432), 1, 11),  # ceil((8 + 1) * 854 / 768): a handful of pixels
        ("draft", (384, 216), 0, 21),  # ceil((8 + 1) * 854 / 384): gone once resampled
    ],
)
def test_one_pixel_roi_exits_2_naming_file_frame_and_smallest_size(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    preset: str,
    working: tuple[int, int],
    kept: int,
    side: int,
) -> None:
    roi = np.zeros((480, 854))
    roi[240, 427] = 1.0  # non-empty at plate resolution
    _plate_854(tmp_path, roi)
    assert min_roi_side_px((854, 480), working) == side
    argv = [
        "build",
        "--plate",
        str(tmp_path / "plate.####.exr"),
        "--roi",
        str(tmp_path / "roi.exr"),
    ]
    argv += ["--ref", "1", "--out", str(tmp_path / "cache"), "--device", "cpu", "--preset", preset]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    roi_path = tmp_path / "roi.exr"
    assert f"{roi_path}: the ROI keeps {kept} of the {MIN_ROI_WORKING_PX} pixels" in err[0]
    assert f"{working[0]}x{working[1]} on reference frame 1" in err[0]
    assert f"at least {side}x{side} plate pixels" in err[0]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("offset", [(0, 0), (3, 7), (100, 200), (469, 843)])
def test_roi_just_above_the_limit_passes_wherever_it_lies(tmp_path: Path, offset: tuple) -> None:
    side = min_roi_side_px((854, 480), (768, 432))
    y, x = min(offset[0], 480 - side), min(offset[1], 854 - side)
    roi = np.zeros((480, 854))
    roi[y : y + side, x : x + side] = 1.0
    _plate_854(tmp_path, roi)
    inputs = resolve_inputs(_roi_spec(tmp_path))
    assert roi_working(roi.astype(np.float32), 768, 432).sum() >= MIN_ROI_WORKING_PX
    validate_inputs(inputs, inputs.spec.settings.ingest)  # passes
    roi[y : y + side, x : x + side] = 0.0
    roi[y : y + 4, x : x + 4] = 1.0  # 4x4 plate pixels: ~13 working pixels
    io.write_exr(tmp_path / "roi.exr", {"A": roi})
    with pytest.raises(InputError, match=rf"the ROI keeps \d+ of the {MIN_ROI_WORKING_PX} pixels"):
        prepare(_roi_spec(tmp_path))


# -- documentation -------------------------------------------------------------------------


def _doc_example() -> dict:
    text = (REPO / "docs" / "spec.md").read_text()
    block = re.search(r"<!-- example -->\s*```json\n(.*?)```", text, re.S)
    assert block, "docs/spec.md: no ```json block after <!-- example -->"
    return json.loads(block.group(1))


def _check(schema: dict, value: object, where: str) -> None:
    """The subset of JSON Schema docs/build.schema.json uses: object/properties, type, enum."""
    kinds = {"object": dict, "string": str, "integer": int, "number": (int, float), "boolean": bool}
    kind = schema.get("type")
    if kind:
        assert isinstance(value, kinds[kind]), f"{where}: expected {kind}"
        if kind in ("integer", "number"):
            assert not isinstance(value, bool), f"{where}: expected {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if kind == "object":
        props = schema.get("properties", {})
        assert isinstance(value, dict)
        for key, item in value.items():
            assert key in props, f"{where}.{key}: not in the schema"
            _check(props[key], item, f"{where}.{key}")
        for key in schema.get("required", []):
            assert key in value, f"{where}.{key}: required"


def test_schema_file_is_current_and_the_documented_example_loads(tmp_path: Path) -> None:
    committed = json.loads((REPO / "docs" / "build.schema.json").read_text())
    assert committed == spec_schema(), (
        "docs/build.schema.json is stale: regenerate it with\n  python -c 'import json; from "
        "rna_engine.settings import spec_schema; print(json.dumps(spec_schema(), indent=2, "
        "ensure_ascii=False))' > docs/build.schema.json"
    )
    example = _doc_example()
    _check(committed, example, "spec")
    (tmp_path / "spec.json").write_text(json.dumps(example))
    spec = load_spec(tmp_path / "spec.json")
    assert spec.plate == str(tmp_path / example["plate"])
    with pytest.raises(AssertionError, match="colour_space: not in the schema"):
        _check(committed, {**example, "colour_space": 1}, "spec")


def test_spec_md_documents_every_field() -> None:
    text = (REPO / "docs" / "spec.md").read_text()
    top = spec_schema()["properties"]
    for name in [*top, "build_hash", "engine_version", "cache_format_version", "torch"]:
        assert f"| `{name}` |" in text, f"docs/spec.md: field {name} is not in a table"
    for group, schema in top["settings"]["properties"].items():
        if schema.get("type") == "object":
            assert f"`settings.{group}`" in text, f"docs/spec.md: settings.{group} missing"


def test_service_applies_the_path_rule_at_submit(tmp_path: Path) -> None:
    from rna_engine.service import ProtocolError, Service

    svc = Service(tmp_path / "home", runner=lambda spec, ctx: None)
    body = {"plate": "plate/p.####.exr", "roi": "roi.exr", "reference_frame": 1, "out": "c"}
    with pytest.raises(ProtocolError, match="setting plate: relative path without root"):
        svc._submit(body)
    with pytest.raises(ProtocolError, match=r"setting root: 'shots' is not absolute"):
        svc._submit({**body, "root": "shots"})
    ocio = {"settings": {"ingest": {"ocio_config": "studio.ocio"}}}
    absolute = {k: str(tmp_path / v) for k, v in body.items() if k != "reference_frame"}
    with pytest.raises(ProtocolError, match="setting settings.ingest.ocio_config: relative"):
        svc._submit({**body, **absolute, **ocio})
    job_id = svc._submit({**body, "root": str(tmp_path)})["job_id"]
    spec = svc._jobs[job_id].spec
    assert (spec.plate, spec.roi, spec.out) == (
        str(tmp_path / "plate/p.####.exr"),
        str(tmp_path / "roi.exr"),
        str(tmp_path / "c"),
    )
    # the same build sent with absolute paths is the same job
    same = svc._submit({**body, **absolute, "root": str(tmp_path)})
    assert same == {"job_id": job_id, "state": "queued", "existing": True}
