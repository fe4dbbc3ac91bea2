"""The service's log file: `$RNA_HOME/logs/engine.log`, rotating (5 MiB × 3), every
`rna_engine` logger; `rna-engine serve` adds it. Besides `cli.py`, the only place handlers are set.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path


def setup_logging(rna_home: Path, verbose: bool = False) -> Path:
    """Add a rotating log file `$RNA_HOME/logs/engine.log` to the `rna_engine` logger."""
    logs = Path(rna_home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "engine.log"
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger("rna_engine")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return path
