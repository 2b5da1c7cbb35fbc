"""Checkpoint names: diffusers' ``HunyuanVideoTransformer3DModel`` <-> :class:`~fastvideo_hunyuan.model.HunyuanTransformer`.

The mapping is declared once, in :data:`RULES`: an ordered list of one-to-one rules, each a pair of
templates (diffusers name, our name) whose placeholders ``{i}`` (a block index) and ``{p}``
(``weight`` or ``bias``) compile into regular expressions. Both directions come from the same rules
(see :class:`fastvideo.loader.mapping.NameMapping`), so ``ours_to_diffusers(diffusers_to_ours(sd))
== sd`` by construction. Tensors are renamed, never reshaped or split.

Our DiT reads a diffusers folder through :data:`MAPPING` (its ``name_mapping``; see
:meth:`fastvideo.models.DiT.open_checkpoint`), which checks names and shapes before any tensor data
is read.
"""

from __future__ import annotations

from fastvideo.loader.mapping import NameMapping, UnmappedKeysError

__all__ = [
    "MAPPING",
    "RULES",
    "UnmappedKeysError",
    "diffusers_to_ours",
    "ours_to_diffusers",
]

_REFINER = "context_embedder.token_refiner.refiner_blocks.{i}"
_DOUBLE = "transformer_blocks.{i}"
_SINGLE = "single_transformer_blocks.{i}"

