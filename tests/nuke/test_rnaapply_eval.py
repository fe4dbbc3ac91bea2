"""RNAApply.gizmo evaluated node by node (nkeval) agrees with `rna-engine apply`'s math.

A small real cache is written to tmp_path (smooth random UVs reaching past the atlas edges, a
soft matte with an occluder, shade ≠ 1, one frame with a data window); the painted atlas is a
2× larger EXR with a painted rectangle. The parsed gizmo is evaluated with numpy for each mode,
output and filter and compared with `rna_engine.apply.apply_frame` (what `rna-engine apply`
writes) to 1e-5.
"""

from __future__ import annotations

import re
from pathlib import Path

import nkeval
import nkparse
import numpy as np
import pytest

from rna_engine import CACHE_FORMAT_VERSION
from rna_engine.apply import APPLY_FILTERS, ApplySettings, apply_frame, read_edited_atlas
from rna_engine.cli import main
from rna_engine.media import io
from rna_engine.media.cache import MASK, MATTE, SHADE, UV_U, UV_V, BuildPaths
from rna_engine.media.stmap import identity_stmap

GIZMO = Path(__file__).resolve().parents[2] / "gizmos" / "RNAApply.gizmo"
H, W = 30, 40
FRAMES = (1001, 1002)
OUTPUT_NAMES = {
    "comp": "comp",
    "paint": "paint element",
    "delta": "delta",
    "matte": "matte overlay",
}


@pytest.fixture(scope="module")
def gizmo() -> nkparse.Node:
    return nkparse.parse_file(GIZMO).groups()[0]


@pytest.fixture(scope="module")
def shot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("rnaapply")
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    uv = identity_stmap(H, W).astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 4)
    uv[..., 0] += 0.06 * np.sin(2 * np.pi * y / H + phase[0]) + 0.04 * np.cos(x / 7 + phase[1])
    uv[..., 1] += 0.05 * np.cos(2 * np.pi * x / W + phase[2]) - 0.03 * np.sin(y / 5 + phase[3])
    matte = np.clip((13.0 - np.hypot(x - 20, y - 15)) / 5.0, 0.0, 1.0)
    matte[:, 24:27] *= 0.2  # an occluder crossing the ROI
    shade = np.stack(
        [0.8 + 0.3 * np.sin(x / 9), 1.0 + 0.2 * np.cos(y / 6), 1.2 - 0.1 * np.sin((x + y) / 11)],
        axis=-1,
    )
    atlas = rng.uniform(0.05, 0.95, (H, W, 4))
    plate = rng.uniform(0.0, 1.0, (H, W, 3))

    paths = BuildPaths(root / "shot" / "v001")
    io.write_rgba_exr(paths.atlas_exr, atlas.astype(np.float32), compression="zip")
    channels = {
        UV_U: uv[..., 0],
        UV_V: uv[..., 1],
        MATTE: matte,
        MASK: (matte > 0.5) * 1.0,
        SHADE[0]: shade[..., 0],
        SHADE[1]: shade[..., 1],
        SHADE[2]: shade[..., 2],
    }
    for frame in FRAMES:
        window = None
        data = channels
        if frame == 1002:  # ROI bbox + margin smaller than the format
            window = (6, 3, 28, 22)
            data = {k: v[3:25, 6:34] for k, v in channels.items()}
        io.write_exr(
            paths.pass_path(frame),
            data,
            attributes={"rna/version": CACHE_FORMAT_VERSION},
            data_window=window,
            display_size=(W, H),
        )
        io.write_rgba_exr(
            root / "plate" / f"plate.{frame:04d}.exr", plate.astype(np.float32), pixel_type="float"
        )

    edited = io.read_image(paths.atlas_exr).pixels
    edited[9:17, 12:28, :3] = [1.5, 0.3, 0.1]  # the paint
    noisy = edited + rng.uniform(-4e-3, 4e-3, edited.shape)  # a lossy re-save of it
    # The same paint on a 2× atlas: with Impulse, unpainted texels still cancel exactly (other
    # filters resample the 2× texels and leave tiny differences everywhere).
    double = np.repeat(np.repeat(edited, 2, axis=0), 2, axis=1)
    files = {"edit": edited, "noisy": noisy, "double": double}
    out: dict[str, object] = {"root": root, "paths": paths}
    for name, pixels in files.items():
        out[name] = root / f"atlas_{name}.exr"
        io.write_rgba_exr(out[name], pixels.astype(np.float32), pixel_type="float")
    out["mask"] = np.clip((x - 8) / 20, 0, 1)[..., None].repeat(4, axis=2).astype(np.float32)
    return out


