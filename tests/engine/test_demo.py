"""The demo: its score against known answers, labelled pictures, one cache version per rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rna_engine.commands.demo import run_demo
from rna_engine.media import io
from rna_engine.media.cache import version_dirs
from rna_engine.media.metrics import psnr
from rna_engine.stages.qc import LABEL_BAND_PX, contact_sheet
from rna_engine.synthetic.scoring import score_frame, summarise
from rna_engine.synthetic.shots import make_shot, paint_pattern

TINY: dict = {
    "ingest": {"working_long_side": 64},
    "fit": {
        "pretrain_steps": 100,
        "iterations": 400,
        "batch_size": 1536,
        "log_every": 50,
        "scale_with_shot": False,
        "mapping_width": 64,
        "hash_grid": {
            "n_levels": 8,
            "log2_hashmap_size": 12,
            "base_resolution": 8,
            "per_level_scale": 1.5,
        },
    },
    "refine": {"iterations": 150},
}
"""The smallest schedule whose mask is decided enough for a matte (38.5 dB mean edit PSNR on
the tiny shot); shorter ones leave M undecided everywhere and the matte is NaN."""


def _truth_case(shift_px: int) -> tuple[dict, dict]:
    """Frame 0 of the tiny shot, its exact edit, and a comp whose paint is shifted sideways."""
    shot = make_shot("tiny", seed=0)
    edit = paint_pattern(64, 48, shot.roi)
    edit[..., 3] *= shot.roi
    f = shot.frame(0)
    expected = shot.render_edit(edit, 0)
    delta = expected - f["plate"]
    comp = f["plate"] + np.roll(delta, shift_px, axis=1)
    visible = f["roi_tracked"] * (1 - f["occlusion"])
    return {
        "comp": comp,
        "expected": expected,
        "plate": f["plate"],
        "visible": visible,
        "region": f["roi_tracked"] > 0.5,
    }, {"shot": shot, "delta": delta}


def test_perfect_comp_scores_the_cap_and_no_leak() -> None:
    case, _ = _truth_case(0)
    case["comp"] = case["expected"].copy()
    s = score_frame(1001, **case)
    assert s.edit_psnr == psnr(0.0) == 99.0  # an exact match
    assert s.leak == 0.0 and s.leak_pct == 0.0 and s.paint > 0


def test_shifted_paint_leaks_by_the_known_amount() -> None:
    case, extra = _truth_case(12)
    s = score_frame(1001, **case)
    # The leak is exactly the shifted paint that lands where the true visible ROI is 0.
    paint = np.abs(np.roll(extra["delta"], 12, axis=1).astype(np.float64)).sum(-1)
    expected_leak = paint[case["visible"] <= 0].sum()
    assert s.leak == pytest.approx(expected_leak, rel=1e-4)
    assert 1.0 < s.leak_pct < 100.0
    assert s.edit_psnr is not None and s.edit_psnr < 40.0


def test_psnr_of_a_known_error() -> None:
    comp = np.full((4, 4, 3), 0.5, np.float32)
    expected = comp + 0.1  # MSE 0.01 → 20 dB
    region = np.ones((4, 4), bool)
    s = score_frame(1, comp, expected, comp, np.ones((4, 4)), region)
    assert s.edit_psnr == pytest.approx(20.0, abs=1e-4)
    assert s.leak_pct == 0.0  # comp == plate: nothing painted


def test_summary_lists_worst_first_and_pools_the_leak() -> None:
    comp = np.zeros((2, 2, 3), np.float32)
    region = np.ones((2, 2), bool)
    visible = np.array([[1.0, 0.0], [1.0, 1.0]])
    good = score_frame(1001, comp + 0.01, comp, comp, visible, region)  # 40 dB, leak 25 %
    bad = score_frame(1002, comp + 0.1, comp, comp + 0.1, visible, region)  # 20 dB, no paint
    summary = summarise([good, bad])
    assert [f["frame"] for f in summary["frames"]] == [1002, 1001]
    assert summary["edit_psnr_worst"] == pytest.approx(20.0, abs=1e-4)
    assert summary["edit_psnr_mean"] == pytest.approx(30.0, abs=1e-4)
    assert summary["paint_leak_pct"] == pytest.approx(25.0)


def test_contact_sheet_has_labels() -> None:
    h, w = 24, 40
    black = torch.zeros(3, h, w)
    rows = [(black, black, torch.zeros(h, w), torch.zeros(h, w))]
    sheet = contact_sheet(rows, lambda x: x, np.zeros((h, w, 3), np.float32), [1004], 1004)
    assert sheet.shape == (2 * (h + LABEL_BAND_PX), 4 * w, 3)
    band = sheet[:LABEL_BAND_PX]
    for col in range(4):  # every column has its label: text pixels brighter than the band
        assert (band[:, col * w : (col + 1) * w] > 0.5).sum() > 10
    assert (sheet[LABEL_BAND_PX : LABEL_BAND_PX + h] == 0).all()  # the tiles stay untouched
    atlas_band = sheet[h + LABEL_BAND_PX : h + 2 * LABEL_BAND_PX, :w]
    assert (atlas_band > 0.5).sum() > 10


@pytest.mark.slow
def test_demo_reruns_keep_one_version_and_score_the_comp(tmp_path: Path) -> None:
    first = run_demo(tmp_path, "cpu", "tiny", TINY)
    atlas_mtime = first["paths"].atlas_exr.stat().st_mtime_ns
    second = run_demo(tmp_path, "cpu", "tiny", TINY)
    assert [p.name for p in version_dirs(tmp_path / "cache" / "demo")] == ["v001"]
    assert second["paths"].atlas_exr.stat().st_mtime_ns == atlas_mtime  # reused, not rebuilt
    score = json.loads((tmp_path / "score.json").read_text())
    assert len(score["frames"]) == 8 and score["nonfinite_pixels"] == 0
    psnrs = [f["edit_psnr"] for f in score["frames"]]
    assert psnrs == sorted(psnrs) and score["edit_psnr_worst"] == psnrs[0]
    assert 30.0 < score["edit_psnr_mean"] < psnr(0.0)
    assert 0.0 <= score["paint_leak_pct"] < 1.0
    strip = io.read_image(tmp_path / "preview_strip.png").pixels
    assert strip.shape[:2] == (2 * (48 + 14), 4 * 64)
    assert (strip[:14] > 0.9).any() and (strip[62:76] > 0.9).any()  # the label bands
    # Other settings replace v001 instead of adding v002.
    other = {**TINY, "refine": {"iterations": 100}}
    third = run_demo(tmp_path, "cpu", "tiny", other)
    assert [p.name for p in version_dirs(tmp_path / "cache" / "demo")] == ["v001"]
    build = json.loads(third["paths"].build_json.read_text())
    assert build["settings"]["refine"]["iterations"] == 100


def test_a_nan_comp_scores_low_and_is_counted() -> None:
    case, _ = _truth_case(0)
    case["comp"] = np.full_like(case["expected"], np.nan)
    s = score_frame(1001, **case)
    assert s.nonfinite_pixels == 64 * 48
    assert s.edit_psnr is not None and s.edit_psnr < 20.0
    assert summarise([s])["nonfinite_pixels"] == 64 * 48