#: (diffusers name, our name), first match wins; ``{i}`` = block index, ``{p}`` = weight|bias.
RULES: tuple[tuple[str, str], ...] = (
    ("x_embedder.proj.{p}", "patch_embed.{p}"),
    # token refiner over the Llama states
    ("context_embedder.time_text_embed.timestep_embedder.linear_1.{p}", "text_refiner.time_embed.fc1.{p}"),
    ("context_embedder.time_text_embed.timestep_embedder.linear_2.{p}", "text_refiner.time_embed.fc2.{p}"),
    ("context_embedder.time_text_embed.text_embedder.linear_1.{p}", "text_refiner.pool_embed.fc1.{p}"),
    ("context_embedder.time_text_embed.text_embedder.linear_2.{p}", "text_refiner.pool_embed.fc2.{p}"),
    ("context_embedder.proj_in.{p}", "text_refiner.proj_in.{p}"),
    (f"{_REFINER}.norm1.{{p}}", "text_refiner.blocks.{i}.norm1.{p}"),
    (f"{_REFINER}.attn.to_q.{{p}}", "text_refiner.blocks.{i}.q.{p}"),
    (f"{_REFINER}.attn.to_k.{{p}}", "text_refiner.blocks.{i}.k.{p}"),
    (f"{_REFINER}.attn.to_v.{{p}}", "text_refiner.blocks.{i}.v.{p}"),
    (f"{_REFINER}.attn.to_out.0.{{p}}", "text_refiner.blocks.{i}.o.{p}"),
    (f"{_REFINER}.norm2.{{p}}", "text_refiner.blocks.{i}.norm2.{p}"),
    (f"{_REFINER}.ff.net.0.proj.{{p}}", "text_refiner.blocks.{i}.mlp.fc1.{p}"),
    (f"{_REFINER}.ff.net.2.{{p}}", "text_refiner.blocks.{i}.mlp.fc2.{p}"),
    (f"{_REFINER}.norm_out.linear.{{p}}", "text_refiner.blocks.{i}.gate.{p}"),
    # conditioning vector
    ("time_text_embed.timestep_embedder.linear_1.{p}", "time_embed.fc1.{p}"),
    ("time_text_embed.timestep_embedder.linear_2.{p}", "time_embed.fc2.{p}"),
    ("time_text_embed.guidance_embedder.linear_1.{p}", "guidance_embed.fc1.{p}"),
    ("time_text_embed.guidance_embedder.linear_2.{p}", "guidance_embed.fc2.{p}"),
    ("time_text_embed.text_embedder.linear_1.{p}", "pooled_embed.fc1.{p}"),
    ("time_text_embed.text_embedder.linear_2.{p}", "pooled_embed.fc2.{p}"),
    # dual-stream blocks
    (f"{_DOUBLE}.norm1.linear.{{p}}", "double_blocks.{i}.video_mod.{p}"),
    (f"{_DOUBLE}.norm1_context.linear.{{p}}", "double_blocks.{i}.text_mod.{p}"),
    (f"{_DOUBLE}.attn.to_q.{{p}}", "double_blocks.{i}.attn.q.{p}"),
    (f"{_DOUBLE}.attn.to_k.{{p}}", "double_blocks.{i}.attn.k.{p}"),
    (f"{_DOUBLE}.attn.to_v.{{p}}", "double_blocks.{i}.attn.v.{p}"),
    (f"{_DOUBLE}.attn.to_out.0.{{p}}", "double_blocks.{i}.attn.o.{p}"),
    (f"{_DOUBLE}.attn.norm_q.weight", "double_blocks.{i}.attn.norm_q.weight"),
    (f"{_DOUBLE}.attn.norm_k.weight", "double_blocks.{i}.attn.norm_k.weight"),
    (f"{_DOUBLE}.attn.add_q_proj.{{p}}", "double_blocks.{i}.attn.text_q.{p}"),
    (f"{_DOUBLE}.attn.add_k_proj.{{p}}", "double_blocks.{i}.attn.text_k.{p}"),
    (f"{_DOUBLE}.attn.add_v_proj.{{p}}", "double_blocks.{i}.attn.text_v.{p}"),
    (f"{_DOUBLE}.attn.to_add_out.{{p}}", "double_blocks.{i}.attn.text_o.{p}"),
    (f"{_DOUBLE}.attn.norm_added_q.weight", "double_blocks.{i}.attn.text_norm_q.weight"),
    (f"{_DOUBLE}.attn.norm_added_k.weight", "double_blocks.{i}.attn.text_norm_k.weight"),
    (f"{_DOUBLE}.ff.net.0.proj.{{p}}", "double_blocks.{i}.video_mlp.fc1.{p}"),
    (f"{_DOUBLE}.ff.net.2.{{p}}", "double_blocks.{i}.video_mlp.fc2.{p}"),
    (f"{_DOUBLE}.ff_context.net.0.proj.{{p}}", "double_blocks.{i}.text_mlp.fc1.{p}"),
    (f"{_DOUBLE}.ff_context.net.2.{{p}}", "double_blocks.{i}.text_mlp.fc2.{p}"),
    # single-stream blocks
    (f"{_SINGLE}.norm.linear.{{p}}", "single_blocks.{i}.mod.{p}"),
    (f"{_SINGLE}.attn.to_q.{{p}}", "single_blocks.{i}.attn.q.{p}"),
    (f"{_SINGLE}.attn.to_k.{{p}}", "single_blocks.{i}.attn.k.{p}"),
    (f"{_SINGLE}.attn.to_v.{{p}}", "single_blocks.{i}.attn.v.{p}"),
    (f"{_SINGLE}.attn.norm_q.weight", "single_blocks.{i}.attn.norm_q.weight"),
    (f"{_SINGLE}.attn.norm_k.weight", "single_blocks.{i}.attn.norm_k.weight"),
    (f"{_SINGLE}.proj_mlp.{{p}}", "single_blocks.{i}.mlp_in.{p}"),
    (f"{_SINGLE}.proj_out.{{p}}", "single_blocks.{i}.out.{p}"),
    # output
    ("norm_out.linear.{p}", "head.mod.{p}"),
    ("proj_out.{p}", "head.proj.{p}"),
)

MAPPING = NameMapping(
    RULES,
    rules_name="fastvideo_hunyuan.convert.RULES",
    ours="fastvideo_hunyuan",
    their_class="HunyuanVideoTransformer3DModel",
    our_class="HunyuanTransformer",
)

#: ``diffusers_to_ours(sd)`` / ``ours_to_diffusers(sd)``: rename (values untouched), raising
#: :class:`UnmappedKeysError` with every name that no rule matches.
diffusers_to_ours, ours_to_diffusers = MAPPING.to_ours, MAPPING.to_theirs
