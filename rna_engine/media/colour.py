"""Colour: the OCIO config, the fit's working encoding and its inverse (docs/cache.md, Colour).

The fit runs in a bounded, roughly perceptual encoding because losses on raw linear values
over-weight highlights:
- scene-linear plates (EXR, float TIFF): the config's `compositing_log` role applied to the
  `scene_linear` role, scaled so that linear 64.0 (6 stops over diffuse white) maps to 1.0;
- display-referred plates (8/16-bit sRGB PNG/JPEG/TIFF): the sRGB code values themselves.
A plate whose colourspace is named (`ingest.colorspace`, e.g. a Nuke Read's log DPX) is first
converted from it to the config's `scene_linear` role and then treated as scene-linear.
Everything the cache exports goes back through `decode` to linear light in the plate's own space.
The config comes from `$OCIO`, else the built-in studio config pinned by its full name; only role
names are used, so show configs work. Both are recorded in `build.json` and the EXR headers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from rna_engine.errors import InputError

PINNED_CONFIGS = (
    "studio-config-v5.0.0_aces-v2.1_ocio-v2.6",
    "studio-config-v4.0.0_aces-v2.0_ocio-v2.5",
    "studio-config-v2.2.0_aces-v1.3_ocio-v2.4",
)
"""Built-in configs in order of preference; the first one this OCIO has is used."""

LOG_WHITE = 64.0
"""Scene-linear value mapped to 1.0 by the working encoding (≈ 6 stops over diffuse white)."""

Kind = Literal["scene_linear", "display"]


@lru_cache(maxsize=8)
def load_config(source: str = "") -> tuple[Any, str]:
    """The OCIO config and the name to record: `source`, else `$OCIO`, else the pinned built-in.

    Raises `InputError` naming the config when it cannot be loaded.
    """
    import PyOpenColorIO as ocio

    wanted = source or os.environ.get("OCIO", "")
    if wanted:
        try:
            cfg = ocio.Config.CreateFromFile(wanted)
        except Exception as err:  # OCIO raises its own Exception type
            raise InputError(f"OCIO config {wanted}: cannot load ({err})") from err
        return cfg, wanted
    available = {c[0] for c in ocio.BuiltinConfigRegistry().getBuiltinConfigs()}
    for name in PINNED_CONFIGS:
        if name in available:
            return ocio.Config.CreateFromFile(f"ocio://{name}"), f"ocio://{name}"
    raise InputError("OCIO: none of the pinned built-in configs is available; set $OCIO")


def srgb_to_linear(code: np.ndarray) -> np.ndarray:
    """sRGB EOTF (IEC 61966-2-1), elementwise; values outside 0..1 are extended linearly/by power."""
    code = np.asarray(code, dtype=np.float32)
    return np.where(
        code <= 0.04045, code / 12.92, ((np.maximum(code, 0.04045) + 0.055) / 1.055) ** 2.4
    ).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Inverse sRGB EOTF, elementwise."""
    linear = np.asarray(linear, dtype=np.float32)
    return np.where(
        linear <= 0.0031308,
        linear * 12.92,
        1.055 * np.maximum(linear, 0.0031308) ** (1 / 2.4) - 0.055,
    ).astype(np.float32)


