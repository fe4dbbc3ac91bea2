"""Tests of `rna_nuke/jobs.py`: a scripted stand-in engine client, then the real engine service."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rna_nuke import jobs, knobs
from rna_nuke.protocol import EngineError


class ScriptedClient:
    """Stands in for the engine process: replays `events`, records submit/cancel."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        final_status: dict[str, Any] | None = None,
        step_s: float = 0.0,
        device: str = "cuda:0",
    ) -> None:
        self.events = events
        self.final_status = final_status or {"state": "cancelled"}
        self.step_s = step_s
        self.device = device
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.status_calls = 0
        self.subscribe_thread = ""

    def hello(self) -> dict[str, Any]:
        return {"protocol": 1, "device": self.device}

    def submit(self, spec: dict[str, Any]) -> str:
        self.submitted.append(spec)
        return "job-1"

    def subscribe(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool],
        status_path: str | None = None,
    ) -> dict[str, Any]:
        self.subscribe_thread = threading.current_thread().name
        last: dict[str, Any] = {"job_id": job_id, "state": "queued"}
        for event in self.events:
            if should_stop():
                return last
            last = {"job_id": job_id, **event}
            on_event(last)
            time.sleep(self.step_s)
        return last

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"state": "running"}

    def status(self, job_id: str) -> dict[str, Any]:
        self.status_calls += 1
        return dict(self.final_status)


def running(progress: float, stage: str = "fit") -> dict[str, Any]:
    return {"state": "running", "stage": stage, "progress": progress, "eta_s": 30.0}


SPEC = {"plate": "/p/a.####.exr", "roi": "/r.exr", "reference_frame": 1}


def test_progress_is_mapped_to_percent_once_per_change() -> None:
    client = ScriptedClient(
        [
            running(0.0, "ingest"),
            running(0.1),
            running(0.1),
            running(0.504),
            running(0.5049),
            {"state": "done", "stage": "bake", "progress": 1.0},
        ]  # fmt: skip
    )
    seen: list[jobs.Progress] = []
    result = jobs.BuildJob(SPEC, lambda: client, on_progress=seen.append).run()
    assert [p.percent for p in seen] == [0, 10, 50, 100]
    assert seen[1].message == "running | fit 10% | ETA 30s | GPU cuda:0"
    assert result.ok and result.job_id == "job-1"
    assert result.message == "done | 100% | GPU cuda:0"
    assert client.submitted == [SPEC]
    assert client.cancelled == []


def test_is_cancelled_sends_cancel_and_waits_for_the_engine() -> None:
    client = ScriptedClient([running(0.1 * i) for i in range(10)], {"state": "cancelled"})
    seen: list[int] = []
    job = jobs.BuildJob(
        SPEC, lambda: client, on_progress=lambda p: seen.append(p.percent),
        is_cancelled=lambda: len(seen) >= 3,
    )  # fmt: skip
    result = job.run()
    assert client.cancelled == ["job-1"]
    assert result.state == "cancelled" and not result.ok
    assert seen == [0, 10, 20]


def test_cancel_that_the_engine_never_confirms_still_ends() -> None:
    client = ScriptedClient([running(0.1 * i) for i in range(10)], {"state": "running"})
    job = jobs.BuildJob(
        SPEC, lambda: client, is_cancelled=lambda: bool(client.submitted),
        cancel_wait_s=0.05, poll_s=0.01,
    )  # fmt: skip
    started = time.monotonic()
    result = job.run()
    assert time.monotonic() - started < 2.0
    assert client.cancelled == ["job-1"]
    assert result.state == "cancelled"
    assert "did not confirm" in result.message
    assert client.status_calls >= 2


def test_cancel_before_submit_submits_nothing() -> None:
    client = ScriptedClient([running(0.5)])
    job = jobs.BuildJob(SPEC, lambda: client)
    job.cancel()
    result = job.run()
    assert result.state == "cancelled"
    assert client.submitted == [] and client.cancelled == []


def test_engine_errors_become_one_message() -> None:
    def no_engine() -> ScriptedClient:
        raise EngineError("engine_start", "cannot run the engine interpreter /x/python")

    result = jobs.BuildJob(SPEC, no_engine).run()
    assert result.state == "failed"
    assert result.message == (
        "RNA engine error (engine_start): cannot run the engine interpreter /x/python"
    )
    refused = jobs.BuildJob(SPEC, lambda: _raising(ConnectionRefusedError("refused"))).run()
    assert refused.message == "cannot reach the RNA engine: refused"


def _raising(err: Exception) -> ScriptedClient:
    raise err


def test_a_failed_job_reports_the_engine_error() -> None:
    failed = {
        "state": "failed",
        "stage": "ingest",
        "error": {"code": "input", "message": "plate.1005.exr: missing"},
    }
    result = jobs.BuildJob(SPEC, lambda: ScriptedClient([running(0.0), failed])).run()
    assert result.state == "failed"
    assert result.message == "RNA engine error (input): plate.1005.exr: missing"


