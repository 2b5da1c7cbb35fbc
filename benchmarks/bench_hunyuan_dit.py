"""One HunyuanVideo DiT forward, ours against diffusers' ``HunyuanVideoTransformer3DModel``, same random weights.

    PYTHONPATH=core/src:plugins/fastvideo-hunyuan/src python benchmarks/bench_hunyuan_dit.py \\
        --frames 125 --height 720 --width 1280

Builds diffusers' 13B model directly in bf16 on the GPU with random weights, gives ours the very same
tensors through the declared name mapping (no copy: both models fit on one card), checks that the
outputs agree, then times each model (warm-up, then the median of ``--iters`` forwards) and appends a
row to docs/benchmarks.md (and ``$OUT/bench_rows.jsonl``). The text input is padded to ``--text-len``
tokens of which ``--valid-text`` are valid, as the pipelines produce it. A short SDPA micro-benchmark at
the joint-attention shape shows what diffusers' text mask costs.

``--config tiny --device cpu`` runs the same code at toy size on a CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any

import torch
from harness import append_row, environment, time_cpu, time_cuda

HEADER = [
    "date",
    "card",
    "shape (F x H x W, video + text tokens)",
    "dtype",
    "variant",
    "ours ms",
    "diffusers ms",
    "ratio",
    "ours peak GiB",
    "diffusers peak GiB",
    "max abs diff / max abs ref",
    "versions",
    "command",
]


def log(msg: str) -> None:
    print(msg, flush=True)


def build_models(
    config: dict[str, Any], dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[Any, Any]:
    """diffusers' model with random weights, and ours holding the same tensors."""
    from diffusers import HunyuanVideoTransformer3DModel

    from fastvideo_hunyuan.convert import diffusers_to_ours
    from fastvideo_hunyuan.model import HunyuanTransformer

    with torch.device("meta"):
        ref = HunyuanVideoTransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    ref = ref.to(dtype=dtype).to_empty(device=device)  # allocate in the target dtype only (13B: 24 GiB bf16)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():  # random values everywhere, small enough to stay finite through 60 blocks
        for name, p in ref.named_parameters():
            p.normal_(0.0, 0.02, generator=gen)
            if "norm" in name and name.endswith("weight") and "linear" not in name:
                p.add_(1.0)  # RMSNorm / LayerNorm scales around one
    assert not list(ref.buffers()), "unexpected buffers: to_empty left them uninitialized"
    ours = HunyuanTransformer.from_config(config, device="meta")
    ours.load_state_dict(diffusers_to_ours(ref.state_dict()), strict=True, assign=True)  # shares storage
    return ref.eval(), ours.eval()


def dense_flops(config: dict[str, Any], video: int, text: int) -> float:
    """FLOPs of one forward: 2 x weights x tokens for the linear layers, 4 L^2 D per joint attention."""
    d, m = config["num_attention_heads"] * config["attention_head_dim"], config["mlp_ratio"]
    double = 2 * (4 * d * d + 2 * d * d * m) * (video + text)  # q, k, v, o and the MLP of each stream
    single = 2 * (3 * d * d + d * d * m + (d + d * m) * d) * (video + text)
    attn = 4 * (video + text) ** 2 * d
    layers = config["num_layers"] + config["num_single_layers"]
    return config["num_layers"] * double + config["num_single_layers"] * single + layers * attn


