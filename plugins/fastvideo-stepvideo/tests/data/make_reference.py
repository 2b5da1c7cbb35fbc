"""Write the official-code reference fixtures of fastvideo-stepvideo's tests (run once, by hand).

The official modules are imported from the folder given with ``--official``, a throwaway checkout of
``stepfun-ai/Step-Video-T2V`` (the commit is recorded in ``README.md`` next to this file) plus
CPU shims of the CUDA-only packages it imports (see ``README.md``); no official code is part of this
file or of this repository. Everything runs on CPU in fp32 with seeded random weights::

    python make_reference.py --official /tmp/stepref --official-ti2v /tmp/stepref_ti2v [--only dit,sampling,shapes,vae,llm,llm_shapes,ti2v]

Outputs (in this folder): ``dit/`` (a tiny transformer folder as released: ``config.json`` +
``diffusion_pytorch_model.safetensors`` with the released key names), ``dit_io.safetensors``
(inputs and outputs of the official forward), ``sampling.safetensors`` (the official pipeline's
per-step latents), ``vae/`` + ``vae_io.safetensors``, ``step_llm/`` + ``step_llm_io.safetensors``
``dit_ti2v/`` + ``dit_ti2v_io.safetensors`` (Step-Video-TI2V's DiT) and ``released_shapes.json``
(name -> shape of every parameter of the real-size official modules, built on ``meta``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent

#: The tiny DiT: 2 heads of 16 (RoPE split 8/4/4), 2 layers, LLM width 24, CLIP width 12.
DIT_CONFIG = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 2,
    "dropout": 0.0,
    "patch_size": 1,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "use_additional_conditions": False,
    "caption_channels": [24, 12],
    "attention_type": "torch",
}


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Seeded random values in every parameter (the official constructors skip initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith(("norm.weight", "_norm.weight")) or (
                ".norm" in name and name.endswith("weight")
            ):
                p.copy_(1.0 + noise * 0.5)
            else:
                p.copy_(noise)


def official_dit(cfg: dict, seed: int):
    from stepvideo.modules.model import StepVideoModel

    model = StepVideoModel(**cfg)
    hd = cfg["attention_head_dim"]
    for block in model.transformer_blocks:  # the official split is [64, 32, 32] for head dim 128
        block.attn1.rope_ch_split = [hd // 2, hd // 4, hd // 4]
    randomize(model, seed)
    return model.eval()


def dit_inputs(cfg: dict, seed: int, frames=3, height=4, width=6):
    g = torch.Generator().manual_seed(seed)
    llm, clip = cfg["caption_channels"]
    b, l_llm, l_clip = 2, 7, 5
    x = torch.randn(b, frames, cfg["in_channels"], height, width, generator=g)  # official (B, F, C, H, W)
    t = torch.tensor([0.3, 0.85])
    y = torch.randn(b, l_llm, llm, generator=g)
    y2 = torch.randn(b, l_clip, clip, generator=g)
    mask = torch.zeros(b, l_clip + l_llm)
    mask[0, : l_clip + 4] = 1  # sample 0: 4 valid LLM tokens, sample 1: all 7
    mask[1, :] = 1
    return x, t, y, y2, mask


def make_dit(out: Path) -> None:
    cfg = dict(DIT_CONFIG)
    model = official_dit(cfg, seed=0)
    folder = out / "dit"
    folder.mkdir(exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        folder / "diffusion_pytorch_model.safetensors",
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "StepVideoModel", **cfg}, indent=2) + "\n")
    tensors = {}
    for case, (frames, h, w) in {"a": (3, 4, 6), "b": (2, 3, 5)}.items():
        x, t, y, y2, mask = dit_inputs(cfg, seed=1 if case == "a" else 2, frames=frames, height=h, width=w)
        with torch.no_grad():
            y_out = model(
                hidden_states=x,
                timestep=t,
                encoder_hidden_states=y,
                encoder_hidden_states_2=y2,
                encoder_attention_mask=mask,
                return_dict=False,
            )
        tensors.update(
            {
                f"{case}.hidden_states": x,
                f"{case}.timestep": t,
                f"{case}.encoder_hidden_states": y,
                f"{case}.encoder_hidden_states_2": y2,
                f"{case}.encoder_attention_mask": mask,
                f"{case}.output": y_out.contiguous().clone(),
            }
        )
    save_file(tensors, out / "dit_io.safetensors")


def make_sampling(out: Path) -> None:
    """The official ``StepVideoPipeline.__call__`` (CFG, time shift, Euler) on the tiny DiT, with
    the caption server replaced by fixed embeddings; every scheduler step's output recorded."""
    from stepvideo.diffusion.scheduler import FlowMatchDiscreteScheduler
    from stepvideo.diffusion.video_pipeline import StepVideoPipeline

    cfg = dict(DIT_CONFIG)
    model = official_dit(cfg, seed=0)
    g = torch.Generator().manual_seed(5)
    llm, clip = cfg["caption_channels"]
    y = torch.randn(2, 7, llm, generator=g)  # [prompt, negative prompt]
    y2 = torch.randn(2, 5, clip, generator=g)
    mask = torch.ones(2, 12)
    mask[1, 5 + 3 :] = 0  # the negative prompt has 3 valid LLM tokens
    # noise as the official pipeline holds it: rounded to bf16 (prepare_latents casts to bf16)
    noise = torch.randn(1, 3, cfg["in_channels"], 4, 6, generator=g).to(torch.bfloat16).float()
    tensors = {"prompt_embeds": y, "clip_embeds": y2, "mask": mask, "noise": noise}
    for reverse in (True, False):
        scheduler = FlowMatchDiscreteScheduler(num_train_timesteps=1, reverse=reverse)
        pipe = StepVideoPipeline(model, scheduler, save_path=tempfile.mkdtemp())

        async def caption(prompts, *a, **k):
            return {"y": y, "y_mask": mask, "clip_embedding": y2}

        pipe.caption = caption
        steps = []
        original = scheduler.step

        def step(*a, original=original, steps=steps, **k):
            res = original(*a, **k)
            steps.append(res.clone())
            return res

        scheduler.step = step
        latents = pipe(
            prompt="p",
            num_frames=17,
            height=64,
            width=96,
            num_inference_steps=4,
            guidance_scale=9.0,
            time_shift=13.0,
            latents=noise.clone(),
            output_type="latent",
            return_dict=False,
        )[0]
        key = "reverse" if reverse else "forward"
        tensors[f"{key}.timesteps"] = scheduler.timesteps.clone()
        tensors[f"{key}.steps"] = torch.stack(steps)
        tensors[f"{key}.final"] = latents.contiguous().clone()
    save_file(tensors, out / "sampling.safetensors")


