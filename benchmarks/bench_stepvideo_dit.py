"""Step-Video-T2V's 30B DiT, random weights (bf16), one forward at the official default 204x544x992
(36 x 34 x 62 latent = 75,888 video tokens, 320 Step-LLM + 77 CLIP text tokens).

    python benchmarks/bench_stepvideo_dit.py                      # one GPU: a layer subset, then all 48 if they fit
    torchrun --nproc-per-node 8 benchmarks/bench_stepvideo_dit.py  # FSDP2 + Ulysses over the GPUs
    python benchmarks/bench_stepvideo_dit.py --simulate-world 8    # rank 0 of that run, on one GPU
    python benchmarks/bench_stepvideo_dit.py --tiny                # CPU dry run at toy sizes

One GPU: the weights alone are 58.7 GB in bf16, so the script first times ``--subset`` layers (per-layer
time and memory, extrapolated to 48 layers, said so in the row), then the whole model when the card has
the memory for it (an out-of-memory there is recorded, not fatal). Several GPUs (torchrun): the model is
built on ``meta``, wrapped by the core's strategies (Ulysses over all ranks, then FSDP2 over the blocks;
the same wrapping as ``fv generate --num-gpus N --fsdp``), then materialised shard by shard, so each rank
holds 1/N of the weights. Each timed forward starts at a barrier and ends when every rank is done.
``--simulate-world N``: one process plays rank 0 of that N-GPU run (``harness.simulate_world``, the
collectives skipped): its peak memory is a real run's per GPU (NCCL's buffers aside), its time one
rank's compute alone (no communication); the rows say "simulated".

Rows go to docs/benchmarks.md (rank 0) and ``$OUT/bench_rows.jsonl``; a JSON summary to ``$OUT/stepvideo_dit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import add_simulate_world, append_row, environment, simulate_world

HEADER = ["date", "card", "GPUs", "layers run", "shape (F x H x W, tokens)", "strategy", "forward s (per GPU)",
          "per layer ms", "48-layer forward s", "peak GiB per GPU", "weights GiB per GPU", "note", "command"]  # fmt: skip
RELEASED = {"num_attention_heads": 48, "attention_head_dim": 128, "in_channels": 64, "out_channels": 64,
            "num_layers": 48, "patch_size": 1, "caption_channels": [6144, 1024]}  # fmt: skip
TINY = {"num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4, "out_channels": 4, "num_layers": 4,
        "patch_size": 1, "caption_channels": [24, 12]}  # fmt: skip


def build(cfg: dict[str, Any], device: torch.device, state: Any, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights: built on meta, wrapped (several ranks), then allocated and filled in place."""
    from fastvideo_stepvideo.model import StepVideoTransformer

    model: torch.nn.Module = StepVideoTransformer.from_config(cfg)  # meta
    model = model.to(dtype)
    if state is not None:
        from fastvideo.parallel.strategies import enabled_strategies

        for strategy in enabled_strategies(state.config):
            model = strategy().wrap(model, state)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.ndim == 1:
                local.copy_(
                    1.0 + 0.02 * torch.randn(local.shape, generator=gen, device=device, dtype=local.dtype)
                )
            else:
                local.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def inputs(
    cfg: dict[str, Any], frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype
):
    g = torch.Generator(device=device).manual_seed(1)
    llm, clip = cfg["caption_channels"]
    t = frames // 17 * 3
    x = torch.randn(
        1, cfg["in_channels"], t, height // 16, width // 16, generator=g, device=device, dtype=dtype
    )
    y = torch.randn(1, 320, llm, generator=g, device=device, dtype=dtype)
    y2 = torch.randn(1, 77, clip, generator=g, device=device, dtype=dtype)
    mask = torch.ones(1, 397, device=device)
    return x, torch.tensor([0.5], device=device), y, y2, mask


