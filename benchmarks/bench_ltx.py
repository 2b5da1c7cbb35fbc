"""LTX-Video 0.9.x on the GPU with random weights: the DiT forward against diffusers, and the distilled
multi-scale chain end to end.

    python benchmarks/bench_ltx.py dit --config ltx-video-2b --shapes 161x512x704,121x704x1216 --compile
    python benchmarks/bench_ltx.py chain --dit ltx-video-13b --frames 161 --height 512 --width 704
    python benchmarks/bench_ltx.py dit --tiny --device cpu --no-record --shapes 17x128x160   # CPU dry run

``dit``: diffusers' ``LTXVideoTransformer3DModel`` with random weights and ours with the same weights
(through the declared name mapping), both bf16 on the card; outputs compared, then each timed eager,
and compiled (ours: ``compile_blocks()``, diffusers: ``compile_repeated_blocks()``). The text is a
128-token T5 sequence with ``--text-valid`` real tokens (the rest masked, as the pipelines pass it).

``chain``: the 0.9.8-distilled preset's whole chain (first pass at 2/3 size on the distilled timestep
list, 2x latent upsampling, refine pass, VAE decode, resize) built in memory from the real configs
with random weights (DiT, T5-XXL, VAE, upsampler); one warm-up generation, then one timed, with the
per-stage timings. Rows go to docs/benchmarks.md (and ``$OUT/bench_rows.jsonl``).
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path
from typing import Any

import torch
from harness import append_row, environment, time_cuda

DIT_HEADER = [
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
    "ref scale",
    "command",
]
CHAIN_HEADER = ["date", "card", "DiT", "request (F x H x W)", "total s", "stages (s)", "peak GiB", "command"]


def tiny_config() -> dict[str, Any]:
    from fastvideo_ltx.ltxv.tiny import TINY_DIT

    return dict(TINY_DIT)


def dit_config(name: str, tiny: bool) -> dict[str, Any]:
    from fastvideo_ltx.ltxv.configs import CONFIGS

    cfg = tiny_config() if tiny else CONFIGS[name]
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build_pair(cfg: dict[str, Any], dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    """diffusers' model with random weights (N(0, 0.02)) and ours holding the very same tensors' values."""
    from diffusers import LTXVideoTransformer3DModel

    from fastvideo_ltx.ltxv.model import LTXVideoTransformer

    torch.manual_seed(0)
    with torch.device(device):
        ref = LTXVideoTransformer3DModel(**cfg)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    ref = ref.to(dtype).eval()
    ours = LTXVideoTransformer.from_config(cfg)  # meta
    state = LTXVideoTransformer.name_mapping.to_ours({k: v.clone() for k, v in ref.state_dict().items()})
    ours.load_state_dict(state, assign=True)
    return ref, ours.eval()


def shape_inputs(
    cfg: dict[str, Any], shape: str, text_valid: int, device: str, dtype: torch.dtype
) -> dict[str, Any]:
    """Inputs of one ``FxHxW`` request (pixels): latents, 128 T5 tokens (``text_valid`` unmasked), t = 500."""
    frames, height, width = (int(v) for v in shape.split("x"))
    f, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, cfg["in_channels"], f, h, w, device=device, generator=gen, dtype=dtype)
    text = torch.randn(1, 128, cfg["caption_channels"], device=device, generator=gen, dtype=dtype)
    mask = (torch.arange(128, device=device) < text_valid).long()[None]
    return {
        "shape": shape,
        "x": x,
        "text": text,
        "mask": mask,
        "t": torch.tensor([500.0], device=device),
        "grid": (f, h, w),
        "tokens": f * h * w,
    }


def runners(ref: Any, ours: Any, inp: dict[str, Any]) -> tuple[Any, Any]:
    from fastvideo.attention import use_backend

    x, text, t, mask, (f, h, w) = inp["x"], inp["text"], inp["t"], inp["mask"], inp["grid"]
    scale = (8 / 25, 32.0, 32.0)
    packed = x.flatten(2).transpose(1, 2)

    def run_ref() -> torch.Tensor:
        with torch.inference_mode():
            out = ref(packed, text, t, mask, f, h, w, scale, return_dict=False)[0]
            return out.transpose(1, 2).reshape(x.shape)

    def run_ours() -> torch.Tensor:
        with torch.inference_mode(), use_backend(None):  # as the pipeline runs it
            return ours(x, text, t, mask, scale)

    return run_ref, run_ours


def bench_dit(args: argparse.Namespace) -> None:
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cfg = dit_config(args.config, args.tiny)
    ref, ours = build_pair(cfg, dtype, args.device)
    inputs = [shape_inputs(cfg, s, args.text_valid, args.device, dtype) for s in args.shapes.split(",")]
    if args.device != "cuda":  # dry run: one call each, outputs compared
        for inp in inputs:
            run_ref, run_ours = runners(ref, ours, inp)
            d = (run_ours().float() - run_ref().float()).abs().max().item()
            print(
                f"dry run ({args.device}) {inp['shape']}: tokens={inp['tokens']}, max |ours - diffusers| = {d:.3g}"
            )
        return
    env = environment()
    ours.to("cuda")
    rows = []
    for inp in inputs:  # eager
        run_ref, run_ours = runners(ref, ours, inp)
        t_ref, out_ref = time_cuda("diffusers", run_ref, warmup=args.warmup, iters=args.iters)
        t_ours, out = time_cuda("ours", run_ours, warmup=args.warmup, iters=args.iters)
        rows.append((inp, "eager", t_ours, t_ref, out, out_ref))
    if args.compile:
        ref.compile_repeated_blocks()
        ours.compile_blocks()
        for inp in inputs:
            run_ref, run_ours = runners(ref, ours, inp)
            t_rc, out_rc = time_cuda(
                "diffusers-compiled", run_ref, warmup=max(args.warmup, 2), iters=args.iters
            )
            t_oc, out_c = time_cuda("ours-compiled", run_ours, warmup=max(args.warmup, 2), iters=args.iters)
            variant = "compiled (ours compile_blocks, diffusers compile_repeated_blocks)"
            rows.append((inp, variant, t_oc, t_rc, out_c, out_rc))
    print(f"{env['card']} torch {env['torch']} diffusers {env['diffusers']} {args.config}")
    for inp, variant, tm, tr, o, r in rows:
        diff = (o.float() - r.float()).abs()
        ratio = tm.median_ms / tr.median_ms
        print(
            f"{inp['shape']} ({inp['tokens']} tokens) [{variant}] ours {tm.median_ms:.1f} ms (peak {tm.peak_gib:.2f} GiB), "
            f"diffusers {tr.median_ms:.1f} ms (peak {tr.peak_gib:.2f} GiB), ratio {ratio:.3f}, max|d| {diff.max():.4g}, "
            f"ref scale {r.float().abs().max():.3g}"
        )
        if not args.no_record:
            append_row(
                "LTX-Video DiT forward: ours vs diffusers (same random weights, bf16, batch 1)",
                DIT_HEADER,
                [
                    env["date"],
                    env["card"],
                    args.config,
                    f"{inp['shape']}, {inp['tokens']}",
                    "bf16",
                    variant,
                    f"{tm.median_ms:.1f}",
                    f"{tr.median_ms:.1f}",
                    f"{ratio:.3f}",
                    f"{tm.peak_gib:.2f}",
                    f"{tr.peak_gib:.2f}",
                    f"{diff.max():.3g}",
                    f"{r.float().abs().max():.3g}",
                    env["command"],
                ],
            )


# ---------------------------------------------------------------- the multi-scale chain


def build_chain(dit: str, device: str, tiny: bool) -> Any:
    """The 0.9.8-distilled chain's pipeline from real configs (or the tiny ones) with random weights."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel
    from transformers import T5Config, T5EncoderModel

    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.pipelines.composed import ComposedPipeline
    from fastvideo_ltx.family import LTXVideoFamily
    from fastvideo_ltx.ltxv import configs
    from fastvideo_ltx.ltxv import tiny as tiny_mod
    from fastvideo_ltx.ltxv.model import LTXVideoTransformer
    from fastvideo_ltx.ltxv.multiscale import multiscale_stages
    from fastvideo_ltx.ltxv.presets import PRESET_OPTIONS

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    dev = torch.device(device)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: a 13B fp32 copy would not fit beside it
    try:
        with dev:
            if tiny:
                text_encoder, vae = (
                    tiny_mod.tiny_text_encoder(),
                    tiny_mod.tiny_vae(timestep_conditioning=True),
                )
                upsampler = tiny_mod.tiny_upsampler()
                dit_cfg = dit_config(dit, True)
            else:
                text_encoder = T5EncoderModel(T5Config(**configs.T5_XXL))
                vae = AutoencoderKLLTXVideo(**configs.VAE_095)
                upsampler = LTXLatentUpsamplerModel(**configs.UPSAMPLER_097)
                dit_cfg = dit_config(dit, False)
        transformer = LTXVideoTransformer.from_config(dit_cfg, device=device).eval()
    finally:
        torch.set_default_dtype(default)
    parts = {
        "device": dev,
        "tokenizer": tiny_mod.tiny_tokenizer(),
        "text_encoder": text_encoder.to(dtype).eval(),
        "vae": vae.to(dtype).eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0, shift_terminal=0.1),
        "transformer": transformer,
        "latent_upsampler": upsampler.to(dtype).eval(),
    }
    source = ModelSource(
        family=LTXVideoFamily, path=Path("."), model_index={"_class_name": "LTXConditionPipeline"}
    )
    options = PRESET_OPTIONS["ltx-video-0.9.8-13b-distilled"]
    stages = multiscale_stages(LTXVideoFamily, source, parts, options, PipelineConfig(device=device))
    return ComposedPipeline(stages, parts)


