"""The registry: every class that plugins registered, by kind and name.

Built once from the registration hooks (see :mod:`fastvideo.hookspecs`). A name registered twice
for the same kind is rejected: the later registration is dropped and its plugin is reported with
an error naming both classes and both distributions.
"""

from __future__ import annotations

import difflib
import re
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from fastvideo import plugins
from fastvideo.errors import DuplicateNameError, PluginError, UnknownNameError

KINDS: dict[str, str] = {
    "model_family": "fv_register_model_families",
    "attention_backend": "fv_register_attention_backends",
    "parallel_strategy": "fv_register_parallel_strategies",
    "training_algorithm": "fv_register_training_algorithms",
    "sampler": "fv_register_samplers",
    "pipeline_transform": "fv_register_pipeline_transforms",
}
_KIND_WORDS = {
    "model_family": "model family",
    "attention_backend": "attention backend",
    "parallel_strategy": "parallel strategy",
    "training_algorithm": "training algorithm",
    "sampler": "sampler",
    "pipeline_transform": "pipeline transform",
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")

#: Names that official plugins provide, so that errors can say what to ``pip install``.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "model_family": {
        "wan": "fastvideo-wan",
        "hunyuan": "fastvideo-hunyuan",
        "ltx": "fastvideo-ltx",
        "cosmos": "fastvideo-cosmos",
        "stepvideo": "fastvideo-stepvideo",
    },
    "attention_backend": {
        "vsa": "fastvideo-vsa",
        "sta": "fastvideo-sta",
        "flash-attn": "flash-attn (pip install 'fastvideo-core[flash-attn]')",
    },
    "training_algorithm": {"dmd2": "fastvideo-dmd2"},
}


@dataclass(frozen=True)
class Entry:
    """One registered class and where it came from."""

    kind: str
    name: str
    cls: type
    dist: str
    version: str

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


class Registry:
    """Registered classes by kind; build it with :func:`get_registry`."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.conflicts: list[str] = []

    def _add(self, kind: str, cls: Any, info: plugins.PluginInfo) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(cls, type) or not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(
                f"{info.dist} registered {cls!r} as a {_KIND_WORDS[kind]}: expected a class with a "
                f"lower-kebab string attribute `name`, got name={name!r}"
            )
        table = self.entries[kind]
        if name in table:
            old = table[name]
            raise DuplicateNameError(
                f"{_KIND_WORDS[kind]} {name!r} is registered twice: by {old.qualname} from "
                f"{old.dist} {old.version} and by {cls.__module__}.{cls.__qualname__} from "
                f"{info.dist} {info.version}; uninstall one of the two distributions"
            )
        table[name] = Entry(kind, name, cls, info.dist, info.version)
        info.registered.setdefault(kind, []).append(name)

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``, or an :class:`UnknownNameError` with suggestions."""
        table = self.entries[kind]
        if name in table:
            return table[name]
        raise UnknownNameError(unknown_name_message(kind, name, sorted(table)))

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def classes(self, kind: str) -> list[type]:
        return [e.cls for _, e in sorted(self.entries[kind].items())]


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """``Unknown attention backend 'x'. Available: a, b. 'x' is provided by pkg (pip install pkg).``"""
    words = _KIND_WORDS[kind]
    msg = f"Unknown {words} {name!r}. Available: {', '.join(available) or 'none'}."
    provider = KNOWN_PROVIDERS.get(kind, {}).get(name)
    if provider:
        pkg = provider.split(" ")[0]
        msg += f" {name!r} is provided by {pkg} (pip install {pkg})."
    else:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        if close:
            msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
    return msg


_LOCK = threading.RLock()
_REGISTRY: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """Build (once) and return the registry of every installed plugin's classes."""
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is not None and not reload:
            return _REGISTRY
        plugins.load_plugins(reload=reload)
        for info in plugins.plugin_infos():
            info.registered.clear()
        reg = Registry()
        for kind, hook in KINDS.items():
            for info, result in plugins.call_registration_hook(hook):
                if result is not None and not isinstance(result, (list, tuple)):
                    msg = f"{hook} of {info.dist} returned {result!r}; expected a list of classes"
                    _reject(reg, info, PluginError(msg))
                    continue
                for cls in result or []:
                    try:
                        reg._add(kind, cls, info)
                    except PluginError as exc:
                        _reject(reg, info, exc)
        _REGISTRY = reg
        return reg


def _reject(reg: Registry, info: plugins.PluginInfo, exc: PluginError) -> None:
    info.broken = str(exc)
    reg.conflicts.append(str(exc))
    warnings.warn(str(exc), stacklevel=3)


def reset() -> None:
    """Forget the registry, the loaded plugins and the attention backends chosen from them (tests
    call this around fake plugins)."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None
        plugins._STATE.pm = None
        plugins._STATE.infos = []
        selector = sys.modules.get("fastvideo.attention.selector")  # not imported = nothing cached
        if selector is not None:
            selector.clear_caches()
