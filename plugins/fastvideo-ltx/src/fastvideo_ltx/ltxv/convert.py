"""Checkpoint names: diffusers' ``LTXVideoTransformer3DModel`` <-> :class:`~fastvideo_ltx.ltxv.model.LTXVideoTransformer`.

The mapping is declared once, in :data:`RULES`: an ordered list of one-to-one rules, each a pair of
templates (diffusers name, our name) whose placeholders ``{i}`` (a block index) and ``{p}``
(``weight`` or ``bias``) compile into regular expressions. Both directions come from the same rules
(:class:`fastvideo.loader.mapping.NameMapping`); tensors are renamed, never reshaped or split.
"""

from __future__ import annotations

from fastvideo.loader.mapping import NameMapping, UnmappedKeysError

__all__ = ["MAPPING", "RULES", "UnmappedKeysError", "diffusers_to_ours", "ours_to_diffusers"]

_BLOCK = "transformer_blocks.{i}"

#: (diffusers name, our name), first match wins; ``{i}`` = block index, ``{p}`` = weight|bias.
RULES: tuple[tuple[str, str], ...] = (
    ("proj_in.{p}", "patch_embed.{p}"),
    ("time_embed.emb.timestep_embedder.linear_1.{p}", "time_embed.fc1.{p}"),
    ("time_embed.emb.timestep_embedder.linear_2.{p}", "time_embed.fc2.{p}"),
    ("time_embed.linear.{p}", "time_mod.{p}"),
    ("caption_projection.linear_1.{p}", "text_embed.fc1.{p}"),
    ("caption_projection.linear_2.{p}", "text_embed.fc2.{p}"),
    (f"{_BLOCK}.scale_shift_table", "blocks.{i}.modulation"),
    (f"{_BLOCK}.attn1.to_q.{{p}}", "blocks.{i}.self_attn.q.{p}"),
    (f"{_BLOCK}.attn1.to_k.{{p}}", "blocks.{i}.self_attn.k.{p}"),
    (f"{_BLOCK}.attn1.to_v.{{p}}", "blocks.{i}.self_attn.v.{p}"),
    (f"{_BLOCK}.attn1.to_out.0.{{p}}", "blocks.{i}.self_attn.o.{p}"),
    (f"{_BLOCK}.attn1.norm_q.weight", "blocks.{i}.self_attn.norm_q.weight"),
    (f"{_BLOCK}.attn1.norm_k.weight", "blocks.{i}.self_attn.norm_k.weight"),
    (f"{_BLOCK}.attn2.to_q.{{p}}", "blocks.{i}.cross_attn.q.{p}"),
    (f"{_BLOCK}.attn2.to_k.{{p}}", "blocks.{i}.cross_attn.k.{p}"),
    (f"{_BLOCK}.attn2.to_v.{{p}}", "blocks.{i}.cross_attn.v.{p}"),
    (f"{_BLOCK}.attn2.to_out.0.{{p}}", "blocks.{i}.cross_attn.o.{p}"),
    (f"{_BLOCK}.attn2.norm_q.weight", "blocks.{i}.cross_attn.norm_q.weight"),
    (f"{_BLOCK}.attn2.norm_k.weight", "blocks.{i}.cross_attn.norm_k.weight"),
    (f"{_BLOCK}.ff.net.0.proj.{{p}}", "blocks.{i}.ff.fc1.{p}"),
    (f"{_BLOCK}.ff.net.2.{{p}}", "blocks.{i}.ff.fc2.{p}"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out.{p}", "head.proj.{p}"),
)

MAPPING = NameMapping(
    RULES,
    rules_name="fastvideo_ltx.ltxv.convert.RULES",
    ours="fastvideo_ltx",
    their_class="LTXVideoTransformer3DModel",
    our_class="LTXVideoTransformer",
)

#: ``diffusers_to_ours(sd)`` / ``ours_to_diffusers(sd)``: rename (values untouched), raising
#: :class:`UnmappedKeysError` with every name that no rule matches.
diffusers_to_ours, ours_to_diffusers = MAPPING.to_ours, MAPPING.to_theirs
