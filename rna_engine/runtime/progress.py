"""Progress events, sinks and the cancel token.

Stages call `reporter.update(stage, fraction, message, **metrics)` with `fraction` in 0..1 of that
stage. A `ProgressTracker` turns that into an `Event` with the overall progress (stage weights)
and an ETA, and hands it to every sink: a bar on a terminal, `openjd_progress:` lines on a farm,
socket events, `status.json`. `progress` is 0..1 everywhere; only the farm printer multiplies by
100 (the `openjd_progress:` line is a percentage).

The ETA comes from measured per-stage rates, with the stage weights as priors for the stages not
yet run, smoothed over time, and it never rises by more than `ETA_MAX_RISE` between two events
unless the running stage is measured slower than expected.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from rna_engine.errors import Cancelled


@dataclass(frozen=True)
class Event:
    """One progress update, as every sink sees it."""

    stage: str
    stage_progress: float
    """Fraction of the current stage done, 0..1."""
    progress: float
    """Fraction of the whole job done, 0..1."""
    eta_s: float | None
    """Estimated seconds left for the whole job (None until it can be estimated)."""
    message: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)


class Reporter(Protocol):
    """What stage code talks to."""

    def update(self, stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        """Report that `fraction` (0..1) of `stage` is done."""


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


class NullReporter:
    """A reporter that drops everything (library calls, tests)."""

    def update(self, stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        return None


ETA_MIN_FRACTION = 0.02
"""A stage's own rate is trusted once this fraction of it is done."""
ETA_MIN_MEASURED = 0.05
"""No ETA until this share of the whole job's weight has been measured (a first, fast stage
such as ingest says little about the fit)."""
ETA_SMOOTHING_S = 3.0
"""Time constant of the ETA's exponential smoothing, seconds."""
ETA_MAX_RISE = 1.2
"""Largest factor the ETA may rise by between two events, unless a stage runs slower than
expected."""
ETA_RISE_FLOOR_S = 5.0
"""Below this many seconds the rise limit applies to this value instead (a near-zero ETA may
still grow to a few seconds)."""
ETA_OVERDUE = 0.25
"""A stage past its expected time that reports no fraction yet is taken to need this share of
its elapsed time again."""
CPU_FIT_SAMPLES_PER_S = 2.3e4
"""Fit samples (steps x batch) per second on a CPU, for the slow-preset warning: the `standard`
pretraining ran 0.71 steps/s x 32768 samples on 2 shared cores (the joint fit is slower still),
so estimates from it are a lower bound."""


def cpu_build_estimate_s(fit_steps: int, batch_size: int) -> float:
    """Rough CPU seconds of the fit of `fit_steps` steps of `batch_size` samples."""
    return fit_steps * batch_size / CPU_FIT_SAMPLES_PER_S


