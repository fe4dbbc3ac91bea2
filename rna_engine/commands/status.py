"""`rna-engine status [JOB]`: jobs of the running engine, or a cache's `status.json`."""

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


def _status_file(path: Path) -> Path:
    from rna_engine.cache import BuildPaths, version_dirs
    from rna_engine.errors import InputError

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
    from rna_engine.progress import format_eta

    name = job.get("job_id") or job.get("name") or "-"
    error = job.get("error") or {}
    message = error.get("message") if error else job.get("message", "")
    return (
        f"{name:<16} {job.get('state', '?'):<9} {job.get('stage') or '-':<16} "
        f"{float(job.get('progress') or 0.0) * 100:5.1f}% ETA {format_eta(job.get('eta_s')):>6} "
        f"{message or ''}"
    ).rstrip()


def run(args: argparse.Namespace) -> int:
    from rna_engine.cache import read_json
    from rna_engine.context import rna_home
    from rna_engine.service import call_engine, discovery_path, live_engine

    out = sys.stdout
    if args.cache:
        data = read_json(_status_file(Path(args.cache)))
        out.write((json.dumps(data, indent=2) if args.json else format_job(data)) + "\n")
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
