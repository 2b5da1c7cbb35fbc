"""Architecture sweep for the wan-toy demo model: several VAE / DiT variants trained side by side.

    python benchmarks/wan_toy_sweep.py WORKDIR [--variants a,b] [--vae-minutes M] [--dit-minutes M]

Each variant runs the recipe of examples/train/wan-toy (scaffold -> `fv train` vae on 17 frames ->
`fv preprocess` -> `fv train` finetune -> `fv wan toy-eval`), time-boxed with `max_minutes`, one
variant after the other (``--concurrent`` runs them all at once as separate processes; on an H100
five concurrent VAE trainings took about 9 s a step instead of 0.3 s, so the GPU is not idle enough
for that to pay). WORKDIR/summary.json
gets, per variant: the VAE's own accuracy (`toy-eval --autoencoder`), the model's held-out accuracy,
and the step counts reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "examples" / "train" / "wan-toy"
FOUR_X = {"dim_mult": [1, 2, 4], "temperal_downsample": [True, True], "scale_factor_spatial": 4}

VARIANTS: dict[str, dict[str, dict]] = {
    "8x-b16-z8": {"vae": {}, "dit": {}},
    "8x-b24-z16": {"vae": {"base_dim": 24, "z_dim": 16}, "dit": {}},
    "4x-b16-z8": {"vae": dict(FOUR_X), "dit": {}},
    "4x-b24-z8": {"vae": {**FOUR_X, "base_dim": 24}, "dit": {}},
    "4x-b16-z8-dit6": {"vae": dict(FOUR_X), "dit": {"num_layers": 6, "num_attention_heads": 3}},
}


def run_variant(name: str, spec: dict, work: Path, clips: Path, args: argparse.Namespace) -> subprocess.Popen:
    vdir = work / name
    vdir.mkdir(parents=True, exist_ok=True)
    init = (
        "from fastvideo_wan.toy_model import make_toy_scaffold; import json, sys; "
        "make_toy_scaffold(sys.argv[1], seed=0, vae_overrides=json.loads(sys.argv[2]), "
        "dit_overrides=json.loads(sys.argv[3]))"
    )
    q = lambda s: "'" + str(s).replace("'", "'\\''") + "'"  # noqa: E731
    vae_bs, dit_bs = args.vae_batch, args.dit_batch
    script = f"""
set -eo pipefail
cd {q(vdir)}
t0=$(date +%s)
python3 -c {q(init)} init {q(json.dumps(spec["vae"]))} {q(json.dumps(spec["dit"]))}
fv train --config {q(RECIPE / "vae.yaml")} --model.path init --data.path {q(clips)} --output_dir vae \
  --algorithm_options.num_frames 17 --data.batch_size {vae_bs} --max_steps 100000 \
  --max_minutes {args.vae_minutes} --checkpoint.every_steps 100000 --logging.every_steps 50 \
  --ema.decay {args.vae_ema} --mixed_precision {args.vae_precision}
t1=$(date +%s)
fv wan toy-eval vae/export --autoencoder --json > vae-eval.json
fv preprocess -m vae/export --videos {q(clips)} --captions {q(clips / "captions.json")} -o latents \
  --num-frames 17 --height 64 --width 64 --max-sequence-length 16 --shard-size 2048 \
  --encode-batch-size 128 --overwrite --no-progress
t2=$(date +%s)
fv train --config {q(RECIPE / "dit.yaml")} --model.path vae/export --data.path latents --output_dir dit \
  --data.batch_size {dit_bs} --max_steps {args.dit_steps} --max_minutes {args.dit_minutes} \
  --checkpoint.every_steps 100000 --logging.every_steps 100
t3=$(date +%s)
fv wan toy-eval dit/export --json > eval.json
t4=$(date +%s)
echo "{{\\"vae_s\\": $((t1-t0)), \\"preprocess_s\\": $((t2-t1)), \\"dit_s\\": $((t3-t2)), \\"eval_s\\": $((t4-t3))}}" > times.json
"""
    log = open(vdir / "log.txt", "w")
    return subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT)


def summarize(work: Path, names: list[str]) -> dict:
    out = {}
    for name in names:
        vdir = work / name
        entry: dict = {"spec": VARIANTS[name]}
        for key, file in (("vae_eval", "vae-eval.json"), ("eval", "eval.json"), ("times", "times.json")):
            try:
                data = json.loads((vdir / file).read_text())
                if key == "eval":
                    data = {"accuracy": data["accuracy"], "failures": data["failures"][:8]}
                entry[key] = data
            except (OSError, ValueError):
                entry[key] = None
        for stage in ("vae", "dit"):
            try:
                lines = (vdir / stage / "metrics.jsonl").read_text().splitlines()
                rows = [json.loads(x) for x in lines if x.strip()]
                steps = [r for r in rows if "loss" in r]
                entry[f"{stage}_steps"] = steps[-1].get("step") if steps else None
                entry[f"{stage}_last_loss"] = steps[-1].get("loss") if steps else None
            except OSError:
                entry[f"{stage}_steps"] = None
        out[name] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--clips", type=int, default=8192)
    p.add_argument("--vae-minutes", type=float, default=3.5)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-ema", type=float, default=0.995)
    p.add_argument("--vae-precision", default="fp32", help="fp32 or bf16 (autocast)")
    p.add_argument("--dit-minutes", type=float, default=2.5)
    p.add_argument("--dit-steps", type=int, default=100000)
    p.add_argument("--dit-batch", type=int, default=128)
    p.add_argument("--concurrent", action="store_true", help="run the variants at once")
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    work = args.work
    clips = work / "clips"
    subprocess.run(
        ["fv", "wan", "toy-dataset", str(clips), "--num", str(args.clips), "--format", "npy", "--overwrite"],
        check=True,
    )
    start = time.time()
    if args.concurrent:
        procs = {n: run_variant(n, VARIANTS[n], work, clips.resolve(), args) for n in names}
        for name, proc in procs.items():
            print(f"{name}: rc {proc.wait()} after {time.time() - start:.0f} s", flush=True)
    else:
        for name in names:
            rc = run_variant(name, VARIANTS[name], work, clips.resolve(), args).wait()
            print(f"{name}: rc {rc} after {time.time() - start:.0f} s", flush=True)
    summary = summarize(work, names)
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, entry in summary.items():
        vae_acc = (entry["vae_eval"] or {}).get("accuracy")
        acc = (entry["eval"] or {}).get("accuracy")
        print(
            name,
            "vae",
            vae_acc,
            (entry["vae_eval"] or {}).get("psnr"),
            "model",
            acc,
            entry["times"],
            entry.get("vae_steps"),
            entry.get("dit_steps"),
            flush=True,
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
