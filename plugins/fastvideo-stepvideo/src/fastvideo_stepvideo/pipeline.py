"""The Step-Video text-to-video (and TI2V image-to-video) pipeline, composed from the core stages.

validation -> text (Step-LLM, 320 tokens, and HunyuanCLIP, 77 tokens; the prompt gets the positive
"magic" suffix, the negative prompt defaults to the negative magic) -> timesteps (``stepvideo-flow``:
time-shifted flow sigmas) -> latents ``(64, T/17*3, H/16, W/16)`` -> denoising with CFG (the DiT takes
the Step-LLM states, the CLIP states and the mask over both) -> decoding (the chunked Step-Video VAE).
TI2V checkpoints (``use_additional_conditions`` in the DiT config) add the first frame's latent after
the latents stage and pass it, with the motion score, to the DiT; their magic prompts are TI2V's own.

Two checkpoint layouts load:

- the official one (``stepfun-ai/stepvideo-t2v``): ``transformer/``, ``vae/vae_v2.safetensors``,
  ``step_llm/`` (with ``step1_chat_tokenizer.model``), ``hunyuan_clip/clip_text_encoder/`` and
  ``hunyuan_clip/tokenizer/``, ``scheduler/``;
- FastVideo's diffusers-style mirror (``FastVideo/stepvideo-t2v-diffusers``): ``transformer/``,
  ``vae/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``), ``text_encoder/`` (Step-LLM;
  its tokenizer model there or in ``tokenizer/``), ``text_encoder_2/`` + ``tokenizer_2/`` (CLIP),
  ``scheduler/``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from fastvideo.errors import CheckpointError
from fastvideo.loader.components import torch_dtype
from fastvideo.models import default_dtypes, pick_device
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.compose import compile_if_asked, text_to_video
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.pipelines.stages import DenoisingStage, TextEncodingStage
from fastvideo_stepvideo.model import StepVideoTransformer
from fastvideo_stepvideo.stepllm import (
    TOKENIZER_FILE,
    HunyuanClipTextEncoder,
    StepLLM,
    StepLLMTextEncoder,
    StepLLMTokenizer,
)
from fastvideo_stepvideo.vae import StepVideoVAE

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

#: The reference's default prompt suffix and negative prompt (``stepvideo/config.py``).
POS_MAGIC = "超高清、HDR 视频、环境光、杜比全景声、画面稳定、流畅动作、逼真的细节、专业级构图、超现实主义、自然、生动、超细节、清晰。"
NEG_MAGIC = (
    "画面暗、低分辨率、不良手、文本、缺少手指、多余的手指、裁剪、低质量、颗粒状、签名、水印、用户名、模糊。"
)
#: Step-Video-TI2V's (its ``stepvideo/config.py``).
TI2V_POS_MAGIC = "画面中的主体动作表现生动自然、画面流畅、生动细节、光线统一柔和、超真实动态捕捉、大师级运镜、整体不变形、超高清、画面稳定、逼真的细节、专业级构图、超细节、清晰。"
TI2V_NEG_MAGIC = "动画、模糊、变形、毁容、低质量、拼贴、粒状、标志、抽象、插图、计算机生成、扭曲、动作不流畅、面部有褶皱、表情僵硬、畸形手指"
LLM_MAX_LENGTH = 320
CLIP_MAX_LENGTH = 77
FRAMES_PER_CHUNK = 17
LATENTS_PER_CHUNK = 3


def latent_shape(params: Any, channels: int = 64) -> tuple[int, int, int, int]:
    """``(C, T', h, w)``: 3 latent frames per 17 video frames, 16x smaller frames."""
    return (
        channels,
        params.num_frames // FRAMES_PER_CHUNK * LATENTS_PER_CHUNK,
        params.height // 16,
        params.width // 16,
    )


class StepVideoTextStage(TextEncodingStage):
    """Each encoder on ``prompt + pos_magic`` and, with CFG, on the negative prompt (default: the
    negative magic), as the reference's ``encode_prompt``."""

    def __init__(
        self, encoders: list[Any], *, pos_magic: str = POS_MAGIC, neg_magic: str = NEG_MAGIC
    ) -> None:
        super().__init__(encoders, default_negative_prompt=neg_magic)
        self.pos_magic = pos_magic

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p = batch.params
        neg = p.negative_prompt if p.negative_prompt is not None else self.default_negative_prompt
        for enc in self.encoders:
            emb, mask = enc([p.prompt + self.pos_magic], p.max_sequence_length, batch.device)
            batch.prompt_embeds.append(emb)
            batch.prompt_masks.append(mask)
            if batch.do_cfg:
                nemb, nmask = enc([neg], p.max_sequence_length, batch.device)
                batch.negative_prompt_embeds.append(nemb)
                batch.negative_prompt_masks.append(nmask)
        return batch


class StepVideoDenoisingStage(DenoisingStage):
    """The sampling loop with Step-Video's inputs: the flow time itself as the timestep (the DiT
    scales it), the Step-LLM states, the CLIP states and the mask over ``[CLIP, LLM]`` tokens."""

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        b = latents.shape[0]
        return {"hidden_states": latents.to(self.dtype), "timestep": t.reshape(1).expand(b).to(self.dtype)}

    def text_inputs(self, batch: ForwardBatch, negative: bool) -> dict[str, Any]:
        embeds = batch.negative_prompt_embeds if negative else batch.prompt_embeds
        masks = batch.negative_prompt_masks if negative else batch.prompt_masks
        llm, llm_mask = embeds[0], masks[0]
        if len(embeds) > 1:
            clip, clip_mask = embeds[1], masks[1]
            mask = torch.cat([clip_mask.to(llm_mask), llm_mask], dim=1)
        else:
            clip, mask = None, llm_mask
        return {"encoder_hidden_states": llm, "encoder_hidden_states_2": clip, "encoder_attention_mask": mask}


class StepVideoImageStage(PipelineStage):
    """TI2V: the first frame's latent. The image is scaled to cover the requested size (bilinear,
    antialiased, as torchvision's ``Resize`` on tensors), center-cropped, encoded by the VAE and
    sampled from its posterior with the request's generator; the condition latents are that frame
    followed by zeros (the reference's ``prepare_condition_hidden_states``)."""

    name = "image_latents"

    def __init__(self, vae: StepVideoVAE) -> None:
        self.vae = vae

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p = batch.params
        if p.image is None:
            raise ValueError("this Step-Video-TI2V checkpoint is image-to-video: pass --image PATH")
        image = load_image(p.image, p.height, p.width)  # (3, H, W) in [-1, 1]
        video = image[None, :, None].to(device=next(self.vae.parameters()).device)  # (1, 3, 1, H, W)
        with torch.no_grad():
            mean, logvar = self.vae.encode(video).float().chunk(2, dim=1)  # (1, C, 1, h, w) each
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=batch.generator, dtype=torch.float32).to(mean.device)
        first = mean + std * noise
        assert batch.latents is not None
        cond = torch.zeros_like(batch.latents)
        cond[:, :, :1] = first.to(cond)
        batch.family_extra("stepvideo")["condition"] = cond
        return batch


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """``path`` as ``(3, height, width)`` in [-1, 1]: scaled to cover, then center-cropped.

    :raises ValueError: the file cannot be read as an image.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--image {path}: cannot be read as an image ({e}); pass a PNG or JPEG file"
        ) from None
    x = torch.from_numpy(arr).permute(2, 0, 1) * 2 - 1  # (3, h, w)
    h, w = x.shape[1:]
    scale = width / w if w / h < width / height else height / h
    sh, sw = round(h * scale), round(w * scale)
    x = torch.nn.functional.interpolate(
        x[None], size=(sh, sw), mode="bilinear", antialias=True, align_corners=False
    )[0]
    top, left = (sh - height) // 2, (sw - width) // 2
    return x[:, top : top + height, left : left + width]


class StepVideoTI2VDenoisingStage(StepVideoDenoisingStage):
    """TI2V: also passes the image latents and the motion score to the DiT: the request's
    (``--motion-score``, ``family_options={"stepvideo": {"motion_score": x}}``; default 5, the
    published setting: 2 steadier, 10 or 20 more motion), unless ``stage.motion_score`` is set."""

    def __init__(self, transformer: Any, *, motion_score: float | None = None, **kw: Any) -> None:
        super().__init__(transformer, **kw)
        self.motion_score = motion_score

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        from fastvideo_stepvideo.family import StepVideoFamily

        inputs = super().model_inputs(batch, latents, t)
        cond = batch.family_extra("stepvideo")["condition"]
        score = self.motion_score
        if score is None:
            score = StepVideoFamily.option_values(batch.params)["motion_score"]
        return {**inputs, "condition_hidden_states": cond.to(self.dtype), "motion_score": score}


#: The largest frame the official code decodes (768x768; 544x992 is smaller): the VAE's per-frame
#: GroupNorms make a tiled decode differ from it, so frames up to this size decode untiled unless
#: ``vae_tiling=True`` asks for tiles; larger ones are tiled to bound memory.
OFFICIAL_UNTILED_PIXELS = 768 * 768


def _first(root: Path, *candidates: str) -> Path | None:
    return next((root / c for c in candidates if (root / c).exists()), None)


def component_paths(root: Path) -> dict[str, Path]:
    """Where each component of an official or diffusers-style Step-Video folder lives.

    :raises CheckpointError: a component folder neither layout has.
    """
    found = {
        "transformer": _first(root, "transformer"),
        "vae": _first(root, "vae"),
        "step_llm": _first(root, "step_llm", "text_encoder"),
        "clip": _first(root, "hunyuan_clip/clip_text_encoder", "text_encoder_2"),
        "clip_tokenizer": _first(root, "hunyuan_clip/tokenizer", "tokenizer_2"),
    }
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise CheckpointError(
            f"{root}: not a Step-Video checkpoint, no {', '.join(missing)} folder (expected the official layout "
            "transformer/, vae/, step_llm/, hunyuan_clip/ or the diffusers-style text_encoder/, text_encoder_2/, "
            "tokenizer_2/)"
        )
    paths: dict[str, Path] = {k: v for k, v in found.items() if v is not None}
    tok = _first(
        root, f"step_llm/{TOKENIZER_FILE}", f"text_encoder/{TOKENIZER_FILE}", f"tokenizer/{TOKENIZER_FILE}"
    )
    if tok is None:
        raise CheckpointError(
            f"{root}: no Step-LLM tokenizer {TOKENIZER_FILE} in step_llm/, text_encoder/ or tokenizer/"
        )
    paths["tokenizer"] = tok
    return paths


def scheduler_of(source: ModelSource) -> Any:
    """The checkpoint's scheduler config as an object with ``.config`` (what samplers read)."""
    cfg = source.read_json("scheduler/scheduler_config.json") or {}
    return SimpleNamespace(config={k: v for k, v in cfg.items() if not k.startswith("_")})


