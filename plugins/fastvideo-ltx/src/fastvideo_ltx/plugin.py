"""Entry point of the fastvideo-ltx plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    from fastvideo_ltx.family import LTXVideoFamily
    from fastvideo_ltx.ltx2.family import LTX2Family

    return [LTXVideoFamily, LTX2Family]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_ltx.commands import ltx_app

    app.add_typer(ltx_app, name="ltx")
