"""The status table at the top of BENCHMARKS.md, generated from `benchmarks/results/*.json`.

    python benchmarks/status.py            # rewrite the block in BENCHMARKS.md
    python benchmarks/status.py --check    # exit 1 if the block is not what the records give

Reads every record that `results.write_result` wrote (one per shot or clip and benchmark kind)
and writes one table per kind between `<!-- status:begin -->` and `<!-- status:end -->`: a
row per shot or clip with its figures (build time, peak memory, worst-frame quality), device,
commit and date; below the tables each row's command, settings and note. A record that lacks a
field, or whose file name is not `<kind>-<name>.json`, stops the generator with a message that
names the file (exit 2). Standard library only. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "BENCHMARKS.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BEGIN = "<!-- status:begin -->"
END = "<!-- status:end -->"
COMMAND = "python benchmarks/status.py"
REQUIRED = ("kind", "name", "device", "commit", "date", "command", "settings", "figures")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")

KINDS: dict[str, tuple[str, str]] = {
    # kind: (title above its table, header of the name column)
    "clip": ("Real clips (`bench_clips.py`, 854×480, worst / median frame)", "clip"),
    "hard": ("Hard synthetic shots (`bench_hard.py`, exact truth, worst / median frame)", "shot"),
    "build": ("Whole build, one GPU (`run.py`, over the whole shot)", "case"),
    "smoke": ("The product's entry points (`smoke_gpu.py`, each in a fresh process)", "shot"),
}
"""Known kinds in table order; any other kind follows, titled by its name."""

ALWAYS = {"build_s", "peak_allocated_mib"}
"""Shown even where no record of the kind measured them: '–' says so."""

GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    # (header, ((figure key, sub-label), ...)); one column, values joined by ' / '
    ("build s", (("build_s", ""),)),
    (
        "peak GPU MiB",
        (
            ("peak_allocated_mib", "alloc"),
            ("peak_reserved_mib", "reserved"),
            ("peak_device_mib", "device"),
        ),
    ),
    ("fit steps/s", (("fit_steps_per_s", ""),)),
    ("in-view frames", (("in_view_frames", ""),)),
    (
        "visible coverage %",
        (("visible_coverage_worst_pct", "worst"), ("visible_coverage_median_pct", "median")),
    ),
    ("frames < 95 %", (("frames_under_95", ""),)),
    ("occluded hidden % min", (("occluded_hidden_min_pct", ""),)),
    ("occluder shown % max", (("occluder_shown_max_pct", ""),)),
    ("ROI PSNR dB mean", (("roi_psnr_mean_db", ""),)),
    (
        "atlas PSNR dB",
        (
            ("atlas_psnr_worst_db", "worst"),
            ("atlas_psnr_median_db", "median"),
            ("atlas_psnr_mean_db", "mean"),
        ),
    ),
    (
        "edit PSNR dB",
        (
            ("edit_psnr_worst_db", "worst"),
            ("edit_psnr_median_db", "median"),
            ("edit_psnr_pooled_db", "pooled"),
        ),
    ),
    ("UV p90 px", (("uv_p90_worst_px", "worst"), ("uv_p90_median_px", "median"))),
    (
        "leak %",
        (("leak_max_pct", "max"), ("leak_median_pct", "median"), ("leak_pooled_pct", "pooled")),
    ),
    ("mask IoU", (("mask_iou", ""),)),
    ("steps", (("steps_passed", "passed"), ("steps_run", "run"))),
    (
        "step s",
        (
            ("cli_s", "cli"),
            ("auto_s", "auto"),
            ("service_s", "service"),
            ("openjd_s", "openjd"),
            ("demo_s", "demo"),
        ),
    ),
    (
        "demo edit PSNR dB",
        (("demo_edit_psnr_mean_db", "mean"), ("demo_edit_psnr_worst_db", "worst")),
    ),
    ("demo leak %", (("demo_leak_pct", ""),)),
)


class RecordError(ValueError):
    """A record that the table cannot be made from; the message names its file."""


def _check_record(path: Path, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a JSON object")
    for key in REQUIRED:
        if key not in record:
            raise RecordError(f"{path}: missing {key!r}")
        if key != "figures" and not isinstance(record[key], str):
            raise RecordError(f"{path}: {key!r} is not a string")
        if key in ("kind", "name", "device", "commit", "command") and not record[key]:
            raise RecordError(f"{path}: {key!r} is empty")
    if not DATE.match(record["date"]):
        raise RecordError(f"{path}: date {record['date']!r} is not YYYY-MM-DD")
    if path.name != f"{record['kind']}-{record['name']}.json":
        raise RecordError(f"{path}: holds kind {record['kind']!r}, name {record['name']!r}")
    figures = record["figures"]
    if not isinstance(figures, dict):
        raise RecordError(f"{path}: 'figures' is not an object")
    for key, value in figures.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RecordError(f"{path}: figure {key!r} is {value!r}, not a number or null")
    note = record.get("note")
    if note is not None and (not isinstance(note, str) or "\n" in note):
        raise RecordError(f"{path}: 'note' is not one line of text")
    return record


def load_records(directory: Path) -> list[dict[str, Any]]:
    """Every `*.json` record in `directory`, checked; raises RecordError naming a bad file."""
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RecordError(f"{path}: {err}") from err
        records.append(_check_record(path, record))
    return records


def _number(value: float | int | None) -> str:
    if value is None:
        return "–"
    return str(value)  # as recorded: the record's precision is the measurement's


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _columns(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(header, figure keys) of the columns that these records fill."""
    measured = {k for r in records for k, v in r["figures"].items() if v is not None}
    known = {key for _, keys in GROUPS for key, _ in keys}
    columns = []
    for header, keys in GROUPS:
        shown = [(k, sub) for k, sub in keys if k in measured or (k in ALWAYS)]
        if not shown:
            continue
        subs = [sub for _, sub in shown if sub]
        label = f"{header} {' / '.join(subs)}" if subs else header
        columns.append((label, [k for k, _ in shown]))
    for key in sorted(measured - known):
        columns.append((key, [key]))
    return columns