def bench_chain(args: argparse.Namespace) -> None:
    from fastvideo.configs import SamplingParams
    from fastvideo.pipelines.batch import ForwardBatch

    pipe = build_chain(args.dit, args.device, args.tiny)
    params = SamplingParams(
        prompt="a red ball",
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        guidance_scale=1.0,
        num_inference_steps=8,
        fps=24,
        max_sequence_length=128,
        seed=0,
    )
    dev = torch.device(args.device)
    runs = []
    for _ in range(1 if args.device != "cuda" else 2):  # warm-up, then timed
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        batch = pipe(ForwardBatch(params=params, device=dev))
        runs.append((time.perf_counter() - start, dict(batch.timings), batch.frames.shape))
        gc.collect()
    total, timings, shape = runs[-1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else math.nan
    stages = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if v >= 0.005)
    print(
        f"chain {args.dit} {args.frames}x{args.height}x{args.width}: {total:.2f} s, frames {shape}, peak {peak:.1f} GiB"
    )
    print(f"stages: {stages}")
    if args.device == "cuda" and not args.no_record:
        env = environment()
        append_row(
            "LTX-Video 0.9.8-distilled multi-scale chain end to end (random weights, bf16, eager)",
            CHAIN_HEADER,
            [
                env["date"],
                env["card"],
                args.dit,
                f"{args.frames}x{args.height}x{args.width}",
                f"{total:.2f}",
                stages,
                f"{peak:.1f}",
                env["command"],
            ],
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["dit", "chain"])
    ap.add_argument("--config", default="ltx-video-2b", help="dit: the DiT config")
    ap.add_argument("--dit", default="ltx-video-13b", help="chain: the DiT config")
    ap.add_argument(
        "--shapes", default="161x512x704,121x704x1216", help="dit: FxHxW requests, comma-separated"
    )
    ap.add_argument("--frames", type=int, default=161, help="chain: the request")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=704)
    ap.add_argument("--text-valid", type=int, default=96, help="unmasked text tokens of 128")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (dry runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    (bench_dit if args.what == "dit" else bench_chain)(args)


if __name__ == "__main__":
    main()
