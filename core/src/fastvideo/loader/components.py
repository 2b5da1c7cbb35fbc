"""Loading the components listed in ``model_index.json`` with their libraries' own classes."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastvideo.errors import CheckpointError
from fastvideo.loader.weights import verify_safetensors, weight_files

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers-format folder, with a clear error when absent."""
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a diffusers-format folder: {path.name} is missing (expected "
            f"model_index.json plus one sub-folder per component)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None


def torch_dtype(name: str | None) -> Any:
    import torch

    return None if name is None else getattr(torch, DTYPE_NAMES[name])


def component_spec(model_index: Mapping[str, Any], name: str) -> tuple[str, str]:
    """``(library, class_name)`` of a component, or a :class:`CheckpointError`."""
    spec = model_index.get(name)
    if not (isinstance(spec, (list, tuple)) and len(spec) == 2 and all(isinstance(s, str) for s in spec)):
        listed = sorted(k for k, v in model_index.items() if isinstance(v, list) and v and v[0])
        raise CheckpointError(
            f"model_index.json has no component {name!r} (it lists {', '.join(listed) or 'none'})"
        )
    return spec[0], spec[1]


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' own progress bars and info logs (fastvideo shows its own)."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def load_component(
    folder: str | Path,
    model_index: Mapping[str, Any],
    name: str,
    *,
    dtype: str | None = None,
    device: Any = "cpu",
) -> Any:
    """Load component ``name`` with the class ``model_index.json`` names, from safetensors only."""
    library, class_name = component_spec(model_index, name)
    quiet_libraries()
    path = Path(folder) / name
    if not path.is_dir():
        raise CheckpointError(f"component {name!r} is listed in model_index.json but {path} is missing")
    if library not in ("diffusers", "transformers"):
        raise CheckpointError(
            f"component {name!r}: unsupported library {library!r} (expected diffusers or transformers)"
        )
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise CheckpointError(f"component {name!r}: {library} has no class {class_name!r}; upgrade {library}")
    is_model = ((path / "config.json").is_file() and any(path.glob("*.safetensors*"))) or _expects_weights(
        cls
    )
    if not is_model:  # schedulers, tokenizers, processors
        return cls.from_pretrained(str(path))
    for file in weight_files(path):
        verify_safetensors(file)
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype" if library == "diffusers" else "dtype"] = torch_dtype(dtype)
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"component {name!r} in {path} could not be loaded: {exc}") from None
    return model.to(device).eval()


def _expects_weights(cls: type) -> bool:
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)
