"""Family-independent speed and memory options, applied as pipeline transforms (built in):

* ``quantize``: FP8 linears in the DiT blocks (:mod:`fastvideo.optimize.fp8`);
* ``cache``: step caches (TeaCache, first-block cache, MagCache) and the lossless text key/value
  cache (:mod:`fastvideo.optimize.cache`);
* ``offload``: layerwise offload of the DiT blocks, text encoders and VAE (:mod:`fastvideo.optimize.offload`).

The 8-bit attention backend ``sage`` lives with the other backends (:mod:`fastvideo.attention.sage`).
This package does not import torch (the CLI and config validation read the names below).
"""

from __future__ import annotations

#: ``quantize`` values: ``fp8`` (FP8 math where the GPU has it, else FP8 storage) and ``fp8-storage``.
QUANTIZE = ("fp8", "fp8-storage")
#: ``cache`` values (step caches; the text key/value cache is separate and on by default).
CACHES = ("teacache", "firstblock", "magcache")
#: ``offload`` values.
OFFLOAD = ("layer",)


def check_choice(what: str, value: str | None, choices: tuple[str, ...], flag: str) -> None:
    """ValueError (one line) unless ``value`` is None or one of ``choices``."""
    if value is not None and value not in choices:
        raise ValueError(
            f"{what} must be one of {', '.join(choices)}, got {value!r}; pass e.g. {flag} {choices[0]}"
        )
