"""``fv hunyuan ...`` sub-commands (torch is imported inside the commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

hunyuan_app = typer.Typer(help="HunyuanVideo family tools.", no_args_is_help=True)


@hunyuan_app.command("make-tiny")
def make_tiny(
    path: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder's files.")] = False,
) -> None:
    """Write a tiny random-weight HunyuanVideo checkpoint in diffusers format (offline; ~1.5 MB)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        typer.echo(
            f"error: {path} exists and is not an empty folder; pass --overwrite to write into it", err=True
        )
        raise typer.Exit(2)
    from fastvideo.loader.components import quiet_libraries
    from fastvideo_hunyuan.tiny import make_tiny_hunyuan

    quiet_libraries()  # no diffusers / transformers progress bars
    make_tiny_hunyuan(path, seed=seed)
    typer.echo(f"wrote a tiny HunyuanVideo checkpoint to {path}")