def _engine(
    shot: dict[str, object],
    frame: int,
    atlas: Path,
    settings: ApplySettings,
    mask: np.ndarray | None,
) -> dict[str, np.ndarray]:
    paths: BuildPaths = shot["paths"]  # type: ignore[assignment]
    root: Path = shot["root"]  # type: ignore[assignment]
    passes = io.read_image(paths.pass_path(frame))
    plate = io.read_image(root / "plate" / f"plate.{frame:04d}.exr").pixels
    orig = io.read_image(paths.atlas_exr).pixels
    edit = read_edited_atlas(atlas, orig.shape[:2])
    return apply_frame(
        plate,
        orig,
        edit,
        {c: passes.channel(c) for c in passes.channels},
        settings,
        None if mask is None else mask[..., 3],
    )


def _gizmo(
    gizmo: nkparse.Node,
    shot: dict[str, object],
    frame: int,
    atlas: Path,
    knobs: dict[str, object],
    mask: np.ndarray | None,
    root_range: tuple[int, int] = (1001, 1002),
) -> np.ndarray:
    root: Path = shot["root"]  # type: ignore[assignment]
    plate = io.read_image(root / "plate" / f"plate.{frame:04d}.exr").pixels
    inputs = {
        0: nkeval.Image.from_rgba(plate),
        1: nkeval.Image.from_rgba(io.read_image(atlas).pixels),
    }
    if mask is not None:
        inputs[2] = nkeval.Image.from_rgba(mask)
    values = {"cache_dir": str(root / "shot"), "version": 1, **knobs}
    evaluator = nkeval.GizmoEvaluator(
        gizmo,
        inputs,
        values,
        frame,
        {"first_frame": root_range[0], "last_frame": root_range[1]},
        (W, H),
    )
    return evaluator.output().rows()


CASES = [
    # (mode, output, filter, extra knobs, atlas file, mask)
    ("delta", "comp", "Cubic", {}, "edit", False),
    ("delta", "paint", "Cubic", {}, "edit", False),
    ("delta", "delta", "Cubic", {}, "edit", False),
    ("delta", "matte", "Cubic", {}, "edit", False),
    ("replace", "comp", "Cubic", {}, "edit", False),
    ("replace", "paint", "Cubic", {}, "edit", False),
    ("replace", "delta", "Cubic", {}, "edit", False),
    ("replace", "matte", "Cubic", {}, "edit", False),
    ("delta", "comp", "Impulse", {}, "double", False),
    ("replace", "paint", "Impulse", {}, "double", False),
    ("delta", "comp", "Keys", {"mix": 0.6}, "edit", False),
    ("replace", "comp", "Mitchell", {"use_shade": "false"}, "edit", False),
    ("delta", "comp", "Simon", {"delta_threshold": 0.02}, "noisy", False),
    ("replace", "paint", "Rifman", {"replace_matte": 0.8}, "edit", True),
    ("delta", "matte", "Parzen", {}, "edit", True),
    ("delta", "comp", "Lanczos4", {}, "edit", False),
    # replace_matte 0.8: the mask ramp has m = 0.95 at column 27, where float32 (engine) and
    # float64 (evaluator) disagree on m >= 0.95
    ("replace", "comp", "Lanczos6", {"mix": 0.7, "replace_matte": 0.8}, "edit", True),
    ("delta", "paint", "Sinc4", {}, "edit", False),
    ("delta", "delta", "Notch", {}, "edit", False),
]


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("mode,output,filt,extra,atlas_name,use_mask", CASES)
def test_gizmo_matches_rna_engine_apply(
    gizmo: nkparse.Node,
    shot: dict[str, object],
    frame: int,
    mode: str,
    output: str,
    filt: str,
    extra: dict[str, object],
    atlas_name: str,
    use_mask: bool,
) -> None:
    atlas: Path = shot[atlas_name]  # type: ignore[assignment]
    mask = shot["mask"] if use_mask else None
    settings = ApplySettings(
        mode=mode,
        output=output,
        filter=filt.lower(),  # type: ignore[arg-type]
        mix=float(extra.get("mix", 1.0)),  # type: ignore[arg-type]
        use_shade=extra.get("use_shade", "true") == "true",
        delta_threshold=float(extra.get("delta_threshold", 0.0)),  # type: ignore[arg-type]
        replace_min_matte=float(extra.get("replace_matte", 0.95)),  # type: ignore[arg-type]
    )
    want = _engine(shot, frame, atlas, settings, mask)[output]  # type: ignore[arg-type]
    knobs = {"mode": mode, "output": OUTPUT_NAMES[output], "filter": filt, **extra}
    got = _gizmo(gizmo, shot, frame, atlas, knobs, mask)  # type: ignore[arg-type]
    assert got.shape == want.shape == (H, W, 4)
    assert np.abs(got - want).max() < 1e-5
    if output in ("comp", "paint"):
        assert np.count_nonzero(want[..., 3]) > 20  # the paint is really there


