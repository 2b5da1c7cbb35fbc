"""Plugin discovery: entry points of the ``fastvideo`` group, loaded into one pluggy manager.

Environment switches:

* ``FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins still register).
* ``FASTVIDEO_PLUGINS=fastvideo-wan,my-plugin``: load only these (distribution or entry-point
  names); an empty value loads none.
* ``FASTVIDEO_PLUGIN_TIMEOUT=20``: seconds a plugin's import or one of its hooks may take before
  the plugin is given up as broken (``0``: no limit).

A plugin that fails to import, declares an unsupported plugin API, or raises in a registration
hook is recorded as *broken* with its reason and never stops the others from loading. Whatever
it raises (``SystemExit`` and ``KeyboardInterrupt`` included) or prints on stdout while fastvideo
runs its code is kept in its :class:`PluginInfo`, so that it cannot end ``fv`` or corrupt its
``--json`` output.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import io
import os
import re
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from fastvideo import hookspecs

GROUP = "fastvideo"
BUILTIN_DIST = "fastvideo-core"
TIMEOUT_VAR = "FASTVIDEO_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0


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
    commands: list[str] = field(default_factory=list)  # `fv` sub-commands it added
    output: list[str] = field(default_factory=list)  # what it printed on stdout, "<when>: <text>"
    traceback: str | None = None  # of the failure that made it broken (FASTVIDEO_DEBUG=1 shows it)

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
    supported = sorted(hookspecs.SUPPORTED_PLUGIN_APIS)
    if api is None:
        return (
            f"{dist} does not declare FASTVIDEO_PLUGIN_API in {module.__name__}; this core supports "
            f"plugin API {supported}: add FASTVIDEO_PLUGIN_API = "
            f"{hookspecs.PLUGIN_API_VERSION} to the plugin module"
        )
    if api in hookspecs.SUPPORTED_PLUGIN_APIS:
        return None
    head = f"{dist} needs fastvideo plugin API {api!r}, but fastvideo-core {_core_version()} supports {supported}"
    if isinstance(api, int) and not isinstance(api, bool) and api > max(supported):
        return f"{head}; the core is older than the plugin: upgrade fastvideo-core (pip install -U fastvideo-core)"
    if isinstance(api, int) and not isinstance(api, bool):
        return f"{head}; the plugin is older than the core: upgrade {dist} (pip install -U {dist})"
    return f"{head}; FASTVIDEO_PLUGIN_API must be an integer: report this to the authors of {dist}"


class PluginFailed(Exception):
    """Raised by :func:`run_guarded` after it marked the plugin broken."""


def plugin_timeout() -> float | None:
    """``FASTVIDEO_PLUGIN_TIMEOUT`` in seconds (default 20); ``None`` when it is 0 (no limit)."""
    raw = os.environ.get(TIMEOUT_VAR, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_VAR} must be a number of seconds, got {raw!r}") from None
    return value if value > 0 else None


def _exclude_hint(dist: str) -> str:
    """How to run without ``dist``: the ``FASTVIDEO_PLUGINS`` value that names every other plugin."""
    allow = _allow_list()
    names = {ep.dist.name if ep.dist else ep.name for ep in _entry_points()} - {dist}
    others = sorted(n for n in names if allow is None or _normalize(n) in allow)
    return (
        f"exclude it with FASTVIDEO_PLUGINS={','.join(others)} (the plugins to load) or pip uninstall {dist}"
    )


def run_guarded(info: PluginInfo, what: str, fn: Callable[[], Any]) -> Any:
    """Run one piece of a plugin's code (``what``: "import of x", "fv_register_..."), so that it
    cannot take ``fv`` down.

    Its stdout is captured into ``info.output``; anything it raises, ``SystemExit`` and
    ``KeyboardInterrupt`` included, and running longer than :func:`plugin_timeout` (the code runs
    in a daemon thread then, which is left behind), mark ``info`` broken and raise
    :class:`PluginFailed`.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
            box["traceback"] = traceback.format_exc()

    timeout = plugin_timeout()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        if timeout is None:
            target()
            done = True
        else:
            thread = threading.Thread(target=target, name=f"fv-plugin {info.dist}", daemon=True)
            thread.start()
            thread.join(timeout)
            done = not thread.is_alive()
    printed = buffer.getvalue().strip()
    if printed:
        info.output.append(f"{what}: {printed}")
    if not done:
        info.broken = (
            f"{what} did not finish within {timeout:g} s ({TIMEOUT_VAR}); {_exclude_hint(info.dist)}"
        )
        raise PluginFailed(info.broken)
    if "error" in box:
        exc = box["error"]
        verb = "failed:" if what.startswith("import") else "raised"
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        info.broken = f"{what} {verb} {detail}"
        info.traceback = box["traceback"]
        raise PluginFailed(info.broken)
    return box.get("result")


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
                    module = run_guarded(info, f"import of {ep.value}", ep.load)
                except PluginFailed:
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
    out: list[tuple[PluginInfo, Any]] = []
    for info, impl in ordered_hookimpls(hook_name):
        if info.broken:
            continue
        try:
            result = run_guarded(info, hook_name, hook_of(impl, hook_name))
        except PluginFailed:
            continue
        out.append((info, result))
    return out


def hook_of(impl: Any, hook_name: str, **kwargs: Any) -> Callable[[], Any]:
    """A call of ``hook_name`` on ``impl``'s plugin alone, made through pluggy (so hook wrappers,
    ``pm.trace`` and ``pm.add_hookcall_monitoring`` see it); returns that plugin's result, or None."""
    pm = load_plugins()
    others = [plugin for plugin in pm.get_plugins() if plugin is not impl.plugin]

    def call() -> Any:
        results = pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        return results[0] if results else None

    return call


def ordered_hookimpls(hook_name: str) -> list[tuple[PluginInfo, Any]]:
    """The implementations of one hook with their plugin, in load order (built-ins first): one per
    plugin, which :func:`hook_of` calls through pluggy with the plugin's wrappers around it."""
    pm = load_plugins()
    pairs, seen = [], set()
    for impl in getattr(pm.hook, hook_name).get_hookimpls():  # one entry per plugin (not its wrappers)
        if impl.wrapper or impl.hookwrapper or id(impl.plugin) in seen:
            continue
        seen.add(id(impl.plugin))
        pairs.append((plugin_info(impl.plugin_name), impl))
    order = {id(info): n for n, info in enumerate(_STATE.infos)}
    return sorted(pairs, key=lambda pair: order[id(pair[0])])


def broken_plugins() -> list[PluginInfo]:
    """The plugins that could not be loaded or registered, in load order."""
    return [info for info in plugin_infos() if info.broken]


def broken_note() -> str:
    """``plugin x failed to load (reason); see `fv plugins list` ...`` for error messages, or ``""``."""
    broken = broken_plugins()
    if not broken:
        return ""
    what = "; ".join(f"{i.dist} ({i.broken})" for i in broken)
    return f"plugins that failed to load, whose names are missing: {what}; see `fv plugins list`"


def import_string(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"``."""
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    return getattr(importlib.import_module(module), attr)
