"""Cosmos-Predict2-2B Video2World with random weights: the DiT forward, ours against diffusers'
``CosmosTransformer3DModel`` (eager, then each regionally compiled), and one whole generation stage
by stage.

    python benchmarks/bench_cosmos.py                     # 93 x 704 x 1280 (24 x 88 x 160 latents, 84480 tokens)
    python benchmarks/bench_cosmos.py --tiny --no-record  # CPU dry run at tiny sizes

The DiT: diffusers' model is built with random weights on the device and ours takes the very same
tensors through the declared name mapping (no copy), so both read identical weights; inputs are a
Video2World step's (per-frame timesteps with the first latent frame conditioned, the condition-mask
and padding-mask channels, fps 16, 512 text tokens). Each model is timed alone. diffusers 0.42.1's
Cosmos model declares no ``_repeated_blocks``, so its regional compile is ``block.compile()`` on each
of its ``transformer_blocks`` (what ``compile_repeated_blocks`` does); ours is ``compile_blocks()``.
On CUDA the two models' timed calls alternate (diffusers, ours, diffusers, ours, ...) so that both
run on a card in the same state; timed one model after the other, the second ran on a card the first
had kept busy. (On one H100, 2026-12-06, the ratio was the same either way: 0.802 interleaved over 5
calls each, 0.799-0.802 sequential.)

The generation: a diffusers-format Video2World folder of random weights at real sizes (T5-11B
encoder, Wan VAE, the 2B DiT), loaded by ``VideoGenerator.from_pretrained(..., guardrail=False)``,
one 93-frame 704x1280 video from an image with CFG, ``--steps`` steps (35 published; each step costs
the same, so the denoising time scales linearly), eager DiT. Rows go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HEADER = [
    "date",
    "card",
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
    "versions",
]


def dit_config(tiny: bool) -> dict[str, Any]:
    from fastvideo_cosmos.configs import CONFIGS
    from fastvideo_cosmos.tiny import TINY_DIT

    cfg = dict(TINY_DIT) if tiny else {k: v for k, v in CONFIGS["cosmos-predict2-2b-video2world"].items()}
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def bench_dit(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[list[Any]]:
    from diffusers import CosmosTransformer3DModel

    from fastvideo.attention import use_backend
    from fastvideo_cosmos.compat import patch_diffusers_resize
    from fastvideo_cosmos.convert import MAPPING
    from fastvideo_cosmos.model import CosmosTransformer

    patch_diffusers_resize()
    cfg = dit_config(args.tiny)
    torch.manual_seed(0)
    with torch.device(device):
        ref = CosmosTransformer3DModel(**cfg).to(dtype).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.normal_(1.0 if name.endswith(("norm_q.weight", "norm_k.weight", "norm.weight")) else 0.0, 0.02)
    with torch.device("meta"):
        ours = CosmosTransformer(CosmosTransformer.parse_config(dict(ref.config)))
    ours.load_state_dict(MAPPING.to_ours(ref.state_dict()), assign=True)  # the same tensors
    ours.eval()
    t_lat, h_lat, w_lat = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, 16, t_lat, h_lat, w_lat, device=device, dtype=dtype, generator=gen)
    t = torch.full((1, 1, t_lat, 1, 1), 0.5, device=device, dtype=dtype)
    t[:, :, 0] = 1e-4 / (1 + 1e-4)  # the conditioning frame
    text = torch.randn(1, args.text_len, cfg["text_embed_dim"], device=device, dtype=dtype, generator=gen)
    mask = torch.zeros(1, 1, t_lat, h_lat, w_lat, device=device, dtype=dtype)
    mask[:, :, 0] = 1
    pad = torch.zeros(1, 1, args.height, args.width, device=device, dtype=dtype)
    tokens = t_lat * (h_lat // 2) * (w_lat // 2)
    kw = dict(fps=16, condition_mask=mask, padding_mask=pad)

    def run_ref() -> torch.Tensor:
        with torch.inference_mode():
            return ref(x, t, text, **kw, return_dict=False)[0]

    def run_ours() -> torch.Tensor:
        with torch.inference_mode(), use_backend(args.backend):  # as the pipeline runs it (None: the default)
            return ours(x, t, text, **kw)

    fns = {"diffusers": run_ref, "ours": run_ours}
    results = _time_both(fns, device, args, "eager", args.warmup)
    rows = [_row(args, "eager", tokens, results["ours"], results["diffusers"])]
    if args.compile:
        for block in ref.transformer_blocks:  # diffusers' regional compile of this model
            block.compile()
        ours.compile_blocks()
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            print(f"{name} compiled: first call {time.perf_counter() - start:.1f} s", flush=True)
        results = _time_both(fns, device, args, "compiled", max(args.warmup - 1, 1))
        rows.append(
            _row(args, "regional compile (each block)", tokens, results["ours"], results["diffusers"])
        )
    return rows  # the models go with this frame


def _time_both(
    fns: dict[str, Any], device: torch.device, args: argparse.Namespace, label: str, warmup: int
) -> dict[str, Any]:
    """{name: (median ms, peak GiB, output on the CPU)}; on CUDA the two models' timed calls alternate
    (``harness.time_interleaved``) so that neither runs on a card the other has heated."""
    gc.collect()
    if device.type == "cuda":
        from harness import time_interleaved

        timings = time_interleaved(fns, warmup=warmup, iters=args.iters)
        results = {n: (t.median_ms, t.peak_gib, out.float().cpu()) for n, (t, out) in timings.items()}
        for n, (t, _) in timings.items():
            runs = ", ".join(f"{x:.1f}" for x in t.times_ms)
            print(f"{n} {label}: {t.median_ms:.1f} ms (calls {runs}), peak {t.peak_gib:.2f} GiB", flush=True)
        return results
    from harness import time_cpu

    results = {}
    for name, fn in fns.items():
        t, out = time_cpu(name, fn, warmup=warmup, iters=args.iters)
        results[name] = (t.median_ms, t.peak_gib, out.float().cpu())
        print(f"{name} {label}: {t.median_ms:.1f} ms", flush=True)
    return results


def _row(args: argparse.Namespace, variant: str, tokens: int, ours: Any, theirs: Any) -> list[Any]:
    from harness import environment

    env = (
        environment()
        if args.device == "cuda"
        else {"date": "-", "card": "cpu", "torch": torch.__version__, "diffusers": "-"}
    )
    if variant == "eager" and args.device == "cuda":  # our eager forward with or without fastvideo.kernels
        variant += ", FASTVIDEO_FUSED=0" if os.environ.get("FASTVIDEO_FUSED") == "0" else ", fused kernels"
    if args.backend:
        variant += f", attention backend {args.backend}"
    diff = (ours[2] - theirs[2]).abs().max().item()
    scale = theirs[2].abs().max().item()
    print(f"ours/diffusers [{variant}]: {ours[0] / theirs[0]:.3f}; max|d| {diff:.3g} (ref scale {scale:.3g})")
    return [
        env["date"],
        env["card"],
        f"{args.frames}x{args.height}x{args.width}, {tokens}",
        args.dtype,
        variant,
        f"{ours[0]:.1f}",
        f"{theirs[0]:.1f}",
        f"{ours[0] / theirs[0]:.3f}",
        f"{ours[1]:.2f}",
        f"{theirs[1]:.2f}",
        f"{diff:.3g}",
        f"{scale:.3g}",
        f"torch {env['torch']}, diffusers {env['diffusers']}",
    ]


def write_checkpoint(folder: Path, args: argparse.Namespace, device: torch.device) -> None:
    """A diffusers Cosmos2VideoToWorldPipeline folder of random weights (real sizes unless --tiny)."""
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    from fastvideo_cosmos.tiny import StandInSafetyChecker, tiny_predict2, tiny_t5

    if args.tiny:
        tiny_predict2("video2world").save_pretrained(folder)
        return
    from diffusers import Cosmos2VideoToWorldPipeline

    tokenizer, _ = tiny_t5()  # a real T5 vocabulary needs a download; the encoder below is T5-11B sized
    t5 = T5Config(
        vocab_size=32128,
        d_model=1024,
        d_kv=128,
        d_ff=65536,
        num_layers=args.t5_layers,
        num_heads=128,
        feed_forward_proj="relu",
    )

    def random(module: torch.nn.Module) -> torch.nn.Module:
        module.to_empty(device=device)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.normal_(
                    1.0 if name.endswith(("norm_q.weight", "norm_k.weight", "norm.weight")) else 0.0, 0.02
                )
            for b in module.buffers():
                b.zero_()
        return module.to(torch.bfloat16)

    with torch.device("meta"):
        text_encoder = T5EncoderModel(t5)
        dit = CosmosTransformer3DModel(**dit_config(False))
    text_encoder, dit = random(text_encoder), random(dit)
    vae = AutoencoderKLWan().to(device)  # the Wan2.1 VAE's architecture (its defaults), random
    pipe = Cosmos2VideoToWorldPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=dit,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=StandInSafetyChecker(),
    )
    pipe.save_pretrained(folder)
    del pipe, text_encoder, dit, vae
    gc.collect()
    torch.cuda.empty_cache()


def bench_generation(args: argparse.Namespace, device: torch.device) -> list[Any]:
    import numpy as np
    from PIL import Image

    from fastvideo import VideoGenerator

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cosmos-v2w"
        start = time.perf_counter()
        write_checkpoint(folder, args, device)
        written = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the pipeline's own peak, not the writer's
        image = Path(tmp) / "first.png"
        Image.fromarray(
            np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), np.uint8)
        ).save(image)
        start = time.perf_counter()
        gen = VideoGenerator.from_pretrained(
            folder,
            device=args.device,
            guardrail=False,
            progress=False,
            compile=False,
            dtype="bf16" if device.type == "cuda" else "fp32",
        )
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        res = gen.generate_video(
            "a robot arm picks up a red cup",
            image=str(image),
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            fps=16,
            output_path=None,
        )
        total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    stages = {k: round(v, 2) for k, v in res.timings.items()}
    per_step = res.timings.get("denoising", 0.0) / args.steps
    print(
        f"generation {args.frames}x{args.height}x{args.width}, {args.steps} steps with CFG: {total:.1f} s; stages "
        f"{stages}; denoising {per_step:.2f} s/step -> 35 steps {35 * per_step:.0f} s; checkpoint written in "
        f"{written:.0f} s, loaded in {loaded:.0f} s, peak {peak:.1f} GiB",
        flush=True,
    )
    return [
        args.steps,
        f"{total:.1f}",
        stages,
        f"{per_step:.2f}",
        f"{35 * per_step:.0f}",
        f"{loaded:.0f}",
        f"{peak:.1f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=93)
    ap.add_argument("--height", type=int, default=704)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--steps", type=int, default=3, help="denoising steps of the end-to-end run")
    ap.add_argument("--t5-layers", type=int, default=24, help="T5-11B has 24 encoder layers")
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (a dry run of this script)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--backend", default=None, help="our attention backend (default: the pipeline's, sdpa)")
    args = ap.parse_args()
    if args.tiny:
        args.frames, args.height, args.width, args.text_len, args.dtype, args.steps = 9, 32, 48, 16, "fp32", 2
    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    rows = bench_dit(args, device, dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.no_record:  # recorded (and copied to $OUT) before the longer generation starts
        from harness import append_row

        for row in rows:
            append_row(
                "Cosmos-Predict2-2B Video2World DiT forward: ours vs diffusers (random weights)", HEADER, row
            )
    if args.skip_generation:
        return
    gen_row = bench_generation(args, device)
    if not args.no_record:
        from harness import append_row, environment

        env = environment()
        append_row(
            "Cosmos-Predict2-2B Video2World generation, stage by stage (random weights, eager DiT, bf16)",
            [
                "date",
                "card",
                "shape",
                "steps",
                "total s",
                "stage seconds",
                "denoising s/step",
                "35 steps s (est.)",
                "load s",
                "peak GiB",
            ],
            [env["date"], env["card"], f"{args.frames}x{args.height}x{args.width}", *gen_row],
        )


if __name__ == "__main__":
    main()
