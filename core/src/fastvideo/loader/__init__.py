"""Loading diffusers-format checkpoints: Hub download, safetensors weights, components, name mappings."""

from fastvideo.loader.checkpoint import DiffusersCheckpoint, load_pretrained, read_config
from fastvideo.loader.components import load_component, read_model_index, torch_dtype
from fastvideo.loader.hub import fetch_model, hub_token
from fastvideo.loader.mapping import NameMapping, UnmappedKeysError
from fastvideo.loader.validate import CheckpointMismatchError, read_json
from fastvideo.loader.weights import load_module_weights, load_safetensors_folder, verify_safetensors

__all__ = [
    "CheckpointMismatchError",
    "DiffusersCheckpoint",
    "NameMapping",
    "UnmappedKeysError",
    "fetch_model",
    "hub_token",
    "load_component",
    "load_module_weights",
    "load_pretrained",
    "load_safetensors_folder",
    "read_config",
    "read_json",
    "read_model_index",
    "torch_dtype",
    "verify_safetensors",
]
