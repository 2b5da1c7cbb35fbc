"""Sliding tile attention (``sta``) on one GPU: kernel timings against SDPA, and a HunyuanVideo DiT forward.

    PYTHONPATH=core/src:plugins/fastvideo-sta/src:plugins/fastvideo-hunyuan/src python benchmarks/bench_sta.py

1. Kernels, bf16, head dim 128, forward and forward+backward, against torch SDPA's cuDNN and flash
   backends (dense, same shape, same run):
   * HunyuanVideo 117x768x1280: grid 30x48x80 + 256 text tokens, 24 heads (the anchor's own shape);
   * HunyuanVideo 125x720x1280: grid 32x45x80 + 256 text (partial tiles: the anchor cannot run it);
   * Wan2.1-1.3B 81x480x832: grid 21x30x52, 12 heads, no text (partial tiles).
   Windows: the paper's HunyuanVideo windows, one per head in turn ((5,3,3), (1,6,10), (3,3,5),
   (5,1,10), (5,6,1)), and the uniform window nearest to 91 % sparsity on that grid. Each row gives the
   kept fraction of the whole (video + text) score plane and ``time / (cuDNN dense time x kept)``
   (target: forward <= 1.15). The Triton kernels (``FASTVIDEO_STA_FA4=0``) run every row; where
   flash-attn-4 is installed and takes the grid (whole tiles), a second forward row runs through its
   block-sparse kernel (``FASTVIDEO_STA_FA4=1``).
2. HunyuanVideo DiT (13B, random weights, bf16) forward at 125x720x1280 (32x45x80 tokens + 256 text):
   ``sta`` with the anchor's published strategy (tests/fixtures/mask_strategy_hunyuan.json.xz) at a
   sparse step against dense ``sdpa``, same model and inputs (target: <= 0.5 x dense). ``--num-layers``
   / ``--num-single-layers`` shorten it (say so when reporting).

Rows go to docs/benchmarks.md and ``$OUT/bench_rows.jsonl``. ``--tiny`` runs everything at toy sizes on
whatever device there is (CPU: Triton's interpreter) as a smoke test and records nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import lzma
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from harness import ROOT, Timing, append_row, environment, time_cuda

PAPER_WINDOWS = ((5, 3, 3), (1, 6, 10), (3, 3, 5), (5, 1, 10), (5, 6, 1))
STRATEGY = ROOT / "plugins/fastvideo-sta/tests/fixtures/mask_strategy_hunyuan.json.xz"
KERNEL_HEADER = [
    "date",
    "card",
    "shape (grid + text, heads)",
    "windows",
    "kept",
    "pass",
    "sta ms",
    "cuDNN ms",
    "flash ms",
    "sta / (cuDNN x kept)",
    "sta / cuDNN",
    "sta / flash",
    "versions",
]
E2E_HEADER = [
    "date",
    "card",
    "model",
    "shape (F x H x W, tokens)",
    "strategy",
    "sparsity (video)",
    "dense sdpa ms",
    "sta ms",
    "sta / dense",
    "peak GiB (sta)",
    "versions",
    "command",
]


def log(msg: str) -> None:
    print(msg, flush=True)


@contextlib.contextmanager
def fa4_setting(value: str | None) -> Iterator[None]:
    """``FASTVIDEO_STA_FA4=value`` for the block (``None``: as the caller set it), restored after."""
    name, caller = "FASTVIDEO_STA_FA4", os.environ.get("FASTVIDEO_STA_FA4")
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if caller is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = caller


def kept_fraction(geom: Any, windows: list[tuple[int, int, int]], text: int) -> float:
    """Kept fraction of the whole ``(N + text)^2`` score plane, averaged over heads."""
    n = geom.num_tokens
    total = (n + text) ** 2
    rest = 2 * n * text + text * text  # video->text, text->video, text->text: always computed
    return sum((geom.kept_fraction(w) * n * n + rest) / total for w in windows) / len(windows)


def window_near(geom: Any, kept: float) -> tuple[int, int, int]:
    """The window (in tiles) whose video kept fraction is nearest ``kept`` (ties: the more cubic)."""
    ranges = [range(1, n + 1) for n in geom.tile_grid]
    return min(
        itertools.product(*ranges),
        key=lambda w: (abs(geom.kept_fraction(w) - kept), max(w) - min(w)),
    )


def time_any(name: str, fn: Any, warmup: int, iters: int) -> Timing:
    return time_out(name, fn, warmup, iters)[0]


def time_out(name: str, fn: Any, warmup: int, iters: int) -> tuple[Timing, Any]:
    """``(timing, last output)``: CUDA events on a GPU, wall time elsewhere."""
    if torch.cuda.is_available():
        return time_cuda(name, fn, warmup=warmup, iters=iters)
    start = time.perf_counter()
    out = None
    for _ in range(warmup + iters):
        out = fn()
    ms = (time.perf_counter() - start) * 1e3 / (warmup + iters)
    return Timing(name, ms, ms, 0.0, [ms]), out


def one_shape(
    args: argparse.Namespace,
    env: dict[str, str],
    device: str,
    dtype: torch.dtype,
    grid: tuple[int, int, int],
    text: int,
    heads: int,
    label: str,
    tile: tuple[int, int, int],
) -> list[str]:
    """Dense baselines and sta at two window settings on one shape; returns the printed lines."""
    from fastvideo_sta.ops import fa4, sta_attention
    from fastvideo_sta.tiles import TileGeometry

    summary: list[str] = []
    geom = TileGeometry(grid, tile)
    n = geom.num_tokens
    dim = 128 if not args.tiny else 32
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (
        torch.randn(1, n + text, heads, dim, device=device, dtype=dtype, generator=gen) for _ in range(4)
    )
    text_mask = None
    if text:
        text_mask = torch.ones(1, text, dtype=torch.bool, device=device)
        text_mask[:, text // 2 + 8 :] = False  # padded prompt tokens, as the pipelines give
    fa4_here = device == "cuda" and fa4.installed()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, L, D] for SDPA

    def dense(backend: Any) -> Any:
        from torch.nn.attention import sdpa_kernel

        def fwd() -> torch.Tensor:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qt, kt, vt)

        def fwd_bwd() -> None:
            x = [t.detach().requires_grad_() for t in (qt, kt, vt)]
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(*x)
            torch.autograd.grad(out, x, do.transpose(1, 2))

        return fwd, fwd_bwd

    base: dict[str, tuple[float, float]] = {}
    if torch.cuda.is_available():
        from torch.nn.attention import SDPBackend

        for name, backend in (
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("flash", SDPBackend.FLASH_ATTENTION),
        ):
            try:
                f, fb = dense(backend)
                base[name] = (
                    time_any(name, f, 1, args.iters).median_ms,
                    time_any(name, fb, 1, args.iters).median_ms,
                )
            except RuntimeError as exc:  # a backend that cannot take the shape
                log(f"  {name}: unavailable ({str(exc).splitlines()[0][:100]})")
                base[name] = (math.nan, math.nan)
    sparse91 = window_near(geom, 0.09)
    cases = [("paper windows, one per head", [PAPER_WINDOWS[h % 5] for h in range(heads)]),
             (f"{sparse91} (~{1 - geom.kept_fraction(sparse91):.0%} sparse)", [sparse91] * heads)]  # fmt: skip
    for what, windows in cases:
        table = torch.tensor([geom.clamp(w) for w in windows], dtype=torch.int32, device=device)

        def fwd(table: torch.Tensor = table) -> torch.Tensor:
            return sta_attention(q, k, v, grid, table, tile=tile, text_mask=text_mask)

        def fwd_bwd(table: torch.Tensor = table) -> None:
            x = [t.detach().requires_grad_() for t in (q, k, v)]
            out = sta_attention(*x, grid, table, tile=tile, text_mask=text_mask)
            torch.autograd.grad(out, x, do)

        kept = kept_fraction(geom, [geom.clamp(w) for w in windows], text)
        passes = [("fwd", fwd, 0, "0"), ("fwd+bwd", fwd_bwd, 1, "0")]  # the Triton kernels
        reason = fa4.why_not(q, geom, text_mask, grad=False) if fa4_here else "flash-attn-4 is not installed"
        if reason is None:
            passes.insert(
                1, ("fwd", fwd, 0, "1")
            )  # the same forward through flash-attn-4's block-sparse kernel
        elif fa4_here:
            log(f"  {label}: no flash-attn-4 row ({reason})")
        for pass_, fn, i, fa4_env in passes:
            kernel = "flash-attn-4" if fa4_env == "1" else "Triton"
            with fa4_setting(fa4_env):
                t = time_any(f"sta {pass_} {kernel}", fn, 1, args.iters).median_ms
            cudnn, flash = (base.get(b, (math.nan, math.nan))[i] for b in ("cudnn", "flash"))
            ratio = t / (cudnn * kept) if cudnn == cudnn else math.nan
            row = [
                env["date"], env["card"], f"{label}: {'x'.join(map(str, grid))} + {text}, {heads} heads",
                what, f"{kept:.3f}", f"{pass_} ({kernel})", f"{t:.2f}", f"{cudnn:.2f}", f"{flash:.2f}", f"{ratio:.2f}",
                f"{t / cudnn:.3f}", f"{t / flash:.3f}", f"torch {env['torch']}, triton {env['triton']}",
            ]  # fmt: skip
            line = (f"{label} {what} {pass_} ({kernel}): sta {t:.2f} ms, kept {kept:.3f}, cuDNN {cudnn:.2f} ms, "
                    f"flash {flash:.2f} ms, sta/(cuDNN x kept) {ratio:.2f}")  # fmt: skip
            log(line)
            summary.append(line)
            if not args.tiny and not args.no_record:
                append_row(
                    "Sliding tile attention kernels (sta: Triton; flash-attn-4 forward) vs SDPA",
                    KERNEL_HEADER,
                    row,
                )
    return summary


def kernel_rows(args: argparse.Namespace, env: dict[str, str], device: str, dtype: torch.dtype) -> list[str]:
    shapes = [((30, 48, 80), 256, 24, "HunyuanVideo 117x768x1280"), ((32, 45, 80), 256, 24, "HunyuanVideo 125x720x1280"),
              ((21, 30, 52), 0, 12, "Wan2.1 81x480x832")]  # fmt: skip
    tile = (6, 8, 8)
    if args.tiny:
        shapes, tile = [((5, 6, 9), 8, 2, "tiny"), ((3, 5, 7), 0, 2, "tiny")], (2, 4, 4)
    summary = []
    for grid, text, heads, label in shapes:
        summary += one_shape(args, env, device, dtype, grid, text, heads, label, tile)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return summary


def dit_rows(args: argparse.Namespace, env: dict[str, str], device: str, dtype: torch.dtype) -> list[str]:
    """HunyuanVideo DiT forward: dense sdpa vs sta at the anchor's strategy (a sparse step)."""
    from fastvideo.attention import StepContext, step_context, use_backend
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo.attention.options import resolve_options
    from fastvideo.plugins import load_plugins
    from fastvideo_hunyuan.configs import CONFIGS
    from fastvideo_hunyuan.model import HunyuanTransformer
    from fastvideo_hunyuan.tiny import TINY_DIT
    from fastvideo_sta.strategy import load_strategy
    from fastvideo_sta.tiles import TileGeometry

    load_plugins()
    config = dict(TINY_DIT) if args.tiny else dict(CONFIGS["hunyuanvideo-t2v-13b"])
    for key in ("num_layers", "num_single_layers"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    start = time.perf_counter()
    model = HunyuanTransformer.from_config(config, device="meta")
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02, generator=gen)
            if "norm" in name and name.endswith("weight") and "linear" not in name:
                p.add_(1.0)
    model.eval()
    attach_layer_modules(model, "sta")
    log(
        f"built HunyuanVideo DiT ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B) in {time.perf_counter() - start:.0f} s"
    )

    strategy_path = Path(args.out) / "mask_strategy_hunyuan.json"
    strategy_path.parent.mkdir(parents=True, exist_ok=True)
    strategy_path.write_bytes(lzma.decompress(STRATEGY.read_bytes()))
    strategy = load_strategy(strategy_path)
    frames, height, width = tuple(int(n) for n in args.dit_shape.split("x")) if not args.tiny else (9, 64, 64)
    t_lat, h_lat, w_lat = (frames - 1) // 4 + 1, height // 8, width // 8
    x = torch.randn(1, config["in_channels"], t_lat, h_lat, w_lat, device=device, generator=gen, dtype=dtype)
    text_len = 256 if not args.tiny else 8
    text = torch.randn(1, text_len, config["text_embed_dim"], device=device, generator=gen, dtype=dtype)
    mask = torch.zeros(1, text_len, device=device, dtype=torch.int64)
    mask[:, : text_len // 2] = 1
    pooled = torch.randn(1, config["pooled_projection_dim"], device=device, generator=gen, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    guidance = torch.tensor([6.0], device=device, dtype=dtype) * 1000.0
    grid = model.token_grid(x.shape)
    tile = "6,8,8" if not args.tiny else "1,2,2"
    geom = TileGeometry(grid, tuple(int(s) for s in tile.split(",")))
    layers = config["num_layers"] + config["num_single_layers"]
    heads = config["num_attention_heads"]
    step = args.step
    if args.tiny or layers > strategy.num_layers or heads != strategy.num_heads:
        from fastvideo_sta.strategy import Strategy, save_strategy

        # the anchor's windows of that step, for this model's layers and heads (tiny runs, fewer heads)
        windows = {(s, layer, h): strategy.window(s, layer % strategy.num_layers, h % strategy.num_heads)
                   for s in (step,) for layer in range(layers) for h in range(heads)}  # fmt: skip
        windows.update({(s, layer, h): windows[(step, layer, h)] for s in range(step) for layer in range(layers) for h in range(heads)})  # fmt: skip
        strategy_path = save_strategy(
            Strategy(windows), Path(args.out) / "strategy_used.json", overwrite=True
        )
        strategy = load_strategy(strategy_path)
    options = resolve_options("sta", {"sta": {"strategy": str(strategy_path), "tile": tile}})
    sparsity = strategy.sparsity(geom, [step])
    log(f"latent {tuple(x.shape)} -> grid {grid} ({math.prod(grid)} tokens) + {text_len} text; strategy step {step}: "
        f"video sparsity {sparsity:.3f} on tiles {geom.tile_grid}")  # fmt: skip

    def run(backend: str) -> torch.Tensor:
        ctx = StepContext(grid=grid, step_index=step, num_steps=strategy.num_steps, options=options)
        with torch.inference_mode(), use_backend(backend), step_context(ctx):
            return model(x, t, text, mask, pooled, guidance)

    from fastvideo_sta.ops import fa4

    # the default path; where flash-attn-4 takes this grid, the Triton kernels too (FASTVIDEO_STA_FA4=0)
    variants = [("sdpa", "sdpa", None), ("sta", "sta", None)]
    head_dim = config.get("attention_head_dim", 128)
    q_like = torch.empty(1, 1, heads, head_dim, device=device, dtype=dtype)
    if device == "cuda" and fa4.installed() and fa4.why_not(q_like, geom, mask, grad=False) is None:
        variants = [("sdpa", "sdpa", None), ("sta (flash-attn-4)", "sta", "1"), ("sta (Triton)", "sta", "0")]
    timings = {}
    outs = {}
    for label, backend, fa4_env in variants:
        with fa4_setting(fa4_env):
            tm, out = time_out(label, lambda b=backend: run(b), 1, 1)
        outs[label] = out.float()
        timings[label] = tm
        log(f"DiT forward {label}: {tm.median_ms:.1f} ms, peak {tm.peak_gib:.2f} GiB")
    lines = [dit_row(args, env, frames, height, width, layers, config, grid, text_len, step, sparsity,
                     label, timings, outs) for label, _, _ in variants[1:]]  # fmt: skip
    return lines


def dit_row(
    args, env, frames, height, width, layers, config, grid, text_len, step, sparsity, label, timings, outs
):  # type: ignore[no-untyped-def]
    """Log and record one sta variant of the DiT forward against dense sdpa."""
    rel = ((outs[label] - outs["sdpa"]).norm() / outs["sdpa"].norm()).item()
    ratio = timings[label].median_ms / timings["sdpa"].median_ms
    full_run = (15 * timings["sdpa"].median_ms + 35 * timings[label].median_ms) / (
        50 * timings["sdpa"].median_ms
    )
    line = (f"HunyuanVideo DiT {frames}x{height}x{width} ({layers} blocks): {label} {timings[label].median_ms:.1f} ms vs dense "
            f"{timings['sdpa'].median_ms:.1f} ms = {ratio:.3f} (target <= 0.5); 50 steps with the first 15 dense: "
            f"{full_run:.3f} of dense; ||sta - dense|| / ||dense|| = {rel:.3f}")  # fmt: skip
    log(line)
    full = args.num_layers is None and args.num_single_layers is None
    if not args.tiny and not args.no_record:
        append_row(
            "HunyuanVideo DiT forward with sta (anchor strategy) vs dense sdpa",
            E2E_HEADER,
            [
                env["date"], env["card"], f"HunyuanVideo 13B{'' if full else f' ({layers} blocks)'}, random weights, bf16",
                f"{frames}x{height}x{width}, {math.prod(grid)} + {text_len}",
                f"anchor mask_strategy_hunyuan.json step {step}{'' if label == 'sta' else ', ' + label}", f"{sparsity:.3f}",
                f"{timings['sdpa'].median_ms:.1f}", f"{timings[label].median_ms:.1f}", f"{ratio:.3f}",
                f"{timings[label].peak_gib:.2f}", f"torch {env['torch']}, triton {env['triton']}", f"`{env['command']}`",
            ],
        )  # fmt: skip
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--tiny", action="store_true", help="toy sizes on any device (smoke test), nothing recorded"
    )
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--step", type=int, default=25, help="the strategy's denoising step (>= 15: sparse)")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--skip-dit", action="store_true")
    ap.add_argument("--num-layers", type=int, help="dual-stream blocks (default: all 20)")
    ap.add_argument("--num-single-layers", type=int, help="single-stream blocks (default: all 40)")
    ap.add_argument("--dit-shape", default="125x720x1280", help="FRAMESxHEIGHTxWIDTH of the DiT forward")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--out", default="/tmp/out")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        sys.exit("no CUDA GPU: run with --tiny for a CPU smoke test (TRITON_INTERPRET=1)")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    env = environment()
    log(f"{env['card']}, torch {env['torch']}, triton {env['triton']}")
    lines = []
    if not args.skip_kernels:
        lines += kernel_rows(args, env, device, dtype)
    if not args.skip_dit:
        lines += dit_rows(args, env, device, dtype)
    log("\n== summary")
    for line in lines:
        log(line)


if __name__ == "__main__":
    main()
