"""Parallel VAE decoding: the tiles of a tiled decode are split across ranks.

What a tile is, how one is decoded and how the decoded tiles are blended back together is specific
to a VAE class, and lives with the family that uses it: a *splitter* registered for the class name,
either by :func:`register_vae_splitter` or declared by a model family
(``ModelFamily.vae_splitters = {"AutoencoderKLWan": "fastvideo_wan.vae_split:WanVAESplitter"}``).
The core part here is the distribution: rank ``r`` decodes tiles ``r, r + N, r + 2N, ...``, the raw
tiles are all-gathered, and every rank assembles them with the splitter, so the frames equal one
process's tiled decode and the decode time is divided by the number of ranks. Whether to tile is
the decoding stage's decision (``PipelineConfig.vae_tiling``, or automatic for large videos), the
same in one process and in N.

The ``parallel-vae`` pipeline transform (:mod:`fastvideo.parallel.transforms`) installs
:class:`ParallelVAEDecode` as the decoding stage's ``vae_decode`` in every parallel run. A VAE
without a splitter, or a request its splitter does not tile (tiling off, a single tile), decodes
the whole video on every rank, as one process would.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from fastvideo.parallel.state import ParallelState


class VAESplitter(Protocol):
    """How to decode one VAE class tile by tile (one instance serves every VAE of that class)."""

    def split(self, vae: Any, z: torch.Tensor) -> list[torch.Tensor] | None:
        """The latent tiles of ``z`` ``(B, C, T, H, W)``, in the order :meth:`assemble` takes them;
        None when this VAE or request is not decoded in tiles."""

    def decode_tile(self, vae: Any, tile: torch.Tensor) -> torch.Tensor:
        """One latent tile decoded (raw: not blended, not clamped)."""

    def assemble(self, vae: Any, z: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
        """The video ``(B, 3, F, H*s, W*s)`` from all decoded tiles, as the VAE's own tiled decode."""


_SPLITTERS: dict[str, Any] = {}  # VAE class name -> splitter, or "module:attr" of its class


def register_vae_splitter(vae_class_name: str, splitter: Any) -> None:
    """Decode VAEs of class ``vae_class_name`` (e.g. ``"AutoencoderKLWan"``) in parallel tiles with
    ``splitter``: a :class:`VAESplitter`, its class, or ``"module:attr"`` naming it (imported on use)."""
    if not isinstance(vae_class_name, str) or not vae_class_name:
        raise TypeError(f"vae_class_name must be a class name string, got {vae_class_name!r}")
    _SPLITTERS[vae_class_name] = splitter


def _load(spec: Any) -> Any:
    if isinstance(spec, str):
        module, _, attr = spec.partition(":")
        spec = getattr(importlib.import_module(module), attr)
    return spec() if isinstance(spec, type) else spec


def splitter_for(vae: Any) -> VAESplitter | None:
    """The splitter registered for ``vae``'s class (or a base class), else None. Registrations made
    with :func:`register_vae_splitter` win over those the model families declare."""
    from fastvideo.registry import get_registry

    declared: dict[str, Any] = {}
    for family in get_registry().classes("model_family"):
        declared.update(getattr(family, "vae_splitters", None) or {})
    for cls in type(vae).__mro__:
        spec = _SPLITTERS.get(cls.__name__, declared.get(cls.__name__))
        if spec is not None:
            splitter = _load(spec)
            _SPLITTERS[cls.__name__] = splitter
            return splitter  # type: ignore[no-any-return]
    return None


def _exchange(
    mine: list[torch.Tensor], total: int, dtype: torch.dtype, state: ParallelState
) -> list[torch.Tensor]:
    """Every rank's tiles to every rank, in tile order (tile ``t`` is decoded by rank ``t % N``)."""
    import torch
    import torch.distributed as dist

    from fastvideo.parallel import comm

    n = state.world_size
    slots = -(-total // n)
    shapes = torch.zeros(slots, 5, dtype=torch.long)
    for i, t in enumerate(mine):
        shapes[i] = torch.tensor(t.shape)
    group = dist.group.WORLD
    assert group is not None
    all_shapes = comm.all_gather(shapes.to(state.device), 0, group).cpu()  # (N * slots, 5)
    big = all_shapes.max(dim=0).values.tolist()
    buf = torch.zeros(slots, *big, dtype=dtype, device=state.device)
    for i, t in enumerate(mine):
        buf[i, : t.shape[0], : t.shape[1], : t.shape[2], : t.shape[3], : t.shape[4]] = t
    gathered = comm.all_gather(buf, 0, group)  # (N * slots, *big)
    tiles = []
    for index in range(total):
        row = (index % n) * slots + index // n
        b, c, f, h, w = all_shapes[row].tolist()
        tiles.append(gathered[row, :b, :c, :f, :h, :w].clone())
    return tiles


def parallel_decode(
    vae: Any, z: torch.Tensor, state: ParallelState, splitter: VAESplitter
) -> torch.Tensor | None:
    """Decode ``z`` ``(B, C, T, H, W)`` with its tiles spread over all ranks; every rank gets the video.

    :returns: the assembled video (equal to the VAE's tiled decode), or None when ``splitter`` does
        not tile this request (the caller decodes as one process does).
    """
    tiles_in = splitter.split(vae, z)
    if tiles_in is None or state.world_size == 1:
        return None
    mine = [splitter.decode_tile(vae, t) for t in tiles_in[state.rank :: state.world_size]]
    tiles = _exchange(mine, len(tiles_in), next(vae.parameters()).dtype, state)
    return splitter.assemble(vae, z, tiles)


class ParallelVAEDecode:
    """A decoding stage's ``vae_decode`` in a parallel run: tiles over the ranks where the VAE has a
    splitter and the request is tiled, else ``inner(vae, latents)`` on every rank."""

    def __init__(self, state: ParallelState, inner: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        self.state = state
        self.inner = inner

    def __call__(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        splitter = splitter_for(vae)
        if splitter is not None:
            video = parallel_decode(vae, latents, self.state, splitter)
            if video is not None:
                return video
        return self.inner(vae, latents)