@pytest.mark.parametrize("plate_type", ["float", "half"])
@pytest.mark.parametrize("filt", ["Impulse", "Cubic", "Notch", "Lanczos6", "Sinc4"])
def test_unpainted_atlas_through_the_gizmo_is_the_plate_bit_for_bit(
    gizmo: nkparse.Node, shot: dict[str, object], tmp_path: Path, plate_type: str, filt: str
) -> None:
    # A plate off the half grid (float) or on it (half), with denormals, negatives and large
    # values, written and read back as the gizmo's plate input would be.
    paths: BuildPaths = shot["paths"]  # type: ignore[assignment]
    rng = np.random.default_rng(12)
    plate = rng.uniform(-0.3, 2.0, (H, W, 3)).astype(np.float32)
    plate[0, :2] = [
        [1e-40, -1e-40, 3e5] if plate_type == "float" else [6e-8, -6e-8, 6e4],
        [0, 1, -1],
    ]
    plate_file = tmp_path / "plate.exr"
    io.write_rgba_exr(plate_file, plate, pixel_type=plate_type)
    plate_read = io.read_image(plate_file).pixels
    bits = np.uint16 if plate_type == "half" else np.uint32
    want = plate_read.astype(np.float16 if plate_type == "half" else np.float32)
    for frame in FRAMES:  # 1002 has a data window: black passes outside it
        for mode in ("delta", "replace"):
            evaluator = nkeval.GizmoEvaluator(
                gizmo,
                {
                    0: nkeval.Image.from_rgba(plate_read),
                    1: nkeval.Image.from_rgba(io.read_image(paths.atlas_exr).pixels),
                },
                {"cache_dir": str(paths.root.parent), "version": 1, "mode": mode, "filter": filt},
                frame,
                {"first_frame": 1001, "last_frame": 1002},
                (W, H),
            )
            got = evaluator.output().rows()
            assert np.array_equal(got[..., :3], plate_read.astype(np.float64))  # values
            raw = got[..., :3].astype(want.dtype)
            assert np.array_equal(raw.view(bits), want.view(bits))  # and bits
            assert np.array_equal(got[..., 3].view(np.uint64), np.zeros((H, W), np.uint64))


def test_every_filter_of_the_gizmo_is_in_nkeval_and_apply(gizmo: nkparse.Node) -> None:
    items = gizmo.user_knob("filter").items
    assert items == list(nkeval.NUKE_FILTERS)
    assert {name.lower() for name in items} <= set(APPLY_FILTERS)
    for name in items:
        ApplySettings(filter=name)  # the gizmo's spelling is accepted as is


def test_frames_outside_the_cache_range_pass_the_plate(
    gizmo: nkparse.Node, shot: dict[str, object], tmp_path: Path
) -> None:
    root: Path = shot["root"]  # type: ignore[assignment]
    plate = io.read_image(root / "plate" / "plate.1001.exr").pixels
    io.write_rgba_exr(root / "plate" / "plate.1005.exr", plate, pixel_type="float")
    got = _gizmo(gizmo, shot, 1005, shot["edit"], {}, None, root_range=(1001, 1002))  # type: ignore[arg-type]
    np.testing.assert_array_equal(got[..., :3], plate)
    with pytest.raises(nkeval.EvalError, match="rna.1005.exr"):  # inside the range: an error
        _gizmo(gizmo, shot, 1005, shot["edit"], {}, None, root_range=(1001, 1010))  # type: ignore[arg-type]


