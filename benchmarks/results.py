"""The latest headline figures of each benchmark, one small JSON record per (kind, name).

    from results import write_result
    write_result("clip", "bear", {"build_s": 91.2, ...}, command, device, commit, settings)

A record is `<dir>/<kind>-<name>.json`:

    {"kind": "clip", "name": "bear", "device": "NVIDIA H100 80GB HBM3", "commit": "27cfbfb",
     "date": "2026-12-06", "command": "python benchmarks/bench_clips.py ...",
     "settings": "standard", "figures": {"build_s": null, ...}, "note": "..."}

`figures` maps a name carrying its unit (`build_s`, `peak_allocated_mib`,
`visible_coverage_worst_pct`, `edit_psnr_worst_db`, `uv_p90_worst_px`, ...) to a number, or to
null where the run did not measure it. Each write replaces the record atomically (temp file +
`os.replace`). The folder is `--results DIR` of the calling script, else `$RNA_BENCH_RESULTS`,
else `benchmarks/results/`: on a lent GPU machine the repository copy is not kept, so point it
under the folder that comes back and copy the records into `benchmarks/results/`.
`python benchmarks/status.py` turns the records into the status table of BENCHMARKS.md.
Standard library only (`smoke_gpu.py` imports it without the engine).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENV_VAR = "RNA_BENCH_RESULTS"
FIELDS = ("kind", "name", "device", "commit", "date", "command", "settings", "figures", "note")
"""A record's keys, in the order they are written; all but `note` are required."""
KIND = re.compile(r"[a-z]+\Z")
NAME = re.compile(r"[a-z0-9][a-z0-9._]*(-[a-z0-9._]+)*\Z")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
# Decimals kept per unit suffix: more would only be run-to-run noise in the table.
DECIMALS = {"_s": 1, "_mib": 1, "_pct": 2, "_db": 2, "_px": 3}


def results_dir(explicit: str | Path | None = None) -> Path:
    """`explicit` (a script's `--results DIR`), else `$RNA_BENCH_RESULTS`, else the default."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return RESULTS_DIR


def target_dir(explicit: str | Path | None, quick: bool = False) -> Path | None:
    """Where a script run writes its records: `results_dir(explicit)`, or None for a `--quick`
    run (a check of the script, not a measurement) unless a folder was named."""
    if quick and not explicit and not os.environ.get(ENV_VAR):
        return None
    return results_dir(explicit)


def record_path(directory: Path, kind: str, name: str) -> Path:
    """Where the record of (`kind`, `name`) lives in `directory`."""
    return directory / f"{kind}-{name}.json"


def device_name(device: str | None) -> str:
    """The device as the table names it: the GPU's own name, or 'CPU (N cores)'."""
    if not device or device.split(":")[0] == "cpu":
        return f"CPU ({os.cpu_count() or 1} cores)"
    return device


def settings_note(preset: str, sets: Sequence[str] = ()) -> str:
    """'standard', or 'draft + fit.iterations=1500 ...' with the `--set` overrides."""
    return " ".join([preset, *(["+", *sets] if sets else [])])


def _rounded(key: str, value: Any) -> float | int | None:
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bool) or not isinstance(value, float):
        raise ValueError(f"figure {key!r}: {value!r} is not a number or None")
    if value != value or value in (float("inf"), float("-inf")):
        return None  # NaN/inf cannot go to JSON; the run measured nothing usable
    digits = next((d for suffix, d in DECIMALS.items() if key.endswith(suffix)), 3)
    return round(value, digits)


def make_record(
    kind: str,
    name: str,
    figures: Mapping[str, float | int | None],
    command: str,
    device: str,
    commit: str,
    settings: str,
    note: str | None = None,
    *,
    date: str | None = None,
) -> dict[str, Any]:
    """The record as written (figures rounded by unit); raises ValueError on a bad field."""
    if not KIND.match(kind):
        raise ValueError(f"kind {kind!r}: lower-case letters only")
    if not NAME.match(name):
        raise ValueError(f"name {name!r}: lower-case letters, digits, '.', '_' and '-' only")
    date = date or datetime.date.today().isoformat()
    if not DATE.match(date):
        raise ValueError(f"date {date!r}: not YYYY-MM-DD")
    for field, value in (("command", command), ("device", device), ("commit", commit)):
        if not value:
            raise ValueError(f"{field}: empty")
    return {
        "kind": kind,
        "name": name,
        "device": device,
        "commit": commit,
        "date": date,
        "command": command,
        "settings": settings,
        "figures": {key: _rounded(key, value) for key, value in figures.items()},
        "note": note,
    }


def write_result(
    kind: str,
    name: str,
    figures: Mapping[str, float | int | None],
    command: str,
    device: str,
    commit: str,
    settings: str,
    note: str | None = None,
    *,
    date: str | None = None,
    directory: str | Path | None = None,
) -> Path:
    """Replace the record of (`kind`, `name`) atomically; its path.

    Args:
        kind: the benchmark, e.g. 'clip', 'hard', 'smoke', 'build'.
        name: the shot or clip, e.g. 'bear', 'pan'.
        figures: headline numbers, unit in the name; None where not measured.
        command: the exact command line that measured them.
        device: e.g. 'NVIDIA H100 80GB HBM3' or 'CPU (2 cores)' (see `device_name`).
        commit: short hash of the code measured.
        settings: preset and overrides (see `settings_note`).
        note: one line, e.g. which frame is worst.
        date: YYYY-MM-DD; default today.
        directory: default `results_dir()`.
    """
    record = make_record(kind, name, figures, command, device, commit, settings, note, date=date)
    folder = results_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = record_path(folder, kind, name)
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_build_result(
    kind: str,
    name: str,
    figures: Mapping[str, float | int | None],
    meta: Mapping[str, Any],
    report: Mapping[str, Any],
    notes: Sequence[str],
    directory: str | Path | None,
) -> Path:
    """`write_result` for one build of a bench script: `meta` is its summary's (`command`,
    `device`, `commit`, `preset`, `set`), `report` the build's `qc/report.json` (its device
    name wins), `notes` joined into the record's note."""
    note = "; ".join(notes)
    return write_result(
        kind,
        name,
        figures,
        meta["command"],
        device_name(report.get("device") or meta["device"]),
        meta["commit"],
        settings_note(meta["preset"], meta["set"]),
        note[:1].upper() + note[1:] or None,
        directory=directory,
    )
