"""``fv distill dmd2``: the short form of ``fv train`` with ``algorithm: dmd2``.

Torch is imported inside the command body only, so ``fv --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

distill_app = typer.Typer(
    help="Distil a model into a few-step student (fastvideo-dmd2).", no_args_is_help=True
)


@distill_app.command("dmd2", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def dmd2(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="The teacher: preset, Hub repo id or diffusers folder.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Run folder (the student goes to OUTPUT/export).")
    ],
    data: Annotated[
        Path,
        typer.Option(help="Prompts as a dataset written by `fv preprocess` (its latents set the shape)."),
    ],
    steps: Annotated[int, typer.Option(help="Optimisation steps (the critic trains every step).")] = 1000,
    timesteps: Annotated[
        str, typer.Option(help="The student's timesteps, comma-separated (4 steps: 1000,750,500,250).")
    ] = "1000,757,522",
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="A training config to start from (examples/train/dmd2-*.yaml)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest complete checkpoint in OUTPUT.")
    ] = False,
) -> None:
    """Distil TEACHER into a few-step student without CFG (DMD2). Any `fv train` override may follow
    (--roles.student.optim.lr 1e-5, --attention.backend vsa, --data.batch_size 8, ...)."""
    from fastvideo.cli import _clean_errors

    with _clean_errors():
        try:
            listed = [float(t) for t in timesteps.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--timesteps must be comma-separated numbers, got {timesteps!r}") from None
        from fastvideo.training.config import load_config

        overrides = [
            "--algorithm", "dmd2",
            "--model.path", teacher,
            "--data.path", str(data),
            "--output_dir", str(output),
            "--max_steps", str(steps),
            "--algorithm_options.student_timesteps", str(listed),
            *ctx.args,
        ]  # fmt: skip
        cfg = load_config(config, overrides)
        from fastvideo.training.trainer import Trainer

        trainer = Trainer(cfg, resume=resume or None)
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        if trainer.rank == 0:
            typer.echo(f"done: step {summary['step']}, student {summary.get('export')}")
        if trainer.world_size > 1:
            from fastvideo.parallel.launch import exit_worker

            exit_worker(0)
