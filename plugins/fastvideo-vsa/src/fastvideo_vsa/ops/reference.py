"""Plain PyTorch reference of video sparse attention: the spec the kernels are tested against.

Paper: "VSA: Faster Video Diffusion with Trainable Sparse Attention" (arXiv 2505.13389).

Shapes: ``q, k, v, gate`` are ``[B, L, H, D]``; the ``L = T * Hg * W`` tokens are in raster
``(t, h, w)`` order over ``grid = (T, Hg, W)``. Cubes are those of
:class:`fastvideo_vsa.ops.geometry.CubeGeometry` (4x4x4, partial at the far edges), ``C`` of them,
cube ``c`` holding ``n_c >= 1`` tokens.

Math, per batch element and head, with ``scale = D ** -0.5`` unless given:

1. pool:    ``qc[c] = mean(q[i] for i in c)``, likewise ``kc`` and ``vc``.
2. coarse:  ``S = qc kc^T * scale`` (C x C), ``oc = softmax(S) vc``.
3. select:  query cube ``c`` keeps the ``topk`` key cubes with the largest ``S[c]``
            (``topk = topk_for(sparsity, C)``; sparsity 0 keeps every cube).
4. fine:    token ``i`` of cube ``c`` attends to every token of the kept cubes:
            ``fine[i] = softmax_j(q[i] . k[j] * scale) v[j]``.
5. output:  ``out[i] = fine[i] + gate[i] * oc[cube(i)]`` (no gate = a zero gate).

Gradients flow through every step but the selection. Computation happens in the inputs' dtype:
pass fp32/fp64 tensors for the ground truth, low-precision ones for "what plain torch gets".
"""

from __future__ import annotations

import torch

from fastvideo_vsa.ops.geometry import CubeGeometry, topk_for


def pool_reference(x: torch.Tensor, geom: CubeGeometry) -> torch.Tensor:
    """Mean of ``x`` ``[B, L, H, D]`` over each cube's tokens: ``[B, H, C, D]``."""
    cube = geom.cube_of_token(x.device)
    counts = torch.bincount(cube, minlength=geom.num_cubes).to(x.dtype)  # (C,)
    sums = x.new_zeros(x.shape[0], geom.num_cubes, *x.shape[2:]).index_add(1, cube, x)  # (B, C, H, D)
    return (sums / counts[None, :, None, None]).transpose(1, 2)  # (B, H, C, D)


def coarse_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: CubeGeometry, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cube scores ``S`` ``[B, H, C, C]`` and the coarse output ``oc`` ``[B, H, C, D]``."""
    qc, kc, vc = (pool_reference(x, geom) for x in (q, k, v))
    scores = qc @ kc.transpose(-1, -2) * scale  # (B, H, C, C)
    return scores, torch.softmax(scores, dim=-1) @ vc


def select_reference(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """The ``topk`` key cubes of each query cube, ascending: ``[B, H, C, topk]`` int64."""
    return torch.topk(scores.detach(), topk, dim=-1).indices.sort(dim=-1).values


def fine_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, geom: CubeGeometry, scale: float
) -> torch.Tensor:
    """Block-sparse attention: each query cube over the tokens of its kept key cubes. ``[B, L, H, D]``."""
    tokens = geom.tokens_of_cubes(q.device)
    inverse = torch.argsort(torch.cat(tokens))  # cube-major position -> raster position
    per_batch = []
    for b in range(q.shape[0]):
        per_head = []
        for h in range(q.shape[2]):
            pieces = []
            for c, rows in enumerate(tokens):
                keys = torch.cat([tokens[j] for j in indices[b, h, c].tolist()])
                logits = q[b, rows, h] @ k[b, keys, h].T * scale  # (n_c, keys)
                pieces.append(torch.softmax(logits, dim=-1) @ v[b, keys, h])  # (n_c, D)
            per_head.append(torch.cat(pieces)[inverse])  # (L, D)
        per_batch.append(torch.stack(per_head, dim=1))  # (L, H, D)
    return torch.stack(per_batch)  # (B, L, H, D)


def vsa_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, int, int],
    *,
    sparsity: float | None = None,
    topk: int | None = None,
    gate: torch.Tensor | None = None,
    scale: float | None = None,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """VSA as the module docstring defines it. ``[B, L, H, D]`` in, ``[B, L, H, D]`` out.

    Give exactly one of ``sparsity``, ``topk`` or ``indices`` (a precomputed selection
    ``[B, H, C, topk]``, e.g. the ground truth's, so that a low-precision run selects the same
    cubes).
    """
    geom = CubeGeometry(grid)
    if sum(x is not None for x in (sparsity, topk, indices)) != 1:
        raise ValueError("give exactly one of sparsity, topk, indices")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores, oc = coarse_reference(q, k, v, geom, scale)
    if indices is None:
        topk = topk if topk is not None else topk_for(sparsity, geom.num_cubes)  # type: ignore[arg-type]
        indices = select_reference(scores, topk)
    out = fine_reference(q, k, v, indices, geom, scale)
    if gate is not None:
        cube = geom.cube_of_token(q.device)
        out = out + gate * oc.transpose(1, 2)[:, cube]  # oc per token: (B, L, H, D)
    return out
