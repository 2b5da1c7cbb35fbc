"""The speed options on the GPU (issue #24): 8-bit attention kernel vs SDPA, Wan DiT per-forward time
with FP8 / sage / compile against diffusers, quality of each lossy option against bf16 on random-weight
Wan 1.3B, the step caches' DiT-call savings, layerwise offload's peak memory (while loading and
while running) and time.

    python benchmarks/bench_speed.py --section kernel|dit|quality|offload|i2v14b|linear14b|block14b [--tiny]

``--tiny`` runs every section at toy sizes (a CPU dry run of the code paths, TRITON_INTERPRET=1 for sage).
Each section prints its lines and appends them to ${OUT}/speed.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import time
from typing import Any

import torch

OUT = os.environ.get("OUT", "/tmp/out")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def record(section: str, **row: Any) -> None:
    row = {"section": section, **row}
    print(json.dumps(row), flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "speed.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, warmup: int = 1, iters: int = 3) -> tuple[float, float, Any]:
    """(median seconds, peak GiB over the timed calls, last output)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    return sorted(times)[len(times) // 2], peak, out


def free() -> None:
    gc.collect()
    torch._dynamo.reset()  # each variant compiles its own blocks
    if DEV == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def guarded(section: str, label: str):  # type: ignore[no-untyped-def]
    """Record a failing variant as an error line and go on with the next one."""
    try:
        yield
    except Exception as exc:  # a variant this card or torch cannot run: say so, keep measuring
        record(section, variant=label, error=f"{type(exc).__name__}: {str(exc)[:400]}")
        free()


def card() -> str:
    return torch.cuda.get_device_name() if DEV == "cuda" else "cpu"


# ---------------------------------------------------------------- models


def wan_config(name: str, tiny: bool, layers: int | None = None) -> dict[str, Any]:
    from fastvideo_wan.configs import CONFIGS

    cfg = {k: v for k, v in CONFIGS[name].items() if not k.startswith("_")}
    if tiny:
        cfg.update(num_attention_heads=2, attention_head_dim=64, ffn_dim=256, num_layers=2, text_dim=64)
        if cfg.get("image_dim"):
            cfg.update(image_dim=32, added_kv_proj_dim=128)
    if layers is not None and not tiny:
        cfg["num_layers"] = layers
    return cfg


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):  # type: ignore[no-untyped-def]
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def ours(cfg: dict[str, Any], seed: int = 0, device: str = DEV) -> Any:
    """Our WanTransformer with random weights N(0, 0.02) (fp32 modules in fp32, the rest bf16)."""
    from fastvideo_wan.model import WanTransformer

    with torch.device("meta"), default_dtype(torch.bfloat16):
        model = WanTransformer(WanTransformer.parse_config(cfg))
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02, generator=g)
            if model.is_fp32_param(name):
                p.data = p.data.float()
    return model.eval().requires_grad_(False)


def diffusers_dit(cfg: dict[str, Any]) -> Any:
    from diffusers import WanTransformer3DModel

    with torch.device(DEV), default_dtype(torch.bfloat16):
        ref = WanTransformer3DModel(**cfg)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    return ref.eval().requires_grad_(False)


def inputs(cfg: dict[str, Any], frames: int, height: int, width: int, image: bool = False) -> dict[str, Any]:
    g = torch.Generator(device=DEV).manual_seed(1)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    kw = {
        "hidden_states": torch.randn(
            1, cfg["in_channels"], t, h, w, device=DEV, generator=g, dtype=torch.bfloat16
        ),
        "timestep": torch.tensor([700.0], device=DEV),
        "encoder_hidden_states": torch.randn(
            1, 512, cfg["text_dim"], device=DEV, generator=g, dtype=torch.bfloat16
        ),
    }
    if image:
        kw["encoder_hidden_states_image"] = torch.randn(
            1, 257, cfg["image_dim"], device=DEV, generator=g, dtype=torch.bfloat16
        )
    return kw


def apply_options(model: Any, options: dict[str, Any]) -> Any:
    """The pipeline transforms of ``options`` applied to a one-DiT pipeline (as VideoGenerator does)."""
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline
    from fastvideo.pipelines.stages import DenoisingStage
    from fastvideo.transforms import apply_transforms

    config = PipelineConfig(**{k: v for k, v in options.items() if k not in ("attention_backend", "compile")})
    stage = DenoisingStage(model)
    pipe = ComposedPipeline([stage], {"transformer": model, "device": torch.device(DEV)})
    apply_transforms(pipe, config)
    if options.get("compile"):
        model.compile_blocks()
    return pipe


