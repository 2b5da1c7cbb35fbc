"""Entry point of the fastvideo-sta plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_attention_backends():  # type: ignore[no-untyped-def]
    from fastvideo_sta.backend import STABackend

    return [STABackend]


@hookimpl
def fv_register_pipeline_transforms():  # type: ignore[no-untyped-def]
    from fastvideo_sta.transform import STALayers

    return [STALayers]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_sta.commands import sta_app

    app.add_typer(sta_app, name="sta")
