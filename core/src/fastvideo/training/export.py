"""Export a trained DiT as a diffusers-format folder that ``fv generate`` and diffusers both load.

The folder is the base checkpoint with one component replaced: ``model_index.json`` and every other
component (VAE, text encoder, tokenizer, scheduler) are hard-linked (copied across file systems)
from the base, and ``<component>/`` gets ``config.json`` (from the family's
:meth:`~fastvideo.interfaces.ModelFamily.transformer_config`) and
``diffusion_pytorch_model.safetensors`` with diffusers' parameter names (from
:meth:`~fastvideo.interfaces.ModelFamily.to_diffusers_names`). Active LoRA adapters are folded in.
The folder appears atomically (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fastvideo.loader.components import torch_dtype
from fastvideo.training.lora import lora_layers

if TYPE_CHECKING:
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

WEIGHTS = "diffusion_pytorch_model.safetensors"


_LORA_KEY = re.compile(r"\.lora_(A|B|bias)\.")


def _is_lora_key(name: str) -> bool:
    return _LORA_KEY.search(name) is not None


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` as a plain CPU tensor; gathers FSDP2 shards (collective: every rank calls
    it; ranks other than 0 get an empty dict)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return dict(get_model_state_dict(model, options=opts))  # type: ignore[arg-type]
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without adapter tensors, each LoRA layer's active adapters folded into its weight (fp32 math)."""
    out = {k: v for k, v in state.items() if not _is_lora_key(k)}
    if not state:
        return out
    for module, layer in lora_layers(model).items():
        merged = set(layer.merged)
        for name in layer.active:
            if name in merged:
                continue  # already inside the weight
            s = layer.lora_scale[name]
            a = state[f"{module}.lora_A.{name}"].float()
            b = state[f"{module}.lora_B.{name}"].float()
            w = out[f"{module}.weight"]
            out[f"{module}.weight"] = (w.float() + s * (b @ a)).to(w.dtype)
            bias_key = f"{module}.lora_bias.{name}"
            if bias_key in state:
                bias = out[f"{module}.bias"]
                out[f"{module}.bias"] = (bias.float() + s * state[bias_key].float()).to(bias.dtype)
    return out


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def write_with_component(
    base: Path,
    folder: Path,
    component: str,
    write: Callable[[Path], None],
    *,
    source: ModelSource | None = None,
) -> None:
    """Make ``folder`` the diffusers checkpoint ``base`` with ``component`` replaced by what ``write``
    puts into the (not yet existing) folder it is given. The other components are hard-linked (copied
    across file systems); the result is assembled beside ``folder`` and renamed into place. With
    ``source`` (the base, resolved), ``fastvideo.json`` records its preset and sampling defaults;
    without, the base's own ``fastvideo.json`` is copied when it has one."""
    from fastvideo.resolve import FOLDER_SETTINGS, write_folder_settings

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = json.loads((base / "model_index.json").read_text())
    for name, spec in index.items():
        if name == component or name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        if (base / name).is_dir():
            _link_tree(base / name, tmp / name)
    shutil.copy2(base / "model_index.json", tmp / "model_index.json")
    if source is not None:
        write_folder_settings(tmp, source)
    elif (base / FOLDER_SETTINGS).is_file():
        shutil.copy2(base / FOLDER_SETTINGS, tmp / FOLDER_SETTINGS)
    write(tmp / component)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, folder)


def export_diffusers(
    family: type[ModelFamily],
    source: ModelSource,
    model: nn.Module,
    folder: str | Path,
    *,
    component: str = "transformer",
    dtype: str = "bf16",
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the diffusers folder (collective under FSDP2; rank 0 writes). Returns ``folder``."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from fastvideo.attention.layers import to_their_names

    state = full_state_dict(model) if state is None else state
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    folder = Path(folder)
    if rank == 0:
        weights = merged_state_dict(model, state)
        names = to_their_names(model, weights, family.to_diffusers_names)  # + backends' layer modules
        target = torch_dtype(dtype)
        tensors = {
            names[k]: (v.to(target) if v.is_floating_point() else v).contiguous().clone()
            for k, v in weights.items()
        }

        def write(out: Path) -> None:
            out.mkdir()
            config = family.transformer_config(model)
            (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
            os.chmod(out / WEIGHTS, 0o644)

        write_with_component(source.path, folder, component, write, source=source)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return folder
