"""Step-Video's VAE decode (random weights, bf16) at the official 204x544x992 (12 chunks of 3 x 34 x 62
latents): untiled (the reference's way) against spatially tiled (256 px tiles every 192 px, the default
``enable_tiling``), peak GPU memory and time each, and the tiled frames' deviation from the untiled ones.

    python benchmarks/bench_stepvideo_vae.py          # GPU
    python benchmarks/bench_stepvideo_vae.py --tiny   # CPU dry run at toy sizes

A row per mode goes to docs/benchmarks.md; a JSON summary to ``$OUT/stepvideo_vae.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import append_row, environment

HEADER = [
    "date",
    "card",
    "video (F x H x W)",
    "decode",
    "seconds",
    "peak GiB",
    "mean |tiled - untiled|",
    "command",
]
TINY = {"z_channels": 2, "num_res_blocks": 1, "decoder_ch": 32, "decoder_ch_mult": [1, 1, 1, 1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from fastvideo_stepvideo.vae import StepVideoVAE, StepVideoVAEConfig

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = StepVideoVAEConfig.from_json(TINY if args.tiny else {})
    frames, height, width = (34, 96, 128) if args.tiny else (204, 544, 992)
    torch.manual_seed(0)
    with torch.device("meta"):
        vae = StepVideoVAE(cfg, with_encoder=False)
    vae = vae.to_empty(device=device)
    for name, p in vae.named_parameters():  # fan-in scaled random weights, norms at identity
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)
        elif p.ndim == 1:
            torch.nn.init.ones_(p)
        else:
            torch.nn.init.normal_(p, std=p[0].numel() ** -0.5)
    vae = vae.to(dtype).eval()
    z = torch.randn(
        1, cfg.z_channels, frames // 17 * 3, height // 16, width // 16, device=device, dtype=dtype
    )
    if args.tiny:
        vae.tile_size, vae.tile_stride = 64, 48
    with torch.no_grad():  # warm-up (kernel selection) on one small chunk, tiled and not
        vae.decode(z[:, :, :3, :8, :8])
    results, videos = {}, {}
    for mode in ("tiled", "untiled"):
        vae.enable_tiling() if mode == "tiled" else vae.disable_tiling()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                video = vae.decode(z)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            videos[mode] = video.float().cpu()
            results[mode] = {
                "seconds": round(seconds, 2),
                "peak_gib": round(peak, 2),
                "shape": list(video.shape),
            }
        except torch.OutOfMemoryError:
            results[mode] = {"error": "out of memory"}
        print(mode, results[mode], flush=True)
    if len(videos) == 2:
        a, b = videos["tiled"], videos["untiled"]
        results["mean_abs_deviation_rel"] = ((a - b).abs().mean() / b.abs().mean()).item()
        print("mean |tiled - untiled| / mean |untiled| =", round(results["mean_abs_deviation_rel"], 4))
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "stepvideo_vae.json").write_text(json.dumps(results, indent=1))
    if not args.no_record and not args.tiny:
        env = environment()
        for mode in ("tiled", "untiled"):
            r = results[mode]
            append_row(
                "Step-Video VAE decode (random weights, bf16)",
                HEADER,
                [env["date"], env["card"], f"{frames} x {height} x {width}", mode, r.get("seconds", "-"),
                 r.get("peak_gib", r.get("error")), f"{results.get('mean_abs_deviation_rel', float('nan')):.3g}",
                 env["command"]],
            )  # fmt: skip


if __name__ == "__main__":
    main()
