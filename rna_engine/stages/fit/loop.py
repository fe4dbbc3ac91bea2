"""The training loop every phase of the fit runs on (docs/method.md §8.1), written once.

`StepLoop` owns what does not depend on the loss: the optimizer and its cosine learning-rate
schedule, the eager loop or one captured CUDA graph replayed per step, the finite check, the
progress report, the cancel check and the checkpoint. A phase gives it a `loss_fn(step)` that
samples a batch on the device and returns the loss and its terms, and an `on_log` callback;
losses are read back only every `fit.log_every` steps, so the loop never waits for the host
otherwise. `FitLog` is what the fit records as it goes: it travels in the checkpoint and ends
in `FitResult`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rna_engine.errors import FitDiverged, InputError
from rna_engine.media.cache import atomic_path
from rna_engine.runtime.context import RunContext
from rna_engine.settings import FitSettings

log = logging.getLogger(__name__)

STAGES = ("pretrain", "fit", "refine", "done")
"""Checkpoint stages in run order: the phase a checkpoint resumes (`done`: nothing left)."""

LossFn = Callable[[int], tuple[Tensor, dict[str, Tensor]]]
OnLog = Callable[[int, float, dict[str, Tensor]], None]


@dataclass
class FitLog:
    """What the fit records as it goes (kept in the checkpoint, returned in `FitResult`)."""

    history: list[dict[str, float]] = field(default_factory=list)
    """One record per logged step: phase (1.0 joint fit, 2.0 refinement), step, loss, terms."""
    timings_s: dict[str, float] = field(default_factory=dict)
    """Wall seconds per phase (`pretrain`, `fit`, `refine`), summed over resumed runs."""
    steps_per_s: dict[str, float] = field(default_factory=dict)
    """Steps per second of the last run of each phase."""
    evidence: list[dict[str, float | None]] = field(default_factory=list)
    """The refinement's per-frame evidence shares (`FitResult.evidence`)."""


@dataclass(frozen=True)
class Resume:
    """Where a checkpoint left the fit: the phase (`STAGES`), its step and optimizer state."""

    stage: str
    step: int
    optimizer: dict[str, Any] | None

    def start(self, stage: str) -> int:
        """The step `stage` starts from: the saved step for the saved phase, else 0."""
        return self.step if stage == self.stage else 0

    def optimizer_for(self, stage: str) -> dict[str, Any] | None:
        """The saved optimizer state, for the phase it was saved in mid-way."""
        return self.optimizer if stage == self.stage and self.step else None

    def runs(self, stage: str) -> bool:
        """Whether `stage` has work left (it is the saved phase or a later one)."""
        return STAGES.index(self.stage) <= STAGES.index(stage)


def graph_capture(model: nn.Module, fit: FitSettings, device: torch.device) -> bool:
    """Whether the steps run as a captured CUDA graph (`fit.compile`, the grids' backend)."""
    if device.type != "cuda" or fit.compile == "off":
        return False
    unsafe = sorted(
        {type(m).__name__ for m in model.modules() if not getattr(m, "graph_safe", True)}
    )
    if not unsafe:
        return True
    if fit.compile == "graph":
        raise InputError(
            f"setting fit.compile: 'graph' cannot capture the {', '.join(unsafe)} hash grid "
            "(its backward is not capture-safe); use fit.encoding_backend 'triton' or fit.compile "
            "'auto'"
        )
    log.info("fit: %s cannot be captured as a CUDA graph; steps run eagerly", ", ".join(unsafe))
    return False