def make_shapes(out: Path) -> None:
    """Every parameter name and shape of the released modules (real-size defaults), built on meta."""
    from stepvideo.modules.model import StepVideoModel

    with torch.device("meta"):
        model = StepVideoModel.__new__(StepVideoModel)
        StepVideoModel.__init__.__wrapped__(model)  # skip the official empty-init wrapper (it forces CPU)
    shapes = {"transformer": {k: list(v.shape) for k, v in model.state_dict().items()}}
    from stepvideo.vae import vae as V

    with torch.device("meta"):  # AutoencoderKL(z_channels=64, version=2)'s encoder and decoder
        enc = V.VideoEncoder(z_channels=64, version=2)
        dec = V.VideoDecoder(z_channels=64, version=2)
    vae = {f"encoder.{k}": list(v.shape) for k, v in enc.state_dict().items()}
    vae.update(
        {
            f"decoder.{k}".replace("decoder.conv_out.conv.", "decoder.conv_out."): list(v.shape)
            for k, v in dec.state_dict().items()
        }
    )
    shapes["vae"] = vae  # released names (vae_v2.safetensors stores decoder.conv_out.*)
    path = out / "released_shapes.json"
    if path.exists():
        shapes = {**json.loads(path.read_text()), **shapes}
    path.write_text(json.dumps(shapes, separators=(",", ":"), sort_keys=True) + "\n")