def test_gizmo_reads_the_cache_through_its_knobs(
    gizmo: nkparse.Node, shot: dict[str, object]
) -> None:
    root: Path = shot["root"]  # type: ignore[assignment]
    plate = io.read_image(root / "plate" / "plate.1001.exr").pixels
    evaluator = nkeval.GizmoEvaluator(
        gizmo,
        {0: nkeval.Image.from_rgba(plate), 1: nkeval.Image.from_rgba(plate)},
        {"cache_dir": str(root / "shot"), "version": 1},
        1001,
        {"first_frame": 1001, "last_frame": 1002},
        (W, H),
    )
    evaluator.output()
    assert sorted(p.relative_to(root).as_posix() for p in evaluator.reads) == [
        "shot/v001/atlas/atlas.exr",
        "shot/v001/passes/rna.1001.exr",
    ]
    evaluator = nkeval.GizmoEvaluator(
        gizmo,
        {0: nkeval.Image.from_rgba(plate)},
        {"cache_dir": str(root / "shot"), "version": 2},
        1001,
        {"first_frame": 1001, "last_frame": 1002},
        (W, H),
    )
    with pytest.raises(nkeval.EvalError, match=r"v002/(passes/rna\.1001|atlas/atlas)\.exr"):
        evaluator.output()


def test_gizmo_wiring_is_the_documented_graph(gizmo: nkparse.Node) -> None:
    def ins(name: str) -> list[str]:
        return [n.name if n is not None else "-" for n in gizmo.find(name).inputs]

    assert ins("STMapEdit") == ["atlas", "ReadPasses"]  # src, stmap
    assert ins("STMapOrig") == ["ReadAtlas", "ReadPasses"]
    assert ins("Delta") == ["STMapOrig", "STMapEdit"]  # B, A: A − B
    assert gizmo.find("Delta").knob("operation") == "minus"
    assert ins("Comp") == ["plate", "Mix"] and gizmo.find("Comp").knob("operation") == "plus"
    assert ins("OutputSwitch") == ["CompAlpha", "KeepPaint", "KeepDelta", "KeepMatte"]
    assert gizmo.user_knob("output").items == ["comp", "paint element", "delta", "matte overlay"]
    edit, orig = gizmo.find("STMapEdit"), gizmo.find("STMapOrig")
    assert edit.knobs["filter"].expression == orig.knobs["filter"].expression == "parent.filter"
    assert edit.knob("uv") == orig.knob("uv") == "rna_uv"
    for read in ("ReadPasses", "ReadAtlas"):
        node = gizmo.find(read)
        assert node.knob("file", "").startswith(
            "[subst [value parent.cache_dir]]/v[format %03d [value parent.version]]/"
        )
        assert node.knob("on_error") == "error"


def test_no_python_at_render_time(gizmo: nkparse.Node) -> None:
    render_callbacks = {
        "knobChanged",
        "onCreate",
        "beforeRender",
        "afterRender",
        "beforeFrameRender",
        "afterFrameRender",
        "onDestroy",
        "updateUI",
    }
    for node in [gizmo, *gizmo.walk()]:
        assert not render_callbacks & set(node.knobs), node.name
        for key, word in node.knobs.items():  # no [python ...] Tcl inside any knob
            assert not re.search(r"\[\s*python\b", word.text), f"{node.name}.{key}"
    buttons = [k for k in gizmo.user_knobs if k.type_id == 22]
    assert {k.name for k in buttons} == {"check_atlas", "reload_cache", "link_build"}  # GUI only
    assert (
        "rna_nuke.glue.check_atlas(nuke.thisNode())"
        in gizmo.user_knob("check_atlas").options["T"].text
    )
    assert {n.cls for n in gizmo.walk()} <= {
        "Input",
        "Output",
        "Read",
        "STMap",
        "Merge2",
        "Copy",
        "Expression",
        "Multiply",
        "Remove",
        "Switch",
    }


def test_cli_output_file_matches_the_gizmo(
    gizmo: nkparse.Node, shot: dict[str, object], tmp_path: Path
) -> None:
    paths: BuildPaths = shot["paths"]  # type: ignore[assignment]
    root: Path = shot["root"]  # type: ignore[assignment]
    out = tmp_path / "comp.####.exr"
    code = main(
        [
            "apply",
            "--build",
            str(paths.root),
            "--atlas",
            str(shot["edit"]),
            "--plate",
            str(root / "plate" / "plate.####.exr"),
            "--out",
            str(out),
            "--mode",
            "replace",
            "--filter",
            "keys",
            "--frames",
            "1002",
        ]
    )
    assert code == 0
    written = io.read_image(tmp_path / "comp.1002.exr").pixels
    got = _gizmo(gizmo, shot, 1002, shot["edit"], {"mode": "replace", "filter": "Keys"}, None)  # type: ignore[arg-type]
    assert (
        io.read_image(tmp_path / "comp.1002.exr").channel_formats == ("float",) * 4
    )  # as the plate
    assert np.abs(written - got).max() < 1e-5


