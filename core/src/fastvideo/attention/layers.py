"""Per-layer modules of attention backends (``AttentionBackend.layer_modules``), attached by core.

A model lists its sparse attention layers in a ``sparse_attention_layers`` class attribute (globs
over module names, matched component by component: ``blocks.*.self_attn``). A backend that needs
learned parameters there (``vsa``: a gate projection) declares
:class:`fastvideo.interfaces.attention.LayerModule` s. This module

* attaches them to those layers (:func:`attach_layer_modules`) when the backend is selected or a
  checkpoint holds them, and hooks the layers so that the dispatcher can hand the backend the layer
  and its input (:func:`fastvideo.attention.selector.layer_inputs`);
* extends a model's checkpoint name mapping with the names the backends declare for their modules
  (:func:`checkpoint_mapping` for loading, :func:`to_their_names` for exporting).

Model families call it from their loaders; nothing here names a backend or a model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fastvideo.registry import get_registry

if TYPE_CHECKING:
    from torch import nn

    from fastvideo.interfaces.attention import AttentionBackend, LayerModule
    from fastvideo.loader.mapping import NameMapping, Rule

_HOOKED = "_fastvideo_layer_hooks"
_INDEX = "_fastvideo_sparse_index"


def sparse_layer_globs(model: Any) -> tuple[str, ...]:
    """The model's ``sparse_attention_layers`` (a model instance or class); empty when it lists none."""
    cls = model if isinstance(model, type) else type(getattr(model, "_orig_mod", model))  # compiled
    return tuple(getattr(cls, "sparse_attention_layers", ()))


def _is_layer(name: str, globs: Iterable[str]) -> bool:
    """Whether module ``name`` matches a glob, component by component (``*`` is one component)."""
    parts = name.split(".")
    for glob in globs:
        pattern = glob.split(".")
        if len(pattern) == len(parts) and all(
            fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pattern, strict=True)
        ):
            return True
    return False


def module_backends() -> dict[str, type[AttentionBackend]]:
    """Registered backends that declare layer modules, by name."""
    entries = get_registry().entries["attention_backend"]
    out = {n: e.cls for n, e in sorted(entries.items()) if getattr(e.cls, "layer_modules", ())}
    return out  # type: ignore[return-value]


def _all_modules() -> list[tuple[str, LayerModule]]:
    return [(name, m) for name, cls in module_backends().items() for m in cls.layer_modules]


def _layers_of(names: Iterable[str], globs: tuple[str, ...]) -> dict[str, list[str]]:
    """Sparse layer name -> the names below it (``blocks.3.self_attn`` -> its parameter names)."""
    out: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        for end in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:end])
            if _is_layer(prefix, globs):
                out.setdefault(prefix, []).append(name)
                break
    return out


def _common(names: Iterable[list[str]]) -> list[str]:
    out: list[str] = []
    for parts in zip(*names, strict=False):
        if len(set(parts)) > 1:
            break
        out.append(parts[0])
    return out


def _their_layers(
    names: Iterable[str], globs: tuple[str, ...], to_theirs: Callable[[list[str]], Mapping[str, str]]
) -> dict[str, str]:
    """Our sparse layer name -> theirs (``blocks.3.self_attn`` -> ``blocks.3.attn1``): the longest
    dotted prefix common to the their-names of the layer's own parameters, less as many components
    as our names share below the layer (a layer with a single projection)."""
    modules = {m.name for _, m in _all_modules()}
    out = {}
    for layer, below in _layers_of(names, globs).items():
        own = [n for n in below if n[len(layer) + 1 :].split(".")[0] not in modules]
        theirs = list(to_theirs(own).values()) if own else []
        if not theirs:
            continue
        deeper = len(_common(n.split(".")[:-1] for n in own)) - len(layer.split("."))
        common = _common(t.split(".")[:-1] for t in theirs)
        common = common[: len(common) - deeper]
        if common:
            out[layer] = ".".join(common)
    return out


def _rules(their_layers: Mapping[str, str]) -> tuple[list[Rule], list[Rule]]:
    """(written, read-only) name rules of every registered backend's modules on these layers."""
    written: list[Rule] = []
    read_only: list[Rule] = []
    for _, module in _all_modules():
        for ours, theirs in their_layers.items():
            parent = theirs.rpartition(".")[0]
            for n, template in enumerate(module.checkpoint_names):
                name = template.format(layer=theirs, parent=parent).strip(".")
                rule = (f"{name}.{{param}}", f"{ours}.{module.name}.{{param}}")
                (written if n == 0 else read_only).append(rule)
    return written, read_only


