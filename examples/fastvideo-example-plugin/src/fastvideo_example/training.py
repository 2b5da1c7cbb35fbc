"""Training hooks of the example family: what ``fv train``, ``fv preprocess`` and ``--lora`` ask of it.

Everything here is core's machinery driven with the example's components: the DiT is loaded by
:meth:`ExampleTransformer.from_pretrained`, the loss is core's
:class:`~fastvideo.training.objectives.FlowMatchingObjective` with the checkpoint's shift, and the
encoders for preprocessing are the pipeline's own text encoder and VAE. The example checkpoint
stores the DiT under our own parameter names, so the diffusers name mapping is the identity.

:class:`fastvideo_example.family.ExampleFamily` delegates to these functions. Torch is imported
inside them only (the family module is imported during plugin registration).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelSource

#: LoRA on every attention projection and both feed-forward layers of each block (fnmatch globs
#: over the DiT's module names); the adaLN modulation and the embeddings stay frozen.
LORA_TARGET_MODULES: tuple[str, ...] = (
    "blocks.*.self_attn.qkv",
    "blocks.*.self_attn.proj",
    "blocks.*.cross_attn.q",
    "blocks.*.cross_attn.kv",
    "blocks.*.cross_attn.proj",
    "blocks.*.ffn.*",  # both Linear layers of the feed-forward (LoRA matches Linear layers only)
)


def training_objective(source: ModelSource) -> Any:
    """Flow matching, shifted as the checkpoint samples: the preset's ``flow_shift``, else the scheduler's."""
    from fastvideo.training.objectives import FlowMatchingObjective

    scheduler = _scheduler_config(source)
    shift = scheduler.get("shift") or 1.0
    if source.preset is not None and source.preset.sampling.get("flow_shift"):
        shift = source.preset.sampling["flow_shift"]
    steps = int(scheduler.get("num_train_timesteps", 1000))
    return FlowMatchingObjective(shift=float(shift), num_train_timesteps=steps)


def training_encoders(source: ModelSource, config: PipelineConfig) -> Any:
    """The pipeline's text encoder and VAE, with the inverse of its latent denormalisation."""
    from fastvideo.loader import load_component
    from fastvideo.models import LatentGeometry, default_dtypes, pick_device
    from fastvideo.pipelines.stages import T5TextEncoder
    from fastvideo.training.preprocess import Encoders

    device = pick_device(config)
    _, text_dtype, vae_dtype = default_dtypes(config, device)
    folder, index = source.path, source.model_index
    tokenizer = load_component(folder, index, "tokenizer")
    text_encoder = load_component(folder, index, "text_encoder", dtype=text_dtype, device=device)
    vae = load_component(folder, index, "vae", dtype=vae_dtype, device=device)
    normalize = LatentGeometry.from_vae(vae).normalize  # the inverse of the pipeline's denormalisation

    return Encoders(text=T5TextEncoder(tokenizer, text_encoder), vae=vae, normalize=normalize, device=device)


def checked_names(names: Iterable[str]) -> dict[str, str]:
    """The identity mapping (the example checkpoint stores the DiT under its own names), refusing
    names that are no parameter of an :class:`ExampleTransformer` (any depth)."""
    from fastvideo.errors import CheckpointError

    names = list(names)
    known = _parameter_patterns()
    unknown = [n for n in names if not any(p.fullmatch(n) for p in known)]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} name(s) are no parameter of the example DiT: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''} (expected names such as blocks.0.self_attn.qkv.weight)"
        )
    return {name: name for name in names}


def _parameter_patterns() -> list[Any]:
    """The parameter names of a one-block DiT, with the block index generalised to any number."""
    import re

    import torch

    from fastvideo_example.model import ExampleConfig, ExampleTransformer

    with torch.device("meta"):
        model = ExampleTransformer(ExampleConfig(num_layers=1))
    return [
        re.compile(re.escape(name).replace(r"blocks\.0\.", r"blocks\.\d+\."))
        for name, _ in model.named_parameters()
    ]


def transformer_config(model: Any) -> dict[str, Any]:
    """The ``config.json`` that :meth:`ExampleTransformer.from_pretrained` reads back."""
    return dict(model.config.to_dict())


def _scheduler_config(source: ModelSource) -> dict[str, Any]:
    if str(source.path) in ("", "."):
        return {}
    path = source.path / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