class ProgressTracker:
    """Maps per-stage fractions to overall progress and an ETA, and feeds sinks.

    The ETA: seconds per unit of stage weight are measured on the finished stages and the
    running one (once `ETA_MIN_FRACTION` of it is done); the running stage's remaining time comes
    from its own rate, the later stages' from their weights times that measure. The estimate is
    smoothed (`ETA_SMOOTHING_S`) and may rise by at most `ETA_MAX_RISE` per event unless the
    running stage is measured slower than the finished ones predicted.

    Args:
        stage_weights: stage name → relative cost; unknown stages get weight 0.
        sinks: callables receiving each `Event`.
        min_interval_s: sinks get at most one event per interval, except stage changes and 100 %.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        stage_weights: Mapping[str, float],
        sinks: Iterable[Sink] = (),
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        total = sum(stage_weights.values()) or 1.0
        self._weights = {k: v / total for k, v in stage_weights.items()}
        self._order = list(stage_weights)
        self._sinks = list(sinks)
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._start = clock()
        self._last_emit = -1e9
        self._last_stage = ""
        self._lock = threading.Lock()
        self.last_event: Event | None = None
        self.timings_s: dict[str, float] = {}
        self._stage_start = self._start
        self._eta_s: float | None = None
        self._eta_at = self._start

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def overall(self, stage: str, fraction: float) -> float:
        """Overall fraction done when `fraction` of `stage` is done."""
        done = 0.0
        for name in self._order:
            if name == stage:
                return min(1.0, done + self._weights.get(name, 0.0) * fraction)
            done += self._weights[name]
        return min(1.0, done)

    def update(self, stage: str, fraction: float, message: str = "", **metrics: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        now = self._clock()
        with self._lock:
            if stage != self._last_stage:
                if self._last_stage:
                    self.timings_s[self._last_stage] = now - self._stage_start
                self._stage_start = now
            changed = stage != self._last_stage
            self._last_stage = stage
            if not changed and fraction < 1.0 and now - self._last_emit < self._min_interval_s:
                return
            self._last_emit = now
            progress = self.overall(stage, fraction)
            eta = self._smoothed_eta(stage, fraction, progress, now)
            event = Event(stage, fraction, progress, eta, message, dict(metrics))
            self.last_event = event
            sinks = list(self._sinks)
        for sink in sinks:
            sink(event)

    def _raw_eta(self, stage: str, fraction: float, now: float) -> tuple[float | None, bool]:
        """(seconds left from measured rates, whether `stage` runs slower than predicted)."""
        done = [s for s in self.timings_s if s in self._weights and s != stage]
        done_w = sum(self._weights[s] for s in done)
        done_t = sum(self.timings_s[s] for s in done)
        cur_w = self._weights.get(stage, 0.0)
        cur_t = now - self._stage_start
        prior = done_t / done_w if done_w > 0 and done_t > 0 else None  # s per unit weight
        cur_total = cur_t / fraction if fraction >= ETA_MIN_FRACTION and cur_t > 0 else None
        if cur_total is not None and cur_w > 0:
            per_weight = (done_t + cur_total) / (done_w + cur_w)
        else:
            per_weight = prior
        measured_w = done_w + (cur_w * fraction if cur_total is not None else 0.0)
        if per_weight is None or measured_w < ETA_MIN_MEASURED:
            return None, False
        if cur_total is not None:
            cur_left = cur_total - cur_t
        else:
            cur_left = max(cur_w * per_weight - cur_t, ETA_OVERDUE * cur_t)
        later = self._order[self._order.index(stage) + 1 :] if stage in self._order else []
        later_left = per_weight * sum(self._weights[s] for s in later)
        slower = (
            cur_total is not None and prior is not None and cur_total > cur_w * prior * ETA_MAX_RISE
        )
        return max(0.0, cur_left + later_left), slower

    def _smoothed_eta(
        self, stage: str, fraction: float, progress: float, now: float
    ) -> float | None:
        """The ETA of an event: smoothed, its rises bounded (see the class docstring)."""
        if progress >= 1.0:
            self._eta_s, self._eta_at = 0.0, now
            return 0.0
        raw, slower = self._raw_eta(stage, fraction, now)
        previous = self._eta_s
        if raw is None:
            return previous if previous is None else max(0.0, previous - (now - self._eta_at))
        if previous is None:
            eta = raw
        else:
            dt = max(0.0, now - self._eta_at)
            expected = max(0.0, previous - dt)  # the last estimate, counted down
            eta = expected + (1.0 - math.exp(-dt / ETA_SMOOTHING_S)) * (raw - expected)
            if not slower:  # at most ETA_MAX_RISE above what was last shown
                eta = min(eta, max(previous, ETA_RISE_FLOOR_S) * ETA_MAX_RISE)
        self._eta_s, self._eta_at = eta, now
        return eta

    def finish_stage(self) -> None:
        """Record the running stage's time (call once at the end of a job)."""
        if self._last_stage and self._last_stage not in self.timings_s:
            self.timings_s[self._last_stage] = self._clock() - self._stage_start


def format_eta(eta_s: float | None) -> str:
    """'1m05s', '12s' or '--'."""
    if eta_s is None:
        return "--"
    eta = int(round(eta_s))
    return f"{eta // 60}m{eta % 60:02d}s" if eta >= 60 else f"{eta}s"


class TerminalBar:
    """A one-line progress bar on a terminal (stderr), plain lines when not a terminal."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self._stream = stream or sys.stderr
        self._width = width
        self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._last_line_stage = ""

    def __call__(self, event: Event) -> None:
        filled = int(round(event.progress * self._width))
        bar = "#" * filled + "-" * (self._width - filled)
        extra = " ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
        line = (
            f"{event.stage:<16} [{bar}] {event.progress * 100:5.1f}% "
            f"ETA {format_eta(event.eta_s):>6} {event.message} {extra}".rstrip()
        )
        if self._tty:
            self._stream.write("\r" + line[:160].ljust(100))
            if event.progress >= 1.0:
                self._stream.write("\n")
        elif event.stage != self._last_line_stage or event.stage_progress >= 1.0:
            self._stream.write(line + "\n")
        self._last_line_stage = event.stage
        self._stream.flush()


class FarmPrinter:
    """Open Job Description stdout messages: `openjd_progress: <percent>`, `openjd_status: <text>`.

    The text of these lines is a contract with the farm runtime; tests check it exactly.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._stage = ""

    def __call__(self, event: Event) -> None:
        if event.stage != self._stage:
            self._stream.write(f"openjd_status: {event.stage}\n")
            self._stage = event.stage
        self._stream.write(f"openjd_progress: {event.progress * 100:.1f}\n")
        self._stream.flush()

    def fail(self, reason: str) -> None:
        self._stream.write(f"openjd_fail: {reason}\n")
        self._stream.flush()


class CancelToken:
    """Thread-safe cancel flag checked by stages between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if the job was cancelled."""
        if self._event.is_set():
            raise Cancelled("cancelled")
