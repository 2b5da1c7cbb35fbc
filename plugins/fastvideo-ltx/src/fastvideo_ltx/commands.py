"""``fv ltx ...`` sub-commands (torch is imported inside the commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ltx_app = typer.Typer(help="LTX-Video family tools.", no_args_is_help=True)


@ltx_app.command("make-tiny")
def make_tiny(
    path: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    image_to_video: Annotated[bool, typer.Option(help="Write an LTXImageToVideoPipeline folder.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder's files.")] = False,
) -> None:
    """Write a tiny random-weight LTX-Video checkpoint in diffusers format (offline; < 1 MB)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        typer.echo(
            f"error: {path} exists and is not an empty folder; pass --overwrite to write into it", err=True
        )
        raise typer.Exit(2)
    from fastvideo.loader.components import quiet_libraries
    from fastvideo_ltx.ltxv.tiny import make_tiny_ltx

    quiet_libraries()  # no diffusers / transformers progress bars
    pipeline = "LTXImageToVideoPipeline" if image_to_video else "LTXPipeline"
    make_tiny_ltx(path, seed=seed, timestep_conditioning=True, pipeline=pipeline)
    typer.echo(f"wrote a tiny LTX-Video checkpoint ({pipeline}) to {path}")
