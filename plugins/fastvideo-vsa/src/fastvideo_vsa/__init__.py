"""Video sparse attention (VSA) for fastvideo.

"VSA: Faster Video Diffusion with Trainable Sparse Attention" (arXiv 2505.13389): tokens are grouped
into 4x4x4 cubes of the latent grid; a coarse stage attends between mean-pooled cubes, each query
cube keeps its top-k key cubes, a fine stage runs block-sparse attention over them, and the output
is ``fine + gate * coarse``.

* :func:`fastvideo_vsa.ops.vsa_attention`: the op (Triton forward and backward, ``torch.library``
  custom op); :func:`fastvideo_vsa.ops.vsa_attention_reference`: its plain PyTorch spec.
* :class:`fastvideo_vsa.backend.VSABackend`: the ``vsa`` attention backend.
* :func:`sparsity_at`: the training ramp of the sparsity (used by ``VSABackend.option_values``).

Importing this package imports neither torch nor triton.
"""

from fastvideo_vsa.schedule import sparsity_at

__all__ = ["sparsity_at"]
