"""Every interchangeable backend of the engine side by side: one process, one device, one table.

Not collected by pytest. Times each backend of each job on the same inputs at the production
working size (768×432 unless `--width/--height`), medians of `--repeats` runs after warm-up
(CUDA events on a GPU, `perf_counter` on the CPU), and prints one Markdown table
(job | backend | what was timed | ms per unit | units/s | notes):

- **hashgrid** (`kernels.make_hash_grid`: torch, triton, tcnn): forward+backward of the fit's
  two grids at the `standard` preset's batch: the 2-D atlas grid on B points with the input
  gradient (its input is T's uv), the 3-D (x, y, t) mask grid on 4·B points (p and its three
  matches go through M every step), parameter gradient only. Same parameters and points for
  every backend. Triton off CUDA would need `TRITON_INTERPRET=1` (far too slow to time): skipped.
- **flow** (`flow.DisFlow`, `flow.RaftFlow`): ms per frame pair of OpenCV DIS on all CPU cores
  (one DIS per worker thread, as the stage runs it) on a batch of 32 pairs, and of torchvision
  RAFT small and large (installed into a temporary RNA_HOME and loaded by `weights.load_raft`),
  `FlowSettings.batch_pairs` pairs per batch, `raft_iterations` updates, on the device.
- **appearance** (`appearance.make_appearance`): features per frame and similarity per pair
  (`batch_pairs` pairs) of the weight-free descriptor and of DINO ViT-S/8 (a `transformers`
  ViT of the real size, installed into a temporary RNA_HOME with `weights.install`).
- **matte** (`matte.load_backend`, `soft_matte`): ms per frame and peak GPU memory of the
  guided/closed-form default and of ViTMatte (a `transformers` ViTMatte of ViTMatte-small's
  size) at a 1920×1080 plate, and with `--uhd` at 4096×2160; the mask comes from the working
  resolution (bilinearly upsampled), the band along a soft-edged occluder.
- **fit** (`stages.fit.JointFit.run`, `encoding_backend` per hash-grid backend): joint-fit steps per
  second at the `standard` batch, as the build runs them (CUDA graph on a GPU), measured as
  the difference of a short and a long run (capture and warm-up cancel out). The shot is
  `synth.make_shot("bench")` at the working size with zero flows, all valid: the step's cost
  does not depend on the flows' values.

Caveat: the learned backends (RAFT, DINO, ViTMatte) run with RANDOM weights, built from their
configurations: weights cannot be fetched on our machines. Their rows measure speed and memory
only; their outputs are meaningless. `--quick` (a CPU smoke run) shrinks every size (192×108
working, 320×180 plate, batch 2048 / 1024), takes 3 repeats and uses tiny DINO/ViTMatte models.
Each section catches its own failures and reports a skipped row with the reason, and starts no
new item once its time budget (`BUDGET_S`, halved with `--quick`) is spent; the script exits 0
when at least one row ran. About 45 s on one H100 with `--uhd` (16 CPU cores).

    python benchmarks/bench_backends.py --device cuda:0 --uhd --out bench_backends.json
    .venv/bin/python benchmarks/bench_backends.py --quick --device cpu
    .venv/bin/python benchmarks/bench_backends.py --only hashgrid,fit
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rna_engine.runtime.context import RunContext, resolve_device  # noqa: E402
from rna_engine.settings import FlowSettings, HashGridSettings, MatteSettings, build_settings  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from meta import commit  # noqa: E402

SECTIONS = ("hashgrid", "flow", "appearance", "matte", "fit")
GRID_BACKENDS = ("torch", "triton", "tcnn")
BUDGET_S = {"hashgrid": 30.0, "flow": 50.0, "appearance": 30.0, "matte": 50.0, "fit": 50.0}
"""Per section: no new item starts after this many seconds (an item under way finishes)."""
RANDOM = "random weights: speed/memory only"


# ---------------------------------------------------------------------------------------------
# Rows, timing


@dataclass
class Row:
    job: str
    backend: str
    timed: str
    ms: float | None = None
    """Median milliseconds per unit; None: skipped."""
    unit: str = ""
    notes: str = ""
    peak_mib: float | None = None
    """Peak GPU memory allocated while timing (CUDA only)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return self.ms is not None


