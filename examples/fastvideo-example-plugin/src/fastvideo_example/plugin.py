"""Entry point of fastvideo-example-plugin: hook implementations only.

This module is imported whenever plugins are discovered (``fv --help``, ``fv plugins list``), so
it imports nothing heavy: each hook imports what it registers inside its body, and those modules
keep torch out of their module level too.
"""

from fastvideo import hookimpl

#: The plugin API this plugin was written for; the core skips plugins whose API it does not support.
FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    from fastvideo_example.family import ExampleFamily

    return [ExampleFamily]


@hookimpl
def fv_register_attention_backends():  # type: ignore[no-untyped-def]
    from fastvideo_example.attention import ExampleMathAttention

    return [ExampleMathAttention]


@hookimpl
def fv_register_samplers():  # type: ignore[no-untyped-def]
    from fastvideo_example.sampler import ExampleLinearSampler

    return [ExampleLinearSampler]


@hookimpl
def fv_register_pipeline_transforms():  # type: ignore[no-untyped-def]
    from fastvideo_example.transforms import SkipAlternateSteps

    return [SkipAlternateSteps]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo_example.commands import example_app

    app.add_typer(example_app, name="example")
