"""Sliding tile attention (STA) for fastvideo.

"Fast Video Generation with Sliding Tile Attention" (arXiv 2502.04507): tokens are grouped into tiles
of the latent grid (6x8x8 by default); each query tile attends to the window of tiles centred on it,
slid inwards at the borders, so every block of the attention is kept whole or skipped whole.

* :func:`fastvideo_sta.ops.sta_attention`: the op (Triton forward and backward, ``torch.library``
  custom op); :func:`fastvideo_sta.ops.sta_attention_reference`: its plain PyTorch spec.
* :class:`fastvideo_sta.backend.STABackend`: the ``sta`` attention backend.
* :mod:`fastvideo_sta.strategy`: mask strategies (``"{step}_{layer}_{head}": [t, h, w]``, the
  anchor's JSON format).

Importing this package imports neither torch nor triton.
"""

from fastvideo_sta.tiles import DEFAULT_TILE, TileGeometry

__all__ = ["DEFAULT_TILE", "TileGeometry"]