@dataclass
class Timing:
    ms: float
    """Median of the timed calls."""
    samples: list[float]
    peak_mib: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> Timing:
    """Median ms of `fn` over `repeats` calls after `warmup` calls; CUDA events on a GPU (they
    bracket host work too: the stream is idle when the start event is recorded)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    samples = []
    for _ in range(max(1, repeats)):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return Timing(statistics.median(samples), samples, peak)


def _reason(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return (text[:180] + "…" if len(text) > 180 else text).replace("|", "/")


class Bench:
    """The rows of one run, the device, the options and the per-section budget."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.rows: list[Row] = []
        self.section = ""
        self.deadline = float("inf")
        self._shot: Any = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def budget(self, section: str) -> float:
        """Seconds after which `section` starts no new item (half with `--quick`)."""
        return BUDGET_S[section] * (0.5 if self.args.quick else 1.0)

    def repeats(self, heavy: bool = False) -> int:
        """`--repeats`, at most 3 for the heavy items (a batch of flows, a 4K matte)."""
        return max(1, min(self.args.repeats, 3) if heavy else self.args.repeats)

    def skip(self, job: str, backend: str, timed: str, why: str) -> None:
        self.rows.append(Row(job, backend, timed, notes=f"skipped: {why}"))
        print(f"  {job} / {backend}: skipped ({why})", file=sys.stderr)

    def item(
        self, job: str, backend: str, timed: str, run: Callable[[], Row | None], skip: str = ""
    ) -> None:
        """Run one measurement; `skip` (a reason) or a failure makes a skipped row."""
        if skip:
            self.skip(job, backend, timed, skip)
            return
        if time.perf_counter() > self.deadline:
            budget = self.budget(self.section)
            self.skip(job, backend, timed, f"{self.section} section budget ({budget:.0f} s) spent")
            return
        start = time.perf_counter()
        try:
            row = run()
        except Exception as err:  # a backend that fails is reported, the run goes on
            self.skip(job, backend, timed, _reason(err))
            row = None
        finally:
            if self.cuda:
                torch.cuda.empty_cache()
        if row is not None:
            row.extra.setdefault("item_wall_s", round(time.perf_counter() - start, 3))
            self.rows.append(row)
            rate = 1e3 / row.ms if row.ms else float("inf")
            print(
                f"  {job} / {backend}: {row.ms:.3f} ms/{row.unit} ({rate:.1f}/s)", file=sys.stderr
            )

    def row(
        self,
        job: str,
        backend: str,
        timed: str,
        t: Timing,
        unit: str,
        per: int = 1,
        notes: str = "",
        **extra: Any,
    ) -> Row:
        """A row from a timing of `per` units per call."""
        peak = t.peak_mib
        if peak is not None:
            notes = f"{notes}; peak {peak:.0f} MiB" if notes else f"peak {peak:.0f} MiB"
        return Row(
            job,
            backend,
            timed,
            t.ms / per,
            unit,
            notes,
            peak,
            {"samples_ms": [round(s, 4) for s in t.samples], "units_per_call": per, **extra},
        )

    # -----------------------------------------------------------------------------------------
    # The shared synthetic shot (flow, appearance, fit)

    def shot(self) -> tuple[Any, torch.Tensor]:
        """`synth.make_shot("bench")` at the working size: (shot, frames (N, 3, H, W) 0..1)."""
        if self._shot is None:
            from rna_engine.synthetic import shots as synth

            a = self.args
            t0 = time.perf_counter()
            shot = synth.make_shot("bench", seed=0, frames=a.frames, width=a.width, height=a.height)
            frames = torch.from_numpy(shot.plate_srgb).permute(0, 3, 1, 2).contiguous()
            print(
                f"  synth shot {a.width}×{a.height}×{a.frames}: {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
            self._shot = (shot, frames)
        return self._shot

    def pairs(self, count: int) -> list[tuple[int, int]]:
        """`count` adjacent frame pairs, both directions, cycling over the shot."""
        n = self.args.frames
        adjacent = [(t, t + 1) for t in range(n - 1)] + [(t + 1, t) for t in range(n - 1)]
        return [adjacent[i % len(adjacent)] for i in range(count)]


@contextlib.contextmanager
def rna_home() -> Iterator[Path]:
    """A temporary `RNA_HOME` (installed random weights go there), restored afterwards."""
    old = os.environ.get("RNA_HOME")
    home = Path(tempfile.mkdtemp(prefix="rna_bench_home_"))
    os.environ["RNA_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("RNA_HOME", None)
        else:
            os.environ["RNA_HOME"] = old
        shutil.rmtree(home, ignore_errors=True)


def torchvision_error() -> str:
    """'' when torchvision's optical-flow models import, else why not.

    When it does not import (a CUDA build beside a CPU torch), it is hidden from the process
    (`sys.modules["torchvision"] = None`): `transformers` would otherwise see it installed and
    fail to import its models. Must run before `transformers` is imported.
    """
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except Exception as err:  # an optional package: any failure means "absent"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]
        return _reason(err)
    return ""


def grid_unavailable(backend: str, device: torch.device) -> str:
    """'' when hash-grid `backend` can run on `device`, else the reason (a skipped row's note)."""
    if backend == "torch":
        return ""
    if backend == "triton":
        if device.type != "cuda":
            return "CUDA only (on CPU it needs TRITON_INTERPRET=1, far too slow to time)"
        from rna_engine.model.kernels import available_backends

        return (
            "" if available_backends(device)["triton"] else "not installed: triton does not import"
        )
    from rna_engine.model.kernels.tcnn_hashgrid import load_tinycudann

    tcnn, why = load_tinycudann()
    if tcnn is None:
        return f"not installed: {why}"
    return "" if device.type == "cuda" else "CUDA only"


# ---------------------------------------------------------------------------------------------
# Sections


def _time_grid(
    b: Bench,
    backend: str,
    ref: Any,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    input_grad: bool,
    timed: str,
) -> Row:
    """One hash-grid backend's forward+backward on `x`, with `ref`'s parameters."""
    from rna_engine.model.kernels import make_hash_grid

    points, n_dims = x.shape
    grid = make_hash_grid(n_dims, ref.settings, backend, b.device)
    grid.load_state_dict(ref.state_dict())

    def step() -> None:
        xi = x.detach().requires_grad_(input_grad)
        grid.params.grad = None
        (grid(xi) * grad_out).sum().backward()

    t = measure(step, b.device, b.repeats(), warmup=3)
    rate = points / t.ms / 1e3
    notes = f"{rate:.3g} Mpts/s"
    return b.row("hashgrid", backend, timed, t, "call", notes=notes, points=points, n_dims=n_dims)


def bench_hashgrid(b: Bench) -> None:
    from rna_engine.model.fields import HashGrid

    fit = build_settings("standard").fit
    batch = 2048 if b.args.quick else fit.batch_size
    configs = (
        ("atlas A, 2-D (u, v)", 2, batch, True),
        ("mask M, 3-D (x, y, t)", 3, 4 * batch, False),
    )
    for label, n_dims, points, input_grad in configs:
        g = torch.Generator().manual_seed(n_dims)
        x = torch.rand(points, n_dims, generator=g).to(b.device)
        ref = HashGrid(n_dims, fit.hash_grid)  # one set of parameters for every backend
        grad_out = torch.randn(points, ref.n_output_dims, generator=g).to(b.device)
        grads = "params + input grad" if input_grad else "params grad"
        timed = f"{label}: fwd+bwd ({grads}), {points} pts per call"
        for backend in GRID_BACKENDS:
            run = functools.partial(_time_grid, b, backend, ref, x, grad_out, input_grad, timed)
            b.item("hashgrid", backend, timed, run, skip=grid_unavailable(backend, b.device))


def bench_flow(b: Bench) -> None:
    from rna_engine.runtime import weights
    from rna_engine.stages.correspondences import DisFlow, RaftFlow

    settings = FlowSettings()
    _, frames = b.shot()
    size = f"{b.args.width}×{b.args.height}"

    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, workers or 1)
    n_pairs = 8 if b.args.quick else 32
    timed = f"{n_pairs} pairs {size} per call, preset {settings.dis_preset} + our overrides"

    def run_dis() -> Row:
        dis = DisFlow(frames, settings, str(b.device), workers=workers)
        try:
            pairs = b.pairs(n_pairs)
            t = measure(lambda: dis(pairs), b.device, b.repeats(heavy=True))
        finally:
            dis.close()
        return b.row(
            "flow",
            "dis (CPU)",
            timed,
            t,
            "pair",
            per=n_pairs,
            notes=f"{workers} worker threads (all cores), flows copied to {b.device}",
            workers=workers,
        )

    b.item("flow", "dis (CPU)", timed, run_dis)

    iterations, batch = settings.raft_iterations, settings.batch_pairs
    if b.args.quick:
        iterations, batch = 2, 2
    timed = f"{batch} pairs {size} per batch, {iterations} updates"
    why = b.args.torchvision_error
    for variant in ("small", "large"):

        def run_raft(variant: str = variant) -> Row:
            from torchvision.models.optical_flow import raft_large, raft_small

            with rna_home() as home:
                torch.manual_seed(0)
                model = (raft_small if variant == "small" else raft_large)(weights=None)
                path = home / f"raft_{variant}_random.pth"
                torch.save(model.state_dict(), path)
                del model
                record = weights.install("raft", path)
                loaded = weights.load_raft(str(b.device), record=record)
            if loaded is None:
                raise RuntimeError("weights.load_raft returned None (see the log)")
            on_device = frames.to(b.device)
            backend = RaftFlow(loaded, on_device, iterations, batch)
            pairs = b.pairs(batch)
            t = measure(lambda: backend(pairs), b.device, b.repeats(heavy=True))
            return b.row("flow", f"raft {variant}", timed, t, "pair", per=batch, notes=RANDOM)

        b.item(
            "flow",
            f"raft {variant}",
            timed,
            run_raft,
            skip=f"torchvision does not import: {why}" if why else "",
        )


def _dino_folder(folder: Path, quick: bool) -> None:
    """A randomly initialised DINO ViT-S/8 (`save_pretrained` folder); tiny with `quick`."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    # DINO ViT-S/8 is facebook/dino-vits8's configuration: 384 wide, 12 layers, 6 heads
    hidden, layers, heads, mlp = (32, 2, 2, 64) if quick else (384, 12, 6, 1536)
    config = transformers.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        patch_size=8,
        image_size=224,
        qkv_bias=True,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(str(folder))


def bench_appearance(b: Bench) -> None:
    from rna_engine.runtime import weights
    from rna_engine.stages.appearance import make_appearance

    _, frames = b.shot()
    frames = frames.to(b.device)
    n = frames.shape[0]
    pairs = FlowSettings().batch_pairs
    size = f"{b.args.width}×{b.args.height}"
    g = torch.Generator().manual_seed(0)
    flow = (torch.randn(pairs, 2, *frames.shape[2:], generator=g) * 2).to(b.device)
    idx_a = torch.tensor([p[0] for p in b.pairs(pairs)], device=b.device)
    idx_b = torch.tensor([p[1] for p in b.pairs(pairs)], device=b.device)

    def time_backend(name: str, appearance: Any, notes: str) -> None:
        def run_features() -> Row:
            t = measure(lambda: appearance.features(frames), b.device, b.repeats(heavy=True))
            return b.row(
                "appearance", name, f"features of {n} frames {size}", t, "frame", per=n, notes=notes
            )

        b.item("appearance", name, f"features of {n} frames {size}", run_features)
        timed = f"similarity of {pairs} pairs {size} (features ready)"

        def run_similarity() -> Row:
            feats = appearance.features(frames)
            fa, fb = feats[idx_a], feats[idx_b]
            t = measure(lambda: appearance.similarity(fa, fb, flow), b.device, b.repeats())
            return b.row("appearance", name, timed, t, "pair", per=pairs, notes=notes)

        b.item("appearance", name, timed, run_similarity)

    descriptor = make_appearance(FlowSettings(), str(b.device), None)
    time_backend("descriptor", descriptor, "weight-free; its features are the frames")

    label = "dino vit-s/8" + (" (tiny, --quick)" if b.args.quick else "")
    holder: dict[str, Any] = {}

    def load_dino() -> None:
        with rna_home() as home:
            folder = home / "dino_vits8_random"
            _dino_folder(folder, b.args.quick)
            record = weights.install("dino", folder)  # validates: loads it once on the CPU
            settings = FlowSettings(appearance="dino")
            appearance = make_appearance(settings, str(b.device), weights.resolve("dino"))
        if appearance.name != "dino":
            raise RuntimeError("make_appearance fell back to the descriptor (see the log)")
        holder["appearance"], holder["record"] = appearance, record

    try:
        if time.perf_counter() > b.deadline:
            raise RuntimeError("appearance section budget spent")
        load_dino()
    except Exception as err:  # transformers missing or broken: both rows skipped
        for timed in (f"features of {n} frames {size}", f"similarity of {pairs} pairs {size}"):
            b.skip("appearance", label, timed, _reason(err))
        return
    time_backend(label, holder["appearance"], RANDOM)


def _disc_alpha(
    xx: torch.Tensor, yy: torch.Tensor, w: float, h: float, edge: float
) -> torch.Tensor:
    """Coverage of a wobbly disc (the occluder) with an antialiased edge `edge` pixels wide."""
    cx, cy = w * 0.45, h * 0.5
    angle = torch.atan2(yy - cy, xx - cx)
    radius = h * 0.3 * (1 + 0.15 * torch.sin(3 * angle) + 0.05 * torch.sin(7 * angle))
    return (0.5 - (torch.hypot(xx - cx, yy - cy) - radius) / edge).clamp(0, 1)


def matte_scene(
    plate_w: int, plate_h: int, work_w: int, work_h: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(plate (3, H, W) linear, mask (H, W) from the working resolution, plate px per working px).

    A textured surface behind a soft-edged occluder; the mask (the visible ROI) is binarised at
    the working resolution and bilinearly upsampled, as the fit's mask reaches the plate."""
    scale = plate_w / work_w
    yy, xx = torch.meshgrid(
        torch.arange(plate_h, dtype=torch.float32, device=device),
        torch.arange(plate_w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    g = torch.Generator().manual_seed(7)
    freq = ((torch.rand(3, 8, 2, generator=g) * 2 - 1) * 0.6 / scale).to(device)
    phase = (torch.rand(3, 8, generator=g) * 6.28).to(device)
    waves = torch.zeros(3, plate_h, plate_w, device=device)
    for c in range(3):
        for i in range(8):
            waves[c] += torch.sin(xx * freq[c, i, 0] + yy * freq[c, i, 1] + phase[c, i]) / 8
    surface = 0.05 + 0.6 * (0.5 + 0.5 * waves)
    alpha = _disc_alpha(xx, yy, plate_w, plate_h, 1.5 * scale)
    occluder = torch.tensor([0.8, 0.1, 0.08], device=device)[:, None, None]
    plate = (1 - alpha) * surface + alpha * occluder
    wy, wx = torch.meshgrid(
        (torch.arange(work_h, dtype=torch.float32, device=device) + 0.5) * (plate_h / work_h) - 0.5,
        (torch.arange(work_w, dtype=torch.float32, device=device) + 0.5) * scale - 0.5,
        indexing="ij",
    )
    visible = (_disc_alpha(wx, wy, plate_w, plate_h, 1.5 * scale) < 0.5).float()
    mask = F.interpolate(visible[None, None], size=(plate_h, plate_w), mode="bilinear")[0, 0]
    return plate, mask, scale


def _vitmatte_folder(folder: Path, quick: bool) -> None:
    """A randomly initialised ViTMatte of ViTMatte-small's size (hustvl/vitmatte-small-*'s
    configuration: ViTDet-S backbone, 384 wide, 12 layers, 6 heads); tiny with `quick`."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if quick:
        backbone = transformers.VitDetConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            num_channels=4,
            image_size=64,
            pretrain_image_size=64,
            out_features=["stage2"],  # type: ignore[call-arg]
        )
        config = transformers.VitMatteConfig(
            backbone_config=backbone,
            hidden_size=32,
            convstream_hidden_sizes=[4, 8, 16],
            fusion_hidden_sizes=[16, 8, 8, 4],
        )
    else:
        backbone = transformers.VitDetConfig(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            mlp_ratio=4,
            num_channels=4,
            image_size=512,
            pretrain_image_size=224,
            patch_size=16,
            use_absolute_position_embeddings=True,
            use_relative_position_embeddings=True,
            window_size=14,
            window_block_indices=[0, 1, 3, 4, 6, 7, 9, 10],
            residual_block_indices=[2, 5, 8, 11],
            out_features=["stage12"],  # type: ignore[call-arg]
        )
        config = transformers.VitMatteConfig(
            backbone_config=backbone,
            hidden_size=384,
            convstream_hidden_sizes=[48, 96, 192],
            fusion_hidden_sizes=[256, 128, 64, 32],
        )
    torch.manual_seed(0)
    transformers.VitMatteForImageMatting(config).eval().save_pretrained(str(folder))


def _time_matte(
    b: Bench,
    name: str,
    settings: MatteSettings,
    notes: str,
    timed: str,
    scene: tuple[torch.Tensor, torch.Tensor, float],
) -> Row:
    """One matte backend's `soft_matte` of the scene's frame (backend loaded beforehand)."""
    from rna_engine.stages import matte as mt

    backend = mt.load_backend(settings, b.device)
    if backend.name != settings.backend:
        raise RuntimeError(f"load_backend fell back to {backend.name}")
    plate, mask, scale = scene
    tile = settings.tile_px or (1024 if b.cuda else 256)
    if settings.backend == "vitmatte":
        tile = settings.vitmatte_tile_px
    t = measure(
        lambda: mt.soft_matte(plate, mask, settings, scale, backend=backend),
        b.device,
        b.repeats(heavy=True),
    )
    size = list(plate.shape[1:])
    return b.row("matte", name, timed, t, "frame", notes=f"{notes}, tile {tile}", plate_hw=size)


def bench_matte(b: Bench) -> None:
    work_w, work_h = b.args.width, b.args.height
    sizes = [(320, 180)] if b.args.quick else [(1920, 1080)]
    if b.args.uhd:
        sizes.append((640, 360) if b.args.quick else (4096, 2160))
    base = dataclasses.replace(MatteSettings(), temporal_weight=0.0)
    tmp = Path(tempfile.mkdtemp(prefix="rna_bench_vitmatte_"))
    try:
        vitmatte_error = ""
        try:
            _vitmatte_folder(tmp, b.args.quick)
        except Exception as err:  # transformers missing or broken: the ViTMatte rows skip
            vitmatte_error = _reason(err)
        backends = {
            "guided": (base, "weight-free, closed form", ""),
            "vitmatte" + (" (tiny, --quick)" if b.args.quick else ""): (
                dataclasses.replace(base, backend="vitmatte", vitmatte_dir=str(tmp)),
                RANDOM,
                vitmatte_error,
            ),
        }
        for plate_w, plate_h in sizes:
            timed = f"soft_matte, plate {plate_w}×{plate_h}, mask from {work_w}×{work_h}"
            try:
                scene = matte_scene(plate_w, plate_h, work_w, work_h, b.device)
            except Exception as err:  # out of memory, say: this size's rows say why
                for name in backends:
                    b.skip("matte", name, timed, f"scene: {_reason(err)}")
                continue
            for name, (settings, notes, why) in backends.items():
                run = functools.partial(_time_matte, b, name, settings, notes, timed, scene)
                b.item("matte", name, timed, run, skip=why)
            del scene
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fit_seconds(
    b: Bench, tensors: Any, fit: Any, refine: Any, short: int, steps: int
) -> tuple[float, float, bool]:
    """Wall seconds of `short` and of `short + steps` joint-fit steps (after a warm-up run of
    `short`), and whether the steps ran as a CUDA graph."""
    from rna_engine.model.kernels import make_hash_grid
    from rna_engine.stages.fit import Fitter

    def grid_factory(n_dims: int, grid: HashGridSettings) -> Any:
        return make_hash_grid(n_dims, grid, fit.encoding_backend, b.device)

    fitter = Fitter(tensors, fit, refine, RunContext(device=str(b.device), seed=0), grid_factory)

    def run(count: int) -> float:
        fitter.joint.steps = count
        _sync(b.device)
        t0 = time.perf_counter()
        fitter.joint.run(fitter.loop)  # reads the last loss back: ends synchronised
        _sync(b.device)
        return time.perf_counter() - t0

    run(short)  # compiles the kernels, allocates
    return run(short), run(short + steps), fitter.loop.use_graph


def _time_fit(
    b: Bench, backend: Any, tensors: Any, batch: int, short: int, steps: int, timed: str
) -> Row:
    settings = build_settings("standard")
    fit = dataclasses.replace(
        settings.fit,
        batch_size=batch,
        encoding_backend=backend,
        log_every=10**6,
        checkpoint_every=10**6,
        scale_with_shot=False,
    )
    if b.cuda:
        torch.cuda.reset_peak_memory_stats(b.device)
    notes = ""
    try:
        t_short, t_long, graph = _fit_seconds(b, tensors, fit, settings.refine, short, steps)
    except RuntimeError as err:
        if not b.cuda:
            raise
        # the eager loop draws from a private generator: it survives a failed capture
        notes = f"graph capture failed ({_reason(err)}); "
        fit = dataclasses.replace(fit, compile="off")
        t_short, t_long, graph = _fit_seconds(b, tensors, fit, settings.refine, short, steps)
    per_step = (t_long - t_short) / steps
    if per_step <= 0:  # noise: fall back to the long run's mean
        per_step = t_long / (short + steps)
    peak = torch.cuda.max_memory_allocated(b.device) / 2**20 if b.cuda else None
    notes += ("CUDA graph" if graph else "eager") + "; flows zero, all valid (speed only)"
    t = Timing(per_step * 1e3, [t_short * 1e3, t_long * 1e3], peak)
    return b.row("fit", backend, timed, t, "step", notes=notes, steps=[short, short + steps])


def bench_fit(b: Bench) -> None:
    from rna_engine.stages.correspondences import Correspondences
    from rna_engine.stages.fit import ShotTensors

    shot, frames = b.shot()
    batch = 1024 if b.args.quick else build_settings("standard").fit.batch_size
    # a graph is captured only for more than 8 steps: both timed runs capture one on CUDA
    short, steps = (10, 50) if b.cuda and not b.args.quick else (2, 5)
    frames = frames.to(b.device)
    n, _, h, w = frames.shape
    roi = torch.from_numpy(shot.roi).to(b.device)
    zeros = torch.zeros(n, 2, h, w, device=b.device)
    valid = torch.ones(n, h, w, dtype=torch.bool, device=b.device)
    corr = Correspondences(zeros, valid, zeros, valid, zeros, valid, roi.expand(n, h, w).clone())
    tensors = ShotTensors(frames, roi, shot.reference_index, corr)
    timed = f"joint-fit step (JointFit.run), batch {batch}, {w}×{h}×{n} shot"
    # torch last: its graph capture is the one that may fail (see bench_hashgrid.py --graph)
    for backend in ("tcnn", "triton", "torch"):
        run = functools.partial(_time_fit, b, backend, tensors, batch, short, steps, timed)
        b.item("fit", backend, timed, run, skip=grid_unavailable(backend, b.device))


# ---------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| job | backend | what was timed | ms per unit | units/s | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.ran and r.ms is not None:
            rate = 1e3 / r.ms if r.ms > 0 else float("inf")
            ms = f"{r.ms:.3f}" if r.ms >= 0.01 else f"{r.ms:.1e}"
            per_s = f"{rate:,.1f} {r.unit}/s" if rate < 1e6 else f"{rate:.2e} {r.unit}/s"
        else:
            ms = per_s = "–"
        lines.append(f"| {r.job} | {r.backend} | {r.timed} | {ms} | {per_s} | {r.notes} |")
    return "\n".join(lines)


def _versions(device: torch.device) -> dict[str, str]:
    out: dict[str, str] = {"torch": torch.__version__}
    for name in ("cv2", "transformers", "torchvision"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "?"))
    try:
        from rna_engine.model.kernels import available_backends

        for name, value in available_backends(device).items():
            out[f"hashgrid_{name}"] = str(value)
    except Exception as err:  # a broken optional kernel package must not lose the results
        out["hashgrid"] = _reason(err)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="auto", help="auto (cuda:0 when available), cpu, cuda:N"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per item, median (default 10; 3 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument("--uhd", action="store_true", help="also time the matte at 4096×2160")
    parser.add_argument("--width", type=int, help="working width (default 768; 192 with --quick)")
    parser.add_argument("--height", type=int, help="working height (default 432; 108 --quick)")
    parser.add_argument("--frames", type=int, help="synthetic frames (default 12; 6 --quick)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.width = args.width or (192 if args.quick else 768)
    args.height = args.height or (108 if args.quick else 432)
    args.frames = max(2, args.frames or (6 if args.quick else 12))
    args.torchvision_error = torchvision_error()  # before anything imports transformers
    device = torch.device(resolve_device(args.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.zeros(1, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    name = name or platform.machine()
    print(
        f"device {device} ({name}); torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; sections {', '.join(only)}",
        file=sys.stderr,
    )

    bench = Bench(args, device)
    runners = {
        "hashgrid": bench_hashgrid,
        "flow": bench_flow,
        "appearance": bench_appearance,
        "matte": bench_matte,
        "fit": bench_fit,
    }
    wall: dict[str, float] = {}
    for section in SECTIONS:  # fixed order: fit last (a failed graph capture can spoil CUDA RNG)
        if section not in only:
            continue
        print(f"[{section}]", file=sys.stderr)
        bench.section = section
        start = time.perf_counter()
        bench.deadline = start + bench.budget(section)
        try:
            runners[section](bench)
        except Exception as err:  # the section's own set-up failed: one skipped row says why
            bench.skip(section, "–", "section set-up", _reason(err))
        wall[section] = round(time.perf_counter() - start, 2)
    print(table(bench.rows))
    if args.out:
        report = {
            "benchmark": "backends",
            "commit": commit(),
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "command": " ".join(sys.argv),
            "options": {
                k: v for k, v in vars(args).items() if k not in ("out", "torchvision_error")
            },
            "torchvision_error": args.torchvision_error,
            "versions": _versions(device),
            "section_wall_s": wall,
            "rows": [dataclasses.asdict(r) for r in bench.rows],
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if any(r.ran for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
