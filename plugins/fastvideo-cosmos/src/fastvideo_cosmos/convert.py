"""Checkpoint names: diffusers' ``CosmosTransformer3DModel`` <-> :class:`fastvideo_cosmos.model.CosmosTransformer`.

One ordered list of one-to-one rules (diffusers template, our template); ``{i}`` is a block index and
``{p}`` ``weight`` or ``bias``. Both directions come from the same rules
(:class:`fastvideo.loader.mapping.NameMapping`); tensors are renamed, never reshaped.
"""

from __future__ import annotations

from fastvideo.loader.mapping import NameMapping

_SUBLAYERS = (("norm1", "mod_self"), ("norm2", "mod_cross"), ("norm3", "mod_ff"))
_ATTN = (("attn1", "self_attn"), ("attn2", "cross_attn"))

#: (diffusers name, our name), first match wins.
RULES: tuple[tuple[str, str], ...] = (
    ("patch_embed.proj.weight", "patch_embed.weight"),
    ("learnable_pos_embed.pos_emb_t", "pos_embed.t"),
    ("learnable_pos_embed.pos_emb_h", "pos_embed.h"),
    ("learnable_pos_embed.pos_emb_w", "pos_embed.w"),
    ("time_embed.t_embedder.linear_1.weight", "time_embed.0.weight"),
    ("time_embed.t_embedder.linear_2.weight", "time_embed.2.weight"),
    ("time_embed.norm.weight", "time_norm"),
    ("crossattn_proj.0.{p}", "text_proj.{p}"),
    *(
        (f"transformer_blocks.{{i}}.{theirs}.linear_{n}.weight", f"blocks.{{i}}.{ours}.{part}.weight")
        for theirs, ours in _SUBLAYERS
        for n, part in ((1, "down"), (2, "up"))
    ),
    *(
        (f"transformer_blocks.{{i}}.{theirs}.{a}.weight", f"blocks.{{i}}.{ours}.{b}.weight")
        for theirs, ours in _ATTN
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"))
    ),
    *(
        (f"transformer_blocks.{{i}}.{theirs}.{n}.weight", f"blocks.{{i}}.{ours}.{n}")
        for theirs, ours in _ATTN
        for n in ("norm_q", "norm_k")
    ),
    ("transformer_blocks.{i}.ff.net.0.proj.weight", "blocks.{i}.ffn.fc1.weight"),
    ("transformer_blocks.{i}.ff.net.2.weight", "blocks.{i}.ffn.fc2.weight"),
    ("norm_out.linear_1.weight", "head.mod.down.weight"),
    ("norm_out.linear_2.weight", "head.mod.up.weight"),
    ("proj_out.weight", "head.proj.weight"),
)

MAPPING = NameMapping(
    RULES,
    rules_name="fastvideo_cosmos.convert.RULES",
    ours="fastvideo_cosmos",
    their_class="CosmosTransformer3DModel",
    our_class="CosmosTransformer",
)

diffusers_to_ours, ours_to_diffusers = MAPPING.to_ours, MAPPING.to_theirs
