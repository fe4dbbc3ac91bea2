"""RNAAtlasBuild.gizmo evaluated node by node (nkeval): a render always outputs the atlas.

The `view` knob is a Viewer switch (`$gui`): whatever view a script was saved with, a render
(`$gui` false: the farm, `nuke -x`, a local render) feeds the atlas to the paint chain. The
internal Reads find the cache through a script-relative `cache_path` (`[file dirname [value
root.name]]/...`) or one under `$RNA_CACHE_ROOT` (`[getenv RNA_CACHE_ROOT]/...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nkeval
import nkparse
import numpy as np
import pytest

from rna_engine.media import io
from rna_engine.media.cache import MATTE, SHADE, UV_U, UV_V, BuildPaths
from rna_nuke import knobs

GIZMO = Path(__file__).resolve().parents[2] / "gizmos" / "RNAAtlasBuild.gizmo"
H, W = 12, 16
FRAME = 1001


@pytest.fixture(scope="module")
def gizmo() -> nkparse.Node:
    return nkparse.parse_file(GIZMO).groups()[0]


@pytest.fixture(scope="module")
def shot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("atlasbuild")
    rng = np.random.default_rng(3)
    atlas = rng.uniform(0.1, 0.9, (H, W, 4)).astype(np.float16).astype(np.float32)  # half EXR
    plate = rng.uniform(0.0, 1.0, (H, W, 4))
    uv = rng.uniform(0.0, 1.0, (H, W, 2))
    paths = BuildPaths(root / "shots" / "rna" / "RNAAtlasBuild1" / "v001")
    io.write_rgba_exr(paths.atlas_exr, atlas, compression="zip")
    channels = {UV_U: uv[..., 0], UV_V: uv[..., 1], MATTE: np.ones((H, W))}
    channels.update({name: np.ones((H, W)) for name in SHADE})
    io.write_exr(paths.pass_path(FRAME), channels, compression="zips")
    return {
        "root": root,
        "script": f"{root.as_posix()}/shots/comp.nk",
        "atlas": atlas.astype(np.float64),
        "plate": plate,
        "uv": uv,
    }


def _render(
    gizmo: nkparse.Node, shot: dict[str, Any], gui: bool, env: dict[str, str] | None = None, **kn
) -> nkeval.Image:
    values = {
        "cache_path": "[file dirname [value root.name]]/rna/RNAAtlasBuild1/v001",
        "cache_ready": "true",
        "cache_first": FRAME,
        "cache_last": FRAME,
        **kn,
    }
    evaluator = nkeval.GizmoEvaluator(
        gizmo,
        {0: nkeval.Image.from_rgba(shot["plate"])},
        values,
        FRAME,
        {"name": shot["script"], "first_frame": FRAME, "last_frame": FRAME},
        (W, H),
        gui=gui,
        env=env,
    )
    return evaluator.output()


@pytest.mark.parametrize("view", knobs.VIEWS)
def test_a_render_outputs_the_atlas_whatever_the_view(
    gizmo: nkparse.Node, shot: dict[str, Any], view: str
) -> None:
    out = _render(gizmo, shot, gui=False, view=view)
    np.testing.assert_array_equal(out.rows(), shot["atlas"])
    assert "rna_uv.u" not in out.planes  # the atlas itself, not the layered plate


def test_a_render_without_a_ready_cache_still_reads_the_atlas(
    gizmo: nkparse.Node, shot: dict[str, Any]
) -> None:
    out = _render(gizmo, shot, gui=False, view="plate", cache_ready="false")
    np.testing.assert_array_equal(out.rows(), shot["atlas"])
    with pytest.raises(nkeval.EvalError, match="on_error error"):  # a farm frame fails loudly
        _render(gizmo, shot, gui=False, cache_ready="false", cache_path="")


def test_the_viewer_follows_the_view_knob(gizmo: nkparse.Node, shot: dict[str, Any]) -> None:
    atlas = _render(gizmo, shot, gui=True, view="atlas")
    np.testing.assert_array_equal(atlas.rows(), shot["atlas"])
    plate = _render(gizmo, shot, gui=True, view="plate")
    np.testing.assert_array_equal(plate.rows(), shot["plate"])
    u = plate.plane("rna_uv.u")[::-1]  # planes are y-up, the EXR rows top-down
    np.testing.assert_allclose(u, shot["uv"][..., 0], atol=1e-6)
    waiting = _render(gizmo, shot, gui=True, view="atlas", cache_ready="false")
    np.testing.assert_array_equal(waiting.rows(), shot["plate"])  # no cache yet: the plate


def test_the_reads_resolve_a_cache_root_relative_path(
    gizmo: nkparse.Node, shot: dict[str, Any]
) -> None:
    env = {"RNA_CACHE_ROOT": f"{shot['root'].as_posix()}/shots"}
    out = _render(
        gizmo,
        shot,
        gui=False,
        env=env,
        cache_path="[getenv RNA_CACHE_ROOT]/rna/RNAAtlasBuild1/v001",
    )
    np.testing.assert_array_equal(out.rows(), shot["atlas"])
    with pytest.raises(nkeval.EvalError, match="cannot read"):  # the variable is not set
        _render(
            gizmo, shot, gui=False, cache_path="[getenv RNA_CACHE_ROOT]/rna/RNAAtlasBuild1/v001"
        )
