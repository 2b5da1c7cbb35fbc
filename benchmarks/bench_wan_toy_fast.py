"""Denoising time of ``wan-toy-fast`` (3 steps, no CFG) against ``wan-toy`` (20 steps, CFG 2) on this machine.

    python benchmarks/bench_wan_toy_fast.py [--runs 5] [--device cpu]

Both generators are loaded once; the runs alternate between them (so that load on a shared machine
hits both alike) and the median of ``GenerationResult.timings["denoising"]`` (what ``fv generate``
reports as the denoising stage) is compared, with the median of the whole generation beside it.
"""

from __future__ import annotations

import argparse
import statistics

PROMPTS = (
    "a red circle moving left on a black background",
    "a blue square moving up on a gray background",
    "a yellow triangle moving right on a black background",
    "a white circle moving down on a gray background",
    "a cyan square moving left on a black background",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from fastvideo import VideoGenerator

    gens = {
        m: VideoGenerator.from_pretrained(m, device=args.device, progress=False)
        for m in ("wan-toy", "wan-toy-fast")
    }
    times: dict[str, dict[str, list[float]]] = {m: {"denoising": [], "total": []} for m in gens}
    for i in range(args.runs + 1):
        for model, gen in gens.items():
            result = gen.generate_video(PROMPTS[i % len(PROMPTS)], seed=i)
            if i:  # the first run of each warms up
                times[model]["denoising"].append(result.timings["denoising"])
                times[model]["total"].append(result.timings["total"])
    med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
    for model, t in med.items():
        print(
            f"{model:13s} denoising {1000 * t['denoising']:.0f} ms, whole generation {1000 * t['total']:.0f} ms"
        )
    ratio = med["wan-toy"]["denoising"] / med["wan-toy-fast"]["denoising"]
    print(f"wan-toy-fast denoises {ratio:.1f}x faster (median of {args.runs} runs each, {args.device})")


if __name__ == "__main__":
    main()
