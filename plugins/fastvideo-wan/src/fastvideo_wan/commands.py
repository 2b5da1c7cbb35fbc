"""``fv wan ...`` sub-commands (torch is imported inside the commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

wan_app = typer.Typer(help="Wan family tools.", no_args_is_help=True)


@wan_app.command("make-tiny")
def make_tiny(
    path: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    variant: Annotated[str, typer.Option(help="t2v, moe, i2v or ti2v.")] = "t2v",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder's files.")] = False,
) -> None:
    """Write a tiny random-weight Wan checkpoint in diffusers format (offline; ~3 MB)."""
    if path.exists() and any(path.iterdir()) and not overwrite:
        typer.echo(f"error: {path} exists and is not empty; pass --overwrite to write into it", err=True)
        raise typer.Exit(2)
    from fastvideo_wan.tiny import VARIANTS, make_tiny_wan

    if variant not in VARIANTS:
        typer.echo(f"error: --variant must be one of {', '.join(VARIANTS)}, got {variant!r}", err=True)
        raise typer.Exit(2)

    make_tiny_wan(path, variant=variant, seed=seed)
    typer.echo(f"wrote a tiny Wan {variant} checkpoint to {path}")


@wan_app.command("toy-dataset")
def toy_dataset(
    out: Annotated[Path, typer.Argument(help="Folder to write the clips and captions.json into.")],
    num: Annotated[int, typer.Option(help="Number of clips.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the clips.")] = 0,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 17,
    size: Annotated[int, typer.Option(help="Height and width in pixels (>= 48).")] = 64,
    split: Annotated[str, typer.Option(help="train or held-out (unseen attribute combinations).")] = "train",
    overwrite: Annotated[bool, typer.Option(help="Replace existing clips.")] = False,
    format: Annotated[
        str, typer.Option(help="mp4 (lossless) or npy (uint8 arrays, no ffmpeg needed).")
    ] = "mp4",
) -> None:
    """Write a procedural toy dataset (moving coloured shapes + the fv preprocess caption manifest)."""
    from fastvideo.errors import OutputPathError
    from fastvideo_wan.toy import write_dataset

    try:
        manifest = write_dataset(
            out, num, seed, split=split, frames=frames, size=size, overwrite=overwrite, format=format
        )
    except (ValueError, OutputPathError) as exc:  # bad options, or a clip exists without --overwrite
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {num} {split} clips and {manifest}")


@wan_app.command("toy-init")
def toy_init(
    path: Annotated[Path, typer.Argument(help="Folder to write the untrained checkpoint into.")],
    seed: Annotated[
        int, typer.Option(help="Seed of the initial weights (and of the frozen text encoder).")
    ] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a folder that is not empty.")] = False,
) -> None:
    """Write the untrained wan-toy checkpoint that the demo-model recipe trains (diffusers format)."""
    if path.exists() and any(path.iterdir()) and not overwrite:
        typer.echo(f"error: {path} exists and is not empty; pass --overwrite to write into it", err=True)
        raise typer.Exit(2)
    from fastvideo_wan.toy_model import make_toy_scaffold

    make_toy_scaffold(path, seed=seed)
    typer.echo(f"wrote the untrained wan-toy checkpoint to {path}")


@wan_app.command("toy-eval")
def toy_eval(
    model: Annotated[
        str, typer.Argument(help="The model to score: wan-toy or a checkpoint folder.")
    ] = "wan-toy",
    num: Annotated[int, typer.Option(help="How many held-out prompts (of 56), in their fixed order.")] = 56,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the first prompt (the i-th uses seed + i); with --autoencoder, of the clips."
        ),
    ] = 0,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps [the model's default].")] = None,
    guidance_scale: Annotated[Optional[float], typer.Option(help="CFG scale [the model's default].")] = None,
    flow_shift: Annotated[Optional[float], typer.Option(help="Timestep shift [the model's default].")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... [best available].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    autoencoder: Annotated[
        bool,
        typer.Option(
            "--autoencoder",
            help="Score the VAE alone: encode + decode ground-truth held-out clips (its ceiling).",
        ),
    ] = False,
) -> None:
    """Generate held-out toy prompts (never seen in training) and report per-attribute accuracy."""
    import json

    from fastvideo.cli import _clean_errors

    with _clean_errors():
        from fastvideo_wan.toy import held_out_prompts

        prompts = held_out_prompts()
        if not 1 <= num <= len(prompts):
            raise ValueError(f"--num must be in 1..{len(prompts)}, got {num}")
        if autoencoder:
            from fastvideo_wan.toy_model import evaluate_autoencoder

            result = evaluate_autoencoder(model, num, seed=seed, device=device)
            if as_json:
                typer.echo(json.dumps(result, indent=1))
                return
            typer.echo(
                f"VAE on {num} held-out clips: {_accuracy_line(result['accuracy'])}  PSNR {result['psnr']:.2f} dB"
            )
            typer.echo("object-pixel MAE per frame: " + " ".join(f"{v:.1f}" for v in result["object_mae"]))
            return
        sampling = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "flow_shift": flow_shift}
        from fastvideo_wan.toy_model import evaluate_model

        result = evaluate_model(
            model,
            prompts[:num],
            seed=seed,
            device=device,
            **{k: v for k, v in sampling.items() if v is not None},
        )
        if as_json:
            typer.echo(json.dumps(result, indent=1))
            return
        typer.echo(f"{result['count']} held-out prompts: {_accuracy_line(result['accuracy'])}")
        for prompt, got in result["failures"][:10]:
            typer.echo(f"  miss: {prompt!r} -> {got}")


def _accuracy_line(accuracy: dict[str, float]) -> str:
    return "  ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items())
