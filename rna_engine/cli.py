"""`rna-engine` command line (README.md; exit codes in docs/architecture.md).

Each subcommand is a small module in `rna_engine.commands` with `NAME`, `HELP`,
`populate(parser)` and `run(args) -> int`; modules are imported only when their command runs,
so `rna-engine info` never imports torch. Only `main` picks exit codes: 0 ok, 2 bad input
(one line naming the file/frame/setting; a `PermissionError` anywhere counts as one), 1 internal
error (traceback to the log), 130 cancelled (also SIGINT/SIGTERM during a build).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import EXIT_CANCELLED, EXIT_INPUT, EXIT_INTERNAL, Cancelled, InputError
from .runtime.context import rna_home

log = logging.getLogger("rna_engine")

COMMANDS: tuple[str, ...] = (
    "info",
    "synth",
    "doctor",
    "build",
    "apply",
    "demo",
    "serve",
    "status",
    "cancel",
    "farm",
    "models",
)
"""Subcommand modules under `rna_engine.commands` (module name = command name)."""


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time (it may be replaced after set-up)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("rna-engine: %(message)s"))
    root = logging.getLogger("rna_engine")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


CRASH_LOG_BYTES = 1 << 20
"""`crash.log` past this size is moved to `crash.log.1` (replacing it) before the next entry."""


def _write_crash_log(exc: BaseException) -> Path | None:
    """Append the traceback to `$RNA_HOME/logs/crash.log` (at most 2 × `CRASH_LOG_BYTES`)."""
    try:
        logs = rna_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / "crash.log"
        if path.exists() and path.stat().st_size > CRASH_LOG_BYTES:
            os.replace(path, logs / "crash.log.1")
        with path.open("a") as fh:
            fh.write("".join(traceback.format_exception(exc)))
            fh.write("\n")
        return path
    except OSError:
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rna-engine", description="RNA neural atlas engine")
    parser.add_argument("--version", action="version", version=f"rna-engine {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if importlib.util.find_spec(f"{__package__}.commands.{name}") is None:
            continue  # a command not installed in this build
        module = importlib.import_module(f".commands.{name}", __package__)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.populate(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rna-engine` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_INPUT
    try:
        return int(args._run(args) or 0)
    except InputError as err:
        log.error("%s", err)
        return EXIT_INPUT
    except PermissionError as err:  # a plate folder, file or cache the user may not use
        where = err.filename or ""
        log.error("%s: permission denied (%s)", where, err.strerror or err)
        return EXIT_INPUT
    except Cancelled:
        log.error("cancelled")
        return EXIT_CANCELLED
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGINT/SIGTERM during a build
        log.error("cancelled (%s)", err or "SIGINT")
        return EXIT_CANCELLED
    except Exception as exc:  # the one place that catches everything
        path = _write_crash_log(exc)
        where = f" (traceback in {path})" if path else ""
        log.error("internal error: %s%s", exc, where)
        if args.verbose:
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
