"""One Wan DiT forward, ours against diffusers' ``WanTransformer3DModel``, on the same random weights.

    python benchmarks/bench_wan_dit.py --config wan2.1-t2v-1.3b --frames 81 --height 480 --width 832

Builds diffusers' model with random weights, copies the same weights into ours through the declared
name mapping, checks the outputs agree, then times each model alone on the GPU (the other one is on
the CPU meanwhile) and appends a row to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import torch
from harness import append_row, environment, time_cuda

HEADER = [
    "date",
    "card",
    "config",
    "shape (F x H x W, tokens)",
    "dtype",
    "variant",
    "ours ms",
    "diffusers ms",
    "ratio",
    "ours peak GiB",
    "diffusers peak GiB",
    "max abs diff",
    "mean abs diff",
    "versions",
    "command",
]


def build_models(config_name: str, dtype: torch.dtype, seed: int, workdir: Path):
    """diffusers' model with random weights, saved with ``save_pretrained`` and loaded back by both
    libraries the way users load checkpoints (``from_pretrained`` with a bf16 dtype: each keeps its
    fp32 modules in fp32)."""
    from diffusers import WanTransformer3DModel

    from fastvideo_wan.configs import CONFIGS
    from fastvideo_wan.model import WanTransformer

    cfg = {k: v for k, v in CONFIGS[config_name].items() if not k.startswith("_")}
    torch.manual_seed(seed)
    with torch.device("cuda"):
        ref = WanTransformer3DModel(**cfg)
    with torch.no_grad():  # random (not init-default) values everywhere, small enough to stay finite
        for p in ref.parameters():
            p.normal_(0, 0.02)
    ref.to(dtype).save_pretrained(str(workdir))
    del ref
    torch.cuda.empty_cache()
    ref = WanTransformer3DModel.from_pretrained(str(workdir), torch_dtype=dtype).to("cuda").eval()
    ours = WanTransformer.from_pretrained(workdir, dtype=dtype, device="cpu").eval()
    return ref, ours, cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time ours with compile_blocks()")
    ap.add_argument(
        "--compile-ref", action="store_true", help="also time diffusers' compile_repeated_blocks()"
    )
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    tmp = tempfile.TemporaryDirectory()
    ref, ours, cfg = build_models(args.config, dtype, seed=0, workdir=Path(tmp.name))
    z = 48 if cfg.get("in_channels") == 48 else cfg["in_channels"]
    stride = 16 if z == 48 else 8
    t_lat, h_lat, w_lat = (args.frames - 1) // 4 + 1, args.height // stride, args.width // stride
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, z, t_lat, h_lat, w_lat, device="cuda", generator=gen, dtype=dtype)
    text = torch.randn(1, args.text_len, cfg["text_dim"], device="cuda", generator=gen, dtype=dtype)
    t = torch.tensor([500.0], device="cuda")
    p = cfg["patch_size"]
    tokens = t_lat // p[0] * (h_lat // p[1]) * (w_lat // p[2])

    def run_ref():
        with torch.inference_mode():
            return ref(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    from fastvideo.attention import use_backend

    def run_ours():
        with torch.inference_mode(), use_backend(None):  # as the pipeline runs it
            return ours(x, t, text)

    gc.collect()
    torch.cuda.empty_cache()
    t_ref, out_ref = time_cuda("diffusers", run_ref, warmup=args.warmup, iters=args.iters)
    out_ref = out_ref.float().cpu()
    refs = [("eager", t_ref)]
    if args.compile_ref:
        ref.compile_repeated_blocks()
        t_rc, _ = time_cuda("diffusers-compiled", run_ref, warmup=max(args.warmup, 2), iters=args.iters)
        refs.append(("compile_repeated_blocks", t_rc))
    ref.to("cpu")  # frees the card for ours; run_ref is not called again
    gc.collect()
    torch.cuda.empty_cache()
    ours.to("cuda")
    results = []
    t_ours, out = time_cuda("ours", run_ours, warmup=args.warmup, iters=args.iters)
    results.append(("eager", t_ours, out.float().cpu()))
    if args.compile:
        ours.compile_blocks()
        t_c, out = time_cuda("ours-compiled", run_ours, warmup=max(args.warmup, 2), iters=args.iters)
        results.append(("compile_blocks", t_c, out.float().cpu()))

    env = environment()
    print(f"{env['card']} torch {env['torch']} diffusers {env['diffusers']} tokens={tokens}")
    for name, tm in refs:
        print(f"diffusers[{name}]: {tm.median_ms:.1f} ms (min {tm.min_ms:.1f}), peak {tm.peak_gib:.2f} GiB")
    for name, tm, out in results:
        diff = (out - out_ref).abs()
        ratio = tm.median_ms / t_ref.median_ms
        print(
            f"ours[{name}]: {tm.median_ms:.1f} ms (min {tm.min_ms:.1f}), peak {tm.peak_gib:.2f} GiB, "
            f"ratio {ratio:.3f}, max|d| {diff.max():.4g}, mean|d| {diff.mean():.4g}, ref scale {out_ref.abs().max():.3g}"
        )
        if not args.no_record:
            append_row(
                "Wan DiT forward: ours vs diffusers eager (same random weights, both from_pretrained in bf16)",
                HEADER,
                [
                    env["date"],
                    env["card"],
                    args.config,
                    f"{args.frames}x{args.height}x{args.width}, {tokens}",
                    args.dtype,
                    name,
                    f"{tm.median_ms:.1f}",
                    f"{t_ref.median_ms:.1f}",
                    f"{ratio:.3f}",
                    f"{tm.peak_gib:.2f}",
                    f"{t_ref.peak_gib:.2f}",
                    f"{diff.max():.3g}",
                    f"{diff.mean():.3g}",
                    f"torch {env['torch']}, diffusers {env['diffusers']}",
                    f"`{env['command']}`",
                ],
            )
    if len(refs) > 1 and not args.no_record:
        tm = refs[1][1]
        append_row(
            "Wan DiT forward: diffusers with its own regional compile (reference only)",
            [
                "date",
                "card",
                "config",
                "shape",
                "dtype",
                "diffusers compile_repeated_blocks ms",
                "diffusers eager ms",
                "peak GiB",
                "command",
            ],
            [
                env["date"],
                env["card"],
                args.config,
                f"{args.frames}x{args.height}x{args.width}, {tokens}",
                args.dtype,
                f"{tm.median_ms:.1f}",
                f"{t_ref.median_ms:.1f}",
                f"{tm.peak_gib:.2f}",
                f"`{env['command']}`",
            ],
        )


if __name__ == "__main__":
    main()
