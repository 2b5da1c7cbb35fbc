"""Entry point of the fastvideo-stepvideo plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    from fastvideo_stepvideo.family import StepVideoFamily

    return [StepVideoFamily]


@hookimpl
def fv_register_samplers():  # type: ignore[no-untyped-def]
    from fastvideo_stepvideo.sampler import StepVideoFlowSampler

    return [StepVideoFlowSampler]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_stepvideo.commands import stepvideo_app

    app.add_typer(stepvideo_app, name="stepvideo")
