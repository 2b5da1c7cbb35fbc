"""Built-in registrations of fastvideo-core (attention backends, parallel strategies, training
algorithms, samplers, pipeline transforms, commands)."""

from __future__ import annotations

from fastvideo.hookspecs import PLUGIN_API_VERSION, hookimpl

FASTVIDEO_PLUGIN_API = PLUGIN_API_VERSION


@hookimpl
def fv_register_attention_backends():  # type: ignore[no-untyped-def]
    from fastvideo.attention.backends import FlashAttnBackend, SDPABackend
    from fastvideo.attention.fp8_attn import FP8AttentionBackend
    from fastvideo.attention.sage import SageBackend

    return [SDPABackend, FlashAttnBackend, SageBackend, FP8AttentionBackend]


@hookimpl
def fv_register_parallel_strategies():  # type: ignore[no-untyped-def]
    from fastvideo.parallel.strategies import BUILTIN

    return list(BUILTIN)


@hookimpl
def fv_register_training_algorithms():  # type: ignore[no-untyped-def]
    from fastvideo.training.algorithms import FinetuneAlgorithm, LoRAAlgorithm
    from fastvideo.training.vae import VAEAlgorithm

    return [FinetuneAlgorithm, LoRAAlgorithm, VAEAlgorithm]


@hookimpl
def fv_register_samplers():  # type: ignore[no-untyped-def]
    from fastvideo.samplers import BUILTIN

    return list(BUILTIN)


@hookimpl
def fv_register_pipeline_transforms():  # type: ignore[no-untyped-def]
    from fastvideo.optimize.transforms import BUILTIN
    from fastvideo.parallel.transforms import CFGParallelTransform, ParallelVAETransform

    return [CFGParallelTransform, ParallelVAETransform, *BUILTIN]


@hookimpl
def fv_register_commands(app):  # type: ignore[no-untyped-def]
    from fastvideo.training.commands import register

    register(app)
