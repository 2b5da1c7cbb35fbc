"""LTX2Transformer against diffusers' LTX2VideoTransformer3DModel with the same weights (written by
diffusers' save_pretrained, read through our name mapping): fp32 forward parity for LTX-2 (interleaved
RoPE) and LTX-2.3 (split RoPE, gated attention, text cross-attention modulation, prompt adaLN, STG),
modality isolation, per-token timesteps, text masks; the real configs on the meta device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo_ltx.ltx2.configs import TRANSFORMER_CONFIGS
from fastvideo_ltx.ltx2.model import LTX2Config, LTX2Transformer

TINY: dict[str, Any] = {
    "in_channels": 8,
    "out_channels": 8,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "audio_in_channels": 8,
    "audio_out_channels": 8,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 16,
    "num_layers": 2,
    "caption_channels": 24,
    "vae_scale_factors": (8, 32, 32),
}
LTX23 = {
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "rope_type": "split",
    "perturbed_attn": True,
    "use_prompt_embeddings": False,
    "caption_channels": 24,
    "cross_attention_dim": 32,
}


def _diffusers(cfg: dict[str, Any], seed: int = 0) -> Any:
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(seed)
    model = LTX2VideoTransformer3DModel(**cfg).eval()
    with torch.no_grad():  # make the tables and biases non-trivial so every term is exercised
        for name, p in model.named_parameters():
            if "scale_shift_table" in name or name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ours(ref: Any, tmp: Path) -> LTX2Transformer:
    ref.save_pretrained(tmp / "transformer", safe_serialization=True)
    return LTX2Transformer.from_pretrained(tmp / "transformer", dtype=torch.float32)


def _inputs(cfg: dict[str, Any], *, batch: int = 2, latent=(3, 2, 3), audio_len: int = 5, mel: int = 2,
            text_len: int = 6, per_token: bool = False, seed: int = 1) -> dict[str, Any]:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    c = LTX2Config(**cfg)
    text_dim = c.caption_channels if c.use_prompt_embeddings else c.dim
    audio_text_dim = c.caption_channels if c.use_prompt_embeddings else c.audio_dim
    t = (torch.rand(batch, generator=g) * 1000).round()
    mask = torch.ones(batch, text_len)
    mask[0, :2] = 0  # left padding, as the Gemma tokenizer pads
    out = {
        "video": torch.randn(batch, c.in_channels, *latent, generator=g),
        "audio": torch.randn(batch, c.audio_in_channels // mel, audio_len, mel, generator=g),
        "text": torch.randn(batch, text_len, text_dim, generator=g),
        "audio_text": torch.randn(batch, text_len, audio_text_dim, generator=g),
        "t": t,
        "audio_t": t,
        "sigma": t,
        "mask": mask,
    }
    if per_token:
        tt = t[:, None].repeat(1, latent[0] * latent[1] * latent[2])
        tt[:, : latent[1] * latent[2]] = 0.0  # the conditioning first frame
        out["t"] = tt
    return out


def _run_both(ref: Any, ours: LTX2Transformer, inp: dict[str, Any], **kw: Any) -> tuple[Any, ...]:
    b, _c, t, h, w = inp["video"].shape
    _, _ca, la, mel = inp["audio"].shape
    with torch.no_grad():
        rv, ra = ref(
            hidden_states=inp["video"].flatten(2).transpose(1, 2),
            audio_hidden_states=inp["audio"].transpose(1, 2).flatten(2),
            encoder_hidden_states=inp["text"],
            audio_encoder_hidden_states=inp["audio_text"],
            timestep=inp["t"],
            audio_timestep=inp["audio_t"],
            sigma=inp["sigma"],
            encoder_attention_mask=inp["mask"],
            audio_encoder_attention_mask=inp["mask"],
            num_frames=t,
            height=h,
            width=w,
            fps=kw.get("fps", 24.0),
            audio_num_frames=la,
            isolate_modalities=kw.get("isolate_modalities", False),
            spatio_temporal_guidance_blocks=list(kw.get("stg_blocks", ())) or None,
            use_cross_timestep=kw.get("use_cross_timestep", False),
            return_dict=False,
        )
        ov, oa = ours(
            inp["video"], inp["audio"], inp["text"], inp["audio_text"], inp["t"], audio_timestep=inp["audio_t"],
            sigma=inp["sigma"], encoder_attention_mask=inp["mask"], audio_encoder_attention_mask=inp["mask"], **kw,
        )  # fmt: skip
    rv = rv.transpose(1, 2).reshape(b, -1, t, h, w)
    ra = ra.reshape(b, la, -1, mel).transpose(1, 2)
    return ov, rv, oa, ra


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CASES = [
    pytest.param({}, {}, {}, id="ltx2"),
    pytest.param({}, {"fps": 25.0, "use_cross_timestep": True}, {"per_token": True}, id="ltx2-per-token"),
    pytest.param(LTX23, {"use_cross_timestep": True}, {}, id="ltx2.3"),
    pytest.param(LTX23, {"stg_blocks": (1,)}, {}, id="ltx2.3-stg"),
    pytest.param(LTX23, {"isolate_modalities": True}, {}, id="ltx2.3-isolated"),
    pytest.param(
        {**LTX23, "use_prompt_adaln_single": False, "ff_bias": False}, {}, {}, id="ltx2.3-static-prompt"
    ),
]


@pytest.mark.parametrize(("overrides", "kwargs", "inputs"), CASES)
def test_forward_matches_diffusers_fp32(tmp_path: Path, overrides: dict, kwargs: dict, inputs: dict) -> None:
    cfg = {**TINY, **overrides}
    ref = _diffusers(cfg)
    ours = _ours(ref, tmp_path)
    ov, rv, oa, ra = _run_both(ref, ours, _inputs(cfg, **inputs), **kwargs)
    assert ov.shape == rv.shape and oa.shape == ra.shape
    assert _rel(ov, rv) <= 1e-4, _rel(ov, rv)
    assert _rel(oa, ra) <= 1e-4, _rel(oa, ra)


def test_stg_and_isolation_change_the_output(tmp_path: Path) -> None:
    """The guidance switches are not no-ops (so the parity above means something)."""
    cfg = {**TINY, **LTX23}
    ours = _ours(_diffusers(cfg), tmp_path)
    inp = _inputs(cfg)
    base = _run_both(_diffusers(cfg), ours, inp)[0]
    for kw in ({"stg_blocks": (0,)}, {"isolate_modalities": True}):
        with torch.no_grad():
            other = ours(
                inp["video"], inp["audio"], inp["text"], inp["audio_text"], inp["t"], sigma=inp["sigma"], **kw
            )[0]
        assert _rel(other, base) > 1e-3


@pytest.mark.parametrize("name", sorted(TRANSFORMER_CONFIGS))
def test_real_configs_on_meta_match_diffusers_names_and_shapes(name: str) -> None:
    from diffusers import LTX2VideoTransformer3DModel

    cfg = dict(TRANSFORMER_CONFIGS[name])
    with torch.device("meta"):
        ref = LTX2VideoTransformer3DModel(**cfg)
    ours = LTX2Transformer.from_config(cfg)
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    mapped = LTX2Transformer.name_mapping.to_ours(theirs)
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mapped == mine
    params = sum(v.numel() for v in ours.parameters())
    assert params > 15e9, params  # the 19B-class model: ~14B video + ~5B audio stream


def test_bad_config_is_one_line() -> None:
    with pytest.raises(ValueError) as err:
        LTX2Config(**{**TINY, "audio_cross_attention_dim": 7})
    assert "audio_cross_attention_dim=7 must equal the audio width" in str(err.value)
    assert "\n" not in str(err.value)
