"""Corrupt JPEG and PNG frames: which damaged files are refused, warned about, or read silently.

    python benchmarks/bench_corrupt_frames.py --variants 2000 --seed 0
    python benchmarks/bench_corrupt_frames.py --variants 2000 --before d28da87 --json out.json

Writes one small synthetic frame per kind (baseline JPEG, progressive JPEG, PNG), then seeded
damaged variants of it: a single flipped bit anywhere in the file (90 %) or the file cut at a
random byte (10 %). Each variant is read with `io.read_image` and sorted into: refused
(`InputError`), warned (`ImageData.damage`), silent with other pixels than the clean frame
(undetectable: JPEG has no checksum) and silent with the same pixels (harmless: a flipped
bit in metadata), with the share of pixels more than 2 code values off. `--before REV` also
reads every variant with `rna_engine/media/io.py` of that git revision (d28da87: before the
damage checks) and counts what it refused and what it read silently with other pixels. Then
times `read_image` on a 1920×1080 JPEG of each kind, and the pass inside it that reads a
sequential JPEG to its end marker. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine.errors import InputError  # noqa: E402
from rna_engine.media import io  # noqa: E402

KINDS = ("baseline JPEG", "progressive JPEG", "PNG")
OUTCOMES = ("refused", "warned", "silent, other pixels", "silent, same pixels")


def frame(width: int, height: int) -> np.ndarray:
    """A plate-like frame: gradients, texture and grain, float 0..1."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [xx / width, yy / height, 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 5.0)], axis=-1
    )
    rgb += np.random.default_rng(0).normal(0.0, 0.04, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0)


def write(path: Path, kind: str, rgb: np.ndarray) -> Path:
    """`rgb` as a file of `kind` (8-bit; JPEG at quality 90)."""
    import OpenImageIO as oiio

    if kind == "PNG":
        return io.write_png(path, rgb)
    height, width = rgb.shape[:2]
    spec = oiio.ImageSpec(width, height, 3, oiio.UINT8)
    spec.attribute("Compression", "jpeg:90")
    if kind == "progressive JPEG":
        spec.attribute("jpeg:progressive", 1)
    out = oiio.ImageOutput.create(str(path))
    if out is None or not out.open(str(path), spec):
        raise OSError(f"{path}: cannot write ({oiio.geterror()})")
    out.write_image(rgb)
    out.close()
    return path


def variants(data: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """Seeded damaged copies of `data`: ("flip", one bit flipped) or ("cut", truncated)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.1:
            out.append(("cut", data[: int(rng.integers(1, len(data)))]))
            continue
        blob = bytearray(data)
        blob[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        out.append(("flip", bytes(blob)))
    return out


def outcome(path: Path, clean: np.ndarray) -> tuple[str, float]:
    """What reading `path` does now (one of `OUTCOMES`), and the share of its pixels that are
    more than 2 code values off the clean frame's (0 when refused)."""
    try:
        image = io.read_image(path, warn=False)
    except InputError:
        return "refused", 0.0
    off = share_off(image.pixels, clean)
    if image.damage:
        return "warned", off
    return ("silent, same pixels" if same_pixels(image.pixels, clean) else OUTCOMES[2]), off


def share_off(pixels: np.ndarray, clean: np.ndarray) -> float:
    if pixels.shape != clean.shape:
        return 1.0
    return float((np.abs(pixels - clean).max(axis=-1) > 2.5 / 255).mean())


def same_pixels(pixels: np.ndarray, clean: np.ndarray) -> bool:
    return pixels.shape == clean.shape and bool(np.array_equal(pixels, clean))


def module_at(rev: str) -> ModuleType:
    """`rna_engine/media/io.py` as it was at git revision `rev`, importable beside ours."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:rna_engine/media/io.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "io_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("rna_engine.media._io_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def old_outcome(before: ModuleType, path: Path, clean: np.ndarray) -> str:
    """What the old reader did with `path`: refused, or read silently with other or the same
    pixels (it had no warnings)."""
    try:
        pixels = before.read_image(path).pixels
    except InputError:
        return "refused"
    return "silent, same pixels" if same_pixels(pixels, clean) else OUTCOMES[2]


def measure(
    kind: str, folder: Path, count: int, seed: int, size: tuple[int, int], before: Any
) -> dict[str, Any]:
    suffix = "png" if kind == "PNG" else "jpg"
    good = write(folder / f"clean.{suffix}", kind, frame(*size))
    clean = io.read_image(good).pixels
    assert not io.read_image(good).damage, f"{kind}: the clean frame is reported damaged"
    counts: Counter[str] = Counter()
    by_damage: Counter[tuple[str, str]] = Counter()
    off: dict[str, list[float]] = {name: [] for name in OUTCOMES}
    old: Counter[str] = Counter()
    path = folder / f"variant.{suffix}"
    for how, blob in variants(good.read_bytes(), count, seed):
        path.write_bytes(blob)
        result, share = outcome(path, clean)
        counts[result] += 1
        by_damage[how, result] += 1
        off[result].append(share)
        if before is not None:
            old[old_outcome(before, path, clean)] += 1
    row: dict[str, Any] = {"kind": kind, "bytes": good.stat().st_size, "variants": count}
    row.update({name: counts[name] for name in OUTCOMES})
    for name, q in (("warned", 50), (OUTCOMES[2], 50), (OUTCOMES[2], 95)):
        shares = off[name]
        value = round(100 * float(np.percentile(shares, q)), 2) if shares else "-"
        row[f"{name}: {'median' if q == 50 else f'p{q}'} % pixels off"] = value
    row["by_damage"] = {f"{how}: {result}": n for (how, result), n in sorted(by_damage.items())}
    if before is not None:
        row["before: refused"] = old["refused"]
        row["before: silent, other pixels"] = old[OUTCOMES[2]]
    return row


def ms_per_call(fn: Any, repeats: int) -> float:
    fn()  # warm: file cache, plugin load
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000.0


def cost(folder: Path, repeats: int, before: Any) -> list[dict[str, Any]]:
    """ms per `read_image` of a 1920×1080 JPEG, and of the end-marker pass inside it."""
    rgb = frame(1920, 1080)
    rows = []
    for kind in KINDS[:2]:
        path = write(folder / f"hd_{kind.split()[0]}.jpg", kind, rgb)
        row = {
            "kind": kind,
            "bytes": path.stat().st_size,
            "read_image ms": round(ms_per_call(lambda p=path: io.read_image(p), repeats), 2),
            "end-marker pass ms": round(
                ms_per_call(lambda p=path: io._jpeg_tail(p), repeats)
                if not io._jpeg_progressive(path)
                else 0.0,
                2,
            ),
        }
        if before is not None:
            row["before: read_image ms"] = round(
                ms_per_call(lambda p=path: before.read_image(p), repeats), 2
            )
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k != "by_damage"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=2000, help="damaged copies per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="320x180", help="frame size of the variants, WxH")
    parser.add_argument("--repeats", type=int, default=20, help="reads per 1080p timing")
    parser.add_argument("--before", default="", help="git revision to compare with")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    before = module_at(args.before) if args.before else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [
            measure(kind, folder, args.variants, args.seed, (width, height), before)
            for kind in KINDS
        ]
        timings = cost(folder, args.repeats, before)
    print(table(rows))
    for row in rows:
        print(f"{row['kind']}: {row['by_damage']}")
    print()
    print(table(timings))
    if args.json:
        args.json.write_text(json.dumps({"variants": rows, "cost": timings}, indent=2) + "\n")


if __name__ == "__main__":
    main()