def timed(model, args, warmup: int, iters: int, sync) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(median seconds per forward, peak GiB)."""
    with torch.no_grad():
        for _ in range(warmup):
            model(*args)
        sync()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            sync()
            t0 = time.perf_counter()
            model(*args)
            sync()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU dry run at toy sizes")
    ap.add_argument("--subset", type=int, default=8, help="layers of the one-GPU subset run")
    ap.add_argument("--no-full", action="store_true", help="one GPU: skip the 48-layer attempt")
    ap.add_argument("--frames", type=int, default=204)
    ap.add_argument("--height", type=int, default=544)
    ap.add_argument("--width", type=int, default=992)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    add_simulate_world(ap)
    args = ap.parse_args()
    if args.simulate_world > 1:
        simulate_world(args.simulate_world)

    from fastvideo.attention import use_backend

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    base = dict(TINY if args.tiny else RELEASED)
    if args.tiny:
        args.frames, args.height, args.width = 34, 64, 96
    state = None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if world > 1:
        import torch.distributed as dist

        from fastvideo.configs import ParallelConfig
        from fastvideo.parallel.state import init_parallel

        state = init_parallel(ParallelConfig(num_gpus=world, sp_size=world, fsdp=True), device=device.type)

        def sync() -> None:  # type: ignore[no-redef]
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()

    tokens = (args.frames // 17 * 3) * (args.height // 16) * (args.width // 16)
    shape = f"{args.frames}x{args.height}x{args.width}, {tokens}"
    env = environment()
    results: list[dict[str, Any]] = []
    full_layers = base["num_layers"]

    def run(layers: int, note: str) -> dict[str, Any]:
        cfg = {**base, "num_layers": layers}
        model = build(cfg, device, state, dtype)
        local = [
            p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()
        ]  # this rank's shard
        weights = sum(p.numel() * p.element_size() for p in local) / 2**30
        x = inputs(cfg, args.frames, args.height, args.width, device, dtype)
        with use_backend("sdpa"):
            sec, peak = timed(model, x, args.warmup, args.iters, sync)
        del model
        if cuda:
            torch.cuda.empty_cache()
        return {"layers": layers, "seconds": sec, "peak_gib": peak, "weights_gib": weights, "note": note}

    if world > 1:
        simulated = (
            " (simulated: rank 0 of the run alone, collectives skipped)" if args.simulate_world else ""
        )
        r = run(full_layers, f"all layers, FSDP2 + Ulysses{simulated}")
        r["per_layer_ms"] = None
        r["full_seconds"] = r["seconds"]
        results.append(r)
    else:
        sub = run(min(args.subset, full_layers), "layer subset")
        one = run(1, "1 layer")
        per_layer = (sub["seconds"] - one["seconds"]) / max(1, sub["layers"] - 1)
        sub["per_layer_ms"] = per_layer * 1000
        sub["full_seconds"] = one["seconds"] + per_layer * (full_layers - 1)
        sub["note"] = (
            f"{sub['layers']} of {full_layers} layers; {full_layers}-layer time extrapolated: t(1) + {full_layers - 1} x (t({sub['layers']}) - t(1)) / {sub['layers'] - 1}"
        )
        results.append(sub)
        free = torch.cuda.mem_get_info()[1] / 2**30 if cuda else 0.0
        if not args.no_full and free > 70:
            try:
                full = run(full_layers, "all 48 layers on one GPU")
                full["per_layer_ms"] = per_layer * 1000
                full["full_seconds"] = full["seconds"]
                results.append(full)
            except torch.OutOfMemoryError as e:
                results.append(
                    {"layers": full_layers, "note": f"48 layers on one GPU: out of memory ({str(e)[:80]})"}
                )
                torch.cuda.empty_cache()

    if rank == 0:
        out = Path(os.environ.get("OUT", "/tmp/out"))
        out.mkdir(parents=True, exist_ok=True)
        summary = {"env": env, "world": world, "shape": shape, "results": results}
        (out / "stepvideo_dit.json").write_text(json.dumps(summary, indent=2, default=str))
        print(json.dumps(summary, indent=2, default=str))
        if not args.no_record and not args.tiny:
            for r in results:
                if "seconds" not in r:
                    continue
                append_row(
                    "Step-Video-T2V DiT forward (random weights, bf16)",
                    HEADER,
                    [env["date"], env["card"], world, r["layers"], shape,
                     ("FSDP2 + Ulysses, simulated" if args.simulate_world else "FSDP2 + Ulysses") if world > 1 else "one GPU", f"{r['seconds']:.2f}",
                     "" if r.get("per_layer_ms") is None else f"{r['per_layer_ms']:.0f}",
                     f"{r['full_seconds']:.1f}", f"{r['peak_gib']:.1f}", f"{r['weights_gib']:.1f}", r["note"],
                     env["command"]],
                )  # fmt: skip
    if state is not None:
        from fastvideo.parallel.state import teardown

        teardown()


if __name__ == "__main__":
    main()