class StepLoop:
    """Optimizer, schedule, steps, progress and checkpoints of the fit's phases.

    Args:
        model: the fields being fitted (on `ctx.device`); checkpoints hold its state dict.
        fit: `log_every`, `checkpoint_every`, `lr_decay` and `compile` are read here.
        ctx: device, seed, reporter, cancel token and `work_dir` (checkpoint `fit.ckpt`;
            None: no checkpoints).
        record: the log that checkpoints save and restore.
    """

    def __init__(self, model: nn.Module, fit: FitSettings, ctx: RunContext, record: FitLog):
        self.model = model
        self.fit = fit
        self.ctx = ctx
        self.record = record
        self.device = torch.device(ctx.device)
        self.use_graph = graph_capture(model, fit, self.device)
        # A captured graph draws from the default CUDA generator (graph-safe); elsewhere a
        # private seeded generator keeps CPU runs deterministic and resumable.
        self.generator: torch.Generator | None = None
        if not self.use_graph:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(ctx.seed)
        self.ckpt_path: Path | None = ctx.work_dir / "fit.ckpt" if ctx.work_dir else None

    # --------------------------------------------------------------------------------------
    # Optimizer and schedule

    def optimizer(
        self,
        params_hash: list[Tensor],
        params_mlp: list[Tensor],
        lr_hash: float,
        lr_mlp: float,
        state: dict[str, Any] | None = None,
    ) -> tuple[torch.optim.Adam, list[float]]:
        """Adam over the hash tables and the MLPs, and the groups' base learning rates (taken
        before `state`, a checkpoint's optimizer state, is loaded: its rates are decayed)."""
        groups = [
            {"params": params_hash, "lr": lr_hash, "eps": 1e-15},
            {"params": params_mlp, "lr": lr_mlp, "eps": 1e-8},
        ]
        groups = [g for g in groups if g["params"]]
        base = [float(g["lr"]) for g in groups]
        if self.use_graph:
            # A captured step reads the learning rate from device tensors updated in place.
            for g in groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=self.device)
            opt = torch.optim.Adam(groups, betas=(0.9, 0.99), capturable=True, foreach=True)
        else:
            opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
        if state is not None:
            opt.load_state_dict(state)
        return opt, base

    def set_lr(self, opt: torch.optim.Optimizer, base: list[float], step: int, total: int) -> None:
        # Cosine decay from 1 to lr_decay: larger early steps, quiet convergence at the end.
        frac = min(1.0, step / max(total, 1))
        factor = self.fit.lr_decay + (1 - self.fit.lr_decay) * 0.5 * (1 + math.cos(math.pi * frac))
        for group, lr in zip(opt.param_groups, base, strict=True):
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr * factor)
            else:
                group["lr"] = lr * factor

    # --------------------------------------------------------------------------------------
    # Progress

    def report(
        self,
        stage: str,
        step: int,
        total: int,
        fraction: float | None = None,
        phase: str = "",
        **metrics: float,
    ) -> None:
        """Report `step` of `total`; `fraction` of `stage` (default step/total) when a stage
        spans phases (pretrain then joint fit), whose name then leads the message."""
        self.ctx.cancel.check()
        done = step / max(total, 1) if fraction is None else fraction
        text = f"{phase} step {step}/{total}" if phase else f"step {step}/{total}"
        self.ctx.reporter.update(stage, done, text, **metrics)

    def _finite(self, value: Tensor, stage: str, step: int) -> float:
        v = float(value.detach())
        if not math.isfinite(v):
            raise FitDiverged(
                f"{stage}: loss became {v} at step {step}; lower the learning rates "
                "or check the plate for NaN/Inf pixels"
            )
        return v

    # --------------------------------------------------------------------------------------
    # Steps

    def run(
        self,
        stage: str,
        start: int,
        total: int,
        opt: torch.optim.Optimizer,
        base: list[float],
        loss_fn: LossFn,
        on_log: OnLog,
        before_step: Callable[[int], None] | None = None,
    ) -> None:
        """Run steps `start..total` of one phase: eager, or replaying one captured CUDA graph;
        its wall time goes to `record.timings_s[stage]`, its rate to `record.steps_per_s`.

        `loss_fn(step)` may read per-step device tensors that `before_step(step)` updates in
        place (never Python values that change between steps, which a graph would freeze).
        Losses are read back only every `log_every` steps; checkpoints every
        `checkpoint_every`.
        """
        t0 = time.perf_counter()
        self._steps(stage, start, total, opt, base, loss_fn, on_log, before_step)
        elapsed = time.perf_counter() - t0
        self.record.timings_s[stage] = self.record.timings_s.get(stage, 0) + elapsed
        if total > start:
            self.record.steps_per_s[stage] = (total - start) / max(elapsed, 1e-9)

    def _steps(
        self,
        stage: str,
        start: int,
        total: int,
        opt: torch.optim.Optimizer,
        base: list[float],
        loss_fn: LossFn,
        on_log: OnLog,
        before_step: Callable[[int], None] | None,
    ) -> None:
        graph: torch.cuda.CUDAGraph | None = None
        static: tuple[Tensor, dict[str, Tensor]] | None = None
        step = start
        if self.use_graph and total - start > 8:
            # Warm-up on a side stream is what CUDA graph capture requires; the gradient
            # accumulators it creates then sit on that stream, and PyTorch warns about the
            # (intended, harmless) stream mismatch on every capture.
            quiet = getattr(
                torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None
            )
            if quiet is not None:
                quiet(False)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up steps (real ones): kernels compiled, state built
                    self.set_lr(opt, base, step, total)
                    opt.zero_grad(set_to_none=True)
                    loss, _ = loss_fn(step)
                    loss.backward()
                    opt.step()
                    step += 1
                # The last warm-up graph holds the parameters' gradient accumulators, made on
                # the side stream; alive during the capture they trip PyTorch's stream-mismatch
                # warning for AccumulateGrad.
                del loss
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                static = loss_fn(step)
                static[0].backward()
                opt.step()
        while step < total:
            self.set_lr(opt, base, step, total)
            if before_step is not None:
                before_step(step)
            if graph is not None and static is not None:
                graph.replay()
                loss, terms = static
            else:
                loss, terms = loss_fn(step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step += 1
            if step % self.fit.log_every == 0 or step == total:
                on_log(step, self._finite(loss, stage, step), terms)
            if self.ckpt_path and step % self.fit.checkpoint_every == 0 and step < total:
                self.save(stage, step, opt)
        if graph is not None:
            # The graph's private memory pool stays reserved until it is returned: without
            # this, the refinement's graph was captured beside the joint fit's dead pool
            # (0.9 GB more device memory at 768×432×70).
            del graph, static, loss, terms
            opt.zero_grad(set_to_none=True)  # the gradients live in that pool too
            torch.cuda.empty_cache()

    # --------------------------------------------------------------------------------------
    # Checkpoints

    def save(self, stage: str, step: int, opt: torch.optim.Optimizer | None = None) -> None:
        """Checkpoint: the model, `opt`'s state, the random state and the log, atomically."""
        if self.ckpt_path is None:
            return
        state = {
            "stage": stage,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "generator": self.generator.get_state()
            if self.generator is not None
            else torch.cuda.get_rng_state(self.device),
            "history": self.record.history,
            "timings_s": self.record.timings_s,
            "evidence": self.record.evidence,
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)

    def load(self) -> Resume | None:
        """Restore the model, the random state and the log from the checkpoint; None (start
        over) when there is none, it is unreadable or it holds another model layout."""
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return None
        try:
            state = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        except Exception as err:  # a damaged checkpoint: start over rather than fail
            log.warning("ignoring unreadable checkpoint %s (%s)", self.ckpt_path, err)
            return None
        # Checked before loading: `load_state_dict` copies the matching tensors before it
        # raises on the others, which would leave a half-loaded model.
        mine = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        saved = state.get("model") if isinstance(state, dict) else None
        theirs = {k: tuple(v.shape) for k, v in saved.items()} if isinstance(saved, dict) else {}
        if mine != theirs:  # another engine's model layout, or another shot's
            differ = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
            log.warning(
                "ignoring checkpoint %s of another model layout (%s)",
                self.ckpt_path,
                ", ".join(differ[:4]),
            )
            return None
        self.model.load_state_dict(state["model"])
        try:
            if self.generator is not None:
                self.generator.set_state(state["generator"].cpu())
            else:
                torch.cuda.set_rng_state(state["generator"].cpu(), self.device)
        except (RuntimeError, KeyError):  # saved on another kind of device: keep our seed
            log.info("checkpoint %s: random state of another device, reseeded", self.ckpt_path)
        self.record.history[:] = list(state.get("history", []))
        self.record.timings_s.clear()
        self.record.timings_s.update(state.get("timings_s", {}))
        self.record.evidence[:] = list(state.get("evidence", []))
        log.info("resuming fit from %s step %d", state["stage"], state["step"])
        return Resume(str(state["stage"]), int(state["step"]), state.get("optimizer"))
