"""Preprocessed training data: safetensors shards of VAE latents and text embeddings, and their order.

A dataset folder (written by ``fv preprocess`` or :func:`write_synthetic_dataset`)::

    manifest.json              {"format": "fastvideo-latents", "version": 1, "count": N, "shards": [...],
                                "latent_shape": [C, T, H, W], "text_dim": D, "max_sequence_length": L, ...}
    shard-00000.safetensors    latents.<k> (C, T, H, W) and text.<k> (n_k, D) for the shard's samples

Text embeddings are stored without their padding (``n_k`` = the prompt's tokens) and padded back
with zeros to ``max_sequence_length`` on loading, which is what the pipelines feed the DiT.

The sample order is a function of (seed, epoch) only, so the data position (the number of samples
consumed) is the whole state a checkpoint needs to continue exactly, on any number of ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo.errors import CheckpointError

if TYPE_CHECKING:
    import torch

FORMAT = "fastvideo-latents"
VERSION = 1
MANIFEST = "manifest.json"
NULL_TEXT = "null-text.safetensors"  # the empty prompt's embedding (n, D), written by fv preprocess
NEGATIVE_TEXT = "negative-text.safetensors"  # the negative prompt's (fv preprocess --negative-prompt)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a dataset folder, with one-line errors for the usual mistakes."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{folder} is not a preprocessed dataset: {MANIFEST} is missing (write one with `fv preprocess`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: expected format {FORMAT!r} version {VERSION}, got {manifest.get('format')!r} "
            f"version {manifest.get('version')!r}; preprocess the videos again"
        )
    return manifest


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(
    path: Path, latents: Sequence[torch.Tensor], texts: Sequence[torch.Tensor], metadata: dict[str, str]
) -> None:
    """One shard, written to a temp file and renamed (a shard on disk is always complete)."""
    tensors = {}
    for k, (lat, txt) in enumerate(zip(latents, texts, strict=True)):
        tensors[f"latents.{k}"] = lat
        tensors[f"text.{k}"] = txt
    write_tensors_atomic(path, tensors, metadata)


def write_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file written to a temp file and renamed into place."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class LatentDataset:
    """Random access to a preprocessed dataset; ``ds[i]`` is a dict of CPU tensors:
    ``latents`` (C, T, H, W) fp32, ``text`` (L, D) fp32 zero-padded, ``text_mask`` (L,) int64."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.max_sequence_length = int(self.manifest["max_sequence_length"])
        self.index: list[tuple[str, int]] = []
        for shard in self.manifest["shards"]:
            if not (self.folder / shard["file"]).is_file():
                raise CheckpointError(f"{self.folder}: shard {shard['file']} listed in {MANIFEST} is missing")
            self.index += [(shard["file"], k) for k in range(int(shard["count"]))]
        if not self.index:
            raise ValueError(f"dataset {self.folder} has no samples")
        self._handles: dict[str, Any] = {}
        #: (L, D) zero-padded embeddings of the empty prompt (caption dropout) and of the negative
        #: prompt the dataset was written with (a CFG teacher's unconditional branch), when it has them
        self.null_text = self._text_file(self.manifest.get("null_text") or NULL_TEXT)
        negative = self.manifest.get("negative_text")
        self.negative_text = self._text_file(negative) if negative else None

    def _text_file(self, name: str) -> torch.Tensor | None:
        path = self.folder / str(name)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        return self._pad(load_file(str(path))["text"].float())[0]

    def __len__(self) -> int:
        return len(self.index)

    def _open(self, file: str) -> Any:
        from safetensors import safe_open

        if file not in self._handles:
            if len(self._handles) >= 8:
                self._handles.pop(next(iter(self._handles)))
            self._handles[file] = safe_open(str(self.folder / file), framework="pt", device="cpu")
        return self._handles[file]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        file, k = self.index[i]
        f = self._open(file)
        latents = f.get_tensor(f"latents.{k}").float()
        padded, mask = self._pad(f.get_tensor(f"text.{k}").float())
        return {"latents": latents, "text": padded, "text_mask": mask}

    def _pad(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        n, dim = text.shape
        padded = torch.zeros(self.max_sequence_length, dim)
        padded[:n] = text[: self.max_sequence_length]
        mask = torch.zeros(self.max_sequence_length, dtype=torch.long)
        mask[:n] = 1
        return padded, mask


class VideoClipDataset:
    """Pixel clips for autoencoder training: the videos of a ``fv preprocess`` caption manifest.

    ``ds[i]`` is ``{"video": (3, T, H, W) fp32 in [-1, 1]}``: the first ``num_frames`` frames of
    clip ``i`` scaled to cover ``height x width`` and centre-cropped (as ``fv preprocess`` does).
    Clips are decoded once and kept in memory as uint8 (a 17x64x64 clip is 209 KB).
    """

    def __init__(self, folder: str | Path, *, num_frames: int, height: int, width: int) -> None:
        from fastvideo.training.preprocess import find_captions, read_captions

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"video folder {str(self.folder)!r} does not exist")
        self.items = read_captions(find_captions(self.folder))
        if not self.items:
            raise ValueError(f"{self.folder}: the caption manifest lists no videos")
        self.shape = (num_frames, height, width)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def frames(self, i: int) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` of clip ``i``; ValueError naming the clip when it cannot be used."""
        from fastvideo.training.preprocess import load_frames

        if i not in self._cache:
            path = self.folder / self.items[i]["path"]
            try:
                self._cache[i] = load_frames(path, *self.shape)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        return self._cache[i]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        video = self.frames(i).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": video}


class InMemoryDataset:
    """A list of sample dicts (benchmarks, tests); same item layout as :class:`LatentDataset`."""

    def __init__(self, samples: Sequence[dict[str, torch.Tensor]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.samples[i]


def sample_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The permutation of epoch ``epoch``: a function of (seed, epoch) only."""
    import torch

    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def global_batch(n: int, seed: int, position: int, batch_size: int, shuffle: bool) -> list[int]:
    """Dataset indices of the ``batch_size`` samples starting at stream ``position`` (epochs chained)."""
    out: list[int] = []
    order: list[int] = []
    epoch = -1
    for p in range(position, position + batch_size):
        e = p // n
        if e != epoch:
            order, epoch = sample_order(n, seed, e, shuffle), e
        out.append(order[p % n])
    return out


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    import torch

    keys = samples[0].keys()
    return {k: torch.stack([s[k] for s in samples]) for k in keys}


def iterate_micro_batches(
    dataset: Any,
    *,
    seed: int,
    position: int,
    batch_size: int,
    dp_rank: int,
    dp_size: int,
    grad_accum_steps: int,
    shuffle: bool,
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Yield ``(position after the step, this rank's micro-batches)`` for step after step.

    The global batch of a step (``batch_size`` samples) is split into ``grad_accum_steps`` chunks,
    each into ``dp_size`` micro-batches; sample ``j`` of the global batch keeps the same ``j`` (the
    ``position`` entry, used to seed its noise) however the batch is split.
    """
    import torch

    micro = batch_size // (grad_accum_steps * dp_size)
    while True:
        indices = global_batch(len(dataset), seed, position, batch_size, shuffle)
        micro_batches = []
        for a in range(grad_accum_steps):
            start = (a * dp_size + dp_rank) * micro
            chunk = list(range(start, start + micro))
            batch = collate([dataset[indices[j]] for j in chunk])
            batch["position"] = torch.tensor(chunk, dtype=torch.long)
            micro_batches.append(batch)
        position += batch_size
        yield position, micro_batches


def write_synthetic_dataset(
    folder: str | Path,
    *,
    count: int,
    latent_shape: Sequence[int],
    text_dim: int,
    max_sequence_length: int = 16,
    seed: int = 0,
    shard_size: int = 4,
    patterns: int = 2,
) -> Path:
    """A small learnable dataset: each sample's latents are one of ``patterns`` smooth fields
    (plus a little noise) and its text embedding identifies the pattern; for tests and benchmarks."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    c, t, h, w = latent_shape
    grid = torch.stack(
        torch.meshgrid(
            torch.linspace(-1, 1, t), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"
        )
    )  # (3, T, H, W)
    bases = [
        torch.einsum("ck,kthw->cthw", torch.randn(c, 3, generator=gen), grid).sin() for _ in range(patterns)
    ]
    codes = [torch.randn(text_dim, generator=gen) for _ in range(patterns)]
    shards: list[dict[str, Any]] = []
    for s in range(0, count, shard_size):
        lats, txts = [], []
        for i in range(s, min(count, s + shard_size)):
            p = i % patterns
            lats.append(bases[p] + 0.05 * torch.randn(c, t, h, w, generator=gen))
            length = 1 + i % max(1, max_sequence_length // 2)
            txts.append(codes[p].expand(length, text_dim).clone())
        name = shard_name(len(shards))
        write_shard(folder / name, lats, txts, {"format": FORMAT})
        shards.append({"file": name, "count": len(lats)})
    write_json_atomic(
        folder / MANIFEST,
        {
            "format": FORMAT,
            "version": VERSION,
            "count": count,
            "shards": shards,
            "latent_shape": list(latent_shape),
            "text_dim": text_dim,
            "max_sequence_length": max_sequence_length,
            "model": "synthetic",
            "items": [],
        },
    )
    return folder
