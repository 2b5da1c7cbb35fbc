"""Wan sampling pipelines, composed from the core stages.

T2V and the Wan2.2 A14B MoE use the core stages as they are (the MoE through the denoising
stage's ``transformer_2`` / ``boundary_ratio``); I2V adds CLIP image encoding and the VAE-encoded
first frame; TI2V-5B uses per-token timesteps with the first latent frame taken from the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastvideo.loader.components import torch_dtype
from fastvideo.models import LatentGeometry, default_dtypes, pick_device
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.compose import compile_if_asked, load_components, text_to_video
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.pipelines.stages import (
    DenoisingStage,
    T5TextEncoder,
)
from fastvideo_wan.model import WanTransformer
from fastvideo_wan.presets import NEGATIVE_PROMPT

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource


def wan_latents(vae: Any) -> LatentGeometry:
    """Latent geometry of a Wan VAE (strides 8 / 4; Wan2.2's 48-channel VAE: 16 spatial)."""
    return LatentGeometry.from_vae(vae, spatial=16 if vae.config.z_dim == 48 else 8, temporal=4)


# ---------------------------------------------------------------- image conditioning (I2V, TI2V)


def load_image(path: str) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"--image {path!r} is not a readable image ({exc})") from None


class WanImageEncodingStage(PipelineStage):
    """CLIP vision features of the conditioning image (penultimate hidden state), Wan2.1 I2V."""

    name = "image_encoding"

    def __init__(self, image_processor: Any, image_encoder: Any) -> None:
        self.image_processor = image_processor
        self.image_encoder = image_encoder

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        assert batch.params.image is not None
        device = next(self.image_encoder.parameters()).device
        pixels = self.image_processor(images=load_image(batch.params.image), return_tensors="pt").to(device)
        hidden = self.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]  # (1, 257, 1280)
        batch.family_extra("wan")["image_embeds"] = hidden.to(batch.device)
        return batch


class WanImageLatentStage(PipelineStage):
    """VAE latents of the conditioning image.

    I2V (Wan2.1, Wan2.2 A14B): the first frame followed by zeros is encoded, and a 4-channel mask
    marks the given frame; both are concatenated to the noisy latents on the channel axis.
    TI2V (``expand_timesteps``): the first latent frame is replaced by the image latents, and its
    tokens get timestep 0.
    """

    name = "image_latents"

    def __init__(self, vae: Any, geometry: LatentGeometry, *, expand_timesteps: bool) -> None:
        from diffusers.video_processor import VideoProcessor

        self.vae = vae
        self.geometry = geometry
        self.expand_timesteps = expand_timesteps
        self.video_processor = VideoProcessor(vae_scale_factor=geometry.spatial)

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p, extra = batch.params, batch.family_extra("wan")
        assert batch.latents is not None
        _, _, t_lat, h_lat, w_lat = batch.latents.shape
        if p.image is None:  # TI2V used as text-to-video: every token at the current timestep
            extra["mask"] = torch.ones(1, 1, t_lat, h_lat, w_lat, device=batch.device)
            return batch
        vae_param = next(self.vae.parameters())
        image = self.video_processor.preprocess(load_image(p.image), height=p.height, width=p.width)
        image = image.to(device=vae_param.device, dtype=torch.float32).unsqueeze(2)  # (1, 3, 1, H, W)
        if self.expand_timesteps:
            video = image
        else:
            zeros = image.new_zeros(1, 3, p.num_frames - 1, p.height, p.width)
            video = torch.cat([image, zeros], dim=2)  # (1, 3, F, H, W)
        cond = self.vae.encode(video.to(vae_param.dtype)).latent_dist.mode()
        mean = self.geometry.mean.to(batch.device)
        std = self.geometry.std.to(batch.device)
        cond = (cond.to(batch.device, torch.float32) - mean) / std
        if self.expand_timesteps:
            mask = torch.ones(1, 1, t_lat, h_lat, w_lat, device=batch.device)
            mask[:, :, 0] = 0
            extra["mask"], extra["condition"] = mask, cond
            return batch
        temporal = self.geometry.temporal
        frame_mask = torch.zeros(1, 1, p.num_frames, h_lat, w_lat, device=batch.device)
        frame_mask[:, :, 0] = 1
        # The first frame's mask is repeated to a full temporal group, then folded into channels.
        frame_mask = torch.cat(
            [frame_mask[:, :, :1].repeat(1, 1, temporal, 1, 1), frame_mask[:, :, 1:]], dim=2
        )
        frame_mask = frame_mask.view(1, -1, temporal, h_lat, w_lat).transpose(1, 2)  # (1, 4, T', h, w)
        extra["condition"] = torch.cat([frame_mask, cond], dim=1)  # (1, 4 + C, T', h, w)
        return batch


