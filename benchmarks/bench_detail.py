"""The atlas's reference detail, K frames side by side, on one finished synthetic build.

    python benchmarks/bench_hard.py --shots pan --device cuda:0 --out OUT
    python benchmarks/bench_detail.py --out OUT --shot pan --detail 0,1,9 --device cuda:0

`bake.reference_detail` (docs/method.md §6.1) only changes the bake, so the fit is not re-run:
the build that `bench_hard.py` wrote into OUT is reloaded from its checkpoint (`work/fit.ckpt`)
and re-baked once per K (`bench_rebake.Rebaker`) into `OUT/rebake_<shot>_detailK/v001`, then scored against the exact truth
as `bench_hard.py` scores (`score_shot`: edit PSNR, UV error, leak, coverage). Prints one
line per K (edit PSNR worst / p10 / median frame and pooled, leak worst, bake seconds) and
writes `OUT/detail_<shot>.json`. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_hard import summary_of  # noqa: E402
from bench_rebake import Rebaker  # noqa: E402
from meta import commit  # noqa: E402

from rna_engine.media.cache import write_json_atomic  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a bench_hard.py output folder")
    parser.add_argument("--shot", default="pan")
    parser.add_argument("--detail", default="0,1,9", help="comma-separated K values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="bench_hard.py's --seed")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    torch.set_grad_enabled(False)
    rebaker = Rebaker(out, args.shot, args.device, args.seed)
    rows = []
    for k in [int(v) for v in args.detail.split(",") if v.strip()]:
        per_frame, pooled, bake_s = rebaker.run(f"detail{k}", {"reference_detail": k}, {})
        metrics = summary_of(per_frame, rebaker.shot)
        edit, leak = metrics["edit_psnr"], metrics["leak_pct"]
        rows.append(
            {"reference_detail": k, "bake_s": round(bake_s, 1), **pooled, "metrics": metrics}
        )
        print(
            f"K={k}: edit PSNR worst {edit['worst']:.2f} / p10 {edit['p10_worst']:.2f} / "
            f"median {edit['median']:.2f} dB, pooled {pooled['edit_psnr_pooled']:.2f} dB; "
            f"leak worst {leak['worst']:.3f} %; bake {bake_s:.1f} s",
            flush=True,
        )
    write_json_atomic(
        out / f"detail_{args.shot}.json",
        {
            "meta": {
                "commit": commit(),
                "command": " ".join(["python benchmarks/bench_detail.py", *sys.argv[1:]]),
                "cache": str(rebaker.cache),
            },
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
