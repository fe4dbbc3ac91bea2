"""Phase 1 of the fit: identity pre-training of T (docs/method.md §4).

T(x, y, t) is fitted to the camera base (the identity without a camera prior) on uniform
samples of every frame, so the joint fit starts from a mapping that already follows the camera.
Only T's MLP trains here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rna_engine.model.fields import RNAFields

from .loop import StepLoop
from .problem import FitProblem

MAX_BATCH = 65_536
"""Pre-training needs no more samples per step than this, whatever `fit.batch_size` is."""


class Pretraining:
    """T ≈ the camera base on every frame; `steps` steps (the shot-scaled `fit.pretrain_steps`)."""

    def __init__(self, problem: FitProblem, model: RNAFields, steps: int) -> None:
        self.problem = problem
        self.model = model
        self.steps = steps

    def run(self, loop: StepLoop, start: int = 0, state: dict[str, Any] | None = None) -> bool:
        """Steps `start..steps` (`state`: the optimizer's, when resuming mid-phase); False when
        there was nothing left to run."""
        total = self.steps
        if start >= total:
            return False
        shot, geo, model = self.problem.shot, self.problem.geometry, self.model
        opt, base = loop.optimizer(
            [], model.mapping_parameters(), 0.0, self.problem.fit.lr_mlp, state
        )
        batch = min(self.problem.fit.batch_size, MAX_BATCH)
        device = loop.device

        def loss_fn(step: int) -> tuple[Tensor, dict[str, Tensor]]:
            g = loop.generator
            x = torch.rand(batch, generator=g, device=device) * (shot.width - 1)
            y = torch.rand(batch, generator=g, device=device) * (shot.height - 1)
            t = torch.randint(0, shot.n_frames, (batch,), generator=g, device=device).float()
            xyt = geo.xyt_norm(x, y, t)
            target = model.camera_base(xyt)
            return ((model.uv(xyt) - target) ** 2).sum(1).mean(), {}

        def on_log(step: int, loss: float, terms: dict[str, Tensor]) -> None:
            loop.report(
                "fit", step, total, fraction=0.05 * step / total, phase="pretrain", loss=loss
            )

        loop.run("pretrain", start, total, opt, base, loss_fn, on_log)
        return True
