"""Quality of the speed options on wan-toy: the held-out prompts of `fv wan toy-eval`, generated with each
option (same seeds), scored from the pixels, with the DiT calls each step cache saved.

    python benchmarks/speed_toy_eval.py [--num 56] [--device cpu] [--configs baseline,fp8,teacache,...]
"""

from __future__ import annotations

import argparse
import json
import os
import time

CONFIGS = {
    "baseline": {},
    "no-text-kv-cache": {"text_kv_cache": False},
    "fp8": {"quantize": "fp8"},
    "fp8-storage": {"quantize": "fp8-storage"},
    "sage": {"attention_backend": "sage"},
    "fp8+sage": {"quantize": "fp8", "attention_backend": "sage"},
    "fp8-attn": {"attention_backend": "fp8"},
    "fp8+fp8-attn": {"quantize": "fp8", "attention_backend": "fp8"},
    "teacache": {"cache": "teacache"},
    "firstblock": {"cache": "firstblock"},
    "magcache": {"cache": "magcache"},
    "teacache-0.2": {"cache": "teacache", "cache_threshold": 0.2},
    "firstblock-0.07": {"cache": "firstblock", "cache_threshold": 0.07},
    "firstblock-0.1": {"cache": "firstblock", "cache_threshold": 0.1},
    "magcache-0.12": {"cache": "magcache", "cache_threshold": 0.12},
    "offload": {"offload": "layer"},
}


def run(name: str, options: dict, num: int, device: str | None) -> dict:
    import numpy as np

    from fastvideo import VideoGenerator
    from fastvideo_wan.toy import evaluate, held_out_prompts
    from fastvideo_wan.toy_model import SAMPLING

    prompts = held_out_prompts()[:num]
    options = {"compile": False, **options}  # compiling the toy's blocks would cost more than it saves
    gen = VideoGenerator.from_pretrained("wan-toy", device=device, progress=False, **{**SAMPLING, **options})
    start = time.perf_counter()
    pairs, frames_all = [], []
    for i, prompt in enumerate(prompts):
        frames = gen.generate_video(prompt, seed=i).frames
        pairs.append((frames, prompt))
        frames_all.append(frames)
    wall = time.perf_counter() - start
    stage = next((s for s in gen.pipeline.stages if hasattr(s, "step_cache")), None)
    stats = stage.step_cache.stats if stage is not None else None
    return {
        "config": name,
        "options": options,
        "accuracy": evaluate(pairs),
        "count": num,
        "dit_calls": stats,
        "seconds": round(wall, 2),
        "frames": np.stack(frames_all),
    }


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=56)
    parser.add_argument("--device", default=None)
    parser.add_argument("--configs", default="baseline,fp8-storage,teacache,firstblock,magcache")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results, base = [], None
    for name in args.configs.split(","):
        r = run(name, CONFIGS[name], args.num, args.device)
        frames = r.pop("frames").astype(np.float64)
        if base is None:
            base = frames
        r["mean_abs_vs_first"] = round(float(np.abs(frames - base).mean()), 3)
        results.append(r)
        acc = "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["accuracy"].items())
        print(f"{name:18s} {acc}  calls {r['dit_calls']}  |frames - {args.configs.split(',')[0]}| "
              f"{r['mean_abs_vs_first']}/255  {r['seconds']} s", flush=True)  # fmt: skip
    with open(os.path.join(args.out, "speed_toy_eval.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
