"""GPU smoke test of the product's own entry points, each in a fresh process.

    python benchmarks/smoke_gpu.py --out /tmp/smoke [--device cuda:0] [--preset draft]

1. `rna-engine build --device cuda:0` and `--device auto` (the CLI a farm or a TD runs);
2. `rna-engine serve` started by the plugin's launcher (`rna_nuke.launcher.ensure_engine`),
   a build submitted with `rna_nuke`'s client and followed to `done` through its events;
3. the Open Job Description bundle's BuildAtlas step, run by `openjd run`;
4. `rna-engine demo` (what `make demo` runs once its virtual environment exists).

This driver imports only the standard library and `rna_nuke` (as Nuke would): every engine
runs in its own process, so nothing here touches CUDA first. It exits 1 when any step fails
and writes `smoke.json` (commit, device, times, checks) into `--out`, and its headline figures
into the status record `smoke-<synth>.json` (`results.py`) in `--results DIR`, else
`$RNA_BENCH_RESULTS`, else `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.meta import commit  # noqa: E402
from benchmarks.results import device_name, results_dir, settings_note, write_result  # noqa: E402
from rna_engine.commands.build import parse_overrides  # noqa: E402  (imports no torch)


def _engine(*args: str) -> list[str]:
    return [sys.executable, "-m", "rna_engine", *args]


def _run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return rc.returncode, time.perf_counter() - started


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _check_cache(root: Path, device: str) -> dict[str, Any]:
    """What a user relies on in a finished version folder."""
    status = _read(root / "status.json")
    build = _read(root / "build.json")
    report = _read(root / "qc" / "report.json")
    passes = sorted((root / "passes").glob("rna.*.exr"))
    return {
        "cache": str(root),
        "state": status.get("state"),
        "error": status.get("error"),
        "device": build.get("device"),
        "device_ok": str(build.get("device", "")).startswith(device),
        "gpu_name": report.get("device"),
        "passes": len(passes),
        "build_s": sum((status.get("timings") or {}).values()),
        "timings_s": status.get("timings"),
        "gpu_memory_mib": status.get("gpu_memory_mib"),
        "psnr_roi_mean": report.get("psnr_roi_mean"),
        "worst": report.get("worst"),
        "warnings": status.get("warnings"),
    }


def _version_dir(cache_root: Path, name: str) -> Path:
    found = sorted((cache_root / name).glob("v[0-9][0-9][0-9]"))
    return found[-1] if found else cache_root / name / "v001"


def step_cli(
    work: Path, spec: dict[str, Any], device: str, name: str, sets: list[str], expect: str
) -> dict[str, Any]:
    argv = _engine(
        "build",
        "--plate",
        spec["plate"],
        "--roi",
        spec["roi"],
        "--ref",
        str(spec["reference_frame"]),
        "--device",
        device,
        "--preset",
        spec["settings"]["preset"],
        "--out",
        str(work / "cache"),
        "--name",
        name,
        *[f"--set={item}" for item in sets],
    )
    rc, wall = _run(argv, work / f"{name}.log")
    cache = _check_cache(_version_dir(work / "cache", name), expect)
    return {"rc": rc, "wall_s": round(wall, 1), **cache}


def step_service(work: Path, spec: dict[str, Any], device: str) -> dict[str, Any]:
    from rna_nuke.launcher import ensure_engine  # standard library only, as inside Nuke

    os.environ["RNA_HOME"] = str(work / "rna_home")
    os.environ["RNA_ENGINE_PYTHON"] = sys.executable
    # the engine's process sees this repository and whatever this one sees (carried wheels)
    os.environ["RNA_ENGINE_PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), *sys.path[1:]]))
    started = time.perf_counter()
    client = ensure_engine(timeout_s=120.0)
    hello_s = time.perf_counter() - started
    events: list[dict[str, Any]] = []
    job = client.submit({**spec, "name": "service", "device": device})
    final = client.subscribe(job, events.append, lambda: False, heartbeat_timeout_s=60.0)
    wall = time.perf_counter() - started
    try:
        client.shutdown()
    except Exception as err:  # the engine may close the socket as it stops
        final.setdefault("shutdown", str(err))
    stages = sorted({e.get("stage") for e in events if e.get("stage")})
    cache = Path(final.get("cache_dir") or _version_dir(work / "cache", "service"))
    return {
        "state": final.get("state"),
        "error": final.get("error"),
        "events": len(events),
        "stages_seen": stages,
        "progress_max": max((e.get("progress") or 0.0 for e in events), default=0.0),
        "engine_start_s": round(hello_s, 1),
        "wall_s": round(wall, 1),
        **{f"cache_{k}": v for k, v in _check_cache(cache, device).items()},
    }


def step_openjd(work: Path, spec: dict[str, Any], device: str, frames: str) -> dict[str, Any]:
    spec_path = work / "farm_spec.json"
    spec_path.write_text(json.dumps({**spec, "name": "farm", "device": device}, indent=2))
    bundle = work / "bundle"
    # the Render step's painted atlas: any atlas is a valid (unpainted) edit
    atlases = sorted((work / "cache").glob("*/v*/atlas/atlas.exr"))
    if atlases:
        shutil.copyfile(atlases[0], work / "paint.exr")
    engine = f"{sys.executable} -m rna_engine"
    rc, _ = _run(
        _engine(
            "farm",
            "openjd",
            "--spec",
            str(spec_path),
            "--apply-atlas",
            str(work / "paint.exr"),
            "--apply-out",
            str(work / "render" / "comp.####.exr"),
            "--out",
            str(bundle),
            "--engine",
            engine,
            "--frames",
            frames,
        ),
        work / "farm_bundle.log",
    )
    if rc != 0:
        return {"rc": rc, "step": "farm openjd"}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [
        sys.executable,
        "-m",
        "openjd",
        "run",
        str(bundle / "template.yaml"),
        "-p",
        f"file://{bundle / 'openjd_params.json'}",
        "--step",
        "BuildAtlas",
    ]
    rc, wall = _run(argv, work / "openjd.log", env)
    text = (work / "openjd.log").read_text(errors="replace")
    progress = [line for line in text.splitlines() if "openjd_progress:" in line]
    return {
        "rc": rc,
        "wall_s": round(wall, 1),
        "openjd_progress_lines": len(progress),
        "openjd_fail": [line for line in text.splitlines() if "openjd_fail:" in line][:1],
        **_check_cache(_version_dir(work / "cache", "farm"), device),
    }


def step_demo(work: Path) -> dict[str, Any]:
    rc, wall = _run(
        _engine("demo", "--out", str(work / "demo"), "--device", "auto"), work / "demo.log"
    )
    score = _read(work / "demo" / "score.json")
    return {
        "rc": rc,
        "wall_s": round(wall, 1),
        "score": {
            k: score.get(k) for k in ("edit_psnr_mean", "edit_psnr_worst", "leak_pct") if k in score
        },
        "tail": (work / "demo.log").read_text(errors="replace").splitlines()[-12:],
    }


def record_smoke(
    results: dict[str, Any], ran: list[str], args: argparse.Namespace, folder: Path
) -> Path:
    """Replace the smoke test's status record with this run's headline figures."""
    cli = results.get("cli", {})
    memory = cli.get("gpu_memory_mib") or {}
    score = results.get("demo", {}).get("score", {})
    figures: dict[str, float | int | None] = {
        "build_s": cli.get("build_s") or None,  # status.json's stage times; none on a failure
        "peak_allocated_mib": max((d.get("allocated", 0.0) for d in memory.values()), default=None),
        "steps_passed": sum(1 for name in ran if results[name].get("ok")),
        "steps_run": len(ran),
    }
    for name in ("cli", "auto", "service", "openjd", "demo"):
        figures[f"{name}_s"] = results.get(name, {}).get("wall_s")
    figures["demo_edit_psnr_mean_db"] = score.get("edit_psnr_mean")
    figures["demo_edit_psnr_worst_db"] = score.get("edit_psnr_worst")
    figures["demo_leak_pct"] = score.get("leak_pct")
    failed = [name for name in ran if not results[name].get("ok")]
    return write_result(
        "smoke",
        args.synth,
        figures,
        " ".join(["python benchmarks/smoke_gpu.py", *sys.argv[1:]]),
        device_name(cli.get("gpu_name") or args.device),
        results["commit"],
        f"{settings_note(args.preset, args.set)}; shot synth --preset {args.synth}",
        ("FAIL: " + ", ".join(failed)) if failed else None,
        directory=folder,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="work folder (outside the repository)")
    parser.add_argument("--synth", default="bench", help="synthetic shot preset")
    parser.add_argument("--preset", default="draft", choices=("draft", "standard", "final"))
    parser.add_argument("--device", default="cuda:0", help="the explicit device of steps 1-3")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--skip", action="append", default=[], help="cli, auto, service, openjd, demo"
    )
    parser.add_argument("--results", default="", help="folder of the status records")
    args = parser.parse_args()
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rc, _ = _run(
        _engine("synth", "--out", str(work / "shot"), "--preset", args.synth), work / "synth.log"
    )
    if rc != 0:
        print((work / "synth.log").read_text())
        return 1
    shot = _read(work / "shot" / "shot.json")
    frames = str(shot["frames"])  # "first-last"
    spec = {
        "plate": str(work / "shot" / "plate" / "plate.####.exr"),
        "roi": str(work / "shot" / "roi.exr"),
        "reference_frame": int(shot["reference_frame"]),
        "out": str(work / "cache"),
        "settings": {"preset": args.preset, **parse_overrides(args.set)},
    }
    results: dict[str, Any] = {"commit": commit(), "synth": args.synth, "preset": args.preset}
    steps = {
        "cli": lambda: step_cli(work, spec, args.device, "cli_device", args.set, args.device),
        # `auto` must pick the GPU wherever one is
        "auto": lambda: step_cli(work, spec, "auto", "cli_auto", args.set, "cuda"),
        "service": lambda: step_service(work, spec, args.device),
        "openjd": lambda: step_openjd(work, spec, args.device, frames),
        "demo": lambda: step_demo(work),
    }
    ok = True
    for name, step in steps.items():
        if name in args.skip:
            continue
        try:
            results[name] = step()
        except Exception as err:  # report every step, whatever one of them does
            results[name] = {"exception": f"{type(err).__name__}: {err}"}
        r = results[name]
        good = (r.get("rc", 0) == 0) and r.get("state", r.get("cache_state", "done")) == "done"
        if name in ("cli", "auto", "openjd", "service"):
            good = good and bool(r.get("device_ok", r.get("cache_device_ok")))
        r["ok"] = good
        ok = ok and good
        print(f"{name:8s} {'PASS' if good else 'FAIL'} {json.dumps(r, default=str)}", flush=True)
    (work / "smoke.json").write_text(json.dumps(results, indent=2, default=str))
    ran = [name for name in steps if name in results]
    record_smoke(results, ran, args, results_dir(args.results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
