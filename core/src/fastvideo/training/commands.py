"""``fv train`` and ``fv preprocess`` (registered by the core through ``fv_register_commands``).

Torch is imported inside the command bodies only, so ``fv --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from fastvideo.training.trainer import Trainer

TRAIN_HELP = """Train a model: fv train --config train.yaml [--section.key VALUE ...].

Any config field can be overridden with a dotted option (--optim.lr 1e-4, --data.batch_size=8,
--lora.targets '[blocks.*.self_attn.q]'). Several processes: torchrun --nproc-per-node N -m fastvideo.cli
train ... Example configs: examples/train/*.yaml; reference: docs/training.md."""


def train(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML (or JSON) training config.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest complete checkpoint in output_dir.")
    ] = False,
    resume_from: Annotated[
        Optional[Path], typer.Option(help="Continue from this checkpoint folder (step-N).")
    ] = None,
    export_only: Annotated[bool, typer.Option(help="Load the newest checkpoint and only export it.")] = False,
    print_config: Annotated[bool, typer.Option(help="Print the resolved config as YAML and exit.")] = False,
) -> None:
    from fastvideo.cli import _clean_errors

    with _clean_errors():
        from fastvideo.training.config import load_config

        if config is None and not ctx.args:
            raise ValueError("fv train needs a config: --config train.yaml (see examples/train/*.yaml)")
        cfg = load_config(config, list(ctx.args))
        if print_config:
            import yaml

            typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
            return
        from fastvideo.training.trainer import Trainer

        request: str | bool | None = str(resume_from) if resume_from is not None else (resume or None)
        trainer = Trainer(cfg, resume=True if export_only else request)
        try:
            if export_only:
                summary = _export_only(trainer)
            else:
                summary = trainer.train()
        finally:
            trainer.close()
        if trainer.rank == 0:
            typer.echo(f"done: step {summary['step']}, export {summary.get('export')}")
        if trainer.world_size > 1:
            from fastvideo.parallel.launch import exit_worker

            exit_worker(0)  # the process group is gone; skip the finalization that can abort a gloo rank


def _export_only(trainer: Trainer) -> dict[str, Any]:
    trainer.setup()
    path = trainer._resume_path()  # the newest intact checkpoint
    if path is None:
        raise ValueError(f"--export-only: no complete checkpoint under {trainer.checkpoint_root}")
    trainer.load_checkpoint(path)
    return {"step": trainer.step, "export": str(trainer.export())}


def preprocess(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Preset, Hub repo id or local diffusers folder.")
    ],
    videos: Annotated[Path, typer.Option(help="Folder holding the videos.")],
    captions: Annotated[Path, typer.Option(help="JSON or CSV manifest of {path, caption}.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Dataset folder to write.")],
    num_frames: Annotated[
        Optional[int], typer.Option(help="Frames per sample (Wan: 4k+1) [the model's default].")
    ] = None,
    height: Annotated[Optional[int], typer.Option(help="Height in pixels [the model's default].")] = None,
    width: Annotated[Optional[int], typer.Option(help="Width in pixels [the model's default].")] = None,
    frame_stride: Annotated[int, typer.Option(help="Take every N-th frame.")] = 1,
    max_sequence_length: Annotated[
        Optional[int], typer.Option(help="Text tokens [the model's default].")
    ] = None,
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 64,
    encode_batch_size: Annotated[int, typer.Option(help="Videos per VAE call (small clips: 32+).")] = 1,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu [cuda when available].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start the output folder again.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    negative_prompt: Annotated[
        Optional[str], typer.Option(help="Also encode this negative prompt (for CFG teachers, e.g. DMD2).")
    ] = None,
) -> None:
    """Encode videos and captions into latent/text-embedding shards for `fv train` (resumable)."""
    from fastvideo.cli import _clean_errors

    with _clean_errors():
        from fastvideo import progress as bars
        from fastvideo.training.preprocess import preprocess as run

        bars.set_enabled(progress)
        manifest = run(
            model,
            videos,
            captions,
            output,
            num_frames=num_frames,
            height=height,
            width=width,
            frame_stride=frame_stride,
            max_sequence_length=max_sequence_length,
            shard_size=shard_size,
            device=device,
            overwrite=overwrite,
            encode_batch_size=encode_batch_size,
            negative_prompt=negative_prompt,
        )
        typer.echo(
            f"wrote {manifest['count']} samples in {len(manifest['shards'])} shard(s) to {output} "
            f"({len(manifest['skipped'])} skipped)"
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``preprocess`` to the ``fv`` app."""
    settings = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command("train", help=TRAIN_HELP, context_settings=settings)(train)
    app.command("preprocess")(preprocess)
