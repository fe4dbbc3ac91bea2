"""The engine's socket service under malformed requests and idle connections (issue #35).

    python benchmarks/bench_service_fuzz.py --requests 10000 [--seed 35] [--idle 64] [--json OUT]

Starts a real `rna-engine serve --device cpu` the way the plugin does
(`rna_nuke.launcher.start_engine`: a temporary `RNA_HOME`, output to
`logs/engine.stdout.log`), then sends `--requests` malformed requests, one connection each,
cycling through every kind of `tests/engine/malformed_frames.py` (non-object bodies, huge
integers, NaN/Infinity, invalid UTF-8, wrong field types, duplicate keys, deep nesting, bad
tokens, unknown types, long ids, wrong versions, zero-length, garbage, oversized headers,
truncated frames; about one in four small ones in writes of 1-7 bytes). Reports how many got
their error reply, were closed by a documented limit, got nothing or something else; whether
the engine still answers `hello`; its RSS growth (VmRSS) and thread count before and after; any
"connection handler failed" in its logs; every log file's size against its bound and whether
the session's first line is kept; `hello` latency with `--idle` anonymous connections open.
Linux only (`/proc`). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

import malformed_frames  # noqa: E402

from benchmarks.meta import commit  # noqa: E402
from rna_engine.service.logs import CONSOLE_BYTES, HEAD_BYTES, TAIL_BYTES  # noqa: E402
from rna_nuke.client import EngineClient  # noqa: E402
from rna_nuke.launcher import start_engine  # noqa: E402


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and Threads of a process, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def send_probes(port: int, count: int, seed: int, token: str) -> dict[str, Any]:
    """Outcome counts, per outcome and per kind, and the first few that went wrong."""
    outcomes: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    wrong: list[str] = []
    t0 = time.perf_counter()
    for probe in malformed_frames.probes(count, seed, token):
        try:
            outcome, detail = malformed_frames.run_probe(port, probe, timeout_s=5.0)
        except OSError as err:  # could not even connect
            outcome, detail = malformed_frames.WRONG, f"connect failed: {err}"
        outcomes[outcome] += 1
        by_kind[probe.kind][outcome] += 1
        if outcome not in (malformed_frames.REPLY, malformed_frames.CLOSED) and len(wrong) < 10:
            wrong.append(f"{probe.kind} (chunk {probe.chunk}): {outcome}: {detail}")
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "outcomes": dict(outcomes),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "not_answered": wrong,
    }


def hello_latency(client: EngineClient, port: int, idle: int, calls: int) -> dict[str, Any]:
    """`hello` round trips (ms) with `idle` anonymous connections held open."""
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    times, failures = [], []
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                client.hello()
                times.append((time.perf_counter() - t0) * 1000)
            except Exception as err:  # report it, do not stop
                failures.append(str(err))
    finally:
        for sock in held:
            sock.close()
    return {
        "idle_connections": idle,
        "calls": calls,
        "failed": len(failures),
        "first_failure": failures[0] if failures else "",
        "median_ms": round(statistics.median(times), 2) if times else None,
        "max_ms": round(max(times), 2) if times else None,
    }


def log_report(logs: Path) -> dict[str, Any]:
    """Every log file's size and bound; the session's first line; handler failures."""
    files = {}
    for path in sorted(logs.iterdir()):
        if path.name.startswith("engine.stdout"):
            bound = CONSOLE_BYTES + 200  # the cut notice
        elif ".tail" in path.name:
            bound = TAIL_BYTES
        else:
            bound = HEAD_BYTES
        size = path.stat().st_size
        files[path.name] = {"bytes": size, "bound": bound, "within": size <= bound}
    heads = [p for p in logs.glob("engine-*.log") if ".tail" not in p.name]
    first = heads[0].read_text(errors="replace").splitlines()[0] if heads else ""
    text = "".join(p.read_text(errors="replace") for p in logs.iterdir())
    return {
        "files": files,
        "first_line": first,
        "first_line_kept": "session start: rna-engine" in first,
        "handler_failed": text.count("connection handler failed"),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "rejected_lines": text.count("request rejected"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="rna-fuzz-"))
    os.environ["RNA_ENGINE_PYTHONPATH"] = str(ROOT)  # the engine imports this checkout
    client = start_engine(sys.executable, timeout_s=60.0, rna_home=home, device="cpu")
    info = client.discovery()
    pid, port, token = info["pid"], info["port"], info["token"]
    try:
        client.hello()
        before = proc_status(pid)
        probes = send_probes(port, args.requests, args.seed, token)
        time.sleep(1.0)  # connection threads wind down
        after = proc_status(pid)
        alive = client.hello()["pid"] == pid
        latency = hello_latency(
            EngineClient(home / "engine.json", resend_attempts=1), port, args.idle, 20
        )
    finally:
        client.shutdown()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "commit": commit(),
        "command": " ".join(["python", "benchmarks/bench_service_fuzz.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "requests": args.requests,
        "seed": args.seed,
        **probes,
        "alive_after": alive,
        "rss_kib": {"before": before["VmRSS"], "after": after["VmRSS"]},
        "rss_growth_mib": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
        "threads": {"before": before["Threads"], "after": after["Threads"]},
        "hello_with_idle": latency,
        "logs": log_report(home / "logs"),
        "rna_home": str(home),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="malformed requests")
    parser.add_argument("--seed", type=int, default=35)
    parser.add_argument("--idle", type=int, default=64, help="idle connections for hello")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    answered = sum(report["outcomes"].get(k, 0) for k in ("reply", "closed"))
    ok = answered == args.requests and report["alive_after"]
    ok = ok and report["logs"]["handler_failed"] == 0 and report["hello_with_idle"]["failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
