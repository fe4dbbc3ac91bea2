"""The refinement's evidence of a finished build against the true occluder, per frame.

    python benchmarks/bench_evidence.py --cache <out>/cache/blackswan/v001 --clips <clips>
    python benchmarks/bench_evidence.py --cache <out>/cache/fast-small/v001 --synth fast-small

Reloads the build's fit checkpoint (`work/fit.ckpt`) and correspondences (`work/`), recomputes
the refinement's sets (docs/method.md §5.2) on the CPU and scores them per frame at working
resolution against the clip's object masks (`masks/NNNNN.png`), or with `--synth PRESET` the
synthetic shot's exact occlusion (alpha ≥ 0.5 inside the tracked ROI), as shares of the
candidate set Ω:

- `object`: Ω on the object (dilated 1 px);
- `landing obj / vis`: Ω evidenced as an occluder by the reference landing, on the object and
  on visible surface (false evidence);
- `appear obj / vis`: the same for the appearance rule (error > θ_t, untied);
- `theta`: θ_t; `err vis`: median error of the visible surface, tied and untied;
- `vis tied`: share of the visible surface that a match ties to the surface;
- `M vis / M obj`: share of visible Ω with M > 0.5 and of the object (eroded 1 px) with
  M < 0.5, from the checkpoint's (refined) M;
- per rule, as shares of the object in Ω (eroded 1 px): `O obj` in the final O, `land` a
  reference match landing outside the ROI, `ref tie` a reference match into the ROI (a false
  tie), `mot tie` a tie by adjacent motion alone, `>θ` an error above θ_t (tied or not),
  `carry` added by `evidence.carry_along_flow`; `O vis`: the final O on visible Ω.

`--worst N` prints the N frames with the least of the object in O first.

Tells which rule loses visible surface on which frames, without a device. Not collected by
pytest. Read-only: the cache is not modified.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine.model.kernels import make_hash_grid  # noqa: E402
from rna_engine.pipeline import ingest  # noqa: E402
from rna_engine.runtime.context import RunContext  # noqa: E402
from rna_engine.settings import spec_from_dict  # noqa: E402
from rna_engine.stages import evidence  # noqa: E402
from rna_engine.stages.correspondences import compute_correspondences  # noqa: E402
from rna_engine.stages.fit import Fitter, ShotTensors  # noqa: E402
from rna_engine.stages.inputs import resolve_inputs  # noqa: E402

RECORD_KEYS = ("build_hash", "cache_format_version", "engine_version", "torch", "root", "device")


def load_fitter(cache: Path, refine: dict[str, str]) -> tuple[Fitter, list[int]]:
    """The build's Fitter with its checkpoint loaded (CPU) and the frame numbers; `refine`:
    refinement settings to override (name → value)."""
    fitter, data, _ = load_build(cache, refine)
    return fitter, list(data.frame_numbers)


def load_build(
    cache: Path, refine: dict[str, str], device: str = "cpu", checkpoint: Path | None = None
) -> tuple[Fitter, Any, Any]:
    """The build's Fitter with its checkpoint (or `checkpoint`) loaded on `device`, its
    ingested shot and its spec; `refine`: refinement settings to override (name → value)."""
    import dataclasses
    import shutil
    import tempfile

    raw = json.loads((cache / "build.json").read_text())
    for key in RECORD_KEYS:
        raw.pop(key, None)
    spec = spec_from_dict(raw)
    inputs = resolve_inputs(spec)
    work = Path(tempfile.mkdtemp(prefix="rna_evidence_"))
    for item in (cache / "work").iterdir():  # a copy: the Fitter may write its checkpoint
        shutil.copy(item, work / item.name)
    if checkpoint is not None:
        shutil.copy(checkpoint, work / "fit.ckpt")
    ctx = RunContext(device=device, seed=spec.settings.seed, work_dir=work)
    data = ingest(inputs, spec.settings.ingest, ctx)
    roi = torch.from_numpy(data.roi_working).to(device)
    frames = torch.from_numpy(data.working).permute(0, 3, 1, 2).contiguous().to(device)
    corr = compute_correspondences(frames, roi, data.reference_index, spec.settings.flow, ctx)
    shot = ShotTensors(frames, roi, data.reference_index, corr)
    rs = spec.settings.refine
    over = {k: _typed(getattr(rs, k), v) for k, v in refine.items()}
    backend = spec.settings.fit.encoding_backend

    def grid_factory(n_dims: int, grid_settings: Any) -> Any:  # the pipeline's, on `device`
        return make_hash_grid(n_dims, grid_settings, backend, torch.device(device))

    fitter = Fitter(shot, spec.settings.fit, dataclasses.replace(rs, **over), ctx, grid_factory)
    if fitter.loop.load() is None:
        raise SystemExit(f"{cache / 'work'}: no usable fit checkpoint")
    return fitter, data, spec


def _typed(current: Any, value: str) -> Any:
    """`value` as the type of the setting's `current` value (booleans from true/false)."""
    if isinstance(current, bool):
        return value.lower() in ("1", "true", "yes", "on")
    return type(current)(value)


