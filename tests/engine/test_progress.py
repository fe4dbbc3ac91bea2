"""`rna_engine.runtime.progress.ProgressTracker`'s ETA, driven by a fake clock through stages of known
speed, and the farm/terminal text of events."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from rna_engine.runtime.progress import (
    ETA_MAX_RISE,
    Event,
    FarmPrinter,
    ProgressTracker,
    format_eta,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(
    weights: dict[str, float],
    durations_s: dict[str, float],
    fraction_at: Callable[[str, float], float] | None = None,
    tick_s: float = 0.5,
) -> list[tuple[float, float, float | None]]:
    """Run every stage for its true duration, updating every `tick_s`.

    Returns (time since start, true seconds left, reported ETA) per event.
    """
    clock = FakeClock()
    events: list[Event] = []
    tracker = ProgressTracker(weights, [events.append], min_interval_s=0.0, clock=clock)
    total = sum(durations_s.values())
    out: list[tuple[float, float, float | None]] = []
    elapsed = 0.0
    for stage, duration in durations_s.items():
        t = 0.0
        while t < duration - 1e-9:
            frac = t / duration if fraction_at is None else fraction_at(stage, t / duration)
            tracker.update(stage, frac)
            out.append((elapsed + t, total - elapsed - t, events[-1].eta_s))
            t += tick_s
            clock.now += tick_s
        elapsed += duration
    tracker.update(list(durations_s)[-1], 1.0)
    out.append((total, 0.0, events[-1].eta_s))
    return out


def test_eta_is_right_when_the_weights_match_the_speeds() -> None:
    weights = {"a": 1.0, "b": 3.0, "c": 1.0}
    out = drive(weights, {"a": 10.0, "b": 30.0, "c": 10.0})
    measured = [(t, left, eta) for t, left, eta in out if eta is not None]
    assert measured[0][0] <= 2.5  # an estimate once 5 % of the job is measured
    for _, left, eta in measured:
        assert eta == pytest.approx(left, abs=0.6)
    assert out[-1][2] == 0.0


def test_eta_follows_a_slower_stage_and_converges() -> None:
    # b has the prior weight of a but takes 4x as long: the ETA must learn it.
    out = drive({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 10.0, "b": 40.0, "c": 10.0})
    by_time = {round(t, 1): (left, eta) for t, left, eta in out}
    assert by_time[8.0][1] == pytest.approx(22.0, abs=0.5)  # in a: 2 s + 2 x 10 s (priors)
    # Half of b done: 20 s of b, and c priced at the measured (10 + 40) s / 2 weights = 25 s.
    assert by_time[30.0][1] == pytest.approx(45.0, abs=1.0)
    rises = [(t, b / a) for (t, _, a), (_, _, b) in zip(out, out[1:], strict=False) if a and b]
    assert max(r for _, r in rises) > ETA_MAX_RISE  # b measured slower: the ETA may jump...
    assert all(r <= ETA_MAX_RISE + 1e-9 for t, r in rises if t < 10.0 or t > 14.0)  # ...then
    left, eta = by_time[57.0]  # 7 s into c: measured on its own, smoothed over ~3 s
    assert eta == pytest.approx(left, abs=2.0)


def test_eta_rises_at_most_by_the_bound_between_events() -> None:
    # Stage a does 60 % of its work in the first 10 % of its time, then slows down: its own rate
    # (no earlier stage to compare with) first promises little and then much more. Events come
    # every 4 s, so smoothing alone would let the ETA jump by ~1.5x per event.
    def front_loaded(stage: str, frac: float) -> float:
        if stage != "a":
            return frac
        return 6 * frac if frac < 0.1 else 0.6 + 0.4 * (frac - 0.1) / 0.9

    out = drive({"a": 1.0, "b": 1.0}, {"a": 40.0, "b": 40.0}, front_loaded, tick_s=4.0)
    etas = [eta for _, _, eta in out if eta is not None]
    rises = [b / a for a, b in zip(etas, etas[1:], strict=False) if a > 0]
    assert max(rises) == pytest.approx(ETA_MAX_RISE)  # the bound holds, and it was needed
    # the ETA keeps moving (it does not sit at one value while the stage runs on)
    assert len({round(eta, 3) for eta in etas[:10]}) == 10


def test_a_first_fast_stage_gives_no_eta_of_zero() -> None:
    # ingest took 0.01 s: extrapolating the fit from it would say "0s".
    out = drive({"ingest": 0.04, "fit": 0.96}, {"ingest": 0.01, "fit": 20.0}, tick_s=0.01)
    first = [(t, left, eta) for t, left, eta in out if eta is not None][0]
    assert first[0] > 0.2 and first[2] == pytest.approx(first[1], rel=0.2)


def test_farm_printer_lines_are_exact() -> None:
    stream = io.StringIO()
    printer = FarmPrinter(stream)
    printer(Event("fit", 0.5, 0.4213, 10.0, "step 300/6000"))
    printer(Event("fit", 0.6, 0.5, 8.0, "step 360/6000"))
    printer.fail("cancelled (SIGTERM)")
    assert stream.getvalue().splitlines() == [
        "openjd_status: fit",
        "openjd_progress: 42.1",
        "openjd_progress: 50.0",
        "openjd_fail: cancelled (SIGTERM)",
    ]


def test_format_eta() -> None:
    assert [format_eta(None), format_eta(7.4), format_eta(65.0), format_eta(3600)] == [
        "--",
        "7s",
        "1m05s",
        "60m00s",
    ]
