"""``fv sta ...`` sub-commands: mask search, fixed-window strategies, strategy summaries.

torch is imported inside the commands only, so ``fv --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

sta_app = typer.Typer(help="Sliding tile attention: mask search and strategies.", no_args_is_help=True)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Bad input -> ``error: ...`` on one line and exit 2 (``FASTVIDEO_DEBUG=1``: the traceback)."""
    from fastvideo.errors import FastVideoError

    try:
        yield
    except (ValueError, FileExistsError, FastVideoError) as exc:
        if os.environ.get("FASTVIDEO_DEBUG", "") not in ("", "0"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


@sta_app.command("search")
def search_command(
    model: Annotated[str, typer.Argument(help="Preset, Hub id or local diffusers folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Strategy JSON to write.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeat for more).")],
    sparsity: Annotated[
        float, typer.Option(help="Target fraction of attention skipped after the full steps.")
    ] = 0.5,
    candidates: Annotated[
        Optional[str],
        typer.Option(help="Candidate windows t,h,w;t,h,w (default: the anchor's HunyuanVideo set)."),
    ] = None,
    full_steps: Annotated[int, typer.Option(help="Steps kept dense at the start.")] = 0,
    tile: Annotated[str, typer.Option(help="Tile size in tokens t,h,w.")] = "6,8,8",
    errors: Annotated[Optional[Path], typer.Option(help="Also write the recorded errors (JSON).")] = None,
    num_frames: Annotated[Optional[int], typer.Option(help="Frames.")] = None,
    height: Annotated[Optional[int], typer.Option(help="Height in pixels.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Width in pixels.")] = None,
    num_inference_steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps.")] = None,
    guidance_scale: Annotated[Optional[float], typer.Option(help="CFG scale.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cpu, ...")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="bf16, fp16 or fp32.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    """Run dense attention and every candidate window per head, record their errors, and write the
    strategy with the lowest error under --sparsity (atomically)."""
    with _errors():
        from fastvideo_sta.search import DEFAULT_CANDIDATES, search

        sampling = {
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
        }
        generator = {k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None}
        result = search(
            model,
            prompt,
            output=output,
            sparsity=sparsity,
            candidates=candidates or DEFAULT_CANDIDATES,
            full_steps=full_steps,
            tile=tile,
            errors_path=errors,
            overwrite=overwrite,
            generator_options=generator,
            **{k: v for k, v in sampling.items() if v is not None},
        )
    typer.echo(
        f"wrote {result['output']}: sparsity {result['sparsity']:.3f} after {full_steps} full steps "
        f"({result['overall_sparsity']:.3f} overall), mean error {result['mean_error']:.3g}, grid "
        f"{'x'.join(map(str, result['grid']))}"
    )


@sta_app.command("fixed")
def fixed_command(
    output: Annotated[Path, typer.Argument(help="Strategy JSON to write.")],
    window: Annotated[str, typer.Option(help="Window t,h,w in tiles for every layer and head.")],
    steps: Annotated[int, typer.Option(help="Denoising steps.")],
    layers: Annotated[int, typer.Option(help="Sparse attention layers of the model.")],
    heads: Annotated[int, typer.Option(help="Attention heads.")],
    full_steps: Annotated[int, typer.Option(help="Steps with the full window first.")] = 0,
    full: Annotated[str, typer.Option(help="The full window t,h,w (the tile grid).")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a fixed-window strategy (the same window everywhere, the full one for --full-steps)."""
    with _errors():
        from fastvideo_sta.strategy import Strategy, save_strategy
        from fastvideo_sta.tiles import parse_triple

        w = parse_triple(window, "--window")
        f = parse_triple(full, "--full") if full else None
        if full_steps and f is None:
            raise ValueError("--full-steps needs --full t,h,w (the tile grid of the video)")
        if min(steps, layers, heads) < 1 or full_steps < 0:
            raise ValueError("--steps, --layers and --heads must be >= 1 and --full-steps >= 0")
        windows = {
            (s, layer, h): (f if s < full_steps else w)
            for s in range(steps)
            for layer in range(layers)
            for h in range(heads)
        }
        path = save_strategy(Strategy(windows), output, overwrite=overwrite)  # type: ignore[arg-type]
    typer.echo(f"wrote {path}: {steps} steps x {layers} layers x {heads} heads")


@sta_app.command("info")
def info_command(
    strategy: Annotated[Path, typer.Argument(help="Strategy JSON.")],
    grid: Annotated[str, typer.Option(help="Token grid T,H,W to compute sparsity on.")] = "30,48,80",
    tile: Annotated[str, typer.Option(help="Tile size t,h,w.")] = "6,8,8",
) -> None:
    """Steps, layers, heads, the windows used and the sparsity on a grid."""
    with _errors():
        from collections import Counter

        from fastvideo_sta.strategy import load_strategy
        from fastvideo_sta.tiles import TileGeometry, parse_triple

        s = load_strategy(strategy)
        geom = TileGeometry(parse_triple(grid, "--grid"), parse_triple(tile, "--tile"))
        counts = Counter(s.windows.values()).most_common()
    typer.echo(
        f"{s.num_steps} steps x {s.num_layers} layers x {s.num_heads} heads on grid {geom.grid} "
        f"(tiles {geom.tile_grid}): sparsity {s.sparsity(geom):.3f}"
    )
    typer.echo(json.dumps({",".join(map(str, w)): n for w, n in counts}))
