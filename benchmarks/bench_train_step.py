"""One training step of a Wan DiT (random init), through the real trainer: dense attention against ``vsa``.

    PYTHONPATH=core/src:plugins/fastvideo-wan/src:plugins/fastvideo-vsa/src python benchmarks/bench_train_step.py
    python benchmarks/bench_train_step.py --tiny --device cpu --no-record --frames 9 --height 64 --width 64

A step is what ``fv train`` runs per optimizer step with ``algorithm: finetune`` (``Trainer.run_step``):
the flow-matching loss on one sample (bf16 autocast, fp32 master weights), backward with activation
checkpointing of every block, gradient clipping and AdamW. The ``vsa`` variant (Wan's VSA gate
projections added, zero-initialised) runs when fastvideo-vsa is installed or importable and can run,
at sparsity 0.9. Reports the median step time and the peak memory, and appends a row to
docs/benchmarks.md (and to ``$OUT/bench_rows.jsonl``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from pathlib import Path
from typing import Any

import torch
from harness import append_row, environment, time_cpu, time_cuda

HEADER = ["date", "card", "config", "latents (F x H x W, tokens)", "attention", "activation ckpt", "step ms",
          "min ms", "peak GiB", "loss", "versions", "command"]  # fmt: skip
SECTION = "Wan DiT training step (finetune, bf16 autocast, fp32 AdamW, random init, batch 1)"


def make_trainer(model: torch.nn.Module, text_dim: int, args: argparse.Namespace, backend: str | None,
                 latent: tuple[int, ...]) -> Any:  # fmt: skip
    """A set-up trainer around ``model``, an in-memory one-sample dataset and Wan's objective."""
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.training.config import load_config
    from fastvideo.training.data import InMemoryDataset
    from fastvideo.training.objectives import FlowMatchingObjective
    from fastvideo.training.trainer import Trainer
    from fastvideo_wan.family import WanFamily

    gen = torch.Generator().manual_seed(0)
    sample = {
        "latents": torch.randn(latent, generator=gen),
        "text": torch.randn(args.text_len, text_dim, generator=gen),
        "text_mask": torch.ones(args.text_len, dtype=torch.long),
    }
    overrides: dict[str, Any] = {
        "model.path": "random-init",
        "data.path": "in-memory",
        "output_dir": str(args.output_dir),
        "max_steps": 1000,
        "device": args.device,
        "mixed_precision": args.precision,
        "parallel.activation_checkpointing": not args.no_activation_checkpointing,
        "optim.lr": 1e-5,
        "export.enabled": False,
    }
    if backend is not None:
        overrides.update({"attention.backend": backend, "attention.sparsity": args.sparsity})
    trainer = Trainer(
        load_config(None, overrides),
        source=ModelSource(family=WanFamily, path=Path("."), model_index={}),
        dataset=InMemoryDataset([sample]),
        objective=FlowMatchingObjective(shift=3.0),
        model=model,
    )
    return trainer.setup()


def vsa_plugin() -> contextlib.AbstractContextManager[Any]:
    """fastvideo-vsa registered in-process when it is importable (PYTHONPATH) but not pip-installed."""
    from fastvideo.registry import get_registry

    if "vsa" in get_registry().entries["attention_backend"]:
        return contextlib.nullcontext()
    try:
        import fastvideo_vsa.plugin as plugin
    except ImportError:
        return contextlib.nullcontext()
    from fastvideo.testing import fake_plugins

    return fake_plugins(plugin, autoload=True)


def vsa_unavailable() -> str | None:
    """Why the vsa variant cannot run here (None when it can)."""
    from fastvideo.attention import resolve_backend_name

    try:
        resolve_backend_name("vsa")
    except Exception as exc:  # unknown or unavailable: reported, the variant is skipped
        return str(exc).splitlines()[0]
    return None


def run_variant(
    variant: str, cfg: dict[str, Any], latent: tuple[int, ...], args: argparse.Namespace
) -> dict[str, Any]:
    """Time ``variant`` (dense or vsa); returns the row's measurements, or {} when skipped."""
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo_wan.model import WanTransformer

    backend = None if variant == "dense" else variant
    if backend is not None and (why := vsa_unavailable()) is not None:
        print(f"{variant}: skipped ({why})")
        return {}
    torch.manual_seed(0)
    # random init with fp32 master weights; core attaches vsa's zero-initialised gate projections
    model = WanTransformer.from_config(cfg, device=args.device)
    if backend is not None:
        attach_layer_modules(model, backend)
    trainer = make_trainer(model, cfg["text_dim"], args, backend, latent)
    batches = trainer._batches()
    metrics: dict[str, float] = {}

    def step() -> None:
        trainer.step += 1
        _, micro = next(batches)
        metrics.update(trainer.run_step(micro))  # what `fv train` runs per optimizer step

    timer = time_cuda if torch.device(args.device).type == "cuda" else time_cpu
    timing, _ = timer(variant, step, warmup=args.warmup, iters=args.iters)
    label = "dense (sdpa)" if backend is None else f"{variant} @ {args.sparsity}"
    return {"label": label, "timing": timing, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="wan2.1-t2v-1.3b")
    ap.add_argument("--tiny", action="store_true", help="the 2-layer test config (CPU smoke runs)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--variants", default="dense,vsa")
    ap.add_argument("--no-activation-checkpointing", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--output-dir", default="outputs/bench-train")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    from fastvideo_wan.configs import CONFIGS
    from fastvideo_wan.model import WanTransformer
    from fastvideo_wan.tiny import TINY_DIT

    cfg = dict(TINY_DIT if args.tiny else CONFIGS[args.config])
    name = "tiny" if args.tiny else args.config
    t_lat, h_lat, w_lat = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    latent = (cfg["in_channels"], t_lat, h_lat, w_lat)
    p = cfg["patch_size"]
    tokens = t_lat // p[0] * (h_lat // p[1]) * (w_lat // p[2])
    env = environment()
    params = sum(q.numel() for q in WanTransformer.from_config(cfg).parameters())  # on the meta device
    print(
        f"{env['card']} torch {env['torch']} {name} ({params / 1e9:.2f}B) latents {latent} = {tokens} tokens"
    )
    with vsa_plugin():
        for variant in args.variants.split(","):
            result = run_variant(variant, cfg, latent, args)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if not result:
                continue
            tm = result["timing"]
            print(f"{result['label']}: {tm.median_ms:.1f} ms/step (min {tm.min_ms:.1f}), peak {tm.peak_gib:.2f} GiB, "
                  f"loss {result['loss']:.4f}, grad_norm {result['grad_norm']:.4f}")  # fmt: skip
            if not args.no_record:
                ckpt = "off" if args.no_activation_checkpointing else "every block"
                row = [env["date"], env["card"], name, f"{args.frames}x{args.height}x{args.width}, {tokens}",
                       result["label"], ckpt, f"{tm.median_ms:.1f}", f"{tm.min_ms:.1f}", f"{tm.peak_gib:.2f}",
                       f"{result['loss']:.4f}", f"torch {env['torch']}", f"`{env['command']}`"]  # fmt: skip
                append_row(SECTION, HEADER, row)


if __name__ == "__main__":
    main()