def sdpa_micro(heads: int, head_dim: int, tokens: int, dtype: torch.dtype, iters: int) -> list[str]:
    """Joint attention at the model's shape: unmasked (ours) vs diffusers' boolean key mask."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, heads, tokens, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    mask = torch.ones(1, 1, 1, tokens, device="cuda", dtype=torch.bool)
    mask[..., -tokens // 1000 - 1 :] = False  # a few padded text keys
    rows = []
    cases = [("no mask, default order", None, None), ("bool mask, default order", mask, None)]
    cases += [
        (f"bool mask, {b.name}", mask, b)
        for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
    ]
    cases += [("no mask, CUDNN_ATTENTION", None, SDPBackend.CUDNN_ATTENTION)]
    for label, m, backend in cases:

        def run(m: torch.Tensor | None = m, backend: Any = backend) -> torch.Tensor:
            if backend is None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

        try:
            t, _ = time_cuda(label, run, warmup=1, iters=iters)
            rows.append(f"  sdpa {label}: {t.median_ms:.1f} ms")
        except RuntimeError as e:  # a kernel that cannot take these inputs
            rows.append(f"  sdpa {label}: unavailable ({str(e).splitlines()[0][:80]})")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--config", default="hunyuanvideo-t2v-13b", help="a key of fastvideo_hunyuan.configs.CONFIGS, or tiny"
    )
    ap.add_argument("--frames", type=int, default=125)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument(
        "--text-len", type=int, default=256, help="padded text length (the pipeline's max_sequence_length)"
    )
    ap.add_argument("--valid-text", type=int, default=128, help="valid (prompt) tokens among --text-len")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument(
        "--compile", action="store_true", help="also time ours with compile_blocks() (adds ~1-2 min)"
    )
    ap.add_argument("--no-micro", action="store_true", help="skip the SDPA mask micro-benchmark")
    ap.add_argument("--num-layers", type=int, help="override the dual-stream block count (quick runs)")
    ap.add_argument("--num-single-layers", type=int, help="override the single-stream block count")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    if not 1 <= args.valid_text <= args.text_len:
        sys.exit(f"--valid-text must be in [1, --text-len={args.text_len}], got {args.valid_text}")

    from fastvideo.attention import use_backend
    from fastvideo_hunyuan.configs import CONFIGS
    from fastvideo_hunyuan.tiny import TINY_DIT

    config = dict(TINY_DIT) if args.config == "tiny" else dict(CONFIGS[args.config])
    for key in ("num_layers", "num_single_layers"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    start = time.perf_counter()
    ref, ours = build_models(config, dtype, device, seed=0)
    log(
        f"built both models ({sum(p.numel() for p in ours.parameters()) / 1e9:.2f}B parameters, shared) "
        f"in {time.perf_counter() - start:.1f} s"
    )

    gen = torch.Generator(device=device).manual_seed(1)
    t_lat, h_lat, w_lat = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    x = torch.randn(1, config["in_channels"], t_lat, h_lat, w_lat, device=device, generator=gen, dtype=dtype)
    text = torch.randn(1, args.text_len, config["text_embed_dim"], device=device, generator=gen, dtype=dtype)
    mask = torch.zeros(1, args.text_len, device=device, dtype=torch.int64)
    mask[:, : args.valid_text] = 1
    pooled = torch.randn(1, config["pooled_projection_dim"], device=device, generator=gen, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    guidance = torch.tensor([6.0], device=device, dtype=dtype) * 1000.0
    grid = ours.token_grid(x.shape)
    video_tokens = grid[0] * grid[1] * grid[2]
    log(
        f"latent {tuple(x.shape)} -> {video_tokens} video tokens + {args.text_len} text ({args.valid_text} valid)"
    )

    def run_ref() -> torch.Tensor:
        with torch.inference_mode():
            return ref(x, t, text, mask, pooled, guidance, return_dict=False)[0]

    def run_ours() -> torch.Tensor:
        with torch.inference_mode(), use_backend("sdpa"):
            return ours(x, t, text, mask, pooled, guidance)

    timer = time_cuda if device.type == "cuda" else time_cpu
    t_ref, out_ref = timer("diffusers", run_ref, warmup=args.warmup, iters=args.iters)
    out_ref = out_ref.float().cpu()
    log(f"diffusers: {t_ref.median_ms:.1f} ms (min {t_ref.min_ms:.1f}), peak {t_ref.peak_gib:.2f} GiB")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    results = []
    t_ours, out = timer("ours", run_ours, warmup=args.warmup, iters=args.iters)
    results.append(("eager", t_ours, out.float().cpu()))
    if args.compile:
        ours.compile_blocks()
        t_c, out = timer("ours-compiled", run_ours, warmup=max(args.warmup, 1), iters=args.iters)
        results.append(("compile_blocks", t_c, out.float().cpu()))

    env = environment()
    flops = dense_flops(config, video_tokens, args.valid_text)
    log(
        f"{env['card']} torch {env['torch']} diffusers {env['diffusers']}; dense forward ~{flops / 1e15:.2f} PFLOP"
    )
    for name, tm, out in results:
        rel = ((out - out_ref).abs().max() / out_ref.abs().max()).item()
        ratio = tm.median_ms / t_ref.median_ms
        log(
            f"ours[{name}]: {tm.median_ms:.1f} ms (min {tm.min_ms:.1f}), peak {tm.peak_gib:.2f} GiB, "
            f"ratio {ratio:.3f} (target <= 0.75), {flops / tm.median_ms / 1e9:.0f} TFLOP/s, "
            f"max|d|/max|ref| {rel:.3g} (ref scale {out_ref.abs().max():.3g})"
        )
        full = args.num_layers is None and args.num_single_layers is None and args.config != "tiny"
        if not args.no_record and device.type == "cuda" and full:
            append_row(
                "HunyuanVideo DiT forward: ours vs diffusers (same random weights)",
                HEADER,
                [
                    env["date"],
                    env["card"],
                    f"{args.frames}x{args.height}x{args.width}, {video_tokens} + {args.valid_text}/{args.text_len}",
                    args.dtype,
                    name,
                    f"{tm.median_ms:.1f}",
                    f"{t_ref.median_ms:.1f}",
                    f"{ratio:.3f}",
                    f"{tm.peak_gib:.2f}",
                    f"{t_ref.peak_gib:.2f}",
                    f"{rel:.3g}",
                    f"torch {env['torch']}, diffusers {env['diffusers']}",
                    f"`{env['command']}`",
                ],
            )
    if device.type == "cuda" and not args.no_micro:
        del ref, ours, out, out_ref, results
        gc.collect()
        torch.cuda.empty_cache()
        heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
        log(f"SDPA at the joint-attention shape [1, {heads}, {video_tokens + args.text_len}, {head_dim}]:")
        for row in sdpa_micro(heads, head_dim, video_tokens + args.text_len, dtype, iters=3):
            log(row)


if __name__ == "__main__":
    main()
