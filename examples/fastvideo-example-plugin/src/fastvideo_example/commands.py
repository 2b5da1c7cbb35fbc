"""``fv example ...``: the example family's sub-commands (torch is imported inside commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

example_app = typer.Typer(help="Tools of the example plugin.", no_args_is_help=True)


@example_app.command("make-checkpoint")
def make_checkpoint_command(
    path: Annotated[
        Optional[Path], typer.Argument(help="Folder to write into [the example-tiny preset's folder].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a folder that is not empty.")] = False,
    backend_modules: Annotated[
        Optional[str],
        typer.Option(
            metavar="BACKEND",
            help="Also write the per-layer modules this attention backend declares (e.g. a gate "
            "projection), with random weights, as a checkpoint trained with it carries.",
        ),
    ] = None,
) -> None:
    """Write a tiny random-weight example checkpoint in diffusers format (offline, about 3 MB)."""
    from fastvideo_example.presets import default_checkpoint_dir

    path = path if path is not None else default_checkpoint_dir()
    if path.exists() and not path.is_dir():
        typer.echo(f"error: {path} exists and is not a folder", err=True)
        raise typer.Exit(2)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        typer.echo(f"error: {path} is not empty; pass --overwrite to write into it", err=True)
        raise typer.Exit(2)
    from transformers.utils import logging as hf_logging

    from fastvideo_example.checkpoint import check_backend_modules, make_checkpoint

    if backend_modules is not None:
        try:
            check_backend_modules(backend_modules)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 100 kB file
    make_checkpoint(path, seed=seed, backend_modules=backend_modules)
    typer.echo(f"wrote a random-weight example checkpoint to {path}")
    typer.echo(f'try: fv generate --model {path} --prompt "a red ball" --attention-backend example-math')
