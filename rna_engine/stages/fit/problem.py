"""What every phase of the fit reads and never changes: the shot, its geometry, the settings."""

from __future__ import annotations

from dataclasses import dataclass

from rna_engine.settings import FitSettings, RefineSettings

from .shot import Geometry, ShotTensors


@dataclass(frozen=True)
class FitProblem:
    """One shot's fit, as the phases receive it.

    Attributes:
        shot: the shot at working resolution on the fit's device.
        geometry: its coordinate normalisation (docs/method.md §1.2).
        fit, refine: the build's settings of the joint fit and of the refinement.
        camera_region: (x0, y0, x1, y1) reference working pixels of the camera gate
            (`shot.camera_gate`); None: no gate.
    """

    shot: ShotTensors
    geometry: Geometry
    fit: FitSettings
    refine: RefineSettings
    camera_region: tuple[float, float, float, float] | None = None