#: The tiny VAE: z 2, widths 32 at every level, 1 ResNet per encoder level (2 per decoder level).
VAE_CONFIG = {
    "z_channels": 2,
    "num_res_blocks": 1,
    "version": 2,
    "frame_len": 17,
    "encoder_ch": 32,
    "encoder_ch_mult": [1, 1, 1, 1],
    "decoder_ch": 32,
    "decoder_ch_mult": [1, 1, 1, 1],
}


def official_vae(cfg: dict, seed: int):
    """The official AutoencoderKL (version 2) with tiny widths: its encoder and decoder built with the
    widths the released constructor hard-codes (32 x [4, 8, 16, 16] and 128 x [1, 2, 4, 4]) replaced."""
    from refweights import seeded_state
    from stepvideo.vae import vae as V

    V.base_group_norm.spatial = True  # what AutoencoderKL(version=2) switches on
    vae = V.AutoencoderKL.__new__(V.AutoencoderKL)
    torch.nn.Module.__init__(vae)
    z, n = cfg["z_channels"], cfg["num_res_blocks"]
    vae.encoder = V.VideoEncoder(
        ch=cfg["encoder_ch"], ch_mult=tuple(cfg["encoder_ch_mult"]), num_res_blocks=n, z_channels=z, version=2
    )
    vae.decoder = V.VideoDecoder(
        ch=cfg["decoder_ch"], ch_mult=tuple(cfg["decoder_ch_mult"]), z_channels=z, num_res_blocks=n, version=2
    )
    vae.frame_len, vae.latent_len, vae.world_size = 17, 3, 1
    shapes = [(k, list(v.shape)) for k, v in sorted(vae.state_dict().items())]
    vae.load_state_dict(seeded_state(shapes, seed))
    return vae.eval(), shapes


def make_vae(out: Path) -> None:
    vae, shapes = official_vae(VAE_CONFIG, seed=7)
    # the released file stores decoder.conv_out.* (the official loader renames it to conv_out.conv.*)
    released = [(k.replace("decoder.conv_out.conv.", "decoder.conv_out."), s) for k, s in shapes]
    recipe = {
        "config": VAE_CONFIG,
        "seed": 7,
        "official_order": shapes,
        "released_names": [k for k, _ in released],
    }
    (out / "vae_recipe.json").write_text(json.dumps(recipe, separators=(",", ":")) + "\n")
    g = torch.Generator().manual_seed(8)
    z = torch.randn(1, 6, VAE_CONFIG["z_channels"], 1, 2, generator=g)  # official (B, T', C, h, w): 2 chunks
    video = torch.rand(1, 34, 3, 16, 32, generator=g) * 2 - 1  # official (B, T, C, H, W): 2 chunks
    decoded = vae.decode(z.clone())
    encoded = torch.cat(
        [vae.naive_encode(c) for c in video.split(17, dim=1)], dim=1
    )  # encode() before sampling
    image = vae.naive_encode(video[:, :1])  # one frame: TI2V's first-frame latent (before sampling)
    tensors = {"z": z, "decoded": decoded.contiguous(), "video": video, "encoded": encoded.contiguous()}
    save_file({**tensors, "encoded_image": image.contiguous()}, out / "vae_io.safetensors")


#: The tiny Step-LLM: width 32, 4 heads in 2 key/value groups, 2 layers, SwiGLU 256, 64 tokens.
LLM_CONFIG = {
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_attention_groups": 2,
    "num_layers": 2,
    "ffn_hidden_size": 256,
    "layernorm_epsilon": 1e-5,
    "padded_vocab_size": 64,
    "seq_length": 64,
    "use_flash_attn": True,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "fp32_residual_connection": False,
    "embedding_weights_in_fp32": False,
}