def test_a_job_lost_mid_way_is_not_reported_as_done() -> None:
    client = ScriptedClient([running(0.2)], final_status={"state": "running"})
    result = jobs.BuildJob(SPEC, lambda: client).run()
    assert result.state == "lost"
    assert "job-1" in result.message and "Reload" in result.message


def test_headless_prints_one_line_per_step() -> None:
    client = ScriptedClient([running(0.0, "ingest"), running(0.5), {"state": "done"}], device="")
    out = io.StringIO()
    result = jobs.run_headless(jobs.BuildJob(SPEC, lambda: client), out)
    assert result.ok
    assert out.getvalue().splitlines() == [
        "RNA build   0% running | ingest 0% | ETA 30s",
        "RNA build  50% running | fit 50% | ETA 30s",
        "RNA build 100% done | 100%",
        "RNA build done: done | 100%",
    ]


def test_start_runs_the_job_in_a_worker_thread() -> None:
    client = ScriptedClient([running(0.5), {"state": "done"}])
    done = threading.Event()
    results: list[jobs.JobResult] = []
    threads: list[str] = []
    job = jobs.BuildJob(SPEC, lambda: client)

    def on_done(result: jobs.JobResult) -> None:
        threads.append(threading.current_thread().name)
        results.append(result)
        done.set()

    thread = job.start(
        on_done, on_thread_start=lambda j: threads.append(threading.current_thread().name)
    )
    assert done.wait(5.0)
    thread.join(5.0)
    assert results[0].ok
    assert threads == [thread.name, thread.name]
    assert client.subscribe_thread == thread.name != threading.current_thread().name


# -- against the real engine service -----------------------------------------------------------


class TinyPipeline:
    """A runner for `rna_engine.service.Service`: stages with progress; waits for cancel if told."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.specs: list[Any] = []

    def __call__(self, spec: Any, ctx: Any) -> None:
        self.specs.append(spec)
        for stage in ("ingest", "fit", "bake"):
            for i in range(3):
                ctx.cancel.check()
                ctx.reporter.update(stage, (i + 1) / 3, f"{stage} {i}")
                time.sleep(0.01)
            while self.hold and stage == "ingest":
                ctx.cancel.check()
                time.sleep(0.01)


@pytest.fixture
def service(tmp_path: Path):
    service_module = pytest.importorskip("rna_engine.service")
    from rna_nuke.client import EngineClient

    def start(pipeline: TinyPipeline) -> Any:
        svc = service_module.Service(
            tmp_path / "home",
            device="cpu",
            runner=pipeline,
            stage_weights={"ingest": 1.0, "fit": 2.0, "bake": 1.0},
            heartbeat_s=0.2,
        )
        svc.start()
        started.append(svc)
        return EngineClient(svc.discovery_path, connect_timeout_s=0.5, retries=2)

    started: list[Any] = []
    yield start
    for svc in started:
        svc.stop(timeout_s=5.0)


def _real_spec(tmp_path: Path) -> dict[str, Any]:
    values = {**knobs.default_values(), "reference_frame": 1003, "quality": "draft"}
    return knobs.build_spec(
        values,
        plate=str(tmp_path / "plate.####.exr"),
        roi=str(tmp_path / "roi.exr"),
        frames=(1001, 1005),
        cache_dir=str(tmp_path / "rna" / "RNAAtlasBuild1"),
        version=1,
    )


def test_job_against_the_real_service(service: Any, tmp_path: Path) -> None:
    pipeline = TinyPipeline()
    client = service(pipeline)
    seen: list[jobs.Progress] = []
    result = jobs.BuildJob(_real_spec(tmp_path), lambda: client, on_progress=seen.append).run()
    assert result.ok, result.message
    assert result.message == "done | 100% | GPU cpu"
    percents = [p.percent for p in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert {p.stage for p in seen} >= {"ingest", "fit", "bake"}
    spec = pipeline.specs[0]  # what the engine parsed from the plugin's dict
    assert (spec.reference_frame, spec.frames, spec.name) == (1003, "1001-1005", "RNAAtlasBuild1")
    assert spec.settings.preset == "draft"


def test_cancel_against_the_real_service(service: Any, tmp_path: Path) -> None:
    client = service(TinyPipeline(hold=True))
    seen: list[jobs.Progress] = []
    job = jobs.BuildJob(
        _real_spec(tmp_path), lambda: client, on_progress=seen.append,
        is_cancelled=lambda: any(p.stage == "ingest" for p in seen),
    )  # fmt: skip
    result = job.run()
    assert result.state == "cancelled", result.message
    assert client.status(result.job_id)["state"] == "cancelled"
