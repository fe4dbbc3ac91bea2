"""`rna-engine serve`: the local socket service Nuke talks to (docs/protocol.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

NAME = "serve"
HELP = "run the local engine service (127.0.0.1, discovery file in $RNA_HOME/engine.json)"

log = logging.getLogger(__name__)


def populate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="device for jobs whose spec says auto: auto, cpu or cuda:N (default auto)",
    )
    parser.add_argument(
        "--frame-timeout-s",
        type=float,
        default=5.0,
        help="a request frame must arrive within this many seconds of its first byte",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=300.0,
        help="close a connection that sends no request for this many seconds",
    )
    parser.add_argument(
        "--heartbeat-s", type=float, default=2.0, help="seconds between subscriber heartbeats"
    )


def run(args: argparse.Namespace) -> int:
    from rna_engine.runtime.context import rna_home
    from rna_engine.service import Service, setup_logging

    home = rna_home()
    log_path = setup_logging(home, verbose=getattr(args, "verbose", False))
    if args.device == "cpu":
        device = "cpu"  # no torch import: the service starts in well under a second
    else:
        from rna_engine.runtime.context import resolve_device

        device = resolve_device(args.device)
    service = Service(
        home,
        device=device,
        frame_timeout_s=args.frame_timeout_s,
        idle_timeout_s=args.idle_timeout_s,
        heartbeat_s=args.heartbeat_s,
    )

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=service.stop, name="rna-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    log.info("log file %s", log_path)
    try:
        service.serve_forever()
    finally:
        service.stop()
    return 0