def make_llm(out: Path) -> None:
    """The official Step1Model (its attention: the Optimus stand-in of ``shims/optimus_shim.py``) and
    the official tokenizer wrapper on a tiny SentencePiece model trained here."""
    import optimus_shim
    from refweights import seeded_state

    optimus_shim.install()
    import transformers.modeling_utils

    # transformers 5 moved PretrainedConfig out of modeling_utils, where the official code imports it from
    transformers.modeling_utils.PretrainedConfig = transformers.PretrainedConfig
    argv, sys.argv = sys.argv, sys.argv[:1]  # stepvideo.text_encoder parses the command line on import
    try:
        from stepvideo.text_encoder.stepllm import Step1Model
        from stepvideo.text_encoder.tokenizer import Wrapped_StepChatTokenizer
    finally:
        sys.argv = argv
    from transformers import PretrainedConfig

    config = PretrainedConfig(**LLM_CONFIG, params_dtype=torch.float32)
    model = Step1Model(config).eval()
    shapes = [(k, list(v.shape)) for k, v in sorted(model.state_dict().items())]
    model.load_state_dict(seeded_state(shapes, 11))
    (out / "step_llm_recipe.json").write_text(
        json.dumps({"config": LLM_CONFIG, "seed": 11, "order": shapes}, separators=(",", ":")) + "\n"
    )
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(3, 64, (2, 9), generator=g)
    hidden = model(ids).transpose(0, 1)  # (S, B, D) -> (B, S, D), as STEP1TextEncoder returns it
    tensors = {"input_ids": ids, "hidden_states": hidden.contiguous()}

    import sentencepiece as spm

    specials = ["<|BOT|>", "<|EOT|>", "<|CALL_START|>", "<|CALL_END|>", "<|THINK_START|>", "<|THINK_END|>"]
    text = [
        "a cat walks on the moon",
        "an astronaut finds a shining stone",
        "the red ball bounces",
        "stepfun video",
    ]
    model_file = out / "tiny_tokenizer.model"
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(text * 20) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "tok"),
            vocab_size=60,
            model_type="bpe",
            control_symbols=specials,
            user_defined_symbols=["<|MASK_1e69f|>", "<|UNMASK_1e69f|>"],
            bos_id=1,
            eos_id=2,
            unk_id=0,
            pad_id=-1,
            normalization_rule_name="identity",
        )
        model_file.write_bytes((Path(tmp) / "tok.model").read_bytes())
    tok = Wrapped_StepChatTokenizer(str(model_file))
    prompts = ["a cat walks on the moon", "stepfun video, red ball bounces on the moon with a cat"]
    toks = tok(prompts, max_length=20)
    tensors.update({"tok.input_ids": toks.input_ids, "tok.attention_mask": toks.attention_mask})
    empty = tok([], max_length=12)
    tensors.update({"tok_empty.input_ids": empty.input_ids, "tok_empty.attention_mask": empty.attention_mask})
    save_file(tensors, out / "step_llm_io.safetensors", metadata={"prompts": json.dumps(prompts)})