def run_dit(model: Any, kw: dict[str, Any], backend: str | None) -> Any:
    """One forward with ``backend``, which may carry backend options: ``"sage:impl=triton"``."""
    from fastvideo.attention import StepContext, step_context, use_backend

    name, _, opts = (backend or "").partition(":")
    options = dict(o.split("=", 1) for o in opts.split(",") if o)
    ctx = step_context(StepContext(options={name: options})) if options else contextlib.nullcontext()
    with torch.inference_mode(), use_backend(name or None), ctx:
        return model(**kw)


# ---------------------------------------------------------------- sections


def section_kernel(tiny: bool) -> None:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastvideo.attention.sage_triton import sage_attention_triton

    shapes = (
        [(12, 32760, 128), (40, 32760, 128), (24, 32760, 64)] if not tiny else [(2, 200, 64), (2, 130, 128)]
    )
    for heads, length, d in shapes:
        g = torch.Generator(device=DEV).manual_seed(0)
        q, k, v = (
            torch.randn(1, length, heads, d, device=DEV, generator=g, dtype=torch.bfloat16) for _ in range(3)
        )
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        row: dict[str, Any] = {"card": card(), "heads": heads, "tokens": length, "head_dim": d}
        t_s, _, out = timed(functools.partial(sage_attention_triton, q, k, v), iters=5)
        row["sage_ms"] = round(t_s * 1e3, 2)
        exact = (
            F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float()).transpose(1, 2)
            if length * heads <= 12 * 32760
            else None
        )
        for name, kern in (("cudnn", "CUDNN_ATTENTION"), ("flash", "FLASH_ATTENTION")):
            if DEV != "cuda":
                continue
            with contextlib.suppress(RuntimeError), sdpa_kernel([getattr(SDPBackend, kern)]):
                t, _, _ = timed(functools.partial(F.scaled_dot_product_attention, qt, kt, vt), iters=5)
                row[f"sdpa_{name}_ms"] = round(t * 1e3, 2)
        if exact is not None:
            err = (out.float() - exact).abs()
            row.update(max_abs_err=round(float(err.max()), 4), mean_abs_err=round(float(err.mean()), 5))
            row["cos_sim"] = round(
                float(F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0)), 6
            )
        record("kernel", **row)
        free()


def section_dit(tiny: bool, iters: int) -> None:
    """Per-forward DiT time at Wan2.1-T2V-1.3B 81x480x832 (one CFG branch; a step with CFG is two)."""
    cfg = wan_config("wan2.1-t2v-1.3b", tiny)
    frames, height, width = (5, 64, 64) if tiny else (81, 480, 832)
    kw = inputs(cfg, frames, height, width)
    if not tiny:
        ref = diffusers_dit(cfg)
        t, peak, _ = timed(lambda: _diffusers_forward(ref, kw), iters=iters)
        record(
            "dit",
            card=card(),
            model="diffusers WanTransformer3DModel (bf16, eager)",
            forward_s=round(t, 4),
            peak_gib=round(peak, 2),
        )
        del ref
        free()
    variants = [
        ("bf16", {}, None),
        ("bf16 compiled", {"compile": True}, None),
        ("fp8", {"quantize": "fp8"}, None),
        ("sage", {}, "sage"),
        ("fp8+sage", {"quantize": "fp8"}, "sage"),
        ("fp8+sage compiled", {"quantize": "fp8", "compile": True}, "sage"),
        ("fp8-storage", {"quantize": "fp8-storage"}, None),
    ]
    if tiny:
        variants = [v for v in variants if "compiled" not in v[0]]
    for name, options, backend in variants:
        with guarded("dit", name):
            _variant("dit", cfg, kw, name, options, backend, iters, digits=4)


def _variant(
    section: str,
    cfg: dict[str, Any],
    kw: dict[str, Any],
    name: str,
    options: dict[str, Any],
    backend: str | None,
    iters: int,
    *,
    digits: int,
) -> None:
    """One of our variants (options, attention backend) of the DiT ``cfg``: time a forward, record it."""
    t, peak = _time_variant(cfg, kw, options, backend, iters)
    record(
        section,
        card=card(),
        model=f"ours {name}",
        forward_s=round(t, digits),
        step_cfg_s=round(2 * t, digits),
        peak_gib=round(peak, 2),
    )


def _time_variant(
    cfg: dict[str, Any], kw: dict[str, Any], options: dict[str, Any], backend: str | None, iters: int
) -> tuple[float, float]:
    """(seconds, peak GiB) of one forward of our DiT ``cfg`` with ``options`` and ``backend`` (built,
    timed, then freed)."""
    model = ours(cfg)
    apply_options(model, options)
    free()
    t, peak, _ = timed(
        functools.partial(run_dit, model, kw, backend),
        warmup=2 if options.get("compile") else 1,
        iters=iters,
    )
    if os.environ.get("PROFILE_TOP") and DEV == "cuda":  # where the forward's GPU time goes
        profile_top(functools.partial(run_dit, model, kw, backend), int(os.environ["PROFILE_TOP"]))
    del model
    free()
    return t, peak


