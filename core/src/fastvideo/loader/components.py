"""Loading the components listed in ``model_index.json`` with their libraries' own classes."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastvideo.errors import CheckpointError
from fastvideo.loader.validate import (
    CheckpointMismatchError,
    StoredTensors,
    as_checkpoint_error,
    check_config_values,
    check_json_files,
    compare_tensors,
    matcher,
    meta_build,
    non_persistent_buffers,
    read_json,
    state_shapes,
    tie_groups,
)
from fastvideo.loader.weights import weight_files

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers-format folder, with a clear error when absent."""
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a diffusers-format folder: {path.name} is missing (expected "
            f"model_index.json plus one sub-folder per component)"
        )
    return read_json(path)


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
    check_json_files(path)
    what = f"component {name!r} in {path}"
    is_model = ((path / "config.json").is_file() and any(path.glob("*.safetensors*"))) or _expects_weights(
        cls
    )
    if not is_model:  # schedulers, tokenizers, processors
        with as_checkpoint_error(what):
            return cls.from_pretrained(str(path))
    stored = StoredTensors.read(weight_files(path))
    check_model_files(cls, library, path, stored)
    kwargs: dict[str, Any] = {"use_safetensors": True, "output_loading_info": True}
    if dtype is not None:
        kwargs["torch_dtype" if library == "diffusers" else "dtype"] = torch_dtype(dtype)
    with as_checkpoint_error(what):
        model, info = cls.from_pretrained(str(path), **kwargs)
    _check_loading_info(info, path, stored)
    return model.to(device).eval()


def check_model_files(cls: Any, library: str, path: Path, stored: StoredTensors) -> None:
    """Build ``cls`` from ``path/config.json`` on meta and compare it with the stored tensors.

    Runs before any tensor is allocated: an absurd config stops while it is built (see
    :func:`~fastvideo.loader.validate.meta_build`), and missing, unexpected or mis-shaped tensors
    raise one line naming the tensor, its file and both shapes. Tensors the class declares as tied
    or optional (``all_tied_weights_keys``, ``_keys_to_ignore_on_load_missing``) may be absent.
    """
    config_path = path / "config.json"
    config = read_json(config_path)
    check_config_values(config, config_path)
    if library == "transformers":
        config_class = getattr(cls, "config_class", None)
        with as_checkpoint_error(f"{config_path}"):
            if config_class is None:
                from transformers import AutoConfig

                hf_config: Any = AutoConfig.from_pretrained(str(path))
            else:
                hf_config = config_class.from_pretrained(str(path))

        def build() -> Any:
            return cls(hf_config)
    else:

        def build() -> Any:
            return cls.from_config(config)

    files = sorted({p.name for p in stored.files.values()})
    weights = files[0] if len(files) == 1 else f"the {len(files)} shards in {path}"
    model = meta_build(build, stored_numel=stored.numel, config=config_path, weights=weights)
    expected = state_shapes(model)
    stored = _align_prefix(stored, expected, getattr(model, "base_model_prefix", "") or "")
    transient = non_persistent_buffers(model)
    declared_unexpected = matcher(getattr(model, "_keys_to_ignore_on_load_unexpected", None))
    compare_tensors(
        expected,
        stored,
        config=config_path,
        ties=tie_groups(model, getattr(model, "all_tied_weights_keys", None) or {}),
        optional=matcher(getattr(model, "_keys_to_ignore_on_load_missing", None)),
        ignored=lambda n: n in transient or declared_unexpected(n),
        renames=True,
    )


def _align_prefix(stored: StoredTensors, expected: Mapping[str, Any], prefix: str) -> StoredTensors:
    """Stored names with the base-model prefix added or removed, as the library does when a
    ``XForY`` checkpoint is loaded into ``XModel`` (or the reverse); unchanged when names agree."""
    if not prefix or not stored.shapes or any(n in expected for n in stored.shapes):
        return stored
    head = prefix + "."
    if all(n.startswith(head) for n in stored.shapes):
        return stored.renamed(lambda n: n.removeprefix(head))
    return stored.renamed(lambda n: head + n)


def _check_loading_info(info: Mapping[str, Any], path: Path, stored: StoredTensors) -> None:
    """What the library reported after loading: nothing may be left at its random initial value."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(
            f"unexpected tensor(s) {', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else "")
        )
    for item in mismatched[:3]:
        problems.append(f"mis-shaped tensor {item}")
    if problems:
        files = sorted({p.name for p in stored.files.values()})
        raise CheckpointMismatchError(
            f"{path / 'config.json'} does not match {', '.join(files)}: {'; '.join(problems)}; fix the config "
            "or re-download the checkpoint"
        )


def _expects_weights(cls: type) -> bool:
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)
