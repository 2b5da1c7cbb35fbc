"""Built-in registrations of fastvideo-core (attention backends; more kinds as they land)."""

from __future__ import annotations

from fastvideo.hookspecs import PLUGIN_API_VERSION, hookimpl

FASTVIDEO_PLUGIN_API = PLUGIN_API_VERSION


@hookimpl
def fv_register_attention_backends():  # type: ignore[no-untyped-def]
    from fastvideo.attention.backends import FlashAttnBackend, SDPABackend

    return [SDPABackend, FlashAttnBackend]