def profile_top(fn: Any, rows: int) -> None:
    """One call of ``fn`` under the PyTorch profiler: the ``rows`` kernels with the most GPU time, and the
    total GPU time by kind (GEMM, attention, the rest)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events) or 1.0
    kinds: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        kind = ("attention" if any(w in name for w in ("attn", "flash", "fmha", "sage", "qk_int8")) else
                "gemm" if any(w in name for w in ("gemm", "sm90_xmma", "cutlass", "scaled_mm", "nvjet", "matmul")) else
                "other")  # fmt: skip
        kinds[kind] = kinds.get(kind, 0.0) + e.device_time_total
    print(
        f"profile: GPU total {total / 1e3:.1f} ms;",
        {k: round(v / 1e3, 1) for k, v in kinds.items()},
        flush=True,
    )
    for e in events[:rows]:
        print(f"  {e.device_time_total / 1e3:9.2f} ms {e.count:6d}x  {e.key[:110]}", flush=True)


def _diffusers_forward(ref: Any, kw: dict[str, Any]) -> Any:
    with torch.inference_mode():
        return ref(**kw, return_dict=False)[0]


def _denoise(
    model: Any, options: dict[str, Any], backend: str | None, shape: tuple, steps: int, text: tuple
) -> tuple[torch.Tensor, Any]:
    from fastvideo.attention import use_backend
    from fastvideo.configs import SamplingParams
    from fastvideo.pipelines.batch import ForwardBatch
    from fastvideo.samplers import FlowEulerSampler

    pipe = apply_options(model, options)
    stage = pipe.stages[0]
    batch = ForwardBatch(
        params=SamplingParams(num_inference_steps=steps, guidance_scale=5.0), device=torch.device(DEV)
    )
    batch.sampler = FlowEulerSampler(None)
    batch.timesteps = batch.sampler.set_timesteps(steps, device=torch.device(DEV), shift=3.0)
    batch.latents = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(DEV)
    batch.prompt_embeds, batch.negative_prompt_embeds = [text[0]], [text[1]]
    with torch.inference_mode(), use_backend(backend):
        out = stage(batch).latents
    return out, getattr(stage, "step_cache", None)


def section_quality(tiny: bool, steps: int) -> None:
    """Random-weight Wan 1.3B, 33x480x832, ``steps`` steps with CFG: each lossy option's latents and decoded
    frames (random-weight Wan VAE) against bf16."""
    from diffusers import AutoencoderKLWan

    cfg = wan_config("wan2.1-t2v-1.3b", tiny)
    frames, height, width = (5, 64, 64) if tiny else (33, 480, 832)
    shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    g = torch.Generator(device=DEV).manual_seed(3)
    text = tuple(
        torch.randn(1, 512, cfg["text_dim"], device=DEV, generator=g, dtype=torch.bfloat16) for _ in range(2)
    )
    vae_kw = {"base_dim": 8, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1} if tiny else {}
    torch.manual_seed(4)
    vae = AutoencoderKLWan(**vae_kw).to(DEV).eval()

    def decode(lat: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            video = vae.decode(lat.float(), return_dict=False)[0]
        return ((video.float().clamp(-1, 1) + 1) * 127.5).round()

    variants = [
        ("bf16", {}, None),
        ("no text-kv cache", {"text_kv_cache": False}, None),
        ("offload layer", {"offload": "layer"}, None),
        ("fp8", {"quantize": "fp8"}, None),
        ("fp8-storage", {"quantize": "fp8-storage"}, None),
        ("sage", {}, "sage"),
        ("fp8+sage", {"quantize": "fp8"}, "sage"),
        ("fp8-attn", {}, "fp8"),
        ("fp8+fp8-attn", {"quantize": "fp8"}, "fp8"),
        ("teacache", {"cache": "teacache"}, None),
        ("firstblock", {"cache": "firstblock"}, None),
        ("magcache", {"cache": "magcache"}, None),
    ]
    base: dict[str, torch.Tensor] = {}
    for name, options, backend in variants:
        with guarded("quality", name):
            _quality_variant(cfg, name, options, backend, shape, steps, text, decode, base)


def _quality_variant(cfg, name, options, backend, shape, steps, text, decode, base) -> None:  # type: ignore[no-untyped-def]
    model = ours(cfg)
    t0 = time.perf_counter()
    lat, cache = _denoise(model, options, backend, shape, steps, text)
    sync()
    wall = time.perf_counter() - t0
    video = decode(lat)
    if not base:
        base.update(lat=lat, frames=video)
    base_lat, base_frames = base["lat"], base["frames"]
    mse = float(((video - base_frames) ** 2).mean())
    row = {
        "card": card(),
        "variant": name,
        "steps": steps,
        "latent_rel_err": round(float((lat - base_lat).norm() / base_lat.norm()), 5),
        "frames_mean_abs": round(float((video - base_frames).abs().mean()), 3),
        "frames_psnr_db": round(10 * torch.log10(torch.tensor(255.0**2 / mse)).item(), 2)
        if mse > 0
        else "inf",
        "denoise_s": round(wall, 2),
    }
    if cache is not None:
        row["dit_calls"] = cache.stats
    record("quality", **row)
    del model
    free()


def section_offload(tiny: bool, iters: int) -> None:
    """Resident vs ``--offload layer`` (also with an FP8 checkpoint): peak memory while the DiT LOADS from
    a safetensors folder (the load policy the transforms set, as ``VideoGenerator`` does) and while it
    runs, and per-forward time (1.3B at 81x480x832; 14B at 81x720x1280 with 8 of its 40 blocks,
    extrapolated)."""
    import tempfile
    from pathlib import Path

    cases = [("wan2.1-t2v-1.3b", None, (81, 480, 832)), ("wan2.1-t2v-14b", 8, (81, 720, 1280))]
    if tiny:
        cases = [("wan2.1-t2v-1.3b", None, (5, 64, 64))]
    for name, layers, (frames, height, width) in cases:
        cfg = wan_config(name, tiny, layers)
        kw = inputs(cfg, frames, height, width)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            with guarded("offload", f"{name} checkpoint"):
                folder, fp8_file = _write_checkpoint(cfg, Path(tmp))
            for mode in ("resident", "offload", "offload compiled", "offload fp8-checkpoint"):
                if "compiled" in mode and tiny:
                    continue
                with guarded("offload", f"{name} {mode}"):
                    _offload_variant(
                        cfg, name, layers, mode, kw, iters, (frames, height, width), folder, fp8_file
                    )


def _write_checkpoint(cfg: dict[str, Any], root: Any) -> tuple[Any, Any]:
    """A diffusers folder of a random-weight Wan DiT (bf16) and an FP8 file of its block linears
    (LightX2V style: per-row ``weight_scale``, our names)."""
    from safetensors.torch import save_file

    from fastvideo.optimize.fp8 import block_linears, quantize_rows
    from fastvideo_wan.model import WanTransformer

    model = ours(cfg)
    folder = root / "transformer"
    folder.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(
        WanTransformer.name_mapping.to_theirs(state), str(folder / "diffusion_pytorch_model.safetensors")
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **cfg}))
    names = {id(m): n for n, m in model.named_modules()}
    fp8 = {}
    for _, _, linear in block_linears(model):
        q, scale = quantize_rows(linear.weight)
        key = f"{names[id(linear)]}.weight"
        fp8[key], fp8[key + "_scale"] = q.cpu().contiguous(), scale.cpu().contiguous()
    save_file(fp8, str(root / "dit_fp8.safetensors"))
    del model, state, fp8
    free()
    return folder, root / "dit_fp8.safetensors"


def _offload_variant(cfg, name, layers, mode, kw, iters, shape, folder, fp8_file) -> None:  # type: ignore[no-untyped-def]
    from fastvideo.configs import PipelineConfig
    from fastvideo.optimize.offload import LayerOffload
    from fastvideo.transforms import load_policy
    from fastvideo_wan.model import WanTransformer

    frames, height, width = shape
    options: dict[str, Any] = {} if mode == "resident" else {"offload": "layer"}
    if "fp8" in mode:
        options["fp8_checkpoint"] = str(fp8_file)
    free()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with load_policy(PipelineConfig(**options)).active():  # what VideoGenerator does around build_pipeline
        model = WanTransformer.from_pretrained(folder, dtype=torch.bfloat16, device=DEV)
    if mode != "resident":
        _offload = LayerOffload(model, DEV)
    sync()
    load_s = time.perf_counter() - t0
    load_peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    if "compiled" in mode:
        model.compile_blocks()
    free()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t, peak, _ = timed(
        functools.partial(run_dit, model, kw, None),
        warmup=2 if "compiled" in mode else 1,
        iters=iters,
    )
    row = {"card": card(), "model": name, "layers": cfg["num_layers"], "shape": f"{frames}x{height}x{width}", "mode": mode,
           "forward_s": round(t, 3), "peak_gib": round(peak, 2), "load_peak_gib": round(load_peak, 2),
           "load_s": round(load_s, 2), "weights_gib": round(weights, 2)}  # fmt: skip
    if layers is not None:
        scale = 40 / layers
        row["forward_s_40_layers_extrapolated"] = round(t * scale, 2)
        if mode == "resident":
            row["peak_gib_40_layers_extrapolated"] = round(peak + weights * (scale - 1), 2)
            row["load_peak_gib_40_layers_extrapolated"] = round(load_peak + weights * (scale - 1), 2)
        else:  # two blocks resident, whatever the depth; the load puts only the non-block parts there
            row["peak_gib_40_layers_extrapolated"] = round(peak, 2)
            row["load_peak_gib_40_layers_extrapolated"] = round(load_peak, 2)
    record("offload", **row)
    del model
    free()


def section_i2v14b(tiny: bool, iters: int) -> None:
    """Wan2.1-I2V-14B-480P per step (CFG: two forwards) at 81x480x832, random weights.
    ``I2V_VARIANTS="diffusers;fp8+sage compiled"`` (names separated by ``;``) picks the runs."""
    cfg = wan_config("wan2.1-i2v-14b-480p", tiny)
    frames, height, width = (5, 64, 64) if tiny else (81, 480, 832)
    kw = inputs(cfg, frames, height, width, image=True)
    picked = os.environ.get("I2V_VARIANTS")
    wanted = None if picked is None else {name.strip() for name in picked.split(";")}
    if not tiny and (wanted is None or "diffusers" in wanted):
        ref = diffusers_dit(cfg)
        t, peak, _ = timed(lambda: _diffusers_forward(ref, kw), iters=iters)
        record(
            "i2v14b",
            card=card(),
            model="diffusers (bf16, eager)",
            forward_s=round(t, 3),
            step_cfg_s=round(2 * t, 3),
            peak_gib=round(peak, 2),
        )
        del ref
        free()
    fp8c = {"quantize": "fp8", "compile": True}
    variants: list[tuple[str, dict[str, Any], str | None, dict[str, str]]] = [
        ("bf16 compiled", {"compile": True}, None, {}),
        ("fp8 compiled", fp8c, None, {}),
        ("fp8+sage compiled", fp8c, "sage", {}),
    ]
    if tiny:
        variants = [("bf16", {}, None, {}), ("fp8", {"quantize": "fp8"}, None, {}),
                    ("fp8+sage", {"quantize": "fp8"}, "sage", {})]  # fmt: skip
    from fastvideo.attention.backends import FlashAttnBackend
    from fastvideo.attention.fp8_attn import FP8AttentionBackend, _impl_reason
    from fastvideo.attention.sage import sage_package_installed

    if not tiny and FP8AttentionBackend.unavailable_reason() is None:  # cuDNN's frontend or FA3 installed
        variants += [
            ("fp8+fp8-attn compiled", fp8c, "fp8", {}),
            ("bf16 compiled, fp8-attn", {"compile": True}, "fp8", {}),
        ]
        variants += [(f"fp8+fp8-attn compiled, {impl}", fp8c, f"fp8:impl={impl}", {})
                     for impl in ("cudnn", "fa3") if _impl_reason(impl) is None]  # fmt: skip
    if not tiny and sage_package_installed():  # "sage" above runs the package's Hopper kernel: ours too
        variants += [("fp8+sage compiled, our Triton sage kernel", fp8c, "sage:impl=triton", {}),
                     ("fp8+sage compiled, qk per_warp", fp8c, "sage", {"FASTVIDEO_SAGE_QK_GRAN": "per_warp"}),
                     ("fp8+sage compiled, our V packing", fp8c, "sage", {"FASTVIDEO_SAGE_V_PACK": "1"}),
                     ("fp8+sage compiled, package V packing", fp8c, "sage", {"FASTVIDEO_SAGE_V_PACK": "0"}),
                     ("bf16 compiled, sage", {"compile": True}, "sage", {})]  # fmt: skip
    if not tiny and FlashAttnBackend.unavailable_reason() is None:  # FA3 / flash-attn-4 where installed
        variants += [
            ("bf16 compiled, flash-attn", {"compile": True}, "flash-attn", {}),
            ("fp8 compiled, flash-attn", fp8c, "flash-attn", {}),
        ]
    if wanted is not None:
        variants = [v for v in variants if v[0] in wanted]
    for name, options, backend, environment in variants:
        with guarded("i2v14b", name), env(**environment):
            _variant("i2v14b", cfg, kw, name, options, backend, iters, digits=3)


# ---------------------------------------------------------------- 14B blocks: does FP8 / sage pay?


@contextlib.contextmanager
def env(**values: str):  # type: ignore[no-untyped-def]
    """Environment variables set for the duration (the FP8 / sage switches read them per call)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def section_linear14b(tiny: bool, iters: int) -> None:
    """The 14B block's GEMMs at 32760 tokens: bf16 ``F.linear`` against FP8 (activation quantization +
    row-wise ``_scaled_mm``), the quantization through the fused Triton kernel or PyTorch ops, with and
    without fast accumulation; and the quantization alone."""
    import torch.nn.functional as F

    from fastvideo.optimize.fp8 import FP8Linear, fp8_math_available, quantize_rows
    from fastvideo.optimize.fp8_triton import quantize_rows_triton

    if not fp8_math_available(torch.device(DEV)) and not tiny:
        record("linear14b", card=card(), error="no FP8 math on this device")
        return
    m = 32760 if not tiny else 40
    shapes = [(5120, 5120), (5120, 13824), (13824, 5120)] if not tiny else [(64, 64), (64, 128)]
    for k, n in shapes:
        g = torch.Generator(device=DEV).manual_seed(0)
        lin = torch.nn.Linear(k, n, device=DEV, dtype=torch.bfloat16)
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16, generator=g)
        fp8 = FP8Linear.from_linear(lin, "compute")
        fp8.fused_bias = True
        row: dict[str, Any] = {"card": card(), "tokens": m, "in": k, "out": n}
        if DEV == "cuda":
            from fastvideo.optimize.fp8 import rowwise_bias_works, rowwise_fast_accum_works

            row["bias_in_scaled_mm"] = rowwise_bias_works(DEV)
            row["fast_accum"] = rowwise_fast_accum_works(DEV)
        t, _, _ = timed(functools.partial(F.linear, x, lin.weight, lin.bias), iters=iters)
        row["bf16_ms"] = round(t * 1e3, 3)
        for label, quant, fast in (("fp8", "triton", True), ("fp8_torch_quant", "torch", True), ("fp8_exact_accum", "triton", False)):  # fmt: skip
            with guarded("linear14b", label), env(FASTVIDEO_FP8_ACT_QUANT=quant), torch.inference_mode():
                fp8.use_fast_accum = fast
                t, _, _ = timed(functools.partial(fp8._forward_fp8, x), iters=iters)
                row[f"{label}_ms"] = round(t * 1e3, 3)
        t, _, _ = timed(functools.partial(quantize_rows_triton, x), iters=iters)
        row["quant_triton_ms"] = round(t * 1e3, 3)
        t, _, _ = timed(functools.partial(quantize_rows, x), iters=iters)
        row["quant_torch_ms"] = round(t * 1e3, 3)
        record("linear14b", **row)
        del lin, fp8, x
        free()


