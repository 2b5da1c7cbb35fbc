"""Entry point of fastvideo-dmd2: hook implementations only (torch is imported inside the hooks)."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_training_algorithms():  # type: ignore[no-untyped-def]
    from fastvideo_dmd2.algorithm import DMD2Algorithm

    return [DMD2Algorithm]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_dmd2.commands import distill_app

    app.add_typer(distill_app, name="distill")
