"""What every benchmark records beside its numbers: the commit it ran at."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """`$RNA_BENCH_COMMIT`, else the short hash of HEAD, or 'unknown' outside a git checkout.

    Set the variable where the checkout's history does not match its files: a copied working
    tree (e.g. on a lent GPU machine) can carry an older `.git` than the files it runs.
    """
    if os.environ.get("RNA_BENCH_COMMIT"):
        return os.environ["RNA_BENCH_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
