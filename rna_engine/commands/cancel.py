"""`rna-engine cancel JOB`: cancel a queued or running job of the running engine."""

from __future__ import annotations

import argparse
import sys

NAME = "cancel"
HELP = "cancel a job of the running engine"


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id (see `rna-engine status`)")


def run(args: argparse.Namespace) -> int:
    from rna_engine.runtime.context import rna_home
    from rna_engine.service import call_engine

    from .status import format_job

    job = call_engine(rna_home(), "job.cancel", {"job_id": args.job})
    sys.stdout.write(format_job(job) + "\n")
    return 0
