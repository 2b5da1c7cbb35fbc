"""Entry point of the fastvideo-wan plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    from fastvideo_wan.family import WanFamily

    return [WanFamily]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_wan.commands import wan_app

    app.add_typer(wan_app, name="wan")