#: (name, options, attention backend, environment) of the block14b section.
BLOCK_VARIANTS = [
    ("bf16", {}, None, {}),
    ("fp8", {"quantize": "fp8"}, None, {}),
    ("fp8 torch-quant", {"quantize": "fp8"}, None, {"FASTVIDEO_FP8_ACT_QUANT": "torch"}),
    ("sage", {}, "sage", {"FASTVIDEO_SAGE_PV": "fp16"}),
    ("sage pv=fp8", {}, "sage", {"FASTVIDEO_SAGE_PV": "fp8"}),
    ("fp8+sage", {"quantize": "fp8"}, "sage", {"FASTVIDEO_SAGE_PV": "fp16"}),
    ("fp8+sage pv=fp8", {"quantize": "fp8"}, "sage", {"FASTVIDEO_SAGE_PV": "fp8"}),
    ("bf16 compiled", {"compile": True}, None, {}),
    ("fp8 compiled", {"quantize": "fp8", "compile": True}, None, {}),
    ("fp8+sage compiled", {"quantize": "fp8", "compile": True}, "sage", {"FASTVIDEO_SAGE_PV": "fp16"}),
]
#: Also measured when named in BLOCK_VARIANTS (not by default: each compiled variant costs ~30-60 s).
EXTRA_BLOCK_VARIANTS = [
    ("fp8+sage pv=fp8 compiled", {"quantize": "fp8", "compile": True}, "sage", {"FASTVIDEO_SAGE_PV": "fp8"}),
    ("sage compiled", {"compile": True}, "sage", {"FASTVIDEO_SAGE_PV": "fp16"}),
    ("fp8+sage tma", {"quantize": "fp8"}, "sage", {"FASTVIDEO_SAGE_PV": "fp16", "FASTVIDEO_SAGE_TMA": "1"}),
]


