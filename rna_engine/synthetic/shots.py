"""Synthetic shots with exact ground truth.

A band-limited, HDR textured surface is filmed by a camera moving along a smooth homography path
(pan, zoom, rotation, a little perspective) or, with `motion="ground"`, translating over a
non-planar scene (a ground plane meeting a far wall: ground-plane parallax, two depths), optionally
bent by a smooth non-rigid deformation, lit by a global and a local illumination change and an
exposure ramp, and crossed by 1–5 occluders with antialiased soft edges. Everything is an analytic function of the pixel position, so the ground truth is
exact:

- `true_ref_xy[t, row, x]`: where the surface point seen at pixel (x, row) of frame t lies in the
  reference frame, in pixels (pixel centres at integer coordinates). The surface's own coordinates
  *are* reference-frame pixels, so the atlas (aligned with the reference frame, docs/cache.md) and
  the surface texture share one raster.
- `occlusion`: combined occluder alpha (1 = surface hidden).
- `illumination`: linear-light RGB multiplier of the surface.
- `plate_linear = (1 − occlusion) · illumination · texture(true_ref_xy) + occluder colour`.

An edit painted on the reference-frame raster re-renders exactly with `render_edit`.
Deterministic by seed.

Presets: `tiny`/`small`/`bench`/`hd`/`uhd` (gentle camera work), and the hard camera work of
issue #15 at 768×432×70 — `pan` (the ROI carried across half the frame), `zoomrot` (0.6–1.5×,
±20°), `parallax` (ground plane + far wall), `exit` (the ROI leaves the frame and comes back),
`rest` (`pan` with an occluder resting on the surface, moving with it) —
and the occluder scenes of issue #34 on the `pan` camera (`OCCLUDER_SCENES`: `fast`, `enter`,
`beside`, `slow`, `mimic`, `blur`), each also as `<name>-small` (160×96×16) and `<name>-tiny`
(64×48×8) for tests. The hard ones put their occluders across the ROI near the ends of the shot
and ramp the exposure by one stop.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rna_engine.errors import InputError
from rna_engine.media.colour import linear_to_srgb

_HARD_COMMON: dict[str, Any] = {
    "occluders": 2,
    "occluders_at_ends": True,
    "exposure_stops": 1.0,
    "illumination": 0.25,
    "spot": 0.35,
}
HARD_MOTIONS: dict[str, dict[str, Any]] = {
    # 6 px/frame at 768 wide over 70 frames: 414 px, the ROI crosses half the frame or more.
    "pan": {"pan_total": 6.0 * 69 / 768, "zoom": 0.05, "rotation_deg": 3.0, "perspective": 0.02},
    "zoomrot": {
        "pan_total": 0.1,
        "zoom_start": 0.6,
        "zoom_end": 1.5,
        "rotation_deg": 40.0,
        "perspective": 0.03,
    },
    # Far wall 3 px/frame, the ground at the bottom row 2.4x that; a slow dolly in.
    "parallax": {"motion": "ground", "pan_total": 3.0 * 69 / 768, "dolly": 0.15},
    # `pan` with an occluder resting on the ROI's surface for a quarter of the shot.
    "rest": {
        "pan_total": 6.0 * 69 / 768,
        "zoom": 0.05,
        "rotation_deg": 3.0,
        "perspective": 0.02,
        "resting": 1,
    },
    # A small ROI left of centre, carried out through the left edge and back (reference first).
    "exit": {
        "pan_px": 0.0,
        "pan_y_ratio": 0.1,
        "zoom": 0.0,
        "rotation_deg": 0.0,
        "perspective": 0.0,
        "exit_shift": 0.55,
        "roi_x": 0.3,
        "roi_scale": 0.45,
        "reference_index": 0,
    },
}
OCCLUDER_SCENES: dict[str, dict[str, Any]] = {
    # Two discs (radius 9 % of the width) crossing the ROI at 9 % of the width per frame, a few
    # frames either side of the reference.
    "fast": {"movers": "fast,fast"},
    # Two discs that are out of the frame (beyond its top edge) at the reference frame.
    "enter": {"movers": "enter,enter"},
    # In view at the reference frame but beside the ROI; it moves into it later.
    "beside": {"movers": "beside"},
    # Drifts 0.4 reference px per frame against the surface for a quarter of the shot.
    "slow": {"movers": "slow"},
    # Textured with the surface's own colours and spectrum, crossing at the shot's ends.
    "mimic": {"movers": "mimic,mimic"},
    # `fast` and `enter` with a half-frame shutter and 3 px soft edges.
    "blur": {"movers": "fast,enter", "shutter": 0.5, "edge_px": 3.0},
}
"""The occluder scenes of issue #34, each on the `pan` camera: occluders the matte must find
without a reference match into or out of the ROI to go on."""
_SIZES: dict[str, dict[str, Any]] = {
    "": {"width": 768, "height": 432, "frames": 70, "grain": 0.004},
    "-small": {"width": 160, "height": 96, "frames": 16},
    "-tiny": {"width": 64, "height": 48, "frames": 8},
}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 64, "height": 48, "frames": 8, "occluders": 1},
    "small": {"width": 160, "height": 96, "frames": 16, "occluders": 2},
    "bench": {"width": 768, "height": 432, "frames": 70, "occluders": 3, "grain": 0.004},
    "hd": {"width": 1920, "height": 1080, "frames": 100, "occluders": 3, "grain": 0.004},
    "uhd": {"width": 4096, "height": 2160, "frames": 200, "occluders": 3, "grain": 0.004},
    **{
        name + suffix: {**_HARD_COMMON, **motion, **size}
        for name, motion in HARD_MOTIONS.items()
        for suffix, size in _SIZES.items()
    },
    **{
        name + suffix: {**_HARD_COMMON, **HARD_MOTIONS["pan"], **scene, **size}
        for name, scene in OCCLUDER_SCENES.items()
        for suffix, size in _SIZES.items()
    },
}
"""Named shots. The hard presets keep their motion as a share of the frame and of the shot, so
`pan-tiny` pans as far across its 64 px as `pan` across 768 px."""


MOVER_KINDS = ("fast", "enter", "beside", "mimic", "slow")
"""The occluder kinds of `ShotParams.movers`."""


@dataclass(frozen=True)
class ShotParams:
    """Everything that defines a synthetic shot (saved as `shot.json`)."""

    width: int = 64
    height: int = 48
    frames: int = 8
    occluders: int = 1
    seed: int = 0
    first_frame: int = 1001
    reference_index: int = -1
    """Index of the reference frame; −1 = the middle frame."""
    pan_px: float = 0.35
    """Camera pan per frame, in pixels per frame per 100 px of width."""
    zoom: float = 0.12
    """Zoom change over the whole shot (fraction)."""
    rotation_deg: float = 4.0
    """Rotation over the whole shot, degrees."""
    perspective: float = 0.03
    """Keystone change over the whole shot (fraction)."""
    deform_px: float = 0.0
    """Amplitude of the smooth non-rigid deformation at the shot's ends, pixels per 100 px."""
    illumination: float = 0.25
    """Global gain change over the shot (fraction)."""
    spot: float = 0.35
    """Strength of the moving local light."""
    grain: float = 0.0
    """Standard deviation of the grain, linear units at value 1 (scaled by sqrt(value))."""
    edge_px: float = 1.5
    """Width of the occluders' soft edges, pixels."""
    motion: str = "homography"
    """`homography` (pan/zoom/rotation/perspective) or `ground`: a camera translating over a
    ground plane that meets a far wall (zoom, rotation and perspective are then unused)."""
    pan_total: float = 0.0
    """If > 0: the linear pan over the whole shot as a share of the width (replaces `pan_px`)."""
    pan_y_ratio: float = 0.3
    """Vertical pan as a share of the horizontal pan (homography motion)."""
    zoom_start: float = 0.0
    """If > 0 (with `zoom_end`): magnification of the surface at the first frame relative to the
    reference (1.5 = things look 1.5× larger), log-linear through 1 at the reference (replaces
    `zoom`)."""
    zoom_end: float = 0.0
    """Magnification at the last frame, see `zoom_start`."""
    exit_shift: float = 0.0
    """Extra horizontal camera shift (share of the width) that grows away from the reference as
    sin² and is undone at the shot's ends: the ROI leaves the frame and comes back."""
    dolly: float = 0.0
    """Ground motion: forward camera travel over the shot, share of the wall's distance."""
    horizon_row: float = 0.15
    """Ground motion: the horizon's row, share of the height."""
    ground_row: float = 0.5
    """Ground motion: the row where the ground meets the wall at the reference, share of height."""
    exposure_stops: float = 0.0
    """Global (achromatic) exposure ramp over the whole shot, stops; 0 at the reference."""
    occluders_at_ends: bool = False
    """Occluders cross the ROI near the ends of the shot (where it is in frame) instead of at
    random frames away from the reference."""
    roi_x: float = -1.0
    """ROI centre column as a share of the width; −1 = random near the centre."""
    roi_y: float = -1.0
    """ROI centre row as a share of the height; −1 = random near the centre."""
    roi_scale: float = 1.0
    """ROI ellipse radii relative to the default (28 % of the width, 30 % of the height)."""
    texture_contrast: float = 0.55
    """Log-amplitude of the surface texture; near 0 = a flat, untextured wall."""
    resting: int = 0
    """Occluders that *rest on* the surface inside the ROI for a quarter of the shot, on the
    side farther from the reference, moving exactly with it (a foot planted on the ground):
    ellipses fixed in reference coordinates, with their own colour and stripes. Their adjacent
    matches follow the surface, so only their appearance tells them apart (docs/method.md
    §5.2). Drawn over the moving occluders; `visible_layer` numbers them after those."""

    movers: str = ""
    """Comma-separated kinds of occluder placed by rule (`MOVER_KINDS`), replacing the random
    ones (`occluders` and `occluders_at_ends` are then unused), alternating sides of the
    reference: `fast` crosses the ROI at `mover_speed` (default 9 % of the width per frame)
    relative to it, as near the reference as leaves the ROI clear there; `enter` is beyond the
    frame's top edge at the reference frame and crosses the ROI later; `beside` is in view at
    the reference frame next to the ROI and moves into it; `mimic` wears the surface's own
    texture (another patch of it) and crosses near the shot's ends; `slow` rests on the surface
    like `resting` but drifts 0.4 reference px per frame against it."""
    mover_speed: float = 0.0
    """`fast` movers' speed relative to the ROI, share of the width per frame; 0 = 0.09."""
    shutter: float = 0.0
    """Motion blur of the moving occluders: the shutter's open share of a frame (0 = none)."""

    def __post_init__(self) -> None:
        for kind in self.mover_kinds:
            if kind not in MOVER_KINDS:
                raise InputError(f"synth mover {kind!r}: not one of {', '.join(MOVER_KINDS)}")
        if len(self.mover_kinds) > 5:
            raise InputError("synth: at most 5 movers")
        if not 0 <= self.shutter <= 1:
            raise InputError("synth: shutter must be in [0, 1]")
        if self.width < 16 or self.height < 16:
            raise InputError("synth: width and height must be >= 16")
        if self.frames < 2:
            raise InputError("synth: a shot needs at least 2 frames")
        if not 1 <= self.occluders <= 5:
            raise InputError("synth: occluders must be 1..5")
        if not 0 <= self.resting <= 3:
            raise InputError("synth: resting must be 0..3")
        if self.motion not in ("homography", "ground"):
            raise InputError(f"synth motion {self.motion!r}: not one of homography, ground")
        if (self.zoom_start > 0) != (self.zoom_end > 0):
            raise InputError("synth: zoom_start and zoom_end are set together")
        if not 0 <= self.horizon_row < self.ground_row < 1:
            raise InputError("synth: need 0 <= horizon_row < ground_row < 1")
        if not 0 <= self.dolly < 0.9:
            raise InputError("synth: dolly must be in [0, 0.9)")
        if self.roi_scale <= 0:
            raise InputError("synth: roi_scale must be > 0")

    @property
    def mover_kinds(self) -> list[str]:
        """`movers` as a list of kinds."""
        return [k.strip() for k in self.movers.split(",") if k.strip()]


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) a saturated, bright or dark occluder colour: foreground objects rarely share the
    surface's colours, and the ground truth should not hinge on telling near-identical colours
    apart (`mimic` is the exception made on purpose)."""
    colour = np.full(3, rng.uniform(0.02, 0.08), np.float32)
    colour[rng.permutation(3)[: rng.integers(1, 3)]] = rng.uniform(0.8, 1.6)
    return colour


@dataclass
class _Occluder:
    centre0: np.ndarray
    velocity: np.ndarray
    radii: np.ndarray
    angle: float
    colour: np.ndarray
    stripes: float
    texture_offset: np.ndarray | None = None
    """`mimic`: the (x, row) reference-frame position of the surface patch it wears."""


@dataclass
class _Resting:
    anchor: np.ndarray
    """(x, row) centre in reference-frame pixels."""
    radii: np.ndarray
    angle: float
    colour: np.ndarray
    stripes: float
    first: int
    last: int
    """Frame indices (inclusive) during which it rests on the surface."""
    drift: np.ndarray | None = None
    """(x, row) reference px per frame it slides over the surface (`slow`), from `first`."""

    def anchor_at(self, t: int) -> np.ndarray:
        """Its centre in reference-frame pixels at frame index t."""
        if self.drift is None:
            return self.anchor
        return self.anchor + self.drift * (t - self.first)


@dataclass
class SynthShot:
    """A synthetic shot; arrays are computed on first use (per-frame via `frame(t)`)."""

    params: ShotParams

    def __post_init__(self) -> None:
        p = self.params
        rng = np.random.default_rng(p.seed)
        n_waves = 40
        # Band-limited texture: random plane waves up to 0.18 cycles per reference pixel.
        freq = rng.uniform(0.004, 0.18, n_waves) * (100.0 / 100.0)
        freq[: n_waves // 4] = rng.uniform(0.004, 0.02, n_waves // 4)
        theta = rng.uniform(0, math.pi, n_waves)
        self._wave_k = (
            np.stack([np.cos(theta), np.sin(theta)], 1) * freq[:, None] * 2 * math.pi
        ).astype(np.float32)
        self._wave_phase = rng.uniform(0, 2 * math.pi, n_waves).astype(np.float32)
        amp = 1.0 / (1.0 + 25.0 * freq)
        self._wave_amp = (amp[:, None] * rng.uniform(0.3, 1.0, (n_waves, 3))).astype(np.float32)
        self._wave_norm = float(np.sqrt((self._wave_amp**2).sum(0).mean() / 2))
        self._log_mean = rng.uniform(-1.6, -0.9, 3).astype(np.float32)
        self.reference_index = (
            p.frames // 2 if p.reference_index < 0 else min(p.reference_index, p.frames - 1)
        )
        w, h = p.width, p.height
        # ROI: an ellipse around the centre of the reference frame, ~25 % of the area.
        self._roi_centre = np.array([w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)])
        if p.roi_x >= 0:
            self._roi_centre[0] = w * p.roi_x
        if p.roi_y >= 0:
            self._roi_centre[1] = h * p.roi_y
        self._roi_radii = np.array([w * 0.28, h * 0.3]) * p.roi_scale
        self._spot_centre0 = np.array([w * 0.3, h * 0.4])
        self._spot_velocity = np.array([w * 0.4, h * 0.2]) / max(p.frames - 1, 1)
        self._gain = rng.uniform(-1, 1, 3) * p.illumination
        # Occluders cross the ROI at frames away from the reference frame.
        self._occluders: list[_Occluder] = []
        r = self.reference_index
        for k in range(p.occluders if not (p.occluders_at_ends or p.movers) else 0):
            far = [t for t in range(p.frames) if abs(t - r) >= max(1, p.frames // 4)]
            t_cross = float(rng.choice(far)) if far else float(p.frames - 1)
            radii = np.array([w, h]).min() * rng.uniform(0.08, 0.16, 2)
            direction = rng.normal(size=2)
            direction /= np.linalg.norm(direction) + 1e-9
            need = np.linalg.norm(self._roi_radii) + radii.max() + 2.0 * p.edge_px + 2
            speed = need / max(abs(t_cross - r), 1.0)
            cross_point = self._roi_centre + rng.uniform(-0.4, 0.4, 2) * self._roi_radii
            velocity = direction * speed
            centre0 = cross_point - velocity * t_cross
            colour = _saturated_colour(rng)
            self._occluders.append(
                _Occluder(
                    centre0,
                    velocity,
                    radii,
                    float(rng.uniform(0, 3)),
                    colour,
                    float(rng.uniform(0.05, 0.2)),
                )
            )
            del k
        if p.occluders_at_ends and not p.movers:
            self._occluders = self._occluders_at_ends(rng)
        self._grain_seed = int(rng.integers(0, 2**31))
        self._resting = [self._resting_occluder(rng) for _ in range(p.resting)]
        for i, kind in enumerate(p.mover_kinds):
            if kind == "slow":
                self._resting.append(self._slow_mover(rng))
            else:
                self._occluders.append(self._placed_mover(kind, i, rng))

    def _resting_occluder(self, rng: np.random.Generator) -> _Resting:
        """One occluder resting on the ROI's surface for a quarter of the shot (at least two
        frames), in the half of the frames farther from the reference on its longer side."""
        p = self.params
        n, r = p.frames, self.reference_index
        reach = max(r, n - 1 - r)
        side = [t for t in range(n) if abs(t - r) >= 0.5 * reach and (t > r) == (n - 1 - r >= r)]
        length = min(max(2, round(n / 4)), len(side))
        first = side[int(rng.integers(0, len(side) - length + 1))]
        colour = _saturated_colour(rng)
        return _Resting(
            anchor=self._roi_centre + rng.uniform(-0.4, 0.4, 2) * self._roi_radii,
            radii=self._roi_radii * rng.uniform(0.2, 0.3, 2),
            angle=float(rng.uniform(0, math.pi)),
            colour=colour,
            stripes=float(rng.uniform(0.05, 0.2)),
            first=first,
            last=first + length - 1,
        )

    def _slow_mover(self, rng: np.random.Generator) -> _Resting:
        """A `resting` occluder that drifts 0.4 reference px per frame over the surface."""
        rest = self._resting_occluder(rng)
        angle = float(rng.uniform(0, 2 * math.pi))
        rest.drift = 0.4 * np.array([math.cos(angle), math.sin(angle)])
        # Centred on its anchor half-way through its frames.
        rest.anchor = rest.anchor - rest.drift * (rest.last - rest.first) / 2
        return rest

    def _roi_motion(self, t: int, point: np.ndarray) -> np.ndarray:
        """(dx, dy) frame px per frame of the surface point `point` (reference px) at t."""
        n = self.params.frames
        ta, tb = max(t - 1, 0), min(t + 1, n - 1)
        return (self.frame_xy_of(tb, point) - self.frame_xy_of(ta, point)) / max(tb - ta, 1)

    def _placed_mover(self, kind: str, i: int, rng: np.random.Generator) -> _Occluder:
        """One occluder of `ShotParams.movers` (kind `fast`, `enter`, `beside` or `mimic`), on
        the side of the reference given by its index `i` (after it for even `i`, where the shot
        has frames there)."""
        p = self.params
        n, r, w = p.frames, self.reference_index, p.width
        after = (i % 2 == 0) if 0 < r < n - 1 else r < n - 1
        sign = 1 if after else -1
        reach = (n - 1 - r) if after else r
        target = self._roi_centre + rng.uniform(-0.3, 0.3, 2) * self._roi_radii
        size = {"fast": 0.09, "enter": 0.07, "beside": 0.06, "mimic": 0.1}[kind] * w
        radii = size * np.array([1.0, rng.uniform(0.75, 1.0)])
        clear = float(np.linalg.norm(self._roi_radii)) + radii.max() + 2.0 * p.edge_px + 2.0
        colour = _saturated_colour(rng)
        angle, stripes, offset = float(rng.uniform(0, 3)), float(rng.uniform(0.05, 0.2)), None
        if kind == "fast":
            speed = (p.mover_speed or 0.09) * w
            steps = min(max(1, math.ceil(clear / speed) + 1), max(reach, 1))
            t_cross = r + sign * steps
            heading = rng.uniform(-0.5, 0.5) + (0.0 if rng.uniform() < 0.5 else math.pi)
            cross = self.frame_xy_of(t_cross, target)
            velocity = self._roi_motion(t_cross, target) + speed * np.array(
                [math.cos(heading), math.sin(heading)]
            )
        elif kind == "enter":
            t_cross = r + sign * max(1, round(0.6 * reach))
            cross = self.frame_xy_of(t_cross, target)
            # Beyond the top edge at the reference frame, moving straight toward the crossing.
            start = np.array(
                [cross[0] + rng.uniform(-0.1, 0.1) * w, -radii.max() - 2 * p.edge_px - 2]
            )
            velocity = (cross - start) / (t_cross - r)
        elif kind == "beside":
            t_cross = r + sign * max(1, round(0.6 * reach))
            cross = self.frame_xy_of(t_cross, target)
            # At the reference frame (frame px = reference px) right or left of the ROI, in view.
            side = 1.0 if self._roi_centre[0] < w / 2 else -1.0
            gap = self._roi_radii[0] + radii.max() + 2 * p.edge_px + 2
            start = np.array([self._roi_centre[0] + side * gap, self._roi_centre[1]])
            start[0] = np.clip(start[0], radii.max(), w - 1 - radii.max())
            velocity = (cross - start) / (t_cross - r)
        else:  # mimic: crosses within the outer 40 % of the frames on its side
            t_cross = r + sign * max(1, round(rng.uniform(0.6, 1.0) * reach))
            cross = self.frame_xy_of(t_cross, target)
            heading = float(rng.uniform(0, 2 * math.pi))
            velocity = self._roi_motion(t_cross, target) + clear / max(2.0, n / 8) * np.array(
                [math.cos(heading), math.sin(heading)]
            )
            # Another patch of the surface, outside the ROI's neighbourhood.
            offset = self._roi_centre + np.array([2.5, 1.5]) * self._roi_radii
        return _Occluder(
            cross - velocity * t_cross, velocity, radii, angle, colour, stripes, offset
        )

    def _occluders_at_ends(self, rng: np.random.Generator) -> list[_Occluder]:
        """Occluders that cross the ROI where it is in frame, in the outer 40 % of the frames on
        either side of the reference (alternating sides), each over about an eighth of the shot."""
        p = self.params
        n, r = p.frames, self.reference_index
        ref_cover = self._coarse_roi_cover(r)
        reach = max(r, n - 1 - r)
        sides: list[list[int]] = [[], []]
        for t in range(n):
            if abs(t - r) >= 0.6 * reach and self._coarse_roi_cover(t) >= 0.3 * ref_cover:
                sides[int(t > r)].append(t)
        window = max(2.0, n / 8)
        out = []
        for k in range(p.occluders):
            side = sides[(k + 1) % 2] or sides[k % 2] or [n - 1 if r < n - 1 else 0]
            t_cross = int(rng.choice(side))
            target = self._roi_centre + rng.uniform(-0.4, 0.4, 2) * self._roi_radii
            cross_point = self.frame_xy_of(t_cross, target)
            # The ROI's own motion in the frame there: the occluder moves with it plus a crossing.
            roi_velocity = self._roi_motion(t_cross, target)
            edge = self.frame_xy_of(t_cross, self._roi_centre + [self._roi_radii[0], 0.0])
            scale = np.linalg.norm(edge - self.frame_xy_of(t_cross, self._roi_centre)) / max(
                self._roi_radii[0], 1e-6
            )
            radii = np.array([p.width, p.height]).min() * rng.uniform(0.08, 0.16, 2)
            direction = rng.normal(size=2)
            direction /= np.linalg.norm(direction) + 1e-9
            need = scale * np.linalg.norm(self._roi_radii) + radii.max() + 2.0 * p.edge_px + 2
            velocity = roi_velocity + direction * need / window
            colour = _saturated_colour(rng)
            out.append(
                _Occluder(
                    cross_point - velocity * t_cross,
                    velocity,
                    radii,
                    float(rng.uniform(0, 3)),
                    colour,
                    float(rng.uniform(0.05, 0.2)),
                )
            )
        return out

    def _coarse_roi_cover(self, t: int) -> float:
        """Share of frame t covered by the ROI, on a grid of about 32 columns (cheap)."""
        p = self.params
        step = max(1, p.width // 32)
        ys, xs = np.mgrid[0 : p.height : step, 0 : p.width : step].astype(np.float64)
        return float(self.roi_at(self.ref_xy_at(t, xs, ys)).mean())

    def frame_xy_of(self, t: int, ref_point: np.ndarray) -> np.ndarray:
        """(2,) frame-t pixel (x, row) that shows the surface point at reference pixel
        `ref_point` (inverse of `true_ref_xy`; may lie outside the frame)."""
        p = self.params
        step = max(1, p.width // 64)
        margin = p.width
        ys, xs = np.mgrid[
            -margin : p.height + margin : step, -margin : p.width + margin : step
        ].astype(np.float64)
        ref = self.ref_xy_at(t, xs, ys)
        k = int(np.argmin(((ref - ref_point) ** 2).sum(-1)))
        xy = np.array([xs.flat[k], ys.flat[k]])
        for _ in range(4):  # Newton steps on a finite-difference Jacobian
            pts = np.array([xy, xy + [0.5, 0.0], xy + [0.0, 0.5]])
            val = self.ref_xy_at(t, pts[:, 0], pts[:, 1])
            jac = np.stack([val[1] - val[0], val[2] - val[0]], 1) / 0.5
            xy = xy - np.linalg.solve(jac, val[0] - ref_point)
        return xy

    # ----------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return self.params.frames

    @property
    def frame_numbers(self) -> list[int]:
        return [self.params.first_frame + i for i in range(self.params.frames)]

    @property
    def reference_frame(self) -> int:
        """Frame number of the reference frame."""
        return self.params.first_frame + self.reference_index

    def _s(self, t: int) -> float:
        """Signed position of frame index t in the shot relative to the reference (−1..1)."""
        return (t - self.reference_index) / max(self.params.frames - 1, 1)

    def pan_offset(self, t: int) -> np.ndarray:
        """(2,) the camera's pan at frame index t: reference pixel = frame pixel + this, for a
        pure translation (zero at the reference)."""
        p = self.params
        r, n = self.reference_index, p.frames
        rate = (
            p.pan_total * p.width / max(n - 1, 1) if p.pan_total > 0 else p.pan_px * p.width / 100
        )
        x = rate * (t - r)
        if p.exit_shift:
            span = (n - 1 - r) if t >= r else r
            x += p.exit_shift * p.width * math.sin(math.pi * abs(t - r) / max(span, 1)) ** 2
        return np.array([x, p.pan_y_ratio * x])

    def magnification(self, t: int) -> float:
        """How much larger the surface looks at frame index t than at the reference (about the
        frame centre; homography motion)."""
        p = self.params
        r, n = self.reference_index, p.frames
        if p.zoom_start > 0:
            if t < r:
                return math.exp(math.log(p.zoom_start) * (r - t) / max(r, 1))
            return math.exp(math.log(p.zoom_end) * (t - r) / max(n - 1 - r, 1))
        return 1.0 / (1.0 + p.zoom * self._s(t))

    def homography(self, t: int) -> np.ndarray:
        """3×3 map from frame-t pixel (x, row, 1) to reference-frame pixels (identity at ref);
        homography motion only."""
        p = self.params
        if p.motion != "homography":
            raise ValueError(f"motion {p.motion!r} is not one homography")
        s = self._s(t)
        w, h = p.width, p.height
        cx, cy = w / 2, h / 2
        zoom = 1.0 / self.magnification(t) if p.zoom_start > 0 else 1.0 + p.zoom * s
        ang = math.radians(p.rotation_deg) * s
        pan_x, pan_y = self.pan_offset(t)
        c, si = math.cos(ang), math.sin(ang)
        to_c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], float)
        rot = np.array([[c * zoom, -si * zoom, 0], [si * zoom, c * zoom, 0], [0, 0, 1]], float)
        persp = np.array([[1, 0, 0], [0, 1, 0], [p.perspective * s / w, 0, 1]], float)
        back = np.array([[1, 0, cx + pan_x], [0, 1, cy + pan_y], [0, 0, 1]], float)
        return back @ persp @ rot @ to_c

    def ground_geometry(self, t: int) -> dict[str, float]:
        """Ground motion: focal length and horizon (pixels), wall depth, camera height (1) and
        the camera's position (tx, tz) at frame index t, reference camera at the origin.

        The ground is the plane Y = 1 (Y down) up to depth Z = wall, the wall the plane Z = wall
        above it; the camera translates by (tx, 0, tz): the wall shifts by `pan_offset` per
        frame, ground points nearer the camera (lower rows) by more, (row − horizon) ∝ 1/depth.
        """
        p = self.params
        f = float(p.width)
        horizon = p.horizon_row * p.height
        wall = f / (p.ground_row * p.height - horizon)
        tx = self.pan_offset(t)[0] * wall / f
        tz = p.dolly * wall * self._s(t)
        return {"f": f, "cx": p.width / 2, "horizon": horizon, "wall": wall, "tx": tx, "tz": tz}

    def ref_xy_at(self, t: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """(..., 2) float64: reference-frame pixel of the surface point seen at frame-t pixel
        positions (xs, ys) (pixel centres at integers; any positions, in frame or not)."""
        p = self.params
        if p.motion == "ground":
            g = self.ground_geometry(t)
            dx, dy = (xs - g["cx"]) / g["f"], (ys - g["horizon"]) / g["f"]
            with np.errstate(divide="ignore", invalid="ignore"):
                depth_ground = g["tz"] + 1.0 / dy
            ground = (dy > 0) & (depth_ground <= g["wall"])
            lam = np.where(ground, 1.0 / np.where(ground, dy, 1.0), g["wall"] - g["tz"])
            px = g["tx"] + lam * dx
            py = np.where(ground, 1.0, lam * dy)
            pz = g["tz"] + lam
            rx = g["cx"] + g["f"] * px / pz
            ry = g["horizon"] + g["f"] * py / pz
        else:
            hmat = self.homography(t)
            den = hmat[2, 0] * xs + hmat[2, 1] * ys + hmat[2, 2]
            rx = (hmat[0, 0] * xs + hmat[0, 1] * ys + hmat[0, 2]) / den
            ry = (hmat[1, 0] * xs + hmat[1, 1] * ys + hmat[1, 2]) / den
        if p.deform_px:
            amp = p.deform_px * p.width / 100.0 * self._s(t)
            rx = rx + amp * np.sin(2 * math.pi * ry / (0.7 * p.height) + 1.0)
            ry = ry + amp * np.sin(2 * math.pi * rx / (0.9 * p.width) + 2.0)
        return np.stack([rx, ry], -1)

    def _ref_xy(self, t: int) -> np.ndarray:
        p = self.params
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float64)
        return self.ref_xy_at(t, xs, ys).astype(np.float32)

    def texture(self, ref_xy: np.ndarray) -> np.ndarray:
        """Clean surface colour (linear) at reference-frame positions (…, 2) → (…, 3)."""
        phase = ref_xy @ self._wave_k.T + self._wave_phase  # (..., n_waves)
        signal = np.sin(phase) @ self._wave_amp / self._wave_norm  # (..., 3)
        return np.exp(self._log_mean + self.params.texture_contrast * signal).astype(np.float32)

    def _illumination(self, t: int, ref_xy: np.ndarray) -> np.ndarray:
        p = self.params
        s = (t - self.reference_index) / max(p.frames - 1, 1)
        gain = (np.exp(self._gain * s) * 2.0 ** (p.exposure_stops * s)).astype(np.float32)
        centre = self._spot_centre0 + self._spot_velocity * t
        ref_centre = self._spot_centre0 + self._spot_velocity * self.reference_index
        sigma2 = (0.25 * min(p.width, p.height)) ** 2
        spot = np.exp(-((ref_xy - centre) ** 2).sum(-1) / sigma2)
        spot_ref = np.exp(-((ref_xy - ref_centre) ** 2).sum(-1) / sigma2)
        # Relative to the reference frame's lighting, so illumination == 1 there.
        local = (1.0 + p.spot * spot) / (1.0 + p.spot * spot_ref)
        return (gain * local[..., None]).astype(np.float32)

    def _occluder_layers(
        self, t: int, ref_xy: np.ndarray | None = None
    ) -> list[tuple[_Occluder | _Resting, np.ndarray, np.ndarray]]:
        """Per occluder, in drawing order (later over earlier): itself, alpha and colour; the
        moving ones, then the resting ones (drawn from `ref_xy`, frame t's `_ref_xy`)."""
        p = self.params
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float32)
        layers: list[tuple[_Occluder | _Resting, np.ndarray, np.ndarray]] = []
        for rest in self._resting:
            if ref_xy is None:
                ref_xy = self._ref_xy(t)
            anchor = rest.anchor_at(t)
            dx, dy = ref_xy[..., 0] - anchor[0], ref_xy[..., 1] - anchor[1]
            ca, sa = math.cos(rest.angle), math.sin(rest.angle)
            u, v = (ca * dx + sa * dy) / rest.radii[0], (-sa * dx + ca * dy) / rest.radii[1]
            dist = (1.0 - np.sqrt(u * u + v * v)) * np.sqrt((rest.radii**2).mean())
            on = float(rest.first <= t <= rest.last)
            a = (on * np.clip(dist / p.edge_px + 0.5, 0.0, 1.0)).astype(np.float32)
            stripes = 0.75 + 0.25 * np.sin(2 * math.pi * rest.stripes * (ca * dx + sa * dy))
            layers.append((rest, a, rest.colour[None, None, :] * stripes[..., None]))
        moving = []
        for occ in self._occluders:
            if p.shutter <= 0:
                moving.append((occ, *self._mover_at(occ, float(t), xs, ys)))
                continue
            # With a shutter, alpha and premultiplied colour are averaged over its open time.
            offsets = np.linspace(-0.5, 0.5, 5) * p.shutter
            a = np.zeros((p.height, p.width), np.float32)
            premult = np.zeros((p.height, p.width, 3), np.float32)
            for dt in offsets:
                a_s, col_s = self._mover_at(occ, t + float(dt), xs, ys)
                a += a_s / len(offsets)
                premult += col_s * a_s[..., None] / len(offsets)
            moving.append((occ, a, premult / np.maximum(a, 1e-6)[..., None]))
        return moving + layers

    def _mover_at(
        self, occ: _Occluder, t: float, xs: np.ndarray, ys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Alpha (H, W) and straight colour (H, W, 3) of moving occluder `occ` at time t."""
        p = self.params
        c = occ.centre0 + occ.velocity * t
        dx, dy = xs - c[0], ys - c[1]
        ca, sa = math.cos(occ.angle), math.sin(occ.angle)
        u, v = (ca * dx + sa * dy) / occ.radii[0], (-sa * dx + ca * dy) / occ.radii[1]
        rho = np.sqrt(u * u + v * v)
        # Signed distance to the ellipse boundary, approximately in pixels.
        dist = (1.0 - rho) * np.sqrt((occ.radii[0] ** 2 + occ.radii[1] ** 2) / 2)
        a = np.clip(dist / p.edge_px + 0.5, 0.0, 1.0).astype(np.float32)
        if occ.texture_offset is not None:  # the surface's texture, carried rigidly
            local = np.stack([ca * dx + sa * dy, -sa * dx + ca * dy], -1) + occ.texture_offset
            return a, self.texture(local.astype(np.float32))
        stripes = 0.75 + 0.25 * np.sin(2 * math.pi * occ.stripes * (ca * dx + sa * dy))
        return a, occ.colour[None, None, :] * stripes[..., None]

    def _occlusion(self, t: int, ref_xy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        alpha = np.zeros((p.height, p.width), np.float32)
        colour = np.zeros((p.height, p.width, 3), np.float32)
        for _, a, col in self._occluder_layers(t, ref_xy):
            colour = colour * (1 - a[..., None]) + col * a[..., None]  # premultiplied "over"
            alpha = alpha + a * (1 - alpha)
        return alpha, colour

    def visible_layer(self, t: int) -> np.ndarray:
        """(H, W) int8: the occluder seen at each pixel of frame t (the topmost with alpha > 0.5),
        −1 where the surface is seen. The moving occluders (0 … `occluders` − 1) translate
        rigidly (`occluder_velocity`); the resting ones after them move with the surface."""
        layer = np.full((self.params.height, self.params.width), -1, np.int8)
        for k, (_, a, _) in enumerate(self._occluder_layers(t)):
            layer[a > 0.5] = k
        return layer

    def occluder_velocity(self, k: int) -> np.ndarray:
        """(dx, dy) pixels per frame of moving occluder k (its texture moves with it)."""
        return self._occluders[k].velocity.astype(np.float32)

    @property
    def roi_centre(self) -> np.ndarray:
        """(2,) centre (x, row) of the ROI ellipse in reference-frame pixels."""
        return self._roi_centre.copy()

    @property
    def roi_radii(self) -> np.ndarray:
        """(2,) radii (x, row) of the ROI ellipse in reference-frame pixels."""
        return self._roi_radii.copy()

    def roi_at(self, ref_xy: np.ndarray) -> np.ndarray:
        """ROI membership (0..1, antialiased over one pixel) at reference-frame positions."""
        d = (ref_xy - self._roi_centre) / self._roi_radii
        rho = np.sqrt((d**2).sum(-1))
        dist = (1.0 - rho) * float(np.sqrt((self._roi_radii**2).mean()))
        return np.clip(dist + 0.5, 0.0, 1.0).astype(np.float32)

    def frame(self, t: int) -> dict[str, np.ndarray]:
        """Everything about frame index `t`: plate, true_ref_xy, occlusion, illumination, roi."""
        p = self.params
        ref_xy = self._ref_xy(t)
        tex = self.texture(ref_xy)
        illum = self._illumination(t, ref_xy)
        alpha, occ_colour = self._occlusion(t, ref_xy)
        if t == self.reference_index:
            keep = (self.roi_at(ref_xy) <= 0).astype(np.float32)  # the ROI is unoccluded here
            alpha, occ_colour = alpha * keep, occ_colour * keep[..., None]
        plate = (1 - alpha[..., None]) * illum * tex + occ_colour
        if p.grain:
            g = np.random.default_rng(self._grain_seed + t).standard_normal(plate.shape)
            plate = plate + p.grain * np.sqrt(np.maximum(plate, 0)) * g.astype(np.float32)
        return {
            "plate": plate.astype(np.float32),
            "true_ref_xy": ref_xy,
            "occlusion": alpha.astype(np.float32),
            "illumination": illum,
            "roi_tracked": self.roi_at(ref_xy),
            "texture": tex,
        }

    @cached_property
    def _all(self) -> dict[str, np.ndarray]:
        frames = [self.frame(t) for t in range(self.n_frames)]
        return {k: np.stack([f[k] for f in frames]) for k in frames[0]}

    @property
    def plate_linear(self) -> np.ndarray:
        """(N, H, W, 3) float32 scene-linear plate."""
        return self._all["plate"]

    @property
    def plate_srgb(self) -> np.ndarray:
        """(N, H, W, 3) float32 0..1 sRGB-encoded plate (display-referred variant)."""
        return np.clip(linear_to_srgb(np.clip(self.plate_linear, 0, 1)), 0, 1)

    @property
    def true_ref_xy(self) -> np.ndarray:
        return self._all["true_ref_xy"]

    @property
    def occlusion(self) -> np.ndarray:
        return self._all["occlusion"]

    @property
    def illumination(self) -> np.ndarray:
        return self._all["illumination"]

    @property
    def roi_tracked(self) -> np.ndarray:
        """(N, H, W) ROI membership of the surface point each pixel shows (soft at the edge)."""
        return self._all["roi_tracked"]

    @property
    def true_matte(self) -> np.ndarray:
        """(N, H, W) visible-ROI matte: ROI membership × (1 − occlusion)."""
        return self.roi_tracked * (1.0 - self.occlusion)

    @cached_property
    def roi(self) -> np.ndarray:
        """(H, W) float32 {0, 1} ROI matte on the reference frame."""
        p = self.params
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float32)
        return (self.roi_at(np.stack([xs, ys], -1)) >= 0.5).astype(np.float32)

    @cached_property
    def clean_texture(self) -> np.ndarray:
        """(H, W, 3) the surface texture on the reference-frame raster (= the ideal atlas)."""
        p = self.params
        ys, xs = np.mgrid[0 : p.height, 0 : p.width].astype(np.float32)
        return self.texture(np.stack([xs, ys], -1))

    def render_edit(self, edit_rgba: np.ndarray, t: int | None = None) -> np.ndarray:
        """The exact plate after painting `edit_rgba` on the atlas (reference-frame raster).

        Args:
            edit_rgba: (H', W', 4) linear RGB + alpha of the paint on the reference-frame raster
                (any size with the plate's aspect ratio: sampled bilinearly at pixel centres,
                the STMap convention of docs/cache.md), straight (not premultiplied) colour.
            t: one frame index, or None for all frames.

        Returns:
            (H, W, 3) or (N, H, W, 3) float32: paint over the surface where the ROI is visible,
            lit like the surface; occluders and everything outside the ROI untouched.
        """
        frames = range(self.n_frames) if t is None else [t]
        out = []
        for i in frames:
            f = self.frame(i)
            paint = sample_bilinear_px(
                edit_rgba, f["true_ref_xy"], self.params.width, self.params.height
            )
            a = paint[..., 3:4]
            new_tex = f["texture"] * (1 - a) + paint[..., :3] * a
            weight = (f["roi_tracked"] * (1 - f["occlusion"]))[..., None]
            out.append(f["plate"] + weight * f["illumination"] * (new_tex - f["texture"]))
        return np.stack(out) if t is None else out[0]


def sample_bilinear_px(
    image: np.ndarray, ref_xy: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Bilinear sample of `image` (H', W', C) covering a width×height raster at pixel positions.

    `ref_xy` is in the raster's pixels with centres at integers; the image may have another
    resolution (pixel centres at +0.5 in normalised coordinates); edges clamp.
    """
    ih, iw = image.shape[:2]
    x = (ref_xy[..., 0] + 0.5) * iw / width - 0.5
    y = (ref_xy[..., 1] + 0.5) * ih / height - 0.5
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[..., None].astype(np.float32)
    fy = (y - y0)[..., None].astype(np.float32)

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return image[np.clip(yy, 0, ih - 1), np.clip(xx, 0, iw - 1)]

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def make_shot(preset: str = "tiny", seed: int = 0, **overrides: Any) -> SynthShot:
    """A synthetic shot from a preset (`PRESETS`: tiny 64×48×8, small, bench 768×432×70,
    hd 1920×1080×100, uhd, and the hard pan/zoomrot/parallax/exit with -small/-tiny sizes)."""
    if preset not in PRESETS:
        raise InputError(f"synth preset {preset!r}: not one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **overrides, "seed": seed}
    return SynthShot(ShotParams(**values))


def paint_pattern(width: int, height: int, roi: np.ndarray | None = None) -> np.ndarray:
    """A recognisable test paint (RGBA, linear): a ring, a bar and a dot pattern over the ROI."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2, height / 2
    if roi is not None and roi.any():
        rows, cols = np.nonzero(roi > 0.5)
        cy, cx = rows.mean(), cols.mean()
        span = 0.5 * min(np.ptp(rows) + 1, np.ptp(cols) + 1)
    else:
        span = 0.25 * min(width, height)
    r = np.hypot(xs - cx, ys - cy)
    ring = np.clip(1.0 - np.abs(r - 0.55 * span) / max(0.08 * span, 1.0), 0, 1)
    bar = ((np.abs(ys - cy) < 0.08 * span) & (np.abs(xs - cx) < 0.7 * span)).astype(np.float32)
    dots = (np.sin(xs * 0.9) > 0.8) & (np.sin(ys * 0.9) > 0.8) & (r < 0.4 * span)
    alpha = np.clip(ring + bar + dots.astype(np.float32), 0, 1)
    rgb = np.zeros((height, width, 3), np.float32)
    rgb[...] = (0.9, 0.25, 0.05)
    rgb[bar > 0] = (0.05, 0.4, 0.9)
    rgb[dots] = (0.95, 0.95, 0.2)
    return np.concatenate([rgb, alpha[..., None]], -1).astype(np.float32)


def _write_frame(
    shot: SynthShot, out: Path, i: int, edit: np.ndarray | None, truth: bool, srgb: bool
) -> None:
    """Write every file of frame index `i` (a unit of work for `write_shot`'s workers)."""
    from rna_engine.media.io import write_exr, write_png, write_rgba_exr

    number = shot.frame_numbers[i]
    f = shot.frame(i)
    write_rgba_exr(
        out / "plate" / f"plate.{number:04d}.exr",
        f["plate"],
        attributes={"rna/synth_seed": shot.params.seed},
    )
    if srgb:
        write_png(
            out / "plate_srgb" / f"plate.{number:04d}.png",
            linear_to_srgb(np.clip(f["plate"], 0, 1)),
        )
    if truth:
        names = ("ref.x", "ref.y", "occlusion.a", "roi.a", "illum.R", "illum.G", "illum.B")
        planes = (
            f["true_ref_xy"][..., 0],
            f["true_ref_xy"][..., 1],
            f["occlusion"],
            f["roi_tracked"],
            *(f["illumination"][..., c] for c in range(3)),
        )
        write_exr(
            out / "truth" / f"truth.{number:04d}.exr",
            dict(zip(names, planes, strict=True)),
            pixel_types=dict.fromkeys(names, "float"),
        )
    if edit is not None:
        write_rgba_exr(
            out / "edited" / f"edited.{number:04d}.exr",
            shot.render_edit(edit, i),
            pixel_type="float",
        )


def write_shot(
    shot: SynthShot,
    out: Path,
    edit: np.ndarray | None = None,
    truth: bool = True,
    srgb: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Write plate, ROI and ground truth under `out`; returns the manifest (`shot.json`).

    Layout: `plate/plate.####.exr` (scene-linear RGB half), `plate_srgb/plate.####.png`,
    `roi.exr` (channel A, reference frame), `truth/truth.####.exr` (ref.x/ref.y float, occlusion.a,
    illum.R/G/B, roi.a), `truth/texture.exr`, and `edited/edited.####.exr` when `edit` is given.
    `workers` > 1 renders frames in that many processes (large presets).
    """
    from rna_engine.media.io import write_exr, write_png, write_rgba_exr

    out = Path(out)
    indices = range(shot.n_frames)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Spawned, not forked: a child forked after OpenImageIO has run in this process inherits
        # its thread pool's locks mid-use and can hang in its first write.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            list(
                pool.map(
                    _write_frame,
                    *zip(*[(shot, out, i, edit, truth, srgb) for i in indices], strict=True),
                )
            )
    else:
        for i in indices:
            _write_frame(shot, out, i, edit, truth, srgb)
    p = shot.params
    write_exr(out / "roi.exr", {"A": shot.roi}, attributes={"rna/frame": shot.reference_frame})
    write_png(out / "roi.png", shot.roi)
    if truth:
        write_rgba_exr(out / "truth" / "texture.exr", shot.clean_texture, pixel_type="float")
    if edit is not None:
        write_rgba_exr(out / "edit.exr", edit, pixel_type="float")
    manifest = {
        "params": asdict(p),
        "plate": "plate/plate.####.exr",
        "plate_srgb": "plate_srgb/plate.####.png" if srgb else None,
        "roi": "roi.exr",
        "reference_frame": shot.reference_frame,
        "frames": f"{shot.frame_numbers[0]}-{shot.frame_numbers[-1]}",
        "truth": "truth/truth.####.exr" if truth else None,
        "edit": "edit.exr" if edit is not None else None,
        "edited": "edited/edited.####.exr" if edit is not None else None,
    }
    (out / "shot.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
