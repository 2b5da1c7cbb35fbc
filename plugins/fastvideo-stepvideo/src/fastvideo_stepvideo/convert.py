"""Checkpoint names: the released ``StepVideoModel`` (``transformer/``) <-> :class:`~fastvideo_stepvideo.model.StepVideoTransformer`.

The released key names (``stepfun-ai/stepvideo-t2v`` and FastVideo's diffusers-style mirror
``FastVideo/stepvideo-t2v-diffusers`` use the same ones) map one to one onto ours through
:data:`RULES`, pairs of templates whose ``{i}`` (block index) and ``{p}`` (``weight`` / ``bias``)
placeholders compile into regular expressions. Tensors are renamed, never reshaped: the fused
``wqkv`` keeps its per-head ``(q, k, v)`` interleaving and the model splits it the same way.
"""

from __future__ import annotations

from fastvideo.loader.mapping import NameMapping

_B = "transformer_blocks.{i}"

#: (released name, our name), first match wins.
RULES: tuple[tuple[str, str], ...] = (
    ("pos_embed.proj.{p}", "patch_embed.{p}"),
    ("adaln_single.emb.timestep_embedder.linear_1.{p}", "time_embed.fc1.{p}"),
    ("adaln_single.emb.timestep_embedder.linear_2.{p}", "time_embed.fc2.{p}"),
    ("adaln_single.emb.motion_score_embedder.linear_1.{p}", "motion_embed.fc1.{p}"),  # TI2V
    ("adaln_single.emb.motion_score_embedder.linear_2.{p}", "motion_embed.fc2.{p}"),
    ("adaln_single.linear.{p}", "time_mod.{p}"),
    ("caption_projection.linear_1.{p}", "text_embed.fc1.{p}"),
    ("caption_projection.linear_2.{p}", "text_embed.fc2.{p}"),
    ("clip_projection.{p}", "clip_embed.{p}"),
    (f"{_B}.norm1.{{p}}", "blocks.{i}.norm1.{p}"),
    (f"{_B}.attn1.wqkv.weight", "blocks.{i}.self_attn.qkv.weight"),
    (f"{_B}.attn1.wo.weight", "blocks.{i}.self_attn.o.weight"),
    (f"{_B}.attn1.q_norm.weight", "blocks.{i}.self_attn.norm_q.weight"),
    (f"{_B}.attn1.k_norm.weight", "blocks.{i}.self_attn.norm_k.weight"),
    (f"{_B}.attn2.wq.weight", "blocks.{i}.cross_attn.q.weight"),
    (f"{_B}.attn2.wkv.weight", "blocks.{i}.cross_attn.kv.weight"),
    (f"{_B}.attn2.wo.weight", "blocks.{i}.cross_attn.o.weight"),
    (f"{_B}.attn2.q_norm.weight", "blocks.{i}.cross_attn.norm_q.weight"),
    (f"{_B}.attn2.k_norm.weight", "blocks.{i}.cross_attn.norm_k.weight"),
    (f"{_B}.norm2.{{p}}", "blocks.{i}.norm2.{p}"),
    (f"{_B}.ff.net.0.proj.weight", "blocks.{i}.ffn.fc1.weight"),
    (f"{_B}.ff.net.2.weight", "blocks.{i}.ffn.fc2.weight"),
    (f"{_B}.scale_shift_table", "blocks.{i}.modulation"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out.{p}", "head.proj.{p}"),
)

MAPPING = NameMapping(
    RULES,
    rules_name="fastvideo_stepvideo.convert.RULES",
    ours="fastvideo_stepvideo",
    theirs="released",
    their_class="StepVideoModel",
    our_class="StepVideoTransformer",
)

#: ``released_to_ours(sd)`` / ``ours_to_released(sd)``: rename, values untouched.
released_to_ours, ours_to_released = MAPPING.to_ours, MAPPING.to_theirs
