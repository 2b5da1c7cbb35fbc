"""Plugin discovery: entry points of the ``fastvideo`` group, loaded into one pluggy manager.

Environment switches:

* ``FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins still register).
* ``FASTVIDEO_PLUGINS=fastvideo-wan,my-plugin``: load only these (distribution or entry-point
  names); an empty value loads none.

A plugin that fails to import, declares an unsupported plugin API, or raises in a registration
hook is recorded as *broken* with its reason and never stops the others from loading.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from fastvideo import hookspecs

GROUP = "fastvideo"
BUILTIN_DIST = "fastvideo-core"


@dataclass
class PluginInfo:
    """One loaded (or broken) plugin."""

    name: str  # entry-point name, or "builtin"
    dist: str  # distribution name ("fastvideo-wan")
    version: str
    module: str
    broken: str | None = None  # the reason, when it could not be loaded
    registered: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    key: str = ""  # the name pluggy knows it by: "builtin", "dist:ep", or an in-process name

    def __post_init__(self) -> None:
        if not self.key:
            self.key = "builtin" if self.name == "builtin" else f"{self.dist}:{self.name}"


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pm: pluggy.PluginManager | None = None
        self.infos: list[PluginInfo] = []


_STATE = _State()


def _core_version() -> str:
    try:
        return md.version(BUILTIN_DIST)
    except md.PackageNotFoundError:
        return "0+unknown"


def _normalize(name: str) -> str:
    """PEP 503 normalization, so that ``FastVideo_Wan`` selects ``fastvideo-wan``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _allow_list() -> set[str] | None:
    raw = os.environ.get("FASTVIDEO_PLUGINS")
    if raw is None:
        return None
    return {_normalize(p) for p in raw.split(",") if p.strip()}


def _autoload_disabled() -> bool:
    return os.environ.get("FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD", "").lower() in ("1", "true", "yes")


def _check_api(module: ModuleType, dist: str) -> str | None:
    api = getattr(module, "FASTVIDEO_PLUGIN_API", None)
    if api is None:
        return (
            f"{dist} does not declare FASTVIDEO_PLUGIN_API in {module.__name__}; this core supports "
            f"plugin API {sorted(hookspecs.SUPPORTED_PLUGIN_APIS)}: add FASTVIDEO_PLUGIN_API = "
            f"{hookspecs.PLUGIN_API_VERSION} to the plugin module"
        )
    if api not in hookspecs.SUPPORTED_PLUGIN_APIS:
        return (
            f"{dist} needs fastvideo plugin API {api!r}, but fastvideo-core {_core_version()} supports "
            f"{sorted(hookspecs.SUPPORTED_PLUGIN_APIS)}; upgrade fastvideo-core or install a "
            f"{dist} release made for this core"
        )
    return None


def _entry_points() -> list[md.EntryPoint]:
    eps = md.entry_points(group=GROUP)
    return sorted(eps, key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))


def load_plugins(*, reload: bool = False) -> pluggy.PluginManager:
    """Discover and register every plugin once; later calls return the same manager.

    ``reload=True`` forgets what was loaded and discovers again (tests use it after installing or
    uninstalling a distribution).
    """
    with _STATE.lock:
        if _STATE.pm is not None and not reload:
            return _STATE.pm
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        infos: list[PluginInfo] = []
        from fastvideo.builtin import hooks as builtin_hooks

        pm.register(builtin_hooks, name="builtin")
        infos.append(PluginInfo("builtin", BUILTIN_DIST, _core_version(), builtin_hooks.__name__))
        if not _autoload_disabled():
            allow = _allow_list()
            seen: set[str] = set()
            for ep in _entry_points():
                dist = ep.dist.name if ep.dist else ep.name
                version = ep.dist.version if ep.dist else "?"
                if allow is not None and _normalize(dist) not in allow and _normalize(ep.name) not in allow:
                    continue
                key = f"{dist}:{ep.name}"
                if key in seen:  # the same distribution found twice on sys.path
                    continue
                seen.add(key)
                info = PluginInfo(ep.name, dist, version, ep.value)
                infos.append(info)
                try:
                    module = ep.load()
                except Exception as exc:
                    info.broken = f"import of {ep.value} failed: {type(exc).__name__}: {exc}"
                    continue
                info.broken = _check_api(module, dist)
                if info.broken is None:
                    try:
                        pm.register(module, name=key)
                        pm.check_pending()
                    except Exception as exc:
                        pm.unregister(name=key)
                        info.broken = f"invalid hook implementation: {exc}"
        _STATE.pm = pm
        _STATE.infos = infos
        return pm


def plugin_infos() -> list[PluginInfo]:
    """The plugins found by :func:`load_plugins` (the registry fills ``registered``)."""
    load_plugins()
    return _STATE.infos


def plugin_info(plugin_name: str) -> PluginInfo:
    """Info of the plugin that pluggy knows as ``plugin_name`` (``"builtin"`` or ``"dist:ep"``).

    A plugin registered in-process with ``load_plugins().register(module, name=...)`` (tests do
    this) gets an info on first use, with its pluggy name as distribution and entry-point name.
    """
    for info in plugin_infos():
        if info.key == plugin_name:
            return info
    plugin = _STATE.pm.get_plugin(plugin_name) if _STATE.pm is not None else None
    if plugin is None:
        raise KeyError(plugin_name)
    module = getattr(plugin, "__name__", type(plugin).__name__)
    info = PluginInfo(plugin_name, plugin_name, "0+local", module, key=plugin_name)
    _STATE.infos.append(info)
    return info


def call_registration_hook(hook_name: str) -> list[tuple[PluginInfo, Any]]:
    """Call one registration hook on every plugin separately, attributing results to plugins.

    Plugins are called in load order (the built-ins first, then distributions sorted by name, then
    plugins registered in-process), so that on a duplicate name the later plugin is the one
    rejected. A plugin whose hook raises is marked broken, and its earlier registrations stay valid.
    """
    pm = load_plugins()
    caller = getattr(pm.hook, hook_name)
    pairs = [(plugin_info(impl.plugin_name), impl) for impl in caller.get_hookimpls()]
    order = {id(info): n for n, info in enumerate(_STATE.infos)}
    out: list[tuple[PluginInfo, Any]] = []
    for info, impl in sorted(pairs, key=lambda pair: order[id(pair[0])]):
        if info.broken:
            continue
        try:
            result = impl.function()
        except Exception as exc:
            info.broken = f"{hook_name} raised {type(exc).__name__}: {exc}"
            continue
        out.append((info, result))
    return out


def import_string(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"``."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    return getattr(importlib.import_module(module), attr)