def section_block14b(tiny: bool, iters: int, layers: int = 3) -> None:
    """Wan2.1-I2V-14B-480P with ``layers`` blocks at 81x480x832 (32760 tokens), random weights, one
    forward per variant: bf16 / FP8 / sage / FP8+sage, eager and compiled. A 1-block bf16 forward gives
    the time outside the blocks; each line also estimates the 40-block forward and step (CFG) from it.
    ``BLOCK_VARIANTS="bf16,fp8 compiled"`` (comma-separated names) picks variants."""
    frames, height, width = (5, 64, 64) if tiny else (81, 480, 832)
    cfg = wan_config("wan2.1-i2v-14b-480p", tiny, layers=layers)
    cfg["num_layers"] = layers
    kw = inputs(cfg, frames, height, width, image=True)
    picked = os.environ.get("BLOCK_VARIANTS")
    variants = (
        BLOCK_VARIANTS
        if picked is None
        else [v for v in BLOCK_VARIANTS + EXTRA_BLOCK_VARIANTS if v[0] in picked.split(",")]
    )
    if tiny:
        variants = [v for v in variants if "compiled" not in v[0] and "pv=fp8" not in v[0]]
    times = {}
    for n in (1, layers):  # bf16 eager with 1 and with `layers` blocks: the time outside the blocks
        model = ours(dict(cfg, num_layers=n))
        times[n], _, _ = timed(functools.partial(run_dit, model, kw, None), iters=iters)
        del model
        free()
    outside = max(0.0, times[1] - (times[layers] - times[1]) / (layers - 1))
    for name, options, backend, environment in variants:
        with guarded("block14b", name), env(**environment):
            t, peak = _time_variant(cfg, kw, options, backend, iters)
            per_block = (t - outside) / layers
            est = outside + 40 * per_block
            record(
                "block14b", card=card(), model=f"ours {name}", layers=layers, forward_s=round(t, 4),
                per_block_ms=round(per_block * 1e3, 2), outside_blocks_ms=round(outside * 1e3, 2),
                est_40_block_forward_s=round(est, 3), est_step_cfg_s=round(2 * est, 3), peak_gib=round(peak, 2),
            )  # fmt: skip


