"""The ``wan-toy`` demo model: its untrained starting checkpoint and its evaluation.

The model is the Wan2.1 text-to-video architecture at toy size, trained by ``fv train`` on the
procedural clips of :mod:`fastvideo_wan.toy` (the recipe: ``examples/train/wan-toy/``):

* VAE: ``AutoencoderKLWan`` (base width 16, 8 latent channels, 8x spatial / 4x temporal stride,
  so 17x64x64 clips become 8x5x8x8 latents), trained with the ``vae`` algorithm;
* DiT: ``WanTransformer3DModel`` (4 blocks, width 128 = 2 heads x 64, patch 1x2x2: 80 video tokens),
  trained from scratch with the ``finetune`` algorithm on flow matching;
* text: a frozen, randomly initialized 2-layer ``UMT5EncoderModel`` (width 64) behind a tokenizer
  whose vocabulary is the caption grammar's words (plus single letters for anything else).

:func:`make_toy_scaffold` writes the untrained checkpoint; :func:`evaluate_model` generates the
held-out prompts and scores them with the pixel evaluator of :mod:`fastvideo_wan.toy`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastvideo_wan.presets import TOY_SAMPLING as SAMPLING
from fastvideo_wan.toy import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES

#: The caption grammar's words, then single letters (so that any other word still tokenizes).
VOCABULARY: tuple[str, ...] = (
    "a",
    "an",
    "moving",
    "on",
    "background",
    *COLOURS,
    *SHAPES,
    *DIRECTIONS,
    *(b for b in BACKGROUNDS if b not in COLOURS),
)
MAX_SEQUENCE_LENGTH = int(SAMPLING["max_sequence_length"])

VAE_CONFIG: dict[str, Any] = {
    "base_dim": 16,
    "z_dim": 8,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.0] * 8,
    "latents_std": [1.0] * 8,
}
DIT_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "in_channels": 8,
    "out_channels": 8,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 64,
}
TEXT_CONFIG: dict[str, Any] = {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "feed_forward_proj": "gated-gelu",
}
FLOW_SHIFT = float(SAMPLING["flow_shift"])


def toy_tokenizer() -> Any:
    """A T5 tokenizer (sentencepiece-style unigram) whose pieces are the caption words."""
    from transformers import T5TokenizerFast

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [("▁" + w, -float(i + 1)) for i, w in enumerate(VOCABULARY)]
    vocab += [(c, -100.0 - i) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    vocab += [("▁", -200.0)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def make_toy_scaffold(
    path: str | Path,
    *,
    seed: int = 0,
    vae_overrides: dict[str, Any] | None = None,
    dit_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the untrained ``wan-toy`` checkpoint (diffusers format, every component by its own
    library's ``save_pretrained``) to ``path``; the training recipe starts from it.

    ``vae_overrides`` / ``dit_overrides`` replace entries of :data:`VAE_CONFIG` / :data:`DIT_CONFIG`
    (architecture experiments); the DiT's channels follow the VAE's ``z_dim`` unless overridden.
    """
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = toy_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_CONFIG)).eval()
    vae_config = {**VAE_CONFIG, **(vae_overrides or {})}
    z_dim = int(vae_config["z_dim"])
    if len(vae_config["latents_mean"]) != z_dim:
        vae_config["latents_mean"], vae_config["latents_std"] = [0.0] * z_dim, [1.0] * z_dim
    dit_config = {**DIT_CONFIG, "in_channels": z_dim, "out_channels": z_dim, **(dit_overrides or {})}
    vae = AutoencoderKLWan(**vae_config)
    transformer = WanTransformer3DModel(**dit_config)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    # sampling defaults of the folder, inherited by the recipe's exports (fastvideo.resolve.FOLDER_SETTINGS)
    settings = {"preset": "wan-toy", "family": "wan", "sampling": dict(SAMPLING)}
    (path / "fastvideo.json").write_text(json.dumps(settings, indent=2) + "\n")
    return path


#: What :func:`evaluate_model` fixes for every model: the clip the evaluator reads (frames, size, fps,
#: text length, the empty negative prompt). Steps, guidance and shift stay the model's own (a few-step
#: student samples without CFG; wan-toy's 20 steps with CFG 2 would add a CFG branch to it).
CLIP_SAMPLING = {
    k: v for k, v in SAMPLING.items() if k not in ("num_inference_steps", "guidance_scale", "flow_shift")
}


def evaluate_model(
    model: str,
    prompts: list[str] | None = None,
    *,
    seed: int = 0,
    device: str | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Generate each prompt (default: the held-out ones) once and score it from its pixels, with the
    model's own steps, guidance and shift unless ``sampling`` overrides them.

    Returns ``{"accuracy": {attribute: fraction}, "count": n, "failures": [(prompt, detected)]}``.
    """
    from fastvideo import VideoGenerator
    from fastvideo_wan.toy import detect, evaluate, held_out_prompts, score_clip

    prompts = list(prompts) if prompts is not None else held_out_prompts()
    gen = VideoGenerator.from_pretrained(
        model, device=device, progress=False, **{**CLIP_SAMPLING, **sampling}
    )
    pairs, failures = [], []
    for i, prompt in enumerate(prompts):
        frames = gen.generate_video(prompt, seed=seed + i).frames
        pairs.append((frames, prompt))
        if not all(score_clip(frames, prompt).values()):
            failures.append((prompt, detect(frames)))
    return {"accuracy": evaluate(pairs), "count": len(prompts), "failures": failures}


def evaluate_autoencoder(
    model: str, num: int = 56, *, seed: int = 0, device: str | None = None
) -> dict[str, Any]:
    """The VAE's ceiling: encode + decode ``num`` ground-truth held-out clips and score them.

    ``model`` is a checkpoint folder (or preset) with a ``vae`` component. Returns ``{"accuracy":
    {attribute: fraction}, "count": n, "object_mae": [per frame], "psnr": dB}``, where
    ``object_mae`` is the mean absolute error (0-255) over the pixels of the object, frame by frame,
    and ``psnr`` is over the whole clips.
    """
    import numpy as np
    import torch
    from diffusers import AutoencoderKLWan

    from fastvideo.models import pick_device
    from fastvideo.resolve import resolve
    from fastvideo_wan.toy import evaluate, make_clip

    dev = pick_device(device)
    vae = AutoencoderKLWan.from_pretrained(
        str(resolve(model).path), subfolder="vae", torch_dtype=torch.float32
    ).to(dev)
    vae.eval()
    pairs, mae_sum, mae_count, sq_err = [], 0.0, 0.0, []
    for i in range(num):
        clip, prompt = make_clip(seed, i, split="held-out")
        x = torch.from_numpy(clip).to(dev).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        out = ((y[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        pairs.append((out, prompt))
        diff = np.abs(out.astype(np.float64) - clip)
        obj = np.any(clip != clip[:, :1, :1], axis=-1)  # pixels that are not the background colour
        mae_sum = mae_sum + (diff.mean(-1) * obj).sum(axis=(1, 2))
        mae_count = mae_count + obj.sum(axis=(1, 2))
        sq_err.append(float((diff**2).mean()))
    psnr = float(10 * np.log10(255.0**2 / np.mean(sq_err)))
    object_mae = [round(float(v), 2) for v in mae_sum / np.maximum(mae_count, 1)]
    return {"accuracy": evaluate(pairs), "count": num, "object_mae": object_mae, "psnr": round(psnr, 2)}