def build_stepvideo_pipeline(
    family: type[ModelFamily], source: ModelSource, config: PipelineConfig
) -> ComposedPipeline:
    """Load every component of a Step-Video checkpoint, then compose the text-to-video stages."""
    from transformers import BertModel, BertTokenizer

    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device, text="bf16", vae="bf16")
    paths = component_paths(Path(source.path))
    transformer = StepVideoTransformer.from_pretrained(
        paths["transformer"], dtype=torch_dtype(dit_dtype), device=device
    )
    compile_if_asked([transformer], config, device)
    llm = StepLLM.from_pretrained(paths["step_llm"], dtype=torch_dtype(text_dtype), device=device)
    if not any(paths["clip"].glob("*.safetensors")) and (paths["clip"] / "pytorch_model.bin").exists():
        raise CheckpointError(
            f"{paths['clip']}: HunyuanCLIP is released as pytorch_model.bin only and fastvideo loads safetensors; "
            f"convert it once with: fv stepvideo convert-clip {paths['clip']}"
        )
    try:
        clip = (
            BertModel.from_pretrained(paths["clip"], dtype=torch.float32, use_safetensors=True)
            .to(device)
            .eval()
        )
        clip_tok = BertTokenizer.from_pretrained(paths["clip_tokenizer"])
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{paths['clip']}: cannot load HunyuanCLIP (a BertModel with safetensors weights, and its tokenizer): {first}"
        ) from None
    vae = StepVideoVAE.from_pretrained(paths["vae"], dtype=torch_dtype(vae_dtype), device=device)
    encoders = [
        StepLLMTextEncoder(StepLLMTokenizer(paths["tokenizer"]), llm, max_length=LLM_MAX_LENGTH),
        HunyuanClipTextEncoder(clip_tok, clip, max_length=CLIP_MAX_LENGTH),
    ]
    scheduler = scheduler_of(source)
    channels = transformer.config.in_channels
    ti2v = transformer.config.use_additional_conditions
    denoising = (StepVideoTI2VDenoisingStage if ti2v else StepVideoDenoisingStage)(
        transformer, num_train_timesteps=1
    )
    stages = text_to_video(
        family,
        source,
        text_encoders=encoders,
        scheduler=scheduler,
        geometry=SimpleNamespace(shape=lambda p: latent_shape(p, channels), denormalize=lambda z: z),  # type: ignore[arg-type]
        denoising=denoising,
        vae=vae,
        after_latents=[StepVideoImageStage(vae)] if ti2v else (),
        tiling=config.vae_tiling,
    )
    magic = {"pos_magic": TI2V_POS_MAGIC, "neg_magic": TI2V_NEG_MAGIC} if ti2v else {}
    stages[1] = StepVideoTextStage(encoders, **magic)
    decoding = stages[-1]
    decoding.vae_decode = lambda v, z: v.decode(z)  # type: ignore[attr-defined]
    # automatic tiling (vae_tiling=None) only above the official sizes, which decode untiled as released
    decoding.tile_above = OFFICIAL_UNTILED_PIXELS  # type: ignore[attr-defined]
    parts = {
        "vae": vae,
        "text_encoder": llm,
        "text_encoder_2": clip,
        "tokenizer_2": clip_tok,
        "scheduler": scheduler,
    }
    return ComposedPipeline(stages, {"device": device, **parts, "transformer": transformer})
