"""Entry point of the fastvideo-stepvideo plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    return []  # the family registers once its pipeline lands
