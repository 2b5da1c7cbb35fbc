"""``fv wan ...`` sub-commands (torch is imported inside the commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
) -> None:
    """Write a procedural toy dataset (moving coloured shapes, lossless mp4 + fv preprocess manifest)."""
    from fastvideo.errors import OutputPathError
    from fastvideo_wan.toy import write_dataset

    try:
        manifest = write_dataset(out, num, seed, split=split, frames=frames, size=size, overwrite=overwrite)
    except (ValueError, OutputPathError) as exc:  # bad options, or a clip exists without --overwrite
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {num} {split} clips and {manifest}")
