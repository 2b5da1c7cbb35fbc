"""Parallel speed on one host, against one GPU of the same host in the same run (torchrun).

    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py dit --strategies ulysses,ring
    torchrun --nproc-per-node 4 benchmarks/bench_parallel.py dit --strategies ulysses,usp,ring
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py generate --steps 50

``dit``: Wan2.1-1.3B with random weights (bf16), one forward at 81x480x832 (32760 tokens, 512 text
tokens). Rank 0 first times the plain model alone (the other GPUs idle), then every rank runs it
under each sequence-parallel strategy; each timed iteration starts at a barrier and counts until the
slowest rank is done. The outputs are compared with the one-GPU output.

``generate``: the whole Wan T2V pipeline (umT5-XXL, DiT, VAE, UniPC; random weights, real sizes),
50 steps with CFG: on one GPU (rank 0 alone), then with CFG parallelism over two GPUs (each runs
one branch; the VAE's tiles are split too).

Rows go to docs/benchmarks.md (and ``$OUT/bench_rows.jsonl``) from rank 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import append_row, environment

DIT_HEADER = [
    "date",
    "card",
    "config",
    "shape (F x H x W, tokens)",
    "dtype",
    "strategy",
    "GPUs",
    "1 GPU ms",
    "N GPUs ms",
    "speedup",
    "target",
    "rel err vs 1 GPU",
    "peak GiB",
    "versions",
    "command",
]
GEN_HEADER = [
    "date",
    "card",
    "config",
    "shape (F x H x W)",
    "steps",
    "variant",
    "GPUs",
    "total s",
    "denoise s",
    "decode s",
    "text s",
    "speedup",
    "max abs diff latents",
    "versions",
    "command",
]
TARGETS = {2: 1.9, 4: 3.5}
#: NCCL settings worth naming in a row when set (channels: SMs taken from attention; stream priority).
NCCL_KNOBS = ("NCCL_MAX_NCHANNELS", "NCCL_MIN_NCHANNELS", "TORCH_NCCL_HIGH_PRIORITY")
DEVICE: list[torch.device] = [torch.device("cpu")]  # this rank's device, set in main()
#: --tiny: the tiny Wan DiT, umT5 and VAE of fastvideo_wan.tiny, the DiT with 4 heads, for a CPU smoke
#: test over gloo.
TINY_HEADS = dict(num_attention_heads=4, rope_max_seq_len=64)


def rank0_print(*args: Any) -> None:
    if dist.get_rank() == 0:
        print(*args, flush=True)


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], warmup: int, iters: int, *, together: bool) -> tuple[float, Any, float]:
    """Median wall time (ms) of ``fn``, its output, and the median time (ms) the host took to return
    from ``fn`` (all launches queued; near the wall time means the run is bound by the CPU). With
    ``together`` each run starts at a barrier and both times are the slowest rank's (max over ranks)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times, hosts = [], []
    for _ in range(iters):
        if together:
            dist.barrier()
        sync()
        start = time.perf_counter()
        out = fn()
        launched = time.perf_counter()
        sync()
        elapsed = torch.tensor([time.perf_counter() - start, launched - start], device=DEVICE[0])
        if together:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed[0]) * 1e3)
        hosts.append(float(elapsed[1]) * 1e3)
    return statistics.median(times), out, statistics.median(hosts)


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE[0].type == "cuda" else 0.0


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.float(), out.float()
    return float((out - ref).abs().max() / ref.abs().max())


