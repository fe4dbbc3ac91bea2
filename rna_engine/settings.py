"""Validated, frozen settings for every stage, the named presets, and the build spec.

`build.json` is `dataclasses.asdict(BuildSpec)` plus read-only build outputs; `load_spec` reads
a hand-written spec or a cache's `build.json` back and validates it (schema: docs/spec.md).
The path rule is applied once, at the door (`absolute_paths`): a spec file's relative paths are
relative to its folder (or to its `root`), command-line paths to the current directory, and the
cache's `build.json` stores them absolute. A bare number in stage code is a missing setting: add
it here with its unit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_type_hints

from .errors import InputError

log = logging.getLogger(__name__)

SPEC_VERSION = 1
"""Version of the build-spec schema this engine writes and reads (docs/spec.md)."""

PresetName = Literal["draft", "standard", "final"]


def _require(cond: bool, name: str, why: str) -> None:
    if not cond:
        raise InputError(f"setting {name}: {why}")


@dataclass(frozen=True)
class HashGridSettings:
    """Multiresolution hash encoding (docs/method.md §1.4; tinycudann's parameter layout)."""

    n_levels: int = 16
    """Number of resolution levels."""
    n_features_per_level: int = 2
    """Features stored per level."""
    log2_hashmap_size: int = 15
    """log2 of the entries per level (hashed levels)."""
    base_resolution: int = 16
    """Cells across the coarsest level."""
    per_level_scale: float = 1.25
    """Growth factor of the resolution from one level to the next."""

    def __post_init__(self) -> None:
        _require(1 <= self.n_levels <= 32, "hash_grid.n_levels", "must be in 1..32")
        _require(
            self.n_features_per_level in (1, 2, 4, 8),
            "hash_grid.n_features_per_level",
            "must be 1, 2, 4 or 8",
        )
        _require(
            10 <= self.log2_hashmap_size <= 24, "hash_grid.log2_hashmap_size", "must be in 10..24"
        )
        _require(self.base_resolution >= 2, "hash_grid.base_resolution", "must be >= 2")
        _require(self.per_level_scale >= 1.0, "hash_grid.per_level_scale", "must be >= 1")


@dataclass(frozen=True)
class IngestSettings:
    """Reading the plate and ROI (docs/architecture.md)."""

    working_long_side: int = 768
    """Long side of the working resolution in pixels (the fit runs there; the bake does not)."""
    colour: Literal["auto", "scene_linear", "display"] = "auto"
    """Plate encoding: auto (EXR/DPX/float TIFF are scene-linear, 8/16-bit images display)."""
    ocio_config: str = ""
    """OCIO config path or `ocio://` URI; empty: $OCIO, else the pinned built-in config."""
    colorspace: str = ""
    """Input colourspace name of the plate in the OCIO config (e.g. the Nuke Read's); the plate
    is converted from it to the config's scene_linear role. Empty: the `colour` auto rule."""
    strict_decode: bool = False
    """Refuse (exit 2) a plate frame that is damaged but still decodes: libjpeg's "Corrupt JPEG
    data" warnings, a PNG ancillary chunk failing its CRC (`rna-engine build --strict`). Off:
    the frame is read with one warning naming it. Truncated and undecodable files are always
    refused; a JPEG bit flip that decodes silently to other pixels cannot be found."""

    def __post_init__(self) -> None:
        _require(
            32 <= self.working_long_side <= 8192, "ingest.working_long_side", "must be in 32..8192"
        )


@dataclass(frozen=True)
class FlowSettings:
    """Correspondences (docs/method.md §3)."""

    backend: Literal["dis", "raft"] = "dis"
    """Optical-flow backend: OpenCV DIS (no weights) or torchvision RAFT (installed weights)."""
    appearance: Literal["descriptor", "dino"] = "descriptor"
    """Appearance test: weight-free local descriptor or DINO (installed weights)."""
    adjacent_cycle_px: float = 1.0
    """Forward-backward cycle error threshold for adjacent pairs, working-resolution pixels."""
    reference_cycle_px: float = 5.0
    """Cycle error threshold for hops of the reference chains, pixels."""
    max_hops: int = 9
    """Longest hop of a reference chain in frames (plus the direct flow beyond it)."""
    appearance_threshold: float = 0.5
    """Minimum appearance similarity (cosine) of a match."""
    direct_appearance_threshold: float = 0.6
    """Minimum appearance similarity of a direct long-range flow."""
    dis_preset: Literal["fast", "medium", "ultrafast"] = "medium"
    """OpenCV DIS preset before our quality overrides."""
    dis_finest_scale: int = 0
    """Finest DIS pyramid level (0 = full working resolution, 1 = half, ...)."""
    dis_patch_size_px: int = 8
    """DIS patch edge, pixels of the pyramid level."""
    dis_patch_stride_px: int = 4
    """Distance between neighbouring DIS patches, pixels (smaller: denser, slower)."""
    dis_gradient_descent_iterations: int = 16
    """Inverse-search iterations per DIS patch and level."""
    dis_variational_iterations: int = 10
    """Variational refinement iterations per DIS level (0 disables the refinement)."""
    raft_iterations: int = 20
    """RAFT recurrent flow updates per pair."""
    batch_pairs: int = 8
    """Frame pairs per learned-model batch (each pair runs in both directions)."""
    descriptor_radius_px: int = 3
    """Half-width of the weight-free descriptor's square patch, pixels (patch = 2r+1)."""
    descriptor_structure_floor: float = 1e-3
    """Patch variance (per channel, working encoding²) under which texture stops counting, so
    flat patches compare by colour alone (the descriptor test's regulariser)."""
    descriptor_colour_tolerance: float = 0.1
    """Mean-colour difference (RMS over channels, working encoding 0..1) that scales the
    descriptor similarity by exp(-1/2)."""
    bootstrap_sampling: Literal["nearest", "bilinear"] = "bilinear"
    """How the reference ROI is pulled back: nearest pixel, or bilinear > 0.5."""
    camera: Literal["homography", "off"] = "homography"
    """Camera-motion prior (`camera.py`): a homography per frame onto the reference, anchored
    to it, and guided direct matches t→r that replace drifting chains; off = chains only."""

    def __post_init__(self) -> None:
        _require(self.adjacent_cycle_px > 0, "flow.adjacent_cycle_px", "must be > 0")
        _require(self.reference_cycle_px > 0, "flow.reference_cycle_px", "must be > 0")
        _require(1 <= self.max_hops <= 30, "flow.max_hops", "must be in 1..30")
        _require(
            -1 <= self.appearance_threshold <= 1, "flow.appearance_threshold", "must be in -1..1"
        )
        _require(
            -1 <= self.direct_appearance_threshold <= 1,
            "flow.direct_appearance_threshold",
            "must be in -1..1",
        )
        _require(0 <= self.dis_finest_scale <= 6, "flow.dis_finest_scale", "must be in 0..6")
        _require(4 <= self.dis_patch_size_px <= 32, "flow.dis_patch_size_px", "must be in 4..32")
        _require(
            1 <= self.dis_patch_stride_px <= self.dis_patch_size_px,
            "flow.dis_patch_stride_px",
            "must be in 1..dis_patch_size_px",
        )
        _require(
            self.dis_gradient_descent_iterations >= 1,
            "flow.dis_gradient_descent_iterations",
            "must be >= 1",
        )
        _require(
            self.dis_variational_iterations >= 0, "flow.dis_variational_iterations", "must be >= 0"
        )
        _require(self.raft_iterations >= 1, "flow.raft_iterations", "must be >= 1")
        _require(self.batch_pairs >= 1, "flow.batch_pairs", "must be >= 1")
        _require(
            1 <= self.descriptor_radius_px <= 16, "flow.descriptor_radius_px", "must be in 1..16"
        )
        _require(
            self.descriptor_structure_floor > 0, "flow.descriptor_structure_floor", "must be > 0"
        )
        _require(
            self.descriptor_colour_tolerance > 0, "flow.descriptor_colour_tolerance", "must be > 0"
        )


@dataclass(frozen=True)
class LossWeights:
    """Loss weights (docs/method.md §2.2); defaults are the authors'."""

    rgb: float = 1.0
    """Reconstruction (Eq. 3)."""
    bootstrap: float = 0.6
    """BCE against the bootstrap masks, first `FitSettings.bootstrap_fraction` of the fit."""
    ref_mask: float = 0.4
    """BCE on reference-frame samples (Eq. 7, term 1)."""
    ref_flow_alpha: float = 0.8
    """Mask consistency with the reference-frame match (Eq. 7, term 2)."""
    flow_alpha: float = 0.8
    """Mask consistency with adjacent-frame matches (Eq. 7, term 3)."""
    ref_optical_flow: float = 0.02
    """UV correspondence with the reference frame (Eq. 6, first term)."""
    optical_flow: float = 0.1
    """UV correspondence with adjacent frames (Eq. 6, second term)."""
    rigidity: float = 0.002
    """Rigidity (Eq. 4)."""
    position: float = 10.0
    """Position (Eq. 5). [OURS] 10, not the authors' 0.6: at 0.6 T at the reference frame
    itself was off by up to 11 working px on blackswan and 12–19 px next to the frame edge on
    kite-surf, so the paint moved on the frame it was drawn for; at 10 it is off by ≤ 0.2 px and
    the far frames improve too (H200: blackswan worst frame 80.6 → 85.0 %, kite-surf 44.7 →
    65.3 %, BENCHMARKS.md)."""
    residual_reg: float = 0.8
    """Illumination regulariser (Eq. 8)."""
    prior_hold: float = 0.02
    """[OURS] Weight of the prior hold (docs/method.md §2.10): per working pixel that T's
    residual over the camera prior exceeds `FitSettings.prior_hold_px`, weighted by 1 − M
    (detached). Where M is 0 nothing else holds T: after the ROI leaves the frame T landed
    unrelated surface in the ROI (car-turn frames 60–63: 16–81 % coverage; with the hold the
    ROI leaves the view cleanly). No effect without a camera prior. 0 = off."""


@dataclass(frozen=True)
class FitSettings:
    """Joint atlas estimation (docs/method.md §2, §4)."""

    pretrain_steps: int = 2000
    """Identity pre-training steps of the UV mapping T."""
    iterations: int = 60_000
    """Joint-fit steps."""
    batch_size: int = 10_000
    """Pixels sampled per step."""
    reference_fraction: float = 0.1
    """Share of each batch forced onto the reference frame (stratified sampling)."""
    roi_fraction: float = 0.4
    """Share of each batch drawn from the ROI's neighbourhood (bootstrap masks dilated)."""
    roi_margin_px: int = 4
    """Margin around each frame's ROI box for the ROI samples, working pixels."""
    bootstrap_fraction: float = 1 / 6
    """Fraction of the fit during which the bootstrap BCE is on (10 k of 60 k in the paper)."""
    lr_mlp: float = 5e-4
    """Adam learning rate of the MLP weights."""
    lr_hash: float = 5e-2
    """Adam learning rate of the hash tables."""
    lr_decay: float = 0.1
    """Final learning rate as a fraction of the initial one (cosine decay; 1 = constant)."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Loss weights."""
    rigidity_delta_px: float = 1.0
    """Finite-difference offset of the rigidity Jacobian, working pixels (Eq. 15)."""
    camera_prior: bool = True
    """Base T on the camera prior of the correspondences stage: T(p) = H_t(p) + residual, so the
    MLP learns only what the homography does not explain (no effect when `flow.camera` is off)."""
    frame_grade: bool = True
    """[OURS] Î = gain_t · S·A + offset_t, a free RGB gain and offset per frame (identity on the
    reference): exposure and white-balance drift are not pulled toward the reference's look by
    the regulariser of S (Eq. 8), which then sees only local light."""
    evidence_guard: bool = True
    """[OURS] The reconstruction term does not lower M on samples the atlas roughly explains or
    a match ties to the surface (a reference match into the ROI; without one, an adjacent match
    that follows the surface within `refine.motion_surface_px`), unless the reference match
    lands outside the ROI or the sample is a mover (every valid adjacent match disagrees by
    more than `refine.motion_occluder_px`): water, reflections and light the atlas misses are
    not read as occlusion (docs/method.md §2.3)."""
    bootstrap_matched_only: bool = True
    """[OURS] The bootstrap term (§2.8) applies only where the reference match is valid (and on
    the reference frame): B_t = 0 where the match failed says nothing about occlusion, and on
    far frames it covers most of the ROI."""
    prior_hold_px: float = 10.0
    """[OURS] Residual (working px) that the prior hold (`weights.prior_hold`) leaves free:
    parallax and the prior's own error stay T's to fit."""
    position_set: Literal["roi", "frame"] = "roi"
    """Position loss on the ROI of the reference frame (paper) or on the whole frame (code)."""
    hash_grid: HashGridSettings = field(default_factory=HashGridSettings)
    """Hash grid of the atlas A and the mask M."""
    atlas_cells_per_px: float = 0.0
    """[OURS] Cap on the atlas grid's finest level, in cells per working pixel of the atlas box
    (levels finer than this are dropped; the mask grid keeps them all). The default grid puts
    ~4 cells on a working pixel of a typical ROI, enough to hold an occluder's edge at a
    sub-pixel phase. 0 = no cap."""
    mapping_width: int = 256
    """Width of the UV mapping MLP T."""
    atlas_width: int = 64
    """Width of the atlas MLP A."""
    mask_width: int = 32
    """Width of the mask MLP M."""
    shade_width: int = 64
    """Width of the illumination MLP S."""
    encoding_backend: Literal["auto", "torch", "triton", "tcnn"] = "auto"
    """Hash-grid implementation; all compute the same function on the same parameters."""
    compile: Literal["auto", "off", "graph"] = "auto"
    """Step capture on CUDA: auto/graph captures the step as a CUDA graph; off runs eagerly."""
    scale_with_shot: bool = True
    """Scale step counts with frame count (reference 70 frames)."""
    log_every: int = 200
    """Steps between loss read-backs (the only host syncs in the loop)."""
    checkpoint_every: int = 2000
    """Steps between checkpoints under work/."""

    def __post_init__(self) -> None:
        _require(self.iterations >= 1, "fit.iterations", "must be >= 1")
        _require(self.pretrain_steps >= 0, "fit.pretrain_steps", "must be >= 0")
        _require(64 <= self.batch_size <= 4_000_000, "fit.batch_size", "must be in 64..4000000")
        _require(0 <= self.reference_fraction < 1, "fit.reference_fraction", "must be in [0,1)")
        _require(0 <= self.roi_fraction < 1, "fit.roi_fraction", "must be in [0,1)")
        _require(
            self.reference_fraction + self.roi_fraction < 1,
            "fit.roi_fraction",
            "reference_fraction + roi_fraction must be < 1",
        )
        _require(self.lr_mlp > 0 and self.lr_hash > 0, "fit.lr_mlp", "learning rates must be > 0")
        _require(0 < self.lr_decay <= 1, "fit.lr_decay", "must be in (0,1]")
        _require(self.rigidity_delta_px > 0, "fit.rigidity_delta_px", "must be > 0")
        _require(self.prior_hold_px >= 0, "fit.prior_hold_px", "must be >= 0")
        _require(
            self.atlas_cells_per_px == 0 or self.atlas_cells_per_px >= 0.25,
            "fit.atlas_cells_per_px",
            "must be 0 (no cap) or >= 0.25",
        )
        _require(self.log_every >= 1, "fit.log_every", "must be >= 1")
        _require(self.checkpoint_every >= 1, "fit.checkpoint_every", "must be >= 1")


@dataclass(frozen=True)
class RefineSettings:
    """Mask refinement, M only (docs/method.md §5)."""

    iterations: int = 20_000
    """Refinement steps."""
    colour_threshold: float = 0.025
    """ε: mean-abs RGB error (working encoding, 0..1) under which a pixel is 'not occluded'."""
    weight_refine: float = 0.1
    """λ_a of Eq. 10 (the paper's 0.01 cannot lift a matte the joint fit lost on far frames;
    0.1 with `occluder_carry_steps` = 3, measured on blackswan, docs/method.md §5.3)."""
    weight_flow_alpha: float = 0.1
    """λ_b of Eq. 10 (adjacent mask consistency)."""
    weight_occluded: float = 0.05
    """[OURS] Weight of M² on the candidates evidenced as occluders (the set O of
    `evidence.refine_sets`, docs/method.md §5.2)."""
    occluder_carry_steps: int = 3
    """[OURS] Rounds of `evidence.carry_along_flow`: an untied candidate whose adjacent match
    lands in O on the next or previous frame joins O (the occluder's own motion carries the
    evidence to pixels where it was not seen). 0 = off."""
    pull_unexplained: bool = False
    """[OURS] Pull M toward 1 also on candidates that no match ties to the surface and that the
    atlas does not roughly explain (error ≥ ε·`occluded_factor`, `evidence.unexplained`). Off:
    M keeps the joint fit's value there, so a frame where T lost the surface is not painted
    wherever T points (car-turn's far frames, docs/method.md §5.3)."""
    camera_gate: float = 0.5
    """[OURS] The ROI stays where the camera prior can put it: a pixel is a candidate (in Ω,
    and in the baked `roi_tracked`, so the matte is 0 elsewhere) only where the camera prior
    H_t maps it inside the reference ROI's bounding box grown by this share of its size per
    side (+ 8 px), the region the prior was fitted on (`camera.roi_region`). Where T has lost
    the surface after the ROI left the frame, T still lands pixels in the ROI (car-turn's last
    16 frames, docs/method.md §5.4); the gate drops them and the frame reports the ROI out of
    view. Negative: off; no effect without a camera prior (`flow.camera` off)."""
    occluded_factor: float = 4.0
    """Multiple of `colour_threshold` above which a candidate pixel that no match ties to the
    surface counts as occluded (`evidence.py`). 2 before issue #15: water and foliage on real
    clips miss the atlas by 0.05–0.1."""
    occluder_floor: float = 1.0
    """[OURS] Multiple of `colour_threshold` below which the occluder threshold θ_t never
    falls on a frame anchored by at least 200 reference ties (`evidence.occluder_threshold`);
    a frame without them (T may have lost the surface there: kite-surf's first frames) keeps
    `occluded_factor`. An untied candidate whose atlas error is above θ_t is an occluder. At 4
    (before issue #34) an occluder whose colours are near the surface's (error 0.03–0.09
    against 0.002 on the visible surface) was let through (`enter-small`: 100 % shown on the
    worst frame). Together with `appearance_open_px` (docs/method.md §5.2)."""
    appearance_open_px: int = 1
    """[OURS] The appearance rule's occluder pixels (error > θ_t, untied) are opened by a
    (2r+1)² square (`evidence.opened`): an occluder is a region, the atlas's misses on water
    and glints are speckle. Measured with the floor at 1 (CPU small settings, A/B from one
    joint fit per shot): blackswan's worst frame 77.4 → 84.0 % visible, kite-surf's 19.7 →
    32.6 %, no frame of either lower; 0 = off."""
    reference_margin_px: int = 3
    """[OURS] A valid reference match landing farther than this many working pixels outside the
    reference ROI is evidence of an occluder (`evidence.reference_landing`); inside the ROI it
    ties the pixel to the surface."""
    occluded_quantile: float = 0.95
    """[OURS] Per frame, the occluder threshold is raised to `occluded_margin` × this quantile
    of the error on candidates a match ties to the surface (`evidence.occluder_threshold`;
    0 = off, the fixed ε·`occluded_factor`)."""
    occluded_margin: float = 1.5
    """Multiple of that quantile."""
    threshold_from_reference: bool = True
    """[OURS] Take that quantile over the candidates a *reference* match ties to the surface
    (every tied candidate on a frame with fewer than 200 of them). A tie by adjacent motion
    also holds on something resting on the surface (bear's planted paw); with it in the
    quantile the threshold rose above the occluder's own error (docs/method.md §5.2)."""
    motion_tie_factor: float = 2.0
    """[OURS] A tie by adjacent motion alone (no reference match) holds only while the atlas
    error is at most this multiple of the frame's occluder threshold; above it the pixel is
    evidenced as an occluder (`evidence.surface_ties`). 0 = a motion tie always holds."""
    motion_surface_px: float = 0.75
    """[OURS] An adjacent match whose surface positions agree within this many atlas pixels
    ties the pixel to the surface (`evidence.py`)."""
    motion_occluder_px: float = 2.0
    """[OURS] Adjacent matches whose surface positions disagree by more than this many atlas
    pixels in every valid direction make a mover: `fit.evidence_guard` does not protect it."""
    lr_hash: float = 5e-2
    """Adam learning rate of M's hash table."""
    lr_mlp: float = 5e-4
    """Adam learning rate of M's MLP."""

    def __post_init__(self) -> None:
        _require(self.iterations >= 0, "refine.iterations", "must be >= 0")
        _require(self.colour_threshold > 0, "refine.colour_threshold", "must be > 0")
        _require(0 <= self.occluded_quantile < 1, "refine.occluded_quantile", "must be in [0, 1)")
        _require(self.occluded_margin >= 1, "refine.occluded_margin", "must be >= 1")
        _require(
            self.motion_tie_factor == 0 or self.motion_tie_factor >= 1,
            "refine.motion_tie_factor",
            "must be 0 (off) or >= 1",
        )
        _require(self.reference_margin_px >= 0, "refine.reference_margin_px", "must be >= 0")
        _require(self.occluder_carry_steps >= 0, "refine.occluder_carry_steps", "must be >= 0")
        _require(
            0 < self.motion_surface_px < self.motion_occluder_px,
            "refine.motion_surface_px",
            "must be > 0 and < refine.motion_occluder_px",
        )


@dataclass(frozen=True)
class MatteSettings:
    """Soft matte from the refined mask (docs/method.md §6; `rna_engine/matte.py`)."""

    backend: Literal["guided", "vitmatte"] = "guided"
    """Matting: weight-free guided-filter matting, or ViTMatte (installed weights)."""
    band_px: float = 3.0
    """Width of the trimap's unknown band at working resolution, pixels (scaled to the plate)."""
    guided_radius_px: int = 4
    """Guided-filter radius at plate resolution, pixels; raised to the band's full width when
    smaller, so every window over the band reaches sure pixels."""
    guided_eps: float = 1e-3
    """Guided-filter regularisation (variance of the 0..1 display-encoded guide)."""
    temporal_weight: float = 0.5
    """Blend of the previous frame's matte, warped by the caller's flow t→t−1, into the
    current one inside the unknown band (0 = no temporal stabilisation)."""
    guide_encoding: Literal["srgb", "log"] = "srgb"
    """Encoding of the linear plate used as the matting guide: sRGB of values clipped to 0..1,
    or log2 over 2^-8..2^4 (keeps edges inside highlights). ViTMatte always gets sRGB."""
    uncertain_mask: float = 0.05
    """Mask values within this of 0 or 1 count as decided; values between join the unknown band
    (0..0.5, 0 = binarised band only)."""
    keep_cores: bool = False
    """[OURS] Keep the core of every part of the mask's background (an occluder) at least 3 px
    thick out of the unknown band, inside the ROI (`matte.background_cores`), and drop only
    slivers of about a working pixel along the ROI's border: an occluder smaller than the
    band, or whose mask is undecided all over, is otherwise all band, and matting from the
    sure surface around it paints it over. Off by default: on the CPU small-settings clips it
    also cut holes in the visible water (kite-surf's worst frame 23.4 → 19.7 %, up to −7
    points on a frame; docs/method.md §6)."""
    unknown_weight: float = 0.0
    """Trust in the binarised mask inside the band when fitting the guided filter (0..1; 0 =
    fit each window's colour model on the sure pixels only)."""
    closed_form_iterations: int = 60
    """Conjugate-gradient steps of the closed-form (matting Laplacian) refinement of the band;
    0 = guided filter only."""
    closed_form_radius_px: int = 1
    """Window radius of the matting Laplacian, plate pixels."""
    closed_form_eps: float = 1e-5
    """Regularisation of the matting Laplacian (variance of the 0..1 guide); float32 math
    amplifies rounding by 1/eps, so keep it >= 1e-6."""
    tile_px: int = 0
    """Tile edge of the guided/closed-form matting, plate pixels (bounds memory at 4K); tiles
    without band pixels are skipped. 0 = auto: 256 on CPU (a thin band wastes less), 1024 on
    GPU (fewer kernel launches)."""
    temporal_tolerance: float = 0.2
    """Matte difference (0..1) at which the temporal blend fades out, so an edge that really
    moved is not dragged; 0 disables the fade."""
    vitmatte_dir: str = ""
    """ViTMatte weights folder (`save_pretrained` layout); empty: `$RNA_HOME/models/vitmatte`."""
    vitmatte_tile_px: int = 1024
    """ViTMatte tile edge at plate resolution, pixels (multiple of 32)."""
    vitmatte_overlap_px: int = 128
    """Overlap of neighbouring ViTMatte tiles, pixels; blended with linear feathering."""

    def __post_init__(self) -> None:
        _require(self.band_px >= 0, "matte.band_px", "must be >= 0")
        _require(self.guided_radius_px >= 1, "matte.guided_radius_px", "must be >= 1")
        _require(self.guided_eps > 0, "matte.guided_eps", "must be > 0")
        _require(0 <= self.temporal_weight < 1, "matte.temporal_weight", "must be in [0,1)")
        _require(0 <= self.uncertain_mask < 0.5, "matte.uncertain_mask", "must be in [0,0.5)")
        _require(0 <= self.unknown_weight <= 1, "matte.unknown_weight", "must be in [0,1]")
        _require(self.closed_form_iterations >= 0, "matte.closed_form_iterations", "must be >= 0")
        _require(self.closed_form_radius_px >= 1, "matte.closed_form_radius_px", "must be >= 1")
        _require(self.closed_form_eps >= 1e-7, "matte.closed_form_eps", "must be >= 1e-7")
        _require(self.tile_px == 0 or self.tile_px >= 64, "matte.tile_px", "must be 0 or >= 64")
        _require(self.temporal_tolerance >= 0, "matte.temporal_tolerance", "must be >= 0")
        _require(
            self.vitmatte_tile_px >= 64 and self.vitmatte_tile_px % 32 == 0,
            "matte.vitmatte_tile_px",
            "must be a multiple of 32, >= 64",
        )
        _require(
            0 <= self.vitmatte_overlap_px <= self.vitmatte_tile_px // 2,
            "matte.vitmatte_overlap_px",
            "must be in 0..vitmatte_tile_px/2",
        )


@dataclass(frozen=True)
class BakeSettings:
    """Writing the cache at plate resolution (docs/cache.md)."""

    atlas_scale: float = 1.0
    """Atlas raster size as a multiple of the plate format."""
    reference_detail: int = 0
    """[OURS] Frames (the reference first, then its nearest neighbours) whose visible pixels,
    divided by their shade and splatted into the atlas through T, replace the atlas field
    inside the ROI (docs/method.md §6.1): the atlas shows the plate's own texture, not the
    field's smoothed copy. 1 = the reference frame alone (shade × atlas gives it back exactly,
    its grain included, which then rides on every frame); more frames average the grain out.
    0 = off, the default (H200: atlas PSNR +1…+3.5 dB on bear, but on the grainy synthetic
    `pan` the reference's grain cost 5 dB of edit PSNR, BENCHMARKS.md)."""
    tile_px: int = 512
    """Tile edge used when querying the fields at plate resolution."""
    margin_px: int = 16
    """Data-window margin around the ROI's bounding box, plate pixels."""
    compression: Literal["zips", "zip", "piz"] = "zips"
    """Lossless EXR compression of the passes."""

    def __post_init__(self) -> None:
        _require(0.25 <= self.atlas_scale <= 4, "bake.atlas_scale", "must be in 0.25..4")
        _require(self.tile_px >= 32, "bake.tile_px", "must be >= 32")
        _require(self.reference_detail >= 0, "bake.reference_detail", "must be >= 0 (frames)")
        _require(self.margin_px >= 0, "bake.margin_px", "must be >= 0")


@dataclass(frozen=True)
class QCSettings:
    """Quality gates and per-frame findings (`rna_engine/quality.py`)."""

    min_reference_tracked: float = 0.5
    """Hard gate: IoU of the drawn ROI with the ROI that T carries back to the reference frame
    (0..1)."""
    min_reference_visible: float = 0.5
    """Hard gate: share of the drawn ROI the fit's mask calls visible on the reference frame."""
    min_reference_psnr_db: float = 18.0
    """Hard gate: atlas-only PSNR (dB, working encoding) of the visible ROI on the reference
    frame; a converged fit measures 30-50 dB, an untrained one about 10-15."""
    min_reference_matte: float = 0.5
    """Hard gate: share of the tracked ROI with soft matte > 0.5 on the reference frame."""
    min_frame_coverage: float = 0.5
    """Warning: frames whose soft matte covers less than this share of the tracked ROI
    (occluders, or tracking the model is unsure of: check the paint there)."""
    min_frame_psnr_db: float = 18.0
    """Warning and low confidence: frames with the ROI in view whose atlas-only PSNR of the
    visible tracked ROI is under this (dB): T no longer points at the ROI's surface there."""
    max_reference_uv_px: float = 1.0
    """Warning: the UV mapping on the reference frame, where it is the identity by
    definition (the atlas is that frame's pixel grid), is off by more than this many working
    pixels on 10 % of the drawn ROI (`quality.reference_alignment`): the paint is displaced on
    the very frame it was drawn for (measured on kite-surf: 12-19 px near the frame edge)."""
    drop_ratio: float = 0.6
    """Warning: a frame whose matte coverage or tracked-ROI area falls below this × the median
    of its neighbours (0..1)."""
    neighbour_frames: int = 5
    """Frames on each side that make a frame's neighbourhood for `drop_ratio`."""

    def __post_init__(self) -> None:
        for name in ("min_reference_tracked", "min_reference_visible", "min_reference_matte"):
            _require(0 <= getattr(self, name) <= 1, f"qc.{name}", "must be in [0,1]")
        _require(0 <= self.drop_ratio <= 1, "qc.drop_ratio", "must be in [0,1]")
        _require(0 <= self.min_frame_coverage <= 1, "qc.min_frame_coverage", "must be in [0,1]")
        _require(self.neighbour_frames >= 1, "qc.neighbour_frames", "must be >= 1")


@dataclass(frozen=True)
class BuildSettings:
    """Every stage's settings; presets are named overrides of these defaults."""

    preset: PresetName = "standard"
    """The preset these settings started from (informational)."""
    seed: int = 0
    """Seed of every random choice."""
    ingest: IngestSettings = field(default_factory=IngestSettings)
    flow: FlowSettings = field(default_factory=FlowSettings)
    fit: FitSettings = field(default_factory=FitSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)
    matte: MatteSettings = field(default_factory=MatteSettings)
    bake: BakeSettings = field(default_factory=BakeSettings)
    qc: QCSettings = field(default_factory=QCSettings)


PRESETS: dict[str, dict[str, Any]] = {
    "draft": {
        "ingest": {"working_long_side": 384},
        # 5 variational iterations: 20-30 % less DIS time for -0.15 dB edit PSNR (BENCHMARKS.md).
        "flow": {"dis_variational_iterations": 5},
        "fit": {
            "pretrain_steps": 300,
            "iterations": 3000,
            "batch_size": 8192,
            "checkpoint_every": 500,
            "log_every": 100,
        },
        "refine": {"iterations": 600},
    },
    "standard": {
        "fit": {"pretrain_steps": 1000, "iterations": 6000, "batch_size": 32_768},
        # 6 k refinement steps (was 2 k) lift the far frames' matte: blackswan worst frame
        # 76.7 -> 80.4 %, +3.2 s on the H200 (BENCHMARKS.md).
        "refine": {"iterations": 6000},
    },
    "final": {
        "fit": {"pretrain_steps": 2000, "iterations": 20_000, "batch_size": 65_536},
        "refine": {"iterations": 12_000},
    },
}
"""Named overrides. `standard` trades the paper's 60 k steps × 10 k samples for 6 k steps ×
32 k stratified samples (measured on an H100: 43.7 dB ROI PSNR, 41.9 dB edit PSNR on the
768×432×70 synthetic shot, BENCHMARKS.md); `final` spends more for the last decibels."""

T = TypeVar("T")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise InputError(f"setting {prefix.rstrip('.') or cls.__name__}: expected a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"setting {prefix}{unknown[0]}: unknown setting")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{prefix}{key}.")  # type: ignore[arg-type]
            continue
        kwargs[key] = _coerce(hint, value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"setting {prefix.rstrip('.')}: {err}") from err


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise InputError(
                f"setting {name}: {value!r} is not one of {', '.join(map(str, allowed))}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"setting {name}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"setting {name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"setting {name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"setting {name}: expected a string, got {value!r}")
        return value
    return value


def build_settings(
    preset: str = "standard", overrides: dict[str, Any] | None = None
) -> BuildSettings:
    """Defaults, then the named preset, then `overrides` (nested dicts), validated."""
    if preset not in PRESETS:
        raise InputError(f"setting preset: {preset!r} is not one of {', '.join(PRESETS)}")
    merged = _merge({"preset": preset}, PRESETS[preset])
    merged = _merge(merged, overrides or {})
    return from_dict(BuildSettings, merged)


@dataclass(frozen=True)
class BuildSpec:
    """What to build: the contents of `build.json` (docs/cache.md; schema in docs/spec.md).

    Paths are made absolute once, at the door (`load_spec`, the CLI, the service, `run_build`):
    relative ones resolve against `root`, which defaults to the spec file's folder (the current
    directory for command-line arguments). A spec moves with its shot, and farm path mapping only
    has to rewrite the folder the spec lives in.
    """

    plate: str
    """Plate sequence pattern (`name.####.exr`, `name.%04d.exr`, `name.@.exr`) or file."""
    roi: str
    """ROI matte: an image or a sequence pattern (its frame at the reference frame is used)."""
    reference_frame: int
    """Plate frame number the atlas is aligned with (the ROI must be unoccluded there)."""
    spec_version: int = SPEC_VERSION
    """Schema version of the spec (a spec without it is read as version 1)."""
    frames: str = ""
    """Frame range (`1001-1100`, `1-10x2`); empty: every frame found."""
    holdout: str = ""
    """Optional holdout matte sequence: where it is 1 the soft matte is forced to 0."""
    roi_channel: str = "A"
    """Channel of the ROI image holding the matte (falls back to the first channel)."""
    holdout_channel: str = "A"
    """Channel of the holdout image holding the matte."""
    out: str = "rna_cache"
    """Cache root; the build goes to `<out>/<name>/v###/`."""
    name: str = "shot"
    """Build name (folder under the cache root)."""
    version: int = 0
    """Cache version to write; 0 = the next free version (or resume an unfinished one)."""
    device: str = "auto"
    """`auto`, `cpu` or `cuda:N`."""
    settings: BuildSettings = field(default_factory=BuildSettings)
    root: str = ""
    """Folder relative paths resolve against ('' = the spec file's folder, or the current
    directory for command-line arguments); once resolved, the absolute folder that was used."""

    def __post_init__(self) -> None:
        _require(
            self.spec_version == SPEC_VERSION,
            "spec_version",
            f"{self.spec_version} is not a version this engine reads ({SPEC_VERSION})",
        )
        _require(bool(self.plate), "plate", "is empty")
        _require(bool(self.roi), "roi", "is empty")
        _require(self.version >= 0, "version", "must be >= 0")
        _require(
            bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
            "name",
            "must be a plain folder name",
        )


PATH_FIELDS = ("plate", "roi", "holdout", "out")
"""Spec fields holding a path or sequence pattern (each follows the path rule)."""
SETTING_PATHS = (("ingest", "ocio_config"), ("matte", "vitmatte_dir"))
"""Settings holding a path (`ocio://` URIs and '' are left alone)."""
OUTPUT_FIELDS = ("build_hash", "engine_version", "cache_format_version", "torch")
"""Read-only fields a cache's `build.json` adds to the spec; ignored when it is read back."""


def _is_path(value: str) -> bool:
    return bool(value) and "://" not in value


def relative_paths(spec: BuildSpec) -> list[str]:
    """Names of the spec's path fields and path settings that are relative."""
    names = [
        key
        for key in PATH_FIELDS
        if _is_path(getattr(spec, key)) and not Path(getattr(spec, key)).expanduser().is_absolute()
    ]
    for group, key in SETTING_PATHS:
        value = getattr(getattr(spec.settings, group), key)
        if _is_path(value) and not Path(value).expanduser().is_absolute():
            names.append(f"settings.{group}.{key}")
    return names


def _absolute(value: str, base: Path) -> str:
    if not _is_path(value):
        return value
    # normpath, not resolve(): symlinked mounts keep the names the farm maps
    return os.path.normpath(base / Path(value).expanduser())


def absolute_paths(spec: BuildSpec, base: Path) -> BuildSpec:
    """`spec` with every path absolute: relative ones against `spec.root`, else against `base`.

    The one place the path rule is applied; `root` becomes the absolute folder that was used.
    Idempotent: a spec whose paths are absolute comes back with the same paths.
    """
    folder = Path(_absolute(spec.root, Path(base).absolute()) if spec.root else base).absolute()
    folder = Path(os.path.normpath(folder))
    settings = spec.settings
    for group, key in SETTING_PATHS:
        part = getattr(settings, group)
        fixed = _absolute(getattr(part, key), folder)
        settings = dataclasses.replace(
            settings, **{group: dataclasses.replace(part, **{key: fixed})}
        )
    changes: dict[str, Any] = {key: _absolute(getattr(spec, key), folder) for key in PATH_FIELDS}
    return dataclasses.replace(spec, **changes, settings=settings, root=str(folder))


def spec_to_dict(spec: BuildSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def _drop_outputs(data: dict[str, Any]) -> dict[str, Any]:
    """`data` less the read-only outputs of a cache's `build.json` (and the device it ran on)."""
    found = [key for key in OUTPUT_FIELDS if key in data]
    if not found:
        return data
    data = {k: v for k, v in data.items() if k not in OUTPUT_FIELDS}
    ran_on = data.pop("device", None)  # the device the build ran on, not a request
    log.debug(
        "build spec: ignoring the build record's read-only fields %s and device %r",
        ", ".join(found),
        ran_on,
    )
    return data


def spec_from_dict(data: dict[str, Any]) -> BuildSpec:
    """Validate a spec mapping; `settings` may be partial: preset first, then its other keys.

    A cache's `build.json` is accepted: its read-only outputs (`OUTPUT_FIELDS`, and `device`,
    which there is the device the build ran on) are ignored; any other unknown key is an error.
    Paths are returned as given: apply the path rule with `absolute_paths`.
    """
    if not isinstance(data, dict):
        raise InputError("build spec: expected a mapping")
    data = _drop_outputs(dict(data))
    raw = data.pop("settings", None) or {}
    if not isinstance(raw, dict):
        raise InputError("setting settings: expected a mapping")
    raw = dict(raw)
    settings = build_settings(str(raw.pop("preset", "standard")), raw)
    spec = from_dict(BuildSpec, data)
    return dataclasses.replace(spec, settings=settings)


def load_spec(path: Path) -> BuildSpec:
    """Read and validate a spec file or a cache's `build.json`, with every path made absolute
    (relative ones against the file's folder, or its `root`)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: build spec not found") from err
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON build spec ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: build spec must be a JSON object")
    return absolute_paths(spec_from_dict(data), Path(path).absolute().parent)


def _field_docs() -> dict[str, dict[str, str]]:
    """Class → field → the docstring under the field, read from this module's source."""
    import ast
    import inspect
    import sys

    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    docs: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = docs.setdefault(node.name, {})
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                fields[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _schema_of(cls: type, docs: dict[str, dict[str, str]], path: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        name = f"{path}{f.name}"
        if dataclasses.is_dataclass(hint):
            item = _schema_of(hint, docs, f"{name}.")  # type: ignore[arg-type]
            item["description"] = docs[cls.__name__].get(f.name) or " ".join(
                (hint.__doc__ or "").split()
            )
            props[f.name] = item
            continue
        item = {"description": docs[cls.__name__].get(f.name, "")}
        if getattr(hint, "__origin__", None) is Literal:
            item.update(type="string", enum=list(get_args(hint)))
        else:
            item["type"] = {int: "integer", float: "number", bool: "boolean", str: "string"}[hint]
        if f.default is not dataclasses.MISSING:
            item["default"] = f.default
        else:
            required.append(f.name)
        by_preset: dict[str, Any] = {}
        if name.startswith("settings."):
            keys = name.split(".")[1:]
            for preset, values in PRESETS.items():
                value = _preset_value(values, keys)
                if value is not None:
                    by_preset[preset] = value
        if by_preset:
            item["x-presets"] = by_preset
        props[f.name] = item
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _preset_value(values: dict[str, Any], keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def spec_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a build spec, from the dataclasses and their docstrings.

    `default` is the value before the preset; `x-presets` lists what each preset sets instead.
    The read-only outputs of a cache's `build.json` are `readOnly`. docs/build.schema.json is
    this, checked by the tests.
    """
    docs = _field_docs()
    schema = _schema_of(BuildSpec, docs, "")
    settings = schema["properties"]["settings"]
    settings["description"] = (
        "Stage settings: `preset` first, then any of its keys override it (a partial mapping)."
    )
    for key, text in (
        ("build_hash", "Content hash of the build (settings and input files)."),
        ("engine_version", "Engine version that wrote the build."),
        ("cache_format_version", "Version of the cache layout (docs/cache.md)."),
        ("torch", "PyTorch version of the build."),
    ):
        kind = "integer" if key == "cache_format_version" else "string"
        schema["properties"][key] = {"type": kind, "readOnly": True, "description": text}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"RNA for Nuke build spec, spec_version {SPEC_VERSION}",
        "description": "A hand-written spec or a cache's build.json (docs/spec.md).",
        **schema,
    }