# ---------------------------------------------------------------- end to end


def make_wan_pipeline(folder: str, tiny: bool) -> None:
    """A diffusers-format Wan2.1-T2V-1.3B pipeline with random weights: the DiT, umT5-XXL and the Wan
    VAE at their real configurations (the tokenizer is the tiny test one: it only maps words to ids)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from fastvideo_wan.tiny import make_tiny_wan, tiny_tokenizer

    if tiny:
        make_tiny_wan(folder, seed=3)
        return
    umt5 = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # fmt: skip
    with torch.device(DEV), default_dtype(torch.bfloat16):
        text_encoder = UMT5EncoderModel(umt5)
        transformer = WanTransformer3DModel(**wan_config("wan2.1-t2v-1.3b", False))
    with torch.no_grad():
        for p in [*text_encoder.parameters(), *transformer.parameters()]:
            p.normal_(0, 0.02)
    torch.manual_seed(0)
    vae = AutoencoderKLWan().to(DEV)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder)


def section_e2e(tiny: bool, steps: int, variants: str) -> None:
    """Wan2.1-T2V-1.3B 81x480x832 with CFG, text encoding + denoising + decoding: diffusers' WanPipeline
    against ours (compiled blocks) without and with the step cache and FP8 + sage, random weights."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="wan13b-")
    t0 = time.perf_counter()
    make_wan_pipeline(folder, tiny)
    free()
    record("e2e", card=card(), built_s=round(time.perf_counter() - t0, 1), folder_gib=round(_du(folder), 2))
    frames, height, width = (5, 32, 32) if tiny else (81, 480, 832)
    request = dict(prompt="a corgi surfing a wave at sunset", negative_prompt="blurry", num_frames=frames,
                   height=height, width=width, guidance_scale=5.0)  # fmt: skip
    if "diffusers" in variants:
        with guarded("e2e", "diffusers"):
            _e2e_diffusers(folder, request, steps)
    options = {
        "bf16": {},
        "teacache": {"cache": "teacache"},
        "fp8+sage+teacache": {"quantize": "fp8", "attention_backend": "sage", "cache": "teacache"},
        # MagCache's skips follow its calibrated magnitude-ratio table, so they happen on random weights too
        # (TeaCache's and the first-block cache's follow the inputs' change, which random weights keep large)
        "magcache": {"cache": "magcache"},
        # our VAE decodes in fp32 by default (Wan's release setting); diffusers' WanPipeline here in bf16
        "bf16+vae-bf16": {"vae_dtype": "bf16"},
        "fp8+sage+magcache": {"quantize": "fp8", "attention_backend": "sage", "cache": "magcache"},
        "fp8+sage": {"quantize": "fp8", "attention_backend": "sage"},
        "fp8+fp8-attn": {"quantize": "fp8", "attention_backend": "fp8"},
        "fp8+fp8-attn+magcache": {"quantize": "fp8", "attention_backend": "fp8", "cache": "magcache"},
        "fp8+fp8-attn+teacache": {"quantize": "fp8", "attention_backend": "fp8", "cache": "teacache"},
        # FlashAttention-4 / FA3 where installed (run_gpu_flash_attn.sh e2e)
        "flash-attn": {"attention_backend": "flash-attn"},
        "flash-attn+magcache": {"attention_backend": "flash-attn", "cache": "magcache"},
        "fp8+flash-attn+magcache": {
            "quantize": "fp8",
            "attention_backend": "flash-attn",
            "cache": "magcache",
        },
    }
    for name, opts in options.items():
        if name in variants.split(","):
            with guarded("e2e", name):
                _e2e_ours(folder, request, steps, name, opts)


