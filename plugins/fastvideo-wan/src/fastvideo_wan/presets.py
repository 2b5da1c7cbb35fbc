"""Wan presets: each public diffusers-format checkpoint with its sampling defaults.

Values follow the checkpoints' published inference settings (Wan-Video/Wan2.1 and Wan2.2
generate.py defaults, as FastVideo's sample configs record them).
"""

from __future__ import annotations

from fastvideo.interfaces.model_family import Preset

#: Wan's default negative prompt (from the official Wan configs), used when CFG is on.
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

#: Sampling defaults of our ``wan-toy`` demo model (:mod:`fastvideo_wan.toy_model`); the steps and
#: guidance were chosen on held-out accuracy (docs/wan-toy.md).
TOY_SAMPLING = {
    "num_frames": 17,
    "height": 64,
    "width": 64,
    "num_inference_steps": 20,
    "guidance_scale": 2.0,
    "flow_shift": 2.0,
    "fps": 8,
    "negative_prompt": "",
    "max_sequence_length": 16,  # the longest caption is 10 tokens with </s>
}

#: ``wan-toy-fast``: wan-toy distilled by DMD2 (fastvideo-dmd2, examples/train/wan-toy/dmd2.yaml) into a
#: 3-step student sampled without CFG by the ``few-step`` sampler (timesteps in its scheduler config).
TOY_FAST_SAMPLING = {**TOY_SAMPLING, "num_inference_steps": 3, "guidance_scale": 1.0}

#: The VSA sparsity the FastWan2.1 1.3B student was distilled at (FastVideo's sparse-distill recipe);
#: run it with ``--attention-backend vsa --vsa-sparsity 0.8`` where VSA is installed.
FASTWAN_VSA_SPARSITY = 0.8

_480P = {"height": 480, "width": 832}
_720P = {"height": 720, "width": 1280}

PRESETS: tuple[Preset, ...] = (
    Preset(
        name="wan-toy",
        local_path="assets/wan-toy",
        sampling=TOY_SAMPLING,
        description=(
            "our toy Wan2.1-architecture T2V model trained on procedural clips of moving coloured shapes "
            "(17 frames, 64x64; ships with fastvideo-wan, runs offline on a CPU)"
        ),
    ),
    Preset(
        name="wan-toy-fast",
        local_path="assets/wan-toy-fast",
        sampling=TOY_FAST_SAMPLING,
        sampler="few-step",
        description=(
            "wan-toy distilled by DMD2 into a 3-step student without CFG (3 DiT forwards instead of 40); "
            "shares wan-toy's VAE and text encoder"
        ),
    ),
    Preset(
        name="wan2.1-t2v-1.3b",
        repo_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        aliases=("wan", "wan2.1"),
        sampling={
            "num_frames": 81,
            **_480P,
            "num_inference_steps": 50,
            "guidance_scale": 3.0,
            "flow_shift": 3.0,
            "fps": 16,
        },
        description="Wan2.1 text-to-video, 1.3B, 480P",
    ),
    Preset(
        name="wan2.1-t2v-14b",
        repo_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        sampling={
            "num_frames": 81,
            **_720P,
            "num_inference_steps": 50,
            "guidance_scale": 5.0,
            "flow_shift": 5.0,
            "fps": 16,
        },
        description="Wan2.1 text-to-video, 14B, 720P",
    ),
    Preset(
        name="wan2.1-i2v-14b-480p",
        repo_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        workload="i2v",
        sampling={
            "num_frames": 81,
            **_480P,
            "num_inference_steps": 40,
            "guidance_scale": 5.0,
            "flow_shift": 3.0,
            "fps": 16,
        },
        description="Wan2.1 image-to-video, 14B, 480P",
    ),
    Preset(
        name="wan2.1-i2v-14b-720p",
        repo_id="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        workload="i2v",
        sampling={
            "num_frames": 81,
            **_720P,
            "num_inference_steps": 40,
            "guidance_scale": 5.0,
            "flow_shift": 5.0,
            "fps": 16,
        },
        description="Wan2.1 image-to-video, 14B, 720P",
    ),
    Preset(
        name="wan2.2-ti2v-5b",
        repo_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        workload="ti2v",
        sampling={
            "num_frames": 121,
            "height": 704,
            "width": 1280,
            "num_inference_steps": 50,
            "guidance_scale": 5.0,
            "flow_shift": 5.0,
            "fps": 24,
        },
        description="Wan2.2 text/image-to-video, 5B dense, 48-channel VAE, 720P",
    ),
    Preset(
        name="fastwan2.1-t2v-1.3b",
        repo_id="FastVideo/FastWan2.1-T2V-1.3B-Diffusers",
        aliases=("fastwan", "fastwan2.1"),
        sampler="few-step",  # DMD timesteps 1000, 757, 522 (the few-step sampler's default)
        sampling={
            "num_frames": 61,
            "height": 448,
            "width": 832,
            "num_inference_steps": 3,
            "guidance_scale": 1.0,
            "flow_shift": 8.0,
            "fps": 16,
        },
        description=(
            "FastWan2.1 text-to-video 1.3B: Wan2.1-1.3B distilled by DMD2 with VSA (sparsity 0.8), 3 steps, "
            "no CFG, 448x832; sparse with --attention-backend vsa --vsa-sparsity 0.8"
        ),
    ),
    Preset(
        name="fastwan2.2-ti2v-5b",
        repo_id="FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers",
        workload="ti2v",
        sampler="few-step",
        sampling={
            "num_frames": 121,
            "height": 704,
            "width": 1280,
            "num_inference_steps": 3,
            "guidance_scale": 1.0,
            "flow_shift": 5.0,
            "fps": 24,
        },
        description="FastWan2.2 TI2V 5B (full attention): Wan2.2-TI2V-5B distilled by DMD2, 3 steps, no CFG, 720P",
    ),
    Preset(
        name="wan2.2-t2v-a14b",
        repo_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        sampling={
            "num_frames": 81,
            **_720P,
            "num_inference_steps": 40,
            "guidance_scale": 4.0,
            "guidance_scale_2": 3.0,
            "flow_shift": 12.0,
            "fps": 16,
        },
        description="Wan2.2 text-to-video, two 14B experts (MoE), switched at boundary_ratio 0.875",
    ),
    Preset(
        name="wan2.2-i2v-a14b",
        repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        workload="i2v",
        sampling={
            "num_frames": 81,
            **_720P,
            "num_inference_steps": 40,
            "guidance_scale": 3.5,
            "guidance_scale_2": 3.5,
            "flow_shift": 5.0,
            "fps": 16,
        },
        description="Wan2.2 image-to-video, two 14B experts (MoE), switched at boundary_ratio 0.9",
    ),
)
