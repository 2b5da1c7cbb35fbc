"""``fv preprocess``: videos + captions -> shards of VAE latents and text embeddings.

Input: a folder of videos and a manifest of captions, either JSON (a list of ``{"path", "caption"}``
objects, or a mapping ``{path: caption}``) or CSV (columns ``path`` and ``caption``; ``video`` /
``file`` and ``prompt`` / ``text`` are accepted too). Paths are relative to the video folder.

Each video is cut to its first ``num_frames`` frames (every ``frame_stride``-th), scaled to cover
``height x width`` and centre-cropped (the frame count, size and text length default to the model's
sampling defaults, e.g. 17x64x64 and 16 tokens for ``wan-toy``), then encoded by the family's VAE (the latent distribution's
mode, normalized as the family's pipelines expect); each caption by its text encoder. Shards of
``shard_size`` samples are written atomically; a re-run with the same settings skips the shards
already on disk (resumable), and the manifest is written last. Videos that cannot be read or are
too short are skipped and listed in the manifest with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo import progress
from fastvideo.training.data import (
    FORMAT,
    MANIFEST,
    NEGATIVE_TEXT,
    NULL_TEXT,
    VERSION,
    shard_name,
    write_json_atomic,
    write_shard,
    write_tensors_atomic,
)

if TYPE_CHECKING:
    import torch

    from fastvideo.interfaces.model_family import ModelSource

SETTINGS = "preprocess.json"
_PATH_KEYS = ("path", "video", "file")
_CAPTION_KEYS = ("caption", "prompt", "text")


@dataclass
class Encoders:
    """What ``fv preprocess`` needs from a family (``ModelFamily.training_encoders`` returns one).

    ``text(prompts, max_length, device) -> (embeds (B, L, D), mask (B, L))`` (e.g. the pipelines'
    :class:`~fastvideo.pipelines.stages.T5TextEncoder`); ``vae`` a diffusers autoencoder whose
    ``encode(x).latent_dist`` takes ``(1, 3, T, H, W)`` in [-1, 1]; ``normalize`` maps its raw
    latents to what the DiT was trained on.
    """

    text: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    vae: Any
    normalize: Callable[[torch.Tensor], torch.Tensor]
    device: Any = "cpu"

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` -> normalized latents ``(C, T', H', W')`` fp32."""
        return self.encode_videos(frames.unsqueeze(0))[0]

    def encode_videos(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, T, H, W, 3)`` -> normalized latents ``(B, C, T', H', W')`` fp32, in one VAE call."""
        import torch

        param = next(self.vae.parameters())
        video = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B, 3, T, H, W)
        with torch.inference_mode():
            latents = self.vae.encode(video.to(param.device, param.dtype)).latent_dist.mode()
            return self.normalize(latents.float()).cpu()

    def encode_text(self, prompts: Sequence[str], max_length: int) -> list[torch.Tensor]:
        """One ``(n_tokens, D)`` fp32 embedding per prompt (padding removed)."""
        import torch

        with torch.inference_mode():
            embeds, mask = self.text(list(prompts), max_length, self.device)
        lengths = mask.sum(dim=1).tolist()
        return [embeds[i, : int(n)].float().cpu() for i, n in enumerate(lengths)]


CAPTION_FILES = ("captions.json", "captions.csv")


def find_captions(folder: str | Path) -> Path:
    """The caption manifest inside a video folder: ``captions.json`` or ``captions.csv``."""
    for name in CAPTION_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise ValueError(f"{folder} has no caption manifest ({' or '.join(CAPTION_FILES)})")