def checkpoint_mapping(model: nn.Module, mapping: NameMapping) -> NameMapping:
    """``mapping`` extended with the checkpoint names of every registered backend's layer modules on
    ``model``'s sparse attention layers, so that checkpoints holding them (FastVideo's VSA
    checkpoints: ``blocks.N.to_gate_compress``) load whichever backend is selected."""
    globs = sparse_layer_globs(model)
    if not globs or not module_backends():
        return mapping
    names = list(model.state_dict())

    def to_theirs(ns: list[str]) -> dict[str, str]:
        return {ours: theirs for theirs, ours in mapping.to_theirs({n: n for n in ns}).items()}

    written, read_only = _rules(_their_layers(names, globs, to_theirs))
    return mapping.extended(written, read_only=read_only) if written or read_only else mapping


def to_their_names(
    model: Any, names: Iterable[str], to_theirs: Callable[[list[str]], Mapping[str, str]]
) -> dict[str, str]:
    """Our -> their names: the backends' layer modules by the first checkpoint name they declare (so
    that exports stay loadable), the rest by ``to_theirs`` (``names -> {ours: theirs}``, e.g.
    ``ModelFamily.to_diffusers_names``)."""
    from fastvideo.loader.mapping import NameMapping

    names = list(names)
    globs = sparse_layer_globs(model)
    modules = {m.name for _, m in _all_modules()}
    layers = _layers_of(names, globs) if globs and modules else {}
    attached = {
        n for layer, below in layers.items() for n in below if n[len(layer) + 1 :].split(".")[0] in modules
    }
    out = dict(to_theirs([n for n in names if n not in attached]))
    if attached:
        written, _ = _rules(_their_layers(names, globs, to_theirs))
        mapping = NameMapping(
            written,
            rules_name="the checkpoint_names of AttentionBackend.layer_modules",
            ours="ours",
            their_class="checkpoint",
            our_class="model",
        )
        out.update({o: t for t, o in mapping.to_theirs({n: n for n in attached}).items()})
    return out


def attach_layer_modules(
    model: nn.Module, backend: str | None = None, *, stored: Iterable[str] = ()
) -> list[str]:
    """Attach to ``model``'s sparse attention layers the modules of ``backend`` (when it declares
    any) and those of any backend whose modules ``stored`` (a checkpoint's parameter names, ours)
    holds. Layers that already have a module keep it.

    :returns: our names of the parameters attached that ``stored`` lacks (a loader fills them with
        zeros; on a real device they are zeroed here).
    """
    globs = sparse_layer_globs(model)
    backends = module_backends()
    if not globs or not backends:
        return []
    stored = set(stored)
    layers = [(n, m) for n, m in model.named_modules() if n and _is_layer(n, globs)]
    for index, (_, layer) in enumerate(layers):
        object.__setattr__(layer, _INDEX, index)
    wanted: set[str] = {backend} & set(backends) if backend is not None else set()
    for name, cls in backends.items():
        prefixes = tuple(f"{layer}.{m.name}." for layer, _ in layers for m in cls.layer_modules)
        if any(key.startswith(prefixes) for key in stored):
            wanted.add(name)
    fresh: list[str] = []
    for name in sorted(wanted):
        for spec in backends[name].layer_modules:
            for layer_name, layer in layers:
                if getattr(layer, spec.name, None) is None:
                    module = spec.build(layer)
                    setattr(layer, spec.name, module)
                    new = [f"{layer_name}.{spec.name}.{p}" for p, _ in module.named_parameters()]
                    fresh += [p for p in new if p not in stored]
                    if not any(t.is_meta for t in module.parameters()):
                        _zero(module)
                hook_layer(layer)
    return fresh


def sparse_layer_index(layer: nn.Module) -> int | None:
    """The position of ``layer`` among its model's sparse attention layers, in module order (Wan's
    ``blocks.N.self_attn`` is ``N``; HunyuanVideo's double blocks come before its single blocks), as
    :func:`attach_layer_modules` recorded it; ``None`` for a layer it never saw. Backends whose
    settings differ per layer (window sizes) read it from the layer :meth:`layer_inputs` gets."""
    return getattr(layer, _INDEX, None)


def _zero(module: nn.Module) -> None:
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def hook_layer(layer: nn.Module) -> None:
    """Make ``layer``'s forward visible to the dispatcher (once): while it runs, the selected
    backend's :meth:`~fastvideo.interfaces.AttentionBackend.layer_inputs` gets the layer and its
    first argument (the input hidden states)."""
    if getattr(layer, _HOOKED, False):
        return
    from fastvideo.attention import selector

    def enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else next(iter(kwargs.values()), None)  # the first argument
        selector._LAYERS.append((module, hidden))

    def leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        selector._LAYERS.pop()

    layer.register_forward_pre_hook(enter, with_kwargs=True)
    layer.register_forward_hook(leave, always_call=True)
    object.__setattr__(layer, _HOOKED, True)
