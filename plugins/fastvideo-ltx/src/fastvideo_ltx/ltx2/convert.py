"""Checkpoint names: diffusers' ``LTX2VideoTransformer3DModel`` <-> :class:`fastvideo_ltx.ltx2.model.LTX2Transformer`.

Declared once, in :data:`RULES` (pairs of templates, diffusers name then ours; ``{i}`` a block index,
``{p}`` ``weight`` or ``bias``). Tensors are renamed, never reshaped.
"""

from __future__ import annotations

from fastvideo.loader.mapping import NameMapping

#: diffusers attention module -> ours, inside a block
_ATTENTIONS = (
    ("attn1", "self_attn"),
    ("audio_attn1", "audio_self_attn"),
    ("attn2", "text_attn"),
    ("audio_attn2", "audio_text_attn"),
    ("audio_to_video_attn", "a2v_attn"),
    ("video_to_audio_attn", "v2a_attn"),
)
#: diffusers adaLN-single module -> ours
_TIME = (
    ("time_embed", "time_embed"),
    ("audio_time_embed", "audio_time_embed"),
    ("av_cross_attn_video_scale_shift", "cross_time_embed"),
    ("av_cross_attn_audio_scale_shift", "audio_cross_time_embed"),
    ("av_cross_attn_video_a2v_gate", "cross_gate_embed"),
    ("av_cross_attn_audio_v2a_gate", "audio_cross_gate_embed"),
    ("prompt_adaln", "prompt_embed"),
    ("audio_prompt_adaln", "audio_prompt_embed"),
)


def _rules() -> tuple[tuple[str, str], ...]:
    rules: list[tuple[str, str]] = [
        ("proj_in.{p}", "patch_embed.{p}"),
        ("audio_proj_in.{p}", "audio_patch_embed.{p}"),
        ("caption_projection.linear_1.{p}", "caption_embed.fc1.{p}"),
        ("caption_projection.linear_2.{p}", "caption_embed.fc2.{p}"),
        ("audio_caption_projection.linear_1.{p}", "audio_caption_embed.fc1.{p}"),
        ("audio_caption_projection.linear_2.{p}", "audio_caption_embed.fc2.{p}"),
    ]
    for theirs, ours in _TIME:
        rules += [
            (f"{theirs}.emb.timestep_embedder.linear_1.{{p}}", f"{ours}.fc1.{{p}}"),
            (f"{theirs}.emb.timestep_embedder.linear_2.{{p}}", f"{ours}.fc2.{{p}}"),
            (f"{theirs}.linear.{{p}}", f"{ours}.proj.{{p}}"),
        ]
    block = "transformer_blocks.{i}"
    for theirs, ours in _ATTENTIONS:
        rules += [
            (f"{block}.{theirs}.to_q.{{p}}", f"blocks.{{i}}.{ours}.q.{{p}}"),
            (f"{block}.{theirs}.to_k.{{p}}", f"blocks.{{i}}.{ours}.k.{{p}}"),
            (f"{block}.{theirs}.to_v.{{p}}", f"blocks.{{i}}.{ours}.v.{{p}}"),
            (f"{block}.{theirs}.to_out.0.{{p}}", f"blocks.{{i}}.{ours}.o.{{p}}"),
            (f"{block}.{theirs}.norm_q.weight", f"blocks.{{i}}.{ours}.norm_q.weight"),
            (f"{block}.{theirs}.norm_k.weight", f"blocks.{{i}}.{ours}.norm_k.weight"),
            (f"{block}.{theirs}.to_gate_logits.{{p}}", f"blocks.{{i}}.{ours}.gate.{{p}}"),
        ]
    rules += [
        (f"{block}.ff.net.0.proj.{{p}}", "blocks.{i}.ff.fc1.{p}"),
        (f"{block}.ff.net.2.{{p}}", "blocks.{i}.ff.fc2.{p}"),
        (f"{block}.audio_ff.net.0.proj.{{p}}", "blocks.{i}.audio_ff.fc1.{p}"),
        (f"{block}.audio_ff.net.2.{{p}}", "blocks.{i}.audio_ff.fc2.{p}"),
        (f"{block}.scale_shift_table", "blocks.{i}.modulation"),
        (f"{block}.audio_scale_shift_table", "blocks.{i}.audio_modulation"),
        (f"{block}.prompt_scale_shift_table", "blocks.{i}.prompt_modulation"),
        (f"{block}.audio_prompt_scale_shift_table", "blocks.{i}.audio_prompt_modulation"),
        (f"{block}.video_a2v_cross_attn_scale_shift_table", "blocks.{i}.cross_modulation"),
        (f"{block}.audio_a2v_cross_attn_scale_shift_table", "blocks.{i}.audio_cross_modulation"),
        ("scale_shift_table", "head_modulation"),
        ("audio_scale_shift_table", "audio_head_modulation"),
        ("proj_out.{p}", "head.{p}"),
        ("audio_proj_out.{p}", "audio_head.{p}"),
    ]
    return tuple(rules)


RULES: tuple[tuple[str, str], ...] = _rules()

MAPPING = NameMapping(
    RULES,
    rules_name="fastvideo_ltx.ltx2.convert.RULES",
    ours="fastvideo_ltx",
    their_class="LTX2VideoTransformer3DModel",
    our_class="LTX2Transformer",
)
