"""Checkpoint names: diffusers' ``WanTransformer3DModel`` <-> :class:`fastvideo_wan.model.WanTransformer`.

The mapping is declared once, in :data:`RULES`: an ordered list of
one-to-one rules, each a pair of templates (diffusers name, our name) whose placeholders ``{i}`` (a
block index) and ``{p}`` (``weight`` or ``bias``) compile into regular expressions. Both directions
come from the same rules (see :class:`fastvideo.loader.mapping.NameMapping`), so
``ours_to_diffusers(diffusers_to_ours(sd)) == sd`` by construction. Tensors are renamed, never
reshaped or split.

Our DiT reads a diffusers folder through :data:`MAPPING` (its ``name_mapping``; see
:meth:`fastvideo.models.DiT.open_checkpoint`), which checks names and shapes before any tensor data
is read.
"""

from __future__ import annotations

from fastvideo.loader.mapping import NameMapping, UnmappedKeysError

__all__ = [
    "IGNORED_DIFFUSERS_KEYS",
    "MAPPING",
    "ORIGINAL_MAPPING",
    "RULES",
    "UnmappedKeysError",
    "diffusers_to_ours",
    "ours_to_diffusers",
]

#: (diffusers name, our name), first match wins; ``{i}`` = block index, ``{p}`` = weight|bias.
RULES: tuple[tuple[str, str], ...] = (
    ("patch_embedding.{p}", "patch_embed.{p}"),
    ("condition_embedder.time_embedder.linear_1.{p}", "time_embed.fc1.{p}"),
    ("condition_embedder.time_embedder.linear_2.{p}", "time_embed.fc2.{p}"),
    ("condition_embedder.time_proj.{p}", "time_mod.{p}"),
    ("condition_embedder.text_embedder.linear_1.{p}", "text_embed.fc1.{p}"),
    ("condition_embedder.text_embedder.linear_2.{p}", "text_embed.fc2.{p}"),
    ("condition_embedder.image_embedder.norm1.{p}", "image_embed.norm_in.{p}"),
    ("condition_embedder.image_embedder.ff.net.0.proj.{p}", "image_embed.fc1.{p}"),
    ("condition_embedder.image_embedder.ff.net.2.{p}", "image_embed.fc2.{p}"),
    ("condition_embedder.image_embedder.norm2.{p}", "image_embed.norm_out.{p}"),
    ("condition_embedder.image_embedder.pos_embed", "image_embed.pos_embed"),
    ("blocks.{i}.scale_shift_table", "blocks.{i}.modulation"),
    ("blocks.{i}.attn1.to_q.{p}", "blocks.{i}.self_attn.q.{p}"),
    ("blocks.{i}.attn1.to_k.{p}", "blocks.{i}.self_attn.k.{p}"),
    ("blocks.{i}.attn1.to_v.{p}", "blocks.{i}.self_attn.v.{p}"),
    ("blocks.{i}.attn1.to_out.0.{p}", "blocks.{i}.self_attn.o.{p}"),
    ("blocks.{i}.attn1.norm_q.weight", "blocks.{i}.self_attn.norm_q.weight"),
    ("blocks.{i}.attn1.norm_k.weight", "blocks.{i}.self_attn.norm_k.weight"),
    ("blocks.{i}.norm2.{p}", "blocks.{i}.norm_cross.{p}"),
    ("blocks.{i}.attn2.to_q.{p}", "blocks.{i}.cross_attn.q.{p}"),
    ("blocks.{i}.attn2.to_k.{p}", "blocks.{i}.cross_attn.k.{p}"),
    ("blocks.{i}.attn2.to_v.{p}", "blocks.{i}.cross_attn.v.{p}"),
    ("blocks.{i}.attn2.to_out.0.{p}", "blocks.{i}.cross_attn.o.{p}"),
    ("blocks.{i}.attn2.norm_q.weight", "blocks.{i}.cross_attn.norm_q.weight"),
    ("blocks.{i}.attn2.norm_k.weight", "blocks.{i}.cross_attn.norm_k.weight"),
    ("blocks.{i}.attn2.add_k_proj.{p}", "blocks.{i}.cross_attn.k_img.{p}"),
    ("blocks.{i}.attn2.add_v_proj.{p}", "blocks.{i}.cross_attn.v_img.{p}"),
    ("blocks.{i}.attn2.norm_added_k.weight", "blocks.{i}.cross_attn.norm_k_img.weight"),
    ("blocks.{i}.ffn.net.0.proj.{p}", "blocks.{i}.ffn.fc1.{p}"),
    ("blocks.{i}.ffn.net.2.{p}", "blocks.{i}.ffn.fc2.{p}"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out.{p}", "head.proj.{p}"),
)

#: diffusers keys dropped on load, as its ``_keys_to_ignore_on_load_unexpected`` drops them (an
#: unused image-query norm that some converted I2V checkpoints carry).
IGNORED_DIFFUSERS_KEYS: tuple[str, ...] = (r"blocks\.\d+\.attn2\.norm_added_q\.weight",)

#: Modules that attention backends add to the sparse attention layers (and name in checkpoints) are
#: not listed here: the backends declare them (``AttentionBackend.layer_modules``) and
#: :func:`fastvideo.attention.layers.checkpoint_mapping` adds their rules when a checkpoint loads.
MAPPING = NameMapping(
    RULES,
    ignored=IGNORED_DIFFUSERS_KEYS,
    rules_name="fastvideo_wan.convert.RULES",
    ours="fastvideo_wan",
    their_class="WanTransformer3DModel",
    our_class="WanTransformer",
)


#: ``diffusers_to_ours(sd)`` / ``ours_to_diffusers(sd)``: rename (values untouched), raising
#: :class:`UnmappedKeysError` with every name that no rule matches.
diffusers_to_ours, ours_to_diffusers = MAPPING.to_ours, MAPPING.to_theirs


#: (original Wan release name, our name): the naming of single-file checkpoints in the original
#: format (``Wan-AI/Wan2.1-*`` repos, and the FP8 files LightX2V and Kijai publish from them).
ORIGINAL_RULES: tuple[tuple[str, str], ...] = (
    ("patch_embedding.{p}", "patch_embed.{p}"),
    ("text_embedding.0.{p}", "text_embed.fc1.{p}"),
    ("text_embedding.2.{p}", "text_embed.fc2.{p}"),
    ("time_embedding.0.{p}", "time_embed.fc1.{p}"),
    ("time_embedding.2.{p}", "time_embed.fc2.{p}"),
    ("time_projection.1.{p}", "time_mod.{p}"),
    ("img_emb.proj.0.{p}", "image_embed.norm_in.{p}"),
    ("img_emb.proj.1.{p}", "image_embed.fc1.{p}"),
    ("img_emb.proj.3.{p}", "image_embed.fc2.{p}"),
    ("img_emb.proj.4.{p}", "image_embed.norm_out.{p}"),
    ("img_emb.emb_pos", "image_embed.pos_embed"),
    ("blocks.{i}.modulation", "blocks.{i}.modulation"),
    *(
        (f"blocks.{{i}}.{attn}.{name}.{{p}}", f"blocks.{{i}}.{attn}.{name}.{{p}}")
        for attn in ("self_attn", "cross_attn")
        for name in ("q", "k", "v", "o", "norm_q", "norm_k")
    ),
    ("blocks.{i}.cross_attn.k_img.{p}", "blocks.{i}.cross_attn.k_img.{p}"),
    ("blocks.{i}.cross_attn.v_img.{p}", "blocks.{i}.cross_attn.v_img.{p}"),
    ("blocks.{i}.cross_attn.norm_k_img.{p}", "blocks.{i}.cross_attn.norm_k_img.{p}"),
    ("blocks.{i}.norm3.{p}", "blocks.{i}.norm_cross.{p}"),
    ("blocks.{i}.ffn.0.{p}", "blocks.{i}.ffn.fc1.{p}"),
    ("blocks.{i}.ffn.2.{p}", "blocks.{i}.ffn.fc2.{p}"),
    ("head.head.{p}", "head.proj.{p}"),
    ("head.modulation", "head.modulation"),
)

ORIGINAL_MAPPING = NameMapping(
    ORIGINAL_RULES,
    rules_name="fastvideo_wan.convert.ORIGINAL_RULES",
    ours="fastvideo_wan",
    theirs="original Wan",
    their_class="WanModel (original release)",
    our_class="WanTransformer",
)
