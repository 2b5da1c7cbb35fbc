"""``fv stepvideo ...`` sub-commands (torch is imported inside the commands only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

stepvideo_app = typer.Typer(help="Step-Video family tools.", no_args_is_help=True)


def convert_clip(folder: Path) -> Path:
    """Write ``model.safetensors`` beside the released HunyuanCLIP's ``pytorch_model.bin`` (read with
    torch's restricted unpickler, ``weights_only=True``: tensors and containers only), atomically.

    :raises ValueError: no ``pytorch_model.bin`` in ``folder``, a ``model.safetensors`` already there,
        or a file that is not a plain state dict of tensors.
    """
    import os
    import tempfile

    import torch
    from safetensors.torch import save_file

    src, dst = folder / "pytorch_model.bin", folder / "model.safetensors"
    if dst.exists():
        raise ValueError(f"{dst} exists already; HunyuanCLIP in {folder} needs no conversion")
    if not src.is_file():
        raise ValueError(
            f"{folder} has no pytorch_model.bin to convert; pass the hunyuan_clip/clip_text_encoder folder"
        )
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
        raise ValueError(
            f"{src}: not a plain state dict of tensors ({type(e).__name__}); it was not converted"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{src}: not a state dict of tensors; it was not converted")
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


@stepvideo_app.command("convert-clip")
def convert_clip_command(
    folder: Annotated[Path, typer.Argument(help="The checkpoint's hunyuan_clip/clip_text_encoder folder.")],
) -> None:
    """Add model.safetensors to the released HunyuanCLIP (shipped as pytorch_model.bin only)."""
    try:
        dst = convert_clip(folder)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {dst}")


@stepvideo_app.command("make-tiny")
def make_tiny(
    path: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    layout: Annotated[str, typer.Option(help="official or diffusers")] = "official",
    ti2v: Annotated[bool, typer.Option(help="Step-Video-TI2V's DiT (image latents + motion score).")] = False,
) -> None:
    """Write a tiny random-weight Step-Video checkpoint (offline, seconds)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        typer.echo(f"error: {path} exists and is not an empty folder; pass a new folder", err=True)
        raise typer.Exit(2)
    if layout not in ("official", "diffusers"):
        typer.echo(f"error: --layout {layout!r}: use official or diffusers", err=True)
        raise typer.Exit(2)
    from fastvideo_stepvideo.tiny import make_tiny_stepvideo

    make_tiny_stepvideo(path, layout=layout, ti2v=ti2v)
    typer.echo(f"wrote a tiny Step-Video checkpoint to {path}")
