"""Loading diffusers-format checkpoints: Hub download, safetensors weights, components."""

from fastvideo.loader.components import load_component, read_model_index, torch_dtype
from fastvideo.loader.hub import fetch_model, hub_token
from fastvideo.loader.weights import load_module_weights, load_safetensors_folder, verify_safetensors

__all__ = [
    "fetch_model",
    "hub_token",
    "load_component",
    "load_module_weights",
    "load_safetensors_folder",
    "read_model_index",
    "torch_dtype",
    "verify_safetensors",
]
