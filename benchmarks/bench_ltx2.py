"""LTX-2 on one GPU with random weights: (A) one DiT forward, ours against diffusers' eager
``LTX2VideoTransformer3DModel`` on the same weights (shared tensors, so the 19B model is in memory
once); (B) the whole two-stage text-to-audio-video generation, stage by stage (Gemma + connectors,
stage 1 at half size with CFG + STG + modality guidance, latent upsample, 3 refinement steps at full
size, video VAE decode (tiled) + audio VAE + vocoder).

    python benchmarks/bench_ltx2.py --frames 121 --height 768 --width 1280 [--layers 48] [--steps 30]
    python benchmarks/bench_ltx2.py --tiny        # CPU dry run at toy sizes

Real LTX-2 configs for the DiT, connectors, VAEs, vocoder and latent upsampler; the Gemma 3 text
encoder keeps its real width but only ``--gemma-layers`` layers (the 12B encoder's time is not what is
measured here). Results: a JSON file and markdown rows in ``$OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def real_parts(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, Any], Any]:
    """Random-weight components at LTX-2's real sizes (bf16 on the GPU); returns (parts, diffusers DiT)."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from fastvideo_ltx.ltx2.configs import LTX2
    from fastvideo_ltx.ltx2.tiny import tiny_tokenizer

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: the fp32 model would not fit
    try:
        with torch.device(device):
            cfg = {**LTX2, "num_layers": args.layers}
            ref = LTX2VideoTransformer3DModel(**cfg).eval()
            with torch.no_grad():
                for p in ref.parameters():
                    p.normal_(0, 0.02)
            if args.skip_generation:  # the DiT alone: the other components are not built
                return {"device": device, "transformer": share_weights(ref, cfg, device)}, ref
            tokenizer = tiny_tokenizer()
            text_cfg = {
                "vocab_size": len(tokenizer), "hidden_size": 3840, "intermediate_size": 15360,
                "num_hidden_layers": args.gemma_layers, "num_attention_heads": 16, "num_key_value_heads": 8,
                "head_dim": 256, "max_position_embeddings": 4096, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1,
            }  # fmt: skip
            vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 28, "patch_size": 14}  # fmt: skip
            gemma = Gemma3ForConditionalGeneration(
                Gemma3Config(text_config=text_cfg, vision_config=vision, mm_tokens_per_image=4)
            ).eval()
            connectors = LTX2TextConnectors(
                caption_channels=3840, text_proj_in_factor=args.gemma_layers + 1
            ).eval()
            vae = AutoencoderKLLTX2Video(
                latent_channels=128, block_out_channels=(256, 512, 1024, 1024), decoder_block_out_channels=(256, 512, 512, 1024),
                layers_per_block=(4, 6, 4, 2, 2), decoder_layers_per_block=(4, 6, 4, 2, 2),
                spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True, True),
                decoder_inject_noise=(False,) * 5, downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"), upsample_residual=(False,) * 4,
                upsample_factor=(2, 2, 1, 2), timestep_conditioning=False, patch_size=4, patch_size_t=1,
                encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros",
                decoder_spatial_padding_mode="zeros", spatial_compression_ratio=32, temporal_compression_ratio=8,
            ).eval()  # fmt: skip
            vae.enable_tiling()
            audio_vae = AutoencoderKLLTX2Audio().eval()
            vocoder = LTX2Vocoder().eval()
            upsampler = LTX2LatentUpsamplerModel(in_channels=128, mid_channels=1024, num_blocks_per_stage=4,
                                                 use_rational_resampler=False).eval()  # fmt: skip
            for module in (gemma, connectors, vae, audio_vae, vocoder, upsampler):
                with torch.no_grad():
                    for p in module.parameters():
                        if p.ndim > 1:
                            p.normal_(0, 0.02)
    finally:
        torch.set_default_dtype(previous)
    vae.float(), audio_vae.float(), vocoder.float(), upsampler.float()  # the VAEs run in fp32 (the default)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )  # fmt: skip
    ours = share_weights(ref, cfg, device)
    parts = {
        "device": device, "tokenizer": tokenizer, "text_encoder": gemma, "connectors": connectors, "transformer": ours,
        "vae": vae, "audio_vae": audio_vae, "vocoder": vocoder, "latent_upsampler": upsampler, "scheduler": scheduler,
        "text_dtype": dtype,
    }  # fmt: skip
    return parts, ref