def _table(kind: str, records: Sequence[dict[str, Any]]) -> list[str]:
    title, name_header = KINDS.get(kind, (kind, "name"))
    columns = _columns(records)
    head = [name_header, *(label for label, _ in columns), "device", "commit", "date"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in records:
        cells = [r["name"]]
        for _, keys in columns:
            cells.append(" / ".join(_number(r["figures"].get(k)) for k in keys))
        cells += [r["device"], f"`{r['commit']}`", r["date"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render(records: Sequence[dict[str, Any]]) -> str:
    """The block's text between the markers (its own lines, no markers)."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    kinds = sorted({r["kind"] for r in records}, key=lambda k: (order.get(k, len(order)), k))
    by_kind = {
        k: sorted((r for r in records if r["kind"] == k), key=lambda r: r["name"]) for k in kinds
    }
    lines = [
        f"<!-- Generated by `{COMMAND}` from benchmarks/results/*.json; edit the records, "
        "not this block. -->",
        "",
        "Latest figures per shot and clip; – where that run did not measure it. Each row's "
        "command, settings and note follow the tables.",
    ]
    for kind in kinds:
        lines += ["", *_table(kind, by_kind[kind])]
    lines += ["", "Commands, settings and notes:", ""]
    for kind in kinds:
        rows = by_kind[kind]
        common = {r["settings"] for r in rows}
        shared = next(iter(common)) if len(rows) > 1 and len(common) == 1 else None
        if shared:
            lines.append(f"- {kind}, every row: {shared}.")
        for r in rows:
            parts = [f"`{r['command']}`"]
            if shared is None and r["settings"]:
                parts.append(r["settings"])
            if r.get("note"):
                parts.append(r["note"].rstrip("."))
            lines.append(
                ("  - " if shared else "- ") + f"{kind} {r['name']}: " + " · ".join(parts) + "."
            )
    return "\n".join(lines)


def split(text: str) -> tuple[str, str, str]:
    """(before, block, after) of a document; raises ValueError without one marker pair."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"no single {BEGIN} … {END} pair")
    head, rest = text.split(BEGIN)
    block, tail = rest.split(END)
    return head, block, tail


def with_block(text: str, block: str) -> str:
    """`text` with the block between the markers replaced by `block`."""
    head, _, tail = split(text)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the block is stale")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="folder of the records")
    parser.add_argument("--doc", default=str(DOC), help="the document holding the block")
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    try:
        block = render(load_records(Path(args.results)))
    except RecordError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        text = doc.read_text(encoding="utf-8")
        updated = with_block(text, block)
    except (OSError, ValueError) as err:
        print(f"{doc}: {err}", file=sys.stderr)
        return 2
    if updated == text:
        return 0
    if args.check:
        print(
            f"{doc.name}: the status table is not what the records give; run `{COMMAND}`",
            file=sys.stderr,
        )
        return 1
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(updated, encoding="utf-8")
    os.replace(tmp, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
