"""DMD2 on the GPU: one training iteration (critic step + student step) and the 3-step student end to end.

    # one DMD2 iteration on Wan2.1-1.3B random weights at 81x480x832 (one GPU, or N under torchrun)
    python benchmarks/bench_dmd2.py iteration
    torchrun --nproc-per-node 4 benchmarks/bench_dmd2.py iteration
    # the 3-step student with VSA 0.875 and compiled blocks: text encoding, DiT and VAE decode timed
    python benchmarks/bench_dmd2.py student
    # rank 0 of an 8-GPU run of Wan2.1-14B on one card (collectives skipped: memory per GPU, compute time)
    python benchmarks/bench_dmd2.py iteration --config wan2.1-t2v-14b --simulate-world 8 --sp-size 8 \
        --ema 0.99 --ema-offload
    # CPU smoke runs of both at tiny shapes
    python benchmarks/bench_dmd2.py iteration --tiny --device cpu --frames 9 --height 64 --width 64 --no-record
    python benchmarks/bench_dmd2.py student --tiny --device cpu --frames 9 --height 64 --width 64 --no-record

``iteration``: the trainer's ``run_step`` at a step where both models train (``student_update_every``
1): the student's simulated rollout, its DMD loss through the critic and the CFG teacher (two teacher
forwards) and backward, then the critic's rollout, flow-matching loss and backward; bf16 autocast, fp32
master weights and AdamW for student and critic, a bf16 frozen teacher, activation checkpointing of
every block, FSDP2 over the processes. Reports the median iteration time and the peak memory per GPU.
The three models are built on ``meta`` and each rank allocates only its shards (as a lazy load does).
``--simulate-world N``: one process plays rank 0 of N (``harness.simulate_world``): its peak memory is
a real N-GPU run's per GPU (NCCL's buffers aside); its time is one rank's compute, no communication.

``student``: what ``fv generate`` runs for a 3-step student, by component: umT5-XXL text encoding
(random weights, 512 tokens, bf16), three DiT forwards (Wan2.1-1.3B random weights, ``vsa`` at sparsity
0.875, compiled blocks, no CFG), and the Wan VAE decode (random weights, bf16) of the 81x480x832 video;
each is timed separately (CUDA events) and summed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import add_simulate_world, append_row, simulate_world, time_call  # noqa: E402


def _config(args: argparse.Namespace) -> tuple[dict[str, Any], str, tuple[int, ...], int]:
    from fastvideo_wan.configs import CONFIGS
    from fastvideo_wan.tiny import TINY_DIT

    cfg = dict(TINY_DIT if args.tiny else CONFIGS[args.config])
    name = "tiny" if args.tiny else args.config
    latent = (cfg["in_channels"], (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    p = cfg["patch_size"]
    tokens = latent[1] // p[0] * (latent[2] // p[1]) * (latent[3] // p[2])
    return cfg, name, latent, tokens


def _vsa_registered() -> Any:
    """fastvideo-vsa registered in-process when importable but not installed (the GPU machine)."""
    import contextlib

    from fastvideo.registry import get_registry

    if "vsa" in get_registry().entries["attention_backend"]:
        return contextlib.nullcontext()
    from fastvideo.testing import fake_plugins

    try:
        import fastvideo_dmd2.plugin as dmd2
        import fastvideo_vsa.plugin as vsa
    except ImportError:
        return contextlib.nullcontext()
    return fake_plugins(vsa, dmd2, autoload=True)


def _record(section: str, header: list[str], row: list[Any], args: argparse.Namespace) -> None:
    if args.no_record or int(os.environ.get("RANK", "0")):
        return
    append_row(section, header, row)


# ---------------------------------------------------------------- one DMD2 iteration


def iteration(args: argparse.Namespace) -> None:
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.registry import get_registry
    from fastvideo.training.config import load_config
    from fastvideo.training.data import InMemoryDataset
    from fastvideo.training.objectives import FlowMatchingObjective
    from fastvideo.training.trainer import Trainer
    from fastvideo_wan.model import WanTransformer

    cfg, name, latent, tokens = _config(args)
    family = get_registry().get("model_family", "wan").cls
    torch.manual_seed(0)  # the same random weights on every rank
    world = int(os.environ.get("WORLD_SIZE", "1"))
    from fastvideo.loader.deferred import defer

    # on meta: each role's copy is allocated (and randomly initialised) once sharded, in prepare_model
    model = defer(WanTransformer.from_config(cfg), None)
    gen = torch.Generator().manual_seed(0)
    samples = [
        {
            "latents": torch.randn(latent, generator=gen),
            "text": torch.randn(args.text_len, cfg["text_dim"], generator=gen),
            "text_mask": torch.ones(args.text_len, dtype=torch.long),
        }
        for _ in range(max(1, world // args.sp_size))
    ]
    overrides: dict[str, Any] = {
        "algorithm": "dmd2",
        "model.path": "random-init",
        "data.path": "in-memory",
        "data.batch_size": len(samples),
        "output_dir": str(args.output_dir),
        "max_steps": 1000,
        "device": args.device,
        "mixed_precision": args.precision,
        "parallel.activation_checkpointing": True,
        "optim.betas": [0.0, 0.999],
        "roles.student.optim.lr": 2e-6,
        "roles.critic.optim.lr": 8e-6,
        "algorithm_options.student_update_every": 1,  # every iteration trains both
        "algorithm_options.guidance_scale": 3.5,
        "export.enabled": False,
        "parallel.sp_size": args.sp_size,
        "roles.student.ema.decay": args.ema,
        "roles.student.ema.offload": args.ema_offload,
    }
    if args.sparsity > 0:
        overrides.update({"attention.backend": "vsa", "attention.sparsity": args.sparsity})
    trainer = Trainer(
        load_config(None, overrides),
        source=ModelSource(family=family, path=Path("."), model_index={}),
        dataset=InMemoryDataset(samples),
        objective=FlowMatchingObjective(shift=8.0),
        model=model,
    ).setup()
    batches = trainer._batches()
    metrics: dict[str, float] = {}

    def step() -> None:
        trainer.step += 1
        _, micro = next(batches)
        metrics.update(trainer.run_step(micro))

    timing, _ = time_call("dmd2 iteration", step, device=args.device, warmup=args.warmup, iters=args.iters)
    median, best, peak = timing.median_ms, timing.min_ms, timing.peak_gib
    attention = f"student vsa @ {args.sparsity}" if args.sparsity > 0 else "dense"
    if args.sp_size > 1:
        attention += f", ulysses {args.sp_size}"
    if args.ema > 0:
        attention += ", student EMA" + (" (in CPU memory)" if args.ema_offload else "")
    gpus = f"{world} (simulated: rank 0 alone, collectives skipped)" if args.simulate_world else world
    if trainer.rank == 0:
        card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(
            f"{card} x{gpus} {name} {latent} = {tokens} tokens, {attention}: DMD2 iteration (critic + student) "
            f"{median:.0f} ms (min {best:.0f}), peak {peak:.2f} GiB per GPU; dmd_loss {metrics.get('dmd_loss', 0):.4f} "
            f"critic_loss {metrics['critic_loss']:.4f}"
        )
        _record(
            "DMD2 iteration (critic step + student step; bf16 autocast, fp32 AdamW, bf16 teacher, activation checkpointing)",
            [
                "card",
                "GPUs",
                "model",
                "latents (tokens)",
                "attention",
                "iteration ms",
                "min ms",
                "peak GiB/GPU",
            ],
            [
                card,
                gpus,
                name,
                f"{latent} ({tokens})",
                attention,
                f"{median:.0f}",
                f"{best:.0f}",
                f"{peak:.2f}",
            ],
            args,
        )
    trainer.close()


# ---------------------------------------------------------------- the student end to end


def student(args: argparse.Namespace) -> None:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from fastvideo.attention import StepContext, step_context, use_backend
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo.samplers import FewStepSampler
    from fastvideo_wan.model import WanTransformer

    cfg, name, latent, tokens = _config(args)
    device, dtype = torch.device(args.device), torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    # text encoder: umT5-XXL (random weights; tiny for smoke runs)
    t5 = (
        UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
        if not args.tiny
        else UMT5Config(vocab_size=512, d_model=cfg["text_dim"], d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        feed_forward_proj="gated-gelu")
    )  # fmt: skip
    with torch.device(device):
        encoder = UMT5EncoderModel(t5).to(dtype).eval()
    ids = torch.randint(0, min(1000, t5.vocab_size), (1, args.text_len), device=device)
    mask = torch.ones_like(ids)

    def encode() -> torch.Tensor:
        with torch.no_grad():
            return encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    text = encode()
    text_ms = time_call("text", encode, device=device, warmup=1, iters=args.iters)[0].median_ms
    encoder.to("meta")  # frees its memory for the DiT
    # the DiT: 3 few-step forwards, vsa in the sparse layers, compiled blocks
    dit = WanTransformer.from_config(cfg, device=device)
    backend = "vsa" if args.sparsity > 0 else None
    if backend:
        attach_layer_modules(dit, backend)
        dit.to(device)
    dit = dit.to(dtype).eval()
    if args.quantize:
        from fastvideo.optimize.fp8 import quantize_fp8

        print("quantized:", quantize_fp8(dit, args.quantize, use_torchao=False), flush=True)
    if args.compile:
        dit.compile_blocks()
    sampler = FewStepSampler(None)
    timesteps = sampler.set_timesteps(3, device=device)
    noise = torch.randn((1, *latent), device=device)
    grid = dit.token_grid((1, *latent))
    options = {"vsa": {"sparsity": args.sparsity}} if backend else {}

    def denoise() -> torch.Tensor:
        x = noise
        with torch.no_grad(), use_backend(backend):
            for i, t in enumerate(timesteps):
                ctx = StepContext(grid=grid, step_index=i, num_steps=3, timestep=float(t), options=options)
                with step_context(ctx):
                    v = dit(hidden_states=x.to(dtype), timestep=t.expand(1), encoder_hidden_states=text)
                x = sampler.step(v, t, x, step_index=i, generator=torch.Generator().manual_seed(i))
        return x

    latents = denoise()  # compiles
    dit_ms = time_call("dit", denoise, device=device, warmup=1, iters=args.iters)[0].median_ms
    dit.to("meta")
    torch.cuda.empty_cache() if device.type == "cuda" else None
    # the VAE decode: Wan2.1's VAE (diffusers' default config), random weights
    vae_kwargs = {} if not args.tiny else {"base_dim": 16, "z_dim": cfg["in_channels"], "num_res_blocks": 1}
    with torch.device(device):
        vae = AutoencoderKLWan(**vae_kwargs).to(dtype).eval()

    def decode() -> torch.Tensor:
        with torch.no_grad():
            return vae.decode(latents.to(dtype)).sample

    video = decode()
    vae_ms = time_call("vae", decode, device=device, warmup=0, iters=max(1, args.iters // 2))[0].median_ms
    total = text_ms + dit_ms + vae_ms
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    attention = (f"vsa @ {args.sparsity}" if backend else "dense") + (
        f", {args.quantize} linears" if args.quantize else ""
    )
    print(
        f"{card} {name} 3-step student {tuple(video.shape)} ({tokens} tokens), {attention}, compiled {args.compile}: "
        f"text {text_ms:.0f} ms, DiT {dit_ms:.0f} ms, VAE decode {vae_ms:.0f} ms, total {total:.0f} ms"
    )
    _record(
        "3-step student end to end (random weights; no CFG; text, DiT and VAE timed separately)",
        ["card", "model", "video (tokens)", "attention", "compiled", "text ms", "DiT ms (3 steps)", "VAE ms", "total ms"],
        [card, name, f"{args.frames}x{args.height}x{args.width} ({tokens})", attention, args.compile,
         f"{text_ms:.0f}", f"{dit_ms:.0f}", f"{vae_ms:.0f}", f"{total:.0f}"],
        args,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["iteration", "student"])
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--tiny", action="store_true", help="the test-size DiT (CPU smoke runs)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument(
        "--sparsity", type=float, default=None, help="vsa sparsity (iteration: 0 = dense; student: 0.875)"
    )
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument(
        "--quantize", choices=["fp8", "fp8-storage"], default=None, help="student: FP8 block linears"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--output-dir", default="/tmp/bench-dmd2")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--sp-size", type=int, default=1, help="iteration: Ulysses sequence-parallel ranks")
    ap.add_argument("--ema", type=float, default=0.0, help="iteration: the student's EMA decay (0: none)")
    ap.add_argument("--ema-offload", action="store_true", help="iteration: the EMA in CPU memory")
    add_simulate_world(ap, "iteration: ")
    args = ap.parse_args()
    if args.simulate_world > 1:
        simulate_world(args.simulate_world)
    if args.sparsity is None:
        args.sparsity = 0.875 if args.what == "student" else 0.0
    if os.environ.get("LOCAL_RANK") is not None and args.device == "cuda":
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(args.device)
    with _vsa_registered():
        iteration(args) if args.what == "iteration" else student(args)


if __name__ == "__main__":
    main()