class WanDenoisingStage(DenoisingStage):
    """Wan's sampling loop: adds the image conditioning and TI2V's per-token timesteps."""

    def __init__(self, *args: Any, expand_timesteps: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expand_timesteps = expand_timesteps

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        extra = batch.family_extra("wan")
        inputs: dict[str, Any] = {}
        if self.expand_timesteps:
            mask = extra["mask"]
            if "condition" in extra:
                latents = (1 - mask) * extra["condition"] + mask * latents
            patch = self.transformer.config.patch_size
            per_token = (mask[0, 0, :: patch[0], :: patch[1], :: patch[2]] * t).flatten()  # (L,)
            inputs["timestep"] = per_token.unsqueeze(0).expand(latents.shape[0], -1)
        else:
            if "condition" in extra:
                latents = torch.cat([latents, extra["condition"].to(latents.dtype)], dim=1)
            inputs["timestep"] = t.expand(latents.shape[0])
        inputs["hidden_states"] = latents.to(self.dtype)
        if "image_embeds" in extra:
            inputs["encoder_hidden_states_image"] = extra["image_embeds"].to(self.dtype)
        return inputs

    def finalize(self, batch: ForwardBatch, latents: torch.Tensor) -> torch.Tensor:
        extra = batch.family_extra("wan")
        if self.expand_timesteps and "condition" in extra:
            mask = extra["mask"]
            latents = (1 - mask) * extra["condition"] + mask * latents
        return latents


# ---------------------------------------------------------------- loading


def _present(index: Any, name: str) -> bool:
    spec = index.get(name)
    return bool(spec) and spec[0] is not None


def _transformer(source: ModelSource, name: str, dtype: str, device: torch.device) -> WanTransformer | None:
    if not _present(source.model_index, name):
        return None
    model = WanTransformer.from_pretrained(source.path / name, dtype=torch_dtype(dtype), device=device)
    return model.eval()


def build_wan_pipeline(
    family: type[ModelFamily], source: ModelSource, config: PipelineConfig
) -> ComposedPipeline:
    """Load every component of a Wan checkpoint, then compose the stages of its workload."""
    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device)
    index = source.model_index
    expand = bool(index.get("expand_timesteps"))
    i2v = index.get("_class_name") == "WanImageToVideoPipeline"
    parts = load_components(
        source, device, tokenizer=None, text_encoder=text_dtype, vae=vae_dtype, scheduler=None
    )
    transformer = _transformer(source, "transformer", dit_dtype, device)
    transformer_2 = _transformer(source, "transformer_2", dit_dtype, device)
    if transformer is None:  # Wan2.2 checkpoints may ship only the low-noise expert
        transformer, transformer_2 = transformer_2, None
    assert transformer is not None
    compile_if_asked([transformer, transformer_2], config, device)
    vae, scheduler = parts["vae"], parts["scheduler"]
    geometry = wan_latents(vae)
    image_encoder, after_text, after_latents = None, [], []
    if i2v and _present(index, "image_encoder") and transformer.config.image_dim is not None:
        image_dtype = text_dtype if device.type == "cuda" else "fp32"
        image = load_components(source, device, image_processor=None, image_encoder=image_dtype)
        image_encoder = image["image_encoder"]
        after_text.append(WanImageEncodingStage(image["image_processor"], image_encoder))
    if i2v or expand:
        after_latents.append(WanImageLatentStage(vae, geometry, expand_timesteps=expand))
    denoising = WanDenoisingStage(
        transformer,
        transformer_2=transformer_2,
        boundary_ratio=index.get("boundary_ratio"),
        num_train_timesteps=int(scheduler.config.get("num_train_timesteps", 1000)),
        expand_timesteps=expand,
    )
    stages = text_to_video(
        family,
        source,
        text_encoders=[T5TextEncoder(parts["tokenizer"], parts["text_encoder"])],
        default_negative_prompt=NEGATIVE_PROMPT,
        after_text=after_text,
        scheduler=scheduler,
        geometry=geometry,
        after_latents=after_latents,
        denoising=denoising,
        vae=vae,
        tiling=config.vae_tiling,
    )
    components = {
        "device": device,
        **parts,
        "transformer": transformer,
        "transformer_2": transformer_2,
        "image_encoder": image_encoder,
    }
    return ComposedPipeline(stages, components)
