"""Entry point of the fastvideo-hunyuan plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    from fastvideo_hunyuan.family import HunyuanFamily

    return [HunyuanFamily]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_hunyuan.commands import hunyuan_app

    app.add_typer(hunyuan_app, name="hunyuan")
