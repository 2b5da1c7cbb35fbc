"""Entry point of the fastvideo-vsa plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_attention_backends():  # type: ignore[no-untyped-def]
    from fastvideo_vsa.backend import VSABackend

    return [VSABackend]