@pytest.mark.parametrize(
    "text,value",
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("1 > 0 && 0 >= 1 ? 5 : 6", 6.0),
        ("!0 + -2", -1.0),
        ("max(max(abs(-3), 2), abs(1)) > 2.5", 1.0),
        ("0 ? 1 : 1 ? 2 : 3", 2.0),
        ("parent.k * 2 - 1 == 5", 1.0),
    ],
)
def test_expression_language(text: str, value: float) -> None:
    got = nkeval.evaluate_expression(text, {"parent.k": 3.0}.__getitem__)
    assert float(got) == value


def test_expression_rejects_garbage() -> None:
    with pytest.raises(nkeval.EvalError):
        nkeval.evaluate_expression("1 +", {}.__getitem__)
    with pytest.raises(nkeval.EvalError):
        nkeval.evaluate_expression("nope(1)", {}.__getitem__)


@pytest.mark.parametrize("filt", nkeval.NUKE_FILTERS)
def test_two_stmap_implementations_agree(filt: str) -> None:
    # nkeval's dense y-up STMap vs rna_engine.media.stmap's 4×4 gathers, UVs reaching far outside.
    from rna_engine.media.stmap import sample_stmap

    rng = np.random.default_rng(3)
    src = rng.normal(size=(9, 13, 3)).astype(np.float32)
    uv = rng.uniform(-0.4, 1.4, (7, 11, 2)).astype(np.float32)
    want = sample_stmap(src, uv, filt.lower())
    src_image = nkeval.Image.from_rgba(src)
    uv_image = nkeval.Image.from_rows(uv, ("rna_uv.u", "rna_uv.v"))
    got = nkeval.stmap(
        src_image, uv_image, ["rna_uv.u", "rna_uv.v"], ["rgba.red", "rgba.green", "rgba.blue"], filt
    )
    np.testing.assert_allclose(got.rows(("rgba.red", "rgba.green", "rgba.blue")), want, atol=2e-6)


def test_unpainted_gizmo_keeps_negative_zero_and_ignores_inf_shade(
    gizmo: nkparse.Node, tmp_path: Path
) -> None:
    # What `rna-engine apply` guarantees (tests/engine/test_apply.py) and the gizmo does not yet:
    # a −0.0 plate value, and an inf shade texel (a half overflow of a bright texel over a dark
    # atlas colour), under an unpainted atlas.
    h, w = 6, 8
    paths = BuildPaths(tmp_path / "shot" / "v001")
    atlas = np.random.default_rng(1).uniform(0, 1, (h, w, 4)).astype(np.float32)
    io.write_rgba_exr(paths.atlas_exr, atlas)
    uv = identity_stmap(h, w) + np.float32(0.01)
    shade = np.ones((h, w, 3), np.float32)
    shade[2, 5] = np.inf
    ones = np.ones((h, w), np.float32)
    channels = {UV_U: uv[..., 0], UV_V: uv[..., 1], MATTE: ones, MASK: ones}
    channels.update({name: shade[..., i] for i, name in enumerate(SHADE)})
    io.write_exr(paths.pass_path(1001), channels, attributes={"rna/version": CACHE_FORMAT_VERSION})
    plate = np.full((h, w, 3), 0.25, np.float32)
    plate[1, 1] = -0.0
    evaluator = nkeval.GizmoEvaluator(
        gizmo,
        {
            0: nkeval.Image.from_rgba(plate),
            1: nkeval.Image.from_rgba(io.read_image(paths.atlas_exr).pixels),
        },
        {"cache_dir": str(tmp_path / "shot"), "version": 1},
        1001,
        {"first_frame": 1001, "last_frame": 1001},
        (w, h),
    )
    with np.errstate(invalid="ignore"):
        got = evaluator.output().rows()[..., :3].astype(np.float32)
    assert np.array_equal(got.view(np.uint32), plate.view(np.uint32))
