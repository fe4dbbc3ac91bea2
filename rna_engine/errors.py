"""Exceptions the engine raises; only `cli.main` and the service map them to exit codes.

- `InputError`: something the user can fix. Its message is the one line they see and names the
  file, frame or setting. Exit code 2.
- `QualityError`: a quality gate failed (`rna_engine.stages.quality`): the build produced garbage and
  must not say `done`. An `InputError` (exit code 2) with error code `quality`.
- `OutputError`: the output cannot be written (disk full, read-only, quota). An `InputError`
  (exit code 2) with error code `output`, naming the path.
- `Cancelled`: the user or the service cancelled the job. Exit code 130.
- anything else is an internal error: exit code 1, traceback to the log file.
"""

from __future__ import annotations


class RNAError(Exception):
    """Base class of the engine's own errors."""


class InputError(RNAError):
    """Bad input: a file, frame or setting the user can fix (exit code 2)."""

    code = "input"
    """The error code `status.json`, the service and the farm report."""


class QualityError(InputError):
    """A quality gate failed: the build's result is not usable (exit code 2)."""

    code = "quality"


class OutputError(InputError, OSError):
    """The cache cannot be written (disk full, read-only, no permission): exit code 2, one line
    naming the path. Also an `OSError`, so code that outlives a failed write (a heartbeat, a
    final status) keeps catching it as one."""

    code = "output"


class Cancelled(RNAError):
    """The job was cancelled (exit code 130)."""


class FitDiverged(RNAError):
    """The optimiser produced NaN/Inf; the fit stops rather than writing garbage (exit code 1)."""


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_CANCELLED = 130
