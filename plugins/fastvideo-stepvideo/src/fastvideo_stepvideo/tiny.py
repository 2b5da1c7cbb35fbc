"""A tiny random Step-Video checkpoint, in the official layout or FastVideo's diffusers-style one, for
tests and smoke runs (CPU, seconds): a 2-layer DiT, a 32-wide VAE (z 2), a 2-layer Step-LLM with a
SentencePiece model trained on a few sentences, and a 1-layer BERT as HunyuanCLIP."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from fastvideo_stepvideo import convert
from fastvideo_stepvideo.model import StepVideoTransformer
from fastvideo_stepvideo.stepllm import TOKENIZER_FILE, StepLLM, StepLLMConfig
from fastvideo_stepvideo.vae import StepVideoVAE, StepVideoVAEConfig

LLM = {"hidden_size": 32, "num_attention_heads": 4, "num_attention_groups": 2, "num_layers": 2,
       "ffn_hidden_size": 256, "layernorm_epsilon": 1e-5, "padded_vocab_size": 64}  # fmt: skip
VAE = {"z_channels": 2, "num_res_blocks": 1, "version": 2, "frame_len": 17, "encoder_ch": 32,
       "encoder_ch_mult": [1, 1, 1, 1], "decoder_ch": 32, "decoder_ch_mult": [1, 1, 1, 1]}  # fmt: skip
DIT = {"num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 2, "out_channels": 2, "num_layers": 2,
       "caption_channels": [32, 16], "attention_type": "parallel"}  # fmt: skip
CLIP_WIDTH = 16
WORDS = ["a", "cat", "walks", "on", "the", "moon", "red", "ball", "bounces", "astronaut", "video", "stone"]
SCHEDULER = {
    "_class_name": "FlowMatchDiscreteScheduler",
    "num_train_timesteps": 1,
    "reverse": True,
    "solver": "euler",
}


def _train_tokenizer(path: Path) -> None:
    import sentencepiece as spm

    specials = ["<|BOT|>", "<|EOT|>", "<|CALL_START|>", "<|CALL_END|>", "<|THINK_START|>", "<|THINK_END|>"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) * 5 + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "tok"), vocab_size=60, model_type="bpe",
            control_symbols=specials, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
            normalization_rule_name="identity", minloglevel=2,
        )  # fmt: skip
        path.write_bytes((Path(tmp) / "tok.model").read_bytes())


def make_tiny_stepvideo(
    folder: str | Path, *, layout: str = "official", seed: int = 0, ti2v: bool = False
) -> Path:
    """Write a tiny Step-Video checkpoint into ``folder`` (``layout``: ``official`` or ``diffusers``;
    ``ti2v``: Step-Video-TI2V's DiT, image latents + motion score)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout={layout!r}: use 'official' or 'diffusers'")
    root = Path(folder)
    official = layout == "official"
    names = {
        "vae": "vae",
        "llm": "step_llm" if official else "text_encoder",
        "llm_tok": "step_llm" if official else "tokenizer",
        "clip": "hunyuan_clip/clip_text_encoder" if official else "text_encoder_2",
        "clip_tok": "hunyuan_clip/tokenizer" if official else "tokenizer_2",
    }
    for d in ("transformer", "scheduler", *names.values()):
        (root / d).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    dit_cfg = {**DIT, "use_additional_conditions": ti2v}
    dit = StepVideoTransformer.from_config(dit_cfg, device="cpu")
    state = convert.ours_to_released({k: v.contiguous() for k, v in dit.state_dict().items()})
    save_file(state, root / "transformer" / "diffusion_pytorch_model.safetensors")
    (root / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "StepVideoModel", **dit_cfg})
    )

    vae = StepVideoVAE(StepVideoVAEConfig.from_json(VAE))
    vstate = {
        k.replace("decoder.conv_out.conv.", "decoder.conv_out."): v for k, v in vae.state_dict().items()
    }
    save_file(
        vstate, root / "vae" / ("vae_v2.safetensors" if official else "diffusion_pytorch_model.safetensors")
    )
    (root / "vae" / "config.json").write_text(json.dumps(VAE))

    llm = StepLLM(StepLLMConfig.from_json(LLM))
    with torch.no_grad():
        for p in llm.parameters():
            p.normal_(0, 0.2) if p.ndim > 1 else p.fill_(1.0)
    save_file(dict(llm.state_dict()), root / names["llm"] / "model.safetensors")
    (root / names["llm"] / "config.json").write_text(json.dumps(LLM))
    _train_tokenizer(root / names["llm_tok"] / TOKENIZER_FILE)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (root / names["clip_tok"] / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(root / names["clip_tok"] / "vocab.txt")).save_pretrained(root / names["clip_tok"])
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=CLIP_WIDTH,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=80,
        )
    )
    bert.save_pretrained(root / names["clip"], safe_serialization=True)

    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    index = {
        "_class_name": "StepVideoPipeline",
        "_diffusers_version": "0.31.0",
        "scheduler": ["stepvideo.diffusion.scheduler", "FlowMatchDiscreteScheduler"],
        "transformer": ["stepvideo.modules.model", "StepVideoModel"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return root
