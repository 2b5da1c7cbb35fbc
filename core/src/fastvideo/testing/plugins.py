"""In-process fake plugins: register hook implementations for the duration of a ``with`` block."""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pluggy

from fastvideo.hookspecs import PLUGIN_API_VERSION, hookimpl

_ISOLATION_VARS = ("FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD", "FASTVIDEO_PLUGINS", "FASTVIDEO_ATTENTION_BACKEND")


def plugin_module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module named ``name`` whose hooks are the given functions.

    Example: ``plugin_module("fake-attn", fv_register_attention_backends=lambda: [MyBackend])``.
    """
    module = types.ModuleType(name)
    module.FASTVIDEO_PLUGIN_API = PLUGIN_API_VERSION  # type: ignore[attr-defined]
    for hook_name, fn in hooks.items():
        if not hook_name.startswith("fv_"):
            raise ValueError(f"hook names start with 'fv_', got {hook_name!r}")
        setattr(module, hook_name, hookimpl(specname=hook_name)(fn))
    return module


@contextlib.contextmanager
def fake_plugins(*plugins: Any, autoload: bool | Collection[str] = False) -> Iterator[pluggy.PluginManager]:
    """Load plugins afresh with ``plugins`` registered after the built-ins, then forget them all.

    Each plugin is a module (see :func:`plugin_module`) or any object with ``@hookimpl``
    functions; it is known by its ``__name__`` (else its class name), which errors show as its
    distribution. Installed entry points are not loaded unless ``autoload`` is true, and
    ``FASTVIDEO_PLUGINS`` / ``FASTVIDEO_ATTENTION_BACKEND`` are unset inside the block, so a test
    sees only the core and ``plugins``. ``autoload`` may instead name installed distributions
    (``("fastvideo-vsa", "fastvideo-example-plugin")``): only those load, as with
    ``FASTVIDEO_PLUGINS``. The registry and attention caches are reset on entry and on exit.
    """
    if isinstance(autoload, str):
        raise TypeError(f"autoload takes a bool or a collection of distribution names, got {autoload!r}")
    from fastvideo import registry
    from fastvideo.plugins import load_plugins

    saved = {var: os.environ.get(var) for var in _ISOLATION_VARS}
    for var in _ISOLATION_VARS:
        os.environ.pop(var, None)
    if not autoload:
        os.environ["FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    elif autoload is not True:
        os.environ["FASTVIDEO_PLUGINS"] = ",".join(autoload)
    registry.reset()
    try:
        pm = load_plugins()
        for plugin in plugins:
            pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
        pm.check_pending()
        yield pm
    finally:
        registry.reset()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