def share_weights(ref: Any, cfg: dict[str, Any], device: torch.device) -> Any:
    """Our DiT over the very tensors of diffusers' model (renamed by the declared mapping)."""
    from fastvideo_ltx.ltx2.model import LTX2Transformer

    ours = LTX2Transformer.from_config(cfg)  # meta
    state = LTX2Transformer.name_mapping.to_ours(dict(ref.state_dict()))
    ours.load_state_dict(state, assign=True, strict=True)
    return ours.eval()


def tiny_parts(device: torch.device) -> tuple[dict[str, Any], Any]:
    from fastvideo_ltx.ltx2.tiny import build_pipeline, build_upsampler

    pipe = build_pipeline()
    parts = dict(pipe.components)
    parts.update(device=device, latent_upsampler=build_upsampler(), text_dtype=torch.float32)
    ref = parts["transformer"]
    parts["transformer"] = share_weights(ref, dict(ref.config), device)
    return {k: v for k, v in parts.items() if v is not None}, ref


def bench_dit(
    parts: dict[str, Any], ref: Any, args: argparse.Namespace, device: torch.device, out: dict
) -> None:
    from harness import time_cuda

    ours = parts["transformer"]
    cfg = ours.config
    t, h, w = (args.frames - 1) // 8 + 1, args.height // 32, args.width // 32
    audio_len = round(args.frames / 24 * 16000 / 160 / 4)
    mel = 16 if not args.tiny else 4
    g = torch.Generator(device="cpu").manual_seed(1)
    dtype = ours.dtype
    video = torch.randn(1, cfg.in_channels, t, h, w, generator=g).to(device, dtype)
    audio = torch.randn(1, cfg.audio_in_channels // mel, audio_len, mel, generator=g).to(device, dtype)
    width = cfg.caption_channels if cfg.use_prompt_embeddings else cfg.dim
    text = (torch.randn(1, args.text_len, width, generator=g) * 0.5).to(device, dtype)
    audio_width = cfg.caption_channels if cfg.use_prompt_embeddings else cfg.audio_dim
    audio_text = (torch.randn(1, args.text_len, audio_width, generator=g) * 0.5).to(device, dtype)
    mask = torch.ones(1, args.text_len, device=device)
    ts = torch.full((1,), 700.0, device=device)

    def run_ours() -> Any:
        with torch.inference_mode():
            return ours(video, audio, text, audio_text, ts, sigma=ts, encoder_attention_mask=mask,
                        audio_encoder_attention_mask=mask, use_cross_timestep=True)  # fmt: skip

    def run_ref() -> Any:
        with torch.inference_mode():
            return ref(
                hidden_states=video.flatten(2).transpose(1, 2), audio_hidden_states=audio.transpose(1, 2).flatten(2),
                encoder_hidden_states=text, audio_encoder_hidden_states=audio_text, timestep=ts, sigma=ts,
                encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=t, height=h, width=w,
                fps=24.0, audio_num_frames=audio_len, use_cross_timestep=True, return_dict=False,
            )  # fmt: skip

    if device.type == "cuda":
        tr, ro = time_cuda("diffusers", run_ref, warmup=args.warmup, iters=args.iters)
        to, oo = time_cuda("ours", run_ours, warmup=args.warmup, iters=args.iters)
        ms_ours, ms_ref, peak = to.median_ms, tr.median_ms, max(to.peak_gib, tr.peak_gib)

    else:
        t0 = time.perf_counter()
        ro = run_ref()
        t1 = time.perf_counter()
        oo = run_ours()
        ms_ref, ms_ours, peak = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3, 0.0
    rv = ro[0].transpose(1, 2).reshape(oo[0].shape).float()
    diff = (oo[0].float() - rv).abs()
    out["dit"] = {
        "tokens": {"video": t * h * w, "audio": audio_len, "text": args.text_len},
        "ours_ms": round(ms_ours, 2), "diffusers_ms": round(ms_ref, 2), "ratio": round(ms_ours / ms_ref, 3),
        "peak_gib": round(peak, 2), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "rel_diff": float((oo[0].float() - rv).norm() / rv.norm()),
    }  # fmt: skip
    print("DiT forward:", json.dumps(out["dit"]))
    return run_ours


def bench_compiled(parts: dict[str, Any], run_ours: Any, args: argparse.Namespace, out: dict) -> None:
    """Our DiT with regional torch.compile (one graph for the identical blocks), same inputs."""
    from harness import time_cuda

    ours = parts["transformer"]
    try:
        ours.compile_blocks()
        tc, _ = time_cuda("ours compiled", run_ours, warmup=2, iters=args.iters)
        out["dit_compiled_ms"] = round(tc.median_ms, 2)
        out["dit_compiled_ratio"] = round(tc.median_ms / out["dit"]["diffusers_ms"], 3)
        print(
            f"DiT compiled: {tc.median_ms:.1f} ms ({out['dit_compiled_ratio']}x diffusers eager)", flush=True
        )
    except Exception as exc:  # report and keep the other results
        out["dit_compiled_error"] = f"{type(exc).__name__}: {exc}"[:500]
        print("compile failed:", out["dit_compiled_error"])


def bench_generation(
    parts: dict[str, Any], args: argparse.Namespace, device: torch.device, out: dict
) -> None:
    from fastvideo.configs import SamplingParams
    from fastvideo.pipelines import ForwardBatch
    from fastvideo_ltx.ltx2.family import LTX2Family
    from fastvideo_ltx.ltx2.pipeline import compose

    pipeline = compose(LTX2Family, None, parts)
    params = SamplingParams(
        prompt="a cat plays piano in the rain", negative_prompt="blurry", num_frames=args.frames,
        height=args.height, width=args.width, num_inference_steps=args.steps, guidance_scale=3.0, fps=24,
        max_sequence_length=args.text_len, seed=0,
    )  # fmt: skip
    import dataclasses

    warm = dataclasses.replace(params, num_inference_steps=2)
    for run, request in enumerate([warm, params] if device.type == "cuda" else [params]):  # warm-up: 2 steps
        batch = ForwardBatch(params=request, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        batch = pipeline(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        print(f"generation run {run}: {total:.1f} s", flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    out["generation"] = {
        "request": f"{args.frames}x{args.height}x{args.width}, stage 1 {args.steps} steps at half size, 3 refine steps",
        "stages_s": {k: round(v, 3) for k, v in batch.timings.items()}, "total_s": round(total, 3),
        "frames": list(batch.frames.shape), "audio": list(batch.audio.shape) if batch.audio is not None else None,
        "sample_rate": batch.sample_rate, "peak_gib": round(peak, 2),
    }  # fmt: skip
    print("generation:", json.dumps(out["generation"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--gemma-layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--text-len", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time our DiT with compile_blocks()")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run at toy sizes")
    args = ap.parse_args()
    if args.tiny:
        args.frames, args.height, args.width, args.steps, args.text_len = 9, 128, 128, 2, 16
        device, dtype = torch.device("cpu"), torch.float32
        parts, ref = tiny_parts(device)
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        parts, ref = real_parts(args, device, dtype)
    from harness import environment

    out: dict[str, Any] = {"env": environment(), "args": vars(args)}
    run_ours = bench_dit(parts, ref, args, device, out)
    del ref  # our DiT holds the same tensors
    folder = Path(os.environ.get("OUT", "/tmp/out"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ltx2_bench.json").write_text(json.dumps(out, indent=2))  # partial results survive a timeout
    if not args.skip_generation:
        bench_generation(parts, args, device, out)
        (folder / "ltx2_bench.json").write_text(json.dumps(out, indent=2))
    if args.compile and device.type == "cuda":
        bench_compiled(parts, run_ours, args, out)
    (folder / "ltx2_bench.json").write_text(json.dumps(out, indent=2))
    env, dit = out["env"], out["dit"]
    rows = [
        f"| {env['date']} | {env['card']} | LTX-2 DiT ({args.layers} layers) fwd | {args.frames}x{args.height}x{args.width} "
        f"({dit['tokens']['video']} + {dit['tokens']['audio']} tokens) | {dit['ours_ms']} ms | {dit['diffusers_ms']} ms "
        f"(eager) | {dit['ratio']} (compiled: {out.get('dit_compiled_ratio', '-')}) | rel diff {dit['rel_diff']:.2e} |"
    ]  # fmt: skip
    if "generation" in out:
        gen = out["generation"]
        stages = ", ".join(f"{k} {v} s" for k, v in gen["stages_s"].items())
        rows.append(
            f"| {env['date']} | {env['card']} | LTX-2 two-stage generation | {gen['request']} | {gen['total_s']} s | {stages} | peak {gen['peak_gib']} GiB |"
        )
    (folder / "ltx2_rows.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