def object_masks(masks: Path, numbers: list[int], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) float coverage of the object at working size (area resampling)."""
    import cv2

    files = sorted(masks.glob("*.png"))
    w, h = size
    out = []
    for number in numbers:
        image = cv2.imread(str(files[number]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"{files[number]}: not a readable mask")
        out.append(
            cv2.resize((image > 127).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        )
    return np.stack(out)


def score(fitter: Fitter, numbers: list[int], cover: np.ndarray) -> list[dict[str, float]]:
    """Per-frame shares of Ω (see the module docstring)."""
    import cv2

    shot, model, geo = fitter.shot, fitter.model, fitter.geometry
    c = fitter.refinement.candidates()
    sets, _ = fitter.refinement.sets(c)  # the build's own sets
    ties = fitter.refinement.ties(c)
    cand, tied, elsewhere, err, theta = (
        c.omega,
        ties.tied,
        ties.elsewhere,
        ties.error,
        ties.threshold,
    )
    rs = fitter.problem.refine
    landing = evidence.reference_landing(
        shot.roi, shot.corr.ref, shot.corr.ref_valid.bool(), rs.reference_margin_px
    )
    before_carry = evidence.refine_sets(
        cand, err, tied, rs.colour_threshold, theta, elsewhere, open_px=rs.appearance_open_px
    ).occluder
    h, w = shot.height, shot.width
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    kernel = np.ones((3, 3), np.uint8)
    rows = []
    for t, number in enumerate(numbers):
        obj = torch.from_numpy(cv2.dilate((cover[t] > 0.01).astype(np.uint8), kernel) > 0)
        core = torch.from_numpy(cv2.erode((cover[t] > 0.99).astype(np.uint8), kernel) > 0)
        c = cand[t]
        area = max(int(c.sum()), 1)
        vis = c & ~obj
        land = elsewhere[t] & c
        appear = sets.occluder[t] & ~elsewhere[t] & c  # the appearance rule (and the carry)
        with torch.no_grad():
            xyt = geo.xyt_norm(xs.reshape(-1), ys.reshape(-1), torch.full((h * w,), float(t)))
            m = model.mask(xyt).reshape(h, w)

        def share(mask: torch.Tensor, of: int = area) -> float:
            return round(float(mask.sum()) / max(of, 1), 3)

        frame_err = err[t]

        def median(mask: torch.Tensor, e: torch.Tensor = frame_err) -> float:
            return round(float(e[mask].median()), 4) if mask.any() else float("nan")

        rows.append(
            {
                "frame": number,
                "distance": number - numbers[shot.reference_index],
                "object": share(obj & c),
                "landing_obj": share(land & obj),
                "landing_vis": share(land & vis),
                "appear_obj": share(appear & obj),
                "appear_vis": share(appear & vis),
                "theta": round(float(theta[t]), 4),
                "err_vis": median(vis),
                "err_vis_tied": median(vis & tied[t]),
                "err_vis_untied": median(vis & ~tied[t]),
                "vis_tied": share(vis & tied[t], int(vis.sum())),
                "m_vis": share(vis & (m > 0.5), int(vis.sum())),
                "m_obj_hidden": share(core & c & (m < 0.5), int((core & c).sum())),
                **rule_shares(
                    core & c,
                    vis,
                    sets.occluder[t],
                    landing[t],
                    tied[t],
                    err[t] > theta[t],
                    before_carry[t],
                ),
            }
        )
    return rows


def rule_shares(
    obj: torch.Tensor,
    vis: torch.Tensor,
    occluder: torch.Tensor,
    landing: torch.Tensor,
    tied: torch.Tensor,
    over: torch.Tensor,
    before_carry: torch.Tensor,
) -> dict[str, float]:
    """Which rule covers how much of the object in Ω (`obj`), and the final O on visible Ω."""
    n = max(int(obj.sum()), 1)

    def of_obj(mask: torch.Tensor) -> float:
        return round(float((mask & obj).sum()) / n, 3)

    return {
        "obj_px": int(obj.sum()),
        "O_obj": of_obj(occluder),
        "land": of_obj(landing < 0),
        "ref_tie": of_obj(landing > 0),
        "mot_tie": of_obj(tied & (landing == 0)),
        "over_theta": of_obj(over),
        "carry": of_obj(occluder & ~before_carry),
        "O_vis": round(float((occluder & vis).sum()) / max(int(vis.sum()), 1), 4),
    }


def synth_cover(preset: str, seed: int, numbers: list[int], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) float: the synthetic shot's true occluder over the tracked ROI at working size
    (1 where occlusion ≥ 0.5 and the ROI is tracked; area resampling)."""
    import cv2

    from rna_engine.synthetic.shots import make_shot

    shot = make_shot(preset, seed=seed)
    out = []
    for number in numbers:
        f = shot.frame(number - shot.params.first_frame)
        occ = ((f["occlusion"] >= 0.5) & (f["roi_tracked"] > 0.5)).astype(np.float32)
        out.append(cv2.resize(occ, size, interpolation=cv2.INTER_AREA))
    return np.stack(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a build's version folder")
    parser.add_argument("--clips", default=str(ROOT.parent / "shared" / "data" / "clips"))
    parser.add_argument("--clip", default="", help="clip name (default: the build's name)")
    parser.add_argument("--synth", default="", help="score against this synth preset's truth")
    parser.add_argument("--seed", type=int, default=0, help="the synth shot's seed")
    parser.add_argument("--worst", type=int, default=0, help="only the N frames of least O obj")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument(
        "--refine", action="append", default=[], metavar="KEY=VALUE", help="refine.KEY override"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    cache = Path(args.cache)
    fitter, numbers = load_fitter(cache, dict(kv.split("=", 1) for kv in args.refine))
    size = (fitter.shot.width, fitter.shot.height)
    if args.synth:
        cover = synth_cover(args.synth, args.seed, numbers, size)
    else:
        name = args.clip or json.loads((cache / "build.json").read_text())["name"]
        cover = object_masks(Path(args.clips) / name / "masks", numbers, size)
    rows = score(fitter, numbers, cover)
    if args.worst:
        rows = sorted((r for r in rows if r["obj_px"]), key=lambda r: r["O_obj"])[: args.worst]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|---" * len(keys) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