def strategy_config(name: str, world: int) -> dict[str, int]:
    if name == "ulysses":
        return {"sp_size": world}
    if name == "ring":
        return {"sp_size": 1, "ring_size": world}
    if name == "usp":
        return {"sp_size": 2, "ring_size": world // 2}
    raise SystemExit(f"unknown strategy {name!r}; use ulysses, ring or usp")


# ---------------------------------------------------------------- DiT forward


def build_dit(args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> Any:
    """The DiT with random weights (the same on every rank); fp32 modules stay fp32, as when loaded."""
    from fastvideo_wan.configs import CONFIGS
    from fastvideo_wan.model import WanConfig, WanTransformer
    from fastvideo_wan.tiny import TINY_DIT

    torch.manual_seed(0)
    config = {**TINY_DIT, **TINY_HEADS} if args.tiny else CONFIGS[args.config]
    model = WanTransformer.from_config(WanConfig.from_diffusers_config(config), device=device)
    for name, p in model.named_parameters():
        if not model.is_fp32_param(name):
            p.data = p.data.to(dtype)
    return model.eval()


def bench_dit(args: argparse.Namespace) -> None:
    from fastvideo.attention import use_backend
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.sequence import SequenceSharding, head_groups
    from fastvideo.parallel.state import init_parallel, teardown

    rank, world = dist.get_rank(), dist.get_world_size()
    device = DEVICE[0]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_dit(args, dtype, device)
    cfg = model.config
    t_lat, h_lat, w_lat = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, cfg.in_channels, t_lat, h_lat, w_lat, device=device, generator=gen, dtype=dtype)
    text = torch.randn(1, args.text_len, cfg.text_dim, device=device, generator=gen, dtype=dtype)
    t = torch.tensor([500.0], device=device)
    tokens = t_lat * (h_lat // 2) * (w_lat // 2)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x, t, text)

    if args.compile:
        model.compile_blocks()
    env = environment()
    base_ms, ref = None, None
    with use_backend("sdpa"):
        if rank == 0:
            base_ms, ref, host_ms = timed(forward, args.warmup, args.iters, together=False)
            assert bool(ref.isfinite().all()), "the one-GPU output is not finite"
            print(
                f"{env['card']}: 1 GPU {base_ms:.1f} ms ({tokens} tokens), host {host_ms:.1f} ms", flush=True
            )
            if args.profile:
                print_profile(forward, "1 GPU", show=True)
        dist.barrier()
        runs = [
            (name, plan, exchange)
            for name in args.strategies.split(",")
            for plan in (args.head_groups if name != "ring" else [None])
            for exchange in (args.exchange.split(",") if name == "ulysses" else ["auto"])
        ]
        for name, plan, exchange in runs:
            # peer-rows: the peer exchange with one memcpy per contiguous piece instead of 2D copies
            os.environ["FASTVIDEO_PEER_MEMCPY2D"] = "0" if exchange == "peer-rows" else "1"
            rows, exchange = exchange == "peer-rows", exchange.replace("peer-rows", "peer")
            state = init_parallel(ParallelConfig(num_gpus=world, **strategy_config(name, world)), str(device))
            sharding = SequenceSharding(model, state, head_groups=plan, exchange=exchange)
            sharding.apply(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms, out, host_ms = timed(forward, args.warmup, args.iters, together=True)
            peak = peak_gib()
            if args.profile:  # every rank runs the forward (collectives), rank 0 prints
                print_profile(forward, f"{name} x{world}, head groups {plan}, {exchange}", show=rank == 0)
            if args.host_profile:
                print_host_profile(forward, show=rank == 0)
            if name != "ring":  # the groups actually used
                groups = head_groups(cfg.num_attention_heads // state.ulysses_size, plan)
                name = f"{name}, head groups {'+'.join(map(str, groups))}"
            if name.startswith("ulysses"):  # peer: copy engines through peer memory; nccl: all-to-all
                name += f", {sharding.last_exchange} exchange" + (" (a memcpy per piece)" if rows else "")
            name += "".join(f", {k}={os.environ[k]}" for k in NCCL_KNOBS if k in os.environ)
            sharding.remove(model)
            teardown()
            one_ms = base_ms
            if args.paired and rank == 0:  # one GPU again, right after: drift (clocks, heat) cancels
                after, _, _ = timed(forward, 1, args.iters, together=False)
                assert base_ms is not None
                one_ms, base_ms = (base_ms + after) / 2, after
                print(
                    f"1 GPU after: {after:.1f} ms; the speedup below is against {one_ms:.1f} ms", flush=True
                )
            dist.barrier()
            if rank == 0:
                assert one_ms is not None and ref is not None
                speedup, err = one_ms / ms, rel_err(ref, out)
                print(
                    f"{name} x{world}: {ms:.1f} ms, speedup {speedup:.2f}x (target {TARGETS.get(world, '-')}), "
                    f"rel err {err:.2e}, peak {peak:.2f} GiB, host {host_ms:.1f} ms",
                    flush=True,
                )
                if not args.no_record and not args.tiny:
                    append_row(
                        "Parallel DiT forward: Wan 1.3B on N GPUs vs 1 GPU of the same host",
                        DIT_HEADER,
                        [
                            env["date"],
                            env["card"],
                            args.config,
                            f"{args.frames}x{args.height}x{args.width}, {tokens}",
                            "bf16" + (" compiled" if args.compile else ""),
                            name,
                            world,
                            f"{one_ms:.1f}",
                            f"{ms:.1f}",
                            f"{speedup:.2f}x",
                            f">= {TARGETS.get(world, '-')}x",
                            f"{err:.2e}",
                            f"{peak:.2f}",
                            f"torch {env['torch']}",
                            f"`torchrun --nproc-per-node {world} {' '.join(sys.argv)}`",
                        ],
                    )


def parse_plan(text: str) -> int | tuple[int, ...] | None:
    if text == "default":
        return None
    sizes = tuple(int(p) for p in text.split(","))
    return sizes[0] if len(sizes) == 1 else sizes


def print_host_profile(fn: Callable[[], Any], *, show: bool, calls: int = 3) -> None:
    """cProfile ``calls`` calls of ``fn`` (the host side only: what Python and the launches cost)."""
    import cProfile
    import io
    import pstats

    sync()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    if show:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        print(f"--- host profile, {calls} calls\n{text.getvalue()}", flush=True)


def print_profile(fn: Callable[[], Any], title: str, *, show: bool) -> None:
    """Profile one call of ``fn`` (on every rank that calls this; ``show``: print). Prints the kernels
    by GPU time and where the GPU sat idle: the span from the first kernel to the last, the time no
    kernel ran on any stream, and the longest such gaps with the kernels around them."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    sync()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    wall = (time.perf_counter() - start) * 1e3
    if not show:
        return
    print(f"--- profile: {title} (wall {wall:.1f} ms under the profiler)", flush=True)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    kernels = sorted(
        [
            (e["ts"], e["ts"] + e["dur"], e["name"], e.get("args", {}).get("stream"))
            for e in events
            if e.get("cat") == "kernel" and "dur" in e and "barrier" not in e["name"].lower()
        ],
        key=lambda k: k[0],
    )  # barrier kernels (peer exchange) spin while they wait: not work
    if not kernels:
        return
    busy, gaps, end, before = 0.0, [], kernels[0][0], kernels[0][2]
    for k0, k1, name, _ in kernels:  # union of kernel intervals over all streams
        if k0 > end:
            gaps.append((k0 - end, before, name))
        if k1 > end:
            busy += k1 - max(k0, end)
            end, before = k1, name
    span = (end - kernels[0][0]) / 1e3
    idle = sum(g for g, _, _ in gaps) / 1e3
    print(f"GPU span {span:.1f} ms, busy {busy / 1e3:.1f} ms, idle {idle:.1f} ms in {len(gaps)} gaps")
    for gap, a, b in sorted(gaps, reverse=True)[:12]:
        print(f"  gap {gap / 1e3:7.3f} ms after {a[:60]!r} before {b[:60]!r}")
    small = [g for g, _, _ in gaps if g < 50]
    print(f"  gaps under 50 us: {len(small)}, {sum(small) / 1e3:.1f} ms", flush=True)
    per_stream: dict[Any, float] = {}
    for k0, k1, _, stream in kernels:
        per_stream[stream] = per_stream.get(stream, 0.0) + (k1 - k0)
    print("  kernel time per stream: " + ", ".join(f"{s}: {t / 1e3:.1f} ms" for s, t in per_stream.items()))
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "dur" in e]
    if copies:  # copy-engine work (the peer exchange's chunks)
        total = sum(e["dur"] for e in copies) / 1e3
        moved = sum(e.get("args", {}).get("bytes", 0) for e in copies)
        rate = moved / (total * 1e-3) / 1e9 if total else 0.0
        print(
            f"  memcpys: {len(copies)}, {total:.1f} ms, {moved / 2**30:.2f} GiB, {rate:.0f} GB/s while copying"
        )
    main = max(per_stream, key=lambda s: per_stream[s])  # the compute stream: where it waited
    waits = []
    prev = None
    for k0, k1, name, stream in kernels:
        if stream != main:
            continue
        if prev is not None and k0 - prev[0] > 20:
            waits.append((k0 - prev[0], prev[1], name))
        prev = (k1, name)
    total_wait = sum(w for w, _, _ in waits) / 1e3
    print(f"  compute stream {main}: {len(waits)} waits over 20 us, {total_wait:.1f} ms; by kernel pair:")
    pairs: dict[tuple[str, str], list[float]] = {}
    for w, a, b in waits:
        pairs.setdefault((a[:50], b[:50]), []).append(w)
    for (a, b), ws in sorted(pairs.items(), key=lambda kv: -sum(kv[1]))[:10]:
        print(
            f"    {len(ws):4d} x {sum(ws) / len(ws):7.1f} us = {sum(ws) / 1e3:6.2f} ms  after {a!r} before {b!r}"
        )
    sys.stdout.flush()


# ---------------------------------------------------------------- whole generation with CFG parallel


UMT5_XXL = dict(
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    vocab_size=256384,
)


def build_pipeline(args: argparse.Namespace, device: torch.device) -> Any:
    """The Wan T2V stages over real-size components with random weights (nothing is downloaded)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from fastvideo.pipelines.composed import ComposedPipeline
    from fastvideo.pipelines.stages import (
        DecodingStage,
        LatentPreparationStage,
        T5TextEncoder,
        TextEncodingStage,
        TimestepPreparationStage,
    )
    from fastvideo_wan.pipeline import WanDenoisingStage, wan_latents
    from fastvideo_wan.presets import NEGATIVE_PROMPT
    from fastvideo_wan.tiny import TINY_UMT5, TINY_VAE, tiny_tokenizer

    low = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit = build_dit(args, low, device)
    torch.manual_seed(1)
    with torch.device(device):
        umt5 = {**TINY_UMT5, "vocab_size": 128} if args.tiny else UMT5_XXL
        encoder = UMT5EncoderModel(UMT5Config(**umt5)).to(low).eval()
        vae = AutoencoderKLWan(
            **(TINY_VAE if args.tiny else {})
        ).eval()  # the Wan2.1 VAE's architecture, fp32
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    geometry = wan_latents(vae)
    stages = [
        TextEncodingStage(
            [T5TextEncoder(tiny_tokenizer(), encoder)], default_negative_prompt=NEGATIVE_PROMPT
        ),
        TimestepPreparationStage(scheduler),
        LatentPreparationStage(geometry.shape),
        WanDenoisingStage(dit),
        DecodingStage(vae, geometry.denormalize, tiling=args.vae_tiling),
    ]
    return ComposedPipeline(
        stages, {"device": device, "transformer": dit, "text_encoder": encoder, "vae": vae}
    )


def run_pipeline(pipeline: Any, args: argparse.Namespace, device: torch.device) -> tuple[float, Any]:
    from fastvideo.attention import use_backend
    from fastvideo.configs import SamplingParams
    from fastvideo.pipelines.batch import ForwardBatch

    params = SamplingParams(
        prompt="a corgi surfing a wave at sunset",
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=5.0,
        seed=0,
    )
    batch = ForwardBatch(params=params, device=device, generator=torch.Generator().manual_seed(0))
    sync()
    start = time.perf_counter()
    with use_backend("sdpa"):
        batch = pipeline(batch)
    sync()
    return time.perf_counter() - start, batch


def bench_generate(args: argparse.Namespace) -> None:
    from fastvideo import progress
    from fastvideo.configs import ParallelConfig, PipelineConfig
    from fastvideo.parallel.state import init_parallel, teardown
    from fastvideo.transforms import apply_transforms

    rank, world = dist.get_rank(), dist.get_world_size()
    if world != 2:
        raise SystemExit("generate compares CFG parallelism on 2 GPUs: torchrun --nproc-per-node 2")
    progress.set_enabled(False)
    device = DEVICE[0]
    pipeline = build_pipeline(args, device)
    env = environment()
    rows = []
    base = None
    if rank == 0:  # one GPU: both CFG branches here, the other GPU idle
        run_pipeline(pipeline, argparse.Namespace(**{**vars(args), "steps": 2}), device)  # warm-up
        base = run_pipeline(pipeline, args, device)
        rows.append(("1 GPU", 1, *base))
        print(
            f"1 GPU: {base[0]:.1f} s { ({k: round(v, 2) for k, v in base[1].timings.items()}) }", flush=True
        )
    dist.barrier()
    par_config = ParallelConfig(num_gpus=2, cfg_parallel=True)
    init_parallel(par_config, str(device))
    apply_transforms(pipeline, PipelineConfig(parallel=par_config))  # CFG-parallel guidance, parallel VAE
    run_pipeline(pipeline, argparse.Namespace(**{**vars(args), "steps": 2}), device)  # warm-up
    dist.barrier()
    par = run_pipeline(pipeline, args, device)
    teardown()
    if rank != 0:
        return
    assert base is not None
    rows.append(("CFG parallel", 2, *par))
    diff = float((par[1].latents - base[1].latents).abs().max())
    for variant, gpus, total, batch in rows:
        t = batch.timings
        speedup = base[0] / total
        print(
            f"{variant}: {total:.1f} s, speedup {speedup:.2f}x, max |latents - 1 GPU| {diff if gpus > 1 else 0:.3g}, "
            f"{ ({k: round(v, 2) for k, v in t.items()}) }",
            flush=True,
        )
        if not args.no_record and not args.tiny:
            append_row(
                "Whole generation: Wan 1.3B T2V, 50 steps with CFG, CFG parallel on 2 GPUs vs 1 GPU",
                GEN_HEADER,
                [
                    env["date"],
                    env["card"],
                    args.config,
                    f"{args.frames}x{args.height}x{args.width}",
                    args.steps,
                    variant + (", VAE tiles split" if gpus > 1 and args.vae_tiling else ""),
                    gpus,
                    f"{total:.1f}",
                    f"{t['denoising']:.1f}",
                    f"{t['decoding']:.2f}",
                    f"{t['text_encoding']:.2f}",
                    f"{speedup:.2f}x",
                    f"{diff if gpus > 1 else 0:.3g}",
                    f"torch {env['torch']}",
                    f"`torchrun --nproc-per-node {world} {' '.join(sys.argv)}`",
                ],
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["dit", "generate"])
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--strategies", default="ulysses,ring", help="dit: comma-separated ulysses, ring, usp")
    ap.add_argument(
        "--head-groups",
        type=lambda s: [parse_plan(p) for p in s.split()],
        default=[None],
        help="dit: Ulysses head-group plans to compare, space-separated: default, a number of equal "
        "groups (3) or sizes (1,4,1)",
    )
    ap.add_argument(
        "--exchange",
        default="auto",
        help="dit: Ulysses exchanges to compare, comma-separated: nccl (all-to-all), peer (copy engines "
        "through peer memory; peer-rows: one memcpy per contiguous piece instead of one 2D copy per peer), "
        "auto",
    )
    ap.add_argument(
        "--paired",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dit: time one GPU again after each parallel run and compare against the mean of the one-GPU "
        "times before and after it (cancels drift over the run)",
    )
    ap.add_argument("--host-profile", action="store_true", help="dit: cProfile rank 0's host side")
    ap.add_argument("--profile", action="store_true", help="dit: print rank 0's kernel table per strategy")
    ap.add_argument("--steps", type=int, default=50, help="generate: denoising steps")
    ap.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate: tiled VAE decode (tiles split over the GPUs in the parallel run)",
    )
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="dit: regional torch.compile of the blocks")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument(
        "--tiny", action="store_true", help="a tiny model on CPU over gloo (smoke test; records nothing)"
    )
    args = ap.parse_args()
    if "LOCAL_RANK" not in os.environ:
        raise SystemExit("run under torchrun: torchrun --nproc-per-node N benchmarks/bench_parallel.py ...")
    if args.tiny:
        dist.init_process_group("gloo")
    else:
        DEVICE[0] = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(DEVICE[0])
        dist.init_process_group("nccl")
    try:
        bench_dit(args) if args.mode == "dit" else bench_generate(args)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