@dataclass(frozen=True)
class WorkingSpace:
    """The fit's working encoding of one plate, and its inverse."""

    kind: Kind
    config_name: str = ""
    scale: float = 1.0
    """Multiplier applied to the log code so that `LOG_WHITE` maps to 1.0."""
    floor: float = 0.0
    """Working value of linear 0 (the lower bound of the encoding)."""

    def _processor(self, forward: bool) -> Any:
        return _log_processor(self.config_name, forward)

    def encode(self, linear: np.ndarray) -> np.ndarray:
        """Scene-linear (…, 3) → working values in [0, 1], float32."""
        if self.kind == "display":
            return np.clip(linear_to_srgb(linear), 0.0, 1.0)
        data = np.ascontiguousarray(np.clip(linear, 0.0, LOG_WHITE), dtype=np.float32)
        flat = data.reshape(-1, 3).copy()
        self._processor(True).applyRGB(flat)
        return np.clip(flat.reshape(data.shape) * self.scale, 0.0, 1.0).astype(np.float32)

    def decode(self, work: np.ndarray) -> np.ndarray:
        """Working values (…, 3) → scene-linear, float32 (inverse of `encode` inside its range)."""
        if self.kind == "display":
            return srgb_to_linear(np.clip(work, 0.0, 1.0))
        data = np.ascontiguousarray(np.clip(work, 0.0, 1.0) / self.scale, dtype=np.float32)
        flat = data.reshape(-1, 3).copy()
        self._processor(False).applyRGB(flat)
        return np.maximum(flat.reshape(data.shape), 0.0).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What `build.json` records."""
        return {
            "kind": self.kind,
            "ocio_config": self.config_name,
            "linear_role": "scene_linear",
            "working_role": "compositing_log" if self.kind == "scene_linear" else "sRGB encoding",
            "log_white": LOG_WHITE,
            "scale": self.scale,
        }


@lru_cache(maxsize=16)
def _log_processor(config_name: str, forward: bool) -> Any:
    """CPU processor scene_linear → compositing_log (or back) of a config, by role names."""
    import PyOpenColorIO as ocio

    cfg, _ = load_config(config_name)
    src, dst = ocio.ROLE_SCENE_LINEAR, ocio.ROLE_COMPOSITING_LOG
    if not forward:
        src, dst = dst, src
    try:
        return cfg.getProcessor(src, dst).getDefaultCPUProcessor()
    except Exception as err:  # OCIO raises its own Exception type
        raise InputError(
            f"OCIO config {config_name}: needs the roles scene_linear and compositing_log ({err})"
        ) from err


@lru_cache(maxsize=16)
def _to_linear_processor(colorspace: str, config_name: str) -> Any:
    import PyOpenColorIO as ocio

    cfg, name = load_config(config_name)
    if cfg.getColorSpace(colorspace) is None:  # roles and aliases resolve too
        raise InputError(
            f"ingest.colorspace: {colorspace!r} is not a colourspace of the OCIO config {name}"
        )
    try:
        return cfg.getProcessor(colorspace, ocio.ROLE_SCENE_LINEAR).getDefaultCPUProcessor()
    except Exception as err:  # OCIO raises its own Exception type
        raise InputError(
            f"ingest.colorspace: no conversion from {colorspace!r} to scene_linear in the OCIO "
            f"config {name} ({err})"
        ) from err


def plate_to_linear(colorspace: str, config: str = "") -> Callable[[np.ndarray], np.ndarray]:
    """A converter of plate pixels from `colorspace` to the config's scene_linear role.

    The returned function maps (…, 3) float32 pixels to (…, 3) float32 scene-linear ones (a
    copy). Raises `InputError` naming `ingest.colorspace` when the config has no such name.
    """
    processor = _to_linear_processor(colorspace, config)

    def convert(rgb: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(rgb, dtype=np.float32).reshape(-1, 3).copy()
        processor.applyRGB(flat)
        return flat.reshape(np.shape(rgb))

    return convert


def working_space(kind: Kind, config: str = "") -> WorkingSpace:
    """The working encoding for a plate of `kind` under `config` ('' = $OCIO or pinned)."""
    _, name = load_config(config)
    if kind == "display":
        return WorkingSpace("display", name)
    white = np.full((1, 3), LOG_WHITE, np.float32)
    _log_processor(name, True).applyRGB(white)
    space = WorkingSpace("scene_linear", name, 1.0 / float(white[0, 0]))
    floor = float(space.encode(np.zeros((1, 3), np.float32))[0, 0])
    return WorkingSpace("scene_linear", name, space.scale, floor)


def preview_srgb(linear: np.ndarray) -> np.ndarray:
    """A simple display preview of scene-linear RGB: clip to 0..1 and sRGB-encode."""
    return np.clip(linear_to_srgb(np.clip(linear, 0.0, 1.0)), 0.0, 1.0)