def make_ti2v(out: Path) -> None:
    """Step-Video-TI2V's DiT (``use_additional_conditions=True``: image latents concatenated along the
    channels, a motion-score embedding), from the TI2V repository given with ``--official-ti2v``."""
    cfg = {**DIT_CONFIG, "use_additional_conditions": True}
    model = official_dit(cfg, seed=20)
    folder = out / "dit_ti2v"
    folder.mkdir(exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        folder / "diffusion_pytorch_model.safetensors",
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "StepVideoModel", **cfg}, indent=2) + "\n")
    x, t, y, y2, mask = dit_inputs(cfg, seed=21)
    cond = torch.zeros_like(x)
    cond[:, :1] = torch.randn(
        x[:, :1].shape, generator=torch.Generator().manual_seed(22)
    )  # first latent frame
    out_t = model(
        hidden_states=x,
        timestep=t,
        encoder_hidden_states=y,
        encoder_hidden_states_2=y2,
        encoder_attention_mask=mask,
        condition_hidden_states=cond,
        motion_score=5.0,
        return_dict=False,
    )
    save_file(
        {
            "hidden_states": x,
            "timestep": t,
            "encoder_hidden_states": y,
            "encoder_hidden_states_2": y2,
            "encoder_attention_mask": mask,
            "condition_hidden_states": cond,
            "motion_score": torch.tensor(5.0),
            "output": out_t.contiguous().clone(),
        },
        out / "dit_ti2v_io.safetensors",
    )
    from stepvideo.modules.model import StepVideoModel

    with torch.device("meta"):
        real = StepVideoModel.__new__(StepVideoModel)
        StepVideoModel.__init__.__wrapped__(real, use_additional_conditions=True)
    path = out / "released_shapes.json"
    shapes = json.loads(path.read_text()) if path.exists() else {}
    shapes["transformer_ti2v"] = {k: list(v.shape) for k, v in real.state_dict().items()}
    path.write_text(json.dumps(shapes, separators=(",", ":"), sort_keys=True) + "\n")


#: Step-LLM's real size as this plugin ASSUMES it (``StepLLMConfig``'s defaults): the released
#: ``step_llm/config.json`` is not in the official repository, so only ``hidden_size`` is confirmed
#: (by the DiT's ``caption_channels[0]``); the rest is unverified (docs/stepvideo.md says so).
LLM_ASSUMED_REAL_SIZE = {
    **LLM_CONFIG,
    "hidden_size": 6144,
    "num_attention_heads": 48,
    "num_attention_groups": 4,
    "num_layers": 48,
    "ffn_hidden_size": 16384,
    "padded_vocab_size": 65536,
    "seq_length": 320,
}


def make_llm_shapes(out: Path) -> None:
    """The official Step1Model at ``LLM_ASSUMED_REAL_SIZE``, built on meta: ``released_shapes.json``'s
    ``step_llm_assumed`` (names and shapes as the official code makes them for those values)."""
    import optimus_shim

    optimus_shim.install()
    import transformers.modeling_utils

    transformers.modeling_utils.PretrainedConfig = transformers.PretrainedConfig
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        from stepvideo.text_encoder.stepllm import Step1Model
    finally:
        sys.argv = argv
    from transformers import PretrainedConfig

    with torch.device("meta"):
        model = Step1Model(PretrainedConfig(**LLM_ASSUMED_REAL_SIZE, params_dtype=torch.bfloat16))
    path = out / "released_shapes.json"
    shapes = json.loads(path.read_text()) if path.exists() else {}
    shapes["step_llm_assumed"] = {
        "config": LLM_ASSUMED_REAL_SIZE,
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    }
    path.write_text(json.dumps(shapes, separators=(",", ":"), sort_keys=True) + "\n")


MAKERS = {
    "dit": make_dit,
    "sampling": make_sampling,
    "shapes": make_shapes,
    "vae": make_vae,
    "llm": make_llm,
    "llm_shapes": make_llm_shapes,
    "ti2v": make_ti2v,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official", required=True, help="folder holding the official stepvideo package + shims"
    )
    parser.add_argument("--official-ti2v", help="the same for stepfun-ai/Step-Video-TI2V (the ti2v part)")
    parser.add_argument("--only", default=",".join(MAKERS), help="comma-separated parts to write")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for part in args.only.split(","):
        root = Path(args.official_ti2v if part == "ti2v" else args.official)
        sys.path[:0] = [str(root / "shims"), str(root / "deps"), str(HERE)]
        # the package's __init__ imports the whole pipeline (torchvision, aiohttp); load the modules without it
        for name in [m for m in sys.modules if m == "stepvideo" or m.startswith("stepvideo.")]:
            del sys.modules[name]
        pkg = types.ModuleType("stepvideo")
        pkg.__path__ = [str(root / "stepvideo")]
        sys.modules["stepvideo"] = pkg
        MAKERS[part](HERE)
        print("wrote", part)


if __name__ == "__main__":
    main()
