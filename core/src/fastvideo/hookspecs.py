"""Every hook a fastvideo plugin can implement. Specs are append-only.

A plugin is a module named by an entry point in the ``fastvideo`` group, for example in its
``pyproject.toml``::

    [project.entry-points.fastvideo]
    wan = "fastvideo_wan.plugin"

The module declares the plugin API it was written for, ``FASTVIDEO_PLUGIN_API = 1``, and
implements any of the hooks below with ``@fastvideo.hookimpl``. Registration hooks return
*classes* and must import heavy dependencies (torch, diffusers) inside the hook body, so that
plugin discovery and ``fv --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from fastvideo.interfaces import (
        AttentionBackend,
        ModelFamily,
        ParallelStrategy,
        PipelineTransform,
        Sampler,
        TrainingAlgorithm,
    )

PROJECT = "fastvideo"
#: The plugin API this core implements. A plugin module declares ``FASTVIDEO_PLUGIN_API = N``;
#: one whose N is not in :data:`SUPPORTED_PLUGIN_APIS` is skipped with a message.
PLUGIN_API_VERSION = 1
SUPPORTED_PLUGIN_APIS = frozenset({1})

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------- registration hooks


@hookspec
def fv_register_model_families() -> list[type[ModelFamily]]:
    """Return the :class:`~fastvideo.interfaces.ModelFamily` subclasses this plugin provides.

    Called once, the first time anything needs the registry (resolving a model, listing
    plugins). Each class carries a unique ``name`` (``"wan"``), its presets and the
    ``_class_name`` values of ``model_index.json`` it handles. Import the module that defines
    the classes inside the hook body; that module must not import torch at import time.
    """


@hookspec
def fv_register_attention_backends() -> list[type[AttentionBackend]]:
    """Return the :class:`~fastvideo.interfaces.AttentionBackend` subclasses this plugin provides.

    Called once, with the other registration hooks. Backends report whether they can run here
    through ``unavailable_reason()``; register them even when they cannot, so that ``fv doctor``
    can say why and an explicit request gets a precise error. A backend's options and per-layer
    modules (``options``, ``layer_modules``) are class attributes read at registration (``fv
    generate`` gets the options' flags), so the module that defines the class must not import torch.
    """


@hookspec
def fv_register_parallel_strategies() -> list[type[ParallelStrategy]]:
    """Return the :class:`~fastvideo.interfaces.ParallelStrategy` subclasses this plugin provides.

    Called once, with the other registration hooks. Names are lower-kebab (``"ulysses"``).
    """


@hookspec
def fv_register_training_algorithms() -> list[type[TrainingAlgorithm]]:
    """Return the :class:`~fastvideo.interfaces.TrainingAlgorithm` subclasses this plugin provides.

    Called once, with the other registration hooks. Names are lower-kebab (``"lora"``, ``"dmd2"``).
    """


@hookspec
def fv_register_samplers() -> list[type[Sampler]]:
    """Return the :class:`~fastvideo.interfaces.Sampler` subclasses this plugin provides.

    Called once, with the other registration hooks. A sampler owns the timestep schedule and the
    update rule of the denoising loop (``fv generate --sampler NAME``, ``PipelineConfig.sampler``);
    a family or preset may name one as its default. Names are lower-kebab (``"few-step"``).
    """


@hookspec
def fv_register_pipeline_transforms() -> list[type[PipelineTransform]]:
    """Return the :class:`~fastvideo.interfaces.PipelineTransform` subclasses this plugin provides.

    Called once, with the other registration hooks. Every registered transform whose
    ``applies(pipeline, config)`` is true is applied to every built pipeline (in one process or on
    every rank), in increasing ``order``: step caching, FP8 linears, offload, compile.
    """


# ---------------------------------------------------------------- CLI


@hookspec
def fv_register_commands(app: typer.Typer) -> None:
    """Add sub-commands to the ``fv`` Typer app, e.g. ``app.add_typer(distill_app, name="distill")``.

    :param app: the root ``fv`` application.

    Called when the CLI starts, before arguments are parsed. Keep imports inside the command
    functions so ``fv --help`` stays fast.
    """