def _du(folder: str) -> float:
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**30


def _e2e_diffusers(folder: str, request: dict[str, Any], steps: int) -> None:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16).to(DEV)
    pipe.set_progress_bar_config(disable=True)

    def run(n: int, pipe: Any = pipe) -> Any:
        with torch.inference_mode():
            return pipe(
                **request,
                num_inference_steps=n,
                output_type="np",
                generator=torch.Generator(DEV).manual_seed(0),
            )

    run(2)  # warm-up
    sync()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(steps)
    sync()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    record("e2e", card=card(), variant="diffusers WanPipeline (bf16, eager)", steps=steps, total_s=round(wall, 2),
           per_step_s=round(wall / steps, 3), peak_gib=round(peak, 2))  # fmt: skip
    del pipe
    free()


def _e2e_ours(folder: str, request: dict[str, Any], steps: int, name: str, options: dict[str, Any]) -> None:
    from fastvideo import VideoGenerator

    t0 = time.perf_counter()
    gen = VideoGenerator.from_pretrained(folder, device=DEV, progress=False, **options)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.generate_video(**request, num_inference_steps=2, seed=0)  # warm-up (compiles the blocks)
    warm = time.perf_counter() - t0
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stage = next((s for s in gen.pipeline.stages if hasattr(s, "step_cache")), None)
    before = dict(stage.step_cache.stats) if stage is not None else {}
    result = gen.generate_video(**request, num_inference_steps=steps, seed=0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0
    calls = {k: v - before[k] for k, v in stage.step_cache.stats.items()} if stage is not None else None
    timings = {k: round(v, 3) for k, v in result.timings.items()}
    record("e2e", card=card(), variant=f"ours {name} (compiled blocks)", steps=steps, total_s=timings.get("total"),
           per_step_s=round(result.timings.get("denoising", 0.0) / steps, 3), stages_s=timings,
           load_s=round(loaded, 1), warmup_s=round(warm, 1), peak_gib=round(peak, 2),
           dit_calls=calls)  # fmt: skip
    del gen
    free()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--section",
        required=True,
        choices=["kernel", "dit", "quality", "offload", "i2v14b", "e2e", "linear14b", "block14b"],
    )
    ap.add_argument(
        "--variants",
        default="diffusers,bf16,teacache,fp8+sage+teacache",
        help="e2e: which runs (also magcache, fp8+sage, fp8+sage+magcache, bf16+vae-bf16, fp8+fp8-attn, "
        "fp8+fp8-attn+magcache, fp8+fp8-attn+teacache)",
    )
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    if args.tiny and DEV == "cpu":  # the CPU dry run: sage through the Triton interpreter
        from fastvideo.attention.sage import SageBackend

        os.environ.setdefault("TRITON_INTERPRET", "1")
        SageBackend.unavailable_reason = classmethod(lambda cls: None)  # type: ignore[method-assign]
    if args.section == "kernel":
        section_kernel(args.tiny)
    elif args.section == "dit":
        section_dit(args.tiny, args.iters)
    elif args.section == "quality":
        section_quality(args.tiny, args.steps)
    elif args.section == "e2e":
        section_e2e(args.tiny, args.steps, args.variants)
    elif args.section == "offload":
        section_offload(args.tiny, args.iters)
    elif args.section == "linear14b":
        section_linear14b(args.tiny, args.iters)
    elif args.section == "block14b":
        section_block14b(args.tiny, args.iters)
    else:
        section_i2v14b(args.tiny, args.iters)


if __name__ == "__main__":
    main()
