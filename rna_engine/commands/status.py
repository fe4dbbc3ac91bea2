"""`rna-engine status [JOB]`: jobs of the running engine, or a cache's `status.json`.

With `--cache` a build whose `status.json` says running/queued but whose process is gone (or whose
heartbeat stopped) is reported as `lost` (`rna_engine.media.cache.status_lost`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NAME = "status"
HELP = "show the running engine's jobs, one job, or a cache's status.json (--cache)"


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="job id (default: every job)")
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="read status.json from a build version folder (or the newest version of a build)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    from rna_engine.media.cache import LOST_AFTER_S  # no torch: the command stays light

    parser.add_argument(
        "--lost-after-s",
        type=float,
        default=LOST_AFTER_S,
        metavar="S",
        help="with --cache: a running build whose heartbeat is older than this many seconds is "
        "reported lost (default %(default)s)",
    )


def _status_file(path: Path) -> Path:
    from rna_engine.errors import InputError
    from rna_engine.media.cache import BuildPaths, version_dirs

    if path.is_file():
        return path
    if (path / "status.json").is_file():
        return path / "status.json"
    versions = version_dirs(path)
    if versions:
        return BuildPaths(versions[-1]).status_json
    raise InputError(f"{path}: no status.json (not a build version folder)")


def format_job(job: dict[str, Any]) -> str:
    """One line: id, state, stage, percent, ETA, message."""
    from rna_engine.runtime.progress import format_eta

    name = job.get("job_id") or job.get("name") or "-"
    error = job.get("error") or {}
    message = error.get("message") if error else job.get("message", "")
    return (
        f"{name:<16} {job.get('state', '?'):<9} {job.get('stage') or '-':<16} "
        f"{float(job.get('progress') or 0.0) * 100:5.1f}% ETA {format_eta(job.get('eta_s')):>6} "
        f"{message or ''}"
    ).rstrip()


def cache_report(data: dict[str, Any], path: Path, lost_after_s: float) -> dict[str, Any]:
    """`status.json` as `status --cache` shows it: `state` is `lost` when the rule says so (the
    recorded state then moves to `recorded_state`, the reason to `lost_reason`)."""
    from rna_engine.media.cache import status_lost

    report = {**data, "status_path": str(path)}
    reason = status_lost(data, lost_after_s=lost_after_s)
    if reason:
        report.update(state="lost", recorded_state=data.get("state"), lost_reason=reason)
    return report


def _when(epoch_s: Any) -> str:
    import time

    if not isinstance(epoch_s, int | float):
        return str(epoch_s) if epoch_s else "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))


def format_cache_status(report: dict[str, Any]) -> str:
    """Labelled lines: state, stage, progress, ETA, message, error, started, finished, file."""
    from rna_engine.runtime.progress import format_eta

    state = str(report.get("state") or "?")
    if report.get("lost_reason"):
        state += f" (was {report.get('recorded_state')}: {report['lost_reason']})"
    error = report.get("error") or {}
    if isinstance(error, dict) and error:
        error_text = f"{error.get('message', '')} ({error.get('code', '?')})"
    else:
        error_text = str(error or "-")
    live = report.get("state") in ("running", "queued")
    rows = [
        ("state", state),
        ("stage", report.get("stage") or "-"),
        ("progress", f"{float(report.get('progress') or 0.0) * 100:.1f}%"),
        ("ETA", format_eta(report.get("eta_s")) if live else "-"),
        ("message", report.get("message") or "-"),
        ("error", error_text),
        ("started", _when(report.get("started"))),
        ("finished", _when(report.get("finished"))),
    ]
    if report.get("pid"):
        rows.append(("process", f"{report.get('pid')} on {report.get('host') or '?'}"))
    if report.get("heartbeat"):
        rows.append(("heartbeat", _when(report.get("heartbeat"))))
    rows.append(("file", report.get("status_path") or "-"))
    return "\n".join(f"{label + ':':<10} {value}" for label, value in rows)


def run(args: argparse.Namespace) -> int:
    from rna_engine.media.cache import read_json
    from rna_engine.runtime.context import rna_home
    from rna_engine.service import call_engine, discovery_path, live_engine

    out = sys.stdout
    if args.cache:
        from rna_engine.errors import InputError

        path = _status_file(Path(args.cache))
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(f"{path}: not a status.json (expected a JSON object)")
        from rna_engine.media.cache import LOST_AFTER_S

        report = cache_report(data, path, getattr(args, "lost_after_s", LOST_AFTER_S))
        text = json.dumps(report, indent=2) if args.json else format_cache_status(report)
        out.write(text + "\n")
        return 0
    home = rna_home()
    if live_engine(discovery_path(home)) is None:
        out.write("no engine is running\n")
        return 0
    hello = call_engine(home, "hello")
    if args.job:
        jobs = [call_engine(home, "job.status", {"job_id": args.job})]
    else:
        jobs = call_engine(home, "jobs.list").get("jobs", [])
    if args.json:
        out.write(json.dumps({"engine": hello, "jobs": jobs}, indent=2) + "\n")
        return 0
    out.write(
        f"engine {hello.get('version')} pid {hello.get('pid')} device {hello.get('device')}: "
        f"{len(jobs)} job(s)\n"
    )
    for job in jobs:
        out.write(format_job(job) + "\n")
    return 0
