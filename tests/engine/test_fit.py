"""rna_engine.stages.fit on a tiny synthetic shot with ground truth (CPU, deterministic).

One fit is shared by the module: the reconstruction improves by ≥ 10 dB and exceeds 28 dB on
the visible ROI, the mask matches the true occlusion (IoU ≥ 0.8), and T is the identity on the
reference frame's ROI to < 1 px. Resume after a cancel reproduces the uninterrupted fit exactly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rna_engine.errors import Cancelled, InputError
from rna_engine.media import colour
from rna_engine.runtime.context import RunContext
from rna_engine.runtime.progress import CancelToken
from rna_engine.settings import build_settings
from rna_engine.stages import evidence
from rna_engine.stages.correspondences import compute_correspondences
from rna_engine.stages.fit import (
    FitResult,
    Fitter,
    Refinement,
    ShotTensors,
    Ties,
    graph_capture,
    query_fields,
    validate_shot,
)
from rna_engine.synthetic import shots as synth

TINY_FIT: dict[str, Any] = {
    "fit": {
        "pretrain_steps": 100,
        "iterations": 500,
        "batch_size": 1536,
        "log_every": 50,
        "checkpoint_every": 100,
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


@dataclass
class Case:
    shot: synth.SynthShot
    tensors: ShotTensors
    settings: Any


@pytest.fixture(scope="module")
def case() -> Case:
    torch.set_num_threads(2)
    shot = synth.make_shot("tiny", seed=0)
    space = colour.working_space("scene_linear")
    frames = torch.from_numpy(space.encode(shot.plate_linear)).permute(0, 3, 1, 2).contiguous()
    roi = torch.from_numpy(shot.roi)
    settings = build_settings("draft", TINY_FIT)
    corr = compute_correspondences(
        frames, roi, shot.reference_index, settings.flow, RunContext(device="cpu")
    )
    return Case(shot, ShotTensors(frames, roi, shot.reference_index, corr), settings)


def _fitter(case: Case, work: Path | None = None, cancel: CancelToken | None = None) -> Fitter:
    ctx = RunContext(device="cpu", seed=0, work_dir=work, cancel=cancel or CancelToken())
    return Fitter(case.tensors, case.settings.fit, case.settings.refine, ctx)


def atlas_psnr(result_or_fitter: Any, case: Case) -> float:
    """S·A(T(p)) against the plate on truly visible ROI pixels, all frames (working encoding)."""
    if isinstance(result_or_fitter, Fitter):
        f = result_or_fitter
        result = FitResult(f.model, f.geometry, case.shot.reference_index, f.atlas_box)
    else:
        result = result_or_fitter
    h, w = case.tensors.height, case.tensors.width
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    errs = []
    for t in range(case.tensors.n_frames):
        q = query_fields(result, xs.reshape(-1), ys.reshape(-1), t)
        pred = q["shaded"].T.reshape(3, h, w)
        visible = torch.from_numpy(case.shot.true_matte[t] > 0.5)
        errs.append(((pred - case.tensors.frames[t]) ** 2).mean(0)[visible])
    return -10 * math.log10(float(torch.cat(errs).mean()))


@pytest.fixture(scope="module")
def fitted(case: Case) -> tuple[FitResult, float, Fitter]:
    fitter = _fitter(case)
    before = atlas_psnr(fitter, case)
    return fitter.run(), before, fitter


def test_reconstruction_improves_and_is_accurate(case: Case, fitted: tuple) -> None:
    result, before, _ = fitted
    after = atlas_psnr(result, case)
    assert after >= before + 10.0
    assert after > 28.0


def test_mask_matches_true_occlusion(case: Case, fitted: tuple) -> None:
    result, _, _ = fitted
    h, w = case.tensors.height, case.tensors.width
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    ious = []
    for t in range(case.tensors.n_frames):
        occluded = (case.shot.occlusion[t] > 0.5) & (case.shot.roi_tracked[t] > 0.5)
        if occluded.sum() < 5:
            continue
        m = query_fields(result, xs.reshape(-1), ys.reshape(-1), t)["mask"].reshape(h, w) > 0.5
        truth = torch.from_numpy(case.shot.true_matte[t] > 0.5)
        ious.append(float((m & truth).sum() / (m | truth).sum()))
    assert ious, "the shot must have occluded frames"
    assert float(np.mean(ious)) >= 0.8
    assert min(ious) >= 0.7


def test_reference_frame_alignment_below_one_pixel(case: Case, fitted: tuple) -> None:
    result, _, _ = fitted
    h, w = case.tensors.height, case.tensors.width
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    q = query_fields(result, xs.reshape(-1), ys.reshape(-1), case.shot.reference_index)
    px = result.geometry.uv_to_px(q["uv_norm"])
    inside = case.tensors.roi.reshape(-1) > 0.5
    error = (px - torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))[inside].norm(dim=1)
    assert float(error.mean()) < 1.0


def test_qc_measures_and_warns_about_a_misaligned_reference_frame(
    case: Case, fitted: tuple
) -> None:
    """`quality.reference_alignment`: the converged fit is the identity on the reference ROI;
    T moved by 5 px there is measured as such and warned about (`qc.max_reference_uv_px`)."""
    from rna_engine.settings import QCSettings
    from rna_engine.stages.quality import reference_alignment, reference_alignment_warning

    result, _, _ = fitted
    r = case.shot.reference_index
    aligned = reference_alignment(result, case.tensors)
    assert aligned["p90"] < 1.0 and aligned["median"] <= aligned["p90"] <= aligned["max"]
    assert reference_alignment_warning(aligned, r, QCSettings()) is None
    bias = result.model.mapping[-1].bias
    before = bias.detach().clone()
    with torch.no_grad():
        bias[0] += 5.0 / result.geometry.half_rez
    try:
        moved = reference_alignment(result, case.tensors)
    finally:
        with torch.no_grad():
            bias.copy_(before)
    assert 4.0 < moved["median"] < 6.0
    warning = reference_alignment_warning(moved, r, QCSettings())
    assert warning is not None and f"reference frame {r}" in warning
    assert "qc.max_reference_uv_px" in warning


def test_fit_reports_the_matte_evidence_per_frame(case: Case, fitted: tuple) -> None:
    """`FitResult.evidence`: per frame, the occluder evidence follows the true occlusion."""
    result, _, _ = fitted
    n = case.tensors.n_frames
    assert len(result.evidence) == n
    r = case.shot.reference_index
    assert result.evidence[r]["occluder_evidence"] == 0.0
    assert result.evidence[r]["mask_joint"] >= 0.9
    hidden = [
        float(((case.shot.occlusion[t] > 0.5) & (case.shot.roi_tracked[t] > 0.5)).sum())
        / max(float((case.shot.roi_tracked[t] > 0.5).sum()), 1.0)
        for t in range(n)
    ]
    occ = [e["occluder_evidence"] for e in result.evidence]
    assert all(0.0 <= o <= 1.0 for o in occ)
    # More occluder evidence where more of the tracked ROI is truly hidden.
    assert float(np.corrcoef(hidden, occ)[0, 1]) > 0.8


def test_refinement_evidence_agrees_with_the_true_occlusion(case: Case, fitted: tuple) -> None:
    """The occluder evidence lies on truly hidden ROI pixels, the surface evidence on visible
    ones; together they decide most of the tracked ROI (docs/method.md §5.2)."""
    _, _, fitter = fitted
    c = fitter.refinement.candidates()
    sets, _ = fitter.refinement.sets(c)
    follows = c.follows
    tracked = torch.from_numpy(case.shot.roi_tracked > 0.5)
    hidden = torch.from_numpy(case.shot.occlusion > 0.5) & tracked
    visible = torch.from_numpy(case.shot.occlusion < 0.05) & tracked
    occ, surf = sets.occluder & tracked, sets.surface & tracked
    # The fitted T moves with the surface: adjacent matches on visible pixels follow it.
    assert float((follows & visible).sum() / visible.sum()) >= 0.8
    assert float((follows & hidden).sum() / hidden.sum()) <= 0.2
    assert int(hidden.sum()) > 100
    assert float((occ & hidden).sum() / occ.sum()) >= 0.9
    assert float((occ & hidden).sum() / hidden.sum()) >= 0.6
    assert float((surf & visible).sum() / surf.sum()) >= 0.98
    assert float((surf & visible).sum() / visible.sum()) >= 0.9
    # Where T holds the surface, the pull toward 1 keeps almost all of it.
    assert float((sets.pull & visible).sum() / visible.sum()) >= 0.9


def test_candidates_the_atlas_does_not_explain_are_not_pulled_toward_one(
    case: Case, fitted: tuple
) -> None:
    """`refine.pull_unexplained` off: on a frame whose plate misses the atlas everywhere (its
    ties too, so θ_t rises above the error and nothing is evidenced as an occluder), λ_a
    does not lift the untied candidates (docs/method.md §5.3)."""
    import dataclasses

    _, _, fitter = fitted
    shot, t = fitter.shot, case.shot.n_frames - 1
    noise = torch.rand(shot.frames[t].shape, generator=torch.Generator().manual_seed(1))
    frames = shot.frames.clone()
    frames[t] = (frames[t] + 0.6 * (noise - 0.5)).clamp(0, 1)
    noisy = dataclasses.replace(fitter.problem, shot=dataclasses.replace(shot, frames=frames))
    phase = Refinement(noisy, fitter.model, 1)
    c = phase.candidates()
    sets, shares = phase.sets(c)
    reported = shares[t]["surface_unsure"]
    every_rule = dataclasses.replace(noisy.refine, pull_unexplained=True)
    every, _ = Refinement(dataclasses.replace(noisy, refine=every_rule), fitter.model, 1).sets(c)
    pred, cand = c.prediction, c.omega
    err = (pred[t] - frames[t]).abs().mean(0)
    floor = case.settings.refine.colour_threshold * case.settings.refine.occluded_factor
    skipped = every.pull[t] & ~sets.pull[t]
    assert int(skipped.sum()) > 100
    assert bool((err[skipped] >= floor).all())
    assert not bool((sets.pull & ~every.pull).any())
    assert reported is not None and reported > 0.05
    # On the frames the atlas explains, the rule removes (almost) nothing.
    r = case.shot.reference_index
    assert float((every.pull[r] & ~sets.pull[r]).sum() / cand[r].sum()) <= 0.01


def test_the_camera_gate_keeps_the_tracked_roi_and_drops_what_the_prior_puts_elsewhere(
    case: Case, fitted: tuple
) -> None:
    """`refine.camera_gate`: where T holds the surface it agrees with the camera prior and the
    gate drops nothing; where the prior puts every pixel away from the ROI, Ω and the QC's
    tracked ROI are empty whatever T says (docs/method.md §5.4)."""
    import dataclasses

    from rna_engine.stages.quality import frame_maps

    result, _, fitter = fitted
    assert result.camera_region is not None
    gated = [e.get("camera_gated") for e in result.evidence]
    assert all(g is not None for g in gated) and max(gated) <= 0.01
    away = (-1e4, -1e4, -9e3, -9e3)
    gone = dataclasses.replace(fitter.problem, camera_region=away)
    c = Refinement(gone, fitter.model, 1).candidates()
    cand, counts = c.omega, c.gate_counts
    assert counts is not None and not bool(cand.any())
    assert float(counts[:, 0].min()) > 100 and torch.equal(counts[:, 0], counts[:, 1])
    r = case.shot.reference_index
    kept = frame_maps(result, fitter.shot, r)["region"]
    dropped = frame_maps(dataclasses.replace(result, camera_region=away), fitter.shot, r)
    assert int(kept.sum()) > 100 and not bool(dropped["region"].any())


def test_the_bootstrap_term_ignores_pixels_without_a_reference_match(case: Case) -> None:
    """`fit.bootstrap_matched_only`: B_t = 0 where the t → r match failed is not a target."""
    corr, r = case.tensors.corr, case.shot.reference_index
    invalid = ~corr.ref_valid.bool()
    invalid[r] = False
    index = invalid.reshape(-1).nonzero()[:, 0][:512]
    assert index.numel() == 512
    on = torch.ones(())
    matched_only = _fitter(case).joint.losses(index, on)[1]["bootstrap"]
    assert float(matched_only.detach()) == 0.0
    plain = Case(
        case.shot,
        case.tensors,
        build_settings(
            "draft", {**TINY_FIT, "fit": {**TINY_FIT["fit"], "bootstrap_matched_only": False}}
        ),
    )
    assert float(_fitter(plain).joint.losses(index, on)[1]["bootstrap"].detach()) > 0.01


def test_resume_after_cancel_reproduces_the_fit(case: Case, tmp_path: Path) -> None:
    small = {
        **TINY_FIT,
        "fit": {**TINY_FIT["fit"], "iterations": 120, "checkpoint_every": 40},
        "refine": {"iterations": 30},
    }
    case = Case(case.shot, case.tensors, build_settings("draft", small))
    reference = _fitter(case).run()
    cancel = CancelToken()
    fitter = _fitter(case, tmp_path, cancel)
    calls = {"n": 0}
    original = fitter.loop.report

    def report(stage: str, step: int, total: int, **metrics: float) -> None:
        calls["n"] += 1
        # well into the joint stage, past a checkpoint (`step` counts steps, `fraction` is 0..1)
        if stage == "fit" and metrics.get("fraction", 0.0) > 0.6:
            cancel.cancel()
        original(stage, step, total, **metrics)

    fitter.loop.report = report  # type: ignore[method-assign]
    with pytest.raises(Cancelled):
        fitter.run()
    assert (tmp_path / "fit.ckpt").exists()
    resumed = _fitter(case, tmp_path).run()
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_checkpoint_of_another_model_layout_is_ignored(
    case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses

    ctx = RunContext(device="cpu", seed=0, work_dir=tmp_path)
    plain = dataclasses.replace(case.settings.fit, frame_grade=False, camera_prior=False)
    Fitter(case.tensors, plain, case.settings.refine, ctx).loop.save("fit", 40)
    assert (tmp_path / "fit.ckpt").exists()
    current = Fitter(case.tensors, case.settings.fit, case.settings.refine, ctx)
    before = {k: v.clone() for k, v in current.model.state_dict().items()}
    with caplog.at_level("WARNING"):
        assert current.loop.load() is None  # starts over instead of failing the build
    assert "another model layout" in caplog.text
    for name, value in current.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    same = Fitter(case.tensors, case.settings.fit, case.settings.refine, ctx)
    same.loop.save("fit", 40)
    assert current.loop.load() is not None  # the same layout still resumes


def test_a_checkpoint_from_another_device_kind_resumes(case: Case, tmp_path: Path) -> None:
    ctx = RunContext(device="cpu", seed=0, work_dir=tmp_path)
    saved = Fitter(case.tensors, case.settings.fit, case.settings.refine, ctx)
    with torch.no_grad():
        for value in saved.model.parameters():
            value.add_(0.25)
    saved.loop.save("refine", 40)
    state = torch.load(tmp_path / "fit.ckpt", weights_only=False)
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA RNG state
    torch.save(state, tmp_path / "fit.ckpt")
    current = Fitter(case.tensors, case.settings.fit, case.settings.refine, ctx)
    loaded = current.loop.load()
    assert loaded is not None and (loaded.stage, loaded.step) == ("refine", 40)
    for name, value in current.model.state_dict().items():
        assert torch.equal(value, saved.model.state_dict()[name]), name


def test_bad_shots_are_refused() -> None:
    roi = torch.zeros(8, 8)
    with pytest.raises(InputError, match="empty"):
        validate_shot(roi, 5, 2)
    with pytest.raises(InputError, match="whole frame"):
        validate_shot(torch.ones(8, 8), 5, 2)
    roi[2:4, 2:4] = 1
    with pytest.raises(InputError, match="at least 2 frames"):
        validate_shot(roi, 1, 0)
    with pytest.raises(InputError, match="outside"):
        validate_shot(roi, 5, 5)


def test_graph_capture_only_with_graph_safe_grids() -> None:
    from rna_engine.model.fields import HashGrid
    from rna_engine.model.kernels.triton_hashgrid import TritonHashGrid
    from rna_engine.settings import FitSettings, HashGridSettings

    grid = HashGridSettings(n_levels=2, log2_hashmap_size=10, base_resolution=4)

    def capture(grid_class: type, compile_mode: str, device: str = "cuda") -> bool:
        model = torch.nn.Sequential(grid_class(3, grid), grid_class(2, grid))
        return graph_capture(model, FitSettings(compile=compile_mode), torch.device(device))

    assert capture(TritonHashGrid, "auto") and capture(TritonHashGrid, "graph")
    assert not capture(TritonHashGrid, "off")
    assert not capture(TritonHashGrid, "auto", device="cpu")
    # The PyTorch reference's backward is not capture-safe: eager under "auto",
    # and a clear setting error when a graph is demanded.
    assert not capture(HashGrid, "auto")
    with pytest.raises(InputError, match="fit.compile"):
        capture(HashGrid, "graph")


def test_the_prior_hold_pulls_a_drifting_t_back_toward_the_camera_prior(case: Case) -> None:
    """`fit.weights.prior_hold`: a residual of 30 working px over the camera prior, where M is
    low, is a loss; one gradient step on that term alone shrinks the residual, and the term
    is absent at weight 0."""
    sets = {**TINY_FIT, "fit": {**TINY_FIT["fit"], "weights": {"prior_hold": 0.05}}}
    held = Case(case.shot, case.tensors, build_settings("draft", sets))
    fitter = _fitter(held)
    model, geo = fitter.model, fitter.geometry
    assert model.has_camera
    last = model.mapping[-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([30.0, 0.0]) / geo.half_rez)
    index = torch.randperm(
        case.tensors.frames.numel() // 3, generator=torch.Generator().manual_seed(0)
    )
    index = index[:2048]
    on = torch.ones(())

    g = torch.Generator().manual_seed(1)
    xyt = fitter.geometry.xyt_norm(
        torch.rand(512, generator=g) * (case.tensors.width - 1),
        torch.rand(512, generator=g) * (case.tensors.height - 1),
        torch.randint(0, case.tensors.n_frames, (512,), generator=g).float(),
    )

    def residual_px() -> float:
        with torch.no_grad():
            return float((model.uv(xyt) - model.camera_base(xyt)).norm(dim=1).mean()) * geo.half_rez

    before = residual_px()
    term = fitter.joint.losses(index, on)[1]["prior_hold"]
    assert float(term.detach()) > 0.05 * 0.2 * (before - 10.0)
    model.zero_grad()
    term.backward()
    with torch.no_grad():
        for p in model.mapping.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / max(float(p.grad.abs().max()), 1e-12)
    assert residual_px() < before - 0.05
    off = {**TINY_FIT, "fit": {**TINY_FIT["fit"], "weights": {"prior_hold": 0.0}}}
    plain = Case(case.shot, case.tensors, build_settings("draft", off))
    assert "prior_hold" not in _fitter(plain).joint.losses(index, on)[1]


def test_the_motion_tie_rule_only_unties_motion_ties_that_miss_the_atlas(
    case: Case, fitted: tuple
) -> None:
    """`refine.motion_tie_factor` / `threshold_from_reference` (docs/method.md §5.2): off, the
    ties are reference-in or motion without a reference match; on, only motion ties whose
    error exceeds factor × θ_t are dropped, and reference ties all stay."""
    _, _, fitter = fitted
    c = fitter.refinement.candidates()
    follows = c.follows
    landing = evidence.reference_landing(
        case.tensors.roi, case.tensors.corr.ref, case.tensors.corr.ref_valid.bool(), 3
    )

    def ties(**rule: float | bool) -> Ties:
        problem = fitter.problem
        refine = dataclasses.replace(problem.refine, **rule)
        return Refinement(dataclasses.replace(problem, refine=refine), fitter.model, 1).ties(c)

    off = ties(motion_tie_factor=0.0, threshold_from_reference=False)
    tied_off, err = off.tied, off.error
    assert torch.equal(tied_off, (landing > 0) | (follows & (landing == 0)))
    on = ties(motion_tie_factor=1.0)
    tied_on, err_on, theta = on.tied, on.error, on.threshold
    assert torch.equal(err, err_on)
    dropped = tied_off & ~tied_on
    assert not bool((tied_on & ~tied_off).any())
    assert not bool((dropped & (landing > 0)).any())
    assert bool((err[dropped] > theta[:, None, None].expand_as(err)[dropped]).all())
    kept_motion = tied_on & (landing == 0)
    assert bool((err[kept_motion] <= theta[:, None, None].expand_as(err)[kept_motion]).all())


def test_the_atlas_cell_cap_drops_only_the_atlas_grids_finer_levels(case: Case) -> None:
    """`fit.atlas_cells_per_px`: the atlas grid keeps the levels with at most that many cells per
    working pixel of the atlas box; the mask grid keeps every level; 0 leaves both whole."""
    from rna_engine.model.fields import capped_levels, level_resolutions

    grid = case.settings.fit.hash_grid
    res = level_resolutions(grid)
    assert capped_levels(grid, 0.0) == grid
    assert capped_levels(grid, res[3] - 1).n_levels == 4
    assert capped_levels(grid, res[3] - 1.5).n_levels == 3
    assert capped_levels(grid, 0.5).n_levels == 1
    whole = _fitter(case)
    side_px = (whole.atlas_box[2] - whole.atlas_box[0]) * whole.geometry.half_rez
    assert whole.model.atlas_grid.n_output_dims == grid.n_levels * grid.n_features_per_level
    cap = (res[4] - 1) / side_px + 1e-6
    capped_settings = dataclasses.replace(case.settings.fit, atlas_cells_per_px=cap)
    ctx = RunContext(device="cpu", seed=0)
    capped = Fitter(case.tensors, capped_settings, case.settings.refine, ctx)
    assert capped.model.atlas_grid.n_output_dims == 5 * grid.n_features_per_level
    assert capped.model.mask_grid.n_output_dims == grid.n_levels * grid.n_features_per_level
    out = capped.model.atlas_mlp(capped.model.atlas_grid(torch.rand(7, 2)))
    assert out.shape == (7, 3)
