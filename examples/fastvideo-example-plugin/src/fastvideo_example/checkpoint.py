"""Writing a tiny random-weight example checkpoint in diffusers format (``fv example make-checkpoint``).

Layout (what :func:`fastvideo.loader.load_component` and :class:`ExampleTransformer` read back)::

    model_index.json          _class_name "ExampleVideoPipeline" + one [library, class] per component
    transformer/              config.json + diffusion_pytorch_model.safetensors (ours)
    vae/                      diffusers AutoencoderKLWan
    scheduler/                diffusers FlowMatchEulerDiscreteScheduler
    text_encoder/             transformers UMT5EncoderModel
    tokenizer/                transformers T5 tokenizer

The library components are written by their own ``save_pretrained`` (safetensors), the
transformer by :meth:`ExampleTransformer.save_pretrained`. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fastvideo_example.family import PIPELINE_CLASS_NAME
from fastvideo_example.model import ExampleConfig, ExampleTransformer

#: The tokenizer's whole vocabulary (plus single letters, so unknown words still tokenize).
VOCABULARY = (
    "a an the of in on at with and under over red orange yellow green blue purple black white gray ball "
    "cube box sphere cat dog fox bird fish car boat train tree flower river ocean sky cloud sun moon city "
    "street room table rolling bouncing flying running swimming falling spinning slowly quickly camera "
    "close up wide shot night morning snow rain light dark video scene"
).split()

TEXT_DIM = 32  # UMT5 d_model, which is also the DiT's text_dim
LATENT_CHANNELS = 16  # Wan VAE z_dim


def example_tokenizer() -> Any:
    """A T5 (unigram) tokenizer over :data:`VOCABULARY`, built in memory."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    # "\u2581" ("▁") marks the start of a word; a higher score is preferred when segmenting
    pieces += [(f"\u2581{word}", -1.0 - i / 100) for i, word in enumerate(VOCABULARY)]
    pieces += [(ch, -10.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _components(seed: int, backend_modules: str | None = None) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)  # the library models draw their random init from the global generator
    tokenizer = example_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )  # fmt: skip
    transformer = ExampleTransformer(
        ExampleConfig(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM)
    )
    transformer.init_weights(seed=seed)
    if backend_modules is not None:
        _add_backend_modules(transformer, backend_modules, seed)
    return {
        "transformer": transformer,
        "vae": vae.eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "text_encoder": UMT5EncoderModel(text_config).eval(),
        "tokenizer": tokenizer,
    }


def check_backend_modules(backend: str) -> None:
    """Raise ``ValueError`` unless attention backend ``backend`` declares per-layer modules."""
    from fastvideo.attention.layers import module_backends

    known = sorted(module_backends())
    if backend not in known:
        raise ValueError(
            f"attention backend {backend!r} is not installed or declares no per-layer modules; backends that do: "
            f"{', '.join(known) or 'none installed'}"
        )


def _add_backend_modules(transformer: ExampleTransformer, backend: str, seed: int) -> None:
    """Attach ``backend``'s per-layer modules (e.g. a gate projection) with random weights
    (biases zero), as a checkpoint trained with that backend carries them."""
    from fastvideo.attention.layers import attach_layer_modules

    check_backend_modules(backend)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in attach_layer_modules(transformer, backend):
            param = transformer.get_parameter(name)
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def _library(obj: Any) -> str:
    """``[library, class]`` as diffusers records it; our own transformer names this package."""
    return type(obj).__module__.split(".")[0]


def make_checkpoint(path: str | Path, *, seed: int = 0, backend_modules: str | None = None) -> Path:
    """Write a tiny random-weight example checkpoint to ``path`` (created if needed) and return it.

    ``backend_modules``: also write the per-layer modules that this attention backend declares.
    """
    import diffusers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    components = _components(seed, backend_modules)
    for name, obj in components.items():
        obj.save_pretrained(path / name)
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS_NAME, "_diffusers_version": diffusers.__version__}
    index.update({name: [_library(obj), type(obj).__name__] for name, obj in components.items()})
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    _check_round_trip(path, components["transformer"])
    return path


def _check_round_trip(path: Path, written: ExampleTransformer) -> None:
    """Load the transformer back through fastvideo.loader and compare every tensor."""
    from fastvideo.errors import CheckpointError

    loaded = ExampleTransformer.from_pretrained(path / "transformer", dtype=None)
    expected = written.state_dict()
    for name, tensor in loaded.state_dict().items():
        if not torch.equal(tensor, expected[name]):
            raise CheckpointError(f"{path / 'transformer'}: tensor {name!r} differs after reloading")