def read_captions(manifest: str | Path) -> list[dict[str, str]]:
    """``[{"path": ..., "caption": ...}]`` from a JSON or CSV manifest, with clear errors."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ValueError(f"caption manifest {str(manifest)!r} does not exist")
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="") as f:
            rows = list(csv.DictReader(f))
    elif manifest.suffix.lower() == ".json":
        try:
            data = json.loads(manifest.read_text())
        except ValueError as exc:
            raise ValueError(f"{manifest}: invalid JSON ({exc})") from None
        rows = [{"path": k, "caption": v} for k, v in data.items()] if isinstance(data, dict) else data
    else:
        raise ValueError(f"caption manifest must be .json or .csv, got {manifest.name!r}")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{manifest}: expected a non-empty list of {{path, caption}} entries")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(
                f"{manifest}: entry {i} is {type(row).__name__}, expected an object with path and caption"
            )
        path = next((row[k] for k in _PATH_KEYS if row.get(k)), None)
        caption = next((row[k] for k in _CAPTION_KEYS if k in row and row[k] is not None), None)
        if path is None or caption is None:
            raise ValueError(
                f"{manifest}: entry {i} needs a path ({'/'.join(_PATH_KEYS)}) and a caption "
                f"({'/'.join(_CAPTION_KEYS)}), got keys {sorted(row)}"
            )
        out.append({"path": str(path), "caption": str(caption)})
    return out


def load_frames(path: Path, num_frames: int, height: int, width: int, stride: int = 1) -> torch.Tensor:
    """uint8 ``(num_frames, height, width, 3)``: every ``stride``-th frame from the start, scaled to
    cover the size (antialiased bilinear) and centre-cropped. ValueError when unreadable or too short.

    Videos are read with imageio's FFMPEG plugin; ``.npy`` files holding uint8 ``(T, H, W, 3)``
    frames are read directly."""
    import imageio.v2 as imageio
    import numpy as np
    import torch
    import torch.nn.functional as F

    frames: list[Any] = []
    try:
        if path.suffix.lower() == ".npy":  # uint8 (T, H, W, 3), e.g. `fv wan toy-dataset --format npy`
            array = np.load(path, mmap_mode="r")
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (3, 4):
                raise ValueError(f"expected uint8 (T, H, W, 3), got {array.dtype} {tuple(array.shape)}")
            frames = [np.asarray(f)[..., :3] for f in array[::stride][:num_frames]]
        else:
            with imageio.get_reader(str(path), format="FFMPEG") as reader:
                for i, frame in enumerate(reader):  # type: ignore[arg-type, var-annotated]
                    if i % stride == 0:
                        frames.append(np.asarray(frame)[..., :3])
                    if len(frames) == num_frames:
                        break
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"cannot read video: {type(exc).__name__}: {first}") from None
    if len(frames) < num_frames:
        raise ValueError(f"has {len(frames)} frames at stride {stride}, need {num_frames}")
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    video = video[:, :, top : top + height, left : left + width]
    return video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _settings(model: str, items: list[dict[str, str]], options: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    return {"model": model, "items_sha256": digest, **options}


def _check_settings(output: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = output / SETTINGS
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{output} was preprocessed with other settings ({', '.join(diff)} differ); use another "
                f"--output, or --overwrite to start it again"
            )
    if overwrite:
        for old_shard in output.glob("shard-*.safetensors"):
            old_shard.unlink()
        (output / MANIFEST).unlink(missing_ok=True)
    write_json_atomic(path, settings)


def _shard_done(path: Path, expected: str) -> bool:
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("items_sha256") == expected
    except Exception:
        return False


#: The options of :func:`preprocess` that default to the model's sampling defaults.
SAMPLE_OPTIONS = ("num_frames", "height", "width", "max_sequence_length")


def sample_options(source: ModelSource, **explicit: int | None) -> dict[str, int]:
    """``num_frames``, ``height``, ``width`` and ``max_sequence_length`` for preprocessing ``source``:
    the explicit values given (not None), else the checkpoint's sampling defaults, validated by its
    family (e.g. Wan: 4k+1 frames, sizes in multiples of 16)."""
    unknown = sorted(set(explicit) - set(SAMPLE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown preprocess option(s) {unknown}; valid: {', '.join(SAMPLE_OPTIONS)}")
    params = source.family.sampling_defaults(source).with_overrides(explicit)
    source.family.validate(params, source)
    return {name: int(getattr(params, name)) for name in SAMPLE_OPTIONS}


def preprocess(
    model: str,
    videos: str | Path,
    captions: str | Path,
    output: str | Path,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    frame_stride: int = 1,
    max_sequence_length: int | None = None,
    shard_size: int = 64,
    device: str | None = None,
    overwrite: bool = False,
    encoders: Encoders | None = None,
    encode_batch_size: int = 1,
    negative_prompt: str | None = None,
) -> dict[str, Any]:
    """Write the dataset (see the module docstring) and return its manifest.

    ``num_frames``, ``height``, ``width`` and ``max_sequence_length`` left None take the model's
    sampling defaults (:func:`sample_options`). ``negative_prompt`` is also encoded
    (``negative-text.safetensors``): algorithms whose teacher runs classifier-free guidance (DMD2) read
    it as ``batch["negative_text"]``."""
    from fastvideo.configs import PipelineConfig
    from fastvideo.resolve import resolve

    videos, output = Path(videos), Path(output)
    if not videos.is_dir():
        raise ValueError(f"video folder {str(videos)!r} does not exist")
    if shard_size < 1 or frame_stride < 1 or encode_batch_size < 1:
        raise ValueError(
            f"shard_size, frame_stride and encode_batch_size must be >= 1, got {shard_size}, {frame_stride} "
            f"and {encode_batch_size}"
        )
    items = read_captions(captions)
    source = resolve(model)
    sample = sample_options(
        source, num_frames=num_frames, height=height, width=width, max_sequence_length=max_sequence_length
    )
    max_sequence_length = sample["max_sequence_length"]
    output.mkdir(parents=True, exist_ok=True)
    options = {**sample, "frame_stride": frame_stride, "shard_size": shard_size}
    _check_settings(output, _settings(model, items, options), overwrite)
    if encoders is None:
        encoders = source.family.training_encoders(source, PipelineConfig(device=device, progress=False))
    groups = [items[s : s + shard_size] for s in range(0, len(items), shard_size)]
    shards, skipped, latent_shape, text_dim = [], [], None, None
    with progress.task("preprocess", len(items)) as advance:
        for index, group in enumerate(groups):
            path = output / shard_name(index)
            digest = hashlib.sha256(json.dumps(group, sort_keys=True).encode()).hexdigest()
            if not _shard_done(path, digest):
                _encode_shard(path, group, digest, videos, encoders, options, encode_batch_size)
            info = _shard_info(path)
            shards.append({"file": path.name, "count": info["count"]})
            skipped += info["skipped"]
            latent_shape = latent_shape or info["latent_shape"]
            text_dim = text_dim or info["text_dim"]
            advance(len(group))
    for item in skipped:
        warnings.warn(f"skipped {item['path']}: {item['reason']}", stacklevel=2)
    count = sum(s["count"] for s in shards)
    if count == 0:
        raise ValueError(f"no video could be used ({len(skipped)} skipped, first: {skipped[0]['reason']})")
    # the empty prompt's embedding: what caption dropout (objective.text_dropout) trains on, and what
    # the pipelines feed the unconditional branch of classifier-free guidance for an empty negative prompt
    null = encoders.encode_text([""], max_sequence_length)[0]
    write_tensors_atomic(output / NULL_TEXT, {"text": null}, {"format": FORMAT})
    negative = {}
    if negative_prompt is not None:
        embedding = encoders.encode_text([negative_prompt], max_sequence_length)[0]
        write_tensors_atomic(output / NEGATIVE_TEXT, {"text": embedding}, {"format": FORMAT})
        negative = {"negative_text": NEGATIVE_TEXT, "negative_prompt": negative_prompt}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "count": count,
        "shards": [s for s in shards if s["count"]],
        "latent_shape": latent_shape,
        "text_dim": text_dim,
        "max_sequence_length": max_sequence_length,
        "model": model,
        "null_text": NULL_TEXT,
        **negative,
        "skipped": skipped,
        **{k: v for k, v in options.items() if k != "max_sequence_length"},
    }
    write_json_atomic(output / MANIFEST, manifest)
    return manifest


def _encode_shard(
    path: Path,
    group: list[dict[str, str]],
    digest: str,
    videos: Path,
    encoders: Encoders,
    options: dict[str, Any],
    encode_batch_size: int = 1,
) -> None:
    import torch

    lats: list[torch.Tensor] = []
    kept: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            lats.extend(encoders.encode_videos(torch.stack(pending)).unbind(0))
            pending.clear()

    for item in group:
        try:
            frames = load_frames(
                videos / item["path"],
                options["num_frames"],
                options["height"],
                options["width"],
                options["frame_stride"],
            )
        except ValueError as exc:
            skipped.append({"path": item["path"], "reason": str(exc)})
            continue
        pending.append(frames)
        kept.append(item)
        if len(pending) == encode_batch_size:
            flush()
    flush()
    texts = encoders.encode_text([i["caption"] for i in kept], options["max_sequence_length"]) if kept else []
    meta = {
        "format": FORMAT,
        "items_sha256": digest,
        "items": json.dumps(kept),
        "skipped": json.dumps(skipped),
        "latent_shape": json.dumps(list(lats[0].shape) if lats else None),
        "text_dim": json.dumps(int(texts[0].shape[1]) if texts else None),
    }
    write_shard(path, lats, texts, meta)


def _shard_info(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    return {
        "count": len(json.loads(meta["items"])),
        "skipped": json.loads(meta["skipped"]),
        "latent_shape": json.loads(meta["latent_shape"]),
        "text_dim": json.loads(meta["text_dim"]),
    }
